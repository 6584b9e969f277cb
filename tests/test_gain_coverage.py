"""Coverage of the paired-gain interval in simulated benchmark designs (slow: about a minute).

The target. Each design fixes, once, the trained networks' effects: an overall gain mu, a
per-fold effect phi_s (what that fold's training data does to the gain) and a per-run-pair effect
tau_p (seed / label draw). A replication draws fresh test images for every fold from the image
population: an image's difference for run pair p is mu + phi_s + tau_p + u_i + e_pi, where u_i (the
image's own gain, shared by every run pair scored on it) and e_pi (its interaction with one pair's
networks) are new each replication; in the clustered design u and e are shared, up to a little
noise, by the 4 near-duplicates of a cluster. The true gain is therefore the expectation over test
images with the networks held fixed,

    theta = mu + mean over folds s of (phi_s + mean over the pairs p on s of tau_p),

the quantity the interval claims to cover (the spread from training is reported beside it as sd).
A nominal 95 % interval must cover theta in [0.92, 0.98] of 500 replications per design.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.reporting.stats import PairedRun, hierarchical_gain

REPLICATIONS = 500
#: (name, folds, run pairs per fold, clusters per fold, images per cluster)
DESIGNS = [
    ("5 folds x 1 draw", 5, 1, 50, 1),
    ("5 folds x 3 draws", 5, 3, 50, 1),
    ("1 fold x 5 seeds", 1, 5, 100, 1),
    ("clusters of 4", 1, 3, 30, 4),
]


def simulate(folds: int, per_fold: int, clusters: int, size: int, seed: int) -> tuple[float, float]:
    """Coverage of theta over REPLICATIONS, and the mean interval width."""
    fixed = np.random.default_rng(seed)
    mu = 0.03
    phi = fixed.normal(0, 0.02, folds)
    tau = fixed.normal(0, 0.02, (folds, per_fold))
    theta = mu + float(np.mean(phi + tau.mean(axis=1)))
    rng = np.random.default_rng(seed + 1)
    labels = np.repeat(np.arange(clusters), size).astype(str)
    hits, widths = 0, []
    for rep in range(REPLICATIONS):
        pairs = []
        for s in range(folds):
            u = np.repeat(rng.normal(0, 0.08, clusters), size) + rng.normal(0, 0.005, clusters * size)
            for p in range(per_fold):
                e = np.repeat(rng.normal(0, 0.04, clusters), size) + rng.normal(0, 0.005, clusters * size)
                pairs.append(PairedRun(f"fold {s}", labels, mu + phi[s] + tau[s, p] + u + e))
        gain = hierarchical_gain(pairs, resamples=1000, seed=rep)
        hits += gain.low <= theta <= gain.high
        widths.append(gain.high - gain.low)
    return hits / REPLICATIONS, float(np.mean(widths))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "folds", "per_fold", "clusters", "size"), DESIGNS, ids=[d[0] for d in DESIGNS])
def test_interval_covers_the_fixed_training_gain(name: str, folds: int, per_fold: int, clusters: int, size: int):
    coverage, _ = simulate(folds, per_fold, clusters, size, seed=len(name))
    assert 0.92 <= coverage <= 0.98, f"{name}: coverage {coverage:.3f}"
