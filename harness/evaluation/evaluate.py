"""Evaluation of a trained network on dataset images: per-image rows, fast validation Dice, summaries.

``predict(images)`` takes an N x 1 x S x S uint8 tensor on the evaluation device and returns
N x 1 x S x S logits; it owns normalisation and eval mode. Images live in ``dataset.boxes[i]``
(top, left, height, width) inside the S x S grid; pixels outside the box are padding and never scored.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from harness import progress
from harness.api import SegDataset
from harness.errors import UserError
from harness.evaluation.metrics import METRIC_NAMES, PUBLISHED_METRIC_NAMES, confusion, image_metrics, published_metrics

Predict = Callable[[torch.Tensor], torch.Tensor]
RESOLUTIONS = ("native", "model")


class EvaluationError(UserError, ValueError):
    """An evaluation setting or a prediction is invalid; the message names the value."""


def _check_settings(dataset: SegDataset, indices: list[int], batch_size: int, threshold: float) -> list[int]:
    """Validated settings; returns the indices as Python ints."""
    try:
        indices = [operator.index(i) for i in indices]
    except TypeError as exc:
        raise EvaluationError(f"image indices must be integers: {exc}") from None
    bad = [i for i in indices if not 0 <= i < len(dataset)]
    if bad:
        raise EvaluationError(f"image indices {bad[:5]} are outside dataset {dataset.name!r} (0..{len(dataset) - 1})")
    if batch_size < 1:
        raise EvaluationError(f"batch_size {batch_size} must be at least 1")
    if not 0.0 < threshold < 1.0:
        raise EvaluationError(f"threshold {threshold} must lie strictly between 0 and 1, e.g. 0.5")
    return indices


def _predicted_batches(
    predict: Predict, dataset: SegDataset, indices: list[int], batch_size: int, device: torch.device
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(indices, float logits N x 1 x S x S on ``device``) per batch, without gradients."""
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        images = dataset.images[torch.as_tensor(chunk, device=dataset.images.device)].to(device)
        with torch.no_grad():
            logits = predict(images)
        if tuple(logits.shape) != tuple(images.shape):
            raise EvaluationError(
                f"predict returned logits of shape {tuple(logits.shape)} for images of shape {tuple(images.shape)}; "
                "it must return one logit channel at the input size"
            )
        yield chunk, logits.float()


def _model_spacing(dataset: SegDataset, i: int) -> tuple[float, float] | None:
    """Pixel spacing on the model grid: the native spacing scaled by how much the box shrank the image."""
    if dataset.spacing is None:
        return None
    _, _, h, w = dataset.boxes[i]
    native_h, native_w = dataset.native_masks[i].shape
    return dataset.spacing * native_h / h, dataset.spacing * native_w / w


def evaluate_images(
    predict: Predict,
    dataset: SegDataset,
    indices: list[int],
    *,
    resolution: str = "native",
    published: bool = False,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    threshold: float = 0.5,
    label: str = "evaluate",
) -> list[dict[str, Any]]:
    """One row per image: id, stratum, lesion, pred_empty, height, width, resolution and every metric.

    ``resolution="native"``: logits cropped to the image's box, resampled bilinearly
    (align_corners=False) to the original mask size, then thresholded and compared with the original
    mask. ``"model"``: thresholded on the model grid inside the box and compared with the resized
    mask. ``height``/``width`` are the evaluated size; ``lesion`` is whether the evaluated ground truth
    is non-empty. ``published=True`` adds the published MGCC definitions (``published_*``).
    Progress goes to the current reporter under ``label``.
    """
    if resolution not in RESOLUTIONS:
        raise EvaluationError(f"evaluation resolution {resolution!r} is unknown: use one of {', '.join(RESOLUTIONS)}")
    indices = _check_settings(dataset, indices, batch_size, threshold)
    device = torch.device(device)
    rows: list[dict[str, Any]] = []
    with progress.task(label, total=len(indices), unit="img") as bar:
        for chunk, logits in _predicted_batches(predict, dataset, indices, batch_size, device):
            _score_batch(rows, chunk, logits, dataset, resolution, published, threshold)
            bar.advance(len(chunk))
    return rows


