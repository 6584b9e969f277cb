"""Resolving a run: the user's RunSpec plus presets and overrides -> every setting, and the run id.

The harness knows no component by name: the method, backbone, generator and dataset source all
come from the plugin registry. Every RunSpec field says where it lands in the run's configuration
(``lands``): the config itself, its split block, the training settings (``config["train"]``) or the
component parameters; the config, and so the run id, is derived from those declarations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.api import SSLMethod, build_method, params_dict, resolve_params
from harness.config.params import ConfigError, coerce_value
from harness.config.presets import Preset, get_preset, preset_iterations
from harness.plugins import Registry, get_registry
from harness.runs.checks import canonical, check_data, check_model, check_scopes, check_settings, check_split
from harness.training.device import PRECISIONS
from harness.training.engine import TrainSettings

Log = Callable[[str], None]

#: where a RunSpec field lands: the config (hashed as is), its ``split`` block, the training settings, the params
RUN, SPLIT, TRAIN, PARAMS = "run", "split", "train", "params"


def setting(default: Any = None, lands: str = RUN, key: str | None = None, factory: Any = None) -> Any:
    """A RunSpec field that declares where it lands (``key``: its name there, when it differs)."""
    metadata = {"lands": lands, "key": key}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunSpec:
    """What the user asked for one run; None means 'the preset's default'."""

    #: SSL method (bench params ssl lists them); bench run --ssl
    ssl: str = setting("mgcc")
    #: segmentation network; bench run --backbone
    backbone: str = setting("cmunet")
    #: generator of synthetic unlabeled images ('none': real images only); bench run --generator
    generator: str = setting("none")
    #: dataset folder or registered name with options, e.g. phantom:count=400 (None: the phantom)
    data: str | None = setting(None)
    #: labeled fraction of the fold's training part (0.25 or 1/4); bench run --labeled
    labeled: float = setting(0.25)
    #: test fold; bench run --fold (all: every fold)
    fold: int = setting(0)
    #: which labeled-subset draw of the split; bench run --draw
    draw: int = setting(0)
    #: training seed; bench run --seed
    seed: int = setting(0)
    #: quick, medium or paper: sizes, lengths and component presets
    preset: str = setting("quick")
    #: square model input size (None: the preset's)
    image_size: int | None = setting(None)
    #: training iterations T (None: the preset's)
    iterations: int | None = setting(None, TRAIN)
    #: labeled images per batch
    labeled_batch: int = setting(4, TRAIN)
    #: unlabeled images per batch (bench run --batch-size gives labeled + unlabeled)
    unlabeled_batch: int = setting(4, TRAIN)
    #: 1 (grey) or 3 (grey replicated, as published)
    in_channels: int = setting(1)
    #: squash (published) or pad (keeps aspect ratio); None: dataset.toml's, else squash
    resize: str | None = setting(None)
    #: only these strata, e.g. benign,malignant (None: all)
    include_strata: list[str] | None = setting(None)
    #: zscore (per image) or published (the published code's scaling)
    normalisation: str = setting("zscore")
    #: bf16 or fp32 training (None: the preset's)
    precision: str | None = setting(None, TRAIN)
    #: channels_last memory layout (None: on)
    channels_last: bool | None = setting(None, TRAIN)
    #: torch.compile the validation network
    compile: bool = setting(False, TRAIN)
    #: iterations between validations (None: the preset's)
    val_every: int | None = setting(None, TRAIN)
    #: iterations between resumable checkpoints (None: the preset's)
    checkpoint_every: int | None = setting(None, TRAIN)
    #: horizon of the consistency ramp: scaled (to T) or published (None: the preset's)
    ramp_horizon: str | None = setting(None, TRAIN)
    #: share of the ramp horizon over which the consistency weight rises
    ramp_fraction: float = setting(1.0, TRAIN)
    #: supervised loss: bce-dice or ssl4mis
    loss: str = setting("bce-dice", TRAIN)
    #: initial SGD learning rate (poly decay)
    lr: float = setting(0.01, TRAIN)
    #: score test masks at native image size or at the model's input size
    eval_resolution: str = setting("native")
    #: also compute the published code's metrics
    published_metrics: bool = setting(False)
    #: unlabeled pool: real, synthetic or both
    unlabeled: str = setting("both")
    #: synthetic images per fold: a count, "train" (as many as the fold's training images, the default)
    #: or "unlabeled" (as many as its real unlabeled images: count-matched pools)
    n_synthetic: int | str | None = setting(None)
    #: kfold or paper-like (3 x 70/30, selection on test)
    protocol: str = setting("kfold", SPLIT)
    #: number of folds of the split made on the fly
    k: int = setting(5, SPLIT)
    #: share of each fold's training part held out for model selection
    val_fraction: float = setting(0.1, SPLIT)
    #: validation images from train (default) or labeled
    val_from: str = setting("train", SPLIT)
    #: independent labeled-subset draws per fold in the split made on the fly
    label_draws: int = setting(3, SPLIT)
    #: seed of the split made on the fly
    split_seed: int = setting(0, SPLIT, key="seed")
    #: split JSON file (None: made on the fly)
    split_file: str | None = setting(None, SPLIT, key="file")
    #: deterministic kernels (slower)
    deterministic: bool = setting(False)
    overrides: dict[str, dict[str, str]] = setting(lands=PARAMS, factory=dict)


