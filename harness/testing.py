"""The conformance kit: checks that a backbone, SSL method, generator, dataset source or tracker honours its contract.

Plugin authors use it from their own tests::

    pytest_plugins = ["harness.testing"]

    from harness.testing import check_backbone, check_ssl_method

    def test_my_backbone():
        check_backbone(MyBackbone, {"width": 4})

    def test_my_method():
        check_ssl_method(MyMethod)            # on the kit's tiny reference backbone

Loaded as a pytest plugin, the module also parametrizes any test that takes an argument named
``segbench_backbone``, ``segbench_ssl_method``, ``segbench_generator``, ``segbench_dataset`` or
``segbench_tracker`` over the registered components of that kind (a :class:`Component` each); the marker
``@pytest.mark.segbench_components(distribution="my-dist")`` limits them to one distribution.

Every ``check_*`` function raises :class:`ConformanceError` (an ``AssertionError``) with a message
that names the component and the broken rule, and returns what it built for further checks.

The kit raises its own errors rather than using ``assert``, so pytest need not rewrite it
(PYTEST_DONT_REWRITE), and importing it before pytest loads it as a plugin is fine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from harness.api import (
    Backbone,
    BackboneFactory,
    Batch,
    DatasetSource,
    Generator,
    NoParams,
    SegDataset,
    SSLMethod,
    StepContext,
    StepOutput,
    TrackedRun,
    Tracker,
    resolve_params,
)
from harness.config.presets import PRESETS as RUN_PRESETS
from harness.training.augment import DeviceAugmenter
from harness.training.losses import SupervisedLoss, bce_dice_loss
from harness.training.schedules import consistency_weight

#: preset names a component's ``PRESETS`` may use: the run presets, plus "test" for the kit's tiny size
KNOWN_PRESETS = frozenset([*RUN_PRESETS, "test"])


class ConformanceError(AssertionError):
    """A component breaks its contract; the message names the component and the rule."""


def _require(condition: object, who: str, message: str) -> None:
    if not condition:
        raise ConformanceError(f"{who}: {message}")


# --------------------------------------------------------------------------- test data


def make_images(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` ultrasound-like test images (uint8, n x 1 x size x size) and their lesion masks (bool).

    A bright textured background with one dark disc (the lesion) per image, from ``seed`` alone.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    margin = max(2, size // 4)
    cy = torch.randint(margin, size - margin, (n, 1, 1), generator=g)
    cx = torch.randint(margin, size - margin, (n, 1, 1), generator=g)
    r = torch.randint(max(1, size // 8), max(2, size // 4), (n, 1, 1), generator=g)
    masks = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).unsqueeze(1)
    speckle = torch.rand(n, 1, size, size, generator=g)
    images = torch.where(masks, 40 + 30 * speckle, 120 + 100 * speckle)
    return images.round().to(torch.uint8), masks


def make_batch(n_labeled: int = 2, n_unlabeled: int = 2, size: int = 32, in_channels: int = 1, seed: int = 0) -> Batch:
    """A training batch as the engine builds one: z-scored images, {0, 1} masks, raw unlabeled images."""
    raw, masks = make_images(n_labeled + n_unlabeled, size, seed)
    x = raw.float()
    normalised = ((x - x.mean()) / x.std().clamp_min(1e-6)).repeat(1, in_channels, 1, 1)
    return Batch(
        labeled_images=normalised[:n_labeled],
        labeled_masks=masks[:n_labeled].float(),
        unlabeled_images=normalised[n_labeled:],
        unlabeled_raw=x[n_labeled:].repeat(1, in_channels, 1, 1),
    )


def make_context(
    step: int,
    total_steps: int,
    *,
    seed: int = 0,
    supervised_loss: SupervisedLoss = bce_dice_loss,
    precision: str = "fp32",
) -> StepContext:
    """A CPU :class:`StepContext` like the engine's: scaled sigmoid ramp, on-device augmenter, seeded."""
    generator = torch.Generator().manual_seed(seed * 100_003 + step)
    autocast: Callable[[], Any] = (
        contextlib.nullcontext if precision == "fp32" else lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    )
    return StepContext(
        step=step,
        total_steps=total_steps,
        device=torch.device("cpu"),
        autocast=autocast,
        supervised_loss=supervised_loss,
        ramp=lambda w: consistency_weight(w, step, total_steps, "scaled"),
        augment=DeviceAugmenter(generator),
        generator=generator,
    )


