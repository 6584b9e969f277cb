"""``unet``: the plain U-Net (double 3x3 conv + BN + ReLU, 2x2 max-pool, up-sampling + conv, skips).

``width`` 64 gives the 64-1024 U-Net of the MGCC paper's baselines. ``style = "ssl4mis"`` builds
SSL4MIS's own U-Net instead (:mod:`plugins.backbones.ssl4mis_unet`: LeakyReLU, encoder dropout
0.05-0.5, 1x1 conv + bilinear or transposed-conv up-sampling, 3x3 head); with ``width`` 16 it is the
16-256 network SSL4MIS's baselines train (``--set backbone.style=ssl4mis --set backbone.width=16``).
``context_lengths`` optionally adds ConvMixer blocks at the bottleneck so that multi-level methods
(MGCC) can run on a U-Net too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from harness.api import Backbone
from harness.hookspecs import hookimpl
from plugins.backbones.blocks import UNetDecoder, UNetEncoder, context_blocks
from plugins.backbones.ssl4mis_unet import UPSAMPLING, SSL4MISDecoder, ssl4mis_encoder

STYLES = ("plain", "ssl4mis")


@dataclass
class UNetParams:
    """U-Net settings: base width (channels double at each of the 5 levels), style, optional context.

    ``style``: ``plain`` (ReLU, nearest up-sampling + conv, 1x1 head) or ``ssl4mis`` (SSL4MIS's
    network); ``upsampling`` applies to ``ssl4mis`` only: ``bilinear`` (SSL4MIS's UNet) or ``transpose``.
    """

    #: channels of the first level; they double at each of the 5 levels
    width: int = 16
    #: ConvMixer context blocks at the bottleneck, one depth per block (empty: none; mgcc needs 3)
    context_lengths: tuple[int, ...] = ()
    #: depthwise kernel size of the context blocks (odd)
    kernel: int = 7
    #: plain (ReLU, nearest up-sampling) or ssl4mis (SSL4MIS's U-Net: LeakyReLU, encoder dropout 0.05-0.5)
    style: str = field(default="plain", metadata={"added_later": True})
    #: up-sampling of the ssl4mis style: bilinear (SSL4MIS's UNet, 1x1 conv + bilinear) or transpose
    upsampling: str = field(default="bilinear", metadata={"added_later": True})

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style {self.style!r}: use one of {', '.join(STYLES)}")
        if self.upsampling not in UPSAMPLING:
            raise ValueError(f"upsampling {self.upsampling!r}: use one of {', '.join(UPSAMPLING)}")
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")
        if any(n < 1 for n in self.context_lengths):
            raise ValueError(f"every context block length must be >= 1, got {self.context_lengths}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {self.kernel}")


class UNet(Backbone):
    """U-Net with 5 levels (4 poolings); decoders without attention gates."""

    Params = UNetParams
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"width": 16},
        "medium": {"width": 32},
        "paper": {"width": 64},
    }
    divisor: ClassVar[int] = 16

    def __init__(self, in_channels: int, out_channels: int, params: UNetParams | None = None) -> None:
        super().__init__()
        self.params = params = params or UNetParams()
        self.out_channels = out_channels
        self.widths = [params.width * 2**i for i in range(5)]
        ssl4mis = params.style == "ssl4mis"
        self.encoder = ssl4mis_encoder(in_channels, self.widths) if ssl4mis else UNetEncoder(in_channels, self.widths)
        self.context = context_blocks(self.widths[-1], params.context_lengths, params.kernel)
        self.decoder = self.new_decoder()

    def new_decoder(self) -> nn.Module:
        if self.params.style == "ssl4mis":
            return SSL4MISDecoder(self.widths, self.out_channels, self.params.upsampling)
        return UNetDecoder(self.widths, self.out_channels, gates=False)


@hookimpl
def register_backbones(register) -> None:
    register("unet", UNet)
