"""The ``none`` generator: no synthetic images; the unlabeled pool is the fold's real unlabeled images."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.api import Generator
from harness.hookspecs import hookimpl


class NoGenerator(Generator):
    """Makes no images; fitting records only that nothing was fitted."""

    produces_images: ClassVar[bool] = False

    def fit(self, images: torch.Tensor, workdir: Path, strata: list[str] | None = None) -> dict[str, Any]:
        return {"fit_seconds": 0.0, "n_images": int(images.shape[0])}

    def sample(self, n: int, seed: int) -> torch.Tensor:
        if n:
            raise ValueError("the 'none' generator makes no images; ask for n=0 or choose a generator such as 'ldm'")
        return torch.empty((0, 1, self.image_size, self.image_size), dtype=torch.uint8)

    def save(self, directory: Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)

    def load(self, directory: Path) -> None:
        """Nothing to restore."""

    def describe(self) -> dict[str, Any]:
        return {"model": "none: no synthetic images"}


@hookimpl
def register_generators(register) -> None:  # noqa: ANN001
    register("none", NoGenerator)
