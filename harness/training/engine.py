"""The training loop shared by every SSL method.

The engine owns iterations, batches (drawn on the device from uint8 tensors), augmentation, the
optimiser and poly schedule, autocast, the consistency ramp, validation, checkpoints and resume.
A method only computes the loss of one step.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness import progress as progress_mod
from harness.api import Batch, SegDataset, SSLMethod, StepContext, StepOutput
from harness.data.normalize import Normaliser
from harness.errors import UserError
from harness.evaluation.evaluate import fast_dice
from harness.training import ddp
from harness.training.augment import DeviceAugmenter
from harness.training.device import autocast_factory, rng_state, set_rng_state
from harness.training.losses import SUPERVISED_LOSSES
from harness.training.schedules import consistency_weight, poly_lr, ramp_progress, sigmoid_rampup


class NonFiniteLossError(UserError):
    """The loss or the weights became NaN or infinite; no checkpoint holding them is written."""


class CheckpointError(UserError):
    """A checkpoint cannot be written (disk full, read-only) or read back (truncated, damaged)."""


#: the flag that moves a damaged latest.pt aside and trains the run from scratch (``bench run``)
RESTART_FLAG = "--restart-damaged"


@dataclass
class TrainSettings:
    """Everything the loop needs besides the method and the data (all recorded in run.json)."""

    iterations: int
    labeled_batch: int = 4
    unlabeled_batch: int = 4
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    ramp_horizon: str = "scaled"
    ramp_fraction: float = 1.0
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    val_every: int = 50
    checkpoint_every: int = 100
    log_every: int = 10
    selection_metric: str = "dice_lesion"
    seed: int = 0
    loss: str = "bce-dice"


@dataclass
class TrainData:
    """Training tensors on the device and the validation images."""

    labeled_images: torch.Tensor  # L x 1 x S x S uint8
    labeled_masks: torch.Tensor  # L x 1 x S x S bool
    unlabeled_images: torch.Tensor  # U x 1 x S x S uint8 (real unlabeled and synthetic)
    val_dataset: SegDataset
    val_indices: list[int]


@dataclass
class TrainResult:
    steps: int
    best_step: int
    best_score: float
    seconds: float
    iterations_per_second: float
    images_per_second: float
    final_lr: float
    ramp_factor_at_end: float
    resumed_from: int | None
    extra: dict[str, Any] = field(default_factory=dict)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write a checkpoint to a temporary file, fsync it, then rename it over ``path``.

    On any failure the temporary file is removed (a full disk gets its space back) and an OSError
    becomes a :class:`CheckpointError` naming the file. The checkpoint is serialised in memory first,
    so that a write error surfaces as the OSError it is, not as torch's stream-writer text.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(
                f"cannot write checkpoint {path} ({exc.strerror or exc}); free space there or give another --out. "
                "Rerunning resumes from the last checkpoint written"
            ) from exc
        raise


def remove_partial_saves(ckpt_dir: Path) -> list[Path]:
    """Remove temporary checkpoint files a killed save left behind (call while holding the run's lock)."""
    removed = []
    for tmp in Path(ckpt_dir).glob(".*.pt.*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def all_finite(module_state: dict[str, Any]) -> bool:
    """True when every floating-point tensor of a state dict is finite (one host sync)."""
    flags = [t.isfinite().all() for t in module_state.values() if torch.is_tensor(t) and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def make_predictor(
    net: nn.Module, normaliser: Normaliser, autocast: Callable[[], Any], channels_last: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predict(uint8 images on device) -> fp32 logits`` with the run's normalisation and precision."""

    def predict(images: torch.Tensor) -> torch.Tensor:
        x = normaliser(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), autocast():
            return net(x).float()

    return predict


def make_optimizers(method: SSLMethod, *, lr: float, momentum: float, weight_decay: float) -> list[torch.optim.SGD]:
    """One SGD optimiser per parameter-group list of ``method`` (the published optimiser)."""
    return [
        torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
        for groups in method.optimizer_groups()
    ]


class _IndexStream:
    """Endless shuffled passes over ``n`` items, a pure function of (seed, pass) so resume is exact."""

    def __init__(self, n: int, seed: int, device: torch.device) -> None:
        self.n, self.seed, self.device = n, seed, device
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=gen).to(self.device)}
        return self._cache[epoch]

    def take(self, step: int, batch: int) -> torch.Tensor:
        epoch, offset = divmod(step * batch, self.n)
        parts, need = [], batch
        while need > 0:
            part = self._perm(epoch)[offset : offset + need]
            parts.append(part)
            need -= part.numel()
            epoch, offset = epoch + 1, 0
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class Trainer:
    """Runs one training run of ``method`` and keeps its checkpoints under ``run_dir/checkpoints``."""

    def __init__(
        self,
        method: SSLMethod,
        settings: TrainSettings,
        data: TrainData,
        normaliser: Normaliser,
        device: torch.device,
        run_dir: Path,
        *,
        show_progress: bool = True,
        describe_step: Callable[[dict[str, float]], None] | None = None,
        on_log: Callable[[list[dict[str, Any]]], None] | None = None,
        restart_damaged: bool = False,
        dist: ddp.DistInfo | None = None,
        progress: progress_mod.Reporter | None = None,
    ) -> None:
        """``on_log(rows)`` receives every batch of rows written to curves.jsonl (host values; trackers).

        ``dist``: this process's place in a distributed run (None for a one-process run); every rank
        builds its trainer the same way, and only rank 0 writes files.
        """
        self.dist = dist
        self.writer = dist is None or dist.is_writer
        if self.dist is not None:
            ddp.check_batch_split(settings.labeled_batch, settings.unlabeled_batch, method.uses_unlabeled, self.dist)
        self.method = method.to(device)
        self.s = settings
        self.data = data
        self.normaliser = normaliser
        self.device = device
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.curves_path = self.run_dir / "curves.jsonl"
        self.on_log = on_log
        self.restart_damaged = restart_damaged
        #: checkpoints written (or found on resume) and the step each holds: every one of them is finite
        self.kept: dict[str, int] = {}
        # progress lines and messages ("resuming from step N"); only the writer reports
        self.progress = (progress or progress_mod.current()) if show_progress else progress_mod.SILENT
        if not self.writer:
            self.progress = progress_mod.SILENT
        self.autocast = autocast_factory(device, settings.precision)
        # fp16 (GPUs without bf16) needs loss scaling; bf16 and fp32 keep fp32's exponent range
        self.scaler = torch.amp.GradScaler(device.type) if settings.precision == "fp16" else None
        if settings.loss not in SUPERVISED_LOSSES:
            raise UserError(f"unknown loss {settings.loss!r}; use one of {', '.join(SUPERVISED_LOSSES)}")
        self.loss_fn = SUPERVISED_LOSSES[settings.loss]
        if settings.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.generator = torch.Generator(device=device).manual_seed(ddp.rank_seed(settings.seed, self.dist))
        self.augment = DeviceAugmenter(self.generator)
        self._step: Callable[[Batch, StepContext], StepOutput] = self.method.train_step
        if self.dist is not None:
            self.method, self._step = ddp.wrap_method(self.method, self.dist)
        self.optimizers = make_optimizers(
            method, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
        n_lab = data.labeled_images.shape[0]
        if n_lab == 0:
            raise UserError("no labeled training images: raise --labeled or check the split")
        self.lab_stream = _IndexStream(n_lab, settings.seed * 2 + 1, device)
        self.unl_stream: _IndexStream | None = None
        if method.uses_unlabeled:
            n_unl = data.unlabeled_images.shape[0]
            if n_unl == 0:
                raise UserError(
                    f"{type(method).__name__} needs unlabeled images but the pool is empty (labeled fraction 1 "
                    "and no generator?): lower --labeled, add --generator ldm, or use --ssl supervised"
                )
            self.unl_stream = _IndexStream(n_unl, settings.seed * 2 + 2, device)
        self.best_score = -math.inf
        self.best_step = -1
        self.start_step = 0
        self.resumed_from: int | None = None
        self._net = method.inference_network()
        self._compiled = torch.compile(self._net) if settings.compile else self._net

    # ------------------------------------------------------------------ data

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = self.normaliser(images)
        return x.contiguous(memory_format=torch.channels_last) if self.s.channels_last else x

    def batch(self, step: int) -> Batch:
        """The labeled and unlabeled batch of ``step`` (augmented, normalised, on the device)."""
        d = self.data
        idx = self.lab_stream.take(step, self.s.labeled_batch)
        if self.dist is not None:
            idx = ddp.local_slice(idx, self.dist)
        images = d.labeled_images.index_select(0, idx).float()
        masks = d.labeled_masks.index_select(0, idx).float()
        images, masks = self.augment.geometric(images, masks)
        unl_raw = images.new_zeros((0, *images.shape[1:]))
        if self.unl_stream is not None:
            uidx = self.unl_stream.take(step, self.s.unlabeled_batch)
            if self.dist is not None:
                uidx = ddp.local_slice(uidx, self.dist)
            unl_raw, _ = self.augment.geometric(d.unlabeled_images.index_select(0, uidx).float())
        return Batch(
            labeled_images=self._prepare(images),
            labeled_masks=masks,
            unlabeled_images=self._prepare(unl_raw),
            unlabeled_raw=unl_raw,
        )

    # ------------------------------------------------------------------ checkpoints

    def _full_state(self, step: int) -> dict[str, Any]:
        state = {
            "step": step,
            "method": self.method.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "rng": rng_state(self.generator),
            "best_score": self.best_score,
            "best_step": self.best_step,
        }
        if self.scaler is not None:
            state["grad_scaler"] = self.scaler.state_dict()
        if self.dist is not None:  # every rank's RNG streams, so that a resumed distributed run continues exactly
            state["rng_ranks"] = ddp.gather_objects(state["rng"], self.dist)
        return state

    def kept_text(self) -> str:
        """Which checkpoints hold finite weights, for messages that must be true."""
        if not self.kept:
            return f"no checkpoint was written yet in {self.ckpt_dir}"
        held = ", ".join(f"{name} (step {step})" for name, step in sorted(self.kept.items()))
        return f"the checkpoints kept in {self.ckpt_dir} hold finite weights: {held}"

    def require_finite(self, step: int) -> None:
        """Stop before anything is saved when the weights are no longer finite (every rank calls it)."""
        if not all_finite(self.method.state_dict()):
            raise NonFiniteLossError(
                f"non-finite weights after step {step}; nothing from then on is saved, and {self.kept_text()}. "
                "Lower the learning rate (--set lr=...) or use --precision fp32."
            )

    def save_latest(self, step: int) -> None:
        self.require_finite(step)
        state = self._full_state(step)  # collective in a distributed run: every rank calls it
        if not self.writer:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, self.ckpt_dir / "latest.pt")
        self.kept["latest.pt"] = step

    def _save_weights(self, name: str, step: int, score: float) -> None:
        if not self.writer:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"step": step, "score": score, "method": self.method.state_dict()}, self.ckpt_dir / name)
        self.kept[name] = step

    def _load_latest(self, path: Path) -> dict[str, Any]:
        """Load latest.pt into the method and optimisers; a damaged file raises naming it and the way out.

        Everything is checked before anything is loaded, and a load that fails half-way puts the initial
        weights and optimiser states back, so that a restart from scratch really starts from scratch.
        """
        initial = (copy.deepcopy(self.method.state_dict()), [copy.deepcopy(o.state_dict()) for o in self.optimizers])
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            missing = {"step", "method", "optimizers", "rng", "best_score", "best_step"} - set(state)
            if missing:
                raise KeyError(f"no {', '.join(sorted(missing))} (not a full-state checkpoint)")
            step, best_score, best_step = int(state["step"]), float(state["best_score"]), int(state["best_step"])
            finite = all_finite(state["method"])
            if finite:
                self.method.load_state_dict(state["method"])
                for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
                    opt.load_state_dict(opt_state)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - truncated, empty, garbage or another run's file
            self.method.load_state_dict(initial[0])
            for opt, opt_state in zip(self.optimizers, initial[1], strict=True):
                opt.load_state_dict(opt_state)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}"
            raise CheckpointError(
                f"checkpoint {path} is damaged ({reason}); rerun with {RESTART_FLAG} to move it aside and train "
                "this run from scratch, or put back an intact copy"
            ) from None
        if not finite:
            raise CheckpointError(
                f"checkpoint {path} holds non-finite weights; rerun with {RESTART_FLAG} to move it aside and "
                "train this run from scratch"
            )
        state.update(step=step, best_score=best_score, best_step=best_step)
        return state

    def _restart_from_scratch(self, path: Path) -> None:
        """Move a damaged latest.pt aside and drop what the abandoned attempt wrote (``restart_damaged``)."""
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(path, aside)
        for name in ("best.pt", "last.pt"):
            (self.ckpt_dir / name).unlink(missing_ok=True)
        self.curves_path.unlink(missing_ok=True)
        print(f"moved the damaged {path} to {aside.name}; training from scratch")

    def try_resume(self) -> None:
        """Continue from checkpoints/latest.pt when it exists (and trim curves written after it)."""
        path = self.ckpt_dir / "latest.pt"
        if self.writer:
            remove_partial_saves(self.ckpt_dir)
        if not path.exists():
            return
        try:
            state = self._load_latest(path)
        except CheckpointError:
            if not self.restart_damaged:
                raise
            if self.writer:
                self._restart_from_scratch(path)
            return
        self.kept["latest.pt"] = state["step"]
        rng = state["rng"]
        if self.dist is not None:
            ranks = state.get("rng_ranks") or []
            # a checkpoint of another world size continues with fresh streams on the ranks it lacks
            if len(ranks) == self.dist.world_size:
                rng = ranks[self.dist.rank]
            elif self.dist.rank != 0:
                rng = None
        if rng is not None:
            set_rng_state(rng, self.generator)
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.best_score, self.best_step = state["best_score"], state["best_step"]
        self.start_step = self.resumed_from = int(state["step"]) + 1
        self.progress.message(f"resuming from step {self.start_step} of {self.s.iterations} ({path})")
        if self.writer and self.curves_path.exists():
            kept = [
                line
                for line in self.curves_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", -1) < self.start_step
            ]
            tmp = self.curves_path.with_suffix(".tmp")
            tmp.write_text("".join(f"{line}\n" for line in kept))
            os.replace(tmp, self.curves_path)

    # ------------------------------------------------------------------ loop

    def _context(self, step: int) -> StepContext:
        s = self.s
        return StepContext(
            step=step,
            total_steps=s.iterations,
            device=self.device,
            autocast=self.autocast,
            supervised_loss=self.loss_fn,
            ramp=lambda w: consistency_weight(w, step, s.iterations, s.ramp_horizon, s.ramp_fraction),  # type: ignore[arg-type]
            augment=self.augment,
            generator=self.generator,
            input_scale=self.normaliser.input_std,
        )

    def validate(self) -> dict[str, float]:
        self.method.eval()
        try:
            predict = make_predictor(self._compiled, self.normaliser, self.autocast, self.s.channels_last)
            scores = fast_dice(predict, self.data.val_dataset, self.data.val_indices, batch_size=16, device=self.device)
        finally:
            self.method.train()
        return scores

    def _selection_score(self, scores: dict[str, float]) -> float:
        value = scores.get(self.s.selection_metric, math.nan)
        if math.isnan(value):  # e.g. no lesion image in the val set
            value = scores.get("dice_all", math.nan)
        return value

    def _write_curves(self, rows: list[dict[str, Any]]) -> None:
        if not self.writer:
            return
        with self.curves_path.open("a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        if self.on_log is not None:
            self.on_log(rows)

    def train(self) -> TrainResult:
        if self.writer:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.try_resume()
        with self.progress.task("train", total=self.s.iterations, start=self.start_step, unit="it") as bar:
            return self._train(bar)

    def _train(self, bar: progress_mod.ProgressTask) -> TrainResult:
        s = self.s
        self.method.train()
        window: list[tuple[int, float, torch.Tensor, dict[str, torch.Tensor]]] = []
        last_val: dict[str, float] = {}
        t0 = time.perf_counter()
        lr = s.lr
        for step in range(self.start_step, s.iterations):
            lr = poly_lr(s.lr, step, s.iterations, s.poly_power)
            for opt in self.optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            ctx = self._context(step)
            out = self._step(self.batch(step), ctx)
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            if self.scaler is None:
                out.loss.backward()
                for opt in self.optimizers:
                    opt.step()
            else:
                self.scaler.scale(out.loss).backward()
                for opt in self.optimizers:
                    self.scaler.step(opt)
                self.scaler.update()
            self.method.after_step(ctx)
            logs = {
                k: (v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))) for k, v in out.logs.items()
            }
            window.append((step, lr, out.loss.detach().float(), logs))
            bar.update(step + 1)

            last = step == s.iterations - 1
            if (step + 1) % s.log_every == 0 or last:
                rows = self._flush(window)
                window = []
                bar.update(step + 1, **_progress_terms(rows[-1]))
            if (step + 1) % s.val_every == 0 or last:
                self.require_finite(step)  # every rank (their weights agree), before anything is selected or saved
            if ((step + 1) % s.val_every == 0 or last) and self.writer:
                last_val = self.validate()
                score = self._selection_score(last_val)
                if math.isfinite(score) and score > self.best_score:  # never select on a non-finite metric
                    self.best_score, self.best_step = score, step
                    self._save_weights("best.pt", step, score)
                self._write_curves([{"step": step, "event": "val", **last_val}])
                bar.update(step + 1, val_dice=last_val.get("dice_lesion", math.nan))
            if (step + 1) % s.checkpoint_every == 0 and not last:
                self.save_latest(step)
        bar.close()  # the closing line comes before the final checkpoint is written
        seconds = time.perf_counter() - t0
        done = s.iterations - self.start_step
        self.require_finite(s.iterations - 1)  # a resumed run that had nothing left to train comes here directly
        self._save_weights("last.pt", s.iterations - 1, self.best_score)
        self.save_latest(s.iterations - 1)
        per_step = s.labeled_batch + (s.unlabeled_batch if self.unl_stream is not None else 0)
        extra: dict[str, Any] = {}
        if self.device.type == "cuda":
            extra["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3)
        if self.dist is not None:
            extra.update(
                world_size=self.dist.world_size,
                sync_batchnorm=self.dist.sync_bn,
                replicas_identical=ddp.parameters_identical(self.method, self.dist),
            )
        ips = done / seconds if seconds > 0 and done else 0.0
        return TrainResult(
            steps=s.iterations,
            best_step=self.best_step,
            best_score=self.best_score,
            seconds=seconds,
            iterations_per_second=ips,
            images_per_second=ips * per_step,
            final_lr=lr,
            ramp_factor_at_end=sigmoid_rampup(
                ramp_progress(s.iterations - 1, s.iterations, s.ramp_horizon, s.ramp_fraction)  # type: ignore[arg-type]
            ),
            resumed_from=self.resumed_from,
            extra=extra,
        )

    def _flush(self, window: list[tuple[int, float, torch.Tensor, dict[str, torch.Tensor]]]) -> list[dict]:
        """One host sync per logging window: write the curves, stop on a non-finite loss."""
        keys = sorted({k for *_, logs in window for k in logs})
        stacked = torch.stack(
            [
                torch.stack([loss, *[logs.get(k, torch.tensor(math.nan)).to(loss.device) for k in keys]])
                for _, _, loss, logs in window
            ]
        )
        # a distributed run logs the mean over ranks: the loss of the global batch
        stacked = ddp.mean_over_ranks(stacked, self.dist).cpu().tolist()
        rows = []
        for (step, lr, _, _), values in zip(window, stacked, strict=True):
            row = {"step": step, "lr": lr, "loss": values[0], **dict(zip(keys, values[1:], strict=True))}
            rows.append(row)
        self._write_curves(rows)
        bad = next((r for r in rows if not math.isfinite(r["loss"])), None)
        if bad is not None:
            terms = ", ".join(f"{k}={v:.4g}" for k, v in bad.items() if k not in ("step", "lr"))
            raise NonFiniteLossError(
                f"non-finite loss at step {bad['step']} ({terms}); {self.kept_text()}. "
                "Lower the learning rate (--set lr=...) or use --precision fp32."
            )
        return rows


def _progress_terms(row: dict[str, Any]) -> dict[str, float]:
    """The loss terms of a curves row, loss first and lr last (what a progress line shows)."""
    terms = {k: v for k, v in row.items() if k not in ("step", "lr")}
    return {**terms, "lr": row["lr"]}
