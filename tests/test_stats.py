"""Statistics of the tables on constructed data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from harness.errors import UserError
from harness.reporting.stats import (
    PairedRun,
    collapse_clusters,
    hierarchical_gain,
    holm,
    image_values,
    paired_differences,
    run_means,
    sign_flip_p,
    training_sd,
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


def pair(test_set: str, diffs, clusters=None) -> PairedRun:
    diffs = np.asarray(diffs, float)
    clusters = np.arange(len(diffs)).astype(str) if clusters is None else np.asarray(clusters).astype(str)
    return PairedRun(test_set, clusters, diffs)


def width(gain) -> float:
    return gain.high - gain.low


def test_hierarchical_gain_estimate_and_edge_cases() -> None:
    rng = np.random.default_rng(3)
    a, b, c = (rng.normal(0.05, 0.1, size=150) for _ in range(3))
    gain = hierarchical_gain([pair("f0", a), pair("f0", b), pair("f1", c)], resamples=2000)
    # the mean over test sets of the mean over their pairs
    assert gain.mean == pytest.approx(np.mean([(a.mean() + b.mean()) / 2, c.mean()]))
    assert gain.pairs == 3 and gain.images == 450 and gain.test_sets == 2 and gain.clusters == 300
    assert gain.low < 0.05 < gain.high
    assert gain.train_sd == pytest.approx(abs(a.mean() - b.mean()) / math.sqrt(2))
    exact = hierarchical_gain([pair("f0", np.full(20, 0.1))], resamples=100)
    assert exact.low == pytest.approx(0.1) and exact.high == pytest.approx(0.1) and math.isnan(exact.train_sd)
    assert hierarchical_gain([]).pairs == 0 and math.isnan(hierarchical_gain([]).mean)
    with pytest.raises(UserError, match="confidence level"):
        hierarchical_gain([pair("f0", np.ones(3))], level=95)


def test_duplicated_draws_do_not_shrink_the_interval() -> None:
    """Identical copies of a fold's run pairs (a store whose draws were duplicated) are one measurement."""
    rng = np.random.default_rng(0)
    folds = [pair(f"f{f}", rng.normal(0.03, 0.1, 40)) for f in range(5)]
    one = hierarchical_gain(folds, resamples=1000)
    three = hierarchical_gain([p for p in folds for _ in range(3)], resamples=1000)
    assert (three.low, three.high, three.mean) == pytest.approx((one.low, one.high, one.mean))
    assert three.pairs == 15 and three.train_sd == pytest.approx(0.0, abs=1e-12)


def test_fifteen_clusters_of_four_identical_images_are_as_wide_as_fifteen_images() -> None:
    values = np.random.default_rng(1).normal(0.02, 0.1, 15)
    fifteen = hierarchical_gain([pair("f0", values)], resamples=4000)
    clustered = hierarchical_gain([pair("f0", np.repeat(values, 4), np.repeat(np.arange(15), 4))], resamples=4000)
    sixty = hierarchical_gain([pair("f0", np.repeat(values, 4))], resamples=4000)  # clusters ignored
    assert width(clustered) == pytest.approx(width(fifteen), rel=0.05)
    assert width(sixty) < 0.6 * width(clustered)  # what resampling single images would claim


def test_sign_flip_is_exact_for_small_n() -> None:
    assert sign_flip_p(np.full(5, 0.01)) == (pytest.approx(2 / 32), "exact sign-flip over 5 run pairs")
    assert sign_flip_p(np.array([-0.3, -0.1, 0.1, 0.3]))[0] == pytest.approx(1.0)
    x = np.random.default_rng(2).normal(0.02, 0.03, 9)
    signs = np.array([[1 if (k >> j) & 1 else -1 for j in range(9)] for k in range(512)])
    brute = np.mean(np.abs(signs @ x) >= abs(x.sum()) - 1e-12)
    assert sign_flip_p(x)[0] == pytest.approx(brute)
    p, name = sign_flip_p(np.random.default_rng(3).normal(0.05, 0.02, 25))
    assert p < 0.001 and "random patterns" in name
    assert math.isnan(sign_flip_p(np.array([]))[0])


def test_training_sd_pools_within_test_sets() -> None:
    pairs = [pair("a", [0.1]), pair("a", [0.3]), pair("b", [0.0]), pair("b", [0.4]), pair("c", [9.0])]
    # within a: deviations +-0.1 (1 dof), within b: +-0.2 (1 dof); c alone adds nothing
    assert training_sd(pairs) == pytest.approx(math.sqrt((0.02 + 0.08) / 2))
    assert math.isnan(training_sd([pair("a", [0.1]), pair("b", [0.2])]))


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
