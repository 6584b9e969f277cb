"""Black-box: intervals read from `bench table --compare supervised --format csv` on stores written as
runs write them (run.json, metrics.csv and the split file with its groups). Full CLI runs: slow tier;
tests/test_stats.py checks the same widths on the statistics directly."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from harness.runs.store import atomic_write_json, write_rows_csv

pytestmark = pytest.mark.slow
FOLDS = (0, 1, 2)


def write_store(root: Path, per_image: dict[int, np.ndarray], draws: int = 1, cluster_size: int = 1) -> Path:
    """supervised and mean-teacher runs on every fold (and draw); mean teacher's Dice = supervised + gain.

    ``per_image[fold]``: the per-image gains of a fold's distinct images; with ``cluster_size`` k each
    becomes k identical images that the split file groups together. Every draw repeats the values.
    """
    groups = {}
    ids = {}
    for fold, gains in per_image.items():
        ids[fold] = [f"f{fold}_{c:02d}_{j}" for c in range(len(gains)) for j in range(cluster_size)]
        if cluster_size > 1:
            groups.update({i: i.rsplit("_", 1)[0] for i in ids[fold]})
    split_file = root / "splits" / "split.json"
    atomic_write_json(split_file, {"format": "segbench-split/1", "protocol": "kfold", "groups": groups})
    for ssl in ("supervised", "mean-teacher"):
        for fold, gains in per_image.items():
            for draw in range(draws):
                name = f"{ssl}_none_unet_l0.25_f{fold}_d{draw}"
                config = {
                    "ssl": ssl, "backbone": "unet", "generator": "none", "data": "busi", "labeled": 0.25,
                    "fold": fold, "draw": draw, "seed": 0, "preset": "quick", "image_size": 64, "in_channels": 1,
                    "resize": "squash", "normalisation": "zscore", "eval_resolution": "native",
                    "train": {"iterations": 300, "labeled_batch": 4, "unlabeled_batch": 4, "lr": 0.01},
                    "backbone_params": {}, "method_params": {}, "generator_params": {},
                }  # fmt: skip
                record = {
                    "name": name, "run_id": name, "status": "done", "config": config,
                    "data": {"name": "busi", "fingerprint": "fp", "split_file": str(split_file), "split_hash": "s1",
                             "protocol": "kfold", "selection_is_test": False},
                }  # fmt: skip
                base = 0.6 + 0.1 * np.sin(np.arange(len(gains)))
                dice = np.repeat(base + (gains if ssl == "mean-teacher" else 0.0), cluster_size)
                rows = [
                    {"id": i, "stratum": "benign", "lesion": True, "pred_empty": False, "dice": float(d),
                     "iou": float(d / (2 - d)), "hd95": float(20 * (1 - d)), "checkpoint": "best"}
                    for i, d in zip(ids[fold], dice, strict=True)
                ]  # fmt: skip
                write_rows_csv(root / name / "metrics.csv", rows)
                atomic_write_json(root / name / "run.json", record)
    return root


def delta(root: Path, metric: str = "dice") -> pd.Series:
    from harness.cli.app import app, build_app

    build_app([])
    result = CliRunner().invoke(app, ["table", str(root), "--compare", "supervised", "--format", "csv"])
    assert result.exit_code == 0, result.output
    csv = pd.read_csv(io.StringIO(result.output))
    rows = csv[(csv["metric"] == f"delta_{metric}") & (csv["method"].str.startswith("mean-teacher"))]
    assert len(rows) == 1, csv
    return rows.iloc[0]


def gains(n: int, mean: float = 0.03) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(5)
    return {fold: rng.normal(mean, 0.08, n) for fold in FOLDS}


def test_duplicated_draws_keep_the_interval_width(tmp_path: Path) -> None:
    one = delta(write_store(tmp_path / "one", gains(40)))
    three = delta(write_store(tmp_path / "three", gains(40), draws=3))
    ratio = (three["ci_high"] - three["ci_low"]) / (one["ci_high"] - one["ci_low"])
    assert ratio >= 0.85, ratio
    assert three["n"] == 9 and abs(three["train_sd"]) < 1e-9 and three["mean"] == one["mean"]


def test_clusters_of_identical_images_are_as_wide_as_their_distinct_images(tmp_path: Path) -> None:
    distinct = delta(write_store(tmp_path / "distinct", gains(15)))
    clustered = delta(write_store(tmp_path / "clustered", gains(15), cluster_size=4))
    ratio = (clustered["ci_high"] - clustered["ci_low"]) / (distinct["ci_high"] - distinct["ci_low"])
    assert ratio >= 0.85, ratio
    assert clustered["clusters"] == 45 and clustered["mean"] == distinct["mean"]


def test_every_shown_metric_is_tested_and_unfinished_runs_are_named(tmp_path: Path) -> None:
    root = write_store(tmp_path / "runs", gains(20, mean=0.1))
    failed = root / "mean-teacher_none_unet_l0.25_f9_d0"
    atomic_write_json(failed / "run.json", {"name": failed.name, "status": "failed", "error": "CUDA out of memory"})
    hd95 = delta(root, "hd95")
    assert hd95["p_wilcoxon_cluster_means"] < 0.05 and hd95["run_test"] == "exact sign-flip over 3 run pairs"
    assert hd95["p_sign_flip_runs"] == 0.25  # 3 pairs: 2 of 8 sign patterns are as extreme
    from harness.cli.app import app

    out = CliRunner().invoke(app, ["table", str(root), "--metrics", "hd95", "--significance", "--format", "markdown"])
    assert out.exit_code == 0, out.output
    assert "Not in the table: mean-teacher_none_unet_l0.25_f9_d0 (failed: CUDA out of memory)" in out.output
    assert "ΔHD95" in out.output and "run n.s." in out.output and "†" in out.output
    assert json.loads(json.dumps(list(hd95.index)))  # every column has a name
