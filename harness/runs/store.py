"""The results store: one directory per run, atomic writes, per-run locks.

A run directory holds run.json (resolved configuration, provenance, status, timings),
metrics.csv (one row per test image and checkpoint), curves.jsonl and checkpoints/.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import UserError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
CURVES_FILE = "curves.jsonl"
LOCK_FILE = ".lock"


class RunLockedError(UserError):
    """Another process holds the run's lock."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_rows_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write dict rows as CSV atomically (columns in first-seen order)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """The run.json of ``run_dir``, or None when there is none yet."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(run_dir: Path, stale_after: float = 6 * 3600) -> Iterator[None]:
    """Hold the run's lock: an exclusive create of ``.lock`` (works across machines on NFS).

    A lock left by a dead process on this host, or older than ``stale_after`` seconds and not
    refreshed, is taken over.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                held = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                held = {}
            dead = held.get("host") == owner["host"] and not _pid_alive(int(held.get("pid", -1)))
            old = time.time() - path.stat().st_mtime > stale_after
            if dead or old:
                path.unlink(missing_ok=True)
                continue
            raise RunLockedError(
                f"run {run_dir.name} is being trained by pid {held.get('pid')} on {held.get('host')}; "
                f"wait for it, or delete {path} if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(owner, fh)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one holding run.json) under ``root``."""
    root = Path(root)
    if (root / RUN_FILE).exists():
        return [root]
    return sorted(p.parent for p in root.rglob(RUN_FILE))
