"""Near-copy detection and fidelity statistics."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from harness.data.datasets import load_dataset
from harness.generation.memorisation import (
    drop_near_copies,
    fidelity,
    fidelity_report,
    frechet_distance,
    histogram_distance,
    memorisation,
    nearest_similarity,
    similarity_features,
    uniform_noise,
)


@cache
def sets() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training, calibration (held-out) and fresh real images from one phantom dataset, at 64x64."""
    images = load_dataset("phantom:count=120,size=96", image_size=64).images
    return images[:60], images[60:100], images[100:]


def test_identical_images_score_one_and_scores_are_bounded():
    train, _, _ = sets()
    sim, idx = nearest_similarity(similarity_features(train[:5]), similarity_features(train))
    assert torch.allclose(sim, torch.ones(5), atol=1e-5)
    assert idx.tolist() == [0, 1, 2, 3, 4]
    noise_sim, _ = nearest_similarity(similarity_features(uniform_noise(5, 64, 0)), similarity_features(train))
    assert (noise_sim <= 1.0 + 1e-6).all() and (noise_sim < 0.5).all()


def test_training_images_fed_back_are_flagged_and_noise_is_not():
    train, held, _ = sets()
    shifted = torch.roll(train[7:8], shifts=(2, -3), dims=(-2, -1))  # a copy moved by a few pixels
    samples = torch.cat([train[:3], shifted, uniform_noise(4, 64, 1)])
    report = memorisation(samples, train, held, quantile=0.99)
    assert report.near_copies == [0, 1, 2, 3]
    assert report.nearest[:3].tolist() == [0, 1, 2] and int(report.nearest[3]) == 7
    assert report.threshold < 0.99
    as_dict = report.as_dict()
    assert as_dict["near_copies"] == 4 and as_dict["n_heldout"] == len(held)
    kept = drop_near_copies(samples, report)
    assert kept.shape[0] == 4 and torch.equal(kept, samples[4:])


def test_held_out_real_images_are_not_flagged():
    train, held, fresh = sets()
    report = memorisation(fresh, train, held, quantile=0.99)
    assert len(report.near_copies) <= 1, report.similarity
    # real images share the fan and the speckle, yet are not alike once both are filtered out
    assert float(report.heldout_similarity.median()) < 0.6


def test_shared_field_of_view_border_does_not_make_images_alike():
    # same black border and fan outline, unrelated content inside
    gen = torch.Generator().manual_seed(0)
    base = torch.zeros(6, 1, 64, 64)
    base[:, :, 8:56, 8:56] = torch.rand(6, 1, 48, 48, generator=gen) * 200 + 30
    images = base.to(torch.uint8)
    sim, _ = nearest_similarity(similarity_features(images[:3]), similarity_features(images[3:]))
    assert (sim < 0.3).all(), sim


def test_memorisation_needs_held_out_images():
    train, _, _ = sets()
    with pytest.raises(ValueError, match="held-out"):
        memorisation(train[:2], train, train[:0])


def test_fidelity_statistics_rank_real_images_above_noise():
    train, held, _ = sets()
    real, noise = fidelity(held, train), fidelity(uniform_noise(len(held), 64, 0), train)
    for key in ("histogram_w1", "speckle_w1", "spectrum_l1"):
        assert real[key] < noise[key], key
    report = fidelity_report(held, train)
    assert report["samples"] == real and report["noise"] == noise
    assert histogram_distance(train, train) == 0.0
    flat = torch.full_like(held, 128)
    assert histogram_distance(flat, torch.full_like(held, 138)) == pytest.approx(10.0)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 2.0) == pytest.approx(16.0, rel=1e-6)


@pytest.mark.slow
def test_fid_reads_a_local_inception_weights_file(tmp_path):
    from torchvision.models import inception_v3

    from harness.generation.memorisation import fid

    torch.manual_seed(0)
    weights = tmp_path / "inception.pth"
    torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), weights)
    train, held, _ = sets()
    value = fid(held[:6], train[:6], weights, torch.device("cpu"))
    assert np.isfinite(value) and value > 0
    assert fid(train[:6], train[:6], weights, torch.device("cpu")) == pytest.approx(0.0, abs=1e-3)


def test_nearest_pairs_figure_is_a_readable_grid_with_similarities(tmp_path):
    from PIL import Image

    from harness.reporting.nearest import nearest_pairs_figure, write_nearest_pairs

    train, held, _ = sets()
    samples = torch.cat([train[:3], uniform_noise(5, 64, 1)])
    report = memorisation(samples, train, held, quantile=0.99)
    ids = [f"img{i:03d}" for i in range(len(train))]
    kwargs = dict(samples=samples, train_images=train, similarity=report.similarity, nearest=report.nearest,
                  train_ids=ids, threshold=report.threshold)  # fmt: skip
    fig = nearest_pairs_figure(**kwargs, n=8)
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert len(titles) == 8 and titles[0] == f"similarity {float(report.similarity.max()):.3f} — near-copy"
    assert sum("near-copy" in t for t in titles) == 3  # the three training images fed back
    labels = {ax.get_xlabel() for ax in fig.axes}
    assert {"train img000", "train img001", "train img002", "sample 0"} <= labels
    (png, _) = write_nearest_pairs(tmp_path, **kwargs, n=8)
    width, height = Image.open(png).size
    assert width >= 1500 and height >= 500  # 2 rows of 4 pairs, each image ~200 px: readable, not a 166 px strip
