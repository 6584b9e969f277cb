"""One training stage of the LDM fit: its progress line and its resumable checkpoint in the fit's workdir.

A stage saves ``<workdir>/<name>.pt`` (weights, optimiser, random generator, loss curve, elapsed
seconds) atomically every tenth of its steps and when it ends, so that a fit interrupted in the
denoiser stage does not train the autoencoder again, and one interrupted half-way through a
stage continues from its last save with the same random stream: the resumed fit ends with the
weights an uninterrupted one would have.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.progress import SILENT, ProgressTask, Reporter

#: checkpoints per stage (plus one at its end)
SAVES_PER_STAGE = 10


@dataclass
class FitTracker:
    """Where the stages of one fit report (``reporter``) and keep their checkpoints (``workdir``; None: none).

    ``identity`` (the fit's parameters and inputs) is stored in each checkpoint; one made for other
    inputs is ignored.
    """

    workdir: Path | None = None
    reporter: Reporter = SILENT
    identity: dict[str, Any] = field(default_factory=dict)

    def stage(self, name: str, total: int, modules: dict[str, Any], label: str | None = None) -> Stage:
        return Stage(name, total, modules, self.workdir, self.reporter, label, self.identity)


class Stage:
    """The progress task and checkpoint of one stage (``autoencoder`` or ``denoiser``)."""

    def __init__(
        self,
        name: str,
        total: int,
        modules: dict[str, Any],
        workdir: Path | None,
        reporter: Reporter = SILENT,
        label: str | None = None,
        identity: dict[str, Any] | None = None,
    ) -> None:
        self.name, self.total = name, total
        self.modules = modules  # nn.Modules, optimisers, EMA wrappers: anything with (load_)state_dict
        self.path = Path(workdir) / f"{name}.pt" if workdir is not None else None
        self.identity = identity or {}
        self.every = max(1, total // SAVES_PER_STAGE)
        self.reporter = reporter
        self.label = label or f"ldm {name}"
        self.previous_seconds = 0.0
        self.bar: ProgressTask | None = None
        self._t0 = time.perf_counter()

    # ---------------------------------------------------------------- resume

    def restore(self, gen: torch.Generator, curve: Any) -> int:
        """Load the stage's checkpoint when there is one for these inputs; returns the first step to run."""
        start = 0
        if self.path is not None and self.path.is_file():
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if state.get("identity") == self.identity:
                for key, module in self.modules.items():
                    _load(module, state["modules"][key])
                gen.set_state(state["generator"])
                curve.points, curve._sum, curve._count = list(state["curve"][0]), *state["curve"][1:]
                self.previous_seconds = state["seconds"]
                start = int(state["step"])
                self.reporter.message(
                    f"{self.label}: resuming from step {start} of {self.total} ({self.path})"
                    if start < self.total
                    else f"{self.label}: finished in an earlier attempt, loaded from {self.path}"
                )
        self.bar = self.reporter.task(self.label, total=self.total, start=start, unit="step")
        self._t0 = time.perf_counter()
        return start

    def save(self, done: int, gen: torch.Generator, curve: Any) -> None:
        """Write the state after ``done`` steps (atomically: a crash while saving keeps the previous one)."""
        if self.path is None:
            return
        state = {
            "identity": self.identity,
            "step": done,
            "modules": {key: _state(module) for key, module in self.modules.items()},
            "generator": gen.get_state(),
            "curve": (list(curve.points), float(curve._sum), curve._count),
            "seconds": self.seconds,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    # ---------------------------------------------------------------- the loop

    def step_done(self, step: int, loss: torch.Tensor, gen: torch.Generator, curve: Any) -> None:
        """After step ``step``: progress, and a checkpoint every tenth of the stage."""
        assert self.bar is not None, "restore() first"
        self.bar.update(step + 1, loss=loss.detach())
        if (step + 1) % self.every == 0 and step + 1 < self.total:
            self.save(step + 1, gen, curve)

    def finish(self, gen: torch.Generator, curve: Any) -> None:
        """Close the progress line and save the finished stage."""
        if self.bar is not None:
            self.bar.close()
        self.save(self.total, gen, curve)

    @property
    def seconds(self) -> float:
        """Training seconds of this stage over every attempt."""
        return self.previous_seconds + time.perf_counter() - self._t0


def _state(module: Any) -> Any:
    if isinstance(module, nn.Module | torch.optim.Optimizer):
        return module.state_dict()
    return {"module": module.module.state_dict(), "updates": module.updates}  # networks.EMA


def _load(module: Any, state: Any) -> None:
    if isinstance(module, nn.Module | torch.optim.Optimizer):
        module.load_state_dict(state)
    else:
        module.module.load_state_dict(state["module"])
        module.updates = state["updates"]
