"""The generator stage in the harness: cache hits and invalidation, and no val/test image ever reaches fit()."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from harness.api import Generator
from harness.data.datasets import load_dataset
from harness.data.splits import fold_parts, make_split
from harness.generation.pool import GenerationError, default_pool_size, synthetic_pool
from harness.hookspecs import hookimpl
from harness.plugins import build_registry

SIZE = 32


@dataclass
class RecordingParams:
    level: int = 0
    steps: int = 3  # a sampling-only parameter
    copies: int = 0  # the first samples are training images fed back


class RecordingGenerator(Generator):
    """Remembers every image it is fitted on; samples are its mean image plus seeded noise."""

    Params: ClassVar[type] = RecordingParams
    SAMPLING_FIELDS: ClassVar[frozenset[str]] = frozenset({"steps"})
    fits: ClassVar[list[torch.Tensor]] = []

    def fit(self, images: torch.Tensor, workdir: Path, strata: list[str] | None = None) -> dict[str, Any]:
        RecordingGenerator.fits.append(images.clone())
        self.mean = images.float().mean(0)
        self.kept = images[: self.params.copies].clone()
        return {"fit_seconds": 0.0, "n_images": int(images.shape[0])}

    def sample(self, n: int, seed: int) -> torch.Tensor:
        noise = torch.randn((n, 1, self.image_size, self.image_size), generator=torch.Generator().manual_seed(seed))
        out = (self.mean + 10 * noise + self.params.level).clamp(0, 255).to(torch.uint8)
        out[: len(self.kept)] = self.kept[:n]
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"mean": self.mean, "kept": self.kept}, directory / "state.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(directory / "state.pt", weights_only=True)
        self.mean, self.kept = state["mean"], state["kept"]


@pytest.fixture(autouse=True)
def _clear_fits():
    RecordingGenerator.fits.clear()


def _hashes(images: torch.Tensor, ids: list[str]) -> dict[str, str]:
    return {i: hashlib.sha256(images[k].numpy().tobytes()).hexdigest() for k, i in enumerate(ids)}


def _images(n: int = 10, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, SIZE, SIZE), generator=gen, dtype=torch.uint8), [f"img{k}" for k in range(n)]


def pool(images, ids, cache, params=None, n=4, log=None, **kw):
    return synthetic_pool(
        "recording", RecordingGenerator, params or RecordingParams(), images=images, ids=ids,
        content_hashes=kw.pop("hashes", None) or _hashes(images, ids), strata=None, n=n, seed=kw.pop("seed", 0),
        image_size=SIZE, cache_root=cache, device=torch.device("cpu"), log=log or (lambda _m: None),
    )  # fmt: skip


def test_second_call_reuses_fit_and_samples_and_logs_cached(tmp_path):
    images, ids = _images()
    first, info1 = pool(images, ids, tmp_path)
    messages: list[str] = []
    second, info2 = pool(images, ids, tmp_path, log=messages.append)
    assert len(RecordingGenerator.fits) == 1
    assert not info1["cached"] and info2["cached"] and info2["samples_cached"]
    assert torch.equal(first, second)
    assert any("cached" in m for m in messages)
    assert info1["cache_key"] == info2["cache_key"] and len(info1["checkpoint_sha256"]) == 64
    json.dumps(info1)  # the record goes into run.json
    record = json.loads((Path(info1["cache_dir"]) / "fit.json").read_text())
    assert record["cache_key"] == info1["cache_key"] and record["uses_extra_labels"] is False
    assert not list(tmp_path.glob(".*")), "temporary files left behind"


def test_listing_order_does_not_matter_but_content_params_and_seed_do(tmp_path):
    images, ids = _images()
    _, base = pool(images, ids, tmp_path)
    order = list(reversed(range(len(ids))))
    _, shuffled = pool(images[order], [ids[k] for k in order], tmp_path)
    assert shuffled["cached"] and len(RecordingGenerator.fits) == 1

    changed = images.clone()
    changed[3, 0, 0, 0] ^= 1  # one pixel of one training image
    _, after = pool(changed, ids, tmp_path)
    assert not after["cached"] and after["cache_key"] != base["cache_key"]
    assert len(RecordingGenerator.fits) == 2

    _, other_params = pool(images, ids, tmp_path, params=RecordingParams(level=5))
    _, other_seed = pool(images, ids, tmp_path, seed=1)
    assert not other_params["cached"] and not other_seed["cached"]
    assert len(RecordingGenerator.fits) == 4

    _, fewer = pool(images[:9], ids[:9], tmp_path)
    assert not fewer["cached"]


def test_sampling_only_parameters_reuse_the_fit_but_not_the_samples(tmp_path):
    images, ids = _images()
    pool(images, ids, tmp_path)
    _, info = pool(images, ids, tmp_path, params=RecordingParams(steps=9))
    assert info["cached"] and not info["samples_cached"]
    _, more = pool(images, ids, tmp_path, n=6)
    assert more["cached"] and not more["samples_cached"] and more["n"] == 6
    assert len(RecordingGenerator.fits) == 1


def test_bad_input_is_a_user_error(tmp_path):
    images, ids = _images()
    with pytest.raises(GenerationError, match="content hash"):
        pool(images, ids, tmp_path, hashes={"img0": "x"})
    with pytest.raises(GenerationError, match="ids for"):
        pool(images, ids[:3], tmp_path)
    with pytest.raises(GenerationError, match="image size"):
        synthetic_pool("recording", RecordingGenerator, RecordingParams(), images=images, ids=ids,
                       content_hashes=_hashes(images, ids), strata=None, n=2, seed=0, image_size=64,
                       cache_root=tmp_path, device=torch.device("cpu"), log=lambda _m: None)  # fmt: skip
    assert not RecordingGenerator.fits


def test_none_like_generators_and_zero_samples_fit_nothing(tmp_path):
    from plugins.generators.none import NoGenerator

    images, ids = _images()
    out, info = synthetic_pool("none", NoGenerator, None, images=images, ids=ids, content_hashes=_hashes(images, ids),
                               strata=None, n=5, seed=0, image_size=SIZE, cache_root=tmp_path,
                               device=torch.device("cpu"), log=lambda _m: None)  # fmt: skip
    assert out.shape == (0, 1, SIZE, SIZE) and info["n"] == 0
    assert pool(images, ids, tmp_path, n=0)[0].shape[0] == 0 and not RecordingGenerator.fits
    assert default_pool_size(type("P", (), {"max_samples": 128})(), 500) == 128
    assert default_pool_size(RecordingParams(), 37) == 37


def test_the_generator_receives_exactly_the_folds_training_images(tmp_path):
    dataset = load_dataset("phantom:count=40,size=64", image_size=SIZE)
    split = make_split(dataset, protocol="kfold", k=4, seed=0)
    parts = fold_parts(split, 1, 0.25, 0)
    # the runner's composition of the generator's input: the fold's labeled + unlabeled ids
    train_ids = parts.labeled + parts.unlabeled
    idx = dataset.index(train_ids)
    pool(dataset.images[idx], train_ids, tmp_path, hashes=dataset.content_hashes)
    (seen,) = RecordingGenerator.fits

    def keys(images: torch.Tensor) -> list[bytes]:
        return sorted(image.numpy().tobytes() for image in images)

    assert keys(seen) == keys(dataset.images[idx])
    held = {image.numpy().tobytes() for image in dataset.images[dataset.index(parts.val + parts.test)]}
    assert held and not held & set(keys(seen))


# --------------------------------------------------------------------------- bench generate


class _Plugin:
    @hookimpl
    def register_generators(self, register) -> None:  # noqa: ANN001
        register("recording", RecordingGenerator)


def _invoke(monkeypatch, args: list[str]):
    from harness.cli.commands import generate as command

    registry = build_registry(extra_plugins=[("recording-test", _Plugin())])
    monkeypatch.setattr(command, "get_registry", lambda: registry)
    app = typer.Typer()
    command.register(app)
    app.command("noop")(lambda: None)  # two commands, so typer keeps the sub-command name
    return CliRunner().invoke(app, ["generate", *args])


def test_bench_generate_fits_on_the_folds_training_images_and_writes_a_report(monkeypatch, tmp_path):
    data = "phantom:count=40,size=64"
    args = ["--data", data, "--generator", "recording", "--image-size", str(SIZE), "--k", "4", "--fold", "1",
            "--n", "6", "--out", str(tmp_path / "out"), "--set", "recording.copies=2"]  # fmt: skip
    result = _invoke(monkeypatch, args)
    assert result.exit_code == 0, result.output
    dataset = load_dataset(data, image_size=SIZE)
    parts = fold_parts(make_split(dataset, protocol="kfold", k=4, seed=0), 1, 1.0, 0)
    (seen,) = RecordingGenerator.fits
    expected = dataset.images[dataset.index(parts.labeled + parts.unlabeled)]
    assert sorted(i.numpy().tobytes() for i in seen) == sorted(i.numpy().tobytes() for i in expected)

    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["n_train"] == len(expected) and report["n_heldout"] == len(parts.val) + len(parts.test)
    assert report["memorisation"]["near_copies"] == 2 and report["memorisation"]["near_copy_indices"] == [0, 1]
    assert report["fidelity"]["noise"]["histogram_w1"] > 0 and report["fid"] is None
    assert len(list((out / "images").glob("synthetic_*.png"))) == 6
    grid = Image.open(out / "grid.png")
    assert grid.width > grid.height > SIZE and (out / "nearest.png").is_file()
    assert "near-copies" in result.output

    again = _invoke(monkeypatch, [*args, "--drop-copies"])
    assert again.exit_code == 0, again.output
    assert "cached" in again.output and len(RecordingGenerator.fits) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["cached"] and report["dropped"] == [0, 1] and report["written"] == 4
    assert sorted(p.name for p in (out / "images").glob("*.png")) == [f"synthetic_{k:05d}.png" for k in range(2, 6)]


def test_bench_generate_rejects_unknown_overrides(monkeypatch, tmp_path):
    result = _invoke(monkeypatch, ["--data", "phantom:count=12,size=32", "--generator", "recording",
                                   "--out", str(tmp_path), "--set", "backbone.width=3"])  # fmt: skip
    assert result.exit_code != 0
    assert "recording.<param>" in str(result.exception)
