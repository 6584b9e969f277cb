"""Run presets: sizes, lengths and schedules for the CPU demo, a CPU hour, and the published run.

Component-specific values (backbone widths, generator sizes, method gates) live in each
component's ``PRESETS`` table under the same preset name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from harness.errors import UserError


@dataclass(frozen=True)
class Preset:
    """What a run preset decides when the user leaves a setting out."""

    name: str
    image_size: int
    iterations: int
    val_every: int
    checkpoint_every: int
    ramp_horizon: str
    #: folds trained when ``--folds`` is left out; None: every fold of the split
    folds: tuple[int, ...] | None
    #: synthetic images per fold; None: as many as the fold's training images
    n_synthetic: int | str | None
    precision: str
    #: T = int(iterations x labeled fraction), as the published train.py (max_iterations x semi_percent)
    iterations_times_labeled: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values (recorded in run.json)."""
        values = dataclasses.asdict(self)
        values["folds"] = list(self.folds) if self.folds is not None else None
        return values


PRESETS: dict[str, Preset] = {
    # The CPU demo: bench run --generator ldm --ssl mgcc in <= 10 minutes on 2 cores, LDM included.
    "quick": Preset(
        name="quick",
        image_size=64,
        iterations=300,
        val_every=50,
        checkpoint_every=100,
        ramp_horizon="scaled",
        folds=(0,),
        n_synthetic=128,
        # bf16 where the hardware computes it natively, else fp32: over seeds 0-2 MGCC's test Dice was
        # 0.791 ± 0.022 in bf16 and 0.787 ± 0.022 in fp32, at 1.74x the images/s
        # (benchmarks/results/precision-parity.json); --precision fp32 restores fp32
        precision="auto",
    ),
    # Where an SSL gain can be measured on a CPU hour or a short GPU lease.
    "medium": Preset(
        name="medium",
        image_size=128,
        iterations=2500,
        val_every=250,
        checkpoint_every=500,
        ramp_horizon="scaled",
        folds=(0,),
        n_synthetic=None,
        precision="fp32",
    ),
    # The published run: 256², published widths, published ramp horizon, fp32 as the published code
    # trains (bf16 is --precision bf16). T follows train.py line 110: int(40000 x labeled fraction),
    # so 10,000 at 1/4 and 20,000 at 1/2 (see preset_iterations).
    "paper": Preset(
        name="paper",
        image_size=256,
        iterations=40000,
        val_every=500,
        checkpoint_every=1000,
        ramp_horizon="published",
        folds=None,
        n_synthetic=None,
        precision="fp32",
        iterations_times_labeled=True,
    ),
}


def get_preset(name: str) -> Preset:
    """The preset ``name``; raises naming the presets that exist."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; use one of auto, {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_iterations(preset: Preset, labeled: float) -> tuple[int, str]:
    """T for a labeled fraction, and the rule that gave it (written into the plan and run.json).

    Presets with ``iterations_times_labeled`` follow the published train.py: ``max_iterations`` 40000
    times ``semi_percent``, truncated to an integer.
    """
    if preset.iterations_times_labeled:
        iterations = int(preset.iterations * labeled)
        return iterations, f"int({preset.iterations} x labeled {labeled:g}), the published train.py rule"
    return preset.iterations, "the preset's value"


def resolve_preset(name: str, cuda: bool) -> str:
    """``auto`` is ``paper`` on CUDA and ``quick`` on the CPU."""
    if name == "auto":
        return "paper" if cuda else "quick"
    return get_preset(name).name
