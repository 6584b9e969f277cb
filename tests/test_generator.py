"""The ldm and none generators: fit + sample, determinism, save/load, latent scale, conditioning."""

from __future__ import annotations

import hashlib
import json
import math
from functools import cache
from pathlib import Path

import pytest
import torch

from harness.api import resolve_params
from harness.data.datasets import load_dataset
from harness.generation.memorisation import fidelity, uniform_noise
from harness.generation.pool import synthetic_pool
from harness.plugins import get_registry
from plugins.generators.ldm import LatentDiffusionGenerator, LDMError, LDMParams, networks
from plugins.generators.none import NoGenerator

SIZE = 32
TINY = {
    "ae_channels": (8, 16, 16),  # 4x down-sampling: 8x8x4 latents
    "ae_norm_groups": 8,
    "latent_channels": 4,
    "recon_loss": "l1",
    "ae_steps": 25,
    "ae_batch": 8,
    "ae_lr": 2e-3,
    "unet_channels": (16, 32),
    "unet_norm_groups": 8,
    "unet_steps": 25,
    "unet_batch": 16,
    "unet_lr": 2e-3,
    "ema_decay": 0.9,
    "sample_steps": 5,
    "sample_batch": 4,
    "amp": "fp32",
}


@cache
def phantom(count: int = 24) -> tuple[torch.Tensor, tuple[str, ...]]:
    data = load_dataset(f"phantom:count={count},size=64", image_size=SIZE)
    return data.images, tuple(data.strata)


def tiny(**changes) -> LDMParams:
    return LDMParams(**{**TINY, **changes})


@cache
def fitted(seed: int = 0) -> tuple[LatentDiffusionGenerator, dict]:
    images, _ = phantom()
    gen = LatentDiffusionGenerator(tiny(), SIZE, seed, torch.device("cpu"))
    facts = gen.fit(images[:16], workdir=None)
    return gen, facts


def test_both_generators_are_registered():
    registry = get_registry()
    assert registry.get("generator", "ldm") is LatentDiffusionGenerator
    assert registry.get("generator", "none") is NoGenerator
    assert not NoGenerator.produces_images and LatentDiffusionGenerator.produces_images


def test_fit_then_sample_gives_finite_uint8_images_of_the_run_size():
    gen, facts = fitted()
    samples = gen.sample(6, seed=3)
    assert samples.shape == (6, 1, SIZE, SIZE) and samples.dtype == torch.uint8
    assert samples.float().std() > 0  # not a constant image
    for key in ("fit_seconds", "autoencoder_final_loss", "denoiser_final_loss", "latent_scale"):
        assert math.isfinite(facts[key]), key
    assert facts["n_images"] == 16 and facts["precision"] == "fp32"
    described = gen.describe()
    assert described["autoencoder_parameters"] > 0 and described["denoiser_parameters"] > 0
    assert described["latent_shape"] == [4, 8, 8] and described["ema"]["used"]
    assert gen.sample(0, seed=0).shape == (0, 1, SIZE, SIZE)


def test_same_seed_same_samples_and_other_seed_other_samples():
    gen, _ = fitted()
    a, b = gen.sample(4, seed=7), gen.sample(4, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, gen.sample(4, seed=8))
    # batching does not change the images: the noise is drawn up front from the seed
    gen.params.sample_batch = 3
    try:
        assert torch.equal(a, gen.sample(4, seed=7))
    finally:
        gen.params.sample_batch = TINY["sample_batch"]


def test_fitting_twice_with_one_seed_gives_the_same_model():
    images, _ = phantom()
    first, _ = fitted()
    second = LatentDiffusionGenerator(tiny(), SIZE, 0, torch.device("cpu"))
    second.fit(images[:16], workdir=None)
    assert torch.equal(first.sample(3, seed=1), second.sample(3, seed=1))


def test_save_and_load_restore_the_same_sampler(tmp_path):
    gen, _ = fitted()
    gen.save(tmp_path)
    other = LatentDiffusionGenerator(tiny(sample_steps=5), SIZE, 0, torch.device("cpu"))
    other.load(tmp_path)
    assert torch.equal(gen.sample(3, seed=2), other.sample(3, seed=2))
    assert other.latent_scale == gen.latent_scale
    with pytest.raises(LDMError, match="different parameters"):
        LatentDiffusionGenerator(tiny(latent_channels=8), SIZE, 0, torch.device("cpu")).load(tmp_path)
    with pytest.raises(LDMError, match="image size"):
        LatentDiffusionGenerator(tiny(), 64, 0, torch.device("cpu")).load(tmp_path)


def test_latent_scale_gives_unit_variance_training_latents():
    gen, facts = fitted()
    images, _ = phantom()
    with torch.no_grad():
        dist = gen.autoencoder.encode(images[:16].float() / 127.5 - 1).latent_dist
        z = (dist.sample(generator=torch.Generator().manual_seed(99)) - gen.latent_shift) * gen.latent_scale
    assert abs(float(z.std()) - 1.0) < 0.05
    assert abs(float(z.mean())) < 0.05
    assert facts["latent_scale"] == gen.latent_scale != 0.18215


def test_wrong_image_size_and_indivisible_sizes_are_user_errors():
    gen = LatentDiffusionGenerator(tiny(), SIZE, 0, torch.device("cpu"))
    with pytest.raises(LDMError, match="built for 32x32"):
        gen.fit(torch.zeros(4, 1, 64, 64, dtype=torch.uint8), workdir=None)
    with pytest.raises(LDMError, match="multiple of 8"):
        LatentDiffusionGenerator(tiny(), 36, 0, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="before fit"):
        gen.sample(1, seed=0)


