"""Input normalisation, applied identically to real and synthetic images on the device."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

NormMode = Literal["zscore", "published"]

# albumentations Normalize() defaults (ImageNet), used by the published MGCC code
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normaliser:
    """Turns uint8-valued images (N x 1 x H x W) into network inputs (N x C x H x W float).

    ``zscore``: (x - mean) / std with the dataset's statistics, replicated to ``in_channels``.
    ``published``: grey replicated to 3 channels, ImageNet mean/std on x/255, then the extra /255
    of the published code (inputs end up at roughly +-0.01).
    """

    mode: NormMode
    in_channels: int
    mean: float = 0.0
    std: float = 1.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.mode == "zscore":
            x = (x - self.mean) / self.std
            return x.expand(-1, self.in_channels, -1, -1) if self.in_channels != 1 else x
        if self.mode == "published":
            if self.in_channels != 3:
                raise ValueError("the published normalisation needs 3 input channels (--in-channels 3)")
            mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
            return ((x / 255.0 - mean) / std) / 255.0
        raise ValueError(f"unknown normalisation {self.mode!r}; use zscore or published")

    @property
    def input_std(self) -> float:
        """The std of the normalised training images, in network-input units (what "one unit" of
        input noise should be scaled by): 1 under ``zscore``; under ``published`` the fitted pixel
        std through ImageNet Normalize and the second /255 (about 0.004 on BUSI)."""
        if self.mode == "published":
            return float(sum(self.std / 255.0 / s for s in IMAGENET_STD) / len(IMAGENET_STD) / 255.0)
        return 1.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_normaliser(mode: NormMode, in_channels: int, images: torch.Tensor) -> Normaliser:
    """A normaliser whose statistics come from ``images`` (uint8, N x 1 x H x W).

    ``published`` does not use them to normalise; it keeps them for :attr:`Normaliser.input_std`.
    """
    x = images.float()
    std = float(x.std())
    return Normaliser(mode, in_channels, mean=float(x.mean()), std=std if std > 0 else 1.0)
