"""Executors: the contract, job records, run states for `bench status`, and the local executor (--jobs)."""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from harness.cli.commands import status as status_cmd
from harness.config.params import ConfigError
from harness.execution.executors import Executor, ExecutorError, build_executor, executor_options
from harness.execution.joblog import RunLog, read_job, tail, write_job
from harness.execution.status import last_step, run_status
from harness.execution.tasks import Report, Request, finish
from harness.hookspecs import hookimpl
from harness.plugins import build_registry, get_registry
from harness.runs.grid import expand
from harness.runs.store import LOCK_FILE, atomic_write_json
from harness.training import ddp
from plugins.executors.local import LocalExecutor
from plugins.executors.slurm import ATTEMPT_FILE, parse_extra, parse_time, slurm_threads, take_over_own_lock

BENCH = [sys.executable, "-m", "harness.cli"]
TINY = [
    "--preset", "quick", "--image-size", "32", "--backbone", "unet", "--set", "backbone.width=4",
    "--set", "backbone.context_lengths=1,1,1", "--precision", "fp32", "--deterministic", "--quiet",
    "--set", "val_every=10", "--set", "checkpoint_every=10", "--device", "cpu",
]  # fmt: skip


# --------------------------------------------------------------------------- options and registry


def test_built_in_executors_are_registered():
    assert {"local", "slurm"} <= set(get_registry().names("executor"))


def test_options_reach_the_executor_and_bad_ones_name_the_fix():
    assert build_executor("local", executor_options("local", 3, {}, None)).params.jobs == 3
    given = {("slurm", "partition"): "gpu", ("slurm", "time"): "2:00:00"}
    slurm = build_executor("slurm", executor_options("slurm", None, given, None))
    assert slurm.params.partition == "gpu" and parse_time(slurm.params.time) == 120
    with pytest.raises(ExecutorError, match="--slurm-partition is an option of the slurm executor"):
        executor_options("local", None, {("slurm", "partition"): "gpu"}, None)
    with pytest.raises(ConfigError, match="no parameter 'jobs'"):
        build_executor("slurm", executor_options("slurm", 2, {}, None))
    with pytest.raises(ConfigError, match="at least 1"):
        build_executor("local", {"jobs": 0})
    assert build_executor("slurm", executor_options("slurm", None, {}, ["poll-s=2.5"])).params.poll_s == 2.5
    with pytest.raises(ExecutorError, match="KEY=VALUE"):
        executor_options("slurm", None, {}, ["poll_s"])


class _InlineExecutor(Executor):
    """A third-party executor in a few lines: the hook is all it takes."""

    def submit(self, request: Request) -> Report:
        return Report(done=[r.name for r in request.runs])


def _inline_plugin() -> type:
    class Plugin:
        @staticmethod
        @hookimpl
        def register_executors(register) -> None:
            register("inline", _InlineExecutor)

    return Plugin


def test_a_plugin_adds_an_executor_and_a_clash_names_both_plugins():
    registry = build_registry(extra_plugins=[("myengine", _inline_plugin())])
    assert registry.get("executor", "inline") is _InlineExecutor
    assert registry.owner("executor", "local").name == "local"
    clash = build_registry(extra_plugins=[("a", _inline_plugin()), ("b", _inline_plugin())])
    assert clash.plugins["b"].status == "failed" and "'a'" in clash.plugins["b"].error


@pytest.mark.parametrize(
    ("text", "minutes"), [("90", 90), ("30:30", 31), ("4:00:00", 240), ("1-12", 2160), ("1-00:00:01", 1441)]
)
def test_slurm_time_formats(text, minutes):
    assert parse_time(text) == minutes


