"""The Markdown results page (``bench report --format markdown``) and the per-run replay commands."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pandas as pd
import pytest
from test_report import make_store
from typer.testing import CliRunner

from harness.cli.app import build_app
from harness.reporting.output import OutputError
from harness.reporting.page import MARKER, build_page
from harness.reporting.plots import PlotError, dice_vs_iterations
from harness.runs.replay import replay, spec_from_record
from harness.runs.resolve import RunSpec, resolve

SPECS = [
    RunSpec(),
    RunSpec(
        ssl="supervised",
        labeled=0.125,
        fold=2,
        seed=3,
        preset="medium",
        iterations=700,
        precision="bf16",
        overrides={"cmunet": {"dim_mult": "1"}},
    ),  # fmt: skip
    RunSpec(
        ssl="mean-teacher",
        backbone="unet",
        data="phantom:count=40,size=32",
        image_size=32,
        lr=0.02,
        overrides={"backbone": {"width": "4"}, "mean-teacher": {"ema_decay": "0.95"}},
    ),  # fmt: skip
]


def _record(spec: RunSpec, *, with_spec: bool) -> dict:
    run = resolve(spec)
    record = {"config": json.loads(json.dumps(run.config, default=str)), "run_id": run.run_id}
    if with_spec:
        record["spec"] = json.loads(json.dumps(dataclasses.asdict(spec), default=str))
    return record


@pytest.mark.parametrize("with_spec", [True, False], ids=["spec", "config-only"])
@pytest.mark.parametrize("spec", SPECS, ids=["default", "medium-supervised", "mean-teacher-unet"])
def test_replay_command_resolves_to_the_recorded_run_id(spec: RunSpec, with_spec: bool) -> None:
    record = _record(spec, with_spec=with_spec)
    again = replay(record, "runs")
    assert again.exact, again.text
    assert resolve(spec_from_record(record)).run_id == record["run_id"]
    # the command as typed goes through the real CLI to the same run id
    args = shlex.split(again.text)[1:] + ["--dry-run"]
    result = CliRunner().invoke(build_app(args), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert record["run_id"] in result.output


def test_replay_command_is_short_and_marks_what_does_not_resolve() -> None:
    record = _record(SPECS[1], with_spec=False)
    text = replay(record, "runs").text
    assert "--set iterations=700" in text and "--set cmunet.dim_mult=1" in text
    assert "val_every" not in text and "image_size" not in text  # the preset gives those anyway
    record["run_id"] = "0000000000"
    assert not replay(record, "runs").exact


def test_replay_runs_at_the_recorded_thread_count_on_a_cpu_only() -> None:
    record = _record(SPECS[1], with_spec=True)
    assert "--threads" not in replay(record, "runs").text  # an older run.json without a thread count
    record.update(threads=1, device="cpu")
    assert replay(record, "runs").text.endswith("--threads 1 --out runs")
    record.update(threads=8, device="cuda:0")
    assert "--threads" not in replay(record, "runs").text


def test_page_holds_setup_table_runs_and_commands(tmp_path: Path) -> None:
    store = make_store(tmp_path / "runs", ("supervised/cmunet", "mgcc+ldm/cmunet"))
    page = build_page(
        store, tmp_path / "page", figures=False, commands=["bench run --suite s.toml"], log=lambda m: None
    )
    text = page.read_text()
    assert text.startswith(MARKER)
    for heading in ("## Setup", "## Results", "## Runs", "## Reproduce"):
        assert heading in text
    assert "    bench run --suite s.toml" in text
    run_lines = [line for line in text.splitlines() if re.search(r"\| `\w+` \|$", line)]
    n_runs = 2 * 2 * 3  # 2 methods x 2 fractions x 3 folds
    assert len(run_lines) == n_runs
    assert text.count("    bench run --") == n_runs + 1  # the command given, then one replay line per run
    assert text.count(f"--out {tmp_path / 'runs'}-again") == n_runs  # replays go to a fresh store, not skipped
    # a second build replaces the page; a folder that is not a page is refused
    build_page(store, tmp_path / "page", figures=False, log=lambda m: None)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a segbench results page"):
        build_page(store, other, figures=False, log=lambda m: None)
    assert (other / "notes.txt").read_text() == "mine"


def test_dice_vs_iterations_needs_two_budgets_and_draws_one_line_per_method() -> None:
    rows = []
    for method, gain in (("supervised", 0.0), ("mgcc", 0.05)):
        for iterations, base in ((500, 0.5), (1000, 0.6), (2000, 0.62)):
            for fold in range(3):
                rows += [
                    {"run": f"{method}{iterations}{fold}", "label": method, "ssl": method, "generator": "none",
                     "backbone": "cmunet", "labeled": 0.125, "iterations": iterations, "image_size": 64,
                     "lesion": True, "dice": base + gain + 0.01 * fold + 0.001 * i, "id": f"i{i}"}
                    for i in range(4)
                ]  # fmt: skip
    frame = pd.DataFrame(rows)
    fig = dice_vs_iterations(frame)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    assert [round(y, 4) for y in ax.lines[0].get_ydata()] == [0.5115, 0.6115, 0.6315]
    with pytest.raises(PlotError, match="one budget"):
        dice_vs_iterations(frame[frame["iterations"] == 500])
    # the same budgets at a second image size: a line of its own per method, never one line through both
    larger = frame.assign(image_size=128, run=frame["run"] + "-128", dice=frame["dice"] - 0.1)
    ax = dice_vs_iterations(pd.concat([frame, larger])).axes[0]
    assert sorted(line.get_label() for line in ax.lines) == [
        "mgcc, 128²",
        "mgcc, 64²",
        "supervised, 128²",
        "supervised, 64²",
    ]
    assert [round(y, 4) for y in ax.lines[0].get_ydata()] == [0.5115, 0.6115, 0.6315]


@pytest.mark.slow
def test_page_of_real_runs_and_a_run_trained_again_from_its_command(tmp_path: Path) -> None:
    """Two budgets of two tiny phantom runs, their page, then one page command run again: same test Dice."""
    from test_e2e import TINY, _bench

    runs = tmp_path / "runs"
    for iterations in ("10", "20"):
        _bench(["run", *TINY, "--ssl", "supervised,mgcc", "--iterations", iterations, "--out", str(runs)], tmp_path)
    _bench(["report", str(runs), "--format", "markdown", "--out", str(tmp_path / "page"), "--images", "2"], tmp_path)
    text = (tmp_path / "page" / "README.md").read_text()
    assert "figures/dice_vs_iterations.png" in text and (tmp_path / "page/figures/dice_vs_iterations.png").exists()
    commands = [line.strip() for line in text.splitlines() if line.startswith("    bench run --")]
    assert len(commands) == 4 and not any("does not resolve" in c for c in commands)
    _bench(shlex.split(commands[0])[1:], tmp_path)  # as printed: into the fresh store runs-again
    again = tmp_path / "runs-again"
    (first,) = [json.loads(p.read_text()) for p in again.glob("*/run.json")]
    original = json.loads((runs / first["name"] / "run.json").read_text())
    assert first["run_id"] == original["run_id"]
    assert first["test"]["best"]["dice"] == original["test"]["best"]["dice"]


def test_page_shows_each_generators_memorisation_report_or_how_to_make_it(tmp_path: Path) -> None:

    from harness.runs.store import atomic_write_json

    store = make_store(tmp_path / "runs", ("supervised/cmunet", "mgcc+ldm/cmunet"))
    for path in store.glob("mgcc_ldm_*/run.json"):
        record = json.loads(path.read_text())
        record["generator"]["cache_key"] = f"key{record['config']['fold']}" + "0" * 12
        atomic_write_json(path, record)
    report = store / "generate" / "fold0"
    atomic_write_json(report / "report.json", {
        "cache_key": "key0" + "0" * 12, "n_samples": 128, "n_train": 40, "n_heldout": 20, "fit": {"fit_seconds": 75.0},
        "memorisation": {"near_copies": 3, "n_samples": 128, "threshold": 0.61, "quantile": 0.99,
                         "samples": {"median": 0.42}, "heldout": {"median": 0.40}, "above_heldout_p95": 9},
        "fidelity": {"samples": {"histogram_w1": 2.5, "speckle_median": 8.6}, "noise": {"histogram_w1": 60.0},
                     "definitions": {"histogram_w1": "grey levels"}},
    })  # fmt: skip
    (report / "nearest.png").write_bytes(b"\x89PNG the pairs bench generate drew")
    text = build_page(store, tmp_path / "page", figures=False, log=lambda m: None).read_text()
    section = text[text.index("## Generator") : text.index("## Runs")]
    assert "**ldm, fold 0** (cache `key000000000`, 128 samples" in section and "fitted in 1 min 15 s" in section
    assert "| near-copies | 3 of 128 samples |" in section
    assert "| histogram_w1 (grey levels) | 2.500 | 60.000 |" in section
    assert "| speckle_median | 8.600 | – |" in section  # no definition: no empty brackets
    assert (tmp_path / "page" / "figures" / "nearest_fold0_key000000000.png").is_file()
    for fold in (1, 2):  # no report: the page says how to score the cached fit
        assert f"ldm, fold {fold} (cache `key{fold}00000000`): no memorisation report" in section
