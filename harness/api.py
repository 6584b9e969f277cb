"""The contracts plugins implement: backbones, SSL methods, generators, dataset sources and trackers.

Feature levels
--------------
A backbone's ``encoder(x)`` returns the feature maps from the first real encoder stage (never the
input image itself) down to the deepest one, shallow to deep. ``context`` is an ordered list of
modules applied, one after the other, to the deepest feature only; the skip features are never
mixed. A multi-decoder method may perturb every level of that list (all skips and the bottleneck)
and may read the bottleneck after any number of context stages; this holds for every backbone.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from harness.config.params import build_params
from harness.errors import UserError
from harness.progress import SILENT, Reporter

Features = list[torch.Tensor]


@dataclass
class NoParams:
    """Parameters of a component that has none."""


# --------------------------------------------------------------------------- backbones


class Backbone(nn.Module, ABC):
    """A segmentation network in three parts: encoder, context stages and decoder(s).

    Subclasses set ``self.encoder``, ``self.context`` (an ``nn.ModuleList``, possibly empty) and
    ``self.decoder`` (built with :meth:`new_decoder`) in ``__init__``.
    """

    Params: ClassVar[type] = NoParams
    #: per run preset (quick/medium/paper) parameter values that replace the Params defaults
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: input height and width must be multiples of this (an instance may set its own)
    divisor: int = 16

    encoder: nn.Module
    context: nn.ModuleList
    decoder: nn.Module

    @abstractmethod
    def new_decoder(self) -> nn.Module:
        """A fresh decoder with its own weights: ``decoder(features) -> logits``."""

    def encode(self, x: torch.Tensor) -> Features:
        check_input_size(x, self.divisor, type(self).__name__)
        return list(self.encoder(x))

    def apply_context(self, features: Features, stages: int | None = None) -> Features:
        """Apply the first ``stages`` context modules (all when None) to the deepest feature."""
        deepest = features[-1]
        for module in list(self.context)[: len(self.context) if stages is None else stages]:
            deepest = module(deepest)
        return [*features[:-1], deepest]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.apply_context(self.encode(x)))


class InputSizeError(UserError, ValueError):
    """The input size cannot be divided by the backbone's down-sampling factor."""


def check_input_size(x: torch.Tensor, divisor: int, who: str) -> None:
    """Raise a clear error when the spatial size of ``x`` is not a multiple of ``divisor``."""
    h, w = x.shape[-2:]
    if h % divisor or w % divisor:
        raise InputSizeError(
            f"{who} needs input height and width divisible by {divisor}, got {h}x{w}; "
            f"choose an image size that is a multiple of {divisor}, e.g. {max(divisor, h // divisor * divisor)}"
        )


BackboneFactory = Callable[[], Backbone]


def build_method(
    method_cls: type, backbone_cls: type, in_channels: int, backbone_params: Any, method_params: Any
) -> SSLMethod:
    """A method of ``method_cls`` on backbones of ``backbone_cls``: the one way a run's networks are built.

    Training, DDP ranks, inference and the up-front checks of a run all build through here.
    """
    return method_cls(lambda: backbone_cls(in_channels, 1, backbone_params), method_params)


# --------------------------------------------------------------------------- SSL methods


@dataclass
class Batch:
    """One training step's data, on the training device, normalised and augmented.

    ``labeled_images``: B_l x C x H x W float; ``labeled_masks``: B_l x 1 x H x W float in {0, 1};
    ``unlabeled_images``: B_u x C x H x W float (B_u = 0 for methods that use no unlabeled data).
    ``unlabeled_raw`` holds the same unlabeled images before normalisation (uint8-valued floats in
    [0, 255]) for methods that build their own views with :class:`Augmenter`.
    """

    labeled_images: torch.Tensor
    labeled_masks: torch.Tensor
    unlabeled_images: torch.Tensor
    unlabeled_raw: torch.Tensor | None = None