# --------------------------------------------------------------------------- the kit's reference backbone


@dataclass
class TinyBackboneParams:
    """Width of the first level and number of context stages of :class:`TinyBackbone`."""

    width: int = 4
    context_stages: int = 3


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class _TinyEncoder(nn.Module):
    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.shallow = _conv_bn_relu(in_channels, width)
        self.deep = nn.Sequential(nn.MaxPool2d(2), _conv_bn_relu(width, 2 * width))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        shallow = self.shallow(x)
        return [shallow, self.deep(shallow)]


class _TinyDecoder(nn.Module):
    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = _conv_bn_relu(3 * width, width)
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        shallow, deep = features
        return self.head(self.fuse(torch.cat([shallow, self.up(deep)], dim=1)))


class TinyBackbone(Backbone):
    """A two-level network with ``context_stages`` bottleneck stages: fast, and enough for every method.

    The kit runs methods on it when no backbone factory is given, so a method is checked against
    the contract rather than against one particular built-in network.
    """

    Params = TinyBackboneParams
    divisor = 2

    def __init__(self, in_channels: int, out_channels: int, params: TinyBackboneParams | None = None) -> None:
        super().__init__()
        self.params = params = params or TinyBackboneParams()
        self.out_channels = out_channels
        self.encoder = _TinyEncoder(in_channels, params.width)
        self.context = nn.ModuleList(
            _conv_bn_relu(2 * params.width, 2 * params.width) for _ in range(params.context_stages)
        )
        self.decoder = self.new_decoder()

    def new_decoder(self) -> nn.Module:
        return _TinyDecoder(self.params.width, self.out_channels)


def tiny_backbone_factory(in_channels: int = 1, out_channels: int = 1, width: int = 4) -> BackboneFactory:
    """A factory of fresh :class:`TinyBackbone` networks, as the runner hands to a method."""
    return lambda: TinyBackbone(in_channels, out_channels, TinyBackboneParams(width=width))


# --------------------------------------------------------------------------- parameters


def _resolve(component: type, params: Any, who: str, preset: str | None = None) -> Any:
    """``params`` as given (an instance), as overrides of the defaults (a mapping), or the defaults."""
    if params is None or isinstance(params, Mapping):
        return resolve_params(component, preset, dict(params or {}), who)
    return params


