"""One benchmark run: resolve the configuration, prepare the fold's data, train, evaluate, record.

The harness knows no component by name: the method, backbone, generator and dataset source all
come from the plugin registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import subprocess
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import __version__
from harness.api import SegDataset, resolve_params
from harness.config import ConfigError, coerce_value
from harness.data import load_dataset
from harness.device import autocast_factory, resolve_device, seed_everything
from harness.engine import TrainData, Trainer, TrainSettings, make_predictor
from harness.evaluate import evaluate_images, summarise
from harness.generation import synthetic_pool
from harness.metrics import METRIC_POLICY
from harness.normalize import fit_normaliser
from harness.plugins import Registry, get_registry
from harness.presets import PRESETS
from harness.results import (
    METRICS_FILE,
    atomic_write_json,
    read_run,
    run_lock,
    write_rows_csv,
)
from harness.splits import fold_parts, load_split, make_split, save_split, split_hash

Log = Callable[[str], None]


@dataclass
class RunSpec:
    """What the user asked for one run; None means 'the preset's default'."""

    ssl: str = "mgcc"
    backbone: str = "cmunet"
    generator: str = "none"
    data: str | None = None
    labeled: float = 0.25
    fold: int = 0
    draw: int = 0
    seed: int = 0
    preset: str = "quick"
    image_size: int | None = None
    iterations: int | None = None
    labeled_batch: int = 4
    unlabeled_batch: int = 4
    in_channels: int = 1
    resize: str | None = None  # None: the dataset.toml default, else squash
    include_strata: list[str] | None = None
    normalisation: str = "zscore"
    precision: str | None = None
    channels_last: bool | None = None
    compile: bool = False
    val_every: int | None = None
    checkpoint_every: int | None = None
    ramp_horizon: str | None = None
    ramp_fraction: float = 1.0
    loss: str = "bce-dice"
    lr: float = 0.01
    eval_resolution: str = "native"
    published_metrics: bool = False
    unlabeled: str = "both"
    #: synthetic images per fold: a count, "train" (as many as the fold's training images, the default)
    #: or "unlabeled" (as many as its real unlabeled images: count-matched pools)
    n_synthetic: int | str | None = None
    protocol: str = "kfold"
    k: int = 5
    val_fraction: float = 0.1
    val_from: str = "train"
    label_draws: int = 3
    split_seed: int = 0
    split_file: str | None = None
    deterministic: bool = False
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)


def _git_info() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
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


