"""Statistics for result tables: per-run means, paired gains with cluster-bootstrap intervals, tests, Holm.

Every function works on the per-image frame of :func:`harness.reporting.load.load` (or a part of it).
Which images count toward a metric follows the metric policy: Dice, IoU, HD95, ... over images
with a lesion; ``dice_all`` over all images; ``empty_correct`` = share of lesion-free images
predicted empty; ``published_*`` over all images, as the published code averages them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from harness.errors import UserError

LESION_METRICS = ("dice", "iou", "hd95", "assd", "precision", "recall", "specificity", "accuracy")
DERIVED_METRICS = ("dice_all", "empty_correct")
#: metrics where a lower value is better; every other metric is higher-is-better
LOWER_IS_BETTER = frozenset({"hd95", "assd"})


class StatsError(UserError, ValueError):
    """A statistic was asked of data that cannot give it; the message names the value."""


def known_metric(metric: str) -> bool:
    """Whether :func:`image_values` knows ``metric``."""
    return metric in LESION_METRICS or metric in DERIVED_METRICS or metric.startswith("published_")


def image_values(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The images of ``frame`` that count toward ``metric``, with the per-image value in ``value``.

    Keeps every column of ``frame`` (id, cluster, run, ...). ``empty_correct`` is 1.0 where a
    lesion-free image was predicted empty (from ``pred_empty``, or Dice = 1, which the empty-mask
    policy gives exactly then).
    """
    if not known_metric(metric):
        raise StatsError(f"unknown metric {metric!r}; use one of {', '.join(LESION_METRICS + DERIVED_METRICS)}")
    if metric == "empty_correct":
        part = frame[~frame["lesion"]]
        value = part["pred_empty"].astype(float) if "pred_empty" in part else (part["dice"] == 1.0).astype(float)
        return part.assign(value=value)
    if metric == "dice_all":
        return frame.assign(value=frame["dice"].astype(float))
    if metric not in frame:
        raise StatsError(
            f"metric {metric!r} is not in the results (was it recorded? e.g. bench run --published-metrics)"
        )
    part = frame if metric.startswith("published_") else frame[frame["lesion"]]
    return part.assign(value=part[metric].astype(float))


def run_means(frame: pd.DataFrame, metric: str, by: Sequence[str] = ("run",)) -> pd.Series:
    """The mean of ``metric`` over each run's qualifying images (NaN-free; runs without any are absent)."""
    values = image_values(frame, metric).dropna(subset=["value"])
    return values.groupby(list(by), sort=False)["value"].mean()


