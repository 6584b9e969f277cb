"""Supervised and consistency losses: published formulas, fp32 computation, gradient flow."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.training.losses import (
    SUPERVISED_LOSSES,
    bce_dice_loss,
    binary_entropy,
    pseudo_label_bce,
    sigmoid_mse,
    ssl4mis_loss,
)


def _inputs(seed: int = 0, shape: tuple[int, ...] = (3, 1, 16, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g) * 3
    target = (torch.rand(shape, generator=g) > 0.6).float()
    target[0] = 0.0  # an image without foreground
    return logits, target


def test_bce_dice_matches_published_formula() -> None:
    logits, target = _inputs()
    # MGCC losses.py BCEDiceLoss, written out per image
    bce = F.binary_cross_entropy_with_logits(logits, target)
    dices = []
    for z, y in zip(logits, target, strict=True):
        p = torch.sigmoid(z)
        dices.append((2 * (p * y).sum() + 1e-5) / (p.sum() + y.sum() + 1e-5))
    expected = 0.5 * bce + 1 - torch.stack(dices).mean()
    assert torch.allclose(bce_dice_loss(logits, target), expected, atol=1e-6)


def test_ssl4mis_loss_equals_two_class_softmax_ce_plus_dice() -> None:
    logits, target = _inputs(1)
    # SSL4MIS: a 2-channel softmax head with logits (0, z), CE + class-averaged batch Dice
    two = torch.cat([torch.zeros_like(logits), logits], dim=1)
    soft = torch.softmax(two, dim=1)
    labels = target[:, 0].long()
    ce = F.cross_entropy(two, labels)
    onehot = F.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    dice = 0.0
    for c in range(2):
        s, t = soft[:, c], onehot[:, c]
        dice += 1 - (2 * (s * t).sum() + 1e-5) / ((s * s).sum() + (t * t).sum() + 1e-5)
    expected = 0.5 * (ce + dice / 2)
    assert torch.allclose(ssl4mis_loss(logits, target), expected, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SUPERVISED_LOSSES))
def test_losses_are_small_for_a_perfect_prediction_and_large_for_the_opposite(name: str) -> None:
    loss = SUPERVISED_LOSSES[name]
    _, target = _inputs(2)
    target[1, 0, 4:8, 4:8] = 1.0
    perfect = (target * 2 - 1) * 30
    assert loss(perfect, target).item() < 1e-3
    assert loss(-perfect, target).item() > 1.0


@pytest.mark.parametrize("name", sorted(SUPERVISED_LOSSES))
def test_losses_compute_in_fp32_from_bf16_logits(name: str) -> None:
    loss = SUPERVISED_LOSSES[name]
    logits, target = _inputs(3, (2, 1, 64, 64))
    low = logits.bfloat16()
    out = loss(low, target)
    assert out.dtype == torch.float32
    assert torch.equal(out, loss(low.float(), target))


@pytest.mark.parametrize("name", sorted(SUPERVISED_LOSSES))
def test_bf16_autocast_and_fp32_losses_agree(name: str) -> None:
    """The same network and inputs under bf16 autocast and in fp32 give the same loss (65k pixels)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 256, 256, generator=g)
    yy, xx = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    target = (((yy - 128) ** 2 + (xx - 100) ** 2) < 40**2).float().expand(2, 1, 256, 256)
    loss = SUPERVISED_LOSSES[name]
    ref = loss(net(x), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = net(x)
    assert logits.dtype == torch.bfloat16
    low = loss(logits, target)
    assert low.dtype == torch.float32
    assert abs(low.item() - ref.item()) < 1e-3  # measured ~2e-5


def test_sigmoid_mse_is_symmetric_and_flows_into_both_sides() -> None:
    a = torch.randn(2, 1, 8, 8, requires_grad=True)
    b = torch.randn(2, 1, 8, 8, requires_grad=True)
    value = sigmoid_mse(a, b)
    assert torch.allclose(value, sigmoid_mse(b, a))
    assert torch.allclose(value, ((torch.sigmoid(a) - torch.sigmoid(b)) ** 2).mean())
    assert sigmoid_mse(a, a).item() == 0.0
    value.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert b.grad is not None and b.grad.abs().sum() > 0
    assert sigmoid_mse(a.bfloat16(), b.bfloat16()).dtype == torch.float32
    assert sigmoid_mse(a, b, reduction="none").shape == a.shape


def test_binary_entropy_range() -> None:
    p = torch.tensor([0.0, 0.5, 1.0])
    h = binary_entropy(p)
    assert h[1].item() == pytest.approx(math.log(2), abs=1e-5)
    assert h[0].abs().item() < 1e-5 and h[2].abs().item() < 1e-5


def test_pseudo_label_bce_uses_the_detached_hard_label_of_the_other() -> None:
    a = torch.randn(2, 1, 8, 8, requires_grad=True)
    b = torch.randn(2, 1, 8, 8, requires_grad=True)
    value = pseudo_label_bce(a, b)
    expected = F.binary_cross_entropy_with_logits(a, (torch.sigmoid(b) > 0.5).float())
    assert torch.allclose(value, expected)
    value.backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert b.grad is None