def check_params(component: type) -> Any:
    """Check ``component.Params`` and ``component.PRESETS``; return the default parameters.

    Params must be a dataclass whose every field has a default (a run with no ``--set`` must be
    possible), whose values are JSON-ready (they are written to run.json), and every PRESETS entry
    must name a known preset and resolve.
    """
    who = f"{component.__name__}.Params"
    params_cls = getattr(component, "Params", NoParams)
    _require(
        dataclasses.is_dataclass(params_cls), who, f"{params_cls!r} is not a dataclass; decorate it with @dataclass"
    )
    missing = [
        f.name
        for f in dataclasses.fields(params_cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    _require(not missing, who, f"field(s) {', '.join(missing)} have no default; every parameter needs one")
    defaults = params_cls()
    try:
        json.dumps(dataclasses.asdict(defaults))
    except TypeError as exc:
        raise ConformanceError(
            f"{who}: defaults are not JSON-ready ({exc}); use numbers, strings, bools, tuples"
        ) from None
    presets = getattr(component, "PRESETS", {})
    _require(isinstance(presets, Mapping), who, "PRESETS must be a dict of preset name -> {parameter: value}")
    unknown = sorted(set(presets) - KNOWN_PRESETS)
    _require(not unknown, who, f"PRESETS names unknown preset(s) {unknown}; known: {', '.join(sorted(KNOWN_PRESETS))}")
    for preset in presets:
        resolve_params(component, preset, {}, f"{component.__name__} preset {preset!r}")
    return defaults


# --------------------------------------------------------------------------- backbones


def _param_ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def check_backbone(
    cls: type[Backbone],
    params: Any = None,
    size: int = 64,
    *,
    in_channels: int = 1,
    out_channels: int = 1,
    batch: int = 2,
) -> Backbone:
    """Check a backbone class; ``params``: an instance, a dict of overrides, or None for the defaults.

    Verifies the encoder's feature list (shallow to deep, never the input itself), context stages
    that keep the bottleneck's shape, decoders that map features to ``out_channels`` logits at the
    input size after any number of context stages, ``new_decoder()`` sharing no parameter with the
    network, gradients reaching every parameter, a clear ``ValueError`` for sizes not divisible by
    ``divisor``, and a 3-channel, 2-class build. Returns the network.
    """
    who = f"backbone {cls.__name__}"
    _require(isinstance(cls, type) and issubclass(cls, Backbone), who, "must subclass harness.api.Backbone")
    check_params(cls)
    params = _resolve(cls, params, who)
    torch.manual_seed(0)
    net = cls(in_channels, out_channels, params)
    divisor = int(net.divisor)
    if size % divisor:
        raise ConformanceError(f"{who}: the test size {size} is not a multiple of its divisor {divisor}; pass size=")
    _require(isinstance(net.encoder, nn.Module), who, "self.encoder must be an nn.Module")
    _require(isinstance(net.context, nn.ModuleList), who, "self.context must be an nn.ModuleList (possibly empty)")
    _require(isinstance(net.decoder, nn.Module), who, "self.decoder must be an nn.Module built by new_decoder()")

    x = torch.randn(batch, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    net.train()
    features = net.encode(x)
    _require(
        isinstance(features, list) and features and all(torch.is_tensor(f) for f in features),
        who,
        "encode(x) must return a non-empty list of tensors",
    )
    for level, f in enumerate(features):
        _require(
            f.dim() == 4 and f.shape[0] == batch, who, f"feature {level} has shape {tuple(f.shape)}, not B x C x H x W"
        )
    _require(
        not (features[0].shape == x.shape and torch.equal(features[0], x)),
        who,
        "encoder(x) starts with the input image; per harness.api it must start at the first real stage",
    )
    sides = [f.shape[-1] for f in features]
    _require(sides == sorted(sides, reverse=True), who, f"features must go shallow to deep, got sizes {sides}")

    bottleneck = features[-1].shape
    for stages in range(len(net.context) + 1):
        out = net.apply_context(features, stages)
        _require(
            out[-1].shape == bottleneck, who, f"context stage {stages} changes the bottleneck shape {tuple(bottleneck)}"
        )
        _require(all(a is b for a, b in zip(out[:-1], features[:-1], strict=True)), who, "context must not touch skips")

    second = net.new_decoder()
    _require(isinstance(second, nn.Module) and second is not net.decoder, who, "new_decoder() must return a new module")
    shared = _param_ids(second) & _param_ids(net)
    _require(not shared, who, f"new_decoder() shares {len(shared)} parameter tensor(s) with the network")
    for stages in range(len(net.context) + 1):
        for decoder in (net.decoder, second):
            logits = decoder(net.apply_context(features, stages))
            _require(
                logits.shape == (batch, out_channels, size, size),
                who,
                f"a decoder after {stages} context stage(s) returned {tuple(logits.shape)}, "
                f"expected {(batch, out_channels, size, size)}",
            )
    loss = net(x).float().square().mean() + second(net.apply_context(net.encode(x))).float().square().mean()
    loss.backward()
    for module, label in ((net, "network"), (second, "new decoder")):
        dead = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
        _require(not dead, who, f"no gradient reaches {label} parameter(s) {dead[:3]}")

    net.eval()
    with torch.no_grad():
        full = net(x)
        parts = net.decoder(net.apply_context(net.encode(x)))
    _require(torch.isfinite(full).all(), who, "forward(x) gives non-finite logits")
    _require(torch.allclose(full, parts, atol=1e-5), who, "forward(x) must equal decoder(apply_context(encode(x)))")
    if divisor > 1:
        bad = size + max(1, divisor // 2)
        try:
            net(torch.zeros(1, in_channels, bad, bad))
        except ValueError as exc:
            _require(str(divisor) in str(exc), who, f"the size error must name the divisor {divisor}: {exc}")
        else:
            raise ConformanceError(f"{who}: a {bad}x{bad} input (not a multiple of {divisor}) must raise ValueError")

    other = cls(3, 2, params)
    other.eval()
    with torch.no_grad():
        rgb = other(torch.zeros(1, 3, size, size))
    _require(rgb.shape == (1, 2, size, size), who, f"a 3-channel, 2-class build returned {tuple(rgb.shape)}")
    return net


# --------------------------------------------------------------------------- SSL methods


def _counting(loss: SupervisedLoss) -> tuple[SupervisedLoss, list[int]]:
    calls: list[int] = []

    def counted(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return loss(logits, target)

    return counted, calls


def _check_step_output(out: Any, who: str) -> None:
    _require(isinstance(out, StepOutput), who, f"train_step must return a StepOutput, got {type(out).__name__}")
    loss = out.loss
    _require(torch.is_tensor(loss) and loss.dim() == 0, who, f"the loss must be a 0-dim tensor, got {loss!r:.80}")
    _require(loss.dtype == torch.float32, who, f"the loss must be float32 (compute losses in fp32), got {loss.dtype}")
    _require(bool(torch.isfinite(loss.detach())), who, f"the loss is not finite: {loss.item()}")
    _require(loss.requires_grad, who, "the loss carries no gradient")
    for key, value in out.logs.items():
        scalar = isinstance(value, (int, float)) or (torch.is_tensor(value) and value.dim() == 0)
        _require(scalar, who, f"log {key!r} must be a number or a 0-dim tensor")
        _require(math.isfinite(float(value)), who, f"log {key!r} is not finite: {float(value)}")


def _check_gradients(method: SSLMethod, who: str) -> None:
    for name, p in method.named_parameters():
        if p.requires_grad:
            _require(p.grad is not None, who, f"no gradient reaches trainable parameter {name}")
            _require(torch.isfinite(p.grad).all(), who, f"the gradient of {name} is not finite")
        else:
            _require(p.grad is None, who, f"frozen parameter {name} received a gradient")
    for child_name, child in method.named_children():
        grads = [p.grad for p in child.parameters() if p.requires_grad and p.grad is not None]
        if grads:
            _require(
                sum(float(g.abs().sum()) for g in grads) > 0, who, f"every gradient of module {child_name!r} is zero"
            )


def _check_optimizer_groups(method: SSLMethod, who: str) -> list[torch.optim.Optimizer]:
    groups = method.optimizer_groups()
    seen: list[int] = [id(p) for optimiser in groups for group in optimiser for p in group["params"]]
    trainable = {id(p) for p in method.parameters() if p.requires_grad}
    _require(len(seen) == len(set(seen)), who, "optimizer_groups() lists a parameter twice")
    _require(set(seen) == trainable, who, "optimizer_groups() must cover every trainable parameter exactly once")
    return [torch.optim.SGD(optimiser, lr=0.01, momentum=0.9) for optimiser in groups]


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # as the engine reads checkpoints


def check_ssl_method(
    cls: type[SSLMethod],
    backbone_factory: BackboneFactory | None = None,
    params: Any = None,
    *,
    size: int = 32,
    total_steps: int = 10,
) -> SSLMethod:
    """Check an SSL method class on ``backbone_factory`` (default: the kit's :class:`TinyBackbone`).

    Runs two training steps as the engine does (the second at the end of the ramp) and verifies: a
    finite float32 0-dim loss with a gradient, scalar logs, use of ``ctx.supervised_loss``,
    gradients on every trainable parameter and none on frozen ones, optimiser groups covering the
    trainable parameters once, ``after_step``, a state that round-trips through a checkpoint into a
    fresh instance (same inference outputs), and an inference network that belongs to the method and
    maps images to one logit channel, deterministically in eval mode. Returns the trained method.
    """
    who = f"SSL method {cls.__name__}"
    _require(isinstance(cls, type) and issubclass(cls, SSLMethod), who, "must subclass harness.api.SSLMethod")
    check_params(cls)
    params = _resolve(cls, params, who)
    factory = backbone_factory or tiny_backbone_factory()
    torch.manual_seed(0)
    method = cls(factory, params)
    n_unlabeled = 2 if method.uses_unlabeled else 0
    batch = make_batch(n_labeled=2, n_unlabeled=n_unlabeled, size=size)
    optimisers = _check_optimizer_groups(method, who)
    method.train()
    for step in (0, total_steps - 1):
        loss_fn, calls = _counting(bce_dice_loss)
        ctx = make_context(step, total_steps, supervised_loss=loss_fn)
        for optimiser in optimisers:
            optimiser.zero_grad(set_to_none=True)
        out = method.train_step(batch, ctx)
        _check_step_output(out, who)
        _require(calls, who, "train_step must compute the supervised loss with ctx.supervised_loss")
        out.loss.backward()
        _check_gradients(method, who)
        for optimiser in optimisers:
            optimiser.step()
        method.after_step(ctx)

    net = method.inference_network()
    _require(isinstance(net, nn.Module), who, "inference_network() must return an nn.Module")
    outside = _param_ids(net) - _param_ids(method)
    _require(not outside, who, "inference_network() has parameters outside the method: they would not be checkpointed")
    torch.manual_seed(1)
    fresh = cls(factory, params)
    try:
        fresh.load_state_dict(_roundtrip(method.state_dict()))
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the message must say where
        raise ConformanceError(f"{who}: its state_dict does not load into a fresh instance: {exc}") from None
    method.eval()
    fresh.eval()
    x = batch.labeled_images
    with torch.no_grad():
        first, again = method.inference_network()(x), method.inference_network()(x)
        restored = fresh.inference_network()(x)
    _require(first.shape == (x.shape[0], 1, size, size), who, f"the inference network returned {tuple(first.shape)}")
    _require(torch.isfinite(first).all(), who, "the inference network gives non-finite logits")
    _require(torch.equal(first, again), who, "the inference network is not deterministic in eval mode")
    _require(
        torch.allclose(first, restored, atol=1e-5),
        who,
        "a fresh instance loaded from the checkpoint predicts otherwise",
    )
    described = method.describe()
    _require(isinstance(described, dict), who, "describe() must return a dict")
    try:
        json.dumps(described)
    except TypeError as exc:
        raise ConformanceError(f"{who}: describe() is not JSON-ready: {exc}") from None
    return method


# --------------------------------------------------------------------------- generators


@contextlib.contextmanager
def _directory(path: Path | None) -> Iterator[Path]:
    if path is not None:
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="segbench-kit-") as tmp:
        yield Path(tmp)


def check_generator(
    cls: type[Generator],
    params: Any = None,
    *,
    size: int = 32,
    n_images: int = 16,
    workdir: Path | None = None,
) -> Generator:
    """Check a generator class; ``params``: an instance, overrides, or None (its ``"test"`` preset if any).

    Fits on ``n_images`` test images as the harness does (a work directory that does not exist
    yet), then verifies sample shapes and uint8 dtype, the same images for one seed and other images
    for another, ``n = 0``, and that ``save`` + ``load`` into a fresh instance restore the sampler.
    """
    who = f"generator {cls.__name__}"
    _require(isinstance(cls, type) and issubclass(cls, Generator), who, "must subclass harness.api.Generator")
    check_params(cls)
    preset = "test" if "test" in getattr(cls, "PRESETS", {}) else None
    params = _resolve(cls, params, who, preset)
    images, _ = make_images(n_images, size, seed=0)
    cpu = torch.device("cpu")
    gen = cls(params, size, 0, cpu)
    with _directory(workdir) as root:
        facts = gen.fit(images, root / "work")
        _require(isinstance(facts, dict), who, "fit() must return a dict of facts")
        try:
            json.dumps(facts)
        except TypeError as exc:
            raise ConformanceError(f"{who}: fit() facts are not JSON-ready: {exc}") from None
        empty = gen.sample(0, seed=0)
        _require(
            empty.shape == (0, 1, size, size) and empty.dtype == torch.uint8,
            who,
            f"sample(0) must be a 0 x 1 x {size} x {size} uint8 tensor",
        )
        if cls.produces_images:
            first = gen.sample(3, seed=5)
            _require(first.shape == (3, 1, size, size), who, f"sample(3) returned {tuple(first.shape)}")
            _require(first.dtype == torch.uint8, who, f"samples must be uint8, got {first.dtype}")
            _require(torch.equal(first, gen.sample(3, seed=5)), who, "one seed must give the same samples")
            _require(not torch.equal(first, gen.sample(3, seed=6)), who, "another seed must give other samples")
            gen.save(root / "model")
            fresh = cls(params, size, 0, cpu)
            fresh.load(root / "model")
            _require(torch.equal(first, fresh.sample(3, seed=5)), who, "save() + load() do not restore the sampler")
    described = gen.describe()
    _require(isinstance(described, dict), who, "describe() must return a dict")
    return gen


# --------------------------------------------------------------------------- dataset sources


def check_dataset_source(
    cls: type[DatasetSource], spec: str | None = None, *, size: int = 32, cache_dir: Path | None = None
) -> SegDataset:
    """Check a dataset source: ``cls().load(spec, options)`` gives a consistent :class:`SegDataset`.

    Verifies image and mask tensors (uint8 / bool, N x 1 x size x size), one id, stratum, case,
    native mask, box and content hash per image, unique ids, unlabeled images and ids that match,
    and the same fingerprint when loaded twice.
    """
    who = f"dataset source {cls.__name__}"
    _require(isinstance(cls, type) and issubclass(cls, DatasetSource), who, "must subclass harness.api.DatasetSource")
    with _directory(cache_dir) as cache:
        options = {
            "image_size": size,
            "resize": None,
            "include_strata": None,
            "mask_threshold": None,
            "cache_dir": cache,
            "params": {},
        }
        data = cls().load(spec, dict(options))
        again = cls().load(spec, dict(options))
    _require(isinstance(data, SegDataset), who, f"load() must return a SegDataset, got {type(data).__name__}")
    n = len(data.ids)
    _require(n > 0, who, "the dataset has no images")
    _require(len(set(data.ids)) == n, who, "ids must be unique")
    _require(data.images.dtype == torch.uint8, who, f"images must be uint8, got {data.images.dtype}")
    _require(tuple(data.images.shape) == (n, 1, size, size), who, f"images have shape {tuple(data.images.shape)}")
    _require(data.masks.dtype == torch.bool, who, f"masks must be bool, got {data.masks.dtype}")
    _require(data.masks.shape == data.images.shape, who, "masks must have the images' shape")
    for name in ("strata", "cases", "native_masks", "boxes"):
        _require(len(getattr(data, name)) == n, who, f"{name} must hold one entry per image")
    _require(all(m.dtype == bool and m.ndim == 2 for m in data.native_masks), who, "native masks must be 2-D bool")
    _require(set(data.ids) <= set(data.content_hashes), who, "every id needs a content hash")
    _require(
        data.unlabeled.dtype == torch.uint8 and tuple(data.unlabeled.shape[1:]) == (1, size, size),
        who,
        "unlabeled images must be uint8, M x 1 x size x size",
    )
    _require(len(data.unlabeled_ids) == data.unlabeled.shape[0], who, "one unlabeled id per unlabeled image")
    _require(bool(data.fingerprint) and data.fingerprint == again.fingerprint, who, "the fingerprint must be stable")
    return data


# --------------------------------------------------------------------------- trackers


def _tiny_figure() -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5), dpi=50)
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1, 2], [0.2, 0.5, 0.4])
    return fig


