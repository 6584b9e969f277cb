"""Resolving a run: the user's RunSpec plus presets and overrides -> every setting, and the run id.

The harness knows no component by name: the method, backbone, generator and dataset source all
come from the plugin registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.api import resolve_params
from harness.config.params import ConfigError, coerce_value
from harness.config.presets import PRESETS
from harness.plugins import Registry, get_registry
from harness.runs.checks import canonical, check_data, check_model, check_scopes, check_settings, check_split
from harness.training.engine import TrainSettings

Log = Callable[[str], None]


@dataclass
class RunSpec:
    """What the user asked for one run; None means 'the preset's default'."""

    #: SSL method (bench params ssl lists them); bench run --ssl
    ssl: str = "mgcc"
    #: segmentation network; bench run --backbone
    backbone: str = "cmunet"
    #: generator of synthetic unlabeled images ('none': real images only); bench run --generator
    generator: str = "none"
    #: dataset folder or registered name with options, e.g. phantom:count=400 (None: the phantom)
    data: str | None = None
    #: labeled fraction of the fold's training part (0.25 or 1/4); bench run --labeled
    labeled: float = 0.25
    #: test fold; bench run --fold (all: every fold)
    fold: int = 0
    #: which labeled-subset draw of the split; bench run --draw
    draw: int = 0
    #: training seed; bench run --seed
    seed: int = 0
    #: quick, medium or paper: sizes, lengths and component presets
    preset: str = "quick"
    #: square model input size (None: the preset's)
    image_size: int | None = None
    #: training iterations T (None: the preset's)
    iterations: int | None = None
    #: labeled images per batch
    labeled_batch: int = 4
    #: unlabeled images per batch (bench run --batch-size gives labeled + unlabeled)
    unlabeled_batch: int = 4
    #: 1 (grey) or 3 (grey replicated, as published)
    in_channels: int = 1
    #: squash (published) or pad (keeps aspect ratio); None: dataset.toml's, else squash
    resize: str | None = None
    #: only these strata, e.g. benign,malignant (None: all)
    include_strata: list[str] | None = None
    #: zscore (per image) or published (the published code's scaling)
    normalisation: str = "zscore"
    #: bf16 or fp32 training (None: the preset's)
    precision: str | None = None
    #: channels_last memory layout (None: on)
    channels_last: bool | None = None
    #: torch.compile the validation network
    compile: bool = False
    #: iterations between validations (None: the preset's)
    val_every: int | None = None
    #: iterations between resumable checkpoints (None: the preset's)
    checkpoint_every: int | None = None
    #: horizon of the consistency ramp: scaled (to T) or published (None: the preset's)
    ramp_horizon: str | None = None
    #: share of the ramp horizon over which the consistency weight rises
    ramp_fraction: float = 1.0
    #: supervised loss: bce-dice or ssl4mis
    loss: str = "bce-dice"
    #: initial SGD learning rate (poly decay)
    lr: float = 0.01
    #: score test masks at native image size or at the model's input size
    eval_resolution: str = "native"
    #: also compute the published code's metrics
    published_metrics: bool = False
    #: unlabeled pool: real, synthetic or both
    unlabeled: str = "both"
    #: synthetic images per fold: a count, "train" (as many as the fold's training images, the default)
    #: or "unlabeled" (as many as its real unlabeled images: count-matched pools)
    n_synthetic: int | str | None = None
    #: kfold or paper-like (3 x 70/30, selection on test)
    protocol: str = "kfold"
    #: number of folds of the split made on the fly
    k: int = 5
    #: share of each fold's training part held out for model selection
    val_fraction: float = 0.1
    #: validation images from train (default) or labeled
    val_from: str = "train"
    #: independent labeled-subset draws per fold in the split made on the fly
    label_draws: int = 3
    #: seed of the split made on the fly
    split_seed: int = 0
    #: split JSON file (None: made on the fly)
    split_file: str | None = None
    #: deterministic kernels (slower)
    deterministic: bool = False
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)


def _scope_overrides(spec: RunSpec, kind_scope: str, name: str) -> dict[str, str]:
    """``--set`` values for one component: its kind's scope (``backbone``), then its name in either spelling."""
    merged = dict(spec.overrides.get(kind_scope, {}))
    for scope, values in spec.overrides.items():
        if scope not in ("", kind_scope) and canonical(scope) == canonical(name):
            merged.update(values)
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
    check_scopes(spec.overrides, registry)
    if not 0 < spec.labeled <= 1:
        raise ConfigError(f"--labeled {spec.labeled}: a labeled fraction must be in (0, 1]")
    for flag, value in (("--iterations", spec.iterations), ("val_every", spec.val_every),
                        ("checkpoint_every", spec.checkpoint_every)):  # fmt: skip
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: must be at least 1 (leave it out for the preset's value)")
    check_settings(spec)
    check_split(spec)
    check_data(spec.data, registry)
    if spec.unlabeled not in ("real", "synthetic", "both"):
        raise ConfigError(f"--unlabeled {spec.unlabeled!r}: use real, synthetic or both")
    if spec.eval_resolution not in ("native", "model"):
        raise ConfigError(f"--eval-resolution {spec.eval_resolution!r}: use native or model")
    if spec.labeled_batch < 1 or spec.unlabeled_batch < 1:
        raise ConfigError("--labeled-batch-size and the unlabeled batch must both be at least 1")
    image_size = spec.image_size if spec.image_size is not None else preset["image_size"]
    settings = TrainSettings(
        iterations=spec.iterations if spec.iterations is not None else preset["iterations"],
        labeled_batch=spec.labeled_batch,
        unlabeled_batch=spec.unlabeled_batch,
        lr=spec.lr,
        ramp_horizon=spec.ramp_horizon or preset["ramp_horizon"],
        ramp_fraction=spec.ramp_fraction,
        precision=spec.precision or preset["precision"],
        channels_last=True if spec.channels_last is None else spec.channels_last,  # measured faster on CPU and CUDA
        compile=spec.compile,
        val_every=spec.val_every if spec.val_every is not None else preset["val_every"],
        checkpoint_every=spec.checkpoint_every if spec.checkpoint_every is not None else preset["checkpoint_every"],
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
    if isinstance(n_synthetic, int) and n_synthetic < 0:
        raise ConfigError(f"--n-synthetic {n_synthetic}: give a count >= 0, 'train' or 'unlabeled'")
    check_model(spec, image_size, method_cls, backbone_cls, backbone_params, method_params)
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