def _score_batch(
    rows: list[dict[str, Any]],
    chunk: list[int],
    logits: torch.Tensor,
    dataset: SegDataset,
    resolution: str,
    published: bool,
    threshold: float,
) -> None:
    """Append one row per image of a predicted batch."""
    for k, i in enumerate(chunk):
        top, left, h, w = dataset.boxes[i]
        box_logits = logits[k : k + 1, :, top : top + h, left : left + w]
        if resolution == "native":
            gt = dataset.native_masks[i].astype(bool, copy=False)
            box_logits = F.interpolate(box_logits, size=gt.shape, mode="bilinear", align_corners=False)
            spacing = dataset.spacing
        else:
            gt = dataset.masks[i, 0, top : top + h, left : left + w].cpu().numpy()
            spacing = _model_spacing(dataset, i)
        pred = (torch.sigmoid(box_logits[0, 0]) > threshold).cpu().numpy()
        row: dict[str, Any] = {
            "id": dataset.ids[i],
            "stratum": dataset.strata[i],
            "lesion": bool(gt.any()),
            "pred_empty": not bool(pred.any()),
            "height": int(gt.shape[0]),
            "width": int(gt.shape[1]),
            "resolution": resolution,
        }
        row.update(image_metrics(pred, gt, spacing))
        if published:
            row.update(published_metrics(pred, gt))
        rows.append(row)


def _box_masks(dataset: SegDataset, chunk: list[int]) -> torch.Tensor:
    """B x S x S bool: True inside each image's box."""
    size = dataset.images.shape[-2:]
    valid = torch.zeros((len(chunk), *size), dtype=torch.bool)
    for k, i in enumerate(chunk):
        top, left, h, w = dataset.boxes[i]
        valid[k, top : top + h, left : left + w] = True
    return valid


def fast_dice(
    predict: Predict,
    dataset: SegDataset,
    indices: list[int],
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    threshold: float = 0.5,
) -> dict[str, float]:
    """Validation Dice at model resolution, accumulated on the device with one host sync at the end.

    Returns ``dice_lesion`` (mean over images with a lesion), ``dice_all`` (mean over all images) and
    ``empty_correct`` (share of lesion-free images predicted empty); NaN where no image qualifies.
    """
    indices = _check_settings(dataset, indices, batch_size, threshold)
    device = torch.device(device)
    dtype = torch.float32 if device.type == "mps" else torch.float64
    # dice over lesion images, lesion images, dice over all, lesion-free images, lesion-free predicted empty
    sums = torch.zeros(5, dtype=dtype, device=device)
    for chunk, logits in _predicted_batches(predict, dataset, indices, batch_size, device):
        gt = dataset.masks[torch.as_tensor(chunk, device=dataset.masks.device), 0].to(device)
        pred = torch.sigmoid(logits[:, 0]) > threshold
        counts = confusion(pred, gt, _box_masks(dataset, chunk).to(device))
        tp, fp, fn = (counts[k].to(dtype) for k in ("tp", "fp", "fn"))
        lesion = (tp + fn) > 0
        denominator = 2 * tp + fp + fn
        dice = torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.ones_like(tp))
        empty = ~lesion
        sums += torch.stack(
            [
                (dice * lesion).sum(),
                lesion.sum(),
                dice.sum(),
                empty.sum(),
                (empty & ((tp + fp) == 0)).sum(),
            ]
        ).to(dtype)
    dice_lesion_sum, n_lesion, dice_sum, n_empty, n_empty_correct = sums.tolist()
    return {
        "dice_lesion": dice_lesion_sum / n_lesion if n_lesion else math.nan,
        "dice_all": dice_sum / len(indices) if indices else math.nan,
        "empty_correct": n_empty_correct / n_empty if n_empty else math.nan,
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers of one evaluation's rows.

    Every metric of :data:`METRIC_NAMES` averaged over images with a lesion; ``dice_all`` over all
    images; ``empty_correct`` = share of lesion-free images predicted empty; ``published_*`` (when
    present) averaged over all images, as the published validation loop does. NaN where no image
    qualifies.
    """
    resolutions = sorted({r["resolution"] for r in rows})
    if len(resolutions) > 1:
        raise EvaluationError(f"rows mix evaluation resolutions {resolutions}; summarise each resolution separately")
    lesion = [r for r in rows if r["lesion"]]
    empty = [r for r in rows if not r["lesion"]]
    out: dict[str, Any] = {
        "resolution": resolutions[0] if resolutions else None,
        "n_images": len(rows),
        "n_lesion": len(lesion),
        "n_empty": len(empty),
    }
    out.update({name: _mean([r[name] for r in lesion]) for name in METRIC_NAMES})
    out["dice_all"] = _mean([r["dice"] for r in rows])
    out["empty_correct"] = _mean([float(r["pred_empty"]) for r in empty])
    if rows and all(name in rows[0] for name in PUBLISHED_METRIC_NAMES):
        out.update({name: _mean([r[name] for r in rows]) for name in PUBLISHED_METRIC_NAMES})
    return out
