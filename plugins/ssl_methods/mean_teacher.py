"""``mean-teacher`` (SSL4MIS ``train_mean_teacher_2D.py``), binary: one sigmoid logit.

The student sees the labeled and unlabeled batch in one forward pass; the teacher, an EMA of the
student that receives no gradient, sees the unlabeled batch plus clamped Gaussian noise, in train
mode (as published: its batch norm uses batch statistics). The noise, N(0, 0.1) clamped to +-0.2 in
SSL4MIS on unit-scale inputs, is scaled by the std of the normalised inputs (``ctx.input_scale``): 1
under z-score, so unchanged there; about 0.004 under ``--normalisation published``, whose inputs lie
at about +-0.01 and which the unscaled noise would swamp. Consistency is the MSE of sigmoid
probabilities, weight ``consistency`` x ramp, held at 0 before ``consistency_start`` iterations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from harness.api import BackboneFactory, Batch, SSLMethod, StepContext, StepOutput
from harness.hookspecs import hookimpl
from harness.training.losses import sigmoid_mse
from harness.training.perturb import draw_normal


@dataclass
class MeanTeacherParams:
    """SSL4MIS defaults; ``consistency_start`` is scaled down in the short presets."""

    #: final weight of the student-teacher probability MSE (reached by the sigmoid ramp)
    consistency: float = 0.1
    #: iteration before which the consistency loss is off
    consistency_start: int = 1000
    #: EMA decay of the teacher weights, in [0, 1)
    ema_decay: float = 0.99
    #: std of the Gaussian noise added to the teacher's input
    noise_std: float = 0.1
    #: the teacher's input noise is clamped to +-noise_clip
    noise_clip: float = 0.2
    #: network that is validated and tested: 'student' or 'teacher'
    eval: Literal["student", "teacher"] = "student"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.consistency_start < 0:
            raise ValueError(f"consistency_start must be >= 0, got {self.consistency_start}")


class MeanTeacher(SSLMethod):
    """Student + EMA teacher with a probability-MSE consistency on noisy unlabeled images."""

    Params = MeanTeacherParams
    # The published gate is 1,000 of 20,000-30,000 iterations; the short presets keep it at ~5 % of T
    # (quick: 300 iterations, medium: 2,500) so the consistency term still acts for most of the run.
    PRESETS = {"quick": {"consistency_start": 15}, "medium": {"consistency_start": 125}}

    def __init__(self, build_backbone: BackboneFactory, params: MeanTeacherParams) -> None:
        super().__init__(build_backbone, params)
        self.student = build_backbone()
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def teacher_input(self, unlabeled: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The unlabeled images plus Gaussian noise (sigma ``noise_std``, clamped to +-``noise_clip``), both
        in units of the input's std (``ctx.input_scale``)."""
        p = self.params
        noise = draw_normal(unlabeled.shape, unlabeled, ctx.generator) * p.noise_std
        noise = noise.clamp(-p.noise_clip, p.noise_clip) * ctx.input_scale
        return unlabeled + noise.to(unlabeled.dtype)

    def consistency_weight(self, ctx: StepContext) -> float:
        """``consistency`` x ramp, or 0 before ``consistency_start``."""
        return ctx.ramp(self.params.consistency) if ctx.step >= self.params.consistency_start else 0.0

    def student_and_teacher(self, batch: Batch, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Student logits on labeled + unlabeled images; teacher logits on the noisy unlabeled ones."""
        x = torch.cat([batch.labeled_images, batch.unlabeled_images])
        with ctx.autocast():
            logits = self.student(x)
            with torch.no_grad():
                teacher_logits = self.teacher(self.teacher_input(batch.unlabeled_images, ctx))
        return logits, teacher_logits

    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        n = batch.labeled_images.shape[0]
        logits, teacher_logits = self.student_and_teacher(batch, ctx)
        sup = ctx.supervised_loss(logits[:n], batch.labeled_masks)
        cons = sigmoid_mse(logits[n:], teacher_logits)
        w = self.consistency_weight(ctx)
        loss = sup + w * cons if w else sup
        return StepOutput(
            loss=loss, logs={"supervised": sup.detach(), "consistency": cons.detach(), "consistency_weight": w}
        )

    @torch.no_grad()
    def after_step(self, ctx: StepContext) -> None:
        """EMA update with SSL4MIS's warm-up: alpha = min(1 - 1/(t + 1), ema_decay)."""
        alpha = min(1.0 - 1.0 / (ctx.step + 1), self.params.ema_decay)
        teacher = list(self.teacher.parameters())
        student = [p.detach() for p in self.student.parameters()]
        # teacher <- alpha * teacher + (1 - alpha) * student, in one fused call
        torch._foreach_lerp_(teacher, student, 1.0 - alpha)

    def inference_network(self) -> nn.Module:
        return self.teacher if self.params.eval == "teacher" else self.student

    def describe(self) -> dict[str, Any]:
        return {
            "evaluated_network": self.params.eval,
            "consistency_start": self.params.consistency_start,
            "teacher_mode": "train (batch statistics), as SSL4MIS",
            "teacher_noise": f"N(0, {self.params.noise_std}) clamped to +-{self.params.noise_clip}, times the std of "
            "the normalised inputs (1 under zscore)",
        }


@hookimpl
def register_ssl_methods(register) -> None:
    register("mean-teacher", MeanTeacher)
