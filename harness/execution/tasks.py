"""Run tasks: what an executor trains, and :func:`run_task`, which trains one.

:func:`run_task` takes the run's lock (an exclusive create, safe on NFS), keeps it fresh while it
trains, writes run.log, and resumes from the run's last checkpoint when an earlier attempt was
interrupted.
"""

from __future__ import annotations

import os
import socket
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from harness import progress
from harness import threads as threads_mod
from harness.errors import UserError
from harness.execution import ranks
from harness.execution.joblog import LOG_FILE, Log, RunLog
from harness.runs.resolve import ResolvedRun
from harness.runs.store import RunLockedError, read_run
from harness.runs.tracking import TrackerChoice
from harness.threads import ThreadChoice
from harness.training import ddp


class ExecutorError(UserError):
    """Runs could not be submitted, or some of them failed."""


class Terminated(SystemExit):
    """The process was told to stop (SIGTERM from scancel, or from preemption): the run resumes when rerun."""


# --------------------------------------------------------------------------- the contract


@dataclass
class RunTask:
    """One run as another process or machine receives it: the resolved run itself (picklable), never re-resolved.

    ``versions`` are the segbench and component plugin versions of the submitting process; a process
    whose installation differs refuses the run rather than train something else under its id.
    """

    run: ResolvedRun
    out_dir: str
    device: str = "auto"
    gpus: int = 1
    sync_bn: bool | None = None
    show_progress: bool = False
    #: experiment trackers fed by the run (``--tracker``); not part of the run's identity
    trackers: TrackerChoice = field(default_factory=TrackerChoice)
    #: train a finished (or interrupted) run again when its data changed (``--retrain-changed``)
    retrain_changed: bool = False
    #: move a damaged checkpoints/latest.pt aside and train from scratch (``--restart-damaged``)
    restart_damaged: bool = False
    #: segbench and component plugin versions where the run was resolved (checked where it trains)
    versions: dict[str, str] = field(default_factory=dict)
    #: torch threads (``--threads``); None: the thread policy decides (harness.threads)
    threads: int | None = None
    #: keep checkpoints/latest.pt (optimisers, RNG) after the run finished (``--keep-resume-state``)
    keep_resume_state: bool = False

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


@dataclass
class Request:
    """What ``bench run`` asks an executor to do."""

    runs: list[ResolvedRun]
    out_dir: Path
    device: str = "auto"
    #: processes (GPUs) per run; > 1 trains each run with DistributedDataParallel
    gpus: int = 1
    #: SyncBatchNorm in distributed runs (None: on with CUDA, off on the CPU)
    sync_bn: bool | None = None
    #: block until every run has finished (executors that submit elsewhere)
    wait: bool = False
    show_progress: bool = True
    log: Log = print
    #: experiment trackers every run feeds (``--tracker``)
    trackers: TrackerChoice = field(default_factory=TrackerChoice)
    #: train runs whose data changed since they were trained again (else they are refused)
    retrain_changed: bool = False
    #: move damaged latest.pt checkpoints aside and train those runs from scratch (else they are refused)
    restart_damaged: bool = False
    #: torch threads per process (``--threads``); None: the thread policy decides
    threads: int | None = None
    #: keep finished runs' checkpoints/latest.pt (``--keep-resume-state``)
    keep_resume_state: bool = False

    def tasks(self, show_progress: bool = False) -> list[RunTask]:
        out = str(Path(self.out_dir).resolve())
        return [
            RunTask(
                r, out, self.device, self.gpus, self.sync_bn, show_progress, self.trackers, self.retrain_changed,
                self.restart_damaged, installed_versions(r), threads=self.threads,
                keep_resume_state=self.keep_resume_state,
            )
            for r in self.runs
        ]  # fmt: skip


@dataclass
class Report:
    """What became of the request's runs (names); ``submitted`` maps a run to its job id."""

    done: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    submitted: dict[str, str] = field(default_factory=dict)


def installed_versions(run: ResolvedRun) -> dict[str, str]:
    """segbench's version and that of the plugin behind each of the run's components, in this process."""
    from harness import __version__
    from harness.plugins import get_registry

    registry = get_registry()
    versions = {"segbench": __version__}
    for kind, name in (
        ("ssl_method", run.spec.ssl),
        ("backbone", run.spec.backbone),
        ("generator", run.config["generator"]),
    ):
        owner = registry.owner(kind, name)
        versions[f"{kind} {name}"] = f"{owner.distribution or owner.name} {owner.version or ''}".strip()
    return versions


