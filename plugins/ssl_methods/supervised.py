"""``supervised``: the labeled images only (the lower bound; with every label, the upper bound)."""

from __future__ import annotations

from typing import Any

from torch import nn

from harness.api import BackboneFactory, Batch, SSLMethod, StepContext, StepOutput
from harness.hookspecs import hookimpl


class Supervised(SSLMethod):
    """One backbone trained with the run's supervised loss on the labeled batch."""

    uses_unlabeled = False

    def __init__(self, build_backbone: BackboneFactory, params: Any) -> None:
        super().__init__(build_backbone, params)
        self.net = build_backbone()

    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        with ctx.autocast():
            logits = self.net(batch.labeled_images)
        loss = ctx.supervised_loss(logits, batch.labeled_masks)
        return StepOutput(loss=loss, logs={"supervised": loss.detach()})

    def inference_network(self) -> nn.Module:
        return self.net

    def describe(self) -> dict[str, Any]:
        return {"evaluated_network": "net", "uses_unlabeled": False}


@hookimpl
def register_ssl_methods(register) -> None:
    register("supervised", Supervised)
