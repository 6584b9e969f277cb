"""Parameters of the latent diffusion generator and its run presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

AmpMode = Literal["auto", "bf16", "fp32"]


@dataclass
class LDMParams:
    """A KL autoencoder, then a denoising UNet in its latent space, then DDIM sampling.

    Defaults are medfusion's (commit 4b92854) where it states them (REFERENCE.md §6.2): 8 latent
    channels, autoencoder widths (64, 128, 256, 512) = 8x down-sampling, KL weight 1e-6, denoiser
    widths (256, 256, 512, 1024) with one residual block per level and no attention, T = 1000,
    beta 0.002 -> 0.02 "scaled_linear", noise prediction, 150 DDIM steps. Departures, recorded in
    ``describe()``: an EMA of the denoiser weights (medfusion has none), latents shifted and scaled by
    the mean and 1/std of the autoencoder's own training latents, "trailing" DDIM timestep spacing
    (sampling starts at t = T - 1, which matters for few steps) and horizontal-flip augmentation.
    """

    # first stage: KL autoencoder (diffusers AutoencoderKL); 2^(len(ae_channels) - 1) down-sampling
    #: autoencoder widths per level; 2**(levels-1) spatial down-sampling
    ae_channels: tuple[int, ...] = (64, 128, 256, 512)
    #: residual blocks per autoencoder level
    ae_layers_per_block: int = 1
    #: GroupNorm groups in the autoencoder (widths must be multiples)
    ae_norm_groups: int = 32
    #: channels of the latent the denoiser works in
    latent_channels: int = 8
    #: autoencoder reconstruction loss
    recon_loss: Literal["l1", "mse", "l1+mse"] = "mse"
    #: weight of the autoencoder's KL term
    kl_weight: float = 1e-6
    #: weight of an L1 loss between log amplitude spectra of image and reconstruction: pushes the
    #: decoder to keep speckle-like texture that a pixel loss averages away (0 = off, as medfusion's VAE)
    ae_spectral_weight: float = 0.0
    #: autoencoder training steps
    ae_steps: int = 20000
    #: autoencoder batch size
    ae_batch: int = 8
    #: autoencoder learning rate (Adam)
    ae_lr: float = 1e-4
    # second stage: denoiser (diffusers UNet2DModel) on scaled latents
    #: denoiser UNet widths per level
    unet_channels: tuple[int, ...] = (256, 256, 512, 1024)
    #: residual blocks per denoiser level
    unet_layers_per_block: int = 1
    #: GroupNorm groups in the denoiser (widths must be multiples)
    unet_norm_groups: int = 32
    #: self-attention blocks in the denoiser
    unet_attention: bool = False
    #: diffusion steps T of the noise schedule
    train_timesteps: int = 1000
    #: first beta of the noise schedule
    beta_start: float = 0.002
    #: last beta of the noise schedule
    beta_end: float = 0.02
    #: shape of the beta schedule
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    #: what the denoiser predicts: the noise (epsilon) or v
    prediction: Literal["epsilon", "v_prediction"] = "epsilon"
    #: denoiser training steps
    unet_steps: int = 30000
    #: denoiser batch size
    unet_batch: int = 32
    #: denoiser learning rate (AdamW)
    unet_lr: float = 1e-4
    #: EMA decay of the denoiser weights used for sampling; 0 disables the EMA
    ema_decay: float = 0.999
    #: gradient-norm clip of both stages
    grad_clip: float = 1.0
    #: horizontal-flip augmentation while fitting
    hflip: bool = True
    # optional class conditioning on the image stratum, with classifier-free guidance
    #: condition the denoiser on the image stratum (benign/malignant/normal)
    conditional: bool = False
    #: probability of dropping the condition while fitting (classifier-free guidance)
    cond_dropout: float = 0.5
    #: classifier-free guidance scale at sampling (1: none)
    guidance_scale: float = 1.0
    # sampling (changing these never refits the model)
    #: DDIM sampling steps (changing it never refits)
    sample_steps: int = 150
    #: DDIM eta: 0 deterministic, 1 DDPM-like
    eta: float = 0.0
    #: images sampled per batch
    sample_batch: int = 32
    #: the most synthetic images a run's unlabeled pool takes by default (None: no cap)
    max_samples: int | None = None
    #: "auto": bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX), else fp32
    amp: AmpMode = "auto"

    def __post_init__(self) -> None:
        positive = (
            "ae_layers_per_block",
            "latent_channels",
            "ae_steps",
            "ae_batch",
            "unet_layers_per_block",
            "train_timesteps",
            "unet_steps",
            "unet_batch",
            "sample_steps",
            "sample_batch",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("ae_channels", "unet_channels"):
            channels = getattr(self, name)
            groups = self.ae_norm_groups if name == "ae_channels" else self.unet_norm_groups
            if not channels:
                raise ValueError(f"{name} must list at least one width")
            bad = [c for c in channels if c % groups]
            if bad:
                raise ValueError(f"{name} widths {bad} are not multiples of the norm groups ({groups})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.sample_steps > self.train_timesteps:
            raise ValueError(
                f"sample_steps ({self.sample_steps}) cannot exceed train_timesteps ({self.train_timesteps})"
            )
        if self.max_samples is not None and self.max_samples < 0:
            raise ValueError(f"max_samples must be >= 0, got {self.max_samples}")

    @property
    def downsampling(self) -> int:
        """Spatial down-sampling factor of the autoencoder."""
        return 2 ** (len(self.ae_channels) - 1)


#: parameters that only affect sampling: the fitted model is reused when only these change
SAMPLING_FIELDS = frozenset({"sample_steps", "eta", "sample_batch", "max_samples", "guidance_scale"})

PRESETS: dict[str, dict[str, Any]] = {
    # CPU, 64x64, about three minutes of fitting on two idle cores: 4x down-sampling to 16x16x4 latents.
    # v-prediction: in short fits on BUSI it gave samples with the right brightness distribution where
    # noise prediction gave washed-out or saturated ones (intensity-histogram W1 2.9 vs 12 grey levels).
    # Batches 8 and 16 (were 16 and 32): the fit is 1.56x faster and bench generate's memorisation and
    # fidelity numbers were as good or better for seeds 0 and 1 (benchmarks/results/ldm-quick-batches.json).
    "quick": {
        "ae_channels": (16, 32, 64),
        "ae_norm_groups": 8,
        "latent_channels": 4,
        "recon_loss": "l1",
        "ae_steps": 500,
        "ae_batch": 8,
        "ae_lr": 1e-3,
        "unet_channels": (64, 128, 128),
        "unet_norm_groups": 16,
        "prediction": "v_prediction",
        "unet_steps": 800,
        "unet_batch": 16,
        "unet_lr": 1e-3,
        "ema_decay": 0.99,
        "sample_steps": 25,
        "max_samples": 128,
    },
    # 128x128: 4x down-sampling to 32x32x4 latents; minutes on a GPU, about an hour on two CPU cores
    "medium": {
        "ae_channels": (32, 64, 128),
        "ae_norm_groups": 16,
        "latent_channels": 4,
        "recon_loss": "l1",
        "ae_steps": 3000,
        "ae_batch": 16,
        "ae_lr": 5e-4,
        "unet_channels": (64, 128, 256),
        "prediction": "v_prediction",
        "unet_steps": 4000,
        "unet_lr": 5e-4,
        "ema_decay": 0.995,
        "sample_steps": 50,
    },
    # 256x256 medfusion-sized: 8x down-sampling to 8x32x32 latents
    "paper": {},
}