def paired_differences(row: pd.DataFrame, reference: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per-image ``row - reference`` of one pair of runs, matched on image id (columns id, cluster, diff)."""
    a = image_values(row, metric)[["id", "cluster", "value"]].dropna(subset=["value"])
    b = image_values(reference, metric)[["id", "value"]].dropna(subset=["value"])
    merged = a.merge(b, on="id", suffixes=("", "_ref"), validate="one_to_one")
    return pd.DataFrame(
        {"id": merged["id"], "cluster": merged["cluster"], "diff": merged["value"] - merged["value_ref"]}
    )


@dataclass(frozen=True)
class PairedRun:
    """The per-image differences of one run against its matched reference run.

    ``test_set`` names the test set both runs were scored on (e.g. the split file and fold): runs
    that share it share its images. ``clusters`` gives each image's group in the split file
    (near-duplicate cluster or case; the image id where it is in none).
    """

    test_set: str
    clusters: np.ndarray
    diffs: np.ndarray

    @property
    def gain(self) -> float:
        """The run-level gain: this pair's mean difference over its images."""
        return float(np.mean(self.diffs)) if len(self.diffs) else math.nan


@dataclass(frozen=True)
class Gain:
    """A paired gain, its interval over test images and the spread from training.

    ``mean``: the mean over test sets (folds) of the mean over the run pairs on that test set
    (seeds and label draws) of each pair's mean per-image difference. ``low``/``high``: the
    percentile interval of :func:`hierarchical_gain`. ``train_sd``: the standard deviation of the
    run-level gain between run pairs on the same test set (seeds and draws), pooled over test sets;
    NaN when no test set has two pairs.
    """

    mean: float
    low: float
    high: float
    pairs: int
    images: int
    test_sets: int = 0
    clusters: int = 0
    train_sd: float = math.nan


def _stratum_matrices(pairs: Sequence[PairedRun]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair x cluster sums of differences and image counts over the clusters of one test set."""
    labels = np.unique(np.concatenate([np.asarray(p.clusters).astype(str) for p in pairs]))
    sums = np.zeros((len(pairs), len(labels)))
    counts = np.zeros((len(pairs), len(labels)))
    for row, pair in enumerate(pairs):
        index = np.searchsorted(labels, np.asarray(pair.clusters).astype(str))
        np.add.at(sums[row], index, pair.diffs)
        np.add.at(counts[row], index, 1.0)
    return sums, counts


def training_sd(pairs: Sequence[PairedRun]) -> float:
    """Pooled within-test-set standard deviation of the run-level gains (NaN without two pairs on one set)."""
    by_set: dict[str, list[float]] = {}
    for pair in pairs:
        by_set.setdefault(pair.test_set, []).append(pair.gain)
    squares, dof = 0.0, 0
    for gains in by_set.values():
        if len(gains) > 1:
            squares += float(np.sum((np.asarray(gains) - np.mean(gains)) ** 2))
            dof += len(gains) - 1
    return math.sqrt(squares / dof) if dof else math.nan


def hierarchical_gain(pairs: Sequence[PairedRun], *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Gain:
    """The paired gain with a stratified cluster bootstrap interval over test images.

    Test sets (folds) are strata and are never resampled. Within a test set the bootstrap draws
    its clusters (split-file groups) with replacement, once per replicate, and the same draw
    serves every run pair on that test set: label draws and seeds are repeated measurements of
    one test set, averaged within it, never new test sets. A replicate's gain is the mean over
    test sets of the mean over their pairs of each pair's mean over the drawn images. Each test
    set's replicate deviations are scaled by sqrt(n/(n - 1)) (n = its clusters), the usual
    small-sample correction of the bootstrap variance. The interval reflects test-image sampling
    with the trained networks held fixed; :attr:`Gain.train_sd` shows the spread from training.
    """
    pairs = [p for p in pairs if len(p.diffs)]
    if not pairs:
        return Gain(math.nan, math.nan, math.nan, 0, 0)
    if not 0 < level < 1:
        raise StatsError(f"confidence level {level} must lie strictly between 0 and 1, e.g. 0.95")
    rng = np.random.default_rng(seed)
    by_set: dict[str, list[PairedRun]] = {}
    for pair in pairs:
        by_set.setdefault(pair.test_set, []).append(pair)
    estimates, replicates, n_clusters = [], [], 0
    for key in sorted(by_set):
        sums, counts = _stratum_matrices(by_set[key])
        n = sums.shape[1]
        n_clusters += n
        estimate = float(np.mean(sums.sum(1) / counts.sum(1)))
        weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            drawn = np.nanmean((weights @ sums.T) / (weights @ counts.T), axis=1)
        scale = math.sqrt(n / (n - 1)) if n > 1 else 1.0
        estimates.append(estimate)
        replicates.append(estimate + scale * (drawn - estimate))
    boot = np.mean(replicates, axis=0)
    alpha = (1 - level) / 2
    low, high = np.nanquantile(boot, [alpha, 1 - alpha])
    return Gain(
        mean=float(np.mean(estimates)),
        low=float(low),
        high=float(high),
        pairs=len(pairs),
        images=int(sum(len(p.diffs) for p in pairs)),
        test_sets=len(by_set),
        clusters=n_clusters,
        train_sd=training_sd(pairs),
    )


#: exact sign-flip tests enumerate 2**n sign patterns up to this n, then sample
EXACT_SIGN_FLIP_MAX = 18


def sign_flip_p(values: np.ndarray, *, samples: int = 200_000, seed: int = 0) -> tuple[float, str]:
    """Two-sided sign-flip permutation p-value of the mean of paired run-level gains, and the test's name.

    Under the null each matched pair's gain is symmetric about 0 (the two trainings are
    exchangeable on a fixed test set), so every sign pattern is equally likely. Exact (all 2**n
    patterns) for n <= 18; above, ``samples`` random patterns (the name says so). With n pairs the
    smallest possible p is 2/2**n: 5 pairs can never reach 0.05.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = len(values)
    if n == 0:
        return math.nan, "sign-flip"
    observed = abs(values.mean())
    if n <= EXACT_SIGN_FLIP_MAX:
        patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
        name = f"exact sign-flip over {n} run pairs"
    else:
        patterns = np.random.default_rng(seed).choice([-1.0, 1.0], size=(samples, n))
        name = f"sign-flip over {n} run pairs ({samples} random patterns)"
    means = np.abs(patterns @ values) / n
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed))), name


def collapse_clusters(diffs: pd.DataFrame) -> np.ndarray:
    """One value per near-duplicate cluster: the mean difference over its images and run pairs."""
    return diffs.groupby("cluster", sort=True)["diff"].mean().to_numpy()


def wilcoxon_p(values: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (1.0 when all are zero, NaN if none)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan
    if np.all(values == 0):
        return 1.0
    return float(stats.wilcoxon(values, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs stay NaN and do not count toward the family size)."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    running = 0.0
    for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted
