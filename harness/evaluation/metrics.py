"""Per-image binary segmentation metrics with segbench's conventions (DESIGN.md "Conventions").

Overlap metrics (Dice, IoU, precision, recall, specificity, accuracy) come from per-image confusion
counts, vectorised over a batch in torch on any device. Surface metrics (HD95, ASSD) come from
Euclidean distance transforms of the mask boundaries (scipy), one image at a time.
:func:`published_metrics` reproduces the published MGCC code's definitions, quirks included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from harness.errors import UserError

METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "hd95", "assd", "precision", "recall", "specificity", "accuracy")
OVERLAP_NAMES: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity", "accuracy")
PUBLISHED_METRIC_NAMES: tuple[str, ...] = (
    "published_iou",
    "published_dice",
    "published_se",
    "published_pc",
    "published_f1",
    "published_sp",
    "published_acc",
)

#: The metric policy every results file embeds (JSON-ready).
METRIC_POLICY: dict[str, Any] = {
    "threshold": "binary, one logit channel: foreground where sigmoid(logit) > 0.5 (the threshold is recorded)",
    "aggregation": "per image, then the mean over images; no pooling of pixel counts across images",
    "headline": "mean Dice/IoU/HD95/ASSD over images with a lesion (non-empty ground truth), plus the share "
    "of lesion-free images predicted empty (empty_correct)",
    "dice": "2TP / (2TP + FP + FN), computed per image (never derived from IoU)",
    "iou": "TP / (TP + FP + FN), computed per image",
    "empty_masks": {
        "both_empty": "Dice = IoU = 1, HD95 = ASSD = 0",
        "one_empty": "Dice = IoU = 0, HD95 = ASSD = image diagonal hypot(H, W) (in the metric's units)",
    },
    "zero_denominator": "precision, recall: 1 if both masks are empty, else 0; specificity (no background in "
    "the ground truth): 1 if both masks are full, else 0",
    "boundary": "foreground minus its 4-connected binary erosion with zero padding (pixels on the image border "
    "are boundary)",
    "hd95": "max of the two directed 95th percentiles (linear interpolation) of nearest boundary-to-boundary "
    "Euclidean distances (MONAI percentile=95 convention), from distance transforms",
    "assd": "mean of all nearest boundary-to-boundary distances from both directions, pooled",
    "units": "pixels at the evaluation resolution, or mm where the dataset gives a pixel spacing",
    "resolution": {
        "native": "logits cropped to the image's box, resampled bilinearly (align_corners=False) to the original "
        "mask size, then thresholded and compared with the original mask",
        "model": "thresholded on the model grid inside the image's box, compared with the resized mask "
        "(published-style)",
    },
    "published": "published_* columns follow the MGCC code: IoU with 1e-5 smoothing, Dice = 2 IoU / (1 + IoU), "
    "SE/PC/SP/ACC with the ground truth binarised as GT == max(GT) (an empty mask becomes all foreground) "
    "and 1e-6 smoothing, F1 = 2 SE PC / (SE + PC + 1e-6)",
}


class MetricError(UserError, ValueError):
    """Masks or spacing given to a metric are invalid; the message names the value."""


Spacing = float | Sequence[float] | None


def _spacing_pair(spacing: Spacing) -> tuple[float, float] | None:
    """``None`` or a validated (row, column) spacing."""
    if spacing is None:
        return None
    try:
        values = [float(spacing)] * 2 if np.ndim(spacing) == 0 else [float(s) for s in spacing]  # type: ignore[arg-type,union-attr]
    except (TypeError, ValueError):
        values = []
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise MetricError(
            f"pixel spacing {spacing!r} is invalid: give one positive number or two (row, column), e.g. 0.1"
        )
    return values[0], values[1]


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.dtype != np.bool_ or gt.dtype != np.bool_:
        raise MetricError(f"masks must be bool arrays, got {pred.dtype} and {gt.dtype}")
    if pred.ndim != 2 or pred.shape != gt.shape or pred.size == 0:
        raise MetricError(
            f"masks must be two non-empty H x W arrays of the same shape, got {pred.shape} and {gt.shape}"
        )
    return pred, gt


def _check_batch(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None) -> None:
    if pred.dtype != torch.bool or gt.dtype != torch.bool:
        raise MetricError(f"masks must be bool tensors, got {pred.dtype} and {gt.dtype}")
    if pred.ndim != 3 or pred.shape != gt.shape:
        raise MetricError(
            f"masks must be B x H x W tensors of the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}"
        )
    if valid is not None and (valid.dtype != torch.bool or valid.shape != pred.shape):
        raise MetricError(
            f"valid must be a bool tensor of shape {tuple(pred.shape)}, got {valid.dtype} {tuple(valid.shape)}"
        )


# --------------------------------------------------------------------------- overlap metrics


def confusion(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-image confusion counts (tp, fp, fn, tn) of B x H x W bool masks, as int64 tensors of shape B.

    ``valid`` (B x H x W bool) restricts the counts to a region, e.g. an image's box inside a padded grid.
    """
    _check_batch(pred, gt, valid)
    if valid is not None:
        pred, gt = pred & valid, gt & valid
        total = valid.sum(dim=(1, 2))
    else:
        total = torch.full((pred.shape[0],), pred.shape[1] * pred.shape[2], dtype=torch.int64, device=pred.device)
    tp = (pred & gt).sum(dim=(1, 2))
    fp = (pred & ~gt).sum(dim=(1, 2))
    fn = (~pred & gt).sum(dim=(1, 2))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": total - tp - fp - fn}


def _ratio(num: torch.Tensor, den: torch.Tensor, degenerate_ok: torch.Tensor) -> torch.Tensor:
    """num / den, and where den == 0: 1 where ``degenerate_ok`` else 0."""
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, num / safe, degenerate_ok.to(num.dtype))


def overlap_from_counts(counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dice, IoU, precision, recall, specificity and accuracy from :func:`confusion` counts."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    dtype = torch.float32 if tp.device.type == "mps" else torch.float64
    tp, fp, fn, tn = (c.to(dtype) for c in (tp, fp, fn, tn))
    both_empty = (tp + fp + fn) == 0
    both_full = (tn + fp + fn) == 0
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "precision": _ratio(tp, tp + fp, both_empty),
        "recall": _ratio(tp, tp + fn, both_empty),
        "specificity": _ratio(tn, tn + fp, both_full),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn, both_empty),
    }


def overlap_metrics(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-image Dice, IoU, precision, recall, specificity, accuracy of B x H x W bool masks (tensors of shape B)."""
    return overlap_from_counts(confusion(pred, gt, valid))


# --------------------------------------------------------------------------- surface metrics

_CROSS = ndimage.generate_binary_structure(2, 1)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels minus the mask's 4-connected erosion; zero padding, so border pixels count."""
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def image_diagonal(shape: tuple[int, int], spacing: Spacing = None) -> float:
    """hypot(H, W) in pixels, or in physical units with ``spacing``."""
    sy, sx = _spacing_pair(spacing) or (1.0, 1.0)
    return math.hypot(shape[0] * sy, shape[1] * sx)


def directed_distances(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest boundary-to-boundary distances pred→gt and gt→pred (both masks non-empty)."""
    sampling = _spacing_pair(spacing)
    edge_pred, edge_gt = boundary(pred), boundary(gt)
    # every boundary pixel lies inside the union's bounding box, so the transforms can be cropped to it exactly
    rows, cols = np.nonzero(edge_pred | edge_gt)
    box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    edge_pred, edge_gt = edge_pred[box], edge_gt[box]
    # distance_transform_edt measures the distance to the nearest zero, i.e. the nearest boundary pixel
    to_gt = ndimage.distance_transform_edt(~edge_gt, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~edge_pred, sampling=sampling)
    return to_gt[edge_pred], to_pred[edge_gt]


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> dict[str, float]:
    """HD95 and ASSD of one image's H x W bool masks, with the empty-mask policy of :data:`METRIC_POLICY`."""
    pred, gt = _check_pair(pred, gt)
    _spacing_pair(spacing)  # validate even where no distance is measured
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return {"hd95": 0.0, "assd": 0.0}
    if has_pred != has_gt:
        diagonal = image_diagonal(pred.shape, spacing)
        return {"hd95": diagonal, "assd": diagonal}
    d_pred, d_gt = directed_distances(pred, gt, spacing)
    hd95 = max(float(np.percentile(d_pred, 95)), float(np.percentile(d_gt, 95)))
    assd = float(np.concatenate([d_pred, d_gt]).mean())
    return {"hd95": hd95, "assd": assd}


# --------------------------------------------------------------------------- per image


def image_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Spacing = None) -> dict[str, float]:
    """Every metric of :data:`METRIC_NAMES` for one image's H x W bool masks."""
    pred, gt = _check_pair(pred, gt)
    # numpy counts: one CPU image does not need torch's thread pool
    tp, fp, fn = (np.count_nonzero(m) for m in (pred & gt, pred & ~gt, ~pred & gt))
    counts = {"tp": tp, "fp": fp, "fn": fn, "tn": pred.size - tp - fp - fn}
    overlap = overlap_from_counts({k: torch.tensor([v], dtype=torch.int64) for k, v in counts.items()})
    values = {name: float(v[0]) for name, v in overlap.items()}
    values.update(surface_distances(pred, gt, spacing))
    return {name: values[name] for name in METRIC_NAMES}


def published_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The published MGCC code's metrics (src/utils/metrics.py) on one image's bool masks, keys ``published_*``.

    Quirks kept on purpose: SE/PC/SP/ACC binarise the ground truth as GT == max(GT), so an empty
    mask counts as all foreground (an empty prediction then scores SE = PC = SP = ACC = 0 and IoU 1).
    """
    pred, gt = _check_pair(pred, gt)
    intersection = np.count_nonzero(pred & gt)
    union = np.count_nonzero(pred | gt)
    iou = (intersection + 1e-5) / (union + 1e-5)
    dice = (2 * iou) / (iou + 1)
    gt_max = gt == gt.max()
    tp = np.count_nonzero(pred & gt_max)
    fp = np.count_nonzero(pred & ~gt_max)
    fn = np.count_nonzero(~pred & gt_max)
    tn = np.count_nonzero(~pred & ~gt_max)
    se = float(tp) / (float(tp + fn) + 1e-6)
    pc = float(tp) / (float(tp + fp) + 1e-6)
    sp = float(tn) / (float(tn + fp) + 1e-6)
    acc = float(tp + tn) / float(pred.size)
    f1 = 2 * se * pc / (se + pc + 1e-6)
    values = {"iou": iou, "dice": dice, "se": se, "pc": pc, "f1": f1, "sp": sp, "acc": acc}
    return {f"published_{k}": float(v) for k, v in values.items()}