def finish(report: Report, out_dir: Path, log: Log) -> None:
    """Tell the user what became of the runs; raise :class:`ExecutorError` when some failed."""
    if report.busy and not (report.done or report.failed or report.submitted):
        raise ExecutorError(
            f"nothing was trained: all {len(report.busy)} run(s) are being trained by other processes (first "
            f"{report.busy[0]}); see `bench status {out_dir}`, and rerun later to pick up any that stop"
        )
    if report.busy:
        log(f"{len(report.busy)} run(s) were being trained by another process; rerun later to pick them up")
    if report.failed:
        first = next(iter(report.failed.items()))
        raise ExecutorError(
            f"{len(report.failed)} run(s) failed, first {first[0]}: {first[1].rstrip('.')}. "
            f"See `bench status {out_dir}` and each run's {LOG_FILE}; rerunning resumes interrupted runs."
        )


# --------------------------------------------------------------------------- one run, in this process


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [part.strip() for part in env.split(",") if part.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def run_task(
    task: RunTask, log: Log | bool | None = None, *, job: str = "", threads: int | ThreadChoice | None = None
) -> str:
    """Train one run in this process (or, with ``task.gpus`` > 1, in that many local processes).

    Returns ``done`` or ``busy`` (another process holds the run's lock); raises when the run fails,
    after writing the error and traceback to run.log. ``threads``: torch's intra-op threads as the
    executor chose them (a count, e.g. a Slurm allocation, or a :class:`ThreadChoice`); otherwise
    ``task.threads`` or the thread policy (:mod:`harness.threads`) decides.
    """
    from harness.runs.lifecycle import execute

    if isinstance(threads, int):
        threads = ThreadChoice(threads, f"{threads} given by the executor")
    choice = threads_mod.apply(threads or threads_mod.decide(override=task.threads))
    writer = ddp.is_writer()
    file_log = RunLog(task.run_dir, echo=log) if writer else None
    run_log: Log = file_log if file_log is not None else (lambda _m: None)
    if writer:
        RunLog(task.run_dir)(
            f"attempt on {socket.gethostname()} pid {os.getpid()}" + (f" job {job}" if job else "")
        )  # fmt: skip
        run_log(f"torch threads: {choice.threads} ({choice.reason})")
    try:
        here = installed_versions(task.run)
        if task.versions and here != task.versions:
            differ = sorted(k for k in here.keys() | task.versions.keys() if here.get(k) != task.versions.get(k))
            raise ExecutorError(
                f"run {task.name}: {differ[0]} is {here.get(differ[0])} here but {task.versions.get(differ[0])} where "
                "the run was submitted; install the same segbench and plugin versions on both"
            )
        # progress lines go to run.log always, and to the terminal (live) or stdout (plain) unless quiet
        reporter = (
            progress.for_console(show=task.show_progress, record=file_log.record) if file_log else progress.SILENT
        )
        with progress.reporting(reporter):
            info = ddp.current()
            if info is not None:  # one rank of torchrun or of a multi-task Slurm job
                ranks.run_rank(task, info, run_log)
            elif task.gpus > 1:
                gpus = visible_gpus() if task.device != "cpu" else []
                if gpus and len(gpus) < task.gpus:
                    raise ExecutorError(f"--gpus {task.gpus}: only {len(gpus)} GPU(s) visible ({','.join(gpus)})")
                per_rank = task.threads or threads_mod.decide(jobs=task.gpus).threads
                ranks.launch(task, task.gpus, gpus[: task.gpus] if gpus else None, per_rank)
                record = read_run(task.run_dir) or {}
                if record.get("status") != "done":
                    raise ExecutorError(f"run {task.name} ended with status {record.get('status')!r}")
            else:
                execute(
                    task.run, task.out_path, log=run_log, show_progress=task.show_progress, device_name=task.device,
                    trackers=task.trackers, retrain_changed=task.retrain_changed, restart_damaged=task.restart_damaged,
                    keep_resume_state=task.keep_resume_state,
                )  # fmt: skip
    except RunLockedError as exc:
        run_log(f"not trained here: {exc}")
        return "busy"
    except Terminated as exc:
        run_log(f"{exc}; it resumes from its last checkpoint when requeued or rerun")
        raise
    except SystemExit as exc:  # submitit's requeue on preemption / time limit exits this way
        run_log(f"stopped (exit {exc.code}): preempted or out of time; the job is requeued and resumes")
        raise
    except BaseException as exc:
        if writer:
            RunLog(task.run_dir).write("".join(traceback.format_exception(exc)))
            run_log(f"FAILED: {type(exc).__name__}: {exc}")
        raise
    return "done"
