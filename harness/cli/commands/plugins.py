"""``bench plugins``: what is installed, from where, and what failed to load."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from harness.cli import options
from harness.plugins import get_registry


def plugins(
    as_json: bool = options.json_option(),
    with_params: bool = typer.Option(
        False, "--params", help="List every component's parameters instead (the same as `bench params`)."
    ),
) -> None:
    """List every plugin: distribution, module, hooks, components and load status."""
    if with_params:
        from harness.cli.commands.params import params

        params(None, None, as_json)
        return
    registry = get_registry()
    rows = [info.as_dict() for info in sorted(registry.plugins.values(), key=lambda i: i.name)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="segbench plugins")
    for column in ("plugin", "distribution", "module", "hooks", "components", "status"):
        table.add_column(column)
    for row in rows:
        components = ", ".join(f"{c['kind']}:{c['name']}" for c in row["components"])
        status = row["status"] if not row["error"] else f"[red]{row['status']}[/red]: {row['error']}"
        dist = f"{row['distribution']} {row['version']}".strip()
        table.add_row(row["name"], dist, row["module"], ", ".join(row["hooks"]), components, status)
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
