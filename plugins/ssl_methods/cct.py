"""``cct`` (SSL4MIS ``train_cross_consistency_training_2D.py`` with ``UNet_CCT``), binary.

One encoder (with all context stages), a main decoder and three auxiliary decoders. Every
auxiliary decoder reads all feature levels perturbed by one function: aux 1 FeatureNoise, aux 2
Dropout, aux 3 FeatureDropout (SSL4MIS order). One forward pass over labeled + unlabeled images;
supervised loss averaged over the four decoders on the labeled part; consistency = mean over the
auxiliary decoders of MSE(sigmoid main, sigmoid aux) on the unlabeled part, neither side detached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.api import Backbone, BackboneFactory, Batch, SSLMethod, StepContext, StepOutput
from harness.hookspecs import hookimpl
from harness.training.losses import sigmoid_mse
from harness.training.perturb import Dropout, FeatureDropout, FeatureNoise, Perturbation, perturb_all


@dataclass
class CCTParams:
    """SSL4MIS ``UNet_CCT`` defaults (consistency 0.1 with the shared ramp)."""

    #: final weight of the unlabeled consistency loss (reached by the sigmoid ramp)
    consistency: float = 0.1
    #: auxiliary decoder 1: uniform feature noise in +-noise_range, multiplicative
    noise_range: float = 0.3
    #: auxiliary decoder 2: channel dropout probability on the features
    dropout: float = 0.3
    #: auxiliary decoder 3 (feature dropout): lower bound of the random attention threshold
    drop_low: float = 0.7
    #: auxiliary decoder 3 (feature dropout): upper bound of the random attention threshold
    drop_high: float = 0.9

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.drop_low <= self.drop_high:
            raise ValueError(f"need 0 <= drop_low <= drop_high, got {self.drop_low} and {self.drop_high}")
        if self.noise_range < 0:
            raise ValueError(f"noise_range must be >= 0, got {self.noise_range}")


def make_perturbations(params: CCTParams) -> dict[str, Perturbation]:
    """The three perturbations with the ranges in ``params``, by name."""
    return {
        FeatureNoise.name: FeatureNoise(params.noise_range),
        Dropout.name: Dropout(params.dropout),
        FeatureDropout.name: FeatureDropout(params.drop_low, params.drop_high),
    }


def cross_consistency_step(
    outputs: list[torch.Tensor], batch: Batch, ctx: StepContext, max_weight: float
) -> StepOutput:
    """Loss of a main + auxiliary decoder step: ``outputs[0]`` is the main decoder's logits.

    Rows ``[:B_l]`` are the labeled images, the rest the unlabeled ones.
    """
    n = batch.labeled_images.shape[0]
    sup_terms = [ctx.supervised_loss(o[:n], batch.labeled_masks) for o in outputs]
    sup = torch.stack(sup_terms).mean()
    main_u = outputs[0][n:]
    if main_u.shape[0]:
        cons = torch.stack([sigmoid_mse(main_u, o[n:]) for o in outputs[1:]]).mean()
    else:
        cons = sup.new_zeros(())
    w = ctx.ramp(max_weight)
    logs: dict[str, torch.Tensor | float] = {
        "supervised": sup.detach(),
        "supervised_main": sup_terms[0].detach(),
        "consistency": cons.detach(),
        "consistency_weight": w,
    }
    return StepOutput(loss=sup + w * cons, logs=logs)


class CCT(SSLMethod):
    """Cross-consistency training: three perturbed auxiliary decoders on the same features."""

    Params = CCTParams
    #: aux decoder k gets perturbation ORDER[k]
    ORDER: tuple[str, ...] = (FeatureNoise.name, Dropout.name, FeatureDropout.name)

    def __init__(self, build_backbone: BackboneFactory, params: CCTParams) -> None:
        super().__init__(build_backbone, params)
        self.backbone: Backbone = build_backbone()
        self.check_backbone(self.backbone)
        self.aux_decoders = nn.ModuleList([self.backbone.new_decoder() for _ in range(3)])
        available = make_perturbations(params)
        self.perturbations: list[Perturbation] = [available[name] for name in self.perturbation_order()]

    def check_backbone(self, backbone: Backbone) -> None:
        """Raise a clear error when the backbone cannot host this method (CCT takes any backbone)."""

    def perturbation_order(self) -> tuple[str, ...]:
        """Names of the perturbations of aux decoders 1, 2 and 3."""
        return self.ORDER

    def aux_context_depths(self) -> list[int]:
        """How many context stages the bottleneck of each aux decoder has been through."""
        n = len(self.backbone.context)
        return [n, n, n]

    def decoder_outputs(self, x: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
        """Logits of the main decoder, then of aux decoders 1-3, from one encoder pass over ``x``."""
        features = self.backbone.apply_context(self.backbone.encode(x))
        outputs = [self.backbone.decoder(features)]
        for decoder, perturbation in zip(self.aux_decoders, self.perturbations, strict=True):
            outputs.append(decoder(perturb_all(features, perturbation, generator)))
        return outputs

    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        x = torch.cat([batch.labeled_images, batch.unlabeled_images])
        with ctx.autocast():
            outputs = self.decoder_outputs(x, ctx.generator)
        return cross_consistency_step(outputs, batch, ctx, self.params.consistency)

    def inference_network(self) -> nn.Module:
        """The backbone: encoder, every context stage and the main decoder (shared weights)."""
        return self.backbone

    def describe(self) -> dict[str, Any]:
        return {
            "evaluated_network": "main decoder (encoder + all context stages + main decoder)",
            "aux_perturbations": list(self.perturbation_order()),
            "aux_context_depths": self.aux_context_depths(),
            "single_forward_labeled_and_unlabeled": True,
        }


@hookimpl
def register_ssl_methods(register) -> None:
    register("cct", CCT)
