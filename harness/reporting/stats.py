"""Statistics for result tables: per-run means, paired gains with bootstrap intervals, Wilcoxon + Holm.

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
class Gain:
    """Mean paired gain over run pairs with a percentile bootstrap interval over images within runs."""

    mean: float
    low: float
    high: float
    pairs: int
    images: int


def bootstrap_gain(pairs: Sequence[np.ndarray], *, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Gain:
    """Gain = mean over run pairs of each pair's mean per-image difference.

    The interval resamples the images of every pair independently (with replacement, keeping the
    pairing of an image's two values) and takes percentiles of the resampled gain: it reflects
    test-image sampling only, not training variance (that is the ± std over runs).
    """
    pairs = [np.asarray(p, dtype=float) for p in pairs if len(p)]
    if not pairs:
        return Gain(math.nan, math.nan, math.nan, 0, 0)
    if not 0 < level < 1:
        raise StatsError(f"confidence level {level} must lie strictly between 0 and 1, e.g. 0.95")
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for diffs in pairs:
        # chunks keep the index matrix small for large test sets
        for start in range(0, resamples, 256):
            stop = min(start + 256, resamples)
            idx = rng.integers(0, len(diffs), size=(stop - start, len(diffs)))
            total[start:stop] += diffs[idx].mean(axis=1)
    boot = total / len(pairs)
    alpha = (1 - level) / 2
    mean = float(np.mean([p.mean() for p in pairs]))
    low, high = np.quantile(boot, [alpha, 1 - alpha])
    return Gain(mean, float(low), float(high), len(pairs), int(sum(len(p) for p in pairs)))


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
