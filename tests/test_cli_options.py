"""One spelling per idea across ``bench`` commands; old spellings kept as hidden aliases."""

from __future__ import annotations

import importlib.metadata
import re

import click
import pytest
import typer
from typer.testing import CliRunner

from harness.cli.app import app, build_app
from harness.config.params import ConfigError, coerce_value
from harness.errors import UserError

build_app([])
runner = CliRunner()


def _plan(*args: str, width: int = 80) -> str:
    result = runner.invoke(app, ["run", "--dry-run", "--preset", "quick", *args], terminal_width=width)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def _plan_rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if re.match(r"\s*[0-9a-f]{10}\s", line)]


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"segbench {importlib.metadata.version('segbench')}"


def test_seed_fold_and_draw_take_lists_and_their_old_plural_spellings() -> None:
    new = _plan_rows(_plan("--seed", "0,1", "--fold", "0,2", "--draw", "1"))
    old = _plan_rows(_plan("--seeds", "0,1", "--folds", "0,2", "--label-draws", "1"))
    assert new == old and len(new) == 4
    assert {row[5] for row in new} == {"0/1/0", "0/1/1", "2/1/0", "2/1/1"}


def test_folds_all_and_fractions() -> None:
    rows = _plan_rows(_plan("--fold", "all", "--labeled", "1/8,0.5"))
    assert len(rows) == 2 * 5 and {row[4] for row in rows} == {"0.125", "0.5"}
    assert coerce_value("1/3", float, "--labeled") == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="--labeled: expected a number or a fraction"):
        coerce_value("1/0", float, "--labeled")


@pytest.mark.parametrize(("flag", "shown"), [("--seeds", "--seeds"), ("--seed", "--seed")])
def test_errors_name_the_flag_the_user_typed(flag: str, shown: str) -> None:
    result = runner.invoke(app, ["run", "--dry-run", flag, "a"])
    assert isinstance(result.exception, UserError) and str(result.exception).startswith(f"{shown}: expected int")


def test_batch_size_and_its_old_spelling() -> None:
    bad = runner.invoke(app, ["run", "--dry-run", "--batch", "3"])
    assert bad.exit_code != 0
    assert "--batch 3 must exceed --labeled-batch-size 4" in bad.output
    twice = runner.invoke(app, ["run", "--dry-run", "--seed", "1", "--seeds", "2"])
    assert "--seed and --seeds are the same option" in str(twice.exception)


def test_run_ids_are_never_cut_in_the_plan() -> None:
    for width in (60, 80):
        rows = _plan_rows(_plan("--ssl", "mean-teacher,supervised", "--generator", "none", width=width))
        assert len(rows) == 2 and all(len(row[0]) == 10 for row in rows)


def _commands() -> dict[str, click.Command]:
    return typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _options(command: click.Command) -> dict[str, click.Option]:
    return {name: p for p in command.params if p.param_type_name == "option" for name in p.opts}


def test_shared_options_have_one_default_and_one_help_text() -> None:
    """--device, --preset, --data, --checkpoint and --json mean the same on every command that has them."""
    seen: dict[str, set[tuple[str, str]]] = {}
    for command in _commands().values():
        for flag, option in _options(command).items():
            if flag in ("--device", "--preset", "--data", "--checkpoint", "--json") and not option.hidden:
                seen.setdefault(flag, set()).add((str(option.default), option.help or ""))
    assert set(seen) == {"--device", "--preset", "--data", "--checkpoint", "--json"}
    assert {flag: len(v) for flag, v in seen.items()} == dict.fromkeys(seen, 1), seen


def test_the_old_spellings_are_hidden() -> None:
    options = _options(_commands()["run"])
    for old in ("--seeds", "--folds", "--label-draws", "--batch", "--labeled-batch", "--metrics"):
        assert options[old].hidden, old
    for new in ("--seed", "--fold", "--draw", "--batch-size", "--labeled-batch-size", "--published-metrics"):
        assert not options[new].hidden, new


def test_data_is_an_argument_or_the_same_option() -> None:
    one = runner.invoke(app, ["data", "check", "phantom:count=12,size=32", "--image-size", "32", "--json"])
    two = runner.invoke(app, ["data", "check", "--data", "phantom:count=12,size=32", "--image-size", "32", "--json"])
    assert one.exit_code == 0 and one.output == two.output
    clash = runner.invoke(app, ["data", "check", "phantom", "--data", "phantom:count=12"])
    assert "given twice" in str(clash.exception)