def check_tracker(cls: type[Tracker], params: Any = None, *, workdir: Path | None = None) -> Tracker:
    """Check a tracker class by feeding it a whole (made-up) run the way the harness does.

    ``params``: an instance, overrides, or None (the defaults). Calls ``start`` with a run folder
    inside a results directory, two logging windows of training scalars and one validation row,
    the final test metrics, one figure and ``finish("done")``; each must return without error.
    A tracker whose optional package is missing must raise :class:`harness.api.TrackerError` from
    ``start`` (the kit re-raises it as the reason the check cannot run).
    """
    who = f"tracker {cls.__name__}"
    _require(isinstance(cls, type) and issubclass(cls, Tracker), who, "must subclass harness.api.Tracker")
    check_params(cls)
    tracker = cls(_resolve(cls, params, who))
    with _directory(workdir) as root:
        run_dir = root / "results" / "kit_run_0123456789"
        run_dir.mkdir(parents=True)
        run = TrackedRun("kit_run_0123456789", "0123456789", run_dir, root / "results", {"ssl": "kit", "train": {}})
        tracker.start(run)
        try:
            tracker.log_scalars([(0, {"train/loss": 1.0, "train/lr": 0.01}), (1, {"train/loss": 0.9})])
            tracker.log_scalars([(1, {"val/dice_lesion": 0.5})])
            tracker.log_scalars([])
            tracker.log_metrics({"test/best/dice": 0.6, "test/best/hd95": 3.5}, 1)
            tracker.log_figure("kit", _tiny_figure(), 1)
        except Exception as exc:
            tracker.finish("failed")
            raise ConformanceError(f"{who}: logging a run raised {type(exc).__name__}: {exc}") from exc
        tracker.finish("done")
    return tracker


