"""On-device, batched augmentation: the published geometric set, plus weak/strong views and CutMix.

Everything is vectorised over the batch (per-sample random choices become masks used with
``torch.where``), so augmentation never leaves the device nor syncs with the host.
"""

from __future__ import annotations

import math

import torch

from harness.training.perturb import draw_int, draw_normal, draw_uniform


def _keep_format(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


def _per_sample(flag: torch.Tensor) -> torch.Tensor:
    return flag.view(-1, 1, 1, 1)


class DeviceAugmenter:
    """Random augmentation of B x C x H x W batches on their own device.

    ``geometric`` reproduces the published albumentations pipeline: ``RandomRotate90`` (p
    ``rot90_p``; k uniform in 0..3 once applied) followed by ``Flip`` (p ``flip_p``; horizontal,
    vertical or both with equal chance). Random draws use ``generator`` when given.
    """

    def __init__(
        self,
        generator: torch.Generator | None = None,
        rot90_p: float = 0.5,
        flip_p: float = 0.5,
        *,
        jitter_p: float = 0.8,
        brightness: float = 0.25,
        contrast: tuple[float, float] = (0.75, 1.25),
        gamma: tuple[float, float] = (0.7, 1.5),
        noise_p: float = 0.5,
        noise_std: float = 0.1,
        cutout_p: float = 0.5,
        cutout_area: tuple[float, float] = (0.02, 0.25),
    ) -> None:
        self.generator = generator
        self.rot90_p = rot90_p
        self.flip_p = flip_p
        self.jitter_p = jitter_p
        self.brightness = brightness
        self.contrast = contrast
        self.gamma = gamma
        self.noise_p = noise_p
        self.noise_std = noise_std
        self.cutout_p = cutout_p
        self.cutout_area = cutout_area

    # ------------------------------------------------------------------ draws

    def _u(self, shape: tuple[int, ...], like: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return draw_uniform(shape, like, self.generator, low, high)

    def _coin(self, n: int, p: float, like: torch.Tensor) -> torch.Tensor:
        return self._u((n,), like) < p

    # ------------------------------------------------------------------ geometric

    def geometric(
        self, images: torch.Tensor, masks: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample random 90-degree rotation and flip; ``masks`` get the same transform.

        Non-square images are only rotated by 0 or 180 degrees (a 90-degree turn would change
        their shape).
        """
        if images.dim() != 4:
            raise ValueError(f"geometric expects B x C x H x W images, got shape {tuple(images.shape)}")
        if masks is not None and (masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]):
            raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
        b, _, h, w = images.shape
        k = draw_int(4, (b,), images, self.generator) * self._coin(b, self.rot90_p, images)
        if h != w:
            k = k - k % 2
        flip = self._coin(b, self.flip_p, images)
        mode = draw_int(3, (b,), images, self.generator)  # 0 horizontal, 1 vertical, 2 both
        # rot90 by k = [transpose if k odd] then [flip W if k in (2, 3)] then [flip H if k in (1, 2)]
        transpose = _per_sample(k % 2 == 1)
        flip_w = _per_sample(((k == 2) | (k == 3)) ^ (flip & (mode != 1)))
        flip_h = _per_sample(((k == 1) | (k == 2)) ^ (flip & (mode != 0)))

        def apply(x: torch.Tensor) -> torch.Tensor:
            y = torch.where(transpose, x.transpose(-2, -1), x) if h == w else x
            y = torch.where(flip_w, y.flip(-1), y)
            y = torch.where(flip_h, y.flip(-2), y)
            return _keep_format(y, x)

        return apply(images), (apply(masks) if masks is not None else None)

    def weak(self, images: torch.Tensor) -> torch.Tensor:
        """A weak view: a random rotation/flip of each image."""
        return self.geometric(images)[0]

    # ------------------------------------------------------------------ strong

    def strong(self, images: torch.Tensor) -> torch.Tensor:
        """A strong view: brightness, contrast, gamma, Gaussian noise and cutout, each per sample.

        Magnitudes are relative to each image's own mean and standard deviation, so the view is
        the same whatever normalisation the run uses.
        """
        x = images.float()
        b = x.shape[0]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)

        jitter = _per_sample(self._coin(b, self.jitter_p, x))
        factor = _per_sample(self._u((b,), x, *self.contrast))
        shift = _per_sample(self._u((b,), x, -self.brightness, self.brightness)) * std
        x = torch.where(jitter, (x - mean) * factor + mean + shift, x)

        # gamma on each image rescaled to [0, 1], then mapped back to its original range
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        span = (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-6)
        g = _per_sample(torch.exp(self._u((b,), x, math.log(self.gamma[0]), math.log(self.gamma[1]))))
        gamma_on = _per_sample(self._coin(b, self.jitter_p, x))
        x = torch.where(gamma_on, ((x - lo) / span).clamp(0, 1) ** g * span + lo, x)

        noise_on = _per_sample(self._coin(b, self.noise_p, x))
        x = torch.where(noise_on, x + draw_normal(x.shape, x, self.generator) * self.noise_std * std, x)

        box = self.random_boxes(x, self.cutout_area) * _per_sample(self._coin(b, self.cutout_p, x))
        x = x * (1 - box) + mean * box
        return _keep_format(x.to(images.dtype), images)

    # ------------------------------------------------------------------ boxes and CutMix

    def random_boxes(
        self, like: torch.Tensor, area: tuple[float, float], ratio: tuple[float, float] = (0.3, 1 / 0.3)
    ) -> torch.Tensor:
        """One random axis-aligned box per sample: B x 1 x H x W float, 1 inside the box.

        Box area is U(area) of the image and its aspect ratio U(ratio), placed uniformly inside.
        """
        b, _, h, w = like.shape
        s = self._u((b,), like, *area) * h * w
        r = self._u((b,), like, *ratio)
        bh = torch.sqrt(s / r).clamp(1, h)
        bw = torch.sqrt(s * r).clamp(1, w)
        top = (self._u((b,), like) * (h - bh + 1)).floor()
        left = (self._u((b,), like) * (w - bw + 1)).floor()
        rows = torch.arange(h, device=like.device, dtype=torch.float32).view(1, h, 1)
        cols = torch.arange(w, device=like.device, dtype=torch.float32).view(1, 1, w)
        inside_r = (rows >= top.view(-1, 1, 1)) & (rows < (top + bh.round()).view(-1, 1, 1))
        inside_c = (cols >= left.view(-1, 1, 1)) & (cols < (left + bw.round()).view(-1, 1, 1))
        return (inside_r & inside_c).unsqueeze(1).float()

    def cutmix(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        area: tuple[float, float] = (0.02, 0.4),
        ratio: tuple[float, float] = (0.3, 1 / 0.3),
        p: float = 0.5,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste a random box of ``b`` into ``a`` (per sample, with probability ``p``).

        Returns the mixed images and the B x 1 x H x W box (1 where the pixel comes from ``b``),
        to mix targets the same way. Defaults follow UniMatch (p 0.5, area 0.02-0.4).
        """
        if a.shape != b.shape:
            raise ValueError(f"cutmix needs tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        box = self.random_boxes(a, area, ratio) * _per_sample(self._coin(a.shape[0], p, a))
        box = box.to(a.dtype)
        return _keep_format(a * (1 - box) + b * box, a), box
