"""Rank roles of one run trained on several processes, and the local launch of those processes.

Rank 0 executes the run as a one-process run would and tells the other ranks, before each run,
whether it trains (see :mod:`harness.training.ddp` for the messages and the DDP primitives).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from harness.execution.joblog import RunLog
from harness.plugins import get_registry
from harness.runs.lifecycle import execute
from harness.runs.resolve import resolve
from harness.runs.store import RunLockedError
from harness.training import ddp
from harness.training.ddp import ABORT, SKIP, DistributedError, free_port, init, rank_seed, shutdown
from harness.training.device import seed_everything
from harness.training.engine import TrainData, Trainer

# --------------------------------------------------------------------------- per-run roles


def run_rank(task: Any, log: Callable[[str], None]) -> str:
    """Train ``task`` (a :class:`harness.execution.executors.RunTask`) as this rank; returns done / skipped / busy.

    Rank 0 executes the run and tells the others whether it trains; the other ranks follow.
    """

    info = ddp.current()
    assert info is not None, "init() first"
    run = resolve(task.spec)
    if info.rank != 0:
        return _follow(run, task)
    ddp.reset_inputs_sent()
    try:
        execute(
            run, task.out_path, log=log, show_progress=task.show_progress, device_name=str(info.device),
            trackers=task.trackers, retrain_changed=task.retrain_changed, restart_damaged=task.restart_damaged,
        )  # fmt: skip
    except RunLockedError:
        if not ddp.inputs_sent():
            ddp.send(SKIP, "locked")
        raise
    except BaseException as exc:
        if not ddp.inputs_sent():
            ddp.send(ABORT, f"{type(exc).__name__}: {exc}")
        raise
    if not ddp.inputs_sent():
        ddp.send(SKIP, "done")
        return "skipped"
    return "done"


def _follow(run: Any, task: Any) -> str:
    """A rank other than 0: wait for rank 0's message, then train in lockstep, writing nothing."""

    info = ddp.current()
    assert info is not None
    kind, payload, normaliser = ddp.receive()
    if kind == SKIP:
        return "skipped"
    if kind == ABORT:
        raise DistributedError(f"rank 0 could not start run {run.name}: {payload}")
    spec = run.spec
    seed_everything(rank_seed(spec.seed, info), spec.deterministic)
    registry = get_registry()
    backbone_cls = registry.get("backbone", spec.backbone)
    method_cls = registry.get("ssl_method", spec.ssl)
    method = method_cls(lambda: backbone_cls(spec.in_channels, 1, run.backbone_params), run.method_params)
    data = TrainData(
        labeled_images=payload["labeled_images"].to(info.device),
        labeled_masks=payload["labeled_masks"].to(info.device),
        unlabeled_images=payload["unlabeled_images"].to(info.device),
        val_dataset=None,  # type: ignore[arg-type]  # only rank 0 validates
        val_indices=[],
    )
    trainer = Trainer(
        method, run.settings, data, normaliser, info.device, task.run_dir, show_progress=False,
        restart_damaged=task.restart_damaged,
    )  # fmt: skip
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
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(nprocs), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    if gpu_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    if threads:
        torch.set_num_threads(threads)
    init(task.device, task.sync_bn)
    try:
        log = RunLog(task.run_dir, echo=rank == 0 and task.show_progress) if rank == 0 else (lambda _msg: None)
        run_rank(task, log)
    finally:
        shutdown()
