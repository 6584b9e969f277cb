"""DDIM sampling in latent space, then decoding: batched, seeded, optionally class-guided."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from harness.progress import SILENT, Reporter
from plugins.generators.ldm.networks import sampling_scheduler
from plugins.generators.ldm.params import LDMParams
from plugins.generators.ldm.training import Autocast, to_uint8

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DModel


@torch.no_grad()
def ddim_sample(
    ae: AutoencoderKL,
    unet: UNet2DModel,
    params: LDMParams,
    *,
    n: int,
    seed: int,
    latent_size: int,
    shift: float,
    scale: float,
    class_probs: torch.Tensor | None,
    device: torch.device,
    autocast: Autocast,
    progress: Reporter = SILENT,
) -> torch.Tensor:
    """``n`` images (n x 1 x H x W uint8, on the CPU).

    All initial noise (and the class of each sample) is drawn up front from one CPU generator, so
    the images depend on ``seed`` only, not on the batch size or the device's random state.
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, params.latent_channels, latent_size, latent_size), generator=gen)
    classes = None
    if class_probs is not None:
        classes = torch.multinomial(class_probs, n, replacement=True, generator=gen)
        null_class = class_probs.numel()
    out = []
    bar = progress.task("ldm sampling", total=n, unit="img")
    for start in range(0, n, params.sample_batch):
        scheduler = sampling_scheduler(params)
        scheduler.set_timesteps(params.sample_steps, device=device)
        x = noise[start : start + params.sample_batch].to(device) * scheduler.init_noise_sigma
        labels = None if classes is None else classes[start : start + params.sample_batch].to(device)
        for k, t in enumerate(scheduler.timesteps):
            bar.update(start + x.shape[0] * k / len(scheduler.timesteps))
            model_in = scheduler.scale_model_input(x, t)
            with autocast():
                if labels is None:
                    pred = unet(model_in, t, class_labels=None).sample
                elif params.guidance_scale == 1.0:
                    pred = unet(model_in, t, class_labels=labels).sample
                else:
                    both = unet(
                        torch.cat([model_in, model_in]),
                        t,
                        class_labels=torch.cat([labels, torch.full_like(labels, null_class)]),
                    ).sample
                    cond, uncond = both.float().chunk(2)
                    pred = uncond + params.guidance_scale * (cond - uncond)
            # eta > 0 adds noise inside step(); draw it from the seeded generator too
            x = scheduler.step(
                pred.float(), t, x, eta=params.eta, generator=gen if params.eta > 0 else None
            ).prev_sample
        with autocast():
            decoded = ae.decode(x / scale + shift).sample
        out.append(to_uint8(decoded).cpu())
        bar.update(start + x.shape[0])
    bar.close()
    if not out:
        size = latent_size * params.downsampling
        return torch.empty((0, 1, size, size), dtype=torch.uint8)
    return torch.cat(out)