def test_slurm_extra_and_threads():
    assert parse_extra("--qos=high --exclusive --comment='a b'") == {"qos": "high", "exclusive": True, "comment": "a b"}
    with pytest.raises(ExecutorError, match="--account=lab"):
        parse_extra("-A lab")
    with pytest.raises(ExecutorError, match="H:MM:SS"):
        parse_time("four hours")
    assert slurm_threads({"SLURM_CPUS_PER_TASK": "6"}) == 6
    assert slurm_threads({"SLURM_CPUS_ON_NODE": "8", "SLURM_NTASKS_PER_NODE": "2"}) == 4
    assert slurm_threads({}) is None


# --------------------------------------------------------------------------- records, logs and states


def _run_dir(tmp_path: Path, status: str | None = None, iterations: int = 40) -> Path:
    run_dir = tmp_path / "out" / f"run_{status or 'none'}"
    run_dir.mkdir(parents=True)
    if status:
        record = {"status": status, "config": {"train": {"iterations": iterations}}}
        if status == "failed":
            record["error"] = "NonFiniteLossError: non-finite loss at step 9"
        atomic_write_json(run_dir / "run.json", record)
    return run_dir


def _no_job(job):
    return None


def test_job_records_keep_their_history(tmp_path):
    write_job(tmp_path, {"executor": "slurm", "job_id": "7_0"})
    write_job(tmp_path, {"executor": "slurm", "job_id": "9_0"})
    job = read_job(tmp_path)
    assert job["job_id"] == "9_0" and [h["job_id"] for h in job["history"]] == ["7_0"]
    assert read_job(tmp_path / "missing") is None


def test_run_log_and_tail(tmp_path):
    log = RunLog(tmp_path / "r")
    for i in range(30):
        log(f"line {i}")
    assert tail(tmp_path / "r" / "run.log", 2)[-1].endswith("line 29") and len(tail(log.path, 5)) == 5
    assert tail(tmp_path / "nothing.log") == []