# --------------------------------------------------------------------------- the pytest plugin


@dataclass(frozen=True)
class Component:
    """One registered component, as the ``segbench_*`` test arguments receive it."""

    kind: str
    name: str
    cls: type
    plugin: str
    distribution: str

    def __str__(self) -> str:
        return self.name


#: test argument name -> component kind
COMPONENT_ARGUMENTS = {
    "segbench_backbone": "backbone",
    "segbench_ssl_method": "ssl_method",
    "segbench_generator": "generator",
    "segbench_dataset": "dataset",
    "segbench_tracker": "tracker",
}


def registered_components(
    kind: str, distribution: str | None = None, names: list[str] | None = None, registry: Any = None
) -> list[Component]:
    """The registered components of ``kind``, optionally those of one distribution or these names."""
    from harness.plugins import get_registry

    registry = registry or get_registry()
    found = []
    for name in registry.names(kind):
        owner = registry.owner(kind, name)
        if distribution is not None and owner.distribution != distribution:
            continue
        if names is not None and name not in names:
            continue
        found.append(Component(kind, name, registry.get(kind, name), owner.name, owner.distribution))
    return found


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "segbench_components(distribution=None, names=None): limit the registered components that "
        "segbench_backbone / segbench_ssl_method / segbench_generator / segbench_dataset / segbench_tracker run over",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    explicit = {
        name.strip()
        for marker in metafunc.definition.iter_markers("parametrize")
        for name in (marker.args[0].split(",") if isinstance(marker.args[0], str) else marker.args[0])
    }
    marker = metafunc.definition.get_closest_marker("segbench_components")
    limits = dict(marker.kwargs) if marker else {}
    for argument, kind in COMPONENT_ARGUMENTS.items():
        if argument in metafunc.fixturenames and argument not in explicit:
            components = registered_components(kind, **limits)
            metafunc.parametrize(argument, components, ids=[c.name for c in components])


@pytest.fixture(scope="session")
def segbench_registry() -> Any:
    """The process-wide plugin registry (every installed plugin)."""
    from harness.plugins import get_registry

    return get_registry()
