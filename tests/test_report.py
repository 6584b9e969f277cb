"""Result tables from a small results store written in the test: loading, labels, cells, goldens, CLI."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from harness.errors import UserError
from harness.reporting.load import load
from harness.reporting.tables import (
    build_tables,
    method_labels,
    render,
    render_csv,
    render_latex,
    render_markdown,
    render_rich,
)
from harness.runs.store import atomic_write_json, write_rows_csv

GOLDEN = Path(__file__).parent / "golden"
FOLDS = (0, 1, 2)
FRACTIONS = (0.25, 0.5)
N_LESION, N_EMPTY = 10, 3

# method label -> (ssl, generator, backbone, method params, Dice offset over supervised/unet)
METHODS: dict[str, tuple[str, str, str, dict[str, Any], float]] = {
    "supervised/unet": ("supervised", "none", "unet", {}, 0.0),
    "supervised/cmunet": ("supervised", "none", "cmunet", {}, 0.02),
    "mean_teacher/unet": ("mean_teacher", "none", "unet", {"consistency": 0.1, "ema": 0.99}, 0.0),
    "mgcc+ldm/cmunet": ("mgcc", "ldm", "cmunet", {"consistency": 7.0, "levels": [0, 1, 2]}, 0.12),
    "mgcc+ldm/cmunet w0.1": ("mgcc", "ldm", "cmunet", {"consistency": 0.1, "levels": [0, 1, 2]}, 0.05),
}
# what the fake registry calls the defaults (consistency 7 for mgcc): see fake_defaults
POLICY = {"threshold": "sigmoid > 0.5", "aggregation": "per image"}


def fake_defaults(run: pd.Series) -> dict[str, Any]:
    return {"method.consistency": 7.0 if run["ssl"] == "mgcc" else 0.1, "method.levels": [0, 1, 2]}


def fold_ids(fold: int) -> list[str]:
    return [f"f{fold}_{i:02d}" for i in range(N_LESION + N_EMPTY)]


def image_dice(fold: int, i: int, offset: float, seed: int, fraction: float = 0.25) -> float:
    """Supervised Dice (better on some folds and with more labels) plus a per-method offset plus run noise."""
    base = 0.4 + 0.04 * ((i * 7 + fold * 3) % 10) + 0.02 * fold + 0.1 * fraction
    noise = 0.01 * math.sin(17 * i + 5 * seed + fold + 100 * offset) if offset else 0.0
    return float(np.clip(base + offset + noise, 0, 1))


def write_run(
    root: Path,
    method: str,
    fraction: float,
    fold: int,
    *,
    seed: int = 0,
    status: str = "done",
    image_size: int = 64,
    uses_extra_labels: bool = False,
    split_file: Path | None = None,
) -> Path:
    ssl, generator, backbone, params, offset = METHODS[method]
    run_id = f"{abs(hash((method, fraction, fold, seed, image_size))) % 10**10:010d}"
    name = f"{ssl}_{generator}_{backbone}_l{fraction:g}_f{fold}_{run_id}"
    run_dir = root / name
    config = {
        "ssl": ssl, "backbone": backbone, "generator": generator, "data": "phantom", "labeled": fraction,
        "fold": fold, "draw": 0, "seed": seed, "preset": "quick", "image_size": image_size, "in_channels": 1,
        "resize": "squash", "include_strata": None, "normalisation": "zscore",
        "unlabeled": "none" if ssl == "supervised" else "both", "n_synthetic": 128 if generator != "none" else 0,
        "eval_resolution": "native", "published_metrics": False,
        "split": {"file": None, "protocol": "kfold", "k": 3},
        "train": {"iterations": 300, "labeled_batch": 4, "unlabeled_batch": 4, "lr": 0.01, "precision": "fp32"},
        "backbone_params": {"width": 8}, "method_params": params, "generator_params": {},
    }  # fmt: skip
    record: dict[str, Any] = {
        "name": name,
        "run_id": run_id,
        "status": status,
        "config": config,
        "data": {
            "name": "phantom",
            "fingerprint": "fp0",
            "split_file": str(split_file) if split_file else None,
            "split_hash": "s0",
            "protocol": "kfold",
            "selection_is_test": False,
            "n_labeled": 10,
        },
        "train": {"steps": 300, "best_step": 250, "best_score": 0.7, "seconds": 12.0, "images_per_second": 100.0},
        "metric_policy": POLICY,
        "versions": {"segbench": "0.1.0"},
    }
    if generator != "none":
        cache = root / "generators" / f"{generator}-fold{fold}"
        record["generator"] = {"uses_extra_labels": uses_extra_labels, "cache_dir": str(cache)}
    rows = []
    for checkpoint, shift in (("best", 0.0), ("last", -0.01)):
        for i, image_id in enumerate(fold_ids(fold)):
            lesion = i < N_LESION
            if lesion:
                dice = image_dice(fold, i, offset, seed, fraction) + shift
                empty = False
            else:  # supervised predicts 1 of 3 lesion-free images empty, the others all of them
                empty = i == N_LESION or offset > 0
                dice = 1.0 if empty else 0.0
            rows.append({
                "id": image_id, "stratum": "normal" if not lesion else ("benign" if i % 2 else "malignant"),
                "lesion": lesion, "pred_empty": empty, "height": 40, "width": 50, "resolution": "native",
                "dice": dice, "iou": dice / (2 - dice), "hd95": 0.0 if dice == 1 else 30 * (1 - dice) + 1,
                "assd": 1.0, "precision": dice, "recall": dice, "specificity": 1.0, "accuracy": 0.9,
                "checkpoint": checkpoint, "checkpoint_step": 250 if checkpoint == "best" else 299,
            })  # fmt: skip
    write_rows_csv(run_dir / "metrics.csv", rows)
    curves = [{"step": s, "lr": 0.01, "loss": 1.0 / (1 + s) + offset, "loss_sup": 0.5} for s in range(0, 300, 10)]
    curves += [{"step": s, "event": "val", "dice_lesion": 0.5 + s / 1000 + offset} for s in (99, 199, 299)]
    (run_dir / "curves.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curves))
    atomic_write_json(run_dir / "run.json", record)
    return run_dir


def make_store(root: Path, methods: tuple[str, ...] = tuple(METHODS), *, clusters: bool = True) -> Path:
    """A results store: every method x fraction x fold, plus one failed run that must be ignored."""
    split_file = None
    if clusters:
        # images 0 and 1 of each fold are near-duplicates
        split_file = root / "splits" / "split.json"
        groups = {i: f"f{f}_00" for f in FOLDS for i in (f"f{f}_00", f"f{f}_01")}
        clusters = [[f"f{f}_00", f"f{f}_01"] for f in FOLDS]
        split = {
            "format": "segbench-split/1",
            "protocol": "kfold",
            "groups": groups,
            "duplicates": {"clusters": clusters},
        }
        atomic_write_json(split_file, split)
    for method in methods:
        for fraction in FRACTIONS:
            for fold in FOLDS:
                write_run(root, method, fraction, fold, split_file=split_file)
    failed = write_run(root, "supervised/unet", 0.25, 0, seed=9, status="failed", split_file=split_file)
    (failed / "metrics.csv").unlink()
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def frame(store: Path) -> pd.DataFrame:
    return load(store, checkpoint=None)


# --------------------------------------------------------------------------- load


def test_load_rows_columns_and_types(frame: pd.DataFrame) -> None:
    n_runs = len(METHODS) * len(FRACTIONS) * len(FOLDS)
    assert frame["run"].nunique() == n_runs  # the failed run is left out
    assert len(frame) == n_runs * 2 * (N_LESION + N_EMPTY)
    for column in ("ssl", "backbone", "generator", "labeled", "fold", "draw", "seed", "preset", "image_size",
                   "iterations", "protocol", "selection_is_test", "run_id", "method_params", "method.consistency",
                   "backbone.width", "cluster", "dice", "checkpoint"):  # fmt: skip
        assert column in frame, column
    assert frame["lesion"].dtype == bool and frame["pred_empty"].dtype == bool
    assert frame["id"].map(type).eq(str).all()
    assert frame.loc[frame["id"].isin(["f1_00", "f1_01"]), "cluster"].eq("f1_00").all()
    assert frame.loc[frame["id"] == "f1_05", "cluster"].eq("f1_05").all()
    assert json.loads(frame.loc[frame["ssl"] == "mgcc", "method_params"].iloc[0])["levels"] == [0, 1, 2]
    assert set(frame["iterations"]) == {300}
    assert len(load(store_path(frame), checkpoint="last")) == len(frame) // 2
    best = load(store_path(frame))  # the tables' default: best checkpoint only
    assert len(best) == len(frame) // 2 and set(best["checkpoint"]) == {"best"}


def store_path(frame: pd.DataFrame) -> Path:
    return Path(frame["run_dir"].iloc[0]).parent


def test_load_without_split_file_uses_ids_as_clusters(tmp_path: Path) -> None:
    make_store(tmp_path, ("supervised/unet",), clusters=False)
    frame = load(tmp_path)
    assert (frame["cluster"] == frame["id"]).all()


def test_load_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(UserError, match="no finished runs"):
        load(tmp_path)
    run_dir = write_run(tmp_path, "supervised/unet", 0.25, 0)
    (run_dir / "metrics.csv").unlink()
    with pytest.raises(UserError, match="metrics.csv is missing"):
        load(tmp_path)


# --------------------------------------------------------------------------- labels and cells


def test_labels_show_non_default_settings_only_where_rows_collide(frame: pd.DataFrame) -> None:
    runs = frame.drop_duplicates("run").set_index("run")
    labels = set(method_labels(runs, fake_defaults))
    assert labels == {
        "supervised / unet",
        "supervised / cmunet",
        "mean_teacher / unet",
        "mgcc + ldm / cmunet",
        "mgcc + ldm / cmunet (consistency=0.1)",
    }
    # without known defaults every differing value is shown
    assert "mgcc + ldm / cmunet (consistency=7)" in set(method_labels(runs, None))


def test_cells_are_mean_and_std_over_runs_of_image_means(frame: pd.DataFrame) -> None:
    (table,) = build_tables(frame, defaults=fake_defaults, compare="none", resamples=200)
    assert table.metrics == ["dice", "hd95", "iou", "empty_correct"]
    cell = table.cells[("mgcc + ldm / cmunet", 0.25, "dice")]
    per_run = [np.mean([image_dice(f, i, 0.12, 0, 0.25) for i in range(N_LESION)]) for f in FOLDS]
    assert cell.n == 3
    assert cell.mean == pytest.approx(np.mean(per_run))
    assert cell.std == pytest.approx(np.std(per_run, ddof=1))
    assert table.cells[("supervised / unet", 0.5, "empty_correct")].mean == pytest.approx(1 / 3)
    assert table.cells[("mgcc + ldm / cmunet", 0.5, "empty_correct")].mean == 1.0
    # best per column: mgcc for Dice (higher) and HD95 (lower)
    assert table.cells[("mgcc + ldm / cmunet", 0.25, "dice")].best
    assert table.cells[("mgcc + ldm / cmunet", 0.25, "hd95")].best
    assert not table.cells[("supervised / unet", 0.25, "dice")].best
    assert table.rows[:2] == ["supervised / cmunet", "supervised / unet"]
    assert table.counts[("supervised / unet", 0.25)] == 3


def test_last_checkpoint_and_group_split(frame: pd.DataFrame) -> None:
    (best,) = build_tables(frame, defaults=fake_defaults, compare="none")
    (last,) = build_tables(frame, defaults=fake_defaults, compare="none", checkpoint="last")
    key = ("supervised / unet", 0.25, "dice")
    assert last.cells[key].mean == pytest.approx(best.cells[key].mean - 0.01)
    assert any("last" in note for note in last.notes)
    groups = build_tables(frame, defaults=fake_defaults, compare="none", by="group")
    assert [t.group for t in groups] == ["benign", "malignant", "normal"]
    normal = groups[2]
    assert normal.metrics == ["empty_correct"]  # no lesion image in that group
    benign = groups[0]
    assert "empty_correct" not in benign.metrics


def test_supervised_comparison_pairs_same_backbone(frame: pd.DataFrame) -> None:
    (table,) = build_tables(frame, defaults=fake_defaults, resamples=500)
    assert table.gains[("supervised / unet", 0.25)] == "ref"
    assert table.gains[("supervised / cmunet", 0.25)] == "ref"
    mgcc = table.gains[("mgcc + ldm / cmunet", 0.25)]
    # the reference of a cmunet row is supervised / cmunet (offset 0.02), so the gain is 0.12 - 0.02
    assert mgcc.mean == pytest.approx(0.10, abs=0.005)
    assert mgcc.low < mgcc.mean < mgcc.high
    assert mgcc.pairs == 3 and mgcc.images == 3 * N_LESION
    teacher = table.gains[("mean_teacher / unet", 0.5)]
    assert teacher.mean == 0.0 and teacher.low == 0.0 and teacher.high == 0.0


def test_explicit_reference_row_and_bad_reference(frame: pd.DataFrame) -> None:
    (table,) = build_tables(frame, defaults=fake_defaults, compare="supervised/unet", resamples=200)
    assert table.gains[("mgcc + ldm / cmunet", 0.5)].mean == pytest.approx(0.12, abs=0.005)
    with pytest.raises(UserError, match="neither a row nor a method"):
        build_tables(frame, defaults=fake_defaults, compare="cps / unet")


def test_compare_with_a_bare_method_name_uses_its_row_of_the_same_backbone(frame: pd.DataFrame) -> None:
    (table,) = build_tables(frame, defaults=fake_defaults, compare="mean-teacher", resamples=200)
    assert table.gains[("mean_teacher / unet", 0.25)] == "ref"
    assert table.gains[("supervised / unet", 0.25)].pairs == 3
    assert not any(row.endswith("cmunet") for row, _ in table.gains)  # no mean-teacher row on cmunet
    assert "the mean-teacher row of the same backbone" in table.reference
    with pytest.raises(UserError, match="methods: .*mean_teacher"):
        build_tables(frame, defaults=fake_defaults, compare="cps")


def test_significance_marks_known_answer(frame: pd.DataFrame) -> None:
    (table,) = build_tables(frame, defaults=fake_defaults, significance=True, resamples=200)
    better = table.cells[("mgcc + ldm / cmunet", 0.25, "dice")]
    identical = table.cells[("mean_teacher / unet", 0.25, "dice")]
    assert better.mark == "†"
    assert identical.mark == ""
    assert table.pvalues[("mean_teacher / unet", 0.25)] == (1.0, 1.0)
    # the near-duplicates f*_00 and f*_01 count once: 9 values per fold, 27 over the three folds
    raw, adjusted = table.pvalues[("mgcc + ldm / cmunet", 0.25)]
    diffs = []
    for fold in FOLDS:
        d = [image_dice(fold, i, 0.12, 0, 0.25) - image_dice(fold, i, 0.02, 0, 0.25) for i in range(N_LESION)]
        diffs += [(d[0] + d[1]) / 2, *d[2:]]
    assert len(diffs) == 27
    assert raw == pytest.approx(scipy_stats.wilcoxon(diffs).pvalue)
    assert raw < adjusted < 0.05
    assert any("image-level test" in note for note in table.notes)


def test_significance_needs_a_reference(frame: pd.DataFrame) -> None:
    no_supervised = frame[frame["ssl"] != "supervised"]
    with pytest.raises(UserError, match="reference row"):
        build_tables(no_supervised, defaults=fake_defaults, significance=True)


def test_mixed_settings_give_separate_tables(tmp_path: Path) -> None:
    write_run(tmp_path, "supervised/unet", 0.25, 0)
    write_run(tmp_path, "supervised/unet", 0.25, 0, image_size=128)
    tables = build_tables(load(tmp_path), defaults=fake_defaults)
    assert sorted(t.title for t in tables) == ["phantom: 128 px, T = 300", "phantom: 64 px, T = 300"]


def test_a_table_of_the_reference_row_alone_has_no_gain_notes(tmp_path: Path) -> None:
    write_run(tmp_path, "supervised/unet", 0.25, 0)
    (table,) = build_tables(load(tmp_path), defaults=fake_defaults)
    assert table.reference and not table.comparisons
    assert not any("Holm" in note or "paired gain" in note for note in table.notes), table.notes


def test_extra_labels_are_flagged(tmp_path: Path) -> None:
    write_run(tmp_path, "supervised/cmunet", 0.25, 0)
    write_run(tmp_path, "mgcc+ldm/cmunet", 0.25, 0, uses_extra_labels=True)
    (table,) = build_tables(load(tmp_path), defaults=fake_defaults)
    assert table.flagged == {"mgcc + ldm / cmunet"}
    assert "mgcc + ldm / cmunet ‡" in render_markdown([table])
    assert any(note.startswith("‡ Uses extra labels") for note in table.notes)


def test_bad_options(frame: pd.DataFrame) -> None:
    with pytest.raises(UserError, match="unknown metric 'dcie'"):
        build_tables(frame, metrics=["dcie"])
    with pytest.raises(UserError, match="--checkpoint"):
        build_tables(frame, checkpoint="final")
    with pytest.raises(UserError, match="--by"):
        build_tables(frame, by="fold")
    with pytest.raises(UserError, match="--format"):
        render([], "html")


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def golden_tables(frame: pd.DataFrame):
    return build_tables(frame, defaults=fake_defaults, significance=True, resamples=300)


@pytest.mark.parametrize(("name", "renderer"), [("table.md", render_markdown), ("table.tex", render_latex)])
def test_golden_outputs(golden_tables, name: str, renderer) -> None:
    text = renderer(golden_tables)
    path = GOLDEN / name
    if os.environ.get("SEGBENCH_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; if intended, rerun with SEGBENCH_UPDATE_GOLDEN=1"


def test_latex_is_booktabs_and_escaped(golden_tables) -> None:
    text = render_latex(golden_tables)
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule(lr){2-7}", r"\textbf{", r"$^\dagger$"):
        assert token in text
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    assert "mean\\_teacher" in body and "±" not in body and "%" not in body.replace(r"\%", "")


def test_csv_round_trips(golden_tables) -> None:
    csv = pd.read_csv(io.StringIO(render_csv(golden_tables)))
    delta = csv[(csv["method"] == "mgcc + ldm / cmunet") & (csv["metric"] == "delta_dice") & (csv["labeled"] == 0.5)]
    assert len(delta) == 1 and bool(delta["significant"].iloc[0])
    assert delta["ci_low"].iloc[0] < delta["mean"].iloc[0] < delta["ci_high"].iloc[0]
    dice = csv[(csv["metric"] == "dice") & (csv["labeled"] == 0.25)]
    assert len(dice) == len(METHODS)


def test_rich_render_has_every_row_and_splits_when_narrow(golden_tables) -> None:
    tables = golden_tables
    text = render(tables, "rich")
    for label in ("supervised / unet", "mgcc + ldm / cmunet (consistency=0.1)", "ΔDice"):
        assert label in text
    assert len(render_rich(tables)) == 1
    narrow = render_rich(tables, width=150)
    assert [t.title for t in narrow] == ["phantom: 64 px, T = 300, 25% labeled", "phantom: 64 px, T = 300, 50% labeled"]
    assert narrow[0].caption is None and "Protocol" in narrow[1].caption


# --------------------------------------------------------------------------- CLI


def report_app():
    import typer

    from harness.cli.commands import report

    app = typer.Typer()
    report.register(app)
    return app


def test_cli_table_and_out_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    # no two configurations of one method here, so labels need no plugin defaults (no plugin import)
    store = make_store(tmp_path / "runs", ("supervised/unet", "supervised/cmunet", "mgcc+ldm/cmunet"))
    runner, app = CliRunner(), report_app()
    out = tmp_path / "table.tex"
    result = runner.invoke(app, ["table", str(store), "--significance", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert r"\toprule" in out.read_text() and "$^\\dagger$" in out.read_text()
    result = runner.invoke(app, ["table", str(store), "--format", "markdown", "--metrics", "dice,iou"])
    assert result.exit_code == 0, result.output
    assert "| Method | Dice ↑ (25%) | IoU ↑ (25%) | n (25%) |" in result.output
    result = runner.invoke(app, ["table", str(store), "--compare", "none"])
    assert result.exit_code == 0 and "mgcc + ldm / cmunet" in result.output and "ΔDice" not in result.output
    result = runner.invoke(app, ["table", str(tmp_path / "missing")])
    assert isinstance(result.exception, UserError)


def test_summary_is_exactly_the_table_csv(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from harness.reporting import summary

    store = make_store(tmp_path / "runs", ("supervised/unet", "supervised/cmunet", "mgcc+ldm/cmunet"))
    for options, flags in (({}, []), ({"checkpoint": "last", "compare": "none"}, ["--checkpoint", "last",
                           "--compare", "none"]), ({"significance": True}, ["--significance"])):  # fmt: skip
        tidy = summary(store, **options)
        result = CliRunner().invoke(report_app(), ["table", str(store), "--format", "csv", *flags])
        assert result.exit_code == 0, result.output
        printed = pd.read_csv(io.StringIO(result.output), keep_default_na=False)
        assert list(tidy.columns) == list(printed.columns) and len(tidy) == len(printed)
        numeric = ("mean", "std", "ci_low", "ci_high", "train_sd", "p_wilcoxon_cluster_means", "p_sign_flip_runs")
        for column in (*numeric, "p_wilcoxon_cluster_means_holm", "p_sign_flip_runs_holm", "n"):
            ours = pd.to_numeric(tidy[column], errors="coerce").to_numpy(float)
            theirs = pd.to_numeric(printed[column], errors="coerce").to_numpy(float)
            assert np.allclose(ours, theirs, rtol=1e-5, equal_nan=True), column
        assert (tidy["method"] == printed["method"]).all() and (tidy["metric"] == printed["metric"]).all()
    # the Dice cell is the mean over runs of each run's mean over its lesion images, best checkpoint
    frame = load(store)
    runs = frame[frame["lesion"] & (frame["ssl"] == "mgcc") & (frame["labeled"] == 0.25)]
    cell = summary(store).query("method == 'mgcc + ldm / cmunet' and labeled == 0.25 and metric == 'dice'")
    assert cell["mean"].item() == pytest.approx(runs.groupby("run")["dice"].mean().mean())


@pytest.mark.slow
def test_bench_table_subprocess(store: Path) -> None:
    import subprocess
    import sys

    command = [sys.executable, "-c", "from harness.cli.app import main; main()", "table", str(store), "--format", "csv"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("table,group,method,labeled,metric,mean,std,n,best")
    missing = subprocess.run([*command[:3], "table", str(store / "nope")], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "error: results directory" in missing.stderr


@pytest.mark.slow
def test_labels_hide_the_registered_defaults() -> None:
    """With the real plugins: MGCC's default consistency weight (7) is not shown, 0.1 is."""
    runs = pd.DataFrame(
        {"ssl": ["mgcc", "mgcc"], "generator": ["none", "none"], "backbone": ["cmunet", "cmunet"],
         "preset": ["quick", "quick"], "method.consistency": [7.0, 0.1]}
    )  # fmt: skip
    assert method_labels(runs).tolist() == ["mgcc / cmunet", "mgcc / cmunet (consistency=0.1)"]
