"""``smp``: any segmentation-models-pytorch encoder (native or ``tu-`` timm) with smp's U-Net decoder.

Encoders are always built with random weights (``encoder_weights=None``: nothing is downloaded);
``weights`` names a local state dict file to load into the encoder. smp encoders return the input
image (and, for transformer-style encoders, an empty stride-2 placeholder) before their real
stages; per the contract in :mod:`harness.api` those are dropped from ``encoder(x)``, and each
decoder re-creates them as empty tensors for smp's decoder, which only reads their sizes.
``segmentation_models_pytorch`` is imported on first use, so loading the plugin stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.api import Backbone, Features
from harness.errors import UserError
from harness.hookspecs import hookimpl
from plugins.backbones.blocks import context_blocks

#: smp's U-Net decoder widths for depth 5; shallower encoders use the first ``depth`` entries
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)


class SMPBackboneError(UserError, ValueError):
    """An smp encoder cannot be built or its weights file cannot be loaded."""


@dataclass
class SMPParams:
    """smp U-Net settings. ``decoder_channels`` () means smp's default for the depth."""

    #: smp encoder name (resnet34, efficientnet-b0, ...) or 'tu-' + a timm model name (tu-resnet10t)
    encoder: str = "resnet34"
    #: encoder stages used, 1 to 5; the input size must be a multiple of 2**depth
    depth: int = 5
    #: decoder widths, one per stage, deep to shallow (empty: smp's 256,128,64,32,16)
    decoder_channels: tuple[int, ...] = ()
    #: ConvMixer context blocks at the bottleneck, one depth per block (empty: none; mgcc needs 3)
    context_lengths: tuple[int, ...] = ()
    #: depthwise kernel size of the context blocks (odd)
    kernel: int = 7
    #: local state-dict file of pretrained encoder weights (smp, whole smp model or timm keys); None: random
    weights: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= 5:
            raise ValueError(f"depth must be between 1 and 5, got {self.depth}")
        if self.decoder_channels and len(self.decoder_channels) != self.depth:
            raise ValueError(
                f"decoder_channels has {len(self.decoder_channels)} entries but depth is {self.depth}; "
                f"give one width per stage, e.g. decoder_channels={','.join(map(str, self.channels()))}"
            )
        if any(n < 1 for n in self.context_lengths):
            raise ValueError(f"every context block length must be >= 1, got {self.context_lengths}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number, got {self.kernel}")

    def channels(self) -> tuple[int, ...]:
        """The decoder widths actually used."""
        return tuple(self.decoder_channels) or DEFAULT_DECODER_CHANNELS[: self.depth]


