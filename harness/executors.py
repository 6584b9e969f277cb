"""Executors: where the runs of a grid are trained. The contract, the per-run job record and ``local``.

An executor receives a :class:`Request` (resolved runs, results directory, device, processes per
run) and trains every run somewhere: in this process, in parallel local processes, as Slurm jobs
(``plugins.executors.slurm``), or on any engine a plugin adds with ``register_executors``. The
results directory is the only shared state: a run is trained by :func:`run_task`, which takes the
run's lock (an exclusive create, safe on NFS), keeps it fresh while it trains, writes run.log, and
resumes from the run's last checkpoint when an earlier attempt was interrupted. Executors record
where each run went in ``run_dir/job.json`` so that ``bench status`` can report it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import socket
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness import distributed
from harness.api import NoParams
from harness.errors import UserError
from harness.hookspecs import hookimpl
from harness.results import LOCK_FILE, RunLockedError, atomic_write_json, read_run
from harness.runner import ResolvedRun, RunSpec

JOB_FILE = "job.json"
LOG_FILE = "run.log"
#: how often a training process refreshes its lock's mtime (other hosts treat a fresh lock as alive)
HEARTBEAT_S = 60.0

Log = Callable[[str], None]


class ExecutorError(UserError):
    """Runs could not be submitted, or some of them failed."""


class Terminated(SystemExit):
    """The process was told to stop (SIGTERM from scancel, or from preemption): the run resumes when rerun."""


# --------------------------------------------------------------------------- the contract


@dataclass
class RunTask:
    """One run as another process or machine receives it: picklable, re-resolved (and checked) there."""

    spec: RunSpec
    run_id: str
    name: str
    out_dir: str
    device: str = "auto"
    gpus: int = 1
    sync_bn: bool | None = None
    show_progress: bool = False

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

    def tasks(self, show_progress: bool = False) -> list[RunTask]:
        out = str(Path(self.out_dir).resolve())
        return [
            RunTask(r.spec, r.run_id, r.name, out, self.device, self.gpus, self.sync_bn, show_progress)
            for r in self.runs
        ]


@dataclass
class Report:
    """What became of the request's runs (names); ``submitted`` maps a run to its job id."""

    done: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    submitted: dict[str, str] = field(default_factory=dict)


def finish(report: Report, out_dir: Path, log: Log) -> None:
    """Tell the user what became of the runs; raise :class:`ExecutorError` when some failed."""
    if report.busy:
        log(f"{len(report.busy)} run(s) were being trained by another process; rerun later to pick them up")
    if report.failed:
        first = next(iter(report.failed.items()))
        raise ExecutorError(
            f"{len(report.failed)} run(s) failed, first {first[0]}: {first[1]}. "
            f"See `bench status {out_dir}` and each run's {LOG_FILE}; rerunning resumes them."
        )


class Executor(ABC):
    """Trains the runs of a request somewhere. Register one with ``register_executors``.

    ``Params`` is a dataclass of the executor's options; ``bench run --exec-set KEY=VALUE`` (and the
    built-in ``--jobs`` / ``--slurm-*`` options) fill it.
    """

    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any) -> None:
        self.params = params

    @abstractmethod
    def submit(self, request: Request) -> Report:
        """Train (or submit) every run of ``request``; return when done, or when submitted and not ``wait``."""

    @classmethod
    def job_state(cls, job: dict[str, Any]) -> str | None:
        """``queued`` or ``running`` while the job recorded in ``job`` (a job.json) is alive, else None."""
        return None


# --------------------------------------------------------------------------- job records and logs


def write_job(run_dir: Path, record: dict[str, Any]) -> None:
    """Record where a run was sent (job.json), keeping earlier attempts under ``history``."""
    previous = read_job(run_dir)
    history = []
    if previous:
        history = previous.pop("history", [])
        history.append(previous)
    atomic_write_json(run_dir / JOB_FILE, {**record, "history": history[-20:]})