def test_last_step_is_read_from_the_curves(tmp_path):
    rows = [{"step": 8, "loss": 1.0}, {"step": 9, "loss": 0.9}, {"step": 9, "event": "val", "dice_all": 0.5}]
    (tmp_path / "curves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert last_step(tmp_path) == 10
    assert last_step(tmp_path / "none") is None


def test_states_of_runs(tmp_path):
    fresh = _run_dir(tmp_path)
    assert run_status(fresh, _no_job).state == "not started"

    write_job(fresh, {"executor": "slurm", "job_id": "12_1"})
    queued = run_status(fresh, lambda job: "queued")
    assert (queued.state, queued.job) == ("queued", "slurm 12_1")

    done = _run_dir(tmp_path, "done")
    assert run_status(done, _no_job).state == "done" and run_status(done, _no_job).step == 40

    failed = _run_dir(tmp_path, "failed")
    RunLog(failed)("Traceback (most recent call last): ... NonFiniteLossError")
    st = run_status(failed, _no_job)
    assert st.state == "failed" and "non-finite" in st.detail and "NonFiniteLossError" in st.log[-1]

    running = _run_dir(tmp_path, "running")
    (running / "curves.jsonl").write_text(json.dumps({"step": 14, "loss": 1.0}) + "\n")
    (running / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    st = run_status(running, _no_job)
    assert (st.state, st.step, st.iterations) == ("running", 15, 40)

    # the same run after its process died: the lock's pid is gone, nothing is queued
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (running / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    st = run_status(running, _no_job)
    assert st.state == "interrupted" and "process is gone" in st.detail and st.log == []
    # ... and when its Slurm job was requeued after preemption
    write_job(running, {"executor": "slurm", "job_id": "3"})
    requeued = run_status(running, lambda job: "queued")
    assert requeued.state == "queued" and "resumes" in requeued.detail

    # a lock held on another machine counts while its heartbeat is fresh
    (running / LOCK_FILE).write_text(json.dumps({"host": "node-elsewhere", "pid": 1}))
    assert run_status(running, _no_job).state == "running"
    old = time.time() - 3600
    os.utime(running / LOCK_FILE, (old, old))
    assert run_status(running, _no_job).state == "interrupted"


def test_a_run_stopped_with_ctrl_c_is_interrupted_not_failed(tmp_path):
    stopped = _run_dir(tmp_path, "failed")
    record = json.loads((stopped / "run.json").read_text())
    atomic_write_json(stopped / "run.json", {**record, "error": "KeyboardInterrupt: "})
    RunLog(stopped)("Traceback (most recent call last): ... KeyboardInterrupt")
    st = run_status(stopped, _no_job)
    assert st.state == "interrupted" and "resumes" in st.detail and st.log == []
    named = stopped.rename(stopped.parent / "mean-teacher_none_cmunet_l0.25_f0_0123456789")
    app = typer.Typer()
    app.callback()(lambda: None)
    status_cmd.register(app)
    result = CliRunner().invoke(app, ["status", str(tmp_path / "out")], terminal_width=60)
    assert result.exit_code == 0 and "1 interrupted" in result.output and "Traceback" not in result.output
    assert named.name in result.output  # the run name, which ends in its id, is never cut


def test_a_requeued_job_takes_over_the_lock_its_killed_attempt_left_on_another_node(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "node-a", "pid": 123, "time": 0}))
    (tmp_path / ATTEMPT_FILE).write_text(json.dumps({"job_id": "7_1", "host": "node-a", "pid": 123}))
    assert not take_over_own_lock(tmp_path, "8_0")  # another job's lock: left alone
    assert (tmp_path / LOCK_FILE).exists()
    (tmp_path / ATTEMPT_FILE).write_text(json.dumps({"job_id": "7_1", "host": "node-a", "pid": 123}))
    assert take_over_own_lock(tmp_path, "7_1") and not (tmp_path / LOCK_FILE).exists()
    assert json.loads((tmp_path / ATTEMPT_FILE).read_text())["pid"] == os.getpid()


def test_status_command_lists_every_run(tmp_path):
    done = _run_dir(tmp_path, "done")
    failed = _run_dir(tmp_path, "failed")
    RunLog(failed)("boom: the last words of the run")
    write_job(_run_dir(tmp_path), {"executor": "local", "job_id": "1", "host": "elsewhere", "pid": 1})
    (tmp_path / "out" / ".slurm" / "5_0").mkdir(parents=True)  # submitit's folder is not a run
    app = typer.Typer()
    app.callback()(lambda: None)
    status_cmd.register(app)
    result = CliRunner().invoke(app, ["status", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    states = {row["name"]: row["state"] for row in json.loads(result.output)}
    assert states == {done.name: "done", failed.name: "failed", "run_none": "not started"}
    shown = CliRunner().invoke(app, ["status", str(tmp_path / "out")], terminal_width=200)
    assert "1 done, 1 failed, 1 not started" in shown.output and "the last words of the run" in shown.output
    missing = CliRunner().invoke(app, ["status", str(tmp_path / "nope")])
    assert missing.exit_code != 0 and "does not exist" in str(missing.exception or missing.output)


def test_failures_are_reported_with_a_pointer_to_status():
    lines: list[str] = []
    finish(Report(done=["a"], busy=["b"]), Path("runs"), lines.append)
    assert "1 run(s) were being trained by another process" in lines[0]
    with pytest.raises(ExecutorError, match=r"1 run\(s\) failed, first c: boom.*bench status runs"):
        finish(Report(failed={"c": "boom"}), Path("runs"), lines.append)


# --------------------------------------------------------------------------- batch split of distributed runs


def test_distributed_batch_split():
    info = ddp.DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cpu"))
    idx = torch.arange(10, 14)
    assert ddp.local_slice(idx, info).tolist() == [12, 13]
    both = [ddp.local_slice(idx, ddp.DistInfo(r, 2, r, torch.device("cpu"))) for r in (0, 1)]
    assert torch.cat(both).tolist() == idx.tolist()
    with pytest.raises(ddp.DistributedError, match="unlabeled batch 3 does not split over 2"):
        ddp.check_batch_split(4, 3, True, info)
    ddp.check_batch_split(4, 3, False, info)  # a method without unlabeled data draws none
    assert ddp.env_world({"WORLD_SIZE": "2", "RANK": "1"}) == (1, 2, 1)
    assert ddp.env_world({}) is None
    assert ddp.rank_seed(5, None) == 5 == ddp.rank_seed(5, ddp.DistInfo(0, 2, 0, idx.device))
    assert ddp.rank_seed(5, info) != 5


# --------------------------------------------------------------------------- the local executor, for real


def test_a_failing_run_leaves_its_log_and_the_grid_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    base = {"preset": "quick", "image_size": 32, "iterations": 10, "precision": "fp32", "backbone": "unet"}
    sets = ["backbone.width=4", "backbone.context_lengths=1,1,1", "val_every=10", "checkpoint_every=10"]
    bad = expand(base, {"ssl": ["supervised"]}, [*sets, "lr=1e30"])
    good = expand(base, {"ssl": ["supervised"]}, sets)
    lines: list[str] = []
    request = Request(bad + good, tmp_path / "out", device="cpu", show_progress=False, log=lines.append)
    report = LocalExecutor(build_executor("local", {}).params).submit(request)
    assert list(report.failed) == [bad[0].name] and report.done == [good[0].name]
    log = (tmp_path / "out" / bad[0].name / "run.log").read_text()
    assert "Traceback" in log and "NonFiniteLossError" in log
    st = status_cmd.collect(tmp_path / "out")
    assert {s.name: s.state for s in st} == {bad[0].name: "failed", good[0].name: "done"}


def _bench(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=900, env=env, cwd=cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _metrics(out: Path) -> dict[str, list[dict[str, str]]]:
    tables = {}
    for path in sorted(out.glob("*/metrics.csv")):
        with path.open() as fh:
            tables[path.parent.name] = list(csv.DictReader(fh))
    return tables


@pytest.mark.slow
def test_two_jobs_give_the_results_of_one(tmp_path):
    """--jobs 2 trains the 2 runs of a grid in 2 processes; every metric equals the one-process results."""
    # one torch thread everywhere: --jobs 2 on 2 cores gives each process 1, and the sequential run gets 1 too
    env = {**os.environ, "SEGBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    grid = ["run", *TINY, "--ssl", "mean-teacher", "--seed", "0,1", "--iterations", "20"]
    _bench([*grid, "--out", str(tmp_path / "one")], tmp_path, env)
    _bench([*grid, "--out", str(tmp_path / "two"), "--jobs", "2"], tmp_path, env)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one) == 2 and one == two
    pids = {re.search(r"attempt on \S+ pid (\d+)", (tmp_path / "two" / n / "run.log").read_text())[1] for n in two}
    assert len(pids) == 2  # each run in its own worker process
    assert {s.state for s in status_cmd.collect(tmp_path / "two")} == {"done"}


def test_the_slurm_options_of_bench_run_come_from_the_executor(tmp_path, monkeypatch, capsys):
    """The host names no --slurm-* option: the slurm executor lists them in ``cli_options``."""
    import inspect
    import sys

    from harness.cli.app import main
    from harness.cli.commands.run import run, with_executor_options
    from harness.execution.executors import executor_flags

    flags = {f.flag: f for f in executor_flags()}
    assert {"--slurm-partition", "--slurm-gpus-per-job", "--slurm-cpus-per-job", "--slurm-time", "--slurm-mem",
            "--slurm-extra"} <= set(flags)  # fmt: skip
    assert flags["--slurm-gpus-per-job"].type is int and flags["--slurm-time"].type is str
    assert not any(name.startswith("slurm") for name in inspect.signature(run).parameters)
    names = set(inspect.signature(with_executor_options(run)).parameters)
    assert "slurm_partition" in names and "executor_values" not in names
    out = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["bench", "run", "--slurm-partition", "gpu", "--dry-run", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert "--slurm-partition is an option of the slurm executor; add --executor slurm" in capsys.readouterr().err
