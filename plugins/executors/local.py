"""The ``local`` executor: runs trained in this process, or in parallel local processes (``--jobs``)."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from harness.execution.executors import Executor
from harness.execution.joblog import LOG_FILE, Log, end_job, write_job
from harness.execution.tasks import ExecutorError, Report, Request, RunTask, run_task, visible_gpus
from harness.hookspecs import hookimpl
from harness.runs.store import read_run
from harness.threads import ThreadChoice
from harness.threads import decide as decide_threads
from harness.training import ddp

_SLOT: dict[str, Any] = {}

# --------------------------------------------------------------------------- the local executor


@dataclass
class LocalParams:
    """``jobs``: runs trained at the same time, each in its own process."""

    #: runs trained at the same time, each in its own process (and GPU)
    jobs: int = 1

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {self.jobs}")


def _init_worker(slots: Any, gpu_groups: list[list[str]] | None, threads: ThreadChoice) -> None:
    """Pool-worker start: take a slot, pin the slot's GPU(s) (before CUDA starts) and the thread count."""
    import torch

    slot = slots.get()
    _SLOT.update(slot=slot, threads=threads)
    if gpu_groups:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_groups[slot % len(gpu_groups)])
    os.environ["OMP_NUM_THREADS"] = str(threads.threads)
    torch.set_num_threads(threads.threads)


def _pool_run(task: RunTask) -> str:
    return run_task(task, job=f"local slot {_SLOT.get('slot')}", threads=_SLOT.get("threads"))


class LocalExecutor(Executor):
    """Trains runs on this machine: one after another, or ``--jobs N`` at a time in N processes.

    With several GPUs visible each process is pinned to its own GPU(s) (CUDA_VISIBLE_DEVICES), and
    torch's threads are set to the free cores / N (harness.threads) so that N processes do not
    oversubscribe the CPU.
    """

    Params = LocalParams

    def submit(self, request: Request) -> Report:
        jobs = self.params.jobs
        if ddp.env_world() is not None:
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
        if ddp.is_writer():
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
        # decided once here: each worker would otherwise count the others as load
        threads = decide_threads(jobs=jobs * per_job, override=request.threads)
        request.log(
            f"local executor: {jobs} processes, {threads.threads} torch thread(s) each ({threads.reason})"
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
        info = ddp.init(request.device, request.sync_bn)
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
            ddp.shutdown()
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


@hookimpl
def register_executors(register) -> None:
    register("local", LocalExecutor)
