"""Evaluation of fixed logits on hand-made datasets: native resampling, pad boxes, fast_dice, summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness.api import SegDataset
from harness.errors import UserError
from harness.evaluation.evaluate import EvaluationError, evaluate_images, fast_dice, summarise
from harness.evaluation.metrics import METRIC_NAMES, PUBLISHED_METRIC_NAMES, image_metrics

# --------------------------------------------------------------------------- helpers


def make_dataset(
    masks: torch.Tensor,
    native_masks: list[np.ndarray],
    boxes: list[tuple[int, int, int, int]],
    spacing: float | None = None,
    strata: list[str] | None = None,
) -> SegDataset:
    """Image i is filled with the value i, so a predictor can look up its logits."""
    n, _, s, _ = masks.shape
    ids = [f"img{i}" for i in range(n)]
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, s, s).contiguous()
    return SegDataset(
        name="tiny",
        ids=ids,
        images=images,
        masks=masks,
        strata=strata or ["benign"] * n,
        cases=ids,
        native_masks=native_masks,
        boxes=boxes,
        unlabeled=torch.zeros((0, 1, s, s), dtype=torch.uint8),
        unlabeled_ids=[],
        content_hashes={},
        fingerprint="test",
        spacing=spacing,
    )


def table_predict(logits: torch.Tensor):
    """A predictor returning fixed logits per image (looked up by the image's fill value)."""

    def predict(images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.ndim == 4
        return logits.to(images.device)[images[:, 0, 0, 0].long()]

    return predict


def bilinear(src: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resampling with half-pixel centres (align_corners=False), written independently of torch."""

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(pos).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, pos - i0

    y0, y1, fy = axis(out_h, src.shape[0])
    x0, x1, fx = axis(out_w, src.shape[1])
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx
    bottom = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def padded_case() -> tuple[SegDataset, torch.Tensor]:
    """A 6 x 10 native image letterboxed into an 8 x 8 grid: box rows 1-5, all columns."""
    s, box = 8, (1, 0, 5, 8)
    rng = np.random.default_rng(2)
    logits = torch.full((1, 1, s, s), 5.0)  # padding is confidently "foreground": it must never be scored
    logits[0, 0, 1:6, :] = torch.from_numpy(rng.normal(0.0, 2.0, (5, 8))).float()
    native = np.zeros((6, 10), dtype=bool)
    native[1:5, 3:9] = True
    grid = torch.zeros((1, 1, s, s), dtype=torch.bool)
    grid[0, 0, 2:5, 2:7] = True
    return make_dataset(grid, [native], [box]), logits


# --------------------------------------------------------------------------- native resolution


def test_native_resolution_resamples_logits_before_thresholding() -> None:
    dataset, logits = padded_case()
    (row,) = evaluate_images(table_predict(logits), dataset, [0])
    box_logits = logits[0, 0, 1:6, :].double().numpy()
    expected = bilinear(box_logits, 6, 10) > 0
    native = dataset.native_masks[0]
    assert {k: row[k] for k in METRIC_NAMES} == pytest.approx(image_metrics(expected, native))
    assert (row["id"], row["stratum"], row["resolution"]) == ("img0", "benign", "native")
    assert (row["height"], row["width"], row["lesion"]) == (6, 10, True)
    assert row["pred_empty"] == (not expected.any())
    # thresholding first and then resizing (nearest) gives another mask: the order matters here
    nearest = (box_logits > 0)[np.arange(6) * 5 // 6][:, np.arange(10) * 8 // 10]
    assert image_metrics(nearest, native) != image_metrics(expected, native)
    # and so does the sampling grid (corner-aligned sampling would move the boundary)
    corners = torch.nn.functional.interpolate(logits[:, :, 1:6], size=(6, 10), mode="bilinear", align_corners=True)
    assert image_metrics(corners[0, 0].numpy() > 0, native) != image_metrics(expected, native)


def test_a_thin_ridge_vanishes_when_resampled_before_thresholding() -> None:
    # one positive column between strongly negative ones: bilinear resampling to a 10-wide image
    # never lands close enough to it, so the native prediction is empty while the grid's is not
    s = 8
    logits = torch.full((1, 1, s, s), -10.0)
    logits[0, 0, :, 3] = 1.0
    native = np.zeros((8, 10), dtype=bool)
    native[2:6, 3:5] = True
    grid = torch.zeros((1, 1, s, s), dtype=torch.bool)
    grid[0, 0, 2:6, 2:4] = True
    dataset = make_dataset(grid, [native], [(0, 0, s, s)])
    (row,) = evaluate_images(table_predict(logits), dataset, [0], resolution="native")
    assert row["pred_empty"] and row["dice"] == 0.0 and row["hd95"] == pytest.approx(math.hypot(8, 10))
    (row,) = evaluate_images(table_predict(logits), dataset, [0], resolution="model")
    assert not row["pred_empty"] and row["dice"] == pytest.approx(2 * 4 / (8 + 8))


def test_native_spacing_gives_millimetres() -> None:
    dataset, logits = padded_case()
    (pixels,) = evaluate_images(table_predict(logits), dataset, [0])
    dataset.spacing = 0.25
    (mm,) = evaluate_images(table_predict(logits), dataset, [0])
    assert mm["hd95"] == pytest.approx(0.25 * pixels["hd95"]) and mm["assd"] == pytest.approx(0.25 * pixels["assd"])
    assert mm["dice"] == pixels["dice"]


# --------------------------------------------------------------------------- model resolution and pad boxes


def test_model_resolution_scores_only_inside_the_box() -> None:
    s, box = 8, (2, 0, 4, 8)
    logits = torch.full((1, 1, s, s), 5.0)  # foreground everywhere, padding included
    grid = torch.zeros((1, 1, s, s), dtype=torch.bool)
    grid[0, 0, 2:4, :] = True  # first two rows of the box
    native = np.zeros((6, 12), dtype=bool)
    native[0:3, :] = True
    dataset = make_dataset(grid, [native], [box], strata=["malignant"])
    (row,) = evaluate_images(table_predict(logits), dataset, [0], resolution="model")
    # inside the 4 x 8 box: prediction 32 pixels, ground truth 16 (padding would make it 64 vs 16)
    assert row["dice"] == pytest.approx(2 / 3) and row["iou"] == pytest.approx(0.5)
    assert row["precision"] == pytest.approx(0.5) and row["recall"] == 1.0
    assert row["specificity"] == 0.0 and row["accuracy"] == pytest.approx(0.5)
    assert (row["height"], row["width"], row["resolution"], row["stratum"]) == (4, 8, "model", "malignant")
    pred_box = np.ones((4, 8), dtype=bool)
    gt_box = grid[0, 0, 2:6].numpy()
    assert {k: row[k] for k in METRIC_NAMES} == pytest.approx(image_metrics(pred_box, gt_box))
    assert fast_dice(table_predict(logits), dataset, [0])["dice_lesion"] == pytest.approx(2 / 3)
    # at native resolution the whole 6 x 12 image is predicted: Dice = 2*36 / (72 + 36)
    (row,) = evaluate_images(table_predict(logits), dataset, [0])
    assert row["dice"] == pytest.approx(2 * 36 / 108) and (row["height"], row["width"]) == (6, 12)


def test_model_resolution_spacing_is_scaled_to_the_grid() -> None:
    # one mask empty: HD95 is the diagonal, which must be the native diagonal in mm at either resolution
    s, box = 8, (2, 0, 4, 8)
    logits = torch.full((1, 1, s, s), -5.0)
    grid = torch.zeros((1, 1, s, s), dtype=torch.bool)
    grid[0, 0, 3, 3] = True
    native = np.zeros((6, 12), dtype=bool)
    native[2, 5] = True
    dataset = make_dataset(grid, [native], [box], spacing=0.5)
    rows = [evaluate_images(table_predict(logits), dataset, [0], resolution=r)[0] for r in ("native", "model")]
    for row in rows:
        assert row["hd95"] == pytest.approx(math.hypot(6 * 0.5, 12 * 0.5))


# --------------------------------------------------------------------------- fast_dice, batching, summaries


def random_case(n: int = 9, s: int = 16) -> tuple[SegDataset, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    boxes = [(0, 0, s, s), (4, 0, 8, s), (0, 3, s, 10), (2, 2, 12, 12)]
    logits = torch.randn((n, 1, s, s), generator=g) * 3 - 1
    masks = torch.zeros((n, 1, s, s), dtype=torch.bool)
    native, box_list = [], []
    for i in range(n):
        top, left, h, w = boxes[i % len(boxes)]
        box_list.append((top, left, h, w))
        if i % 3 != 2:  # every third image has no lesion
            masks[i, 0, top + 1 : top + h // 2 + 1, left + 2 : left + w - 2] = True
        elif i % 2:
            logits[i] = -4.0  # a lesion-free image predicted empty
        native.append(np.zeros((h + 3, w + 1), dtype=bool))
    return make_dataset(masks, native, box_list), logits


def test_fast_dice_agrees_with_evaluate_images_at_model_resolution() -> None:
    dataset, logits = random_case()
    indices = list(range(len(dataset)))
    rows = evaluate_images(table_predict(logits), dataset, indices, resolution="model", batch_size=2)
    fast = fast_dice(table_predict(logits), dataset, indices, batch_size=4)
    lesion = [r["dice"] for r in rows if r["lesion"]]
    empty = [r["pred_empty"] for r in rows if not r["lesion"]]
    assert 0 < sum(empty) < len(empty)  # the case exercises both outcomes
    assert fast["dice_lesion"] == pytest.approx(sum(lesion) / len(lesion))
    assert fast["dice_all"] == pytest.approx(sum(r["dice"] for r in rows) / len(rows))
    assert fast["empty_correct"] == pytest.approx(sum(empty) / len(empty))
    summary = summarise(rows)
    assert summary["dice"] == pytest.approx(fast["dice_lesion"])
    assert summary["empty_correct"] == pytest.approx(fast["empty_correct"])
    assert (summary["n_images"], summary["n_lesion"], summary["n_empty"]) == (9, 6, 3)


def test_fast_dice_nan_without_qualifying_images() -> None:
    dataset, logits = random_case()
    lesion_only = [0, 1, 3]
    out = fast_dice(table_predict(logits), dataset, lesion_only)
    assert math.isnan(out["empty_correct"]) and not math.isnan(out["dice_lesion"])
    out = fast_dice(table_predict(logits), dataset, [2, 5])
    assert math.isnan(out["dice_lesion"]) and 0.0 <= out["empty_correct"] <= 1.0


def test_rows_do_not_depend_on_batch_size_and_published_columns() -> None:
    dataset, logits = random_case()
    indices = [4, 0, 7, 2]
    one = evaluate_images(table_predict(logits), dataset, indices, batch_size=1, published=True)
    many = evaluate_images(table_predict(logits), dataset, indices, batch_size=16, published=True)
    assert one == many
    assert [r["id"] for r in one] == ["img4", "img0", "img7", "img2"]
    assert all(set(PUBLISHED_METRIC_NAMES) <= set(r) for r in one)
    summary = summarise(one)
    assert summary["published_iou"] == pytest.approx(sum(r["published_iou"] for r in one) / 4)


def test_summarise_by_hand() -> None:
    base = {name: 0.0 for name in METRIC_NAMES}
    rows = [
        {**base, "resolution": "native", "lesion": True, "pred_empty": False, "dice": 0.8, "iou": 0.6, "hd95": 4.0},
        {**base, "resolution": "native", "lesion": True, "pred_empty": True, "dice": 0.0, "iou": 0.0, "hd95": 10.0},
        {**base, "resolution": "native", "lesion": False, "pred_empty": True, "dice": 1.0, "iou": 1.0},
        {**base, "resolution": "native", "lesion": False, "pred_empty": False, "dice": 0.0, "iou": 0.0},
    ]
    s = summarise(rows)
    assert (s["dice"], s["iou"], s["hd95"]) == pytest.approx((0.4, 0.3, 7.0))
    assert s["empty_correct"] == 0.5 and s["dice_all"] == pytest.approx(0.45)
    assert (s["n_images"], s["n_lesion"], s["resolution"]) == (4, 2, "native")
    assert math.isnan(summarise(rows[2:])["dice"])
    with pytest.raises(EvaluationError, match="mix"):
        summarise([rows[0], {**rows[1], "resolution": "model"}])


# --------------------------------------------------------------------------- bad input


def test_bad_settings_are_user_errors() -> None:
    dataset, logits = random_case()
    predict = table_predict(logits)
    with pytest.raises(UserError, match="resolution 'full'"):
        evaluate_images(predict, dataset, [0], resolution="full")
    with pytest.raises(UserError, match=r"\[99\]"):
        evaluate_images(predict, dataset, [0, 99])
    with pytest.raises(UserError, match="threshold"):
        fast_dice(predict, dataset, [0], threshold=1.5)
    with pytest.raises(UserError, match="one logit channel"):
        evaluate_images(lambda x: torch.zeros(x.shape[0], 2, 16, 16), dataset, [0])
