"""How close synthetic images are to the training images (near-copies) and how real they look.

Near-copies: every image is reduced to 64x64, high-pass filtered (image minus a Gaussian blur)
and masked to its field of view (eroded, so the edge of the ultrasound fan or the black border is
not compared), then normalised to zero mean and unit norm. The similarity of two images is the
largest normalised cross-correlation over integer shifts of up to ``max_shift`` pixels. A sample
is a near-copy when it is more similar to its nearest training image than ``quantile`` of the
held-out real images (val/test of the fold) are to theirs.

Fidelity, without downloaded networks: the Wasserstein-1 distance between grey-level histograms,
the distance between per-image speckle statistics (median local mean/std ratio inside the field
of view), and the L1 distance between radially averaged log power spectra; each against the
training images, for the samples and for uniform noise as a reference. FID only with a local
Inception-v3 weights file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

SIMILARITY_SIZE = 64


# --------------------------------------------------------------------------- filters


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N x 1 x H x W float images (reflect padding)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:  # reflect padding needs the image to be larger than the kernel
        x = F.pad(x, (radius - pad,) * 4, mode="replicate")
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    if pad < radius:
        cut = radius - pad
        x = x[..., cut:-cut, cut:-cut]
    return x


def field_of_view(x: torch.Tensor, threshold: float = 0.04, erode: int = 2) -> torch.Tensor:
    """Bool mask of the imaged region: smoothed intensity above ``threshold`` (x in [0, 1]), eroded."""
    mask = (_gaussian_blur(x, 1.5) > threshold).float()
    if erode > 0:
        mask = -F.max_pool2d(-mask, 2 * erode + 1, stride=1, padding=erode)
    return mask > 0.5


def _as_float(images: torch.Tensor, size: int | None) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"expected N x 1 x H x W images, got {tuple(images.shape)}")
    x = images.detach().cpu().float() / 255.0
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def similarity_features(images: torch.Tensor, size: int = SIMILARITY_SIZE, highpass_sigma: float = 2.0) -> torch.Tensor:
    """N x size x size high-pass, field-of-view-masked, zero-mean, unit-norm versions of uint8 images."""
    x = _as_float(images, size)
    fov = field_of_view(x)
    hp = (x - _gaussian_blur(x, highpass_sigma)) * fov
    count = fov.flatten(1).sum(1).clamp(min=1).view(-1, 1, 1, 1)
    hp = (hp - hp.flatten(1).sum(1).view(-1, 1, 1, 1) / count) * fov
    norm = hp.flatten(1).norm(dim=1).clamp(min=1e-8).view(-1, 1, 1, 1)
    return (hp / norm)[:, 0]


def nearest_similarity(
    queries: torch.Tensor, references: torch.Tensor, max_shift: int = 4, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query feature map, (best similarity, index) of its nearest reference over shifts.

    Shifting pads with zeros, so a shifted map keeps unit norm at most: the score is a normalised
    cross-correlation that never exceeds 1 and equals 1 for an identical image.
    """
    if references.shape[0] == 0:
        raise ValueError("nearest_similarity needs at least one reference image")
    refs = references.flatten(1)
    best = torch.full((queries.shape[0],), -2.0)
    index = torch.zeros(queries.shape[0], dtype=torch.long)
    s = max_shift
    for start in range(0, queries.shape[0], chunk):
        q = F.pad(queries[start : start + chunk], (s, s, s, s))
        h, w = queries.shape[-2:]
        chunk_best = torch.full((q.shape[0], refs.shape[0]), -2.0)
        for dy in range(2 * s + 1):
            for dx in range(2 * s + 1):
                shifted = q[:, dy : dy + h, dx : dx + w].reshape(q.shape[0], -1)
                chunk_best = torch.maximum(chunk_best, shifted @ refs.T)
        value, idx = chunk_best.max(dim=1)
        best[start : start + chunk] = value
        index[start : start + chunk] = idx
    return best, index


# --------------------------------------------------------------------------- near-copies


