"""Grid expansion, suite files, run identity and run-level validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.config.params import ConfigError
from harness.runs.grid import expand, load_suite
from harness.runs.resolve import RunSpec, resolve

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
#: the BUSI suites name ../shared/data/busi, which resolution checks; these tests run on the phantom
PHANTOM = {"data": "phantom"}


def test_supervised_with_a_generator_runs_once():
    runs = expand({"preset": "quick"}, {"ssl": ["supervised", "mgcc"], "generator": ["ldm", "none"]}, [])
    labels = sorted((r.config["ssl"], r.config["generator"]) for r in runs)
    assert labels == [("mgcc", "ldm"), ("mgcc", "none"), ("supervised", "none")]


def test_axes_multiply_and_folds_default_to_the_preset():
    runs = expand({"preset": "quick"}, {"ssl": ["cct"], "labeled": ["0.125", "0.5"], "seed": ["0", "1"]}, [])
    assert len(runs) == 4 and {r.config["fold"] for r in runs} == {0}
    paper = expand({"preset": "paper"}, {"ssl": ["supervised"]}, [])
    assert sorted(r.config["fold"] for r in paper) == [0, 1, 2, 3, 4]


def test_run_identity_is_the_resolved_configuration():
    a = resolve(RunSpec(ssl="mgcc", preset="quick"))
    b = resolve(RunSpec(ssl="mgcc", preset="quick", overrides={"mgcc": {"consistency": "7"}}))
    c = resolve(RunSpec(ssl="mgcc", preset="quick", overrides={"mgcc": {"consistency": "0.1"}}))
    assert a.run_id == b.run_id != c.run_id
    assert c.config["method_params"]["consistency"] == 0.1


def test_presets_reach_component_parameters():
    quick = resolve(RunSpec(ssl="mgcc", backbone="cmunet", preset="quick"))
    paper = resolve(RunSpec(ssl="mgcc", backbone="cmunet", preset="paper"))
    assert quick.config["backbone_params"]["dim_mult"] == 1 and paper.config["backbone_params"]["dim_mult"] == 4
    assert paper.settings.ramp_horizon == "published" and paper.settings.precision == "fp32"
    assert quick.settings.ramp_horizon == "scaled" and quick.image_size == 64


@pytest.mark.parametrize(("labeled", "expected"), [(0.25, 10000), (0.5, 20000), (0.125, 5000), (0.1, 4000)])
def test_paper_preset_trains_int_40000_times_the_labeled_fraction(labeled: float, expected: int) -> None:
    """The published train.py: max_iterations = int(40000 * semi_percent); --iterations still wins."""
    paper = resolve(RunSpec(ssl="mgcc", preset="paper", labeled=labeled))
    assert paper.settings.iterations == expected == paper.config["train"]["iterations"]
    assert "int(40000 x labeled" in paper.iterations_rule and "published train.py" in paper.iterations_rule
    given = resolve(RunSpec(ssl="mgcc", preset="paper", labeled=labeled, iterations=123))
    assert given.settings.iterations == 123 and "explicitly" in given.iterations_rule
    medium = resolve(RunSpec(ssl="mgcc", preset="medium", labeled=labeled))
    assert medium.settings.iterations == 2500 and medium.iterations_rule == "the preset's value"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (RunSpec(labeled=1.5), "labeled fraction"),
        (RunSpec(ssl="mgcc", overrides={"mgcc": {"consistancy": "1"}}), "no parameter 'consistancy'"),
        (RunSpec(overrides={"": {"learning_rate": "1"}}), "not a run setting"),
        (RunSpec(ssl="fixmatchh"), "unknown ssl method"),
        (RunSpec(precision="half"), "use auto, bf16, fp16, fp32"),
        (RunSpec(n_synthetic="many"), "n-synthetic"),
    ],
)
def test_bad_configuration_fails_before_training(spec, message):
    with pytest.raises(Exception, match=message):
        resolve(spec)


def test_every_shipped_suite_expands(tmp_path):
    for suite in sorted(BENCHMARKS.glob("*.toml")):
        runs = []
        for base, axes, overrides in load_suite(suite, PHANTOM, []):
            runs += expand(base, axes, overrides)
        assert runs, suite
    quick = [r for b, a, o in load_suite(BENCHMARKS / "phantom-quick.toml", PHANTOM, []) for r in expand(b, a, o)]
    assert len(quick) <= 6


def test_paper_suite_has_the_fairness_rows():
    runs = [r for b, a, o in load_suite(BENCHMARKS / "busi-paper.toml", PHANTOM, []) for r in expand(b, a, o)]
    configs = [r.config for r in runs]
    assert any(c["ssl"] == "cct" and c["method_params"]["consistency"] == 7 for c in configs)
    assert any(c["ssl"] == "mgcc" and c["method_params"]["consistency"] == 0.1 for c in configs)
    assert any(c["ssl"] == "supervised" and c["backbone"] == "cmunet" for c in configs)
    assert any(c["labeled"] == 1.0 and c["unlabeled"] == "synthetic" and c["generator"] == "ldm" for c in configs)
    assert any(c["n_synthetic"] == "unlabeled" for c in configs)


def test_suite_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_suite(bad, {}, [])
    with pytest.raises(ConfigError, match="does not exist"):
        load_suite(tmp_path / "missing.toml", {}, [])


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path):
    from harness.cli.app import app, build_app

    build_app([])
    out = tmp_path / "runs"
    suite = str(BENCHMARKS / "busi-paper.toml")
    args = ["run", "--suite", suite, "--data", "phantom", "--dry-run", "--out", str(out)]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "--dry-run: stopping here" in result.output and "run(s) to train" in result.output
    assert not out.exists()


def test_paper_dry_run_plans_the_published_iterations(tmp_path):
    from harness.cli.app import app, build_app

    build_app([])
    result = CliRunner().invoke(
        app, ["run", "--preset", "paper", "--labeled", "0.25", "--folds", "0", "--dry-run", "--out", str(tmp_path)],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "T = 10000: int(40000 x labeled 0.25), the published train.py rule" in result.output
    assert " 10000 " in result.output  # the plan table's iterations column
