"""The ``ssl4mis`` style of the ``unet`` backbone against a reconstruction of SSL4MIS's 2-D U-Net.

``Reference*`` below rebuilds ``HiLab-git/SSL4MIS`` ``code/networks/unet.py`` (``ConvBlock``,
``DownBlock``, ``UpBlock``, ``Encoder``, ``Decoder``, ``UNet``) layer by layer as it is written there:
feature channels 16-256, encoder dropout [0.05, 0.1, 0.2, 0.3, 0.5], LeakyReLU, ``UpBlock`` with a
1x1 conv + bilinear x2 (align_corners) or a 2x2 transposed conv, and a 3x3 output conv. The plain
``UNet`` there is built with the bilinear path (see plugins/backbones/ssl4mis_unet.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.evaluation.complexity import count_parameters
from plugins.backbones.unet import UNet, UNetParams


class ReferenceConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, p: float) -> None:
        super().__init__()
        self.conv_conv = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(), nn.Dropout(p),
            nn.Conv2d(cout, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_conv(x)


class ReferenceDownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, p: float) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), ReferenceConvBlock(cin, cout, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class ReferenceUpBlock(nn.Module):
    def __init__(self, c1: int, c2: int, cout: int, p: float, bilinear: bool = True) -> None:
        super().__init__()
        self.bilinear = bilinear
        if bilinear:
            self.conv1x1 = nn.Conv2d(c1, c2, kernel_size=1)
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        else:
            self.up = nn.ConvTranspose2d(c1, c2, kernel_size=2, stride=2)
        self.conv = ReferenceConvBlock(c2 * 2, cout, p)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.bilinear:
            x1 = self.conv1x1(x1)
        return self.conv(torch.cat([x2, self.up(x1)], dim=1))


class ReferenceUNet(nn.Module):
    """SSL4MIS ``UNet(in_chns, class_num)``: ``Encoder`` + ``Decoder`` with its params dict."""

    def __init__(self, in_chns: int, class_num: int, bilinear: bool = True) -> None:
        super().__init__()
        ft = [16, 32, 64, 128, 256]
        dropout = [0.05, 0.1, 0.2, 0.3, 0.5]
        self.in_conv = ReferenceConvBlock(in_chns, ft[0], dropout[0])
        self.down = nn.ModuleList(ReferenceDownBlock(ft[i], ft[i + 1], dropout[i + 1]) for i in range(4))
        self.up = nn.ModuleList(ReferenceUpBlock(ft[4 - i], ft[3 - i], ft[3 - i], 0.0, bilinear) for i in range(4))
        self.out_conv = nn.Conv2d(ft[0], class_num, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.in_conv(x)]
        for block in self.down:
            feats.append(block(feats[-1]))
        y = feats[4]
        for block, skip in zip(self.up, reversed(feats[:4]), strict=True):
            y = block(y, skip)
        return self.out_conv(y)


def ssl4mis_style(in_ch: int, out_ch: int, upsampling: str = "bilinear") -> UNet:
    return UNet(in_ch, out_ch, UNetParams(width=16, style="ssl4mis", upsampling=upsampling))


def _reference_order(ref: ReferenceUNet) -> list[torch.Tensor]:
    return list(ref.state_dict().values())


def _our_order(net: UNet) -> list[torch.Tensor]:
    """Our tensors in the reference's registration order (decoder stages deep to shallow)."""
    out = list(net.encoder.state_dict().values())
    for stage in reversed(net.decoder.stages):
        out += list(stage.state_dict().values())
    return out + list(net.decoder.head.state_dict().values())


@pytest.mark.parametrize(("in_ch", "out_ch"), [(1, 2), (1, 1), (3, 1), (1, 4)])
@pytest.mark.parametrize("upsampling", ["bilinear", "transpose"])
def test_parameter_count_equals_the_ssl4mis_network(in_ch: int, out_ch: int, upsampling: str) -> None:
    ours = ssl4mis_style(in_ch, out_ch, upsampling)
    ref = ReferenceUNet(in_ch, out_ch, bilinear=upsampling == "bilinear")
    assert count_parameters(ours) == count_parameters(ref)
    shapes = [t.shape for t in _our_order(ours)]
    assert shapes == [t.shape for t in _reference_order(ref)]


def test_ssl4mis_unet_parameter_counts() -> None:
    """SSL4MIS's UNet(in_chns=1, class_num=2) (a 2-class softmax head, as its scripts would build it for
    a binary task): 1,813,474 parameters (REFERENCE §1.8 estimates 1.8 M); segbench's 1-logit head:
    1,813,329; with transposed-conv up-sampling 1,944,034."""
    assert count_parameters(ReferenceUNet(1, 2)) == count_parameters(ssl4mis_style(1, 2)) == 1_813_474
    assert count_parameters(ssl4mis_style(1, 1)) == 1_813_329
    assert count_parameters(ssl4mis_style(1, 2, "transpose")) == count_parameters(ReferenceUNet(1, 2, False))
    assert count_parameters(ReferenceUNet(1, 2, False)) == 1_944_034


@pytest.mark.parametrize("upsampling", ["bilinear", "transpose"])
def test_same_function_as_the_reference_with_copied_weights(upsampling: str) -> None:
    torch.manual_seed(0)
    ref = ReferenceUNet(1, 2, bilinear=upsampling == "bilinear").eval()
    ours = ssl4mis_style(1, 2, upsampling).eval()
    with torch.no_grad():
        for mine, theirs in zip(_our_order(ours), _reference_order(ref), strict=True):
            mine.copy_(theirs)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-6)


def test_contract_new_decoders_and_dropout_only_in_the_encoder() -> None:
    net = ssl4mis_style(1, 1)
    features = net.encode(torch.randn(2, 1, 32, 32))
    assert [f.shape[1] for f in features] == [16, 32, 64, 128, 256]
    extra = net.new_decoder()
    assert extra(features).shape == (2, 1, 32, 32)
    assert not {id(p) for p in extra.parameters()} & {id(p) for p in net.decoder.parameters()}
    rates = [m.p for m in net.encoder.modules() if isinstance(m, nn.Dropout)]
    assert rates == [0.05, 0.1, 0.2, 0.3, 0.5]
    assert all(m.p == 0.0 for m in net.decoder.modules() if isinstance(m, nn.Dropout))
    assert any(isinstance(m, nn.LeakyReLU) for m in net.modules())
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())


def test_bad_style_and_upsampling_are_refused() -> None:
    with pytest.raises(ValueError, match="style 'ssl4': use one of plain, ssl4mis"):
        UNetParams(style="ssl4")
    with pytest.raises(ValueError, match="upsampling 'nearest'"):
        UNetParams(style="ssl4mis", upsampling="nearest")
