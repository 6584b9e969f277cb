"""Rank roles of one run trained on several processes, and the local launch of those processes.

Rank 0 executes the run as a one-process run would; after its prepare phase it broadcasts the training
inputs, and before a run that will not train it says so (see :mod:`harness.training.ddp` for the
messages and the DDP primitives). Every rank builds its trainer with
:func:`harness.runs.lifecycle.build_trainer` and hands it its :class:`DistInfo`.
"""

from __future__ import annotations

import faulthandler
import os
from collections.abc import Callable
from typing import Any

import torch

from harness.execution.joblog import RunLog
from harness.runs.lifecycle import build_trainer, execute, with_device_precision
from harness.runs.store import RunLockedError
from harness.training import ddp
from harness.training.ddp import ABORT, SKIP, DistInfo, DistributedError, free_port, init, rank_seed, shutdown
from harness.training.device import seed_everything
from harness.training.engine import TrainData

# --------------------------------------------------------------------------- per-run roles


def run_rank(task: Any, info: DistInfo, log: Callable[[str], None]) -> str:
    """Train ``task`` (a :class:`harness.execution.tasks.RunTask`) as this rank; returns done / skipped.

    Rank 0 executes the run (its prepare phase hands the training inputs to the others) and tells the
    others when the run will not train; the other ranks follow.
    """
    if info.rank != 0:
        return _follow(task, info)
    sent: list[bool] = []

    def broadcast_inputs(inputs: TrainData, normaliser: Any) -> None:
        ddp.send_inputs(inputs, normaliser, info)
        sent.append(True)

    try:
        execute(
            task.run, task.out_path, log=log, show_progress=task.show_progress, device_name=str(info.device),
            trackers=task.trackers, retrain_changed=task.retrain_changed, restart_damaged=task.restart_damaged,
            dist=info, on_prepared=broadcast_inputs,
            keep_resume_state=getattr(task, "keep_resume_state", False),
        )  # fmt: skip
    except RunLockedError:
        if not sent:
            ddp.send(SKIP, info, "locked")
        raise
    except BaseException as exc:
        if not sent:
            ddp.send(ABORT, info, f"{type(exc).__name__}: {exc}")
        raise
    if not sent:
        ddp.send(SKIP, info, "done")
        return "skipped"
    return "done"


def _follow(task: Any, info: DistInfo) -> str:
    """A rank other than 0: wait for rank 0's message, then train in lockstep, writing nothing."""
    run = task.run
    kind, payload, normaliser = ddp.receive(info)
    if kind == SKIP:
        return "skipped"
    if kind == ABORT:
        raise DistributedError(f"rank 0 could not start run {run.name}: {payload}")
    run, _ = with_device_precision(run, info.device)  # the precision rank 0 chose: same device type
    seed_everything(rank_seed(run.spec.seed, info), run.spec.deterministic)
    inputs = TrainData(**payload, val_dataset=None, val_indices=[])  # type: ignore[arg-type]  # rank 0 validates
    _method, trainer = build_trainer(
        run, inputs, normaliser, info.device, task.run_dir, dist=info, restart_damaged=task.restart_damaged
    )
    trainer.train()
    return "done"


# --------------------------------------------------------------------------- local launch


def launch(task: Any, nprocs: int, gpu_ids: list[str] | None, threads: int | None) -> None:
    """Train ``task`` on ``nprocs`` local processes (``bench run --gpus N``); raises when a rank fails.

    ``gpu_ids``: the GPUs (CUDA_VISIBLE_DEVICES entries) the processes share, rank r on the r-th;
    None on the CPU.
    """
    import torch.multiprocessing as mp

    port = free_port()
    try:
        mp.start_processes(
            _rank_main, args=(task, nprocs, port, gpu_ids, threads), nprocs=nprocs, start_method="spawn", join=True
        )
    except mp.ProcessRaisedException as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise RuntimeError(f"a training process failed: {last}") from exc
    except mp.ProcessExitedException as exc:
        raise RuntimeError(f"a training process died: {exc}") from exc


def _rank_main(rank: int, task: Any, nprocs: int, port: int, gpu_ids: list[str] | None, threads: int | None) -> None:
    # a rank killed by SIGABRT/SIGSEGV (gloo, oneDNN) prints its Python stacks to stderr instead of vanishing
    faulthandler.enable()
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    if gpu_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    if threads:
        torch.set_num_threads(threads)
    info = init(task.device, task.sync_bn)
    try:
        log = RunLog(task.run_dir, echo=rank == 0 and task.show_progress) if rank == 0 else (lambda _msg: None)
        run_rank(task, info, log)
    finally:
        shutdown()
