"""The ``slurm`` executor: one Slurm job per run (job arrays for grids), through submitit.

``bench run --executor slurm`` submits one job array and returns (or waits with ``--wait``). Each
array task trains one run with :func:`harness.execution.executors.run_task`: it takes the run's lock, resumes
from the run's last checkpoint, and writes run.log. Preemption or a time limit reaches the job as
SIGUSR2 ``signal_delay_s`` seconds ahead; submitit then requeues the job (same job id), and the
requeued job resumes the run from checkpoints/latest.pt. ``--gpus N`` runs N tasks per job, one
DistributedDataParallel rank each.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError

from harness.execution.executors import Executor, ExecutorError
from harness.execution.joblog import read_job, write_job
from harness.execution.status import run_status
from harness.execution.tasks import Report, Request, RunTask, Terminated, run_task
from harness.hookspecs import hookimpl
from harness.runs.store import LOCK_FILE, atomic_write_json, read_run
from harness.training import ddp

#: the last attempt of a Slurm job on a run (host and pid of the process that takes the run's lock)
ATTEMPT_FILE = ".slurm-attempt.json"
#: squeue states, as bench status words
QUEUED_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}


@dataclass
class SlurmParams:
    """Options of the slurm executor (``--slurm-*`` on ``bench run``; the rest with ``--exec-set``)."""

    #: Slurm partition to submit to (default: the cluster's)
    partition: str | None = None
    #: GPUs per job; default: --gpus (1) unless --device cpu, then 0
    gpus_per_job: int | None = None
    #: CPUs per job (split over its tasks); default: the cluster's default
    cpus_per_job: int | None = None
    #: wall-clock limit per job attempt: minutes, or [days-]hours:minutes:seconds; a run that needs more is
    #: requeued at the limit and resumes from its checkpoint
    time: str = "4:00:00"
    #: memory per job, e.g. 32G
    mem: str | None = None
    #: free-form sbatch options, e.g. "--qos=high --account=lab --constraint=a100"
    extra: str = ""
    #: shell lines run before the job's Python, separated by ';' (e.g. "module load cuda/12.4")
    setup: str = ""
    #: submitit's folder for job scripts and logs (default: OUT/.slurm)
    folder: str | None = None
    #: how many time-limit requeues a run may use (preemptions do not count)
    max_requeues: int = 10
    #: seconds between the warning signal and the kill at a time limit
    signal_delay_s: int = 120
    #: array tasks allowed to run at once
    array_parallelism: int = 256
    #: seconds between checks with --wait
    poll_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("partition", "time", "mem", "extra", "folder"):
            refuse_control_characters(f"--slurm-{name}" if name != "folder" else "folder", getattr(self, name))
        parse_time(self.time)  # bad values fail before anything is submitted
        parse_extra(self.extra)


def refuse_control_characters(option: str, value: Any) -> None:
    """Values go into #SBATCH lines: a newline (or any control character) would end one and smuggle others in."""
    text = "" if value is None else str(value)
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ExecutorError(f"{option} {text!r}: contains the control character {bad!r}; give the value on one line")


def partition_gpus(partition: str | None) -> int | None:
    """The most GPUs one node of ``partition`` (default: the default partition) has, from sinfo; None if unknown."""
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if not out.strip():
        return None  # no such partition, or no nodes: let sbatch say so
    most = 0
    for gres in re.split(r"[\s,]+", out):  # e.g. "(null)", "gpu:4", "gpu:a100:8(S:0-1)"
        match = re.match(r"gpu(?::[^:(]+)?:(\d+)", gres)
        if match:
            most = max(most, int(match.group(1)))
    return most


