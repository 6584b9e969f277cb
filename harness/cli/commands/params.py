"""``bench params [KIND] [NAME]``: every setting with its type, default, per-preset values and help."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.cli import options
from harness.config.presets import PRESETS
from harness.runs.catalog import catalog


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "()"
    return "None" if value is None else str(value)


def print_catalog(entries: list[dict[str, Any]], console: Console) -> None:
    """One table per component: parameter, type, default, the presets that change it, help."""
    for entry in entries:
        title = f"{entry['kind'].replace('_', ' ')} {entry['name']}" if entry["kind"] != "run" else "run settings"
        if not entry["params"]:
            console.print(f"[bold]{escape(title)}[/bold] ({entry['plugin']}): no parameters\n")
            continue
        table = Table(title=f"{title} ({entry['plugin']}): {entry['set']}", title_justify="left", expand=False)
        table.add_column("parameter", no_wrap=True, style="bold")
        table.add_column("type", overflow="fold", max_width=16)
        table.add_column("default", overflow="fold", max_width=14)
        table.add_column("presets", overflow="fold", max_width=18)
        table.add_column("help", overflow="fold", ratio=1)
        for row in entry["params"]:
            by_preset = " ".join(f"{p}={_show(v)}" for p, v in row["presets"].items())
            default = "(required)" if row["required"] else _show(row["default"])
            table.add_row(row["name"], escape(row["type"]), escape(default), escape(by_preset), escape(row["help"]))
        console.print(table)
    console.print(f"presets: the values `--preset {'|'.join(PRESETS)}` sets instead of the default")


def params(
    kind: str = typer.Argument(None, help="run, backbone, ssl, generator, dataset or executor (default: all)."),
    name: str = typer.Argument(None, help="One component, e.g. cmunet (default: every one of KIND)."),
    as_json: bool = options.json_option(),
) -> None:
    """List every setting: run settings and each component's parameters, with type, default, presets, help."""
    entries = catalog(kind, name)
    if as_json:
        typer.echo(json.dumps(entries, indent=2, default=str))
        return
    print_catalog(entries, Console())


def register(app: typer.Typer) -> None:
    app.command("params")(params)
