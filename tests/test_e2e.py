"""End-to-end runs of the `bench` CLI on the phantom dataset (the slow tier)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = [sys.executable, "-m", "harness.cli"]
# Tiny, deterministic CPU runs: 32² images, a width-4 U-Net with 3 context stages.
TINY = [
    "--preset", "quick", "--image-size", "32", "--backbone", "unet", "--set", "backbone.width=4",
    "--set", "backbone.context_lengths=1,1,1", "--precision", "fp32", "--deterministic", "--quiet",
    "--set", "val_every=10", "--set", "checkpoint_every=10",
]  # fmt: skip


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "SEGBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def _bench(args: list[str], tmp_path: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*BENCH, *args], capture_output=True, text=True, timeout=timeout, env=_env(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _only_run(out: Path) -> Path:
    runs = [p.parent for p in out.glob("*/run.json")]
    assert len(runs) == 1, runs
    return runs[0]


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def _mean_lesion_dice(run_dir: Path, checkpoint: str) -> float:
    rows = [r for r in _metrics(run_dir) if r["checkpoint"] == checkpoint and r["lesion"] == "True"]
    return sum(float(r["dice"]) for r in rows) / len(rows)


def test_killed_run_resumes_with_identical_metrics(tmp_path):
    """SIGKILL a run after its first checkpoint; restarting it ends exactly like an uninterrupted run."""
    args = ["run", *TINY, "--ssl", "mgcc", "--iterations", "40"]
    _bench([*args, "--out", str(tmp_path / "full")], tmp_path)
    full = _only_run(tmp_path / "full")

    out = tmp_path / "killed"
    proc = subprocess.Popen([*BENCH, *args, "--out", str(out)], env=_env(tmp_path), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 600
    while not list(out.glob("*/checkpoints/latest.pt")):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = _only_run(out)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    assert (run_dir / ".lock").exists()  # a killed process leaves its lock; its pid is dead, so it is taken over
    _bench([*args, "--out", str(out)], tmp_path)
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["train"]["resumed_from"] is not None
    assert _metrics(run_dir) == _metrics(full)


# The quick preset's MGCC run is the README main command less the LDM: about 8 minutes on one busy core
# here, over 15 on a slower CI machine, hence its own time limit.
@pytest.mark.parametrize("ssl", ["supervised", pytest.param("mgcc", marks=pytest.mark.timeout(3000))])
def test_quick_preset_learns_the_phantom(tmp_path, ssl):
    """The quick preset reaches a test Dice >= 0.7 on the phantom and writes per-image metrics."""
    args = ["run", "--ssl", ssl, "--preset", "quick", "--quiet", "--out", str(tmp_path / "runs")]
    result = _bench(args, tmp_path, timeout=2800)
    run_dir = _only_run(tmp_path / "runs")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done"
    assert {r["checkpoint"] for r in _metrics(run_dir)} == {"best", "last"}
    assert _mean_lesion_dice(run_dir, "best") >= 0.7, result.stdout[-2000:]
    if ssl == "supervised":  # skipping a finished run does not depend on the method: check it once
        assert "skipped" in _bench(args, tmp_path).stdout


def test_two_processes_share_one_results_directory(tmp_path):
    """Two `bench run` processes on one grid and one results directory: every run done once, none corrupt."""
    out = tmp_path / "shared"
    args = [*BENCH, "run", *TINY, "--ssl", "supervised,cct", "--labeled", "0.25,0.5", "--iterations", "20",
            "--out", str(out)]  # fmt: skip
    procs = [
        subprocess.Popen(
            args, env=_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    runs = sorted(p.parent for p in out.glob("*/run.json"))
    assert len(runs) == 4
    for run_dir in runs:
        assert json.loads((run_dir / "run.json").read_text())["status"] == "done"
        assert len(_metrics(run_dir)) > 0
    # a run is trained by one process only: the other skipped it (locked or done)
    trained = sum(o.count("trained 20 iterations") for o in outputs)
    assert trained == 4, outputs


def test_ldm_is_fitted_once_per_fold_and_reused_by_a_second_method(tmp_path):
    """`--generator ldm` with two methods: the second run's log says the fold's generator is cached."""
    tiny_ldm = [
        "--set", "ldm.ae_channels=8,16", "--set", "ldm.ae_norm_groups=4", "--set", "ldm.ae_steps=10",
        "--set", "ldm.unet_channels=16,32", "--set", "ldm.unet_norm_groups=8", "--set", "ldm.unet_steps=10",
        "--set", "ldm.sample_steps=3", "--n-synthetic", "8",
    ]  # fmt: skip
    out = tmp_path / "runs"
    result = _bench(
        ["run", *TINY, "--ssl", "mgcc,cct", "--generator", "ldm", "--iterations", "10", *tiny_ldm, "--out", str(out)],
        tmp_path,
    )
    assert result.stdout.count("cached") >= 1, result.stdout[-3000:]
    records = [json.loads(p.read_text()) for p in out.glob("*/run.json")]
    assert len(records) == 2 and all(r["status"] == "done" for r in records)
    keys = {r["generator"]["cache_key"] for r in records}
    assert len(keys) == 1 and [r["generator"]["cached"] for r in records].count(True) == 1
    assert all(r["data"]["n_unlabeled_total"] == r["data"]["n_unlabeled_real"] + 8 for r in records)
