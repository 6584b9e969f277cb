"""Near-duplicate images: a difference hash (dHash), Hamming distances and single-linkage clusters.

dHash of size ``s``: the image (its letterbox content only) is resized (Lanczos) to (s + 1) x s and
each bit says whether a pixel is brighter than its right neighbour, so s = 16 gives 256 bits. Two
images are near-duplicates when their hashes differ in at most ``threshold`` bits; clusters are the
connected components of that relation (they can chain on video-derived data).

Defaults, chosen on BUSI (780 images loaded at 128 px): 16 x 16 bits and a threshold of 24 group
every pair that a 16 x 16 dHash of the full-resolution files finds at <= 20 bits; by eye, pairs up
to about 40 bits apart are still true near-duplicates, so 24 is on the safe side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from harness import progress

DEFAULT_HASH_SIZE = 16
DEFAULT_THRESHOLD = 24
NCC_SIZE = 32
NCC_SHIFT = 4
DEFAULT_NCC_THRESHOLD = 0.6


def dhash(image: np.ndarray, hash_size: int = DEFAULT_HASH_SIZE) -> np.ndarray:
    """The difference hash of a 2-D uint8 image as a bool vector of hash_size**2 bits."""
    small = np.asarray(Image.fromarray(image).resize((hash_size + 1, hash_size), Image.Resampling.LANCZOS), np.int16)
    return (small[:, 1:] > small[:, :-1]).ravel()


def dataset_hashes(
    images: np.ndarray, boxes: Sequence[tuple[int, int, int, int]] | None = None, hash_size: int = DEFAULT_HASH_SIZE
) -> np.ndarray:
    """N x hash_size**2 bool hashes of N x H x W (or N x 1 x H x W) uint8 images, each cropped to its box."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    out = np.zeros((len(images), hash_size * hash_size), bool)
    with progress.task("near-duplicate hashing", len(images), unit="img") as bar:
        for k, image in enumerate(images):
            if boxes is not None:
                top, left, h, w = boxes[k]
                image = image[top : top + h, left : left + w]
            out[k] = dhash(np.ascontiguousarray(image), hash_size)
            bar.advance()
    return out


def speckle_thumbnails(
    images: np.ndarray, boxes: Sequence[tuple[int, int, int, int]] | None = None, size: int = NCC_SIZE
) -> np.ndarray:
    """N x size x size float32 high-pass thumbnails: box-averaged content minus its 5 x 5 box blur."""
    from scipy.ndimage import uniform_filter

    images = np.asarray(images)
    if images.ndim == 4:
        images = images[:, 0]
    out = np.zeros((len(images), size, size), np.float32)
    for k, image in enumerate(images):
        if boxes is not None:
            top, left, h, w = boxes[k]
            image = image[top : top + h, left : left + w]
        small = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.Resampling.BOX))
        small = small.astype(np.float32)
        out[k] = small - uniform_filter(small, size=5, mode="nearest")
    return out


def _unit_rows(patches: np.ndarray) -> np.ndarray:
    rows = patches.reshape(len(patches), -1)
    rows = rows - rows.mean(axis=1, keepdims=True)
    return rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-6)


def shifted_ncc(a: np.ndarray, b: np.ndarray, shift: int = NCC_SHIFT) -> np.ndarray:
    """len(a) x len(b) maximum NCC of the centre of each ``a`` thumbnail with ``b`` shifted by <= ``shift``
    pixels in each direction, symmetrised when ``a is b`` (N x S x S float thumbnails)."""
    size = a.shape[-1]
    inner = size - 2 * shift
    centre = _unit_rows(a[:, shift : shift + inner, shift : shift + inner])
    best = np.full((len(a), len(b)), -1.0, np.float32)
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            moved = _unit_rows(b[:, shift + dy : shift + dy + inner, shift + dx : shift + dx + inner])
            np.maximum(best, centre @ moved.T, out=best)
    if a is b:
        best = np.maximum(best, best.T)
    return best


def ncc_pairs(thumbs: np.ndarray, threshold: float = DEFAULT_NCC_THRESHOLD) -> list[tuple[int, int, float]]:
    """(i, j, ncc) with i < j for every pair of high-pass thumbnails at shifted NCC >= ``threshold``."""
    score = shifted_ncc(thumbs, thumbs)
    rows, cols = np.nonzero(np.triu(score >= threshold, k=1))
    return [(int(i), int(j), float(score[i, j])) for i, j in zip(rows, cols, strict=True)]


def hamming(bits_a: np.ndarray, bits_b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances (len(a) x len(b), int32) between bool hash rows."""
    a = bits_a.astype(np.int32)
    b = bits_b.astype(np.int32)
    return a @ (1 - b).T + (1 - a) @ b.T


def near_duplicate_pairs(bits: np.ndarray, threshold: int, chunk: int = 2048) -> list[tuple[int, int, int]]:
    """(i, j, distance) with i < j for every pair at Hamming distance <= ``threshold``."""
    pairs = []
    for start in range(0, len(bits), chunk):
        dist = hamming(bits[start : start + chunk], bits)
        rows, cols = np.nonzero(dist <= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c:
                pairs.append((i, c, int(dist[r, c])))
    return pairs


def components(n: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Connected-component label (the smallest member index) of each of n items joined by ``pairs``."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]


def clusters_of(labels: Sequence[int]) -> list[list[int]]:
    """Groups of item indices sharing a label, only those with two or more members, largest first."""
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def duplicate_clusters(bits: np.ndarray, threshold: int) -> list[list[int]]:
    """Near-duplicate clusters (indices, two or more members each) of the hashed images."""
    pairs = near_duplicate_pairs(bits, threshold)
    return clusters_of(components(len(bits), [(i, j) for i, j, _ in pairs]))


def exact_clusters(content_hashes: Sequence[str]) -> list[list[int]]:
    """Clusters of items whose files are byte-identical."""
    first: dict[str, int] = {}
    return clusters_of([first.setdefault(h, k) for k, h in enumerate(content_hashes)])
