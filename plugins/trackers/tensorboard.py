"""The ``tensorboard`` tracker: TensorBoard event files in the run folder (``tensorboard --logdir RESULTS``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.api import ScalarRow, TrackedRun, Tracker, TrackerError
from harness.hookspecs import hookimpl

INSTALL = "pip install tensorboard (or install segbench with its trackers extra)"


@dataclass
class TensorBoardParams:
    """``log_dir``: folder of the event files; relative to the run folder, or absolute (then one sub-folder per run).

    ``flush_secs``: how often pending events are written to disk.
    """

    log_dir: str = "tensorboard"
    flush_secs: int = 30


class TensorBoardTracker(Tracker):
    """Writes scalars (``train/*``, ``val/*``, ``test/*``), the config as text and figures as images."""

    Params = TensorBoardParams

    def __init__(self, params: TensorBoardParams) -> None:
        super().__init__(params)
        self.writer: Any = None

    def start(self, run: TrackedRun) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrackerError(f"the tensorboard tracker needs the tensorboard package: {INSTALL}") from exc
        log_dir = Path(self.params.log_dir).expanduser()
        log_dir = log_dir / run.name if log_dir.is_absolute() else run.run_dir / log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=self.params.flush_secs)
        config = json.dumps(run.config, indent=2, sort_keys=True, default=str)
        # TensorBoard renders text as Markdown: indent by four spaces for a code block
        self.writer.add_text("config", "\n".join("    " + line for line in config.splitlines()))
        self.writer.add_text("run", f"{run.name} (run id {run.run_id}){' (resumed)' if run.resumed else ''}")

    def log_scalars(self, rows: list[ScalarRow]) -> None:
        for step, scalars in rows:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)

    def log_figure(self, name: str, figure: Any, step: int) -> None:
        self.writer.add_figure(f"figures/{name}", figure, step, close=False)

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.add_text("status", status)
            self.writer.close()
            self.writer = None


@hookimpl
def register_trackers(register) -> None:
    register("tensorboard", TensorBoardTracker)