def _scope_overrides(spec: RunSpec, *scopes: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for scope in scopes:
        merged.update(spec.overrides.get(scope, {}))
    return merged


ENGINE_KEYS = {f.name for f in dataclasses.fields(RunSpec)} - {"overrides"}


def apply_engine_overrides(spec: RunSpec) -> RunSpec:
    """Apply ``--set key=value`` entries without a scope (``--set lr=0.005``) to the spec."""
    plain = spec.overrides.get("", {})
    unknown = sorted(set(plain) - ENGINE_KEYS)
    if unknown:
        raise ConfigError(
            f"--set {unknown[0]}=...: not a run setting; use backbone.<param>, <method>.<param> or "
            f"<generator>.<param>, or one of: {', '.join(sorted(ENGINE_KEYS))}"
        )
    hints = typing.get_type_hints(RunSpec)
    values = {k: coerce_value(v, hints[k], f"run setting {k}") for k, v in plain.items()}
    return dataclasses.replace(spec, **values)


@dataclass
class ResolvedRun:
    """The fully resolved configuration of one run and the components it uses."""

    spec: RunSpec
    preset: dict[str, Any]
    settings: TrainSettings
    backbone_params: Any
    method_params: Any
    generator_params: Any
    image_size: int
    n_synthetic: int | str | None
    config: dict[str, Any]
    run_id: str

    @property
    def name(self) -> str:
        c = self.config
        return f"{c['ssl']}_{c['generator']}_{c['backbone']}_l{c['labeled']:g}_f{c['fold']}_{self.run_id}"


def resolve(spec: RunSpec, registry: Registry | None = None) -> ResolvedRun:
    """Resolve presets and overrides into every setting the run will use (validated up front)."""
    registry = registry or get_registry()
    spec = apply_engine_overrides(spec)
    preset = PRESETS[spec.preset]
    method_cls = registry.get("ssl_method", spec.ssl)
    backbone_cls = registry.get("backbone", spec.backbone)
    generator_cls = registry.get("generator", spec.generator)
    if not 0 < spec.labeled <= 1:
        raise ConfigError(f"--labeled {spec.labeled}: a labeled fraction must be in (0, 1]")
    if spec.unlabeled not in ("real", "synthetic", "both"):
        raise ConfigError(f"--unlabeled {spec.unlabeled!r}: use real, synthetic or both")
    if spec.eval_resolution not in ("native", "model"):
        raise ConfigError(f"--eval-resolution {spec.eval_resolution!r}: use native or model")
    if spec.labeled_batch < 1 or spec.unlabeled_batch < 1:
        raise ConfigError("--labeled-batch and the unlabeled batch must both be at least 1")
    image_size = spec.image_size or preset["image_size"]
    settings = TrainSettings(
        iterations=spec.iterations or preset["iterations"],
        labeled_batch=spec.labeled_batch,
        unlabeled_batch=spec.unlabeled_batch,
        lr=spec.lr,
        ramp_horizon=spec.ramp_horizon or preset["ramp_horizon"],
        ramp_fraction=spec.ramp_fraction,
        precision=spec.precision or preset["precision"],
        channels_last=True if spec.channels_last is None else spec.channels_last,  # measured faster on CPU and CUDA
        compile=spec.compile,
        val_every=spec.val_every or preset["val_every"],
        checkpoint_every=spec.checkpoint_every or preset["checkpoint_every"],
        seed=spec.seed,
        loss=spec.loss,
    )
    if settings.precision not in ("bf16", "fp32"):
        raise ConfigError(f"--precision {settings.precision!r}: use bf16 or fp32")
    if settings.ramp_horizon not in ("published", "scaled"):
        raise ConfigError(f"ramp horizon {settings.ramp_horizon!r}: use published or scaled")
    backbone_params = resolve_params(
        backbone_cls, spec.preset, _scope_overrides(spec, "backbone", spec.backbone), f"backbone {spec.backbone}"
    )
    method_params = resolve_params(
        method_cls, spec.preset, _scope_overrides(spec, "ssl", spec.ssl), f"method {spec.ssl}"
    )
    generator_params = resolve_params(
        generator_cls, spec.preset, _scope_overrides(spec, "generator", spec.generator), f"generator {spec.generator}"
    )
    n_synthetic = spec.n_synthetic if spec.n_synthetic is not None else preset["n_synthetic"]
    if isinstance(n_synthetic, str) and n_synthetic not in ("train", "unlabeled"):
        raise ConfigError(f"--n-synthetic {n_synthetic!r}: give a count, 'train' or 'unlabeled'")
    uses_generator = method_cls.uses_unlabeled and generator_cls.produces_images and spec.unlabeled != "real"
    config = {
        "ssl": spec.ssl,
        "backbone": spec.backbone,
        "generator": spec.generator if uses_generator else "none",
        "data": spec.data or "phantom",
        "labeled": spec.labeled,
        "fold": spec.fold,
        "draw": spec.draw,
        "seed": spec.seed,
        "preset": spec.preset,
        "image_size": image_size,
        "in_channels": spec.in_channels,
        "resize": spec.resize,
        "include_strata": spec.include_strata,
        "normalisation": spec.normalisation,
        "unlabeled": spec.unlabeled if method_cls.uses_unlabeled else "none",
        "n_synthetic": (n_synthetic or "train") if uses_generator else 0,
        "eval_resolution": spec.eval_resolution,
        "published_metrics": spec.published_metrics,
        "split": {
            "file": spec.split_file,
            "protocol": spec.protocol,
            "k": spec.k,
            "val_fraction": spec.val_fraction,
            "val_from": spec.val_from,
            "label_draws": spec.label_draws,
            "seed": spec.split_seed,
        },
        "train": dataclasses.asdict(settings),
        "deterministic": spec.deterministic,
        "backbone_params": dataclasses.asdict(backbone_params) if dataclasses.is_dataclass(backbone_params) else {},
        "method_params": dataclasses.asdict(method_params) if dataclasses.is_dataclass(method_params) else {},
        "generator_params": (
            dataclasses.asdict(generator_params)
            if uses_generator and dataclasses.is_dataclass(generator_params)
            else {}
        ),
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return ResolvedRun(
        spec=spec,
        preset=preset,
        settings=settings,
        backbone_params=backbone_params,
        method_params=method_params,
        generator_params=generator_params,
        image_size=image_size,
        n_synthetic=n_synthetic,
        config=config,
        run_id=digest,
    )


# --------------------------------------------------------------------------- execution


def load_run_dataset(spec: RunSpec, image_size: int) -> SegDataset:
    return load_dataset(spec.data, image_size=image_size, resize=spec.resize, include_strata=spec.include_strata)


def split_for(spec: RunSpec, dataset: SegDataset, out_dir: Path) -> tuple[dict, Path]:
    """The split of the run: the given file (made on the fly when absent) or a shared default file."""
    if spec.split_file:
        path = Path(spec.split_file)
    else:
        path = (
            out_dir
            / "splits"
            / (
                f"{dataset.name}-{dataset.fingerprint[:8]}-{spec.protocol}-k{spec.k}-v{spec.val_fraction:g}"
                f"-{spec.val_from}-d{spec.label_draws}-s{spec.split_seed}.json"
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
    save_split(split, path)
    return split, path


def _sha256_ids(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def execute(
    run: ResolvedRun,
    out_dir: Path,
    *,
    log: Log = print,
    show_progress: bool = True,
    registry: Registry | None = None,
    device_name: str = "auto",
) -> Path:
    """Train and evaluate one resolved run under ``out_dir``; skip it when it is already done."""
    registry = registry or get_registry()
    spec, cfg = run.spec, run.config
    run_dir = Path(out_dir) / run.name
    with run_lock(run_dir):  # checked under the lock: another process may have just finished it
        previous = read_run(run_dir)
        if previous and previous.get("status") == "done":
            made_by = previous.get("versions", {}).get("segbench")
            if made_by != __version__:
                log(f"warning: {run.name} was made by segbench {made_by}, this is {__version__}")
            log(f"{run.name}: done already, skipped")
            return run_dir
        device = resolve_device(device_name)
        seed_everything(spec.seed, spec.deterministic)
        if spec.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        started = time.time()
        record: dict[str, Any] = {
            "name": run.name,
            "run_id": run.run_id,
            "status": "running",
            "config": cfg,
            "started": started,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "threads": torch.get_num_threads(),
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
        if previous and previous.get("status") in ("running", "failed"):
            record["resumed"] = True
        atomic_write_json(run_dir / "run.json", record)
        try:
            _train_and_evaluate(run, run_dir, Path(out_dir), record, device, log, show_progress, registry)
        except BaseException as exc:
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}", ended=time.time())
            atomic_write_json(run_dir / "run.json", record)
            raise
        record.update(status="done", ended=time.time())
        atomic_write_json(run_dir / "run.json", record)
    return run_dir


def _train_and_evaluate(
    run: ResolvedRun,
    run_dir: Path,
    out_dir: Path,
    record: dict[str, Any],
    device: torch.device,
    log: Log,
    show_progress: bool,
    registry: Registry,
) -> None:
    spec, cfg = run.spec, run.config
    t0 = time.perf_counter()
    dataset = load_run_dataset(spec, run.image_size)
    split, split_path = split_for(spec, dataset, out_dir)
    parts = fold_parts(split, spec.fold, spec.labeled, spec.draw)
    record["data"] = {
        "name": dataset.name,
        "fingerprint": dataset.fingerprint,
        "n_images": len(dataset),
        "split_file": str(split_path),
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
        "load_seconds": round(time.perf_counter() - t0, 3),
    }
    lab_idx = dataset.index(parts.labeled)
    unl_idx = dataset.index(parts.unlabeled)
    method_cls = registry.get("ssl_method", spec.ssl)
    pools: list[torch.Tensor] = []
    if method_cls.uses_unlabeled and spec.unlabeled in ("real", "both"):
        pools += [dataset.images[unl_idx], dataset.unlabeled]
    if cfg["generator"] != "none":
        train_idx = lab_idx + unl_idx
        want = cfg["n_synthetic"]
        n = {"train": len(train_idx), "unlabeled": len(unl_idx)}.get(want, want)
        generator_cls = registry.get("generator", cfg["generator"])
        synthetic, info = synthetic_pool(
            cfg["generator"],
            generator_cls,
            run.generator_params,
            images=dataset.images[train_idx],
            ids=[dataset.ids[i] for i in train_idx],
            content_hashes=dataset.content_hashes,
            strata=[dataset.strata[i] for i in train_idx],
            n=n,
            seed=spec.seed,
            image_size=run.image_size,
            cache_root=out_dir / "generators",
            device=device,
            log=log,
        )
        record["generator"] = info
        pools.append(synthetic)
    unlabeled = torch.cat(pools) if pools else dataset.images[:0]
    record["data"]["n_unlabeled_total"] = int(unlabeled.shape[0])
    normaliser = fit_normaliser(spec.normalisation, spec.in_channels, dataset.images[lab_idx + unl_idx])
    record["normalisation"] = normaliser.as_dict()

    backbone_cls = registry.get("backbone", spec.backbone)

    def build_backbone():
        return backbone_cls(spec.in_channels, 1, run.backbone_params)

    method = method_cls(build_backbone, run.method_params)
    record["method"] = {"describe": method.describe(), "parameters": sum(p.numel() for p in method.parameters())}
    data = TrainData(
        labeled_images=dataset.images[lab_idx].to(device),
        labeled_masks=dataset.masks[lab_idx].to(device),
        unlabeled_images=unlabeled.to(device),
        val_dataset=dataset,
        val_indices=dataset.index(parts.val),
    )
    atomic_write_json(run_dir / "run.json", record)
    trainer = Trainer(method, run.settings, data, normaliser, device, run_dir, show_progress=show_progress)
    result = trainer.train()
    record["train"] = dataclasses.asdict(result)
    consistency = getattr(run.method_params, "consistency", None)
    if consistency is not None:
        record["train"]["consistency_weight_at_end"] = consistency * result.ramp_factor_at_end
    log(
        f"trained {result.steps} iterations at {result.images_per_second:.1f} images/s; "
        f"best val {run.settings.selection_metric} {result.best_score:.4f} at step {result.best_step}"
    )

    rows = []
    test_idx = dataset.index(parts.test)
    net = method.inference_network()
    autocast = autocast_factory(device, run.settings.precision)
    summaries = {}
    for checkpoint in ("best", "last"):
        state = torch.load(run_dir / "checkpoints" / f"{checkpoint}.pt", map_location=device, weights_only=True)
        method.load_state_dict(state["method"])
        method.eval()
        predict = make_predictor(net, normaliser, autocast, run.settings.channels_last)
        ckpt_rows = evaluate_images(
            predict,
            dataset,
            test_idx,
            resolution=spec.eval_resolution,
            published=spec.published_metrics,
            device=device,
        )
        for row in ckpt_rows:
            row["checkpoint"] = checkpoint
            row["checkpoint_step"] = state["step"]
        rows += ckpt_rows
        summaries[checkpoint] = summarise(ckpt_rows)
    write_rows_csv(run_dir / METRICS_FILE, rows)
    record["test"] = summaries
    log(
        f"test ({'selection set = test set, optimistic' if parts.selection_is_test else 'held-out test'}): "
        + "; ".join(f"{k}: dice {v['dice']:.4f} hd95 {v['hd95']:.2f}" for k, v in summaries.items())
    )