def end_job(run_dir: Path, outcome: str) -> None:
    """Mark the run's job record as ended (for executors whose jobs outlive no process of their own)."""
    job = read_job(run_dir)
    if job is not None:
        atomic_write_json(Path(run_dir) / JOB_FILE, {**job, "ended": time.time(), "outcome": outcome})


def read_job(run_dir: Path) -> dict[str, Any] | None:
    """The run's job.json, or None (also when unreadable: it is informational only)."""
    try:
        return json.loads((Path(run_dir) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None


class RunLog:
    """Appends a run's messages to run_dir/run.log (and echoes them): failures leave their story behind."""

    def __init__(self, run_dir: Path, echo: Log | bool | None = None) -> None:
        self.path = Path(run_dir) / LOG_FILE
        self.echo: Log | None = print if echo is True else (echo or None)

    def write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")

    def __call__(self, message: str) -> None:
        self.write(f"{time.strftime('%H:%M:%S')} {message}")
        if self.echo is not None:
            self.echo(message)


def tail(path: Path, lines: int = 15) -> list[str]:
    """The last ``lines`` lines of a text file (empty when it does not exist)."""
    try:
        with Path(path).open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


@contextmanager
def heartbeat(run_dir: Path, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Refresh the run's lock mtime while training, so that other hosts see a live lock (not a stale one)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(OSError):  # no lock yet, or already released
                os.utime(Path(run_dir) / LOCK_FILE)

    thread = threading.Thread(target=beat, name="segbench-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


# --------------------------------------------------------------------------- where a run stands

#: the states ``bench status`` reports
STATES = ("done", "running", "queued", "failed", "not started")


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


def lock_alive(run_dir: Path, stale_after_s: float = 3 * HEARTBEAT_S) -> bool:
    """True when the run's lock belongs to a live process: its pid on this host, or a fresh heartbeat elsewhere."""
    path = Path(run_dir) / LOCK_FILE
    try:
        held = json.loads(path.read_text() or "{}")
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return False
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held.get("pid", -1)), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            pass
        return True
    return age < stale_after_s


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
    elif recorded == "failed":
        status.state, status.detail = "failed", str(record.get("error", ""))
    elif recorded == "running":
        status.state = "failed"
        status.detail = "interrupted (its process is gone); bench run resumes it from its last checkpoint"
    if status.state == "failed":
        status.log = tail(run_dir / LOG_FILE, 40) or (tail(Path(job["log"]), 40) if job.get("log") else [])
    return status


# --------------------------------------------------------------------------- one run, in this process


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask, e.g. a Slurm allocation), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [part.strip() for part in env.split(",") if part.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def run_task(task: RunTask, log: Log | bool | None = None, *, job: str = "", threads: int | None = None) -> str:
    """Train one run in this process (or, with ``task.gpus`` > 1, in that many local processes).

    Returns ``done`` or ``busy`` (another process holds the run's lock); raises when the run fails,
    after writing the error and traceback to run.log. ``threads`` caps torch's intra-op threads.
    """
    import torch

    from harness.runner import execute, resolve

    if threads:
        torch.set_num_threads(threads)
    writer = distributed.is_writer()
    run_log: Log = RunLog(task.run_dir, echo=log) if writer else (lambda _m: None)
    if writer:
        RunLog(task.run_dir)(
            f"attempt on {socket.gethostname()} pid {os.getpid()}" + (f" job {job}" if job else "")
            + f" ({torch.get_num_threads()} threads)"
        )  # fmt: skip
    try:
        run = resolve(task.spec)
        if run.run_id != task.run_id:
            raise ExecutorError(
                f"run {task.name} resolves to id {run.run_id} here, not {task.run_id}: the installed segbench or "
                "plugins differ from the submitting machine's; install the same versions on both"
            )
        with heartbeat(task.run_dir) if writer else _nothing():
            if distributed.current() is not None:  # one rank of torchrun or of a multi-task Slurm job
                distributed.run_rank(task, run_log)
            elif task.gpus > 1:
                gpus = visible_gpus() if task.device != "cpu" else []
                if gpus and len(gpus) < task.gpus:
                    raise ExecutorError(f"--gpus {task.gpus}: only {len(gpus)} GPU(s) visible ({','.join(gpus)})")
                per_rank = threads or max(1, cpu_count() // task.gpus)
                distributed.launch(task, task.gpus, gpus[: task.gpus] if gpus else None, per_rank)
                record = read_run(task.run_dir) or {}
                if record.get("status") != "done":
                    raise ExecutorError(f"run {task.name} ended with status {record.get('status')!r}")
            else:
                execute(run, task.out_path, log=run_log, show_progress=task.show_progress, device_name=task.device)
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


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# --------------------------------------------------------------------------- the local executor


@dataclass
class LocalParams:
    """``jobs``: runs trained at the same time, each in its own process."""

    jobs: int = 1

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {self.jobs}")


_SLOT: dict[str, Any] = {}


def _init_worker(slots: Any, gpu_groups: list[list[str]] | None, threads: int) -> None:
    """Pool-worker start: take a slot, pin the slot's GPU(s) (before CUDA starts) and the thread count."""
    import torch

    slot = slots.get()
    _SLOT.update(slot=slot, threads=threads)
    if gpu_groups:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_groups[slot % len(gpu_groups)])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _pool_run(task: RunTask) -> str:
    return run_task(task, job=f"local slot {_SLOT.get('slot')}", threads=_SLOT.get("threads"))


class LocalExecutor(Executor):
    """Trains runs on this machine: one after another, or ``--jobs N`` at a time in N processes.

    With several GPUs visible each process is pinned to its own GPU(s) (CUDA_VISIBLE_DEVICES), and
    torch's threads are set to cores / N so that N processes do not oversubscribe the CPU.
    """

    Params = LocalParams

    def submit(self, request: Request) -> Report:
        jobs = self.params.jobs
        if distributed.env_world() is not None:
            if jobs > 1:
                raise ExecutorError("--jobs cannot be combined with torchrun: each rank trains every run in turn")
            return self._under_torchrun(request)
        tasks = request.tasks(show_progress=request.show_progress and jobs == 1)
        self._record(tasks)
        if jobs == 1:
            return self._sequential(tasks, request.log)
        return self._parallel(tasks, request, jobs)

    @staticmethod
    def _record(tasks: list[RunTask]) -> None:
        for task in tasks:
            if (read_run(task.run_dir) or {}).get("status") != "done":
                write_job(
                    task.run_dir,
                    {"executor": "local", "job_id": str(os.getpid()), "host": socket.gethostname(),
                     "pid": os.getpid(), "submitted": time.time()},
                )  # fmt: skip

    @staticmethod
    def _settle(report: Report, task: RunTask, outcome: str | BaseException, log: Log) -> None:
        if distributed.is_writer():
            end_job(task.run_dir, outcome if isinstance(outcome, str) else "failed")
        if isinstance(outcome, BaseException):
            report.failed[task.name] = f"{type(outcome).__name__}: {outcome}"
            log(f"FAILED {task.name}: {report.failed[task.name]} (log: {task.run_dir / LOG_FILE})")
        elif outcome == "busy":
            report.busy.append(task.name)
        else:
            report.done.append(task.name)

    def _sequential(self, tasks: list[RunTask], log: Log) -> Report:
        report = Report()
        for i, task in enumerate(tasks, 1):
            log(f"── run {i}/{len(tasks)}: {task.name}")
            try:
                outcome: str | BaseException = run_task(task, log)
            except Exception as exc:  # noqa: BLE001 - one failed run must not stop the grid
                outcome = exc
            self._settle(report, task, outcome, log)
            if outcome == "done":
                log(f"results: {task.run_dir}")
        return report

    def _parallel(self, tasks: list[RunTask], request: Request, jobs: int) -> Report:
        per_job = max(1, request.gpus)
        gpus = visible_gpus() if request.device in ("auto", "cuda") else []
        groups = [gpus[i : i + per_job] for i in range(0, len(gpus) - per_job + 1, per_job)] if gpus else []
        if len(gpus) <= 1 and per_job == 1:
            groups = []  # one GPU (or none): nothing to pin, the jobs share it
        elif groups and len(groups) < jobs:
            request.log(f"note: {jobs} jobs share {len(groups)} GPU group(s) of {per_job}")
        threads = max(1, cpu_count() // (jobs * per_job))
        request.log(
            f"local executor: {jobs} processes, {threads} torch thread(s) each"
            + (f", GPUs {' | '.join(','.join(g) for g in groups)}" if groups else "")
        )
        ctx = multiprocessing.get_context("spawn")
        slots = ctx.Queue()
        for i in range(jobs):
            slots.put(i)
        report = Report()
        with ProcessPoolExecutor(jobs, ctx, initializer=_init_worker, initargs=(slots, groups, threads)) as pool:
            futures = {pool.submit(_pool_run, task): task for task in tasks}
            for future in as_completed(futures):
                task = futures[future]
                try:
                    outcome: str | BaseException = future.result()
                except BrokenProcessPool as exc:
                    outcome = RuntimeError(f"a worker process died (out of memory?): {exc}")
                except Exception as exc:  # noqa: BLE001
                    outcome = exc
                self._settle(report, task, outcome, request.log)
                if outcome == "done":
                    request.log(f"done: {task.name}")
        return report

    def _under_torchrun(self, request: Request) -> Report:
        info = distributed.init(request.device, request.sync_bn)
        log = request.log if info.is_writer else (lambda _m: None)
        report = Report()
        try:
            tasks = request.tasks(show_progress=request.show_progress and info.is_writer)
            if info.is_writer:
                self._record(tasks)
            for i, task in enumerate(tasks, 1):
                log(f"── run {i}/{len(tasks)}: {task.name} on {info.world_size} processes")
                # a failure leaves the process group in an unknown state: stop the grid (torchrun ends every rank)
                self._settle(report, task, run_task(task, log), log)
        finally:
            distributed.shutdown()
        return report

    @classmethod
    def job_state(cls, job: dict[str, Any]) -> str | None:
        if "ended" in job or job.get("host") != socket.gethostname():
            return None  # another machine's process: the run's lock heartbeat tells whether it is alive
        try:
            os.kill(int(job.get("pid", -1)), 0)
        except (ProcessLookupError, ValueError):
            return None
        except PermissionError:
            pass
        return "queued"


def executor_names() -> list[str]:
    """Registered executor names."""
    from harness.plugins import get_registry

    return get_registry().names("executor")


def build_executor(name: str, options: dict[str, Any]) -> Executor:
    """The executor ``name`` with its options (``{"jobs": 2}``) validated against its ``Params``."""
    from harness.config import build_params
    from harness.plugins import get_registry

    cls = get_registry().get("executor", name)
    return cls(build_params(getattr(cls, "Params", NoParams), options, f"executor {name}"))


def executor_options(name: str, jobs: int | None, slurm: dict[str, Any], settings: list[str] | None) -> dict[str, Any]:
    """The options ``bench run`` gives executor ``name``: ``--jobs``, ``--slurm-*`` and ``--exec-set KEY=VALUE``."""
    options: dict[str, Any] = {}
    if jobs is not None:
        options["jobs"] = jobs
    for key, value in slurm.items():
        if value is None:
            continue
        if name != "slurm":
            flag = "--slurm-" + key.replace("_", "-")
            raise ExecutorError(f"{flag} is an option of the slurm executor; add --executor slurm")
        options[key] = value
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ExecutorError(f"--exec-set {item!r}: expected KEY=VALUE, e.g. --exec-set poll_s=30")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


@hookimpl
def register_executors(register) -> None:
    register("local", LocalExecutor)
