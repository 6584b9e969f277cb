"""``attention-unet``: a U-Net whose skip connections pass through additive attention gates.

Oktay et al., "Attention U-Net: Learning Where to Look for the Pancreas" (MIDL 2018): before a skip
feature joins the decoder it is multiplied by a per-pixel gate computed from the skip and the
coarser decoder feature, sigmoid(psi(ReLU(W_x skip + W_g gating))). Five levels (four poolings),
channels doubling from ``width``; no context stages, so multi-level methods such as ``mgcc`` that
need bottleneck stages will say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from harness.api import Backbone
from torch import nn


@dataclass
class AttentionUNetParams:
    """Channels of the first level; each of the four deeper levels doubles them."""

    width: int = 16

    def __post_init__(self) -> None:
        if self.width < 2:
            raise ValueError(f"width must be >= 2, got {self.width}")


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """[3x3 conv -> batch norm -> ReLU] x 2."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AttentionGate(nn.Module):
    """``skip * sigmoid(psi(ReLU(W_x skip + W_g gating)))``, with one gate value per pixel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 2)
        self.w_x = nn.Conv2d(channels, inner, 1, bias=False)
        self.w_g = nn.Conv2d(channels, inner, 1)
        self.psi = nn.Sequential(nn.Conv2d(inner, 1, 1), nn.Sigmoid())

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(torch.relu(self.w_x(skip) + self.w_g(gating)))


class Encoder(nn.Module):
    """Returns the five level features, shallow (full size) to deep (1/16)."""

    def __init__(self, in_channels: int, widths: list[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList([double_conv(in_channels, widths[0])])
        for i in range(1, len(widths)):
            self.stages.append(nn.Sequential(nn.MaxPool2d(2), double_conv(widths[i - 1], widths[i])))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class Decoder(nn.Module):
    """Up-sample, gate the skip with the up-sampled feature, fuse; then a 1x1 head to logits."""

    def __init__(self, widths: list[int], out_channels: int) -> None:
        super().__init__()
        levels = range(len(widths) - 2, -1, -1)  # deep to shallow
        self.ups = nn.ModuleList(
            nn.Sequential(
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(widths[i + 1], widths[i], 3, padding=1, bias=False),
                nn.BatchNorm2d(widths[i]),
                nn.ReLU(inplace=True),
            )
            for i in levels
        )
        self.gates = nn.ModuleList(AttentionGate(widths[i]) for i in levels)
        self.fuse = nn.ModuleList(double_conv(2 * widths[i], widths[i]) for i in levels)
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        skips = features[-2::-1]
        for up, gate, fuse, skip in zip(self.ups, self.gates, self.fuse, skips, strict=True):
            x = up(x)
            x = fuse(torch.cat([gate(skip, x), x], dim=1))
        return self.head(x)


class AttentionUNet(Backbone):
    """Attention U-Net with five levels; built as ``AttentionUNet(in_channels, out_channels, params)``."""

    Params = AttentionUNetParams
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"quick": {"width": 8}, "paper": {"width": 32}}
    divisor: ClassVar[int] = 16

    def __init__(self, in_channels: int, out_channels: int, params: AttentionUNetParams | None = None) -> None:
        super().__init__()
        self.params = params = params or AttentionUNetParams()
        self.out_channels = out_channels
        self.widths = [params.width * 2**i for i in range(5)]
        self.encoder = Encoder(in_channels, self.widths)
        self.context = nn.ModuleList()
        self.decoder = self.new_decoder()

    def new_decoder(self) -> nn.Module:
        return Decoder(self.widths, self.out_channels)
