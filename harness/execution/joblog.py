"""The per-run job record (job.json) and the run log (run.log); the lock heartbeat lives in the run lock.

Executors record where each run went in ``run_dir/job.json`` so that ``bench status`` can report it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.runs.store import HEARTBEAT_S, atomic_write_json

Log = Callable[[str], None]

JOB_FILE = "job.json"
LOG_FILE = "run.log"
__all__ = ["HEARTBEAT_S", "JOB_FILE", "LOG_FILE", "RunLog", "end_job", "read_job", "tail", "write_job"]


# --------------------------------------------------------------------------- job records and logs


def write_job(run_dir: Path, record: dict[str, Any]) -> None:
    """Record where a run was sent (job.json), keeping earlier attempts under ``history``."""
    previous = read_job(run_dir)
    history = []
    if previous:
        history = previous.pop("history", [])
        history.append(previous)
    atomic_write_json(run_dir / JOB_FILE, {**record, "history": history[-20:]})


def end_job(run_dir: Path, outcome: str) -> None:
    """Mark the run's job record as ended (for executors whose jobs outlive no process of their own).

    A record already ended (a finished run that was only checked) is left alone, so that checking
    finished runs writes nothing, and a read-only results folder can be checked.
    """
    job = read_job(run_dir)
    if job is not None and "ended" not in job:
        atomic_write_json(Path(run_dir) / JOB_FILE, {**job, "ended": time.time(), "outcome": outcome})


def read_job(run_dir: Path) -> dict[str, Any] | None:
    """The run's job.json, or None (also when unreadable: it is informational only)."""
    try:
        return json.loads((Path(run_dir) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None


class RunLog:
    """Appends a run's messages to run_dir/run.log (and echoes them): failures leave their story behind."""

    def __init__(self, run_dir: Path, echo: Log | bool | None = None) -> None:
        self.path = Path(run_dir) / LOG_FILE
        self.echo: Log | None = print if echo is True else (echo or None)

    def write(self, text: str) -> None:
        """Append ``text``; a log that cannot be written (a read-only results folder) is skipped, not fatal:
        whatever needs to write there (the run's lock) fails with its own message."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(text if text.endswith("\n") else text + "\n")
        except OSError:
            pass

    def record(self, message: str) -> None:
        """Append a timestamped line to run.log only (progress lines the terminal shows its own way)."""
        self.write(f"{time.strftime('%H:%M:%S')} {message}")

    def __call__(self, message: str) -> None:
        self.record(message)
        if self.echo is not None:
            self.echo(message)


def tail(path: Path, lines: int = 15) -> list[str]:
    """The last ``lines`` lines of a text file (empty when it does not exist)."""
    try:
        with Path(path).open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]
