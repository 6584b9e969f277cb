"""Fault injection, stuck runs and races: damaged checkpoints, partial saves, a full disk, stale locks, the cache."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import make_dataset, small_tmpfs, tiny_run

from harness.data.datasets import load_dataset
from harness.execution.status import run_status
from harness.execution.tasks import ExecutorError, Report, finish
from harness.runs.lifecycle import execute
from harness.runs.store import LOCK_FILE, STALE_AFTER_S, RunLockedError, lock_alive, read_run, run_lock
from harness.training.engine import CheckpointError, atomic_torch_save


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))


def _quiet(_message: str) -> None:
    pass


def _interrupted(tmp_path: Path) -> tuple[object, Path, Path]:
    """A finished tiny run turned into an interrupted one (status running, its checkpoints in place)."""
    data, out = make_dataset(tmp_path / "ds"), tmp_path / "out"
    run = tiny_run(data)
    # keep_resume_state: a finished run deletes latest.pt, an interrupted one has it
    run_dir = execute(run, out, show_progress=False, log=_quiet, keep_resume_state=True)
    record = read_run(run_dir)
    record["status"] = "running"
    (run_dir / "run.json").write_text(json.dumps(record))
    return run, out, run_dir


# --------------------------------------------------------------------------- damaged latest.pt


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_latest_checkpoint_names_the_file_and_restart_damaged_trains_from_scratch(tmp_path, damage):
    run, out, run_dir = _interrupted(tmp_path)
    latest = run_dir / "checkpoints" / "latest.pt"
    raw = latest.read_bytes()
    latest.write_bytes({"truncated": raw[: len(raw) // 2], "empty": b"", "garbage": os.urandom(4096)}[damage])
    for _ in range(2):  # every rerun gives the same message, not EOFError or torch's text
        with pytest.raises(CheckpointError, match=rf"checkpoint {latest} is damaged .*--restart-damaged"):
            execute(run, out, show_progress=False, log=_quiet)
    assert read_run(run_dir)["status"] == "failed"
    execute(run, out, show_progress=False, log=_quiet, restart_damaged=True, keep_resume_state=True)
    record = read_run(run_dir)
    assert record["status"] == "done" and record["train"]["resumed_from"] is None
    assert [p.name.split("-")[0] for p in (run_dir / "checkpoints").glob("latest.pt.damaged-*")] == [
        "latest.pt.damaged"
    ]
    assert torch.load(latest, weights_only=True)["step"] == 3  # a new, complete checkpoint


def test_a_killed_save_leaves_no_temporary_file_behind_after_the_rerun(tmp_path):
    run, out, run_dir = _interrupted(tmp_path)
    (run_dir / "checkpoints" / "latest.pt").unlink()
    leftover = run_dir / "checkpoints" / ".latest.pt.4242.tmp"  # what SIGKILL during torch.save leaves
    leftover.write_bytes(b"\0" * 10_000)
    execute(run, out, show_progress=False, log=_quiet)
    assert not leftover.exists() and read_run(run_dir)["status"] == "done"


def test_a_full_disk_while_saving_names_the_file_frees_the_space_and_marks_the_run_failed(tmp_path, monkeypatch):
    """A real full disk: a 300 KiB tmpfs (mounted as root). Without root, an OSError(ENOSPC) is injected
    at the write call (``os.fsync`` of the checkpoint file) instead."""
    data = make_dataset(tmp_path / "ds")
    run = tiny_run(data, overrides={"backbone": {"width": "8", "context_lengths": "1,1,1"}, "": {"val_every": "2"}})
    with small_tmpfs(tmp_path / "disk", "300k") as mounted:
        out = tmp_path / "disk" / "out"
        if not mounted:
            monkeypatch.setattr(os, "fsync", _no_space)
        with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*\.pt \(No space left on device\)"):
            execute(run, out, show_progress=False, log=_quiet)
        run_dir = out / run.name
        assert read_run(run_dir)["status"] == "failed"
        assert not list(run_dir.rglob("*.tmp"))  # the partial file gave its space back
        if mounted:
            free = os.statvfs(tmp_path / "disk")
            assert free.f_bavail * free.f_frsize > 100_000


def _no_space(fd: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_atomic_save_keeps_the_old_checkpoint_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    atomic_torch_save({"step": 1}, path)
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(CheckpointError, match="No space left"):
        atomic_torch_save({"step": 2, "w": torch.zeros(1000)}, path)
    assert torch.load(path, weights_only=True) == {"step": 1} and os.listdir(tmp_path) == ["latest.pt"]


# --------------------------------------------------------------------------- stale locks

ROOT = Path(__file__).resolve().parents[1]
CONTENDER = """
import json, sys, time
from pathlib import Path
from harness.runs.store import RunLockedError, run_lock
from contextlib import ExitStack
root, start, rounds = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
outcomes = []
with ExitStack() as held:  # a winner keeps every lock it took until all rounds are over
    for r in range(rounds):
        time.sleep(max(0.0, start + r * 0.02 - time.time()))  # every round starts at once in every process
        try:
            held.enter_context(run_lock(root / f"run{r}", heartbeat_s=None))
            outcomes.append("got")
        except RunLockedError:
            outcomes.append("busy")
        except Exception as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    print(json.dumps(outcomes), flush=True)
    sys.stdin.read()  # hold the locks until the parent has read every outcome
"""


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def _stale_lock(run_dir: Path, dead_pid: int) -> None:
    """A lock left by a process of this host that is gone (as after SIGKILL)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid}))


