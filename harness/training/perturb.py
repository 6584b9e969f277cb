"""Feature perturbations of the auxiliary decoders (SSL4MIS ``UNet_CCT``, MGCC; REFERENCE §1.5).

Each perturbation is a callable ``p(x, generator) -> x'`` applied to one feature map. A fresh draw
is made on every call, so each feature level gets its own noise, as in the published code. Random
draws use ``generator`` when given (for resumable, deterministic runs), else the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F


def _draw_device(like: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else like.device


def draw_uniform(
    shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None, low: float = 0.0, high: float = 1.0
) -> torch.Tensor:
    """U(low, high) samples of ``shape`` in fp32 on ``like``'s device (drawn with ``generator``)."""
    r = torch.rand(tuple(shape), generator=generator, device=_draw_device(like, generator))
    return (r * (high - low) + low).to(like.device)


def draw_normal(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal samples of ``shape`` in fp32 on ``like``'s device."""
    return torch.randn(tuple(shape), generator=generator, device=_draw_device(like, generator)).to(like.device)


def draw_int(high: int, shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Integers uniform in [0, high) of ``shape`` on ``like``'s device."""
    r = torch.randint(0, high, tuple(shape), generator=generator, device=_draw_device(like, generator))
    return r.to(like.device)


class Perturbation(Protocol):
    """A feature perturbation: ``p(x, generator) -> perturbed x`` (same shape, dtype and layout)."""

    name: ClassVar[str]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class FeatureNoise:
    """Multiplicative uniform noise ``x + x * n``, n ~ U(-r, r) of shape C x H x W shared by the batch."""

    uniform_range: float = 0.3
    name: ClassVar[str] = "feature_noise"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = draw_uniform(x.shape[1:], x, generator, -self.uniform_range, self.uniform_range)
        noise = noise.to(x.dtype).unsqueeze(0)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # the same values in x's layout: a mixed-layout multiply (and its backward) takes a strided path
            noise = noise.contiguous(memory_format=torch.channels_last)
        return x + x * noise


@dataclass(frozen=True)
class Dropout:
    """Element-wise dropout that is always active (the published code calls ``F.dropout(x, p)``)."""

    p: float = 0.3
    name: ClassVar[str] = "dropout"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None:
            return F.dropout(x, self.p, training=True)
        if self.p <= 0.0:
            return x
        if generator.device == x.device:
            keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=generator)
        else:
            keep = draw_uniform(x.shape, x, generator).ge(self.p).to(x.dtype)
        return x * keep * (1.0 / (1.0 - self.p))


@dataclass(frozen=True)
class FeatureDropout:
    """Zero the most activated region: positions whose channel mean is >= u x its per-sample max.

    u ~ U(low, high) is one scalar per call, shared by the batch (``np.random.uniform(0.7, 0.9)``).
    """

    low: float = 0.7
    high: float = 0.9
    name: ClassVar[str] = "feature_dropout"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        attention = x.mean(dim=1, keepdim=True)
        max_val = attention.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
        u = draw_uniform((), x, generator, self.low, self.high).to(attention.dtype)
        keep = (attention < max_val * u).to(x.dtype)
        return x * keep


def perturb_all(
    features: Sequence[torch.Tensor], perturbation: Perturbation, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """Apply ``perturbation`` to every feature level (each level gets its own draw)."""
    return [perturbation(f, generator) for f in features]
