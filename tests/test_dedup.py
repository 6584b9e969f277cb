"""Difference hashes, Hamming distances and near-duplicate clusters."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from harness.data import dedup


def smooth_image(seed: int, size: int = 48) -> np.ndarray:
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((size, size)), 3)
    return np.clip((field - field.min()) / np.ptp(field) * 255, 0, 255).astype(np.uint8)


def test_dhash_bits_and_distances() -> None:
    a, b = smooth_image(0), smooth_image(1)
    bits = dedup.dataset_hashes(np.stack([a, b, np.clip(a.astype(int) + 2, 0, 255).astype(np.uint8)]))
    assert bits.shape == (3, 256) and bits.dtype == bool
    d = dedup.hamming(bits, bits)
    assert (d == d.T).all() and (np.diag(d) == 0).all()
    assert d[0, 2] <= 4  # a brightness shift keeps the hash
    assert d[0, 1] > 60  # unrelated images differ in many bits
    assert dedup.dhash(a, hash_size=8).shape == (64,)


def test_hash_uses_the_letterbox_content_only() -> None:
    a = smooth_image(2, 32)
    padded = np.zeros((48, 48), np.uint8)
    padded[8:40, 8:40] = a
    bits = dedup.dataset_hashes(padded[None, None], boxes=[(8, 8, 32, 32)])
    assert (bits[0] == dedup.dhash(a)).all()


def test_pairs_and_chained_clusters() -> None:
    bits = np.zeros((6, 16), bool)
    bits[1, :2] = True  # 2 bits from item 0
    bits[2, :4] = True  # 2 bits from item 1, 4 from item 0: chains
    bits[3] = True
    bits[4] = True
    bits[4, 0] = False  # 1 bit from item 3
    bits[5, ::2] = True  # far from everything
    pairs = dedup.near_duplicate_pairs(bits, threshold=2, chunk=4)
    assert {(i, j) for i, j, _ in pairs} == {(0, 1), (1, 2), (3, 4)}
    assert dedup.duplicate_clusters(bits, 2) == [[0, 1, 2], [3, 4]]
    assert dedup.duplicate_clusters(bits, 0) == []


def test_exact_clusters() -> None:
    assert dedup.exact_clusters(["x", "y", "x", "z", "y", "x"]) == [[0, 2, 5], [1, 4]]
    assert dedup.components(4, [(3, 1), (1, 0)]) == [0, 0, 2, 0]
