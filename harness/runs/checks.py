"""Checks of a run's configuration that need no decoded data, no fitted generator and no run folder.

:func:`harness.runs.resolve.resolve` calls them, so ``bench run`` and ``bench run --dry-run`` refuse
the same mistakes before any work starts, each with one line naming the value and what to do.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from harness.api import build_method, resolve_params
from harness.config.params import ConfigError
from harness.data.datasets import RESIZE_MODES, DataError, resolve_source, scan_folder
from harness.data.splits import planned_folds
from harness.errors import UserError
from harness.plugins import Registry

#: the kinds of component a ``--set SCOPE.key=value`` may name
SCOPED_KINDS = {"backbone": "backbone", "ssl": "ssl_method", "generator": "generator"}


def canonical(name: str) -> str:
    """``mean_teacher`` (entry-point spelling) and ``mean-teacher`` (component name) are one scope."""
    return name.strip().lower().replace("_", "-")


def scope_owners(registry: Registry) -> dict[str, list[tuple[str, str]]]:
    """Every spelling a ``--set`` scope may use -> the (kind, name) components it names.

    A component answers to its name in either spelling; a plugin's entry-point name also names the
    component when the plugin registers only one.
    """
    owners: dict[str, list[tuple[str, str]]] = {}
    by_plugin: dict[str, list[tuple[str, str]]] = {}
    for kind in SCOPED_KINDS.values():
        for name in registry.names(kind):
            owners.setdefault(canonical(name), []).append((kind, name))
            by_plugin.setdefault(canonical(registry.owner(kind, name).name), []).append((kind, name))
    for plugin, components in by_plugin.items():
        if len(components) == 1 and plugin not in owners:
            owners[plugin] = components
    return owners


def check_scopes(overrides: dict[str, dict[str, str]], registry: Registry) -> None:
    """Every ``--set`` scope names a setting group or an installed component, and every key exists."""
    owners = scope_owners(registry)
    for scope, values in overrides.items():
        if not values or scope == "" or scope in SCOPED_KINDS:
            continue  # plain run settings and the run's own components: checked where they are applied
        found = owners.get(canonical(scope))
        if not found:
            key, value = next(iter(values.items()))
            known = sorted({*SCOPED_KINDS, *(name for comps in owners.values() for _, name in comps)})
            raise ConfigError(
                f"--set {scope}.{key}={value}: no setting group or installed component {scope!r}; "
                f"use one of: {', '.join(known)}"
            )
        for kind, name in found:
            resolve_params(registry.get(kind, name), None, values, f"{kind.replace('_', ' ')} {name}")


def check_data(data: str | None, registry: Registry) -> None:
    """The data reference names an existing dataset folder in the supported layout, or a registered source."""
    _source, spec = resolve_source(data, registry)
    if spec is None or not Path(spec).expanduser().is_dir():
        return
    root = Path(spec).expanduser().resolve()
    # a grid resolves many runs on one folder: scan it again only when a listing changed
    stamp = (str(root), *(_mtime(root / sub) for sub in ("", "images", "masks", "masks/0", "unlabeled")))
    if stamp not in _SCANNED:
        scan_folder(Path(spec).expanduser())  # lists the files only: the layout, masks/0/ alone, every image paired
        _SCANNED.add(stamp)


_SCANNED: set[tuple] = set()


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def check_split(spec: Any) -> None:
    """The run's fold and label draw exist in its split (the given file, or the one that will be made)."""
    path = Path(spec.split_file) if spec.split_file else None
    if path is not None and path.exists():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
            folds = len(recorded["folds"])
            draws = len(recorded["folds"][0]["labeled_orders"]) if folds else 0
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise DataError(
                f"--split {path}: not a readable segbench split file ({exc}); make one with `bench split`"
            ) from None
        where = f"split file {path}"
    else:
        folds = planned_folds(spec.protocol, spec.k, spec.val_fraction, spec.val_from, spec.label_draws)
        draws = spec.label_draws
        where = f"the {spec.protocol} split" + (f" (k = {spec.k})" if spec.protocol == "kfold" else "")
    if not 0 <= spec.fold < folds:
        hint = f" or raise --k to {spec.fold + 1}" if path is None and spec.protocol == "kfold" else ""
        raise ConfigError(f"--fold {spec.fold}: {where} has folds 0 to {folds - 1}; pick folds 0 to {folds - 1}{hint}")
    if not 0 <= spec.draw < draws:
        raise ConfigError(f"--draw {spec.draw}: {where} has label draws 0 to {draws - 1}; pick draws in that range")


def check_settings(spec: Any) -> None:
    """Options the data loader, the normaliser and the engine would otherwise refuse only mid-run."""
    if spec.resize is not None and spec.resize not in RESIZE_MODES:
        raise ConfigError(f"--resize {spec.resize!r}: use one of {', '.join(RESIZE_MODES)}")
    if spec.in_channels not in (1, 3):
        raise ConfigError(f"--in-channels {spec.in_channels}: use 1 (grey) or 3 (replicated grey)")
    if spec.normalisation not in ("zscore", "published"):
        raise ConfigError(f"--normalisation {spec.normalisation!r}: use zscore or published")
    if spec.normalisation == "published" and spec.in_channels != 3:
        raise ConfigError("--normalisation published replicates grey to 3 channels: add --in-channels 3")


_BUILT: dict[str, tuple[int, str | None]] = {}


def _dry_build(run_key: str, method_cls: type, backbone_cls: type, spec: Any, backbone_params: Any, method_params: Any):
    """Build the run's backbone and method without weights (on the meta device); (divisor, error)."""
    if run_key in _BUILT:
        return _BUILT[run_key]
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. loading a weights file into meta tensors is a no-op, said per key
            backbone = backbone_cls(spec.in_channels, 1, backbone_params)
            build_method(method_cls, backbone_cls, spec.in_channels, backbone_params, method_params)
        result: tuple[int, str | None] = (int(getattr(backbone, "divisor", 1)), None)
    except UserError as exc:
        result = (1, str(exc))
    except (ValueError, TypeError, NotImplementedError, RuntimeError):
        # a component that cannot be built on the meta device: build it for real, once
        with torch.random.fork_rng(devices=[]):
            try:
                backbone = backbone_cls(spec.in_channels, 1, backbone_params)
                build_method(method_cls, backbone_cls, spec.in_channels, backbone_params, method_params)
                result = (int(getattr(backbone, "divisor", 1)), None)
            except (UserError, ValueError, TypeError) as exc:
                result = (1, f"--ssl {spec.ssl} --backbone {spec.backbone}: cannot be built: {exc}")
    _BUILT[run_key] = result
    return result


def check_model(
    spec: Any, image_size: int, method_cls: type, backbone_cls: type, backbone_params: Any, method_params: Any
) -> None:
    """The method can be built on the backbone (e.g. MGCC's context stages), and the image size fits it."""
    if not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"--image-size {image_size}: use an integer >= 8, e.g. 128")
    key = repr((spec.ssl, spec.backbone, spec.in_channels, backbone_params, method_params))
    divisor, error = _dry_build(key, method_cls, backbone_cls, spec, backbone_params, method_params)
    if error:
        raise ConfigError(error)
    if image_size % divisor:
        lower = image_size // divisor * divisor
        choices = f"{lower} or {lower + divisor}" if lower else str(divisor)
        raise ConfigError(
            f"--image-size {image_size}: backbone {spec.backbone} needs a multiple of {divisor}; use e.g. {choices}"
        )
