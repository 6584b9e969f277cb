"""Learning-rate and consistency-weight schedules (pure functions of the iteration)."""

from __future__ import annotations

import math
from typing import Literal

RampHorizon = Literal["published", "scaled"]

#: the published ramp: one ramp "epoch" is 150 iterations, full weight after 200 of them
PUBLISHED_RAMP_EPOCH = 150
PUBLISHED_RAMP_LENGTH = 200


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 0.9) -> float:
    """Poly decay ``base_lr * (1 - t/T)^power``, clamped so that it is exactly 0 at and past T.

    The published MGCC loop runs past T, where ``(1 - t/T) ** 0.9`` becomes a complex number.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    remaining = max(0.0, 1.0 - step / total_steps)
    return base_lr * remaining**power


def sigmoid_rampup(progress: float) -> float:
    """``exp(-5 (1 - x)^2)`` for x in [0, 1] (clamped), the ramp of SSL4MIS and MGCC."""
    x = min(max(progress, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - x) ** 2)


def ramp_progress(step: int, total_steps: int, horizon: RampHorizon, fraction: float = 1.0) -> float:
    """Progress in [0, 1] of the consistency ramp at ``step``.

    ``published``: ``min(step // 150, 200) / 200`` (full weight only at 30,000 iterations);
    ``scaled``: ``step / (fraction * total_steps)`` so that short runs reach full weight.
    """
    if horizon == "published":
        return min(step // PUBLISHED_RAMP_EPOCH, PUBLISHED_RAMP_LENGTH) / PUBLISHED_RAMP_LENGTH
    if horizon == "scaled":
        return min(1.0, step / max(1.0, fraction * total_steps))
    raise ValueError(f"unknown ramp horizon {horizon!r}; use 'published' or 'scaled'")


def consistency_weight(
    max_weight: float, step: int, total_steps: int, horizon: RampHorizon, fraction: float = 1.0
) -> float:
    """The consistency weight ``max_weight * sigmoid_rampup(progress)`` at ``step``."""
    return max_weight * sigmoid_rampup(ramp_progress(step, total_steps, horizon, fraction))
