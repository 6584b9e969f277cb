"""segbench-fixmatch's tests: segbench's conformance kit, then what is particular to FixMatch."""

from __future__ import annotations

import pytest
import torch
from harness.api import resolve_params
from harness.config import ConfigError
from harness.testing import check_backbone, check_ssl_method, make_batch, make_context

from segbench_fixmatch.backbone import AttentionUNet, AttentionUNetParams
from segbench_fixmatch.method import FixMatch, FixMatchParams


def tiny_attention_unet() -> AttentionUNet:
    return AttentionUNet(1, 1, AttentionUNetParams(width=4))


def build(**overrides: str) -> FixMatch:
    torch.manual_seed(0)
    return FixMatch(tiny_attention_unet, resolve_params(FixMatch, None, overrides, "method fixmatch"))


def zero_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A supervised loss with no gradient, to isolate the unlabeled term."""
    return logits.float().sum() * 0.0


# --------------------------------------------------------------------------- the conformance kit


def test_backbone_honours_the_contract() -> None:
    check_backbone(AttentionUNet, {"width": 4})


def test_method_honours_the_contract_on_the_kits_backbone_and_on_ours() -> None:
    check_ssl_method(FixMatch)
    check_ssl_method(FixMatch, tiny_attention_unet)


@pytest.mark.segbench_components(distribution="segbench-fixmatch")
def test_installed_components_honour_the_contract(segbench_backbone, segbench_ssl_method) -> None:
    """Runs once per component the installed distribution registers (needs `pip install -e .`)."""
    check_backbone(segbench_backbone.cls, {"width": 4})
    check_ssl_method(segbench_ssl_method.cls)


# --------------------------------------------------------------------------- FixMatch itself


def test_defaults_are_usbs_and_bad_values_are_clear_errors() -> None:
    assert FixMatchParams() == FixMatchParams(threshold=0.95, lambda_u=1.0, hard_label=True, temperature=0.5)
    assert resolve_params(FixMatch, None, {"threshold": "0.8"}, "fixmatch").threshold == 0.8
    with pytest.raises(ConfigError, match="threshold"):
        resolve_params(FixMatch, None, {"threshold": "0.3"}, "fixmatch")


def test_only_confident_pixels_become_pseudo_labels() -> None:
    method = build()
    logits = torch.tensor([[[[-4.0, -1.0, 0.0, 1.0, 4.0]]]])  # p = 0.018, 0.27, 0.5, 0.73, 0.982
    target, confident = method.pseudo_labels(logits)
    assert confident.flatten().tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert target.flatten().tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    soft, _ = build(hard_label="false").pseudo_labels(logits)
    assert torch.allclose(soft, torch.sigmoid(logits / 0.5))


def test_an_unconfident_network_adds_no_unlabeled_loss() -> None:
    out = build(threshold="1.0").train_step(make_batch(), make_context(5, 10))
    assert float(out.logs["mask_ratio"]) == 0.0 and float(out.logs["unsupervised"]) == 0.0


def test_unlabeled_loss_trains_the_network_from_the_strong_view() -> None:
    """The USB Mean Teacher bug (#226) in FixMatch form: the unlabeled loss must carry a gradient."""
    method = build(threshold="0.6")
    with torch.no_grad():
        method.net.decoder.head.bias.fill_(2.0)  # p ~ 0.88 everywhere: confident pseudo-label 1
    out = method.train_step(make_batch(), make_context(5, 10, supervised_loss=zero_loss))
    assert float(out.logs["mask_ratio"]) > 0.5 and float(out.logs["unsupervised"]) > 0
    out.loss.backward()
    assert method.net.decoder.head.bias.grad is not None and float(method.net.decoder.head.bias.grad.abs()) > 0
    assert float(method.net.encoder.stages[0][0].weight.grad.abs().sum()) > 0
