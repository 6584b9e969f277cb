"""``fixmatch``: FixMatch (Sohn et al., NeurIPS 2020) for one-logit binary segmentation.

Each unlabeled image is seen twice: a weak view (the engine's random flip/rotation) and a strong
view of it (intensity changes, noise and cutout from ``ctx.augment.strong``; same geometry, so the
pixels still line up). Pixels where the weak view's prediction is confident (max(p, 1 - p) >=
``threshold``) become pseudo-labels, and the strong view is trained to predict them:

    loss = supervised + lambda_u * mean over unlabeled pixels of (confident * BCE(strong, pseudo-label))

As in USB, the labeled, weak and strong images go through the network in one forward pass (one set
of batch-norm statistics), and the pseudo-labels carry no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from harness.api import BackboneFactory, Batch, SSLMethod, StepContext, StepOutput
from torch import nn


@dataclass
class FixMatchParams:
    """USB's FixMatch defaults (classic_cv configs): ``p_cutoff`` 0.95, ``T`` 0.5, ``hard_label`` True,
    ``ulb_loss_ratio`` 1.0. (SSL4MIS's FixMatch scripts use a 0.8 threshold: ``--set fixmatch.threshold=0.8``.)
    """

    #: confidence a weak-view pixel needs to become a pseudo-label (USB ``p_cutoff``)
    threshold: float = 0.95
    #: weight of the unlabeled loss (USB ``ulb_loss_ratio``)
    lambda_u: float = 1.0
    #: hard 0/1 pseudo-labels; False uses sigmoid(logit / temperature) as a soft target
    hard_label: bool = True
    #: sharpening temperature of soft pseudo-labels (USB ``T``)
    temperature: float = 0.5

    def __post_init__(self) -> None:
        if not 0.5 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0.5, 1] (a binary confidence), got {self.threshold}")
        if self.lambda_u < 0:
            raise ValueError(f"lambda_u must be >= 0, got {self.lambda_u}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


class FixMatch(SSLMethod):
    """One network; confident weak-view predictions supervise the strong view."""

    Params = FixMatchParams

    def __init__(self, build_backbone: BackboneFactory, params: FixMatchParams) -> None:
        super().__init__(build_backbone, params)
        self.net = build_backbone()

    def pseudo_labels(self, weak_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets and the confidence mask (1 where a pixel is used) from detached weak-view logits."""
        p = self.params
        prob = torch.sigmoid(weak_logits)
        confident = (torch.maximum(prob, 1.0 - prob) >= p.threshold).float()
        target = (prob >= 0.5).float() if p.hard_label else torch.sigmoid(weak_logits / p.temperature)
        return target, confident

    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        n_l, n_u = batch.labeled_images.shape[0], batch.unlabeled_images.shape[0]
        weak = batch.unlabeled_images
        strong = ctx.augment.strong(weak)
        with ctx.autocast():
            logits = self.net(torch.cat([batch.labeled_images, weak, strong]))
        sup = ctx.supervised_loss(logits[:n_l], batch.labeled_masks)
        target, confident = self.pseudo_labels(logits[n_l : n_l + n_u].detach().float())
        per_pixel = F.binary_cross_entropy_with_logits(logits[n_l + n_u :].float(), target, reduction="none")
        unsup = (per_pixel * confident).mean()
        loss = sup + self.params.lambda_u * unsup
        return StepOutput(
            loss=loss,
            logs={"supervised": sup.detach(), "unsupervised": unsup.detach(), "mask_ratio": confident.mean()},
        )

    def inference_network(self) -> nn.Module:
        return self.net

    def describe(self) -> dict[str, Any]:
        return {"evaluated_network": "net", "weak_view": "engine flip/rotation", "strong_view": "ctx.augment.strong"}
