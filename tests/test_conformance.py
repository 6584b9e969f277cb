"""The conformance kit (harness.testing): every built-in component passes it, and it catches broken ones."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from harness.api import Backbone, Batch, DatasetSource, Generator, SegDataset, SSLMethod, StepContext, StepOutput
from harness.data.datasets import assemble_dataset, load_dataset
from harness.hookspecs import hookimpl
from harness.plugins import build_registry
from harness.testing import (
    ConformanceError,
    TinyBackbone,
    check_backbone,
    check_dataset_source,
    check_generator,
    check_params,
    check_ssl_method,
    check_tracker,
    make_images,
    registered_components,
)

# Built-ins whose defaults are large get tiny sizes here; a new built-in without an entry runs on
# its defaults, so nothing registered escapes the kit.
TINY_BACKBONES: dict[str, dict[str, Any]] = {
    "unet": {"width": 4, "kernel": 3},
    "cmunet": {"dim_mult": 1, "lengths": (1, 1), "kernel": 3},
    "smp": {"encoder": "tu-test_resnet.r160_in1k", "decoder_channels": (16, 8, 8, 4, 4)},
}
TINY_GENERATORS: dict[str, dict[str, Any]] = {
    "ldm": {
        "ae_channels": (8, 16, 16),
        "ae_norm_groups": 8,
        "latent_channels": 4,
        "ae_steps": 3,
        "ae_batch": 4,
        "unet_channels": (16, 32),
        "unet_norm_groups": 8,
        "unet_steps": 3,
        "unet_batch": 4,
        "sample_steps": 2,
        "sample_batch": 4,
    },
}


def _builtins(kind: str) -> list[Any]:
    found = registered_components(kind, distribution="segbench")
    assert found, f"no built-in {kind} is registered"
    return found


def write_folder(root: Path, n: int = 6, size: int = 40) -> Path:
    """A dataset folder in the images/ + masks/0/ layout, from the kit's test images."""
    images, masks = make_images(n, size, seed=1)
    (root / "images").mkdir(parents=True)
    (root / "masks" / "0").mkdir(parents=True)
    for i in range(n):
        name = f"{('benign', 'malignant')[i % 2]} ({i}).png"
        Image.fromarray(images[i, 0].numpy()).save(root / "images" / name)
        Image.fromarray(masks[i, 0].numpy().astype(np.uint8) * 255).save(root / "masks" / "0" / name)
    return root


# --------------------------------------------------------------------------- every built-in passes


@pytest.mark.parametrize("component", _builtins("backbone"), ids=str)
def test_builtin_backbone_conforms(component) -> None:
    check_backbone(component.cls, TINY_BACKBONES.get(component.name))


@pytest.mark.parametrize("component", _builtins("ssl_method"), ids=str)
def test_builtin_ssl_method_conforms(component) -> None:
    check_ssl_method(component.cls)


@pytest.mark.parametrize("component", _builtins("generator"), ids=str)
def test_builtin_generator_conforms(component, tmp_path) -> None:
    check_generator(component.cls, TINY_GENERATORS.get(component.name), workdir=tmp_path)


@pytest.mark.parametrize("component", _builtins("dataset"), ids=str)
def test_builtin_dataset_source_conforms(component, tmp_path) -> None:
    specs = {"phantom": "phantom:count=6,size=32", "folder": str(write_folder(tmp_path / "ds"))}
    check_dataset_source(component.cls, specs.get(component.name), cache_dir=tmp_path / "cache")


