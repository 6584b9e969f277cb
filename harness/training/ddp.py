"""One run on several processes (GPUs) with DistributedDataParallel: NCCL on CUDA, gloo on the CPU.

Roles: rank 0 is the run's only writer. It executes the run as a one-process run would (lock,
run.json, data, generator, validation, checkpoints, curves, test evaluation); after the lifecycle's
prepare phase it sends the training tensors to the other ranks, which build the same method and
trainer (:func:`harness.runs.lifecycle.build_trainer`, given their :class:`DistInfo`) and train in
lockstep without touching the results directory. Before each run rank 0
sends one message per run: the training inputs, or ``skip`` (done already / locked elsewhere), or
``abort`` (it failed before training), so that no rank waits for a run that will not train.

Batches: every rank draws the same global batch indices (a pure function of the step) and keeps
its own slice, so the global labeled and unlabeled batch sizes stay what the run asks for.
Gradients are averaged by DDP; EMA teachers are updated from the synchronised students on every
rank and so stay equal. Batch-norm running statistics are broadcast from rank 0 at each forward
(``broadcast_buffers``), or computed over the global batch with SyncBatchNorm (CUDA only).

Processes come from ``bench run --gpus N`` (:func:`launch` spawns them), from torchrun, or from a
Slurm job with N tasks; all three set the usual env:// variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) before :func:`init` is called.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from harness.errors import UserError

if TYPE_CHECKING:
    from harness.api import Batch, SSLMethod, StepContext, StepOutput
    from harness.data.normalize import Normaliser

#: messages rank 0 sends once per run
INPUTS, SKIP, ABORT = "inputs", "skip", "abort"


class DistributedError(UserError):
    """A distributed run cannot be set up (bad batch split, SyncBatchNorm on the CPU, ...)."""


@dataclass
class DistInfo:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    sync_bn: bool = False

    @property
    def is_writer(self) -> bool:
        return self.rank == 0


#: the process group this process joined with :func:`init` (the process's own state, like torch.distributed's)
_INFO: DistInfo | None = None


def env_world(env: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun-style variables, or None outside a multi-process launch."""
    env = dict(os.environ) if env is None else env
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    rank = int(env["RANK"])
    return rank, world, int(env.get("LOCAL_RANK", rank))


def env_rank_zero() -> bool:
    """False only in a process that a multi-process launch (torchrun, Slurm tasks) made a rank other than 0."""
    found = env_world()
    return found is None or found[0] == 0


def current() -> DistInfo | None:
    """The process group this process trains in (None for a one-process run)."""
    return _INFO


def is_writer() -> bool:
    """True unless this process is a rank other than 0 of a distributed run."""
    return _INFO is None or _INFO.is_writer


