"""Model size and compute: parameter counts and multiply-accumulates (MACs) of one forward pass.

MACs are counted with forward hooks on convolution (incl. transposed) and linear layers only:
normalisation, activations, pooling and element-wise operations are not counted, which is the
usual convention for such numbers (and the one REFERENCE.md uses).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (each shared tensor once); buffers are not counted."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def layer_macs(layer: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """MACs of one call of a convolution or linear ``layer`` (whole batch); 0 for other layers."""
    if isinstance(layer, _CONV):
        per_output = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        return output.numel() * per_output
    if isinstance(layer, _CONV_T):
        per_input = layer.out_channels // layer.groups * math.prod(layer.kernel_size)
        return inputs[0].numel() * per_input
    if isinstance(layer, nn.Linear):
        return output.numel() * layer.in_features
    return 0


@dataclass
class MacCount:
    """MACs of one forward pass per sample: ``total`` and per named part (see :func:`count_macs`)."""

    total: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def count_macs(
    module: nn.Module,
    *inputs: torch.Tensor,
    parts: Mapping[str, nn.Module] | None = None,
    run: Callable[..., Any] | None = None,
) -> MacCount:
    """Count the MACs per sample of ``run(*inputs)`` (default ``module(*inputs)``).

    Runs once in eval mode without gradients (training mode is restored). The batch size is the
    first dimension of the first input. ``parts`` maps names to sub-modules of ``module``; each
    part's MACs are those of the layers inside it, a layer being counted each time it runs.
    """
    if not inputs:
        raise ValueError("count_macs needs at least one example input")
    batch = max(int(inputs[0].shape[0]), 1)
    owner: dict[int, str] = {}
    for name, part in (parts or {}).items():
        for layer in part.modules():
            owner.setdefault(id(layer), name)
    totals = {name: 0 for name in parts or {}}
    total = 0

    def hook(layer: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        nonlocal total
        macs = layer_macs(layer, args, output)
        total += macs
        name = owner.get(id(layer))
        if name is not None:
            totals[name] += macs

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (*_CONV, *_CONV_T, nn.Linear))]
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            (run or module)(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return MacCount(total=total // batch, parts={k: v // batch for k, v in totals.items()})


def backbone_complexity(backbone: nn.Module, in_channels: int, image_size: int) -> dict[str, int]:
    """Parameters and MACs per image of a :class:`harness.api.Backbone`, total and per part.

    Keys: ``params``, ``params_encoder``, ``params_context``, ``params_decoder``, ``macs``,
    ``macs_encoder``, ``macs_context``, ``macs_decoder`` (forward = encoder, all context, decoder).
    """
    parts = {"encoder": backbone.encoder, "context": backbone.context, "decoder": backbone.decoder}
    device = next(backbone.parameters()).device
    x = torch.zeros(1, in_channels, image_size, image_size, device=device)
    macs = count_macs(backbone, x, parts=parts)
    out = {"params": count_parameters(backbone)}
    out.update({f"params_{k}": count_parameters(m) for k, m in parts.items()})
    out["macs"] = macs.total
    out.update({f"macs_{k}": v for k, v in macs.parts.items()})
    return out
