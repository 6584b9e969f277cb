"""``bench status RUNS``: where every run of a results directory stands, with its job and last logged step."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.cli import options
from harness.errors import UserError
from harness.execution.joblog import JOB_FILE
from harness.execution.status import STATES, RunStatus, run_status
from harness.plugins import get_registry
from harness.runs.store import RUN_FILE

_COLOURS = {
    "done": "green",
    "running": "cyan",
    "queued": "blue",
    "interrupted": "yellow",
    "failed": "red",
    "not started": "dim",
}


def run_directories(root: Path) -> list[Path]:
    """Run directories under ``root``: those with run.json, or a job.json of a run not yet started."""
    root = Path(root)
    if (root / RUN_FILE).exists() or (root / JOB_FILE).exists():
        return [root]
    found = {p.parent for name in (RUN_FILE, JOB_FILE) for p in root.rglob(name)}
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts))


def _job_state(job: dict[str, Any]) -> str | None:
    """Ask the executor that recorded ``job`` whether its job is alive (None when it is not installed here)."""
    registry = get_registry()
    name = str(job.get("executor", ""))
    if name not in registry.components.get("executor", {}):
        return None
    return registry.get("executor", name).job_state(job)


def collect(root: Path) -> list[RunStatus]:
    """The status of every run under ``root``."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"results directory {root} does not exist; give the --out folder of `bench run`")
    return [run_status(run_dir, _job_state) for run_dir in run_directories(root)]


def status(
    runs: Path = typer.Argument(..., help="A results directory (the --out of bench run) or one run directory."),
    as_json: bool = options.json_option(),
    log_lines: int = typer.Option(15, "--log-lines", help="Lines of log shown for each failed run."),
) -> None:
    """Every run as done / running / queued / interrupted / failed / not started, with its job and last step."""
    rows = collect(runs)
    if as_json:
        typer.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    console = Console()
    table = Table(title=f"{len(rows)} run(s) in {runs}")
    # the run name ends in its id, which is what tells runs apart: never cut it, let the detail wrap
    table.add_column("run", no_wrap=True, min_width=max((len(r.name) for r in rows), default=3))
    for column in ("state", "job", "step"):
        table.add_column(column, no_wrap=True)
    table.add_column("detail", overflow="fold")
    for row in rows:
        step = "" if row.step is None else f"{row.step}" + (f"/{row.iterations}" if row.iterations else "")
        colour = _COLOURS.get(row.state, "")
        table.add_row(row.name, f"[{colour}]{row.state}[/{colour}]", row.job, step, escape(row.detail))
    console.print(table)
    counts = Counter(row.state for row in rows)
    console.print(", ".join(f"{counts[s]} {s}" for s in STATES if counts[s]) or "no runs yet")
    for row in rows:
        if row.state == "failed" and row.log and log_lines > 0:
            console.rule(f"[red]{row.name}[/red]: last lines of its log")
            console.print(escape("\n".join(row.log[-log_lines:])))


def register(app: typer.Typer) -> None:
    app.command("status")(status)
