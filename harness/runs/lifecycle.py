"""One benchmark run's lifecycle, in phases with typed results: prepare -> train -> evaluate -> record.

:func:`prepare` loads the data, the split and the fold (:func:`load_fold`), fills the unlabeled pool
(fitting or reusing the generator) and fits the normaliser: a :class:`Prepared`. :func:`build_trainer`
builds the run's method and trainer from it, the same way on every rank of a distributed run (rank 0
prepares and broadcasts the training inputs; the others receive them). :func:`evaluate` scores the
best and last checkpoints on the test ids: an :class:`Evaluation`. :func:`execute` runs the phases
under the run's lock and records each one in run.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import __version__, progress, threads
from harness.api import SegDataset, SSLMethod, TrackedRun
from harness.data.datasets import load_dataset
from harness.data.dedup import DEFAULT_HASH_SIZE, DEFAULT_THRESHOLD
from harness.data.normalize import Normaliser, fit_normaliser
from harness.data.splits import FoldParts, fold_parts, load_split, make_split, save_split, split_hash, unlabeled_twins
from harness.evaluation.evaluate import evaluate_images, summarise
from harness.evaluation.metrics import METRIC_POLICY
from harness.generation.pool import synthetic_pool
from harness.plugins import Registry, get_registry
from harness.runs import freshness
from harness.runs.resolve import ResolvedRun, RunSpec, method_of
from harness.runs.run_figures import run_figures
from harness.runs.store import METRICS_FILE, atomic_write_json, read_run, run_lock, safe_file_name, write_rows_csv
from harness.runs.tracking import TrackerChoice, Trackers, final_scalars
from harness.training import ddp
from harness.training.device import autocast_factory, choose_precision, describe_device, resolve_device, seed_everything
from harness.training.engine import TrainData, Trainer, TrainResult, make_predictor

# --------------------------------------------------------------------------- execution

Log = Callable[[str], None]


def _git_info() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": bool(dirty)} if commit else {}


def load_run_dataset(spec: RunSpec, image_size: int) -> SegDataset:
    return load_dataset(spec.data, image_size=image_size, resize=spec.resize, include_strata=spec.include_strata)


def split_for(spec: RunSpec, dataset: SegDataset, out_dir: Path, *, save: bool = True) -> tuple[dict, Path]:
    """The split of the run: the given file (made on the fly when absent) or a shared default file.

    ``save=False`` makes an absent split in memory only (checking a finished run writes nothing).
    """
    if spec.split_file:
        path = Path(spec.split_file)
    else:
        path = (
            out_dir
            / "splits"
            / (
                f"{safe_file_name(dataset.name)}-{dataset.fingerprint[:8]}-{spec.protocol}-k{spec.k}"
                f"-v{spec.val_fraction:g}-{spec.val_from}-d{spec.label_draws}-s{spec.split_seed}.json"
            )
        )
    if path.exists():
        return load_split(path, dataset), path
    split = make_split(
        dataset,
        protocol=spec.protocol,
        k=spec.k,
        val_fraction=spec.val_fraction,
        val_from=spec.val_from,
        seed=spec.split_seed,
        label_draws=spec.label_draws,
    )
    if save:
        save_split(split, path)
    return split, path


def data_changes(run: ResolvedRun, recorded: dict[str, Any] | None, out_dir: Path) -> list[str]:
    """How the run's data now differs from ``recorded`` (a run.json ``data`` block); writes nothing."""
    dataset = _checked_dataset(run.spec, run.image_size)
    split, _ = split_for(run.spec, dataset, out_dir, save=False)
    return freshness.changes(recorded, freshness.identity(dataset, split_hash(split)), dataset)


#: the dataset the last check loaded, with the folder signature it had: a grid of finished runs on one
#: dataset is checked with one load (about 0.5 s for BUSI at 256), not one per run
_LAST_CHECKED: dict[tuple, tuple[tuple, SegDataset]] = {}