@pytest.mark.parametrize("contenders, rounds", [(2, 150), (12, 50)])
def test_exactly_one_of_many_processes_takes_over_a_stale_lock(tmp_path, contenders, rounds):
    """Processes meeting one stale lock at the same moment: one takes it, the others are told it is busy.

    The old read / unlink / recreate takeover let two of 8 processes win 7 rounds in 40 here (and crashed in 2).
    """
    dead = _dead_pid()
    for r in range(rounds):
        _stale_lock(tmp_path / f"run{r}", dead)
    start = time.time() + 2.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(tmp_path), str(start), str(rounds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},  # this checkout's harness, whatever is installed
        )  # fmt: skip
        for _ in range(contenders)
    ]
    results = []
    try:
        for proc in procs:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            results.append(json.loads(line))
    finally:
        for proc in procs:
            proc.stdin.close()
            proc.wait(timeout=60)
    for r in range(rounds):
        outcomes = sorted(result[r] for result in results)
        assert outcomes == ["busy"] * (contenders - 1) + ["got"], (r, outcomes)
    assert not list(tmp_path.rglob("*.takeover-*"))  # guards are removed


def _other_process_lock(run_dir: Path, age_s: float, host: str | None = None, pid: int | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid or os.getppid()}))
    then = time.time() - age_s
    os.utime(path, (then, then))


@pytest.mark.parametrize(
    "host, pid, age_s, live",
    [
        (None, None, 10, True),  # a live process of this host, fresh heartbeat
        (None, None, STALE_AFTER_S + 60, False),  # alive pid, but no heartbeat: hung, or the pid was reused
        ("node-elsewhere", 1, 10, True),  # another machine, fresh heartbeat
        ("node-elsewhere", 1, STALE_AFTER_S + 60, False),  # another machine, heartbeat long gone
        (None, 999_999_999, 10, False),  # a dead pid of this host
    ],
)
def test_the_run_lock_and_bench_status_apply_one_stale_lock_rule(tmp_path, host, pid, age_s, live):
    run_dir = tmp_path / "run"
    _other_process_lock(run_dir, age_s, host, pid)
    (run_dir / "run.json").write_text(json.dumps({"status": "running"}))
    assert lock_alive(run_dir) is live
    status = run_status(run_dir, lambda job: None)
    if live:
        assert status.state == "running"
        with pytest.raises(RunLockedError, match="being trained by pid"), run_lock(run_dir, heartbeat_s=None):
            pass
    else:
        assert status.state == "interrupted" and "bench run resumes it" in status.detail
        with run_lock(run_dir, heartbeat_s=None):  # ... and bench run does take it over
            assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_lock_heartbeat_keeps_a_long_run_live(tmp_path):
    run_dir = tmp_path / "run"
    with run_lock(run_dir, heartbeat_s=0.05):
        old = time.time() - STALE_AFTER_S - 60
        os.utime(run_dir / LOCK_FILE, (old, old))
        time.sleep(0.3)
        assert time.time() - (run_dir / LOCK_FILE).stat().st_mtime < 5
    assert not (run_dir / LOCK_FILE).exists()


def test_a_lock_taken_over_from_a_holder_is_not_removed_by_that_holder(tmp_path):
    run_dir = tmp_path / "run"
    with run_lock(run_dir, heartbeat_s=None):
        (run_dir / LOCK_FILE).write_text(json.dumps({"host": "node-b", "pid": 5, "token": "theirs"}))
    assert json.loads((run_dir / LOCK_FILE).read_text())["token"] == "theirs"


def test_bench_run_fails_when_every_run_was_busy(tmp_path):
    lines: list[str] = []
    with pytest.raises(ExecutorError, match=r"nothing was trained: all 2 run\(s\) are being trained by other"):
        finish(Report(busy=["a", "b"]), tmp_path, lines.append)
    finish(Report(done=["a"], busy=["b"]), tmp_path, lines.append)  # some trained: fine, and said
    assert "1 run(s) were being trained by another process" in lines[-1]


# --------------------------------------------------------------------------- the decode cache


def test_a_damaged_decode_cache_pack_is_a_warned_cache_miss(tmp_path):
    data = make_dataset(tmp_path / "ds")
    first = load_dataset(str(data), image_size=16, cache_dir=tmp_path / "c")
    packs = list((tmp_path / "c").rglob("packs/*.npz"))
    assert len(packs) == 1
    raw = bytearray(packs[0].read_bytes())
    for k in range(len(raw) // 3, len(raw) // 3 + 64):
        raw[k] ^= 0xFF
    packs[0].write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=rf"data cache file {packs[0]} is damaged"):
        again = load_dataset(str(data), image_size=16, cache_dir=tmp_path / "c")
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    with np.load(packs[0]) as rebuilt:  # rewritten intact
        assert rebuilt["images"].shape[0] == 10


def test_a_latest_checkpoint_with_non_finite_weights_restarts_truly_from_scratch(tmp_path):
    run, out, run_dir = _interrupted(tmp_path)
    fresh = execute(run, tmp_path / "fresh", show_progress=False, log=_quiet)
    latest = run_dir / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    first = next(k for k, v in state["method"].items() if v.is_floating_point())
    state["method"][first].view(-1)[0] = float("nan")
    torch.save(state, latest)
    with pytest.raises(CheckpointError, match=rf"checkpoint {latest} holds non-finite weights.*--restart-damaged"):
        execute(run, out, show_progress=False, log=_quiet)
    execute(run, out, show_progress=False, log=_quiet, restart_damaged=True)
    # the same numbers as a run that never saw the damaged file: no weight of it leaked into the restart
    assert (run_dir / "metrics.csv").read_text() == (fresh / "metrics.csv").read_text()
