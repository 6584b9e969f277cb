"""The built-in phantom: deterministic, BUSI-like strata, and too hard for a global threshold."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from harness.data import datasets as data
from harness.data.datasets import load_dataset
from harness.plugins import build_registry
from plugins.datasets import phantom
from plugins.datasets.phantom import PhantomParams, generate, strata_counts

REGISTRY = build_registry(entry_points=[], extra_plugins=[("folder", data), ("phantom", phantom)], env={})


def otsu_threshold(image: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image: pixels <= t are one class."""
    p = np.bincount(image.ravel(), minlength=256) / image.size
    w, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w - mu) ** 2 / (w * (1 - w))
    return int(np.nanargmax(between))


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2 * float((a & b).sum()) / float(total)


def test_deterministic_per_seed() -> None:
    ids, strata, images, masks = generate(PhantomParams(count=12, size=48, seed=3))
    again = generate(PhantomParams(count=12, size=48, seed=3))
    other = generate(PhantomParams(count=12, size=48, seed=4))
    assert ids == again[0] and strata == again[1]
    assert (images == again[2]).all() and (masks == again[3]).all()
    assert (images != other[2]).any()
    assert images.dtype == np.uint8 and masks.dtype == bool and images.shape == (12, 48, 48)


def test_strata_like_busi() -> None:
    assert strata_counts(200) == [("benign", 112), ("malignant", 54), ("normal", 34)]
    ids, strata, _, masks = generate(PhantomParams(count=20, size=32))
    assert ids[0] == "benign (1)" and set(strata) == {"benign", "malignant", "normal"}
    for stratum, mask in zip(strata, masks, strict=True):
        assert mask.any() == (stratum != "normal")


def test_otsu_fails_on_lesion_images() -> None:
    """Best of (dark, bright) x (all pixels, largest component) per image: mean Dice <= 0.4."""
    _, strata, images, masks = generate(PhantomParams(count=60, size=128, seed=0))
    scores = []
    for stratum, image, mask in zip(strata, images, masks, strict=True):
        if stratum == "normal":
            continue
        t = otsu_threshold(image)
        candidates = [image <= t, image > t]
        candidates += [largest_component(c) for c in candidates]
        scores.append(max(dice(c, mask) for c in candidates))
    assert len(scores) > 40
    assert np.mean(scores) <= 0.4
    assert 0.01 < np.mean([m.mean() for s, m in zip(strata, masks, strict=True) if s != "normal"]) < 0.2


def test_loads_like_a_dataset() -> None:
    ds = load_dataset("phantom:count=10,size=64", image_size=32, registry=REGISTRY)
    assert ds.name == "phantom" and len(ds) == 10 and ds.images.shape == (10, 1, 32, 32)
    assert ds.native_masks[0].shape == (64, 64) and ds.boxes[0] == (0, 0, 32, 32)
    assert ds.options["params"] == {"count": 10, "size": 64, "seed": 0}
    again = load_dataset(None, image_size=32, params={"count": 10, "size": 64}, registry=REGISTRY)
    assert again.fingerprint == ds.fingerprint
    benign = load_dataset("phantom:count=10,size=64", image_size=32, include_strata=["benign"], registry=REGISTRY)
    assert set(benign.strata) == {"benign"} and benign.fingerprint != ds.fingerprint
