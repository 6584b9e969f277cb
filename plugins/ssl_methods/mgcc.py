"""``mgcc`` (the published ``train.py`` + ``MGCC.py``; REFERENCE §1.5, §2.5), on any backbone.

CCT with multi-level attachment: aux decoder k reads the bottleneck after k - 1 context stages
(0, 1, 2), the main decoder after all of them, and every skip level of an aux decoder is perturbed
like its bottleneck. One forward pass over the concatenated labeled + unlabeled batch (batch norm
statistics mix both). Supervised loss averaged over the four decoders, consistency = mean over the
aux decoders of MSE(sigmoid main, sigmoid aux), neither side detached, weight 7 x ramp.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch

from harness.api import Backbone
from harness.config.params import ConfigError
from harness.hookspecs import hookimpl
from harness.training.perturb import Dropout, FeatureDropout, FeatureNoise, perturb_all
from plugins.ssl_methods.cct import CCT, CCTParams

#: aux decoder perturbations of the two published commits (REFERENCE §1.5)
ORDERS: dict[str, tuple[str, str, str]] = {
    "release": (FeatureDropout.name, Dropout.name, FeatureNoise.name),  # 81350d5, a9c8bd3
    "first-commit": (FeatureNoise.name, Dropout.name, FeatureDropout.name),  # 0721b0a, = SSL4MIS
}

MIN_CONTEXT_STAGES = 3


@dataclass
class MGCCParams(CCTParams):
    """Published defaults: consistency weight 7, release perturbation order."""

    #: final weight of the multi-level cross-consistency loss (published 7)
    consistency: float = 7.0
    #: which perturbation each auxiliary decoder gets: 'release' (published code) or 'first-commit'
    order: Literal["release", "first-commit"] = "release"


class MGCC(CCT):
    """Multi-level global context cross consistency."""

    Params = MGCCParams

    def check_backbone(self, backbone: Backbone) -> None:
        n = len(backbone.context)
        if n >= MIN_CONTEXT_STAGES:
            return
        name = type(backbone).__name__
        params_cls = backbone.Params
        fields = {f.name for f in dataclasses.fields(params_cls)} if dataclasses.is_dataclass(params_cls) else set()
        if "context_lengths" in fields:
            how = "add stages with e.g. --set backbone.context_lengths=1,1,1"
        else:
            how = "use a backbone with context stages, e.g. cmunet, or one whose parameters add them"
        raise ConfigError(
            f"mgcc attaches its auxiliary decoders after 0, 1 and 2 context stages and needs a backbone with at "
            f"least {MIN_CONTEXT_STAGES} context stages, but backbone {name} has {n}; {how}"
        )

    def perturbation_order(self) -> tuple[str, ...]:
        return ORDERS[self.params.order]

    def aux_context_depths(self) -> list[int]:
        return [0, 1, 2]

    def decoder_outputs(self, x: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
        """Main logits, then aux 1-3, whose bottleneck has been through 0, 1 and 2 context stages."""
        *skips, deep = self.backbone.encode(x)
        stages = list(self.backbone.context)
        aux = []
        for depth, (decoder, perturbation) in enumerate(zip(self.aux_decoders, self.perturbations, strict=True)):
            aux.append(decoder(perturb_all([*skips, deep], perturbation, generator)))
            deep = stages[depth](deep)
        for stage in stages[len(self.aux_decoders) :]:
            deep = stage(deep)
        return [self.backbone.decoder([*skips, deep]), *aux]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "order": self.params.order}


@hookimpl
def register_ssl_methods(register) -> None:
    register("mgcc", MGCC)