SPEC_FIELDS = dataclasses.fields(RunSpec)
_SETTINGS_FIELDS = {f.name for f in dataclasses.fields(TrainSettings)}
#: RunSpec fields a preset fills when the user leaves them out (None)
_PRESET_FIELDS = {f.name for f in dataclasses.fields(Preset)} & {f.name for f in SPEC_FIELDS}
#: values of settings that neither the user nor the preset gave, where the run default differs from the engine's
_RUN_DEFAULTS = {"channels_last": True}  # channels_last: measured faster on CPU and CUDA
for _f in SPEC_FIELDS:  # a field that lands nowhere would silently stay out of the run id
    if _f.metadata.get("lands") not in (RUN, SPLIT, TRAIN, PARAMS):
        raise TypeError(f"RunSpec.{_f.name} does not declare where it lands (use setting(..., lands=...))")
    if _f.metadata["lands"] == TRAIN and _f.name not in _SETTINGS_FIELDS:
        raise TypeError(f"RunSpec.{_f.name} lands in the training settings, but TrainSettings has no such field")


def _scope_overrides(spec: RunSpec, kind_scope: str, name: str) -> dict[str, str]:
    """``--set`` values for one component: its kind's scope (``backbone``), then its name in either spelling."""
    merged = dict(spec.overrides.get(kind_scope, {}))
    for scope, values in spec.overrides.items():
        if scope not in ("", kind_scope) and canonical(scope) == canonical(name):
            merged.update(values)
    return merged


ENGINE_KEYS = {f.name for f in SPEC_FIELDS} - {"overrides"}


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
    """The fully resolved configuration of one run and the components it uses.

    Resolved once (by ``bench run``), then handed as it is to executors, DDP ranks and the lifecycle.
    """

    spec: RunSpec
    preset: Preset
    settings: TrainSettings
    backbone_params: Any
    method_params: Any
    generator_params: Any
    image_size: int
    n_synthetic: int | str | None
    config: dict[str, Any]
    run_id: str
    #: default values of every setting and parameter for this run's preset and components (run.json ``defaults``)
    defaults: dict[str, Any] = field(default_factory=dict)
    #: how T was chosen (a preset value, the published rule int(40000 x fraction), or given)
    iterations_rule: str = ""

    @property
    def name(self) -> str:
        c = self.config
        return f"{c['ssl']}_{c['generator']}_{c['backbone']}_l{c['labeled']:g}_f{c['fold']}_{self.run_id}"


#: field metadata of a parameter added after runs were made: at its default it is left out of the run id,
#: so that finished runs keep their names (run.json still records it)
ADDED_LATER = "added_later"


def _without_later_defaults(params: Any, values: dict[str, Any]) -> dict[str, Any]:
    if not dataclasses.is_dataclass(params) or not values:
        return values
    later = {
        f.name
        for f in dataclasses.fields(params)
        if f.metadata.get(ADDED_LATER) and f.default is not dataclasses.MISSING and values.get(f.name) == f.default
    }
    return {k: v for k, v in values.items() if k not in later}


def _or_preset(spec: RunSpec, preset: Preset, name: str) -> Any:
    """The user's value of ``name``, else the preset's, else the run default (None when there is none)."""
    value = getattr(spec, name)
    if value is None and name in _PRESET_FIELDS:
        value = getattr(preset, name)
    return _RUN_DEFAULTS.get(name) if value is None else value


def train_settings(spec: RunSpec, preset: Preset) -> TrainSettings:
    """The engine's settings: every RunSpec field TrainSettings has, with the preset's values for those left out."""
    values = {f.name: _or_preset(spec, preset, f.name) for f in SPEC_FIELDS if f.name in _SETTINGS_FIELDS}
    return TrainSettings(**{name: value for name, value in values.items() if value is not None})


