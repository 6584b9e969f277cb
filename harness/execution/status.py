"""Where each run of a results directory stands: done, running, queued, interrupted, failed or not started."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.execution.joblog import LOG_FILE, read_job, tail
from harness.runs.store import lock_alive, read_run

# --------------------------------------------------------------------------- where a run stands

#: the states ``bench status`` reports
STATES = ("done", "running", "queued", "interrupted", "failed", "not started")

#: errors a run records when it was stopped (Ctrl-C, a termination signal) rather than broken
STOPPED_ERRORS = ("KeyboardInterrupt", "SystemExit", "Terminated")
RESUMES = "bench run resumes it from its last checkpoint"


@dataclass
class RunStatus:
    """One run's state as ``bench status`` shows it."""

    name: str
    state: str
    job: str = ""
    step: int | None = None
    iterations: int | None = None
    detail: str = ""
    log: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def last_step(run_dir: Path) -> int | None:
    """Training steps logged so far (the last step in curves.jsonl + 1), or None."""
    for line in reversed(tail(Path(run_dir) / "curves.jsonl", 50)):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "loss" in row and "step" in row:
            return int(row["step"]) + 1
    return None


def run_status(run_dir: Path, job_state: Callable[[dict[str, Any]], str | None]) -> RunStatus:
    """Combine run.json, the lock, job.json (asking its executor through ``job_state``) and the curves."""
    run_dir = Path(run_dir)
    try:
        record = read_run(run_dir) or {}
    except (OSError, ValueError):
        record = {"status": "failed", "error": f"{run_dir / 'run.json'} is unreadable"}
    job = read_job(run_dir) or {}
    status = RunStatus(name=run_dir.name, state="not started")
    if job:
        status.job = f"{job.get('executor', '?')} {job.get('job_id', '')}".strip()
    status.iterations = ((record.get("config") or {}).get("train") or {}).get("iterations")
    status.step = last_step(run_dir)
    recorded = record.get("status")
    alive = job_state(job) if job else None
    if recorded == "done":
        status.state, status.step = "done", status.iterations or status.step
    elif lock_alive(run_dir):
        status.state = "running"
    elif alive == "running":
        status.state, status.detail = "running", "starting"
    elif alive == "queued":
        status.state = "queued"
        if recorded:
            status.detail = "requeued: resumes from its checkpoint"
    elif recorded == "failed" and str(record.get("error", "")).startswith(STOPPED_ERRORS):
        status.state, status.detail = "interrupted", f"stopped ({record['error'].rstrip(': ')}); {RESUMES}"
    elif recorded == "failed":
        status.state, status.detail = "failed", str(record.get("error", ""))
    elif recorded == "running":
        status.state, status.detail = "interrupted", f"its process is gone; {RESUMES}"
    if status.state == "failed":
        status.log = tail(run_dir / LOG_FILE, 40) or (tail(Path(job["log"]), 40) if job.get("log") else [])
    return status
