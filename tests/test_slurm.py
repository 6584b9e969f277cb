"""The slurm executor against a real one-node Slurm cluster started on this machine (the slow tier).

scripts/slurm-local.sh installs slurm-wlm and munge when missing, writes slurm.conf and starts
munged, slurmctld and slurmd; the tests stop the cluster at the end. They skip only when the
packages cannot be installed (the script's exit code 3).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli.commands.status import collect

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm-local.sh"
BENCH = [sys.executable, "-m", "harness.cli"]
TINY = [
    "run", "--preset", "quick", "--image-size", "32", "--backbone", "unet", "--set", "backbone.width=4",
    "--set", "backbone.context_lengths=1,1,1", "--precision", "fp32", "--deterministic", "--quiet",
    "--set", "val_every=10", "--set", "checkpoint_every=10", "--device", "cpu",
]  # fmt: skip
GRID = [*TINY, "--ssl", "mean-teacher", "--seed", "0,1,2", "--iterations", "20"]
# long enough to be stopped between its first checkpoint (step 10) and its end
LONG = [*TINY, "--ssl", "supervised", "--iterations", "500"]
SLURM = ["--executor", "slurm", "--slurm-cpus-per-job", "1", "--slurm-time", "30", "--exec-set", "poll_s=1"]


@pytest.fixture(scope="module")
def cluster():
    if os.environ.get("SEGBENCH_SKIP_SLURM"):
        pytest.skip("SEGBENCH_SKIP_SLURM is set")
    started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if started.returncode == 3:
        pytest.skip(f"Slurm tests skipped: slurm-wlm and munge cannot be installed here ({started.stderr.strip()})")
    assert started.returncode == 0, started.stdout + started.stderr
    yield
    stopped = subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def _env(tmp: Path) -> dict[str, str]:
    # one torch thread everywhere: a job with one CPU trains with one, so the local runs use one as well
    return {**os.environ, "SEGBENCH_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}


def _bench(args: list[str], tmp: Path) -> str:
    result = subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=900, env=_env(tmp), cwd=tmp)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _metrics(out: Path) -> dict[str, list[dict[str, str]]]:
    tables = {}
    for path in sorted(out.glob("*/metrics.csv")):
        with path.open() as fh:
            tables[path.parent.name] = list(csv.DictReader(fh))
    return tables


def _job(run_dir: Path) -> str:
    return json.loads((run_dir / "job.json").read_text())["job_id"]


def _squeue() -> str:
    return subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True).stdout


def _wait_for(condition, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def local_results(tmp_path_factory) -> Path:
    """The grid and the long run, trained by the local executor: what Slurm must reproduce."""
    tmp = tmp_path_factory.mktemp("local")
    _bench([*GRID, "--out", str(tmp / "out")], tmp)
    _bench([*LONG, "--out", str(tmp / "out")], tmp)
    return tmp / "out"


def test_a_grid_on_slurm_equals_the_local_executor(cluster, local_results, tmp_path):
    out = tmp_path / "out"
    submitted = _bench([*GRID, *SLURM, "--out", str(out)], tmp_path)  # returns once submitted
    array = re.search(r"Slurm job array (\d+)", submitted)[1]
    jobs = sorted(_job(d) for d in out.glob("*_*"))
    assert jobs == [f"{array}_{i}" for i in range(3)]  # one array, one task per run
    seen = {s.state for s in collect(out)}
    assert seen <= {"queued", "running", "done"} and seen
    _bench([*GRID, *SLURM, "--out", str(out), "--wait"], tmp_path)  # nothing resubmitted: waits for the array
    assert sorted(_job(d) for d in out.glob("*_*")) == jobs
    assert [s.state for s in collect(out)] == ["done"] * 3
    local = {name: rows for name, rows in _metrics(local_results).items() if name.startswith("mean-teacher")}
    assert len(local) == 3 and _metrics(out) == local
    for run_dir in out.glob("*_*"):
        assert re.search(rf"attempt on \S+ pid \d+ job {array}_\d", (run_dir / "run.log").read_text())


def _start_long_run(tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "out"
    _bench([*LONG, *SLURM, "--out", str(out)], tmp_path)
    _wait_for(lambda: list(out.glob("*/checkpoints/latest.pt")), "the first checkpoint")
    run_dir = next(out.glob("*/run.json")).parent
    return run_dir, _job(run_dir)


def _check_resumed(run_dir: Path, local_results: Path) -> None:
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "done" and record["resumed"] and record["train"]["resumed_from"] >= 10
    assert _metrics(run_dir.parent)[run_dir.name] == _metrics(local_results)[run_dir.name]


def test_a_cancelled_job_resubmitted_resumes_from_its_checkpoint(cluster, local_results, tmp_path):
    run_dir, job = _start_long_run(tmp_path)
    subprocess.run(["scancel", job], check=True)
    _wait_for(lambda: job not in _squeue().split(), "the cancelled job to leave the queue", timeout=120)
    (state,) = collect(run_dir.parent)
    assert state.state == "interrupted" and "SIGTERM" in state.detail and state.step < 500
    assert "stopped by SIGTERM" in (run_dir / "run.log").read_text()
    _bench([*LONG, *SLURM, "--out", str(run_dir.parent), "--wait"], tmp_path)
    new_job = _job(run_dir)
    assert new_job != job and json.loads((run_dir / "job.json").read_text())["history"][-1]["job_id"] == job
    _check_resumed(run_dir, local_results)


def test_a_preempted_job_is_requeued_and_resumes(cluster, local_results, tmp_path):
    """SIGUSR2 is what Slurm sends ahead of preemption or the time limit: submitit requeues the job."""
    run_dir, job = _start_long_run(tmp_path)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    _wait_for(lambda: "stopped" in (run_dir / "run.log").read_text(), "the job to stop on SIGUSR2", timeout=120)
    _wait_for(lambda: json.loads((run_dir / "run.json").read_text()).get("status") == "done", "the requeued job")
    log = (run_dir / "run.log").read_text()
    assert len(re.findall(rf"attempt on \S+ pid \d+ job {job}$", log, re.M)) == 2  # same job id, a second attempt
    assert _job(run_dir) == job  # nobody resubmitted it
    _check_resumed(run_dir, local_results)


def test_a_partition_without_gpus_gets_no_gpu_request(cluster, tmp_path):
    """The local cluster has no GPUs: the default device trains on its CPUs (sinfo says so, no gres request);
    an explicit GPU request fails before anything is submitted, naming the flags to pass."""
    no_device = [arg for arg in TINY if arg not in ("--device", "cpu")]
    args = [*no_device, "--ssl", "supervised", "--iterations", "4", "--folds", "0", *SLURM]
    out = tmp_path / "out"
    said = _bench([*args, "--out", str(out), "--wait"], tmp_path)
    assert "has no GPUs (sinfo): the runs train on CPUs there" in said
    assert [s.state for s in collect(out)] == ["done"]
    refused = subprocess.run(
        [*BENCH, *args, "--slurm-gpus-per-job", "1", "--out", str(tmp_path / "gpu")],
        capture_output=True, text=True, timeout=300, env=_env(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--slurm-gpus-per-job 1 needs 1 GPU(s) per job but the default partition has 0" in refused.stderr
    assert not list((tmp_path / "gpu").glob("*/job.json"))
