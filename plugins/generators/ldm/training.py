"""The two training loops of the latent diffusion model (autoencoder, then latent denoiser)."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from harness.progress import SILENT, Reporter
from plugins.generators.ldm.networks import EMA
from plugins.generators.ldm.params import LDMParams
from plugins.generators.ldm.stages import FitTracker, Stage

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

Autocast = Callable[[], AbstractContextManager[Any]]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 grey levels -> float in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 grey levels (rounded, clamped)."""
    return ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def learning_rate(base: float, step: int, total: int) -> float:
    """Linear warm-up over the first 5 % of steps (at most 200), then cosine decay to 10 % of ``base``."""
    warmup = max(1, min(200, total // 20))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


class _Curve:
    """Mean loss over windows of about ``total / points`` steps; syncs with the device once per window."""

    def __init__(self, total: int, points: int = 50) -> None:
        self.every = max(1, total // points)
        self.points: list[tuple[int, float]] = []
        self._sum: torch.Tensor | float = 0.0
        self._count = 0

    def add(self, step: int, loss: torch.Tensor) -> None:
        self._sum = self._sum + loss.detach().float()
        self._count += 1
        if self._count == self.every:
            self.points.append((step + 1, round(float(self._sum) / self._count, 6)))
            self._sum, self._count = 0.0, 0

    @property
    def final(self) -> float:
        """Mean loss of the last 10 % of recorded windows."""
        tail = self.points[-max(1, len(self.points) // 10) :]
        return sum(v for _, v in tail) / len(tail) if tail else float("nan")


def adamw(module: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    """AdamW without weight decay; the fused kernel on CPU and CUDA (one pass over each tensor, not ~10:
    the optimiser step was 5-15 % of a quick-preset training step)."""
    fused = all(p.device.type in ("cpu", "cuda") for p in module.parameters())
    return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0, fused=fused)


def clip_gradients(module: torch.nn.Module, max_norm: float) -> None:
    """Clip the global gradient norm, with the multi-tensor (foreach) norm."""
    torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm, foreach=True)


def _random_flip(x: torch.Tensor, gen: torch.Generator, enabled: bool) -> torch.Tensor:
    if not enabled:
        return x
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def _recon_loss(kind: str, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    recon = recon.float()
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "mse":
        return F.mse_loss(recon, target)
    return F.l1_loss(recon, target) + F.mse_loss(recon, target)


def spectral_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between log amplitude spectra (phase-free, so texture need not be aligned)."""
    amp_r = torch.fft.rfft2(recon.float(), norm="ortho").abs()
    amp_t = torch.fft.rfft2(target.float(), norm="ortho").abs()
    return F.l1_loss(torch.log1p(amp_r), torch.log1p(amp_t))


def train_autoencoder(
    ae: AutoencoderKL,
    images: torch.Tensor,
    params: LDMParams,
    gen: torch.Generator,
    autocast: Autocast,
    tracker: FitTracker | None = None,
) -> dict[str, Any]:
    """Fit ``ae`` on ``images`` (N x 1 x H x W in [-1, 1], on the device): reconstruction + KL.

    ``tracker``: progress and a resumable checkpoint of the stage (see :mod:`.stages`).
    """
    ae.train()
    opt = adamw(ae, params.ae_lr)
    curve = _Curve(params.ae_steps)
    stage = (tracker or FitTracker()).stage("autoencoder", params.ae_steps, {"model": ae, "optimizer": opt})
    for step in range(stage.restore(gen, curve), params.ae_steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(params.ae_lr, step, params.ae_steps)
        idx = torch.randint(images.shape[0], (params.ae_batch,), generator=gen).to(images.device)
        x = _random_flip(images[idx], gen, params.hflip)
        with autocast():
            posterior = ae.encode(x).latent_dist
            recon = ae.decode(posterior.sample(generator=gen)).sample
        # KL summed over latent elements, averaged over the batch (as in the LDM/medfusion first stage)
        loss = _recon_loss(params.recon_loss, recon, x) + params.kl_weight * posterior.kl().float().mean()
        if params.ae_spectral_weight > 0:
            loss = loss + params.ae_spectral_weight * spectral_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(ae, params.grad_clip)
        opt.step()
        curve.add(step, loss)
        stage.step_done(step, loss, gen, curve)
    ae.eval()
    stage.finish(gen, curve)
    return {"seconds": stage.seconds, "final_loss": curve.final, "curve": curve.points}


@dataclass
class Posteriors:
    """Per-image posterior mean and std of the autoencoder, for the images and their mirror images."""

    mean: torch.Tensor
    std: torch.Tensor


@torch.no_grad()
def encode_posteriors(
    ae: AutoencoderKL,
    images: torch.Tensor,
    batch: int,
    autocast: Autocast,
    with_flips: bool,
    progress: Reporter = SILENT,
) -> Posteriors:
    """Encode once, so that the denoiser's training never runs the encoder; flips are stacked after."""
    sources = [images, images.flip(-1)] if with_flips else [images]
    means, stds = [], []
    with progress.task("ldm encoding", total=len(sources) * images.shape[0], unit="img") as bar:
        for source in sources:
            for chunk in source.split(batch):
                with autocast():
                    dist = ae.encode(chunk).latent_dist
                means.append(dist.mean.float())
                stds.append(dist.std.float())
                bar.advance(chunk.shape[0])
    return Posteriors(torch.cat(means), torch.cat(stds))


def latent_statistics(posteriors: Posteriors, gen: torch.Generator) -> tuple[float, float]:
    """(shift, scale): mean and 1/std of latents drawn from the training posteriors.

    Diffusers' 0.18215 belongs to Stable Diffusion's autoencoder; one trained here has its own scale.
    """
    noise = torch.randn(posteriors.mean.shape, generator=gen).to(posteriors.mean.device)
    z = posteriors.mean + posteriors.std * noise
    std = float(z.std())
    if not math.isfinite(std) or std <= 0:
        raise RuntimeError(f"autoencoder latents have std {std}; the first stage failed to train")
    return float(z.mean()), 1.0 / std


def train_denoiser(
    unet: UNet2DModel,
    ema: EMA | None,
    scheduler: DDPMScheduler,
    posteriors: Posteriors,
    labels: torch.Tensor | None,
    null_class: int,
    shift: float,
    scale: float,
    params: LDMParams,
    gen: torch.Generator,
    autocast: Autocast,
    stage: Stage | None = None,
) -> dict[str, Any]:
    """Fit the denoiser on scaled latents.

    ``labels`` (per-image class ids, or None) are replaced by ``null_class`` with probability
    ``cond_dropout``, which trains the unconditional model classifier-free guidance needs.
    ``stage``: its progress line and resumable checkpoint (made by the caller, who also keeps
    the latent shift and scale in it).
    """
    device = posteriors.mean.device
    n_total = posteriors.mean.shape[0]
    n_images = n_total // 2 if params.hflip else n_total
    unet.train()
    opt = adamw(unet, params.unet_lr)
    curve = _Curve(params.unet_steps)
    stage = stage or FitTracker().stage("denoiser", params.unet_steps, {})
    stage.modules.update(model=unet, optimizer=opt, **({"ema": ema} if ema is not None else {}))
    for step in range(stage.restore(gen, curve), params.unet_steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(params.unet_lr, step, params.unet_steps)
        image_idx = torch.randint(n_images, (params.unet_batch,), generator=gen)
        row = image_idx + n_images * (torch.rand(params.unet_batch, generator=gen) < 0.5) if params.hflip else image_idx
        row = row.to(device)
        eps_post = torch.randn((params.unet_batch, *posteriors.mean.shape[1:]), generator=gen).to(device)
        z0 = ((posteriors.mean[row] + posteriors.std[row] * eps_post) - shift) * scale
        noise = torch.randn(z0.shape, generator=gen).to(device)
        t = torch.randint(params.train_timesteps, (params.unet_batch,), generator=gen).to(device)
        zt = scheduler.add_noise(z0, noise, t)
        target = noise if params.prediction == "epsilon" else scheduler.get_velocity(z0, noise, t)
        class_labels = None
        if labels is not None:
            class_labels = labels.to(device)[image_idx.to(device)]
            drop = (torch.rand(params.unet_batch, generator=gen) < params.cond_dropout).to(device)
            class_labels = torch.where(drop, torch.full_like(class_labels, null_class), class_labels)
        with autocast():
            pred = unet(zt, t, class_labels=class_labels).sample
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(unet, params.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(unet)
        curve.add(step, loss)
        stage.step_done(step, loss, gen, curve)
    unet.eval()
    stage.finish(gen, curve)
    return {"seconds": stage.seconds, "final_loss": curve.final, "curve": curve.points}
