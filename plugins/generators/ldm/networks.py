"""The two networks of the latent diffusion model, built from configuration (never downloaded)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from plugins.generators.ldm.params import LDMParams

if TYPE_CHECKING:  # diffusers takes seconds to import: only when a model is built
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DModel


def build_autoencoder(params: LDMParams) -> AutoencoderKL:
    """A one-channel KL autoencoder with ``len(ae_channels)`` levels and no attention (as medfusion)."""
    from diffusers import AutoencoderKL

    levels = len(params.ae_channels)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(params.ae_channels),
        layers_per_block=params.ae_layers_per_block,
        latent_channels=params.latent_channels,
        norm_num_groups=params.ae_norm_groups,
        mid_block_add_attention=False,
        # the harness stores its own shift and scale; this constant is never used
        scaling_factor=1.0,
    )


def num_classes(params: LDMParams, classes: list[str]) -> int | None:
    """Class embeddings of the denoiser: one per stratum plus the "no condition" class, or None."""
    return len(classes) + 1 if params.conditional else None


def build_denoiser(params: LDMParams, n_class_embeds: int | None = None) -> UNet2DModel:
    """The latent-space denoising UNet; attention (optional) only at the lowest resolution."""
    from diffusers import UNet2DModel

    levels = len(params.unet_channels)
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if params.unet_attention:
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    return UNet2DModel(
        in_channels=params.latent_channels,
        out_channels=params.latent_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(params.unet_channels),
        layers_per_block=params.unet_layers_per_block,
        norm_num_groups=params.unet_norm_groups,
        add_attention=params.unet_attention,
        attention_head_dim=8,
        num_class_embeds=n_class_embeds,
    )


def scheduler_config(params: LDMParams) -> dict:
    """The noise schedule shared by the training (DDPM) and sampling (DDIM) schedulers."""
    return {
        "num_train_timesteps": params.train_timesteps,
        "beta_start": params.beta_start,
        "beta_end": params.beta_end,
        "beta_schedule": params.beta_schedule,
        "prediction_type": params.prediction,
        "clip_sample": False,
        "timestep_spacing": "trailing",
    }


def training_scheduler(params: LDMParams) -> DDPMScheduler:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**scheduler_config(params))


def sampling_scheduler(params: LDMParams) -> DDIMScheduler:
    from diffusers import DDIMScheduler

    return DDIMScheduler(**scheduler_config(params), set_alpha_to_one=False)


def latent_size(params: LDMParams, image_size: int) -> int:
    """Latent height/width for ``image_size``; raises when the networks cannot divide it evenly."""
    down = params.downsampling
    unet_div = 2 ** (len(params.unet_channels) - 1)
    if image_size % (down * unet_div):
        raise ValueError(
            f"image size {image_size} must be a multiple of {down * unet_div} for this generator "
            f"({down}x autoencoder down-sampling, then {unet_div}x in the denoiser); "
            "choose another image size or fewer ae_channels/unet_channels levels"
        )
    return image_size // down


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class EMA:
    """Exponential moving average of a module's weights, with the usual warm-up of the decay."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        # (1 + n) / (10 + n) keeps the average from being dominated by the random start in short fits
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.module.parameters(), module.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), module.buffers(), strict=True):
            ema_b.copy_(b)