@dataclass
class Memorisation:
    """Per-sample nearest-training similarity, the held-out calibration and the near-copies."""

    similarity: torch.Tensor
    nearest: torch.Tensor
    heldout_similarity: torch.Tensor
    threshold: float
    quantile: float
    near_copies: list[int]

    def as_dict(self) -> dict[str, Any]:
        def dist(v: torch.Tensor) -> dict[str, float]:
            if v.numel() == 0:
                return {}
            q = torch.quantile(v, torch.tensor([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]))
            names = ("min", "p05", "p25", "median", "p75", "p95", "max")
            return {"mean": round(float(v.mean()), 4), **{k: round(float(x), 4) for k, x in zip(names, q, strict=True)}}

        p95 = float(torch.quantile(self.heldout_similarity, 0.95))
        return {
            "method": (
                f"max normalised cross-correlation over shifts, {SIMILARITY_SIZE}x{SIMILARITY_SIZE}, "
                "high-pass filtered, inside the eroded field of view"
            ),
            "quantile": self.quantile,
            "threshold": round(self.threshold, 4),
            "n_samples": int(self.similarity.numel()),
            "n_heldout": int(self.heldout_similarity.numel()),
            "near_copies": len(self.near_copies),
            "near_copy_fraction": round(len(self.near_copies) / max(1, self.similarity.numel()), 4),
            "near_copy_indices": self.near_copies,
            # a stricter view, for when held-out images include near-duplicates of training images
            "above_heldout_p95": int((self.similarity > p95).sum()),
            "samples": dist(self.similarity),
            "heldout": dist(self.heldout_similarity),
            "per_sample": [round(float(v), 4) for v in self.similarity],
            "nearest_training_index": [int(i) for i in self.nearest],
        }


def memorisation(
    samples: torch.Tensor,
    train: torch.Tensor,
    heldout: torch.Tensor,
    *,
    quantile: float = 0.99,
    max_shift: int = 4,
) -> Memorisation:
    """Score every sample against the training images, calibrated on held-out real images.

    ``samples``, ``train``, ``heldout``: uint8 N x 1 x H x W (any size; compared at 64x64).
    """
    if heldout.shape[0] == 0:
        raise ValueError("memorisation needs held-out real images (val/test of the fold) to calibrate against")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    train_f = similarity_features(train)
    held_sim, _ = nearest_similarity(similarity_features(heldout), train_f, max_shift)
    threshold = float(torch.quantile(held_sim, quantile))
    if samples.shape[0]:
        sim, nearest = nearest_similarity(similarity_features(samples), train_f, max_shift)
    else:
        sim, nearest = torch.zeros(0), torch.zeros(0, dtype=torch.long)
    copies = [int(i) for i in torch.nonzero(sim > threshold).flatten()]
    return Memorisation(sim, nearest, held_sim, threshold, quantile, copies)


def drop_near_copies(samples: torch.Tensor, report: Memorisation) -> torch.Tensor:
    """``samples`` without the near-copies of ``report``."""
    keep = torch.ones(samples.shape[0], dtype=torch.bool)
    keep[report.near_copies] = False
    return samples[keep]


# --------------------------------------------------------------------------- fidelity