def parse_time(value: str) -> int:
    """Slurm time formats -> whole minutes (at least 1): ``90``, ``90:00``, ``4:00:00``, ``1-12``, ``1-00:00:00``."""
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ExecutorError(f"--slurm-time {value!r}: use minutes, H:MM:SS or D-HH:MM:SS, e.g. 4:00:00")
    days, a, b, c = match.groups()
    if days is not None:  # days-hours[:minutes[:seconds]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # hours:minutes:seconds
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # minutes:seconds
        seconds = int(a) * 60 + int(b)
    else:
        seconds = int(a) * 60
    return max(1, -(-seconds // 60))


def parse_extra(extra: str) -> dict[str, Any]:
    """``"--qos=high --exclusive"`` -> ``{"qos": "high", "exclusive": True}`` (sbatch long options)."""
    out: dict[str, Any] = {}
    for token in shlex.split(extra or ""):
        if not token.startswith("--"):
            raise ExecutorError(f"--slurm-extra {token!r}: give sbatch long options, e.g. --account=lab (not -A lab)")
        key, sep, value = token[2:].partition("=")
        out[key] = value if sep else True
    return out


_SQUEUE: dict[str, Any] = {"time": 0.0, "states": None}


def squeue_states(max_age_s: float = 2.0) -> dict[str, str] | None:
    """``{job id: state}`` of this user's jobs, array tasks one by one (cached for ``max_age_s``).

    None when squeue cannot be asked (no Slurm here, or slurmctld not answering).
    """
    if time.time() - _SQUEUE["time"] < max_age_s:
        return _SQUEUE["states"]
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    cmd = ["squeue", "-h", "-r", "-o", "%i|%T"] + (["-u", user] if user else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    states = dict(line.strip().split("|", 1) for line in out.splitlines() if "|" in line)
    _SQUEUE.update(time=time.time(), states=states)
    return states


def slurm_state(job_id: str) -> str | None:
    """queued / running while Slurm knows the job as alive, else None."""
    words = (squeue_states() or {}).get(str(job_id), "").split() if job_id else []
    state = words[0] if words else ""
    if state in QUEUED_STATES:
        return "queued"
    if state in RUNNING_STATES:
        return "running"
    return None


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated("stopped by SIGTERM (scancel, preemption or requeue)")


def slurm_threads(env: dict[str, str] | os._Environ) -> int | None:
    """torch threads for one task: the CPUs Slurm allocated to it (its affinity may cover the whole node)."""
    per_task = int(env.get("SLURM_CPUS_PER_TASK", "0") or 0)
    if per_task:
        return per_task
    on_node = int(env.get("SLURM_CPUS_ON_NODE", "0") or 0)
    tasks = int(env.get("SLURM_NTASKS_PER_NODE", env.get("SLURM_NTASKS", "1")) or 1)
    return max(1, on_node // max(1, tasks)) if on_node else None


def take_over_own_lock(run_dir: Path, job_id: str) -> bool:
    """Drop the run's lock when an earlier attempt of this very job left it; record this attempt.

    A requeued job keeps its id and may start on another node, where a lock left by a hard kill
    (SIGKILL, node failure) of its earlier attempt looks alive for hours. Slurm runs one attempt
    of a job at a time, so a lock held by an earlier attempt of the same job id is stale.
    Returns True when a lock was dropped.
    """
    lock, attempt = Path(run_dir) / LOCK_FILE, Path(run_dir) / ATTEMPT_FILE
    dropped = False
    try:
        held = json.loads(lock.read_text() or "{}")
        last = json.loads(attempt.read_text())
    except (OSError, ValueError):
        held, last = {}, {}
    if last.get("job_id") == job_id and held and (held.get("host"), held.get("pid")) == (last["host"], last["pid"]):
        lock.unlink(missing_ok=True)
        dropped = True
    atomic_write_json(attempt, {"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid()})
    return dropped


class SlurmRun(submitit.helpers.Checkpointable):
    """What one array task runs. As a Checkpointable it is requeued, same arguments, at preemption or time limit."""

    def __call__(self, task: RunTask) -> str:
        job = submitit.JobEnvironment()
        # submitit ignores SIGTERM (it waits for SIGUSR2 to checkpoint); scancel sends SIGTERM, and the run should
        # stop then, release its lock and say so, rather than train on until SIGKILL
        signal.signal(signal.SIGTERM, _terminate)
        threads = slurm_threads(os.environ)
        if job.global_rank == 0:
            take_over_own_lock(task.run_dir, job.job_id)
        if task.gpus > 1:  # this task is one rank of the run
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            ddp.init(task.device, task.sync_bn)
            try:
                return run_task(task, job=job.job_id, threads=threads)
            finally:
                ddp.shutdown()
        return run_task(task, job=job.job_id, threads=threads)


class SlurmExecutor(Executor):
    """Submits each run as a task of one Slurm job array (see the module docstring)."""

    Params = SlurmParams
    #: offered by ``bench run`` as --slurm-partition, --slurm-gpus-per-job, ... (the rest: --exec-set)
    cli_options = ("partition", "gpus_per_job", "cpus_per_job", "time", "mem", "extra")

    def submit(self, request: Request) -> Report:
        p = self.params
        log = request.log
        minutes = parse_time(p.time)
        extra = parse_extra(p.extra)
        report = Report()
        todo: list[RunTask] = []
        for task in request.tasks():
            if (read_run(task.run_dir) or {}).get("status") == "done":
                report.done.append(task.name)
                continue
            job = read_job(task.run_dir) or {}
            alive = job.get("executor") == "slurm" and slurm_state(job.get("job_id", ""))
            if alive:
                log(f"{task.name}: already {alive} as Slurm job {job['job_id']}, not submitted again")
                report.submitted[task.name] = job["job_id"]
                continue
            todo.append(task)
        if todo:
            jobs = self._submit(todo, request, minutes, extra)
            for task, job in zip(todo, jobs, strict=True):
                report.submitted[task.name] = job.job_id
                write_job(
                    task.run_dir,
                    {"executor": "slurm", "job_id": job.job_id, "host": socket.gethostname(),
                     "submitted": time.time(), "log": str(job.paths.stderr), "stdout": str(job.paths.stdout)},
                )  # fmt: skip
            array = jobs[0].job_id.split("_")[0]
            log(f"submitted {len(jobs)} run(s) as Slurm job array {array}; follow with: bench status {request.out_dir}")
        elif not report.submitted:
            log("nothing to submit: every run is done")
        if request.wait and report.submitted:
            self._wait(request, report)
        return report

    def _submit(self, tasks: list[RunTask], request: Request, minutes: int, extra: dict[str, Any]) -> list[Any]:
        p = self.params
        folder = Path(p.folder) if p.folder else Path(request.out_dir) / ".slurm"
        gpus = self._gpus_per_job(request)
        parameters: dict[str, Any] = {
            "job_name": "segbench",
            "time": minutes,
            "nodes": 1,
            "ntasks_per_node": request.gpus,
            "signal_delay_s": p.signal_delay_s,
            "array_parallelism": p.array_parallelism,
        }
        if request.gpus > 1:  # one failed rank ends the job's other ranks too, instead of leaving them waiting
            parameters["srun_args"] = ["--kill-on-bad-exit=1"]
        if p.partition:
            parameters["partition"] = p.partition
        if gpus:
            parameters["gpus_per_node"] = gpus
        if p.cpus_per_job:
            parameters["cpus_per_task"] = max(1, p.cpus_per_job // request.gpus)
        if p.mem:
            parameters["mem"] = p.mem
        if p.setup.strip():
            parameters["setup"] = [line.strip() for line in p.setup.split(";") if line.strip()]
        if extra:
            parameters["additional_parameters"] = extra
        try:
            executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=p.max_requeues)
            executor.update_parameters(**parameters)
            return executor.map_array(SlurmRun(), tasks)
        except (FileNotFoundError, RuntimeError) as exc:  # submitit: RuntimeError when srun is not on PATH
            if isinstance(exc, RuntimeError) and "srun" not in str(exc):
                raise
            raise ExecutorError(
                "cannot submit to Slurm: sbatch/srun not found; run bench on a Slurm login node, or start a local "
                "cluster with scripts/slurm-local.sh start"
            ) from None
        except (subprocess.SubprocessError, FailedJobError, FailedSubmissionError) as exc:
            raise ExecutorError(f"sbatch refused the job array: {str(exc).strip()}") from None

    def _gpus_per_job(self, request: Request) -> int:
        """GPUs to request: asked for only where the partition has them (sinfo), else fail before submitting."""
        p = self.params
        where = f"partition {p.partition}" if p.partition else "the default partition"
        if p.gpus_per_job is not None:
            wanted, asked = p.gpus_per_job, f"--slurm-gpus-per-job {p.gpus_per_job}"
        elif request.device == "cpu":
            return 0
        else:
            wanted, asked = (
                request.gpus,
                f"--device {request.device}" + (f" --gpus {request.gpus}" if request.gpus > 1 else ""),
            )
        if not wanted:
            return 0
        available = partition_gpus(p.partition)
        if available is None or available >= wanted:
            return wanted
        if available == 0 and p.gpus_per_job is None and request.device == "auto" and request.gpus == 1:
            request.log(f"{where} has no GPUs (sinfo): the runs train on CPUs there (--device cpu)")
            return 0
        raise ExecutorError(
            f"{asked} needs {wanted} GPU(s) per job but {where} has {available} per node (sinfo); pass --device cpu "
            "to train on CPUs, or --slurm-partition with a partition that has GPUs"
        )

    def _wait(self, request: Request, report: Report) -> None:
        """Block until every submitted run has finished (its job left the queue); sort them into done / failed."""
        pending = set(report.submitted)
        out = Path(request.out_dir)
        seen: dict[str, str] = {}
        while pending:
            time.sleep(self.params.poll_s)
            if squeue_states(max_age_s=0) is None:
                continue  # slurmctld did not answer: ask again later rather than call the runs finished
            for name in sorted(pending):
                status = run_status(out / name, self.job_state)
                if status.state in ("queued", "running"):
                    if seen.get(name) != status.state:
                        request.log(f"{name}: {status.state} ({status.job})")
                        seen[name] = status.state
                    continue
                pending.discard(name)
                if status.state == "done":
                    report.done.append(name)
                    request.log(f"{name}: done")
                else:
                    report.failed[name] = f"{status.job}: {status.detail or (status.log or ['job ended'])[-1]}"
                    request.log(f"{name}: FAILED ({report.failed[name]})")

    @classmethod
    def job_state(cls, job: dict[str, Any]) -> str | None:
        return slurm_state(str(job.get("job_id", "")))


@hookimpl
def register_executors(register) -> None:
    register("slurm", SlurmExecutor)
