"""The published MGCC network and training step, rebuilt layer by layer from ../shared/REFERENCE.md.

This is the comparison point of the speed benchmark (``bench_methods.py --published``) and the
reference of the float64 equality tests (tests/test_published_mgcc.py): the modules are arranged
exactly as in the published ``src/network/MGCC.py`` (one ``BatchNorm2d`` per MSAG branch,
concatenations, ``nn.Conv2d`` depthwise convolutions, ``Residual`` wrappers), the losses as in
``train.py`` (REFERENCE §2.5) and the optimiser is plain ``torch.optim.SGD`` (§2.7).

Differences to the published file, none of which changes the computation: the input channel count
is a parameter (published: 3), and the perturbations can be swapped for seeded ones so that a test
can draw the same noise as segbench.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Perturb = Callable[[torch.Tensor], torch.Tensor]


def conv_block(ch_in: int, ch_out: int) -> nn.Sequential:
    """[Conv3x3 (bias) -> BN -> ReLU] x 2 (published ``conv_block``)."""
    return nn.Sequential(
        nn.Conv2d(ch_in, ch_out, 3, padding=1, bias=True),
        nn.BatchNorm2d(ch_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(ch_out, ch_out, 3, padding=1, bias=True),
        nn.BatchNorm2d(ch_out),
        nn.ReLU(inplace=True),
    )


def up_conv(ch_in: int, ch_out: int) -> nn.Sequential:
    """Nearest x2 -> Conv3x3 (bias) -> BN -> ReLU (published ``up_conv``)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2),
        nn.Conv2d(ch_in, ch_out, 3, padding=1, bias=True),
        nn.BatchNorm2d(ch_out),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class ConvMixerBlock(nn.Module):
    """Published ``ConvMixerBlock``: [Residual(DW kxk -> GELU -> BN), 1x1 -> GELU -> BN] x depth."""

    def __init__(self, dim: int, depth: int, k: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *[
                nn.Sequential(
                    Residual(
                        nn.Sequential(
                            nn.Conv2d(dim, dim, kernel_size=(k, k), groups=dim, padding=(k // 2, k // 2)),
                            nn.GELU(),
                            nn.BatchNorm2d(dim),
                        )
                    ),
                    nn.Conv2d(dim, dim, kernel_size=(1, 1)),
                    nn.GELU(),
                    nn.BatchNorm2d(dim),
                )
                for _ in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class MSAG(nn.Module):
    """Published multi-scale attention gate: three branches, each with its own BN; cat; ReLU; vote."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.pointwiseConv = nn.Sequential(nn.Conv2d(channel, channel, 1, bias=True), nn.BatchNorm2d(channel))
        self.ordinaryConv = nn.Sequential(nn.Conv2d(channel, channel, 3, padding=1, bias=True), nn.BatchNorm2d(channel))
        self.dilationConv = nn.Sequential(
            nn.Conv2d(channel, channel, 3, padding=2, dilation=2, bias=True), nn.BatchNorm2d(channel)
        )
        self.voteConv = nn.Sequential(nn.Conv2d(channel * 3, channel, 1), nn.BatchNorm2d(channel), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2, x3 = self.pointwiseConv(x), self.ordinaryConv(x), self.dilationConv(x)
        _x = self.voteConv(self.relu(torch.cat((x1, x2, x3), dim=1)))
        return x + x * _x


class Decoder(nn.Module):
    """Published decoder: MSAG-gated skips, up_conv, cat((skip, up)), conv_block, 1x1 head."""

    def __init__(self, widths: Sequence[int], output_ch: int = 1) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.Up5, self.Up_conv5, self.msag4 = up_conv(c5, c4), conv_block(2 * c4, c4), MSAG(c4)
        self.Up4, self.Up_conv4, self.msag3 = up_conv(c4, c3), conv_block(2 * c3, c3), MSAG(c3)
        self.Up3, self.Up_conv3, self.msag2 = up_conv(c3, c2), conv_block(2 * c2, c2), MSAG(c2)
        self.Up2, self.Up_conv2, self.msag1 = up_conv(c2, c1), conv_block(2 * c1, c1), MSAG(c1)
        self.Conv_1x1 = nn.Conv2d(c1, output_ch, 1)

    def forward(self, feature: Sequence[torch.Tensor]) -> torch.Tensor:
        x1, x2, x3, x4, x5 = feature
        d5 = self.Up_conv5(torch.cat((self.msag4(x4), self.Up5(x5)), dim=1))
        d4 = self.Up_conv4(torch.cat((self.msag3(x3), self.Up4(d5)), dim=1))
        d3 = self.Up_conv3(torch.cat((self.msag2(x2), self.Up3(d4)), dim=1))
        d2 = self.Up_conv2(torch.cat((self.msag1(x1), self.Up2(d3)), dim=1))
        return self.Conv_1x1(d2)


def feature_dropout(x: torch.Tensor) -> torch.Tensor:
    """Published ``FeatureDropout``: zero positions whose channel mean >= u x per-sample max, u ~ U(0.7, 0.9)."""
    attention = torch.mean(x, dim=1, keepdim=True)
    max_val, _ = torch.max(attention.view(x.size(0), -1), dim=1, keepdim=True)
    threshold = max_val * np.random.uniform(0.7, 0.9)
    threshold = threshold.view(x.size(0), 1, 1, 1).expand_as(attention)
    return x.mul((attention < threshold).float())


def feature_noise(x: torch.Tensor) -> torch.Tensor:
    """Published ``FeatureNoise``: x + x * n, n ~ U(-0.3, 0.3) of shape C x H x W."""
    noise = torch.distributions.Uniform(-0.3, 0.3).sample(x.shape[1:]).to(x.device).unsqueeze(0)
    return x.mul(noise) + x


def dropout(x: torch.Tensor) -> torch.Tensor:
    """Published ``Dropout``: ``F.dropout(x, p=0.3)`` (always in training mode)."""
    return F.dropout(x, p=0.3)


class PublishedMGCC(nn.Module):
    """``MGCC(img_ch, length=(3, 3, 3), k=7, dim_mult)`` as published; ``perturbations`` = aux 1, 2, 3."""

    def __init__(
        self,
        img_ch: int = 3,
        length: Sequence[int] = (3, 3, 3),
        k: int = 7,
        dim_mult: int = 4,
        perturbations: Sequence[Perturb] = (feature_dropout, dropout, feature_noise),  # release order
    ) -> None:
        super().__init__()
        widths = [16 * dim_mult * 2**i for i in range(5)]
        self.Maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.Conv1 = conv_block(img_ch, widths[0])
        self.Conv2 = conv_block(widths[0], widths[1])
        self.Conv3 = conv_block(widths[1], widths[2])
        self.Conv4 = conv_block(widths[2], widths[3])
        self.Conv5 = conv_block(widths[3], widths[4])
        self.ConvMixer1 = ConvMixerBlock(widths[4], length[0], k)
        self.ConvMixer2 = ConvMixerBlock(widths[4], length[1], k)
        self.ConvMixer3 = ConvMixerBlock(widths[4], length[2], k)
        self.main_decoder = Decoder(widths)
        self.aux_decoder1 = Decoder(widths)
        self.aux_decoder2 = Decoder(widths)
        self.aux_decoder3 = Decoder(widths)
        self.perturbations = list(perturbations)

    def forward(self, x: torch.Tensor):
        x1 = self.Conv1(x)
        x2 = self.Conv2(self.Maxpool(x1))
        x3 = self.Conv3(self.Maxpool(x2))
        x4 = self.Conv4(self.Maxpool(x3))
        x5 = self.Conv5(self.Maxpool(x4))
        if not self.training:
            return self.main_decoder([x1, x2, x3, x4, self.ConvMixer3(self.ConvMixer2(self.ConvMixer1(x5)))])
        p1, p2, p3 = self.perturbations
        aux1 = self.aux_decoder1([p1(f) for f in (x1, x2, x3, x4, x5)])
        x5 = self.ConvMixer1(x5)
        aux2 = self.aux_decoder2([p2(f) for f in (x1, x2, x3, x4, x5)])
        x5 = self.ConvMixer2(x5)
        aux3 = self.aux_decoder3([p3(f) for f in (x1, x2, x3, x4, x5)])
        x5 = self.ConvMixer3(x5)
        main = self.main_decoder([x1, x2, x3, x4, x5])
        return main, aux1, aux2, aux3


def bce_dice(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Published ``BCEDiceLoss``: 0.5 BCE-with-logits + (1 - mean over images of the soft Dice)."""
    bce = F.binary_cross_entropy_with_logits(outputs, target)
    smooth = 1e-5
    num = target.size(0)
    prob = torch.sigmoid(outputs).view(num, -1)
    target = target.view(num, -1)
    intersection = prob * target
    dice = (2.0 * intersection.sum(1) + smooth) / (prob.sum(1) + target.sum(1) + smooth)
    return 0.5 * bce + (1 - dice.sum() / num)


def published_loss(
    outputs: Sequence[torch.Tensor], target: torch.Tensor, labeled_bs: int, consistency_weight: float
) -> torch.Tensor:
    """``train.py``: supervised BCEDice over the 4 decoders / 4 + w x mean over aux of MSE(sigmoid)."""
    main, *aux = outputs
    loss_sup = sum(bce_dice(o[:labeled_bs], target) for o in outputs) / len(outputs)
    soft_main = torch.sigmoid(main[labeled_bs:])
    loss_cons = sum(torch.mean((soft_main - torch.sigmoid(a[labeled_bs:])) ** 2) for a in aux) / len(aux)
    return loss_sup + consistency_weight * loss_cons


def load_segbench_weights(published: PublishedMGCC, method: nn.Module) -> None:
    """Copy a segbench ``mgcc`` method's parameters and buffers (cmunet backbone) into ``published``.

    The segbench modules hold the same tensors under other names; MSAG's one ``BatchNorm2d(3c)`` is
    split into the three branch norms.
    """
    bb = method.backbone

    def copy(dst: nn.Module, src: nn.Module) -> None:
        dst.load_state_dict(src.state_dict())

    def copy_bn_slice(dst: nn.BatchNorm2d, src: nn.BatchNorm2d, i: int) -> None:
        c = dst.num_features
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst, name).copy_(getattr(src, name)[i * c : (i + 1) * c])
            dst.num_batches_tracked.copy_(src.num_batches_tracked)

    for stage, dst in zip(bb.encoder.stages, (published.Conv1, published.Conv2, published.Conv3, published.Conv4,
                                              published.Conv5), strict=True):  # fmt: skip
        copy(dst, stage)
    for block, dst in zip(bb.context, (published.ConvMixer1, published.ConvMixer2, published.ConvMixer3), strict=True):
        for layer, seq in zip(block, dst.block, strict=True):
            copy(seq[0].fn[0], layer.depthwise)
            copy(seq[0].fn[2], layer.norm1)
            copy(seq[1], layer.pointwise)
            copy(seq[3], layer.norm2)
    decoders = (bb.decoder, *method.aux_decoders)
    targets = (published.main_decoder, published.aux_decoder1, published.aux_decoder2, published.aux_decoder3)
    for src, dst in zip(decoders, targets, strict=True):
        for gate, msag in zip(src.gates, (dst.msag1, dst.msag2, dst.msag3, dst.msag4), strict=True):
            for i, (conv, branch) in enumerate(
                (
                    (gate.pointwise, msag.pointwiseConv),
                    (gate.ordinary, msag.ordinaryConv),
                    (gate.dilated, msag.dilationConv),
                )
            ):
                copy(branch[0], conv)
                copy_bn_slice(branch[1], gate.branch_norm, i)
            copy(msag.voteConv[0], gate.vote)
            copy(msag.voteConv[1], gate.vote_norm)
        ups = ((dst.Up2, dst.Up_conv2), (dst.Up3, dst.Up_conv3), (dst.Up4, dst.Up_conv4), (dst.Up5, dst.Up_conv5))
        for stage, (up, block) in zip(src.stages, ups, strict=True):
            copy(up, stage.up)
            copy(block[0], stage.fuse)
            copy(block[1], stage.norm1)
            copy(block[3], stage.conv2)
            copy(block[4], stage.norm2)
        copy(dst.Conv_1x1, src.head)
