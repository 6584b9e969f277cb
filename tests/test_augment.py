"""On-device augmentation: the published rotation/flip distribution, joint masks, layouts, views."""

from __future__ import annotations

import itertools

import pytest
import torch

from harness.training.augment import DeviceAugmenter


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/flips of ``x`` (last two dims), in a fixed order."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, (-2, -1))
        out += [r, r.flip(-1)]
    return out


def _which(sample: torch.Tensor, original: torch.Tensor) -> int:
    matches = [i for i, t in enumerate(_dihedral(original)) if torch.equal(sample, t)]
    assert len(matches) == 1, "output is not a rotation/flip of its input"
    return matches[0]


def _expected_distribution() -> list[float]:
    """Probabilities of the 8 transforms under RandomRotate90(p .5) then Flip(p .5), albumentations-style."""
    probs = [0.0] * 8
    base = torch.arange(16.0).view(1, 1, 4, 4)
    rot = {0: 0.5 + 0.5 / 4, 1: 0.5 / 4, 2: 0.5 / 4, 3: 0.5 / 4}
    flips = {"none": 0.5, "h": 0.5 / 3, "v": 0.5 / 3, "both": 0.5 / 3}
    ops = {"none": lambda t: t, "h": lambda t: t.flip(-1), "v": lambda t: t.flip(-2), "both": lambda t: t.flip(-2, -1)}
    for (k, pk), (f, pf) in itertools.product(rot.items(), flips.items()):
        probs[_which(ops[f](torch.rot90(base, k, (-2, -1))), base)] += pk * pf
    return probs


def test_geometric_follows_the_published_distribution() -> None:
    n = 4000
    base = torch.arange(16.0).view(1, 1, 4, 4)
    images = base.expand(n, 1, 4, 4).contiguous()
    aug = DeviceAugmenter(torch.Generator().manual_seed(0))
    out, _ = aug.geometric(images)
    counts = [0] * 8
    for sample in out:
        counts[_which(sample[None], base)] += 1
    for got, want in zip(counts, _expected_distribution(), strict=True):
        assert abs(got / n - want) < 0.03


def test_geometric_transforms_masks_with_their_images() -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(64, 3, 8, 8, generator=g)
    masks = images[:, :1].clone()
    out, out_masks = DeviceAugmenter(torch.Generator().manual_seed(2)).geometric(images, masks)
    assert out.shape == images.shape and out_masks.shape == masks.shape
    assert torch.equal(out[:, :1], out_masks)
    kinds = {_which(o, i) for o, i in zip(out, images, strict=True)}
    assert len(kinds) == 8  # every transform occurs in 64 draws


def test_geometric_is_reproducible_from_the_generator_and_varies_otherwise() -> None:
    images = torch.rand(32, 1, 8, 8)
    a, _ = DeviceAugmenter(torch.Generator().manual_seed(5)).geometric(images)
    b, _ = DeviceAugmenter(torch.Generator().manual_seed(5)).geometric(images)
    c, _ = DeviceAugmenter(torch.Generator().manual_seed(6)).geometric(images)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_geometric_keeps_channels_last_and_matches_the_contiguous_result() -> None:
    images = torch.rand(16, 3, 8, 8)
    cl = images.contiguous(memory_format=torch.channels_last)
    a, _ = DeviceAugmenter(torch.Generator().manual_seed(7)).geometric(images)
    b, _ = DeviceAugmenter(torch.Generator().manual_seed(7)).geometric(cl)
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b)


def test_geometric_on_non_square_images_keeps_the_shape() -> None:
    images = torch.rand(32, 1, 8, 12)
    out, masks = DeviceAugmenter(torch.Generator().manual_seed(8)).geometric(images, images.clone())
    assert out.shape == images.shape
    assert torch.equal(out, masks)
    for o, i in zip(out, images, strict=True):
        assert any(torch.equal(o, t) for t in (i, i.flip(-1), i.flip(-2), i.flip(-2, -1)))


def test_weak_is_a_rotation_or_flip() -> None:
    images = torch.rand(8, 1, 8, 8)
    out = DeviceAugmenter(torch.Generator().manual_seed(9)).weak(images)
    for o, i in zip(out, images, strict=True):
        _which(o, i)


def test_strong_changes_images_and_is_equivariant_to_the_normalisation() -> None:
    """Magnitudes are relative to each image, so strong(a*x + b) == a*strong(x) + b for the same draws."""
    images = torch.rand(16, 1, 16, 16)
    out = DeviceAugmenter(torch.Generator().manual_seed(10)).strong(images)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, images)
    scaled = DeviceAugmenter(torch.Generator().manual_seed(10)).strong(images * 0.004 - 0.01)
    assert torch.allclose(scaled, out * 0.004 - 0.01, atol=1e-5)


def test_strong_keeps_channels_last() -> None:
    images = torch.rand(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    out = DeviceAugmenter(torch.Generator().manual_seed(11)).strong(images)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_random_boxes_have_the_requested_area() -> None:
    like = torch.zeros(500, 1, 64, 64)
    boxes = DeviceAugmenter(torch.Generator().manual_seed(12)).random_boxes(like, (0.05, 0.3))
    assert boxes.shape == (500, 1, 64, 64)
    area = boxes.mean(dim=(1, 2, 3))
    assert area.min() > 0.02 and area.max() < 0.36
    assert 0.12 < area.mean() < 0.22


def test_cutmix_pastes_a_box_of_b_into_a() -> None:
    a = torch.zeros(200, 1, 32, 32)
    b = torch.ones(200, 1, 32, 32)
    mixed, box = DeviceAugmenter(torch.Generator().manual_seed(13)).cutmix(a, b)
    assert torch.equal(mixed, box)  # 1 exactly where b was pasted
    mixed_share = (box.flatten(1).amax(1) > 0).float().mean().item()
    assert 0.4 < mixed_share < 0.6  # p = 0.5
    none, box0 = DeviceAugmenter(torch.Generator().manual_seed(13)).cutmix(a, b, p=0.0)
    assert torch.equal(none, a) and box0.sum() == 0
    with pytest.raises(ValueError, match="one shape"):
        DeviceAugmenter().cutmix(a, b[:, :, :16])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augmenter_runs_on_cuda_with_a_cuda_generator() -> None:
    device = torch.device("cuda")
    images = torch.rand(8, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    masks = images[:, :1].clone()
    aug = DeviceAugmenter(torch.Generator(device=device).manual_seed(0))
    out, out_masks = aug.geometric(images, masks)
    assert out.is_cuda and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[:, :1], out_masks)
    assert aug.strong(images).is_cuda
    mixed, box = aug.cutmix(images, images.flip(0))
    assert mixed.is_cuda and box.is_cuda
