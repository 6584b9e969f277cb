"""Difference hashes, Hamming distances and near-duplicate clusters."""

from __future__ import annotations

import numpy as np
from PIL import Image
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


def scan(anatomy: int, speckle: int, size: int = 160) -> np.ndarray:
    """An ultrasound-like image: smooth anatomy (seed ``anatomy``) times a texture (seed ``speckle``) whose
    grain is about one pixel of a 32 x 32 thumbnail."""
    base = ndimage.gaussian_filter(np.random.default_rng(anatomy).standard_normal((size, size)), 16)
    base = (base - base.min()) / np.ptp(base)
    grain = ndimage.gaussian_filter(np.random.default_rng(1000 + speckle).rayleigh(1.0, (size, size)), 2.5)
    return np.clip(40 + 180 * base * grain / grain.mean(), 0, 255).astype(np.uint8)


def crop_shift_marks(image: np.ndarray) -> np.ndarray:
    """The same scan saved again: a 7 % crop off two sides, resized back, with caliper crosses drawn on."""
    h, w = image.shape
    cropped = image[int(0.07 * h) :, : w - int(0.07 * w)]
    out = np.asarray(Image.fromarray(cropped).resize((w, h), Image.Resampling.BILINEAR)).copy()
    for y, x in ((40, 50), (110, 100)):
        out[y - 4 : y + 5, x] = 255
        out[y, x - 4 : x + 5] = 255
    return out


def test_speckle_ncc_joins_a_cropped_marked_copy_but_not_another_acquisition() -> None:
    """A re-saved scan (crop, shift, overlay marks) escapes the whole-image dHash threshold; the speckle NCC
    still joins it, and does not join a second acquisition of the same anatomy (new speckle)."""
    first = scan(0, 0)
    copy = crop_shift_marks(first)
    other_take = scan(0, 1)  # same anatomy, new speckle: a different acquisition
    unrelated = scan(5, 5)
    images = np.stack([first, copy, other_take, unrelated])
    thumbs = dedup.speckle_thumbnails(images)
    assert thumbs.shape == (4, dedup.NCC_SIZE, dedup.NCC_SIZE)
    bits = dedup.dataset_hashes(images)
    assert dedup.hamming(bits, bits)[0, 1] > dedup.DEFAULT_THRESHOLD  # the dHash alone misses the copy
    score = dedup.shifted_ncc(thumbs, thumbs)
    assert np.allclose(score, score.T) and score[0, 0] > 0.99
    assert score[0, 1] >= dedup.DEFAULT_NCC_THRESHOLD
    assert score[0, 2] < dedup.DEFAULT_NCC_THRESHOLD and score[0, 3] < dedup.DEFAULT_NCC_THRESHOLD
    assert [(i, j) for i, j, _ in dedup.ncc_pairs(thumbs)] == [(0, 1)]
