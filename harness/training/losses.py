"""Losses on one-logit binary segmentation outputs, always computed in fp32.

Logits may come out of a bf16 autocast region: every function casts them with ``.float()`` first,
because bf16 sums over 65k pixels and sigmoid differences of 1e-3 lose precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

SupervisedLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """MGCC's supervised loss: ``0.5 * BCEWithLogits + (1 - mean_b dice_b)``.

    The soft Dice of each image uses sums over its pixels; the batch mean follows (REFERENCE §2.5).
    """
    z = logits.float()
    y = target.float()
    bce = F.binary_cross_entropy_with_logits(z, y)
    p = torch.sigmoid(z).flatten(1)
    y = y.flatten(1)
    dice = (2.0 * (p * y).sum(1) + smooth) / (p.sum(1) + y.sum(1) + smooth)
    return 0.5 * bce + (1.0 - dice.mean())


def _ssl4mis_dice(score: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """SSL4MIS ``DiceLoss._dice_loss``: one Dice over the whole batch with squared denominators."""
    intersect = (score * target).sum()
    return 1.0 - (2.0 * intersect + smooth) / ((score * score).sum() + (target * target).sum() + smooth)


def ssl4mis_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSL4MIS's ``0.5 * (CE + Dice)`` written for one logit.

    A two-class softmax over logits (0, z) equals a sigmoid of z, so CE becomes BCE-with-logits and
    the class-averaged Dice becomes the mean of the foreground Dice (p, y) and the background Dice
    (1 - p, 1 - y), each over the whole batch as in SSL4MIS.
    """
    z = logits.float()
    y = target.float()
    ce = F.binary_cross_entropy_with_logits(z, y)
    p = torch.sigmoid(z)
    dice = 0.5 * (_ssl4mis_dice(p, y) + _ssl4mis_dice(1.0 - p, 1.0 - y))
    return 0.5 * (ce + dice)


#: the supervised losses a run can select with ``--set loss=NAME``
SUPERVISED_LOSSES: dict[str, SupervisedLoss] = {
    "bce-dice": bce_dice_loss,
    "ssl4mis": ssl4mis_loss,
}


def sigmoid_mse(
    a_logits: torch.Tensor, b_logits: torch.Tensor, reduction: Literal["mean", "none"] = "mean"
) -> torch.Tensor:
    """Squared difference of sigmoid probabilities (the CCT/MGCC/mean-teacher consistency).

    Gradients flow into whichever side is not detached by the caller.
    """
    diff = (torch.sigmoid(a_logits.float()) - torch.sigmoid(b_logits.float())) ** 2
    if reduction == "mean":
        return diff.mean()
    if reduction == "none":
        return diff
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean' or 'none'")


def binary_entropy(prob: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-pixel predictive entropy (nats) of a foreground probability, as UA-MT (``log(p + 1e-6)``)."""
    p = prob.float()
    return -(p * torch.log(p + eps) + (1.0 - p) * torch.log(1.0 - p + eps))


def pseudo_label_bce(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """BCE of ``logits`` against the hard pseudo-label ``sigmoid(other) > 0.5`` (detached), as CPS."""
    target = (other_logits.detach().float() > 0).float()  # sigmoid(z) > 0.5  <=>  z > 0
    return F.binary_cross_entropy_with_logits(logits.float(), target)