def histogram_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Wasserstein-1 distance between the grey-level distributions of two uint8 image sets (grey levels)."""
    ha = torch.bincount(a.flatten().long(), minlength=256).double()
    hb = torch.bincount(b.flatten().long(), minlength=256).double()
    return float((ha.cumsum(0) / ha.sum() - hb.cumsum(0) / hb.sum()).abs().sum())


def speckle_ratio(images: torch.Tensor, window: int = 5) -> torch.Tensor:
    """Per image, the median over the field of view of the local mean / local std in ``window`` pixels.

    For fully developed speckle this ratio is a property of the imaging, not of the anatomy;
    blurred (too smooth) images give high values and white noise gives low ones.
    """
    x = _as_float(images, None) * 255.0
    pad = window // 2
    mean = F.avg_pool2d(F.pad(x, (pad,) * 4, mode="reflect"), window, stride=1)
    sq = F.avg_pool2d(F.pad(x * x, (pad,) * 4, mode="reflect"), window, stride=1)
    std = (sq - mean * mean).clamp(min=0).sqrt()
    ratio = mean / std.clamp(min=1.0)
    fov = field_of_view(x / 255.0, erode=pad + 1)
    out = []
    for r, m in zip(ratio, fov, strict=True):
        values = r[m]
        out.append(values.median() if values.numel() else r.median())
    return torch.stack(out)


def _wasserstein_1d(a: torch.Tensor, b: torch.Tensor) -> float:
    """Wasserstein-1 distance between two samples of scalars (exact, via sorted quantiles)."""
    qs = torch.linspace(0, 1, 101, dtype=torch.float64)
    return float((torch.quantile(a.double(), qs) - torch.quantile(b.double(), qs)).abs().mean())


def spectrum_profile(images: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Mean radially averaged log power spectrum (``bins`` radii) of a set of images."""
    x = _as_float(images, None)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(x[:, 0]).abs() ** 2, dim=(-2, -1)).mean(0)
    h, w = power.shape
    yy, xx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    radius = torch.sqrt(yy.double() ** 2 + xx.double() ** 2) / (min(h, w) / 2)
    which = (radius * bins).long().clamp(max=bins)
    keep = which < bins
    sums = torch.bincount(which[keep], weights=power[keep].double(), minlength=bins)
    counts = torch.bincount(which[keep], minlength=bins).clamp(min=1)
    return torch.log10(sums / counts + 1e-12)


def uniform_noise(n: int, size: int, seed: int) -> torch.Tensor:
    """The noise reference: i.i.d. uniform grey levels, n x 1 x size x size uint8."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), generator=gen, dtype=torch.uint8)


def fidelity(images: torch.Tensor, train: torch.Tensor) -> dict[str, float]:
    """Distances of ``images`` to ``train`` (lower is closer): histogram, speckle and spectrum."""
    speckle_a, speckle_t = speckle_ratio(images), speckle_ratio(train)
    return {
        "histogram_w1": round(histogram_distance(images, train), 4),
        "speckle_w1": round(_wasserstein_1d(speckle_a, speckle_t), 4),
        "speckle_median": round(float(speckle_a.median()), 4),
        "spectrum_l1": round(float((spectrum_profile(images) - spectrum_profile(train)).abs().mean()), 4),
    }


def fidelity_report(samples: torch.Tensor, train: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    """Fidelity of the samples and of uniform noise (the reference), both against the training images."""
    noise = uniform_noise(max(1, samples.shape[0]), samples.shape[-1], seed)
    return {
        "samples": fidelity(samples, train) if samples.shape[0] else {},
        "noise": fidelity(noise, train),
        "train_speckle_median": round(float(speckle_ratio(train).median()), 4),
        "definitions": {
            "histogram_w1": "Wasserstein-1 between grey-level histograms, in grey levels",
            "speckle_w1": "Wasserstein-1 between per-image median local mean/std (5x5) inside the field of view",
            "spectrum_l1": "mean |difference| of radially averaged log10 power spectra",
        },
    }


# --------------------------------------------------------------------------- FID (optional)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    With fewer samples than feature dimensions the covariances are singular and the value is biased
    (FID needs thousands of images); it is still returned, and callers should report the counts.
    """
    import warnings

    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@torch.no_grad()
def inception_features(images: torch.Tensor, weights: Path, device: torch.device, batch: int = 32) -> np.ndarray:
    """2048-d pool features of torchvision's Inception-v3 loaded from a local ``weights`` file."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    net.fc = torch.nn.Identity()
    net.eval().to(device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    feats = []
    for chunk in images.split(batch):
        x = chunk.to(device).float().div(255.0).expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        feats.append(net((x - mean) / std).double().cpu())
    return torch.cat(feats).numpy()


def fid(samples: torch.Tensor, train: torch.Tensor, weights: Path, device: torch.device) -> float:
    """FID between samples and training images with Inception-v3 weights read from ``weights``."""
    return frechet_distance(inception_features(samples, weights, device), inception_features(train, weights, device))
