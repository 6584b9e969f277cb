"""An interrupted LDM fit continues from its per-stage checkpoints and ends where an uninterrupted one does."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from harness.progress import Reporter
from plugins.generators.ldm.generator import LatentDiffusionGenerator
from tests.test_generator import SIZE, phantom, tiny


class Interrupt(Exception):
    pass


def _reporter(lines: list[str], stop_at: str | None = None) -> Reporter:
    """Records every update as a line (interval 0); raises when a line starts with ``stop_at``."""

    def record(line: str) -> None:
        lines.append(line)
        if stop_at and line.startswith(stop_at):
            raise Interrupt(line)

    return Reporter(record=record, interval=0.0, timer=False)


def _fit(workdir, lines: list[str], stop_at: str | None = None) -> LatentDiffusionGenerator:
    gen = LatentDiffusionGenerator(tiny(ae_steps=10, unet_steps=10), SIZE, 0, torch.device("cpu"))
    gen.progress = _reporter(lines, stop_at)
    gen.fit(phantom()[0][:8], workdir)
    return gen


@cache
def _reference() -> LatentDiffusionGenerator:
    return _fit(None, [])  # no workdir: no checkpoints


def test_interrupted_fit_resumes_each_stage_and_matches_an_uninterrupted_fit(tmp_path):
    reference = _reference()

    lines: list[str] = []
    with pytest.raises(Interrupt):
        _fit(tmp_path, lines, stop_at="ldm denoiser 6/10")  # after the denoiser's save at step 5 (every 1)
    assert any(line.startswith("ldm autoencoder 10/10 step") for line in lines)
    assert (tmp_path / "autoencoder.pt").is_file() and (tmp_path / "denoiser.pt").is_file()

    lines.clear()
    resumed = _fit(tmp_path, lines)
    assert lines[0].startswith("ldm autoencoder: finished in an earlier attempt")
    assert not any(line.startswith("ldm autoencoder ") and "/10 step" in line for line in lines)  # not retrained
    assert any(line.startswith("ldm denoiser: resuming from step 5 of 10") for line in lines)
    assert lines[-1].startswith("ldm denoiser done: 10/10 step")

    for name in ("autoencoder", "denoiser"):
        ours, theirs = getattr(resumed, name).state_dict(), getattr(reference, name).state_dict()
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], msg=f"{name}.{key}")
    assert resumed.latent_scale == pytest.approx(reference.latent_scale)


def test_a_checkpoint_of_other_inputs_is_ignored(tmp_path):
    with pytest.raises(Interrupt):
        _fit(tmp_path, [], stop_at="ldm autoencoder 3/10")  # saved at step 2
    lines: list[str] = []
    gen = LatentDiffusionGenerator(tiny(ae_steps=10, unet_steps=10, ae_lr=1e-3), SIZE, 0, torch.device("cpu"))
    gen.progress = _reporter(lines, stop_at="ldm autoencoder 1/10")
    with pytest.raises(Interrupt):  # started over: another learning rate is another fit
        gen.fit(phantom()[0][:8], tmp_path)
    assert not any("resuming" in line for line in lines)


def test_sampling_reports_images(tmp_path):
    lines: list[str] = []
    gen = _reference()
    gen.progress = _reporter(lines)
    gen.sample(6, seed=1)
    assert lines[-1].startswith("ldm sampling done: 6/6 img")
