"""The 2-D U-Net of SSL4MIS (``code/networks/unet.py``), the network its baselines train.

Five levels of [3x3 conv -> BN -> LeakyReLU -> Dropout(p) -> 3x3 conv -> BN -> LeakyReLU] with a 2x2
max-pool before each deeper level; encoder dropout p = 0.05, 0.1, 0.2, 0.3, 0.5 (none in the decoder);
up stages that bring the deeper feature to the skip's width and resolution, concatenate [skip, up]
and apply the same double conv (p = 0); a 3x3 output convolution.

Up-sampling: SSL4MIS's ``UpBlock`` offers a 1x1 conv + bilinear x2 (align_corners=True) or a 2x2
transposed convolution. Its ``UNet`` and ``UNet_CCT`` are built with the bilinear path (in the
master version ``Decoder`` never passes its ``bilinear`` parameter on, so ``UpBlock``'s default
``bilinear=True`` decides; in an older version ``UNet`` sets ``bilinear: True`` explicitly), so
``bilinear`` is the default here; ``transpose`` is the other path (SSL4MIS's ``UNet_DS``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness.api import Features
from plugins.backbones.blocks import UNetEncoder

#: SSL4MIS's encoder dropout per level, shallow to deep
ENCODER_DROPOUT = (0.05, 0.1, 0.2, 0.3, 0.5)
UPSAMPLING = ("bilinear", "transpose")


class LeakyDoubleConv(nn.Sequential):
    """SSL4MIS ``ConvBlock``: conv -> BN -> LeakyReLU -> Dropout(p) -> conv -> BN -> LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
        )


def ssl4mis_encoder(in_channels: int, widths: Sequence[int], dropout: Sequence[float] = ENCODER_DROPOUT) -> nn.Module:
    """SSL4MIS ``Encoder``: :class:`LeakyDoubleConv` stages with per-level dropout, 2x2 max-pooling between."""
    if len(dropout) != len(widths):
        raise ValueError(f"one dropout rate per level: {len(widths)} levels, {len(dropout)} rates")
    return UNetEncoder(in_channels, widths, stage=lambda level, cin, cout: LeakyDoubleConv(cin, cout, dropout[level]))


class SSL4MISUpStage(nn.Module):
    """SSL4MIS ``UpBlock``: deeper feature to the skip's width (1x1 conv + bilinear x2, or a 2x2
    transposed conv), concatenation [skip, up], double conv without dropout."""

    def __init__(self, deep: int, skip: int, out: int, upsampling: str) -> None:
        super().__init__()
        if upsampling == "bilinear":
            self.up = nn.Sequential(
                nn.Conv2d(deep, skip, 1), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            )
        elif upsampling == "transpose":
            self.up = nn.ConvTranspose2d(deep, skip, 2, stride=2)
        else:
            raise ValueError(f"upsampling {upsampling!r}: use one of {', '.join(UPSAMPLING)}")
        self.conv = LeakyDoubleConv(2 * skip, out, 0.0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class SSL4MISDecoder(nn.Module):
    """SSL4MIS ``Decoder``: four up stages, then a 3x3 output convolution."""

    def __init__(self, widths: Sequence[int], out_channels: int, upsampling: str) -> None:
        super().__init__()
        widths = list(widths)
        self.stages = nn.ModuleList(
            SSL4MISUpStage(widths[i + 1], widths[i], widths[i], upsampling) for i in range(len(widths) - 1)
        )
        self.head = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, features: Features) -> torch.Tensor:
        x = features[-1]
        for stage, skip in zip(reversed(self.stages), reversed(list(features[:-1])), strict=True):
            x = stage(x, skip)
        return self.head(x)
