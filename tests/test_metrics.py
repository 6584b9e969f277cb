"""Per-image metrics: edge cases, hand-computed values and a brute-force cross-check of HD95/ASSD."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from harness.errors import UserError
from harness.evaluation.metrics import (
    METRIC_NAMES,
    METRIC_POLICY,
    PUBLISHED_METRIC_NAMES,
    MetricError,
    confusion,
    image_metrics,
    overlap_metrics,
    published_metrics,
    surface_distances,
)

# --------------------------------------------------------------------------- independent reference


def brute_boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour that is background or outside the image."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                yy, xx = y + dy, x + dx
                if not (0 <= yy < h and 0 <= xx < w) or not mask[yy, xx]:
                    out[y, x] = True
                    break
    return out


def linear_percentile(values: np.ndarray, q: float) -> float:
    s = np.sort(values)
    pos = q / 100 * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (pos - lo) * (s[hi] - s[lo]))


def brute_surface(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float]) -> dict[str, float]:
    """All pairwise boundary distances; per-direction 95th percentile, max; pooled mean."""
    scale = np.asarray(spacing, dtype=float)
    bp = np.argwhere(brute_boundary(pred)) * scale
    bg = np.argwhere(brute_boundary(gt)) * scale
    d = np.sqrt(((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1))
    d_pg, d_gp = d.min(axis=1), d.min(axis=0)
    return {
        "hd95": max(linear_percentile(d_pg, 95), linear_percentile(d_gp, 95)),
        "assd": float(np.concatenate([d_pg, d_gp]).mean()),
    }


def random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A union of a few ellipses and rectangles plus speckle; often touching the border."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(-2, h + 1), rng.uniform(-2, w + 1)
        ry, rx = rng.uniform(1, h / 2), rng.uniform(1, w / 2)
        if rng.random() < 0.5:
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            mask |= (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
    mask |= rng.random(shape) < 0.02
    if not mask.any():
        mask[rng.integers(h), rng.integers(w)] = True
    return mask


# --------------------------------------------------------------------------- surface distances


@pytest.mark.parametrize("case", range(20))
def test_surface_distances_match_brute_force(case: int) -> None:
    rng = np.random.default_rng(1000 + case)
    shape = (int(rng.integers(6, 33)), int(rng.integers(6, 33)))
    pred, gt = random_mask(rng, shape), random_mask(rng, shape)
    spacing = (float(rng.uniform(0.3, 2.0)), float(rng.uniform(0.3, 2.0))) if case % 2 else None
    got = surface_distances(pred, gt, spacing)
    want = brute_surface(pred, gt, spacing or (1.0, 1.0))
    assert got["hd95"] == pytest.approx(want["hd95"], rel=1e-9, abs=1e-9)
    assert got["assd"] == pytest.approx(want["assd"], rel=1e-9, abs=1e-9)


def test_hd95_interpolates_each_direction_then_takes_max() -> None:
    # pred boundary -> gt: distances {0, 10}; gt -> pred: {0}. MONAI style: max(9.5, 0) = 9.5
    # (pooling both sets as medpy does would give 9.0; PyMIC's int(0.95 n) index would give 0).
    pred = np.zeros((5, 12), dtype=bool)
    gt = np.zeros((5, 12), dtype=bool)
    gt[2, 1] = True
    pred[2, 1] = pred[2, 11] = True
    got = surface_distances(pred, gt)
    assert got["hd95"] == pytest.approx(9.5)
    assert got["assd"] == pytest.approx(10 / 3)
    # swapping the masks swaps the directions; HD95 is symmetric
    assert surface_distances(gt, pred)["hd95"] == pytest.approx(9.5)
    # anisotropic spacing: the horizontal gap becomes 10 * 0.5 = 5
    assert surface_distances(pred, gt, (2.0, 0.5))["hd95"] == pytest.approx(4.75)


def test_boundary_excludes_the_eroded_interior() -> None:
    # a 3x3 square has 8 boundary pixels (its centre survives the 4-connected erosion)
    pred = np.zeros((7, 7), dtype=bool)
    pred[2:5, 2:5] = True
    gt = np.zeros((7, 7), dtype=bool)
    gt[3, 3] = True
    got = surface_distances(pred, gt)
    # pred -> gt: four edge centres at 1, four corners at sqrt 2; 95th pct of 8 values: index 6.65 -> sqrt 2
    assert got["hd95"] == pytest.approx(math.sqrt(2))
    assert got["assd"] == pytest.approx((4 * 1 + 4 * math.sqrt(2) + 1) / 9)


def test_pixels_on_the_image_border_are_boundary() -> None:
    # full image vs its left column: the full mask's boundary is the image border, so every gt pixel is on it
    full = np.ones((6, 9), dtype=bool)
    column = np.zeros((6, 9), dtype=bool)
    column[:, 0] = True
    got = surface_distances(full, column)
    # pred ring (26 pixels) -> column 0: six 0s, 1..8 twice (top and bottom rows), four 8s (right column);
    # column -> ring: all 0 (column 0 is on the ring). 95th pct of the ring set: index 23.75 -> 8
    assert brute_boundary(full).sum() == 26
    assert got["hd95"] == pytest.approx(8.0)
    assert got["assd"] == pytest.approx((2 * 36 + 4 * 8) / 32)
    # both full: identical border rings, distance 0
    assert surface_distances(full, full) == {"hd95": 0.0, "assd": 0.0}


def test_mask_touching_the_border_matches_brute_force() -> None:
    pred = np.zeros((10, 14), dtype=bool)
    gt = np.zeros((10, 14), dtype=bool)
    pred[0:4, 0:5] = True  # corner blob
    gt[0:6, 2:14] = True  # touches top and right edges
    assert surface_distances(pred, gt) == pytest.approx(brute_surface(pred, gt, (1.0, 1.0)))


# --------------------------------------------------------------------------- empty masks and edge cases


def test_both_empty() -> None:
    empty = np.zeros((7, 11), dtype=bool)
    m = image_metrics(empty, empty)
    assert m == {
        "dice": 1.0,
        "iou": 1.0,
        "hd95": 0.0,
        "assd": 0.0,
        "precision": 1.0,
        "recall": 1.0,
        "specificity": 1.0,
        "accuracy": 1.0,
    }


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_exactly_one_empty_on_a_non_square_image(empty_side: str) -> None:
    empty = np.zeros((7, 11), dtype=bool)
    blob = empty.copy()
    blob[2:4, 3:6] = True
    pred, gt = (empty, blob) if empty_side == "pred" else (blob, empty)
    m = image_metrics(pred, gt)
    diagonal = math.hypot(7, 11)
    assert m["dice"] == m["iou"] == 0.0
    assert m["hd95"] == m["assd"] == pytest.approx(diagonal)
    assert m["precision"] == 0.0 and m["recall"] == 0.0
    n = 7 * 11
    if empty_side == "pred":
        assert m["specificity"] == 1.0 and m["accuracy"] == pytest.approx((n - 6) / n)
    else:
        assert m["specificity"] == pytest.approx((n - 6) / n) and m["accuracy"] == pytest.approx((n - 6) / n)
    # with a spacing the diagonal is in the same physical units
    spaced = image_metrics(pred, gt, spacing=(0.5, 2.0))
    assert spaced["hd95"] == spaced["assd"] == pytest.approx(math.hypot(7 * 0.5, 11 * 2.0))


def test_single_pixel() -> None:
    a = np.zeros((9, 13), dtype=bool)
    b = a.copy()
    a[1, 2] = True
    b[1, 2] = True
    m = image_metrics(a, b)
    assert m["dice"] == m["iou"] == 1.0 and m["hd95"] == m["assd"] == 0.0
    c = np.zeros_like(a)
    c[4, 6] = True  # 3 down, 4 right: distance 5
    m = image_metrics(a, c)
    assert m["dice"] == 0.0 and m["hd95"] == pytest.approx(5.0) and m["assd"] == pytest.approx(5.0)
    assert m["accuracy"] == pytest.approx(1 - 2 / (9 * 13))


def test_full_image() -> None:
    full = np.ones((5, 8), dtype=bool)
    m = image_metrics(full, full)
    assert m == {name: (0.0 if name in ("hd95", "assd") else 1.0) for name in METRIC_NAMES}
    half = np.zeros_like(full)
    half[:, :4] = True
    m = image_metrics(full, half)
    assert m["dice"] == pytest.approx(2 * 20 / 60)
    assert m["iou"] == pytest.approx(0.5)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == 1.0
    assert m["specificity"] == 0.0 and m["accuracy"] == pytest.approx(0.5)
    # ground truth without background, prediction with some: specificity's denominator is 0 -> 0
    assert image_metrics(half, full)["specificity"] == 0.0


# --------------------------------------------------------------------------- overlap metrics


def reference_overlap(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    tp, fp = float((p & g).sum()), float((p & ~g).sum())
    fn, tn = float((~p & g).sum()), float((~p & ~g).sum())
    both_empty = not p.any() and not g.any()

    def ratio(a: float, b: float, ok: bool) -> float:
        return a / b if b else float(ok)

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": ratio(tp, tp + fp + fn, both_empty),
        "precision": ratio(tp, tp + fp, both_empty),
        "recall": ratio(tp, tp + fn, both_empty),
        "specificity": ratio(tn, tn + fp, p.all() and g.all()),
        "accuracy": (tp + tn) / p.size,
    }


def test_overlap_metrics_are_vectorised_per_image() -> None:
    rng = np.random.default_rng(7)
    shape = (9, 13)
    preds = [random_mask(rng, shape) for _ in range(6)] + [np.zeros(shape, bool), np.ones(shape, bool)]
    gts = [random_mask(rng, shape) for _ in range(6)] + [np.zeros(shape, bool), np.zeros(shape, bool)]
    pred, gt = torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(gts))
    counts = confusion(pred, gt)
    assert torch.equal(counts["tp"] + counts["fp"] + counts["fn"] + counts["tn"], torch.full((8,), 9 * 13))
    got = overlap_metrics(pred, gt)
    for b in range(8):
        want = reference_overlap(preds[b], gts[b])
        for name, value in want.items():
            assert float(got[name][b]) == pytest.approx(value), (b, name)
        # image_metrics agrees with the batched path
        single = image_metrics(preds[b], gts[b])
        assert {k: single[k] for k in want} == pytest.approx(want)


def test_confusion_restricted_to_a_valid_region() -> None:
    pred = torch.ones(1, 4, 6, dtype=torch.bool)
    gt = torch.zeros(1, 4, 6, dtype=torch.bool)
    gt[0, 1, :] = True
    valid = torch.zeros_like(pred)
    valid[0, :2, :] = True  # rows 0-1 only
    counts = confusion(pred, gt, valid)
    assert {k: int(v) for k, v in counts.items()} == {"tp": 6, "fp": 6, "fn": 0, "tn": 0}
    assert float(overlap_metrics(pred, gt, valid)["dice"][0]) == pytest.approx(12 / 18)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_overlap_metrics_on_cuda_match_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(5, 33, 47, generator=g) > 0.6
    gt = torch.rand(5, 33, 47, generator=g) > 0.5
    cpu = overlap_metrics(pred, gt)
    cuda = overlap_metrics(pred.cuda(), gt.cuda())
    for name in cpu:
        assert torch.allclose(cpu[name], cuda[name].cpu())


# --------------------------------------------------------------------------- published definitions


def test_published_metrics_on_an_empty_ground_truth() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    m = published_metrics(empty, empty)
    assert set(m) == set(PUBLISHED_METRIC_NAMES)
    assert m["published_iou"] == 1.0 and m["published_dice"] == 1.0
    # GT == max(GT) turns the empty mask into all foreground
    assert m["published_se"] == 0.0 and m["published_pc"] == 0.0 and m["published_f1"] == 0.0
    assert m["published_acc"] == 0.0 and m["published_sp"] == 0.0
    blob = empty.copy()
    blob[:2, :2] = True
    m = published_metrics(blob, empty)
    assert m["published_iou"] == pytest.approx(1e-5 / (4 + 1e-5))
    assert m["published_se"] == pytest.approx(4 / 64) and m["published_pc"] == pytest.approx(1.0, abs=1e-6)
    assert m["published_acc"] == pytest.approx(4 / 64)


def test_published_metrics_on_a_lesion_track_ours() -> None:
    rng = np.random.default_rng(3)
    pred, gt = random_mask(rng, (20, 24)), random_mask(rng, (20, 24))
    pub, ours = published_metrics(pred, gt), image_metrics(pred, gt)
    tp, fp, fn = (pred & gt).sum(), (pred & ~gt).sum(), (~pred & gt).sum()
    iou = (tp + 1e-5) / (tp + fp + fn + 1e-5)
    assert pub["published_iou"] == iou
    assert pub["published_dice"] == 2 * iou / (1 + iou)
    assert pub["published_dice"] == pytest.approx(ours["dice"], abs=1e-5)
    assert pub["published_se"] == pytest.approx(ours["recall"], abs=1e-6)
    assert pub["published_pc"] == pytest.approx(ours["precision"], abs=1e-6)
    assert pub["published_sp"] == pytest.approx(ours["specificity"], abs=1e-6)
    assert pub["published_acc"] == pytest.approx(ours["accuracy"])
    assert pub["published_f1"] == pytest.approx(ours["dice"], abs=1e-5)


# --------------------------------------------------------------------------- API, policy and input errors


def test_policy_and_names() -> None:
    assert json.loads(json.dumps(METRIC_POLICY)) == METRIC_POLICY
    a = np.zeros((4, 5), dtype=bool)
    assert tuple(image_metrics(a, a)) == METRIC_NAMES


@pytest.mark.parametrize("spacing", [0.0, -1.0, (1.0,), (1.0, 2.0, 3.0), float("nan"), "abc"])
def test_invalid_spacing_is_a_user_error(spacing: object) -> None:
    a = np.ones((4, 5), dtype=bool)
    with pytest.raises(UserError, match="spacing"):
        surface_distances(a, a, spacing)  # type: ignore[arg-type]


def test_invalid_masks_are_rejected() -> None:
    with pytest.raises(MetricError, match="bool"):
        image_metrics(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8))
    with pytest.raises(MetricError, match="same shape"):
        image_metrics(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(MetricError, match="B x H x W"):
        confusion(torch.zeros(3, 3, dtype=torch.bool), torch.zeros(3, 3, dtype=torch.bool))


def test_agrees_with_monai_when_installed() -> None:
    metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(11)
    for k in range(6):
        pred, gt = random_mask(rng, (24, 31)), random_mask(rng, (24, 31))
        spacing = (0.7, 1.3) if k % 2 else None
        p, g = (torch.from_numpy(m)[None, None].float() for m in (pred, gt))
        hd95 = metrics.compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing)
        assd = metrics.compute_average_surface_distance(p, g, include_background=True, symmetric=True, spacing=spacing)
        got = surface_distances(pred, gt, spacing)
        assert got["hd95"] == pytest.approx(float(hd95), rel=1e-5)
        assert got["assd"] == pytest.approx(float(assd), rel=1e-5)