# mlflow's import alone takes seconds: its check runs in the slow tier
@pytest.mark.parametrize(
    "component",
    [pytest.param(c, marks=pytest.mark.slow) if c.name == "mlflow" else c for c in _builtins("tracker")],
    ids=str,
)
def test_builtin_tracker_conforms(component, tmp_path, monkeypatch) -> None:
    pytest.importorskip({"tensorboard": "tensorboard", "mlflow": "mlflow"}.get(component.name, "harness"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_tracker(component.cls, workdir=tmp_path)


def test_kit_rejects_a_tracker_that_raises(tmp_path) -> None:
    from harness.api import Tracker

    class Broken(Tracker):
        finished: list[str] = []

        def start(self, run) -> None:
            pass

        def log_scalars(self, rows) -> None:
            raise KeyError("train/loss")

        def log_metrics(self, metrics, step) -> None:
            pass

        def finish(self, status) -> None:
            Broken.finished.append(status)

    with pytest.raises(ConformanceError, match="tracker Broken: logging a run raised KeyError"):
        check_tracker(Broken, workdir=tmp_path)
    assert Broken.finished == ["failed"]


def test_methods_also_conform_on_a_builtin_backbone() -> None:
    unet = registered_components("backbone", names=["unet"])[0].cls
    params = unet.Params(width=4, context_lengths=(1, 1, 1), kernel=3)
    for component in _builtins("ssl_method"):
        check_ssl_method(component.cls, lambda: unet(1, 1, params))


def test_register_datasets_hook_adds_a_source_that_loads_by_name() -> None:
    class Discs(DatasetSource):
        def load(self, spec: str | None, options: dict[str, Any]) -> SegDataset:
            images, masks = make_images(5, 48, seed=2)
            ids = [f"disc{i}" for i in range(5)]
            return assemble_dataset(
                name="discs",
                ids=ids,
                native_images=[im[0].numpy() for im in images],
                native_masks=[m[0].numpy() for m in masks],
                strata=["benign"] * 5,
                cases=ids,
                content_hashes={i: f"hash-{i}" for i in ids},
                options=options,
            )

    @hookimpl
    def register_datasets(register) -> None:
        register("discs", Discs)

    registry = build_registry(
        entry_points=[], extra_plugins=[("discs", types.SimpleNamespace(register_datasets=register_datasets))], env={}
    )
    check_dataset_source(registry.get("dataset", "discs"))
    assert load_dataset("discs", image_size=32, registry=registry).images.shape == (5, 1, 32, 32)


# --------------------------------------------------------------------------- the kit catches broken components


class SharedDecoderNet(TinyBackbone):
    """new_decoder() hands out the same decoder every time: multi-decoder methods would train one."""

    def new_decoder(self) -> nn.Module:
        if not hasattr(self, "_shared"):
            self._shared = super().new_decoder()
        return self._shared


class InputFirstNet(TinyBackbone):
    """Its encoder list starts with the input image, against the feature-level contract."""

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x, *super().encode(x)]


class NoDivisorCheckNet(TinyBackbone):
    """Skips the size check, so a bad size fails deep inside with an unhelpful message."""

    divisor = 4

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.encoder(x))


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (SharedDecoderNet, "new_decoder"),
        (InputFirstNet, "input image"),
        (NoDivisorCheckNet, "must raise ValueError"),
    ],
)
def test_kit_rejects_broken_backbones(cls: type[Backbone], message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_backbone(cls, size=16)


class _OneNet(SSLMethod):
    def __init__(self, build_backbone, params) -> None:
        super().__init__(build_backbone, params)
        self.net = build_backbone()

    def inference_network(self) -> nn.Module:
        return self.net


class DetachedConsistency(_OneNet):
    """USB issue #226 in miniature: a second network whose only loss carries no gradient to it."""

    def __init__(self, build_backbone, params) -> None:
        super().__init__(build_backbone, params)
        self.aux = build_backbone()

    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        sup = ctx.supervised_loss(self.net(batch.labeled_images), batch.labeled_masks)
        cons = (self.aux(batch.unlabeled_images).detach() - 0.5).square().mean()
        return StepOutput(loss=sup + cons)


class OwnLoss(_OneNet):
    """Ignores the run's --loss choice."""

    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        logits = self.net(batch.labeled_images)
        return StepOutput(loss=nn.functional.binary_cross_entropy_with_logits(logits, batch.labeled_masks))


class UncheckpointedNet(_OneNet):
    """Evaluates a network kept outside the module tree, so checkpoints would not hold it."""

    def __init__(self, build_backbone, params) -> None:
        super().__init__(build_backbone, params)
        self.hidden = [build_backbone()]

    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        return StepOutput(loss=ctx.supervised_loss(self.net(batch.labeled_images), batch.labeled_masks))

    def inference_network(self) -> nn.Module:
        return self.hidden[0]


class VectorLog(_OneNet):
    """Logs a per-sample vector, which the engine cannot stack."""

    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        logits = self.net(batch.labeled_images)
        loss = ctx.supervised_loss(logits, batch.labeled_masks)
        return StepOutput(loss=loss, logs={"per_sample": logits.detach().mean(dim=(1, 2, 3))})


@dataclass
class _NoDefault:
    weight: float


class NoDefaultParams(OwnLoss):
    Params = _NoDefault


class UnknownPreset(OwnLoss):
    PRESETS = {"quik": {}}


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (DetachedConsistency, "no gradient reaches trainable parameter aux"),
        (OwnLoss, "ctx.supervised_loss"),
        (UncheckpointedNet, "outside the method"),
        (VectorLog, "per_sample"),
        (NoDefaultParams, "weight have no default"),
        (UnknownPreset, "unknown preset"),
    ],
)
def test_kit_rejects_broken_methods(cls: type[SSLMethod], message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_ssl_method(cls)


class _ConstantGenerator(Generator):
    def fit(self, images: torch.Tensor, workdir: Path, strata: list[str] | None = None) -> dict[str, Any]:
        self.mean = float(images.float().mean())
        return {"mean": self.mean}

    def sample(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        noise = torch.rand(n, 1, self.image_size, self.image_size, generator=g) * 2 * self.mean
        return noise.clamp(0, 255).to(torch.uint8)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "mean.txt").write_text(str(self.mean))

    def load(self, directory: Path) -> None:
        self.mean = float((directory / "mean.txt").read_text())


class Unseeded(_ConstantGenerator):
    def sample(self, n: int, seed: int) -> torch.Tensor:
        return super().sample(n, int(torch.randint(0, 2**31, ())))


class FloatSamples(_ConstantGenerator):
    def sample(self, n: int, seed: int) -> torch.Tensor:
        return super().sample(n, seed).float()


class ForgetsOnSave(_ConstantGenerator):
    def load(self, directory: Path) -> None:
        self.mean = 1.0


def test_kit_accepts_a_small_correct_generator() -> None:
    check_generator(_ConstantGenerator)


@pytest.mark.parametrize(
    ("cls", "message"),
    [(Unseeded, "one seed must give the same"), (FloatSamples, "uint8"), (ForgetsOnSave, "restore the sampler")],
)
def test_kit_rejects_broken_generators(cls: type[Generator], message: str) -> None:
    with pytest.raises(ConformanceError, match=message):
        check_generator(cls)


def test_check_params_returns_the_defaults_and_accepts_a_test_preset() -> None:
    class WithTestPreset(OwnLoss):
        PRESETS = {"test": {}, "quick": {}}

    assert check_params(WithTestPreset) is not None
    assert check_params(TinyBackbone).context_stages == 3
