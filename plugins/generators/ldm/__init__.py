"""The ``ldm`` generator plugin: a latent diffusion model (medfusion-like) fitted on a fold's training images."""

from __future__ import annotations

from harness.hookspecs import hookimpl
from plugins.generators.ldm.generator import LatentDiffusionGenerator, LDMError
from plugins.generators.ldm.params import PRESETS, SAMPLING_FIELDS, LDMParams

__all__ = ["LDMError", "LDMParams", "LatentDiffusionGenerator", "PRESETS", "SAMPLING_FIELDS", "register_generators"]


@hookimpl
def register_generators(register) -> None:  # noqa: ANN001 - the hookspec types it
    register("ldm", LatentDiffusionGenerator)
