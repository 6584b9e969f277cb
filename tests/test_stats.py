"""Statistics of the tables on constructed data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from harness.errors import UserError
from harness.reporting.stats import (
    bootstrap_gain,
    collapse_clusters,
    holm,
    image_values,
    paired_differences,
    run_means,
    wilcoxon_p,
)


def images(run: str, dice: list[float], lesion: list[bool], pred_empty: list[bool] | None = None) -> pd.DataFrame:
    n = len(dice)
    frame = pd.DataFrame(
        {"run": run, "id": [f"i{k}" for k in range(n)], "cluster": [f"i{k}" for k in range(n)], "dice": dice,
         "hd95": [10 * (1 - d) for d in dice], "lesion": lesion}
    )  # fmt: skip
    if pred_empty is not None:
        frame["pred_empty"] = pred_empty
    return frame


def test_holm_known_values() -> None:
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # capped at 1, monotone
    nan = holm([0.01, math.nan, 0.02])
    assert math.isnan(nan[1]) and nan[0] == pytest.approx(0.02) and nan[2] == pytest.approx(0.02)
    assert holm([]).size == 0


def test_holm_is_at_least_bonferroni_step() -> None:
    p = np.random.default_rng(1).uniform(size=12)
    adjusted = holm(p)
    assert (adjusted >= p).all()
    assert adjusted[np.argmin(p)] == pytest.approx(min(1.0, 12 * p.min()))


def test_wilcoxon_known_answers() -> None:
    assert wilcoxon_p(np.zeros(20)) == 1.0
    assert math.isnan(wilcoxon_p(np.array([])))
    shifted = np.linspace(0.01, 0.2, 30)
    assert wilcoxon_p(shifted) < 1e-5
    symmetric = np.array([-0.3, -0.2, -0.1, 0.1, 0.2, 0.3, 0.0])
    assert wilcoxon_p(symmetric) == pytest.approx(1.0)
    x = np.random.default_rng(0).normal(0.05, 0.1, size=25)
    assert wilcoxon_p(x) == pytest.approx(scipy_stats.wilcoxon(x).pvalue)


def test_bootstrap_interval_contains_the_true_difference() -> None:
    rng = np.random.default_rng(3)
    pairs = [rng.normal(0.05, 0.1, size=150) for _ in range(5)]
    gain = bootstrap_gain(pairs, resamples=2000)
    assert gain.pairs == 5 and gain.images == 750
    assert gain.low < 0.05 < gain.high
    assert gain.mean == pytest.approx(np.mean([p.mean() for p in pairs]))
    # a constant difference gives a zero-width interval at that value
    exact = bootstrap_gain([np.full(20, 0.1)], resamples=100)
    assert exact.low == pytest.approx(0.1) and exact.high == pytest.approx(0.1)


def test_bootstrap_coverage_is_near_nominal() -> None:
    rng = np.random.default_rng(7)
    hits = 0
    trials = 200
    for t in range(trials):
        pairs = [rng.normal(0.02, 0.1, size=40) for _ in range(3)]
        gain = bootstrap_gain(pairs, resamples=400, seed=t)
        hits += gain.low <= 0.02 <= gain.high
    assert 0.88 <= hits / trials <= 0.99


def test_bootstrap_edge_cases() -> None:
    assert bootstrap_gain([]).pairs == 0 and math.isnan(bootstrap_gain([]).mean)
    with pytest.raises(UserError, match="confidence level"):
        bootstrap_gain([np.ones(3)], level=95)


def test_image_values_follow_the_metric_policy() -> None:
    frame = images("a", [0.8, 0.6, 1.0, 0.0], [True, True, False, False], pred_empty=[False, False, True, False])
    assert image_values(frame, "dice")["value"].tolist() == [0.8, 0.6]
    assert image_values(frame, "empty_correct")["value"].tolist() == [1.0, 0.0]
    assert image_values(frame, "dice_all")["value"].mean() == pytest.approx(0.6)
    # without pred_empty, Dice = 1 on a lesion-free image means it was predicted empty
    no_flag = frame.drop(columns="pred_empty")
    assert image_values(no_flag, "empty_correct")["value"].tolist() == [1.0, 0.0]
    with pytest.raises(UserError, match="unknown metric"):
        image_values(frame, "f1")
    with pytest.raises(UserError, match="not in the results"):
        image_values(frame, "published_iou")


def test_run_means_and_paired_differences() -> None:
    a = images("a", [0.8, 0.6, 1.0], [True, True, False])
    b = images("b", [0.7, 0.7, 0.0], [True, True, False])
    means = run_means(pd.concat([a, b]), "dice")
    assert means["a"] == pytest.approx(0.7) and means["b"] == pytest.approx(0.7)
    diffs = paired_differences(a, b.iloc[::-1], "dice")  # matched on id, not on row order
    assert dict(zip(diffs["id"], diffs["diff"], strict=True)) == pytest.approx({"i0": 0.1, "i1": -0.1})
    assert paired_differences(a, b, "hd95")["diff"].tolist() == pytest.approx([-1.0, 1.0])


def test_collapse_clusters_weighs_a_cluster_once() -> None:
    diffs = pd.DataFrame({"cluster": ["dup", "dup", "dup", "x", "y"], "diff": [0.3, 0.3, 0.3, -0.1, -0.2]})
    assert sorted(collapse_clusters(diffs).tolist()) == pytest.approx([-0.2, -0.1, 0.3])
    # the same cluster seen in two run pairs (two seeds) is one value: the mean over both
    two_pairs = pd.DataFrame({"cluster": ["a", "a", "b"], "diff": [0.1, 0.3, 0.5]})
    assert collapse_clusters(two_pairs).tolist() == pytest.approx([0.2, 0.5])
