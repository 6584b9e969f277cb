"""``bench params``: every setting with its type, default, per-preset values and help text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from typer.testing import CliRunner

from harness.cli.app import app, build_app
from harness.config.params import field_help, param_table
from harness.runs.catalog import catalog

build_app([])


@dataclass
class _Documented:
    """Docstring help.

    ``gamma``: from the docstring.
    """

    #: from a comment
    alpha: int = 1
    beta: tuple[int, ...] = field(default=(1, 2), metadata={"help": "from metadata"})
    gamma: float = 0.5
    delta: str | None = None  # trailing comment


def test_help_comes_from_metadata_comments_and_docstring() -> None:
    assert field_help(_Documented) == {
        "alpha": "from a comment",
        "beta": "from metadata",
        "gamma": "from the docstring.",
        "delta": "trailing comment",
    }
    rows = {r["name"]: r for r in param_table(_Documented, {"quick": {"alpha": 3}})}
    assert rows["alpha"]["presets"] == {"quick": 3} and rows["beta"]["presets"] == {}
    assert rows["beta"]["type"] == "tuple[int, ...]" and rows["delta"]["type"] == "str | None"


def test_every_built_in_parameter_has_help_text() -> None:
    undocumented = [
        f"{e['kind']} {e['name']}.{p['name']}"
        for e in catalog()
        if e["plugin"] != "fixmatch"
        for p in e["params"]
        if not p["help"]
    ]
    assert not undocumented, f"add a `#:` comment above these fields: {undocumented}"


def test_catalog_shows_preset_values_and_how_to_set() -> None:
    (cmunet,) = catalog("backbone", "cmunet")
    dim = next(p for p in cmunet["params"] if p["name"] == "dim_mult")
    assert dim["default"] == 4 and dim["presets"] == {"quick": 1, "medium": 2, "paper": 4}
    assert "--set backbone.KEY=VALUE" in cmunet["set"]
    (run,) = catalog("run")
    iterations = next(p for p in run["params"] if p["name"] == "iterations")
    assert iterations["presets"]["quick"] == 300
    assert [e["name"] for e in catalog("ssl")] == sorted(e["name"] for e in catalog("ssl_method"))


def test_bench_params_json_and_table() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["params", "ssl", "mean-teacher", "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    start = next(p for p in entry["params"] if p["name"] == "consistency_start")
    assert start["presets"] == {"quick": 15, "medium": 125} and start["help"]
    table = runner.invoke(app, ["params", "backbone", "cmunet"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "dim_mult" in table.output and "quick=1" in table.output
    assert runner.invoke(app, ["plugins", "--params", "--json"]).exit_code == 0
    bad = runner.invoke(app, ["params", "colour"])
    assert bad.exit_code != 0 and "unknown kind 'colour'" in str(bad.exception)
