"""``bench backbones``: every registered backbone with its parameter count and MACs at a size."""

from __future__ import annotations

import json
from typing import Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from harness.api import params_dict, resolve_params
from harness.cli import options
from harness.config.params import ConfigError, parse_overrides
from harness.config.presets import resolve_preset
from harness.evaluation.complexity import backbone_complexity
from harness.plugins import get_registry


def backbone_overrides(
    names: list[str], params_of: dict[str, type], sets: list[str] | None
) -> dict[str, dict[str, str]]:
    """Per-backbone overrides from ``--set``: ``backbone.x=y`` goes to each backbone that has ``x``,
    ``<name>.x=y`` to that backbone only. A key no listed backbone has is an error."""
    parsed = parse_overrides(sets)
    out: dict[str, dict[str, str]] = {name: {} for name in names}
    for scope, values in parsed.items():
        if scope not in ("backbone", *names):
            raise ConfigError(
                f"--set {scope}.…: use backbone.KEY=VALUE (every backbone that has KEY) "
                f"or NAME.KEY=VALUE with NAME one of {', '.join(names)}"
            )
        targets = names if scope == "backbone" else [scope]
        for key, value in values.items():
            having = [n for n in targets if key in getattr(params_of[n], "__dataclass_fields__", {})]
            if not having:
                raise ConfigError(
                    f"--set {scope}.{key}: no backbone among {', '.join(targets)} has a parameter {key!r}"
                )
            for name in having:
                out[name][key] = value
    return out


def describe_backbones(
    names: list[str] | None = None,
    image_size: int = 128,
    in_channels: int = 3,
    preset: str | None = None,
    sets: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Build each backbone (random weights) and return its parameters, parameter count and MACs."""
    registry = get_registry()
    names = names or registry.names("backbone")
    classes = {name: registry.get("backbone", name) for name in names}
    overrides = backbone_overrides(names, {n: getattr(c, "Params", object) for n, c in classes.items()}, sets)
    rows = []
    for name, cls in classes.items():
        params = resolve_params(cls, preset, overrides[name], f"backbone {name}")
        backbone = cls(in_channels, 1, params)
        if image_size % backbone.divisor:
            nearest = max(backbone.divisor, image_size // backbone.divisor * backbone.divisor)
            raise ConfigError(
                f"--image-size {image_size}: backbone {name} needs a multiple of {backbone.divisor}, e.g. {nearest}"
            )
        defaults = params_dict(resolve_params(cls, None, {}, f"backbone {name}"))
        row: dict[str, Any] = {
            "backbone": name,
            "plugin": registry.owner("backbone", name).name,
            "params_values": params_dict(params),
            "changed": sorted(k for k, v in params_dict(params).items() if defaults.get(k) != v),
            "image_size": image_size,
            "in_channels": in_channels,
            "divisor": backbone.divisor,
            "context_stages": len(backbone.context),
        }
        row.update(backbone_complexity(backbone, in_channels, image_size))
        rows.append(row)
    return rows


def backbones(
    image_size: int = typer.Option(128, "--image-size", help="Input height and width for the MAC count."),
    in_channels: int = typer.Option(3, "--in-channels", help="Input channels (MGCC feeds 3: grey replicated)."),
    preset: str = options.preset_option(),
    only: list[str] = typer.Option(None, "--backbone", help="Show only this backbone (repeatable)."),
    sets: list[str] = typer.Option(
        None, "--set", help="backbone.KEY=VALUE (all backbones with KEY) or NAME.KEY=VALUE; repeatable."
    ),
    as_json: bool = options.json_option(),
) -> None:
    """List every registered backbone with its parameter count and multiply-accumulates per image."""
    if image_size < 1:
        raise ConfigError(f"--image-size must be positive, got {image_size}")
    preset = resolve_preset(preset, torch.cuda.is_available())
    rows = describe_backbones(only or None, image_size, in_channels, preset, sets)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(
        title=f"segbench backbones at {image_size}x{image_size}, {in_channels} input channel(s), preset {preset}"
    )
    table.add_column("backbone", no_wrap=True)
    for column in ("params", "encoder", "context", "decoder", "GMACs/img"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("settings (non-default)", overflow="fold")
    for r in rows:
        settings = " ".join(f"{k}={_short(r['params_values'][k])}" for k in r["changed"]) or "defaults"
        parts = [f"{r[k] / 1e6:.2f}M" for k in ("params_encoder", "params_context", "params_decoder")]
        table.add_row(r["backbone"], f"{r['params']:,}", *parts, f"{r['macs'] / 1e9:.2f}", settings)
    Console().print(table)


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "()"
    return str(value)


def register(app: typer.Typer) -> None:
    app.command("backbones")(backbones)