def init(device_name: str = "auto", sync_bn: bool | None = None, timeout_s: float = 1800) -> DistInfo:
    """Join the process group described by the environment (env://); NCCL on CUDA, gloo on the CPU.

    ``sync_bn`` None means: SyncBatchNorm on CUDA, broadcast batch-norm buffers on the CPU.
    """
    global _INFO
    found = env_world()
    if found is None:
        raise DistributedError("distributed init without WORLD_SIZE > 1 in the environment")
    rank, world, local_rank = found
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        if torch.cuda.device_count() <= local_rank:
            raise DistributedError(
                f"rank {rank} needs GPU {local_rank} but {torch.cuda.device_count()} are visible; "
                "lower --gpus or ask the scheduler for more GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if sync_bn and device.type != "cuda":
        raise DistributedError(
            "--sync-bn needs CUDA: torch's SyncBatchNorm has no CPU kernel; drop --sync-bn on the CPU "
            "(batch-norm buffers are then broadcast from rank 0)"
        )
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    _INFO = DistInfo(rank, world, local_rank, device, sync_bn=device.type == "cuda" if sync_bn is None else sync_bn)
    return _INFO


def shutdown() -> None:
    """Leave the process group (idempotent)."""
    global _INFO
    if dist.is_initialized():
        dist.destroy_process_group()
    _INFO = None


def free_port() -> int:
    """A TCP port free on this host now (for MASTER_PORT of a local launch)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- engine helpers


class _StepModule(nn.Module):
    """Makes ``method.train_step`` the forward of one module, so DDP sees it (and syncs its gradients)."""

    def __init__(self, method: SSLMethod) -> None:
        super().__init__()
        self.method = method
        self.output: StepOutput | None = None

    def forward(self, batch: Batch, ctx: StepContext) -> torch.Tensor:
        self.output = self.method.train_step(batch, ctx)
        return self.output.loss


def wrap_method(method: SSLMethod, info: DistInfo) -> tuple[SSLMethod, Callable[[Batch, StepContext], StepOutput]]:
    """SyncBatchNorm-convert ``method`` when asked, wrap it in DDP; return it and its step function."""
    # depthwise conv weights (C x 1 x k x k) have two valid stride layouts; DDP warns that it copies such grads
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    if info.sync_bn:
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    module = _StepModule(method)
    # Methods may leave parts unused in a step (a teacher only under no_grad, gated branches):
    # find_unused_parameters keeps DDP correct for any method plugin at the cost of one graph walk.
    ddp = nn.parallel.DistributedDataParallel(
        module,
        device_ids=[info.device.index] if info.device.type == "cuda" else None,
        find_unused_parameters=True,
    )  # buffers (batch-norm statistics) are synced from rank 0 at every forward: DDP's default

    def step(batch: Batch, ctx: StepContext) -> StepOutput:
        ddp(batch, ctx)
        assert module.output is not None
        return module.output

    return method, step


def check_batch_split(labeled_batch: int, unlabeled_batch: int, uses_unlabeled: bool, info: DistInfo) -> None:
    """The global batches must split evenly over the ranks (else samples would weigh unequally)."""
    sizes = [("labeled", labeled_batch)] + ([("unlabeled", unlabeled_batch)] if uses_unlabeled else [])
    for what, size in sizes:
        if size % info.world_size:
            raise DistributedError(
                f"the {what} batch {size} does not split over {info.world_size} processes; use a multiple of "
                f"{info.world_size} (--labeled-batch-size / --batch-size) or another --gpus"
            )


def local_slice(indices: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous share of the global batch ``indices``."""
    return indices.chunk(info.world_size)[info.rank]


def rank_seed(seed: int, info: DistInfo | None) -> int:
    """Rank 0 keeps the run's seed (so one process reproduces a plain run); other ranks get their own."""
    return seed if info is None or info.rank == 0 else seed + 1_000_003 * info.rank


def mean_over_ranks(values: torch.Tensor, info: DistInfo | None) -> torch.Tensor:
    """The element-wise mean of ``values`` over all ranks (a no-op in a one-process run)."""
    if info is None:
        return values
    values = values.to(info.device).clone()
    dist.all_reduce(values)
    return values / info.world_size


def gather_objects(obj: Any, info: DistInfo | None) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in a one-process run)."""
    if info is None:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def parameters_identical(method: nn.Module, info: DistInfo | None) -> bool:
    """True when every rank holds bitwise the same parameters (students and EMA teachers alike)."""
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in method.parameters()])
    digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
    return len(set(gather_objects(digest, info))) == 1


def _broadcast(message: list[Any], info: DistInfo) -> list[Any]:
    dist.broadcast_object_list(message, src=0, device=info.device if info.device.type == "cuda" else None)
    return message


#: the training tensors rank 0 prepares and the other ranks receive
INPUT_TENSORS = ("labeled_images", "labeled_masks", "unlabeled_images")


def send_inputs(data: Any, normaliser: Normaliser, info: DistInfo) -> None:
    """Rank 0: give the other ranks the run's training tensors (on the CPU) and normaliser."""
    tensors = {k: getattr(data, k).cpu() for k in INPUT_TENSORS}
    _broadcast([(INPUTS, tensors, normaliser)], info)


def send(kind: str, info: DistInfo, detail: str = "") -> None:
    """Rank 0: tell the other ranks that this run does not train (``skip``) or failed before training (``abort``)."""
    _broadcast([(kind, detail, None)], info)


def receive(info: DistInfo) -> tuple[str, Any, Any]:
    """A rank other than 0: rank 0's message about the next run (kind, tensors or detail, normaliser)."""
    return _broadcast([None], info)[0]
