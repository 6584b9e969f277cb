"""``ua-mt`` (SSL4MIS ``train_uncertainty_aware_mean_teacher_2D.py``), binary: one sigmoid logit.

Mean teacher plus an uncertainty mask: the teacher makes ``passes`` noisy predictions of the
unlabeled batch (two copies of the batch per forward pass, as published); the binary entropy of
their mean probability is the uncertainty, and the consistency counts only the pixels where it is
below (0.75 + 0.25 * sigmoid_rampup(t / T)) * ln 2. UA-MT has no 1,000-iteration gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from harness.api import Batch, StepContext, StepOutput
from harness.hookspecs import hookimpl
from harness.training.losses import binary_entropy, sigmoid_mse
from harness.training.schedules import sigmoid_rampup
from plugins.ssl_methods.mean_teacher import MeanTeacher, MeanTeacherParams


@dataclass
class UAMTParams(MeanTeacherParams):
    """SSL4MIS defaults: T = 8 teacher passes, threshold from 0.75 to 1.0 of ln 2."""

    #: iteration before which the consistency loss is off
    consistency_start: int = 0
    #: noisy teacher passes used to estimate uncertainty (even)
    passes: int = 8
    #: uncertainty threshold at the start, as a fraction of ln 2 (ramped)
    threshold_start: float = 0.75
    #: uncertainty threshold at the end of the ramp, as a fraction of ln 2
    threshold_end: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.passes < 2 or self.passes % 2:
            raise ValueError(f"passes must be an even number >= 2 (two batch copies per pass), got {self.passes}")


class UAMT(MeanTeacher):
    """Mean teacher whose consistency is masked by the teacher's predictive entropy."""

    Params = UAMTParams
    PRESETS: dict[str, dict[str, Any]] = {}

    def uncertainty(self, unlabeled: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Binary entropy (nats) of the mean of ``passes`` noisy teacher probabilities, B_u x 1 x H x W."""
        doubled = unlabeled.repeat(2, 1, 1, 1)
        probs = []
        with torch.no_grad():
            for _ in range(self.params.passes // 2):
                with ctx.autocast():
                    logits = self.teacher(self.teacher_input(doubled, ctx))
                probs.append(torch.sigmoid(logits.float()))
        mean = torch.cat(probs).reshape(self.params.passes, unlabeled.shape[0], *probs[0].shape[1:]).mean(0)
        return binary_entropy(mean)

    def threshold(self, ctx: StepContext) -> float:
        """The uncertainty threshold at this step, in nats."""
        p = self.params
        ramp = sigmoid_rampup(ctx.step / max(1, ctx.total_steps))
        return (p.threshold_start + (p.threshold_end - p.threshold_start) * ramp) * math.log(2)

    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        n = batch.labeled_images.shape[0]
        logits, teacher_logits = self.student_and_teacher(batch, ctx)
        certain = (self.uncertainty(batch.unlabeled_images, ctx) < self.threshold(ctx)).float()
        sup = ctx.supervised_loss(logits[:n], batch.labeled_masks)
        dist = sigmoid_mse(logits[n:], teacher_logits, reduction="none")
        cons = (certain * dist).sum() / (certain.sum() + 1e-16)
        w = self.consistency_weight(ctx)
        loss = sup + w * cons if w else sup
        return StepOutput(
            loss=loss,
            logs={
                "supervised": sup.detach(),
                "consistency": cons.detach(),
                "consistency_weight": w,
                "certain_fraction": certain.mean(),
            },
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "passes": self.params.passes}


@hookimpl
def register_ssl_methods(register) -> None:
    register("ua-mt", UAMT)
