"""The results store: one directory per run, atomic writes, per-run locks.

A run directory holds run.json (resolved configuration, provenance, status, timings),
metrics.csv (one row per test image and checkpoint), curves.jsonl and checkpoints/.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.osutil import pid_alive

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
    try:
        with tmp.open("w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: give the space back, and name the file (a bare write error names none)
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc


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


class DamagedRunFileError(UserError, ValueError):
    """A run.json that is not readable JSON (truncated by a full disk, or edited)."""


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """The run.json of ``run_dir``, or None when there is none yet; a damaged file raises naming it."""
    path = Path(run_dir) / RUN_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise DamagedRunFileError(
            f"{path} is damaged ({exc}); delete it to resume the run from its checkpoints (or delete "
            f"{path.parent} to train it again from scratch)"
        ) from None
    return record


def safe_file_name(name: str) -> str:
    """``name`` as one safe path component: no separators, no control characters, no leading dot."""
    cleaned = re.sub(r"[^A-Za-z0-9._+ -]", "_", name).lstrip(". ")
    return cleaned or "_"


# --------------------------------------------------------------------------- the run lock

#: how often a lock holder refreshes its lock's mtime (its heartbeat)
HEARTBEAT_S = 60.0
#: a lock without a heartbeat for this long is stale, on any host (the one rule of the run lock,
#: ``bench status`` and every executor); on the holder's own host a dead pid makes it stale at once
STALE_AFTER_S = 3 * HEARTBEAT_S
#: a takeover guard older than this was left by a process that died while taking a lock over
_GUARD_STALE_S = 30.0


@dataclass
class LockState:
    """A lock file as found: who holds it, how old its heartbeat is, and why it is stale (or "" if live)."""

    holder: dict[str, Any]
    age_s: float
    stale: str
    key: str  # identifies this very file (inode + mtime): a takeover removes only what it judged stale

    def describe(self) -> str:
        who = f"pid {self.holder.get('pid')} on {self.holder.get('host')}"
        return f"{who}, last heartbeat {self.age_s:.0f} s ago"


def lock_state(path: Path, stale_after_s: float = STALE_AFTER_S) -> LockState | None:
    """The lock at ``path`` (None when there is none), judged live or stale by the one rule above."""
    try:
        st = os.stat(path)
        text = Path(path).read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text or "{}")
        holder = holder if isinstance(holder, dict) else {}
    except ValueError:
        holder = {}
    age = time.time() - st.st_mtime
    stale = ""
    if holder.get("host") == socket.gethostname() and not pid_alive(holder.get("pid")):
        stale = f"its process {holder.get('pid')} on this host is gone"
    elif age > stale_after_s:
        stale = f"no heartbeat for {age:.0f} s (more than {stale_after_s:.0f} s)"
    return LockState(holder, age, stale, f"{st.st_ino}-{st.st_mtime_ns}")


def lock_alive(run_dir: Path) -> bool:
    """True when the run's lock is held by a live process (the rule of :func:`lock_state`)."""
    state = lock_state(Path(run_dir) / LOCK_FILE)
    return state is not None and not state.stale


def _remove_if_stale(path: Path, seen: LockState) -> None:
    """Remove the stale lock ``seen``, atomically with respect to other processes doing the same.

    Reading, judging and removing a lock are separate steps, so contenders first take a guard file
    named after the very lock file they judged (an O_EXCL create, safe on NFS). The guard's holder
    judges the lock again and removes it only when it is still that stale file: a fresh lock
    created meanwhile by another contender is never removed. Everyone then retries the O_EXCL create
    of the lock itself, which exactly one of them wins.
    """
    guard = path.with_name(f"{path.name}.takeover-{seen.key}")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:  # a contender is taking it over; its guard outlives it only if it died meanwhile
            if time.time() - guard.stat().st_mtime > _GUARD_STALE_S:
                guard.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        time.sleep(random.uniform(0.001, 0.01))
        return
    os.close(fd)
    try:
        now = lock_state(path)
        if now is not None and now.key == seen.key and now.stale:
            path.unlink(missing_ok=True)
    finally:
        guard.unlink(missing_ok=True)


def _heartbeat(path: Path, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        with contextlib.suppress(OSError):  # released, or the folder went away
            os.utime(path)


def _writable_error(run_dir: Path, exc: OSError) -> UserError:
    return UserError(
        f"cannot write to run directory {run_dir} ({exc.strerror or exc}); training needs a writable results "
        "folder: give another --out, or fix its permissions / free space"
    )


@contextmanager
def run_lock(run_dir: Path, *, heartbeat_s: float | None = HEARTBEAT_S, attempts: int = 200) -> Iterator[None]:
    """Hold the run's lock: an exclusive create of ``.lock`` (works across machines on NFS).

    While held, a thread refreshes the lock's mtime every ``heartbeat_s`` seconds (None: no heartbeat).
    A stale lock (see :func:`lock_state`) is taken over atomically; a live one raises
    :class:`RunLockedError`. Release removes the lock only while it is still this process's own.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    token = uuid.uuid4().hex
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "token": token}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _writable_error(run_dir, exc) from None
    for _ in range(attempts):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            state = lock_state(path)
            if state is None:
                continue  # released meanwhile: try again
            if not state.stale:
                raise RunLockedError(
                    f"run {run_dir.name} is being trained by {state.describe()}; wait for it. A lock without "
                    f"a heartbeat for {STALE_AFTER_S:.0f} s (or whose process on its host is gone) is taken over"
                ) from None
            _remove_if_stale(path, state)
            continue
        except OSError as exc:
            raise _writable_error(run_dir, exc) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(owner, fh)
            fh.flush()
            os.fsync(fh.fileno())
        break
    else:
        raise RunLockedError(f"run {run_dir.name}: could not take its lock {path} (too many contenders); rerun later")
    stop = threading.Event()
    if heartbeat_s:
        threading.Thread(target=_heartbeat, args=(path, stop, heartbeat_s), name="segbench-lock", daemon=True).start()
    try:
        yield
    finally:
        stop.set()
        state = lock_state(path)
        if state is not None and state.holder.get("token") == token:  # never remove a lock taken over from us
            path.unlink(missing_ok=True)


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one holding run.json) under ``root``."""
    root = Path(root)
    if (root / RUN_FILE).exists():
        return [root]
    return sorted(p.parent for p in root.rglob(RUN_FILE))
