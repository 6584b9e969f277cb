"""``cmunet``: the CMU-Net body that MGCC is built on (published ``src/network/MGCC.py``).

Encoder: five double-conv stages of widths 16m..256m (m = ``dim_mult``) with 2x2 max-pooling;
context: one ConvMixer block per entry of ``lengths`` at the bottleneck; decoder: MSAG-gated
skips, nearest up-sampling + conv, double convs and a 1x1 head. With ``dim_mult=4``,
``lengths=(3, 3, 3)`` and 3 input channels the backbone has 52,142,145 parameters and MGCC's
training model (three more decoders) 122,182,980, as published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from harness.api import Backbone
from harness.hookspecs import hookimpl
from plugins.backbones.blocks import UNetDecoder, UNetEncoder, context_blocks


@dataclass
class CMUNetParams:
    """CMU-Net / MGCC network settings (paper: dim_mult 4, three ConvMixer blocks of depth 3, kernel 7)."""

    #: width multiplier: stage widths are 16*dim_mult*(1, 2, 4, 8, 16) (paper 4)
    dim_mult: int = 4
    #: depth of each ConvMixer context block at the bottleneck; one block per entry (paper 3,3,3)
    lengths: tuple[int, ...] = (3, 3, 3)
    #: depthwise kernel size of the ConvMixer blocks (odd)
    kernel: int = 7

    def __post_init__(self) -> None:
        if self.dim_mult < 1:
            raise ValueError(f"dim_mult must be >= 1, got {self.dim_mult}")
        if any(n < 1 for n in self.lengths):
            raise ValueError(f"every ConvMixer block length must be >= 1, got {self.lengths}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {self.kernel}")


class CMUNet(Backbone):
    """CMU-Net: U-Net encoder, ConvMixer context blocks, MSAG-gated decoder(s)."""

    Params = CMUNetParams
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"dim_mult": 1},
        "medium": {"dim_mult": 2},
        "paper": {"dim_mult": 4},
    }
    divisor: ClassVar[int] = 16

    def __init__(self, in_channels: int, out_channels: int, params: CMUNetParams | None = None) -> None:
        super().__init__()
        self.params = params = params or CMUNetParams()
        self.out_channels = out_channels
        self.widths = [16 * params.dim_mult * 2**i for i in range(5)]
        self.encoder = UNetEncoder(in_channels, self.widths)
        self.context = context_blocks(self.widths[-1], params.lengths, params.kernel)
        self.decoder = self.new_decoder()

    def new_decoder(self) -> nn.Module:
        return UNetDecoder(self.widths, self.out_channels, gates=True)


@hookimpl
def register_backbones(register) -> None:
    register("cmunet", CMUNet)