def test_presets_resolve_and_quick_is_small():
    quick = resolve_params(LatentDiffusionGenerator, "quick", {}, "ldm")
    paper = resolve_params(LatentDiffusionGenerator, "paper", {}, "ldm")
    assert quick.downsampling == 4 and paper.downsampling == 8
    assert 20 <= quick.sample_steps <= 25 and quick.max_samples <= 128
    assert paper.sample_steps == 150 and paper.latent_channels == 8 and paper.kl_weight == 1e-6
    assert networks.latent_size(paper, 256) == 32 and networks.latent_size(quick, 64) == 16
    assert not LatentDiffusionGenerator(quick, 64, 0, torch.device("cpu")).uses_strata
    medium = resolve_params(LatentDiffusionGenerator, "medium", {}, "ldm")
    assert networks.latent_size(medium, 128) == 32


def test_class_conditioning_needs_strata_and_samples_with_guidance():
    images, strata = phantom()
    params = tiny(conditional=True, guidance_scale=2.0, ae_steps=5, unet_steps=5)
    gen = LatentDiffusionGenerator(params, SIZE, 0, torch.device("cpu"))
    assert gen.uses_strata and gen.describe()["uses_extra_labels"]
    with pytest.raises(LDMError, match="stratum"):
        gen.fit(images[:16], workdir=None)
    facts = gen.fit(images[:16], workdir=None, strata=list(strata[:16]))
    assert facts["classes"] == sorted(set(strata[:16]))
    assert gen.sample(3, seed=0).shape == (3, 1, SIZE, SIZE)


def test_bf16_autocast_fits_and_samples_on_the_cpu():
    images, _ = phantom()
    gen = LatentDiffusionGenerator(tiny(amp="bf16", ae_steps=3, unet_steps=3), SIZE, 0, torch.device("cpu"))
    facts = gen.fit(images[:8], workdir=None)
    assert facts["precision"] == "bf16 autocast" and math.isfinite(facts["denoiser_final_loss"])
    samples = gen.sample(2, seed=0)
    assert samples.shape == (2, 1, SIZE, SIZE) and samples.dtype == torch.uint8


def test_none_generator_makes_no_images():
    gen = NoGenerator(None, SIZE, 0, torch.device("cpu"))
    assert gen.fit(torch.zeros(2, 1, SIZE, SIZE, dtype=torch.uint8), workdir=None)["n_images"] == 2
    assert gen.sample(0, seed=0).shape == (0, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="makes no images"):
        gen.sample(1, seed=0)


@pytest.mark.slow
def test_after_a_short_fit_samples_are_closer_to_real_images_than_noise():
    images, _ = phantom(48)
    gen = LatentDiffusionGenerator(tiny(ae_steps=150, unet_steps=200, sample_steps=10), SIZE, 0, torch.device("cpu"))
    gen.fit(images[:32], workdir=None)
    samples = gen.sample(16, seed=0)
    real = images[:32]
    ours, noise = fidelity(samples, real), fidelity(uniform_noise(16, SIZE, 0), real)
    for key in ("histogram_w1", "speckle_w1", "spectrum_l1"):
        assert ours[key] < noise[key], (key, ours, noise)
    # and the samples are at least as far from noise as half the real-vs-noise gap on the histogram
    assert ours["histogram_w1"] < 0.5 * noise["histogram_w1"]


def test_ldm_through_the_harness_cache(tmp_path):
    images, _ = phantom()
    ids = [f"img{k}" for k in range(16)]
    hashes = {i: hashlib.sha256(images[k].numpy().tobytes()).hexdigest() for k, i in enumerate(ids)}
    params = tiny(ae_steps=3, unet_steps=3)
    messages: list[str] = []

    def pool(p):
        return synthetic_pool("ldm", LatentDiffusionGenerator, p, images=images[:16], ids=ids, content_hashes=hashes,
                              strata=None, n=3, seed=0, image_size=SIZE, cache_root=tmp_path,
                              device=torch.device("cpu"), log=messages.append)  # fmt: skip

    fresh, info = pool(params)
    json.dumps(info)
    assert not info["cached"] and info["describe"]["latent_scale"] == info["fit"]["latent_scale"]
    Path(info["samples_file"]).unlink()
    reloaded, again = pool(params)  # the model comes back from the checkpoint and samples the same images
    assert again["cached"] and not again["samples_cached"] and torch.equal(fresh, reloaded)
    assert again["checkpoint_sha256"] == info["checkpoint_sha256"]
    _, other = pool(tiny(ae_steps=3, unet_steps=3, sample_steps=4))  # sampling-only change: no refit
    assert other["cached"] and not other["samples_cached"]
    assert sum("cached fit" in m for m in messages) == 2


def test_fused_adamw_and_foreach_clipping_match_the_plain_ones():
    from plugins.generators.ldm.training import adamw, clip_gradients

    torch.manual_seed(0)
    fast, plain = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
    plain.load_state_dict(fast.state_dict())
    opt_fast, opt_plain = adamw(fast, 1e-2), torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.0)
    assert opt_fast.defaults["fused"]
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8)
        for net, opt in ((fast, opt_fast), (plain, opt_plain)):
            opt.zero_grad()
            (net(x) ** 2).mean().mul(50).backward()
        clip_gradients(fast, 0.5)
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.5)
        for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad)
        opt_fast.step()
        opt_plain.step()
    for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
