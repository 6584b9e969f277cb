"""``bench fixmatch-info``: FixMatch's parameters, their defaults and how to change them."""

from __future__ import annotations

import json

import typer
from harness.config import describe_params

from segbench_fixmatch.method import FixMatchParams


def fixmatch_info(as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON.")) -> None:
    """Show the fixmatch method's parameters and defaults."""
    rows = [{"name": name, "type": kind, "default": default} for name, kind, default in describe_params(FixMatchParams)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        typer.echo(f"{row['name']:<12} {row['type']:<6} {row['default']!r}")
    typer.echo("change one with: bench run --ssl fixmatch --set fixmatch.threshold=0.9")