def _checked_dataset(spec: RunSpec, image_size: int) -> SegDataset:
    key = (spec.data, image_size, spec.resize, tuple(spec.include_strata or ()))
    signature = freshness.folder_signature(spec.data)
    hit = _LAST_CHECKED.get(key)
    if hit is not None and signature is not None and hit[0] == signature:
        return hit[1]
    dataset = load_run_dataset(spec, image_size)
    _LAST_CHECKED.clear()  # one dataset in memory at most
    if signature is not None:
        _LAST_CHECKED[key] = (signature, dataset)
    return dataset


def _thread_policy() -> dict[str, Any] | str:
    """How the run's thread count was chosen (run.json), as the executor applied it."""
    choice = threads.applied()
    return choice.as_dict() if choice else "torch default (not set by segbench)"


def _sha256_ids(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


# --------------------------------------------------------------------------- phases


def unlabeled_pool(
    dataset: SegDataset, split: dict[str, Any], parts: FoldParts, fold: int
) -> tuple[torch.Tensor, list[str]]:
    """The ``unlabeled/`` images fold ``fold`` may train on, and the ids left out: near-duplicates of its
    test or val images (listed by the split file; older split files without the list are checked here)."""
    if not dataset.unlabeled_ids:
        return dataset.unlabeled, []
    excluded = parts.unlabeled_excluded
    if "unlabeled_excluded" not in split["folds"][fold]:
        params = split.get("parameters", {})
        held_out = list(dict.fromkeys([*parts.test, *parts.val]))
        excluded = unlabeled_twins(
            dataset,
            held_out,
            params.get("hash_size", DEFAULT_HASH_SIZE),
            params.get("dup_threshold", DEFAULT_THRESHOLD),
        )
    dropped = set(excluded)
    keep = [k for k, i in enumerate(dataset.unlabeled_ids) if i not in dropped]
    return dataset.unlabeled[keep], sorted(excluded)


@dataclass
class Fold:
    """A run's data at the model grid, its split (and where the split file is) and the fold's ids."""

    dataset: SegDataset
    split: dict[str, Any]
    split_path: Path
    parts: FoldParts


def load_fold(
    spec: RunSpec, image_size: int, out_dir: Path, *, labeled: float | None = None, save_split: bool = True
) -> Fold:
    """dataset -> split -> fold: the chain every consumer of a fold goes through (``bench generate`` too).

    ``labeled`` replaces the spec's labeled fraction; ``save_split=False`` keeps a split made here in memory.
    """
    dataset = load_run_dataset(spec, image_size)
    split, split_path = split_for(spec, dataset, out_dir, save=save_split)
    parts = fold_parts(split, spec.fold, spec.labeled if labeled is None else labeled, spec.draw)
    return Fold(dataset, split, split_path, parts)


@dataclass
class Prepared:
    """The prepare phase's result: what training and evaluation read, and what run.json records of it."""

    fold: Fold
    #: training tensors on the CPU; ``val_dataset`` / ``val_indices`` are for rank 0's validation
    inputs: TrainData
    normaliser: Normaliser
    #: run.json blocks: ``data``, ``normalisation`` and, with a generator, ``generator``
    facts: dict[str, Any] = field(default_factory=dict)


def fold_facts(fold: Fold) -> dict[str, Any]:
    """The run.json ``data`` block of a fold."""
    dataset, parts, split = fold.dataset, fold.parts, fold.split
    return {
        "name": dataset.name,
        "fingerprint": dataset.fingerprint,
        "mask_fingerprint": dataset.mask_fingerprint,
        "n_images": len(dataset),
        "split_file": str(fold.split_path),
        "split_hash": split_hash(split),
        "protocol": split.get("protocol"),
        "selection_is_test": parts.selection_is_test,
        "n_labeled": len(parts.labeled),
        "n_unlabeled_real": len(parts.unlabeled),
        "n_val": len(parts.val),
        "n_test": len(parts.test),
        "labeled_ids_sha256": _sha256_ids(parts.labeled),
        "resize": dataset.options.get("resize"),
        "mask_threshold": dataset.options.get("mask_threshold"),
        "spacing": dataset.spacing,
    }


def generator_pool(
    name: str,
    params: Any,
    fold: Fold,
    *,
    n: int,
    seed: int,
    image_size: int,
    cache_root: Path,
    device: torch.device,
    log: Log,
    registry: Registry | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``n`` synthetic images of generator ``name``, fitted on the fold's training images (or reused from the cache)."""
    registry = registry or get_registry()
    dataset, parts = fold.dataset, fold.parts
    train_idx = dataset.index(parts.labeled) + dataset.index(parts.unlabeled)
    return synthetic_pool(
        name,
        registry.get("generator", name),
        params,
        images=dataset.images[train_idx],
        ids=[dataset.ids[i] for i in train_idx],
        content_hashes=dataset.content_hashes,
        strata=[dataset.strata[i] for i in train_idx],
        n=n,
        seed=seed,
        image_size=image_size,
        cache_root=cache_root,
        device=device,
        log=log,
    )


def prepare(
    run: ResolvedRun,
    out_dir: Path,
    device: torch.device,
    log: Log,
    registry: Registry | None = None,
    *,
    fold: Fold | None = None,
) -> Prepared:
    """Phase 1: the fold's data (``fold``, when already loaded), its unlabeled pool and the normaliser."""
    registry = registry or get_registry()
    spec, cfg = run.spec, run.config
    t0 = time.perf_counter()
    fold = fold or load_fold(spec, run.image_size, out_dir)
    dataset, parts = fold.dataset, fold.parts
    facts: dict[str, Any] = {"data": {**fold_facts(fold), "load_seconds": round(time.perf_counter() - t0, 3)}}
    lab_idx = dataset.index(parts.labeled)
    unl_idx = dataset.index(parts.unlabeled)
    pools: list[torch.Tensor] = []
    if registry.get("ssl_method", spec.ssl).uses_unlabeled and spec.unlabeled in ("real", "both"):
        pool, excluded = unlabeled_pool(dataset, fold.split, parts, spec.fold)
        pools += [dataset.images[unl_idx], pool]
        if dataset.unlabeled_ids:
            facts["data"]["unlabeled_excluded"] = excluded
    if cfg["generator"] != "none":
        want = cfg["n_synthetic"]
        n = {"train": len(lab_idx) + len(unl_idx), "unlabeled": len(unl_idx)}.get(want, want)
        synthetic, facts["generator"] = generator_pool(
            cfg["generator"], run.generator_params, fold, n=n, seed=spec.seed, image_size=run.image_size,
            cache_root=out_dir / "generators", device=device, log=log, registry=registry,
        )  # fmt: skip
        pools.append(synthetic)
    unlabeled = torch.cat(pools) if pools else dataset.images[:0]
    facts["data"]["n_unlabeled_total"] = int(unlabeled.shape[0])
    normaliser = fit_normaliser(spec.normalisation, spec.in_channels, dataset.images[lab_idx + unl_idx])
    facts["normalisation"] = normaliser.as_dict()
    inputs = TrainData(
        labeled_images=dataset.images[lab_idx],
        labeled_masks=dataset.masks[lab_idx],
        unlabeled_images=unlabeled,
        val_dataset=dataset,
        val_indices=dataset.index(parts.val),
    )
    return Prepared(fold, inputs, normaliser, facts)


def build_trainer(
    run: ResolvedRun,
    inputs: TrainData,
    normaliser: Normaliser,
    device: torch.device,
    run_dir: Path,
    *,
    dist: ddp.DistInfo | None = None,
    show_progress: bool = False,
    on_log: Callable[[list[dict[str, Any]]], None] | None = None,
    restart_damaged: bool = False,
    registry: Registry | None = None,
) -> tuple[SSLMethod, Trainer]:
    """Phase 2's set-up, the same on every rank: the run's method and a trainer over ``inputs`` on ``device``."""
    method = method_of(run, registry)
    data = dataclasses.replace(
        inputs,
        labeled_images=inputs.labeled_images.to(device),
        labeled_masks=inputs.labeled_masks.to(device),
        unlabeled_images=inputs.unlabeled_images.to(device),
    )
    trainer = Trainer(
        method, run.settings, data, normaliser, device, run_dir, show_progress=show_progress, on_log=on_log,
        restart_damaged=restart_damaged, dist=dist,
    )  # fmt: skip
    return method, trainer


def train_facts(run: ResolvedRun, result: TrainResult) -> dict[str, Any]:
    """The run.json ``train`` block."""
    facts = dataclasses.asdict(result)
    consistency = getattr(run.method_params, "consistency", None)
    if consistency is not None:
        facts["consistency_weight_at_end"] = consistency * result.ramp_factor_at_end
    return facts


@dataclass
class Evaluation:
    """The evaluate phase's result: per-image rows of both checkpoints and their summaries."""

    rows: list[dict[str, Any]]
    summaries: dict[str, dict[str, float]]


def evaluate(
    run: ResolvedRun, method: SSLMethod, prepared: Prepared, run_dir: Path, device: torch.device
) -> Evaluation:
    """Phase 3: load the best and last checkpoints into ``method`` and score them on the fold's test ids."""
    spec, dataset = run.spec, prepared.fold.dataset
    rows: list[dict[str, Any]] = []
    test_idx = dataset.index(prepared.fold.parts.test)
    net = method.inference_network()
    autocast = autocast_factory(device, run.settings.precision)
    summaries = {}
    for checkpoint in ("best", "last"):
        state = torch.load(run_dir / "checkpoints" / f"{checkpoint}.pt", map_location=device, weights_only=True)
        method.load_state_dict(state["method"])
        method.eval()
        predict = make_predictor(net, prepared.normaliser, autocast, run.settings.channels_last)
        ckpt_rows = evaluate_images(
            predict,
            dataset,
            test_idx,
            resolution=spec.eval_resolution,
            published=spec.published_metrics,
            device=device,
            label=f"test ({checkpoint} checkpoint)",
        )
        for row in ckpt_rows:
            row["checkpoint"] = checkpoint
            row["checkpoint_step"] = state["step"]
        rows += ckpt_rows
        summaries[checkpoint] = summarise(ckpt_rows)
    return Evaluation(rows, summaries)


#: called by rank 0 with the prepared training inputs and normaliser, before training (DDP: broadcast them)
OnPrepared = Callable[[TrainData, Normaliser], None]


# --------------------------------------------------------------------------- the run


def execute(
    run: ResolvedRun,
    out_dir: Path,
    *,
    log: Log = print,
    show_progress: bool = True,
    registry: Registry | None = None,
    device_name: str = "auto",
    trackers: TrackerChoice | None = None,
    retrain_changed: bool = False,
    restart_damaged: bool = False,
    dist: ddp.DistInfo | None = None,
    on_prepared: OnPrepared | None = None,
    keep_resume_state: bool = False,
) -> Path:
    """Train and evaluate one resolved run under ``out_dir``; skip it when it is already done.

    ``dist`` is rank 0's place in a distributed run; ``on_prepared`` hands the prepared training
    inputs to the other ranks before training.

    ``trackers`` (``bench run --tracker``) receive the run's config, curves, test metrics and figures
    (rank 0 only); a failing tracker is dropped with a warning, never failing the run.

    A finished run is current only while its data is: when the dataset's fingerprints or the split
    hash differ from those it recorded, it is refused (:class:`~harness.runs.freshness.StaleRunError`)
    or, with ``retrain_changed``, trained again from scratch under the same id. ``restart_damaged``
    moves a damaged checkpoints/latest.pt aside and trains from scratch instead of refusing.

    A finished run keeps best.pt and last.pt; its resume state (latest.pt: optimisers, every RNG)
    is deleted unless ``keep_resume_state``.
    """
    registry = registry or get_registry()
    spec, cfg = run.spec, run.config
    run_dir = Path(out_dir) / run.name
    previous = read_run(run_dir)
    if previous and previous.get("status") == "done":  # no lock needed to read: a read-only store can be checked
        found = data_changes(run, previous.get("data"), Path(out_dir))
        if not found:
            _skip_done(run.name, previous, log)
            return run_dir
        if not retrain_changed:
            raise freshness.refusal(run.name, "was trained", found)
    with run_lock(run_dir):  # checked under the lock: another process may have just finished it
        previous = read_run(run_dir)
        stale: list[str] = []
        if previous and previous.get("status") == "done":
            stale = data_changes(run, previous.get("data"), Path(out_dir))
            if not stale:
                _skip_done(run.name, previous, log)
                return run_dir
        device = resolve_device(device_name)
        run, precision = with_device_precision(run, device)
        cfg = run.config
        log(f"{run.name}: precision {precision.precision} ({precision.reason})")
        seed_everything(spec.seed, spec.deterministic)
        if spec.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        started = time.time()
        record: dict[str, Any] = {
            "name": run.name,
            "run_id": run.run_id,
            "status": "running",
            "config": cfg,
            "defaults": run.defaults,
            "spec": dataclasses.asdict(spec),  # what was asked: harness.runs.replay rebuilds the command from it
            "iterations_rule": run.iterations_rule,
            "started": started,
            "device": str(device),
            "device_name": describe_device(device),
            "logical_cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "precision": precision.as_dict(),
            "thread_policy": _thread_policy(),
            "determinism": {"seed": spec.seed, "deterministic": spec.deterministic},
            "metric_policy": METRIC_POLICY,
            "versions": {
                "segbench": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "git": _git_info(),
                "plugins": {
                    kind: {
                        "name": name,
                        "plugin": registry.owner(kind, name).name,
                        "distribution": registry.owner(kind, name).distribution,
                        "version": registry.owner(kind, name).version,
                    }
                    for kind, name in (
                        ("ssl_method", spec.ssl),
                        ("backbone", spec.backbone),
                        ("generator", cfg["generator"]),
                    )
                },
            },
        }
        if stale:  # retrain_changed: this run starts over on the current data
            freshness.clear_outputs(run_dir)
            record["retrained"] = {
                "changes": stale,
                "previous_data": previous["data"],
                "previous_test": previous.get("test"),
            }
            log(f"{run.name}: data changed ({'; '.join(stale)}); training it again ({freshness.RETRAIN_FLAG})")
        elif previous and previous.get("status") in ("running", "failed"):
            record["resumed"] = True
            if previous.get("data"):  # kept until the data is checked: a failed check must not forget it
                record["data"] = previous["data"]
        resumed_data = record.get("data") if record.get("resumed") else None
        atomic_write_json(run_dir / "run.json", record)
        writer = dist is None or dist.is_writer
        tracked = Trackers.build(trackers, registry, log) if trackers and writer else Trackers([], log)
        config = json.loads(json.dumps(cfg, default=str))  # as run.json holds it
        tracked.start(TrackedRun(run.name, run.run_id, run_dir, Path(out_dir), config, bool(record.get("resumed"))))
        try:
            with progress.reporting(progress.installed_or_console(show_progress)):
                _phases(
                    run, run_dir, Path(out_dir), record, device, log, registry, tracked,
                    resumed_data=resumed_data, retrain_changed=retrain_changed, restart_damaged=restart_damaged,
                    dist=dist, on_prepared=on_prepared,
                )  # fmt: skip
        except BaseException as exc:
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}", ended=time.time())
            try:
                atomic_write_json(run_dir / "run.json", record)
            except OSError as write_error:  # e.g. the disk is still full: the original error matters more
                log(f"could not record the failure in {run_dir / 'run.json'}: {write_error}")
            tracked.finish("failed" if isinstance(exc, Exception) else "interrupted")
            raise
        record.update(status="done", ended=time.time())
        latest = run_dir / "checkpoints" / "latest.pt"
        drop = latest.is_file() and not keep_resume_state
        if drop:
            record["resume_state"] = {"file": "checkpoints/latest.pt", "deleted_bytes": latest.stat().st_size}
        atomic_write_json(run_dir / "run.json", record)
        if drop:  # only once the run is recorded as done: until then it is what a rerun resumes from
            latest.unlink()
            size_mb = record["resume_state"]["deleted_bytes"] / 1e6
            log(f"deleted the resume state checkpoints/latest.pt ({size_mb:.1f} MB; --keep-resume-state keeps it)")
        tracked.finish("done")
    return run_dir


def _skip_done(name: str, previous: dict[str, Any], log: Log) -> None:
    made_by = previous.get("versions", {}).get("segbench")
    if made_by != __version__:
        log(f"warning: {name} was made by segbench {made_by}, this is {__version__}")
    log(f"{name}: done already, skipped")


def with_device_precision(run: ResolvedRun, device: torch.device):
    """``run`` with its precision resolved for ``device`` (``auto`` -> bf16 / fp16 / fp32), and the choice.

    The run keeps its identity (``auto`` is part of its configuration hash); its recorded
    ``config.train.precision`` is the precision that ran, ``precision`` in run.json says why.
    """
    source = None if run.spec.precision else f"the {run.spec.preset} preset's {run.settings.precision}"
    choice = choose_precision(run.settings.precision, device, source=source)
    settings = dataclasses.replace(run.settings, precision=choice.precision)
    config = {**run.config, "train": {**run.config["train"], "precision": choice.precision}}
    return dataclasses.replace(run, settings=settings, config=config), choice


def _phases(
    run: ResolvedRun,
    run_dir: Path,
    out_dir: Path,
    record: dict[str, Any],
    device: torch.device,
    log: Log,
    registry: Registry,
    tracked: Trackers,
    resumed_data: dict[str, Any] | None = None,
    retrain_changed: bool = False,
    restart_damaged: bool = False,
    dist: ddp.DistInfo | None = None,
    on_prepared: OnPrepared | None = None,
) -> None:
    """prepare -> train -> evaluate, each phase's result recorded in run.json (``record``)."""
    t0 = time.perf_counter()
    fold = load_fold(run.spec, run.image_size, out_dir)
    load_seconds = round(time.perf_counter() - t0, 3)
    current = freshness.identity(fold.dataset, split_hash(fold.split))
    stale = freshness.changes(resumed_data, current, fold.dataset)
    if stale and not retrain_changed:  # its checkpoint holds training on the old data: never resume onto new data
        raise freshness.refusal(run.name, "was interrupted while training", stale)
    if stale:
        freshness.clear_outputs(run_dir)
        record.pop("resumed", None)
        record["retrained"] = {"changes": stale, "previous_data": resumed_data}
        log(f"{run.name}: data changed ({'; '.join(stale)}); training it from scratch ({freshness.RETRAIN_FLAG})")
    prepared = prepare(run, out_dir, device, log, registry, fold=fold)
    prepared.facts["data"]["load_seconds"] = load_seconds
    record.update(prepared.facts)
    if on_prepared is not None:
        on_prepared(prepared.inputs, prepared.normaliser)
    method, trainer = build_trainer(
        run, prepared.inputs, prepared.normaliser, device, run_dir, dist=dist,
        show_progress=True,  # the installed reporter decides where progress goes (run.log even when quiet)
        on_log=tracked.log_curves if tracked else None, restart_damaged=restart_damaged, registry=registry,
    )  # fmt: skip
    record["method"] = {"describe": method.describe(), "parameters": sum(p.numel() for p in method.parameters())}
    atomic_write_json(run_dir / "run.json", record)
    result = trainer.train()
    record["train"] = train_facts(run, result)
    log(
        f"trained {result.steps} iterations at {result.images_per_second:.1f} images/s; "
        f"best val {run.settings.selection_metric} {result.best_score:.4f} at step {result.best_step}"
    )
    evaluation = evaluate(run, method, prepared, run_dir, device)
    write_rows_csv(run_dir / METRICS_FILE, evaluation.rows)
    record["test"] = evaluation.summaries
    if tracked:
        last_step = run.settings.iterations - 1
        tracked.log_metrics(final_scalars(evaluation.summaries), last_step)
        tracked.log_figures(run_figures(run_dir, evaluation.rows, run.name), last_step)
    selection = "selection set = test set, optimistic" if prepared.fold.parts.selection_is_test else "held-out test"
    log(
        f"test ({selection}): "
        + "; ".join(f"{k}: dice {v['dice']:.4f} hd95 {v['hd95']:.2f}" for k, v in evaluation.summaries.items())
    )
