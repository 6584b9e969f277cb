"""Benchmark grids: comma-list axes and TOML suite files expanded into resolved runs."""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import typing
from pathlib import Path
from typing import Any

from harness.config.params import ConfigError, coerce_value, parse_overrides
from harness.config.presets import get_preset
from harness.plugins import Registry, get_registry
from harness.runs.resolve import ResolvedRun, RunSpec, resolve

#: grid axes: a comma list (CLI) or a TOML list (suite) gives several values
AXES = ("ssl", "generator", "backbone", "labeled", "fold", "draw", "seed")
_AXIS_ALIASES = {"folds": "fold", "label_draws": "draw", "seeds": "seed"}


def split_list(value: str | list | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; lists pass through; None stays None."""
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def expand(
    base: dict[str, Any],
    axes: dict[str, list[str] | None],
    overrides: list[str],
    registry: Registry | None = None,
    flags: dict[str, str] | None = None,
) -> list[ResolvedRun]:
    """Every combination of ``axes`` on top of ``base`` (RunSpec fields), resolved and de-duplicated.

    Combinations that resolve to the same configuration (e.g. the supervised method with any
    generator) are kept once. A missing ``fold`` axis means the preset's folds, or every fold;
    ``all`` means every fold. ``flags`` names the option each axis came from, for errors.
    """
    flags = flags or {}
    registry = registry or get_registry()
    hints = typing.get_type_hints(RunSpec)
    fields = {f.name for f in dataclasses.fields(RunSpec)}
    unknown = sorted(set(base) - fields)
    if unknown:
        raise ConfigError(f"unknown run setting {unknown[0]!r}; known: {', '.join(sorted(fields))}")
    base_values = {k: coerce_value(v, hints[k], f"setting {k}") if isinstance(v, str) else v for k, v in base.items()}
    base_values["overrides"] = parse_overrides(overrides)
    spec0 = RunSpec(**base_values)
    values: dict[str, list[Any]] = {}
    for axis in AXES:
        raw = axes.get(axis)
        if axis == "fold" and not raw:
            preset_folds = get_preset(spec0.preset).folds
            values[axis] = list(preset_folds) if preset_folds is not None else list(range(spec0.k))
            continue
        if axis == "fold" and [v.lower() for v in raw] == ["all"]:
            values[axis] = list(range(spec0.k))
            continue
        if not raw:
            values[axis] = [getattr(spec0, axis)]
            continue
        values[axis] = [coerce_value(v, hints[axis], flags.get(axis, f"--{axis}")) for v in raw]
    runs: dict[str, ResolvedRun] = {}
    for combo in itertools.product(*(values[a] for a in AXES)):
        spec = dataclasses.replace(spec0, **dict(zip(AXES, combo, strict=True)))
        try:
            run = resolve(spec, registry)
        except ConfigError as exc:
            raise ConfigError(_as_typed(str(exc), flags)) from None
        runs.setdefault(run.run_id, run)
    return list(runs.values())


def _as_typed(message: str, flags: dict[str, str]) -> str:
    """Name the option the user typed (``--folds 7``) where resolution named the axis's flag (``--fold 7``)."""
    for axis, flag in flags.items():
        if message.startswith(f"--{axis} ") and flag != f"--{axis}":
            return flag + message[len(axis) + 2 :]
    return message


def load_suite(path: Path, cli_base: dict[str, Any], cli_overrides: list[str]) -> list[tuple[dict, dict, list[str]]]:
    """Read a TOML suite: ``[defaults]`` plus ``[[grid]]`` tables, each axis a list.

    Returns (base, axes, overrides) per grid table; explicit CLI settings win over the suite's.
    """
    if not path.is_file():
        raise ConfigError(f"suite file {path} does not exist")
    try:
        suite = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"suite file {path} is not valid TOML: {exc}") from None
    defaults = dict(suite.get("defaults", {}))
    grids = suite.get("grid") or [{}]
    out = []
    for i, table in enumerate(grids):
        merged = {**defaults, **table}
        merged = {_AXIS_ALIASES.get(k, k): v for k, v in merged.items()}
        overrides = [*(split_list(merged.pop("set", None)) or []), *cli_overrides]
        axes = {a: split_list(merged.pop(a, None)) for a in AXES}
        merged.pop("name", None)
        base = {**merged, **cli_base}
        for key in base:
            if key in AXES:
                raise ConfigError(f"suite {path} grid {i}: {key!r} is an axis, give it as a list")
        out.append((base, axes, overrides))
    return out