def run_config(spec: RunSpec, settings: TrainSettings, params: dict[str, Any], derived: dict[str, Any]) -> dict:
    """The run's configuration (what its id hashes): every RunSpec field where it declares it lands.

    ``derived`` replaces the values that resolution decided (the image size a preset gave, the
    generator a method that uses no unlabeled data drops); ``params`` holds the component parameters.
    """
    config: dict[str, Any] = {}
    split: dict[str, Any] = {}
    for f in SPEC_FIELDS:
        value = derived[f.name] if f.name in derived else getattr(spec, f.name)
        if f.metadata["lands"] == RUN:
            config[f.name] = value
        elif f.metadata["lands"] == SPLIT:
            split[f.metadata["key"] or f.name] = value
    config["split"] = split
    config["train"] = dataclasses.asdict(settings)
    config.update(params)
    return config


def run_id_of(config: dict[str, Any], params: dict[str, Any] | None = None) -> str:
    """The run id: the first 10 hex digits of the SHA-256 of the config's canonical JSON.

    ``params`` (``{"backbone_params": dataclass, ...}``) lets parameters marked ``added_later`` drop
    out of the hash at their defaults.
    """
    identity = dict(config)
    for key, value in (params or {}).items():
        identity[key] = _without_later_defaults(value, config.get(key) or {})
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:10]


def setting_defaults(preset: Preset) -> dict[str, Any]:
    """Default values of the run settings a table compares runs on, for ``preset``."""
    defaults = {f.name: f.default for f in SPEC_FIELDS if f.default is not dataclasses.MISSING}
    defaults.update(ramp_horizon=preset.ramp_horizon, n_synthetic=preset.n_synthetic, train_precision=preset.precision)
    return defaults


def resolve(spec: RunSpec, registry: Registry | None = None) -> ResolvedRun:
    """Resolve presets and overrides into every setting the run will use (validated up front)."""
    registry = registry or get_registry()
    spec = apply_engine_overrides(spec)
    preset = get_preset(spec.preset)
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
    image_size = _or_preset(spec, preset, "image_size")
    settings = train_settings(spec, preset)
    iterations, iterations_rule = preset_iterations(preset, spec.labeled)
    if spec.iterations is not None:
        iterations_rule = "set explicitly (--iterations or the suite)"
    else:
        settings = dataclasses.replace(settings, iterations=iterations)
    if settings.precision not in PRECISIONS:
        raise ConfigError(f"--precision {settings.precision!r}: use {', '.join(PRECISIONS)}")
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
    n_synthetic = _or_preset(spec, preset, "n_synthetic")
    if isinstance(n_synthetic, str) and n_synthetic not in ("train", "unlabeled"):
        raise ConfigError(f"--n-synthetic {n_synthetic!r}: give a count, 'train' or 'unlabeled'")
    if isinstance(n_synthetic, int) and n_synthetic < 0:
        raise ConfigError(f"--n-synthetic {n_synthetic}: give a count >= 0, 'train' or 'unlabeled'")
    check_model(spec, image_size, method_cls, backbone_cls, backbone_params, method_params)
    uses_generator = method_cls.uses_unlabeled and generator_cls.produces_images and spec.unlabeled != "real"
    generator = spec.generator if uses_generator else "none"
    derived = {
        "generator": generator,
        "data": spec.data or "phantom",
        "image_size": image_size,
        "unlabeled": spec.unlabeled if method_cls.uses_unlabeled else "none",
        "n_synthetic": (n_synthetic or "train") if uses_generator else 0,
    }
    params = {
        "backbone_params": params_dict(backbone_params),
        "method_params": params_dict(method_params),
        "generator_params": params_dict(generator_params) if uses_generator else {},
    }
    config = run_config(spec, settings, params, derived)
    defaults = {
        "preset": preset.as_dict(),
        "run": setting_defaults(preset),
        "method_params": params_dict(resolve_params(method_cls, spec.preset, {}, f"method {spec.ssl}")),
        "backbone_params": params_dict(resolve_params(backbone_cls, spec.preset, {}, f"backbone {spec.backbone}")),
        "generator_params": params_dict(
            resolve_params(registry.get("generator", generator), spec.preset, {}, f"generator {generator}")
        ),
    }
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
        run_id=run_id_of(
            config,
            {"backbone_params": backbone_params, "method_params": method_params, "generator_params": generator_params},
        ),
        defaults=defaults,
        iterations_rule=iterations_rule,
    )


def method_of(run: ResolvedRun, registry: Registry | None = None) -> SSLMethod:
    """A fresh method of ``run`` (random weights): training, every DDP rank and the checks build it this way."""
    registry = registry or get_registry()
    spec = run.spec
    return build_method(
        registry.get("ssl_method", spec.ssl),
        registry.get("backbone", spec.backbone),
        spec.in_channels,
        run.backbone_params,
        run.method_params,
    )
