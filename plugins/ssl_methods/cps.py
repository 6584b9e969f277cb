"""``cps`` (SSL4MIS ``train_cross_pseudo_supervision_2D.py``), binary: one sigmoid logit.

Two networks of the same architecture, each with its own random initialisation, see the same
labeled + unlabeled batch. Each is supervised on the labeled part and, on the unlabeled part, by
BCE against the other's detached hard pseudo-label (sigmoid > 0.5), weight ``consistency`` x ramp.
Network 1 is evaluated. One SGD optimiser per network by default, as published.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.api import BackboneFactory, Batch, SSLMethod, StepContext, StepOutput
from harness.hookspecs import hookimpl
from harness.training.losses import pseudo_label_bce


@dataclass
class CPSParams:
    """SSL4MIS defaults."""

    #: final weight of the cross pseudo-supervision loss (reached by the sigmoid ramp)
    consistency: float = 0.1
    #: one optimiser for both networks instead of one each
    shared_optimizer: bool = False


class CPS(SSLMethod):
    """Cross pseudo supervision between two networks."""

    Params = CPSParams

    def __init__(self, build_backbone: BackboneFactory, params: CPSParams) -> None:
        super().__init__(build_backbone, params)
        self.net1 = build_backbone()
        self.net2 = build_backbone()

    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        n = batch.labeled_images.shape[0]
        x = torch.cat([batch.labeled_images, batch.unlabeled_images])
        with ctx.autocast():
            out1 = self.net1(x)
            out2 = self.net2(x)
        sup1 = ctx.supervised_loss(out1[:n], batch.labeled_masks)
        sup2 = ctx.supervised_loss(out2[:n], batch.labeled_masks)
        pseudo1 = pseudo_label_bce(out1[n:], out2[n:])
        pseudo2 = pseudo_label_bce(out2[n:], out1[n:])
        w = ctx.ramp(self.params.consistency)
        loss = sup1 + sup2 + w * (pseudo1 + pseudo2)
        return StepOutput(
            loss=loss,
            logs={
                "supervised": sup1.detach(),
                "supervised_net2": sup2.detach(),
                "consistency": pseudo1.detach(),
                "consistency_net2": pseudo2.detach(),
                "consistency_weight": w,
            },
        )

    def optimizer_groups(self) -> list[list[dict[str, Any]]]:
        """One optimiser per network, or one for both with ``shared_optimizer``."""
        p1 = [p for p in self.net1.parameters() if p.requires_grad]
        p2 = [p for p in self.net2.parameters() if p.requires_grad]
        if self.params.shared_optimizer:
            return [[{"params": p1 + p2}]]
        return [[{"params": p1}], [{"params": p2}]]

    def inference_network(self) -> nn.Module:
        return self.net1

    def describe(self) -> dict[str, Any]:
        return {
            "evaluated_network": "net1",
            "optimizers": 1 if self.params.shared_optimizer else 2,
        }


@hookimpl
def register_ssl_methods(register) -> None:
    register("cps", CPS)