class Augmenter(Protocol):
    """On-device augmentation operations the engine offers to methods."""

    def geometric(self, images: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """Random 90-degree rotations and flips per sample (jointly with masks)."""

    def weak(self, images: torch.Tensor) -> torch.Tensor:
        """A weak view of normalised images (flip/rotation)."""

    def strong(self, images: torch.Tensor) -> torch.Tensor:
        """A strong view of normalised images (intensity, noise, cutout)."""


@dataclass
class StepContext:
    """What the engine gives a method for one training step."""

    step: int
    total_steps: int
    device: torch.device
    autocast: Callable[[], AbstractContextManager[Any]]
    supervised_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ramp: Callable[[float], float]
    augment: Augmenter
    generator: torch.Generator | None = None
    #: std of the normalised training inputs (1 under z-score); scale input-space noise by it so that
    #: a published-code recipe's noise keeps its size relative to the image under other normalisations
    input_scale: float = 1.0


@dataclass
class StepOutput:
    """The loss to minimise and values to log (tensors are fine: the engine syncs rarely)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)


class SSLMethod(nn.Module, ABC):
    """A training method: builds its networks from a backbone factory and defines one step.

    The engine owns the loop, optimiser, schedule, autocast, checkpoints and validation. All
    modules that must be checkpointed are attributes of the method (it is an ``nn.Module``).
    """

    Params: ClassVar[type] = NoParams
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: False for methods that train on labeled data only (the engine then draws no unlabeled batch)
    uses_unlabeled: ClassVar[bool] = True

    def __init__(self, build_backbone: BackboneFactory, params: Any) -> None:
        super().__init__()
        self.params = params

    @abstractmethod
    def train_step(self, batch: Batch, ctx: StepContext) -> StepOutput:
        """Compute the loss of one step (forward passes under ``ctx.autocast()``)."""

    @abstractmethod
    def inference_network(self) -> nn.Module:
        """The network used for validation, evaluation and export: ``net(x) -> logits``."""

    def after_step(self, ctx: StepContext) -> None:
        """Called after each optimiser step (e.g. to update an EMA teacher)."""

    def optimizer_groups(self) -> list[list[dict[str, Any]]]:
        """Parameter groups per optimiser; the default is one optimiser over trainable parameters.

        Return several lists to get several optimisers (e.g. one per network for CPS). A group may
        carry ``lr_scale`` to scale the base learning rate.
        """
        return [[{"params": [p for p in self.parameters() if p.requires_grad]}]]

    def describe(self) -> dict[str, Any]:
        """Facts about the method recorded in run.json (e.g. which network is evaluated)."""
        return {}


# --------------------------------------------------------------------------- generators


class Generator(ABC):
    """Fits on a fold's training images and samples synthetic images of the same size.

    Optional class attributes read by the cache (harness.generation.pool): ``SAMPLING_FIELDS``, the
    parameters that only affect sampling (changing them never refits), and ``CACHE_VERSION``, part
    of the cache key (bump it when a code change makes fitted models invalid).

    Progress: before :meth:`fit` and :meth:`sample` the harness sets :attr:`progress` to the run's
    reporter; a long loop opens a task on it (``with self.progress.task("autoencoder", total=steps,
    unit="step") as bar: ... bar.update(step + 1, loss=loss)``). Lines go to the terminal and run.log.

    Resume: the harness passes the same ``workdir`` to a fit that was interrupted and is started
    again with the same inputs; a generator may save its own per-stage state there and continue.
    """

    Params: ClassVar[type] = NoParams
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    #: False for a generator that makes no images (``none``)
    produces_images: ClassVar[bool] = True
    #: True when fitting reads image-level labels (strata): results are marked as using extra labels
    uses_strata: bool = False
    #: where progress goes; the harness replaces the silent default before fit() and sample()
    progress: Reporter = SILENT

    def __init__(self, params: Any, image_size: int, seed: int, device: torch.device) -> None:
        self.params = params
        self.image_size = image_size
        self.seed = seed
        self.device = device

    @abstractmethod
    def fit(self, images: torch.Tensor, workdir: Path, strata: list[str] | None = None) -> dict[str, Any]:
        """Fit on ``images`` (N x 1 x H x W uint8); return facts to record (times, losses)."""

    @abstractmethod
    def sample(self, n: int, seed: int) -> torch.Tensor:
        """Return ``n`` synthetic images, n x 1 x H x W uint8, at ``image_size``."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """Persist the fitted state (weights, scale factors) under ``directory``."""

    @abstractmethod
    def load(self, directory: Path) -> None:
        """Restore a state written by :meth:`save`."""

    def describe(self) -> dict[str, Any]:
        """Facts recorded next to the samples (parameter counts, schedule, ...)."""
        return {}


# --------------------------------------------------------------------------- datasets


@dataclass
class SegDataset:
    """A decoded, resized dataset held in memory.

    ``images``: N x 1 x S x S uint8; ``masks``: N x 1 x S x S bool at the model grid.
    ``native_masks[i]``: the original-resolution bool mask; ``boxes[i]``: (top, left, height,
    width) of the image inside the S x S grid (the full grid for ``squash`` resizing).
    ``unlabeled``: M x 1 x S x S uint8 image-only data, never evaluated.
    """

    name: str
    ids: list[str]
    images: torch.Tensor
    masks: torch.Tensor
    strata: list[str]
    cases: list[str]
    native_masks: list[np.ndarray]
    boxes: list[tuple[int, int, int, int]]
    unlabeled: torch.Tensor
    unlabeled_ids: list[str]
    content_hashes: dict[str, str]
    fingerprint: str
    spacing: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: hash of the ids' masks (the fingerprint covers ids and images only); "" when the source gives none
    mask_fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, ids: list[str]) -> list[int]:
        """Positions of ``ids``; raises naming the first unknown id."""
        lookup = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in lookup]
        if missing:
            raise KeyError(f"ids not in dataset {self.name!r}: {missing[:5]}")
        return [lookup[i] for i in ids]


class DatasetSource(ABC):
    """Turns a dataset reference (a folder path or a name) into a :class:`SegDataset`."""

    Params: ClassVar[type] = NoParams

    @abstractmethod
    def load(self, spec: str | None, options: dict[str, Any]) -> SegDataset:
        """Load the dataset; ``options`` holds image_size, resize, include_strata, cache_dir, ..."""


# --------------------------------------------------------------------------- trackers


class TrackerError(UserError):
    """A tracker cannot start or write (e.g. its package is not installed); the message says what to do."""


@dataclass
class TrackedRun:
    """What a tracker learns about a run when it starts.

    ``config`` is the run's resolved configuration (run.json ``config``), the same dict that is hashed
    into ``run_id``; ``resumed`` is True when an earlier attempt of the run was interrupted.
    """

    name: str
    run_id: str
    run_dir: Path
    out_dir: Path
    config: dict[str, Any]
    resumed: bool = False


#: one logged row: (training step, {scalar name: value}); names are ``train/<term>`` or ``val/<metric>``
ScalarRow = tuple[int, dict[str, float]]


class Tracker(ABC):
    """Sends one run to an experiment tracker (TensorBoard, MLflow, ...). Register with ``register_trackers``.

    A tracker is built per run, in the process that trains it (rank 0 of a distributed run), from its
    ``Params`` (``bench run --tracker-set NAME.KEY=VALUE``). The host calls, in this order:
    :meth:`start` once; :meth:`log_scalars` once per logging window (training losses, lr, ramp weight)
    and once per validation (val Dice), with values already on the host; :meth:`log_metrics` with the
    final test metrics and :meth:`log_figure` per figure after evaluation; :meth:`finish` at the end,
    also when the run fails. A tracker never changes a run: it is not part of the run's hash, and
    one that raises is dropped for the rest of the run with one warning (fatal with
    ``SEGBENCH_STRICT_PLUGINS=1``). Import optional packages inside :meth:`start` and raise
    :class:`TrackerError` naming the ``pip install`` that fixes a missing one.
    """

    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any) -> None:
        self.params = params

    @abstractmethod
    def start(self, run: TrackedRun) -> None:
        """Open the tracker's record of ``run`` and record its configuration."""

    @abstractmethod
    def log_scalars(self, rows: list[ScalarRow]) -> None:
        """Record one logging window: ``[(step, {"train/loss": 0.41, "train/lr": 0.009}), ...]``."""

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record the final test metrics (``test/best/dice``, ...) at ``step`` (the last training step)."""

    def log_figure(self, name: str, figure: Any, step: int) -> None:  # noqa: B027 - optional, default no-op
        """Record a matplotlib ``Figure`` (Agg canvas) under ``name``; the default ignores figures."""

    @abstractmethod
    def finish(self, status: str) -> None:
        """Close the record; ``status`` is ``done``, ``failed`` or ``interrupted``."""


# --------------------------------------------------------------------------- parameters


def params_dict(params: Any) -> dict[str, Any]:
    """A JSON-ready dict of a parameters dataclass."""
    return dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {}


def resolve_params(component: type, preset: str | None, overrides: dict[str, Any] | None, who: str) -> Any:
    """Params of ``component``: dataclass defaults, then its ``PRESETS[preset]``, then ``overrides``."""
    values = dict(getattr(component, "PRESETS", {}).get(preset or "", {}))
    values.update(overrides or {})
    return build_params(getattr(component, "Params", NoParams), values, who)