class SMPEncoder(nn.Module):
    """Wraps an smp encoder; drops its leading non-stage outputs (input image, empty placeholders)."""

    def __init__(self, encoder: nn.Module, skip: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.skip = skip

    def forward(self, x: torch.Tensor) -> Features:
        return list(self.encoder(x))[self.skip :]


class SMPDecoder(nn.Module):
    """smp's ``UnetDecoder`` + ``SegmentationHead`` on the contract's feature list.

    ``lead_scales[i]``: size of the i-th dropped leading encoder output relative to the first real
    feature; they are passed to smp's decoder as empty (0-channel) tensors of that size.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        decoder_channels: Sequence[int],
        lead_scales: Sequence[int],
        out_channels: int,
        center: bool,
    ) -> None:
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.base import initialization as init
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        self.lead_scales = list(lead_scales)
        # the dropped leads are re-created with 0 channels; smp discards the first and concatenates the rest
        channels = [0] * len(self.lead_scales) + list(encoder_channels[len(self.lead_scales) :])
        self.decoder = UnetDecoder(
            encoder_channels=channels,
            decoder_channels=list(decoder_channels),
            n_blocks=len(decoder_channels),
            add_center_block=center,
        )
        self.head = SegmentationHead(decoder_channels[-1], out_channels, kernel_size=3)
        init.initialize_decoder(self.decoder)
        init.initialize_head(self.head)

    def forward(self, features: Features) -> torch.Tensor:
        first = features[0]
        n, _, h, w = first.shape
        leads = [first.new_empty((n, 0, h * s, w * s)) for s in self.lead_scales]
        return self.head(self.decoder([*leads, *features]))


class SMPUNet(Backbone):
    """A segmentation-models-pytorch encoder with smp's U-Net decoder(s)."""

    Params = SMPParams
    divisor: int = 32  # instance attribute: 2 ** depth

    def __init__(self, in_channels: int, out_channels: int, params: SMPParams | None = None) -> None:
        super().__init__()
        self.params = params = params or SMPParams()
        self.out_channels = out_channels
        self.divisor = 2**params.depth
        encoder = _build_encoder(params.encoder, in_channels, params.depth)
        if params.weights:
            load_encoder_weights(encoder, Path(params.weights))
        self._smp_channels = list(encoder.out_channels)
        skip, self._lead_scales = _leading_outputs(encoder, in_channels, self.divisor)
        self.feature_channels = self._smp_channels[skip:]
        self.encoder = SMPEncoder(encoder, skip)
        self.context = context_blocks(self.feature_channels[-1], params.context_lengths, params.kernel)
        self.decoder = self.new_decoder()

    def new_decoder(self) -> nn.Module:
        return SMPDecoder(
            self._smp_channels,
            self.params.channels(),
            self._lead_scales,
            self.out_channels,
            center=self.params.encoder.startswith("vgg"),  # as smp.Unet does
        )


def _build_encoder(name: str, in_channels: int, depth: int) -> nn.Module:
    from segmentation_models_pytorch.encoders import get_encoder

    try:
        return get_encoder(name, in_channels=in_channels, depth=depth, weights=None)
    except (KeyError, ValueError, RuntimeError, AssertionError) as exc:
        raise SMPBackboneError(
            f"cannot build smp encoder {name!r} (depth {depth}, {in_channels} input channels): {exc}. "
            "Use a native smp encoder name (e.g. resnet34) or 'tu-' + a timm model name (e.g. tu-resnet10t)."
        ) from None


def _leading_outputs(encoder: nn.Module, in_channels: int, divisor: int) -> tuple[int, list[int]]:
    """How many leading outputs of ``encoder`` are the input or empty placeholders, and their scales.

    Found with one tiny forward pass, which works for every encoder family smp has.
    """
    size = 2 * divisor
    x = torch.zeros(1, in_channels, size, size)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            outputs = list(encoder(x))
    finally:
        encoder.train(was_training)
    skip = 0
    while skip < len(outputs) - 1 and (outputs[skip] is x or outputs[skip].shape[1] == 0):
        skip += 1
    first = outputs[skip].shape[-1]
    return skip, [o.shape[-1] // first for o in outputs[:skip]]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SMPBackboneError(f"weights file {path} does not exist; pass the path of a saved state dict")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise SMPBackboneError(
            f"cannot read weights file {path}: {type(exc).__name__}: {exc}. "
            "It must be a state dict saved with torch.save(model.state_dict(), path)."
        ) from None
    if isinstance(state, Mapping) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        # a checkpoint that wraps the state dict, e.g. {"state_dict": {...}, "epoch": 3}
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SMPBackboneError(f"weights file {path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def _adapt_keys(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """Accept encoder state dicts, whole smp model state dicts and raw timm/torchvision ones."""
    if not own & state.keys():
        if any(k.startswith("encoder.") for k in state):  # a whole smp model
            state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        if not own & state.keys() and any(k.startswith("model.") for k in own):  # raw timm keys
            state = {f"model.{k}": v for k, v in state.items()}
    return state


def _adapt_input_channels(saved: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor | None:
    """A first-conv weight saved for 3 channels, adapted to ``wanted`` channels as smp does."""
    if saved.dim() != 4 or saved.shape[0] != wanted.shape[0] or saved.shape[2:] != wanted.shape[2:]:
        return None
    if saved.shape[1] != 3:
        return None
    if wanted.shape[1] == 1:
        return saved.sum(1, keepdim=True)
    reps = [saved[:, i % 3] for i in range(wanted.shape[1])]
    return torch.stack(reps, 1) * (3 / wanted.shape[1])


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load a local state dict file into ``encoder``; every encoder tensor must be found in it.

    Keys may be the smp encoder's own, a whole smp model's (``encoder.*``) or, for ``tu-``
    encoders, timm's (without ``model.``). Extra keys (a classifier head) are ignored. A first
    convolution saved for 3 input channels is adapted to the encoder's channel count.
    """
    own = encoder.state_dict()
    state = _adapt_keys(_read_state_dict(path), set(own))
    missing = [k for k in own if k not in state]
    if missing:
        raise SMPBackboneError(
            f"weights file {path} lacks {len(missing)} of the encoder's {len(own)} tensors "
            f"(first: {', '.join(missing[:3])}); it must be a state dict of the same encoder"
        )
    for key, tensor in own.items():
        saved = state[key]
        if saved.shape != tensor.shape:
            adapted = _adapt_input_channels(saved, tensor)
            if adapted is None:
                raise SMPBackboneError(
                    f"weights file {path}: tensor {key!r} has shape {tuple(saved.shape)}, "
                    f"the encoder needs {tuple(tensor.shape)}; it was saved for another encoder or depth"
                )
            state[key] = adapted
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)


@hookimpl
def register_backbones(register: Any) -> None:
    register("smp", SMPUNet)
