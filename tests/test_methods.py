"""SSL methods and feature perturbations: losses fall, gradients reach exactly the learners, wiring."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from harness.api import Batch, SSLMethod, StepContext, resolve_params
from harness.config.params import ConfigError
from harness.plugins import build_registry
from harness.testing import make_context
from harness.training.augment import DeviceAugmenter
from harness.training.losses import SUPERVISED_LOSSES
from harness.training.perturb import Dropout, FeatureDropout, FeatureNoise
from plugins.backbones.unet import UNet, UNetParams
from plugins.ssl_methods.cct import CCT
from plugins.ssl_methods.cps import CPS
from plugins.ssl_methods.mean_teacher import MeanTeacher
from plugins.ssl_methods.mgcc import MGCC
from plugins.ssl_methods.supervised import Supervised
from plugins.ssl_methods.ua_mt import UAMT

METHODS: dict[str, type[SSLMethod]] = {
    "supervised": Supervised,
    "mean-teacher": MeanTeacher,
    "ua-mt": UAMT,
    "cct": CCT,
    "mgcc": MGCC,
    "cps": CPS,
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions run far faster on one thread, above all on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def backbone_factory(context_lengths: tuple[int, ...] = (1, 1, 1)) -> Callable[[], UNet]:
    return lambda: UNet(1, 1, UNetParams(width=4, context_lengths=context_lengths, kernel=3))


def build(name: str, context_lengths: tuple[int, ...] = (1, 1, 1), **overrides: Any) -> SSLMethod:
    torch.manual_seed(0)
    cls = METHODS[name]
    return cls(backbone_factory(context_lengths), resolve_params(cls, None, overrides, f"method {name}"))


def phantom_batch(n_labeled: int = 2, n_unlabeled: int = 2, size: int = 32, seed: int = 0) -> Batch:
    """Bright discs on a noisy background; the masks are the discs."""
    g = torch.Generator().manual_seed(seed)
    n = n_labeled + n_unlabeled
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cy = torch.randint(8, size - 8, (n, 1, 1), generator=g)
    cx = torch.randint(8, size - 8, (n, 1, 1), generator=g)
    r = torch.randint(4, 8, (n, 1, 1), generator=g)
    masks = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2).float().unsqueeze(1)
    images = masks * 1.5 - 0.5 + 0.3 * torch.randn(n, 1, size, size, generator=g)
    return Batch(
        labeled_images=images[:n_labeled],
        labeled_masks=masks[:n_labeled],
        unlabeled_images=images[n_labeled:],
        unlabeled_raw=None,
    )


def labeled_only(batch: Batch) -> Batch:
    return Batch(batch.labeled_images, batch.labeled_masks, batch.labeled_images[:0], None)


def batch_for(method: SSLMethod, batch: Batch) -> Batch:
    return batch if method.uses_unlabeled else labeled_only(batch)


def zero_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A supervised loss that contributes no gradient, to isolate the consistency term."""
    return logits.float().sum() * 0.0


def trainable(method: SSLMethod) -> dict[str, nn.Parameter]:
    return {n: p for n, p in method.named_parameters() if p.requires_grad}


def backward_one_step(method: SSLMethod, ctx: StepContext, batch: Batch) -> Any:
    method.train()
    method.zero_grad(set_to_none=True)
    out = method.train_step(batch_for(method, batch), ctx)
    out.loss.backward()
    return out


# --------------------------------------------------------------------------- registration and params


def test_every_method_is_registered_under_its_name() -> None:
    registry = build_registry(env={"SEGBENCH_LOAD_PLUGINS": "supervised,mean_teacher,cct,mgcc,ua_mt,cps"})
    for name, cls in METHODS.items():
        assert registry.get("ssl_method", name) is cls


def test_published_defaults_and_presets() -> None:
    assert resolve_params(MGCC, None, {}, "mgcc").consistency == 7.0
    assert resolve_params(MGCC, None, {}, "mgcc").order == "release"
    assert resolve_params(CCT, None, {"consistency": "7"}, "cct").consistency == 7.0
    mt = resolve_params(MeanTeacher, None, {}, "mt")
    assert (mt.consistency, mt.consistency_start, mt.ema_decay, mt.eval) == (0.1, 1000, 0.99, "student")
    assert resolve_params(MeanTeacher, "quick", {}, "mt").consistency_start < 50
    assert resolve_params(MeanTeacher, "paper", {}, "mt").consistency_start == 1000
    assert resolve_params(UAMT, None, {}, "ua").passes == 8
    assert resolve_params(CPS, None, {}, "cps").consistency == 0.1
    with pytest.raises(ConfigError):
        resolve_params(UAMT, None, {"passes": "3"}, "ua")
    with pytest.raises(ConfigError):
        resolve_params(MGCC, None, {"order": "other"}, "mgcc")


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", list(METHODS))
def test_a_few_steps_lower_the_supervised_loss(name: str) -> None:
    method = build(name)
    batch = phantom_batch()
    opts = [torch.optim.SGD(groups, lr=0.05, momentum=0.9) for groups in method.optimizer_groups()]
    method.train()
    losses = []
    total = 12
    for step in range(total):
        ctx = make_context(step, total)
        out = method.train_step(batch_for(method, batch), ctx)
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        out.loss.backward()
        for opt in opts:
            opt.step()
        method.after_step(ctx)
        assert torch.isfinite(out.loss)
        losses.append(float(out.logs["supervised"]))
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("name", list(METHODS))
def test_gradients_reach_every_trainable_parameter_and_nothing_else(name: str) -> None:
    method = build(name)
    backward_one_step(method, make_context(90, 100), phantom_batch())
    for pname, p in method.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{pname} got no gradient"
        else:
            assert p.grad is None, f"{pname} must not receive a gradient"


@pytest.mark.parametrize("name", [n for n, c in METHODS.items() if c.uses_unlabeled])
def test_consistency_is_positive_after_warm_up_and_its_gradient_reaches_the_learners(name: str) -> None:
    """The USB mean-teacher bug: an unsupervised loss that carries no gradient to the student."""
    method = build(name)
    ctx = make_context(1999, 2000, supervised_loss=zero_loss)
    out = backward_one_step(method, ctx, phantom_batch())
    assert float(out.logs["consistency"]) > 0
    assert float(out.logs["consistency_weight"]) > 0
    learners = {
        "mean-teacher": ["student."],
        "ua-mt": ["student."],
        "cct": ["backbone.encoder.", "backbone.decoder.", "aux_decoders.0.", "aux_decoders.1.", "aux_decoders.2."],
        "mgcc": ["backbone.encoder.", "backbone.decoder.", "aux_decoders.0.", "aux_decoders.1.", "aux_decoders.2."],
        "cps": ["net1.", "net2."],
    }[name]
    grads = {n: p.grad for n, p in method.named_parameters()}
    for prefix in learners:
        got = [g for n, g in grads.items() if n.startswith(prefix) and g is not None]
        assert got and sum(float(g.abs().sum()) for g in got) > 0, f"no consistency gradient in {prefix}"
    for n, g in grads.items():
        if n.startswith("teacher."):
            assert g is None


@pytest.mark.parametrize("name", list(METHODS))
def test_step_under_bf16_autocast_gives_fp32_losses_close_to_fp32(name: str) -> None:
    batch = phantom_batch()
    values = {}
    for precision in ("fp32", "bf16"):
        method = build(name)
        out = method.train_step(batch_for(method, batch), make_context(50, 100, precision=precision, seed=3))
        assert out.loss.dtype == torch.float32
        values[precision] = float(out.logs["supervised"])
    assert abs(values["bf16"] - values["fp32"]) < 0.05 * values["fp32"]


@pytest.mark.parametrize("name", list(METHODS))
def test_inference_network_maps_images_to_one_logit_channel(name: str) -> None:
    method = build(name)
    net = method.inference_network()
    net.eval()
    with torch.no_grad():
        out = net(phantom_batch().labeled_images)
    assert out.shape == (2, 1, 32, 32)
    assert "evaluated_network" in method.describe()


def test_ssl4mis_loss_plugs_into_a_method() -> None:
    method = build("cct")
    out = method.train_step(phantom_batch(), make_context(5, 10, supervised_loss=SUPERVISED_LOSSES["ssl4mis"]))
    assert torch.isfinite(out.loss)


# --------------------------------------------------------------------------- mean teacher / ua-mt


@pytest.mark.parametrize("name", ["mean-teacher", "ua-mt"])
def test_ema_moves_the_teacher_towards_the_student(name: str) -> None:
    method = build(name)
    assert isinstance(method, MeanTeacher)
    opt = torch.optim.SGD(method.optimizer_groups()[0], lr=0.1)
    batch = phantom_batch()
    for step in (0, 5):
        ctx = make_context(step, 100)
        before = [p.detach().clone() for p in method.teacher.parameters()]
        opt.zero_grad()
        method.train_step(batch, ctx).loss.backward()
        opt.step()
        method.after_step(ctx)
        alpha = min(1 - 1 / (step + 1), 0.99)
        for t, s, old in zip(method.teacher.parameters(), method.student.parameters(), before, strict=True):
            assert torch.allclose(t, alpha * old + (1 - alpha) * s.detach(), atol=1e-6)
        moved = sum(float((t - old).abs().sum()) for t, old in zip(method.teacher.parameters(), before, strict=True))
        assert moved > 0


def test_mean_teacher_consistency_is_gated_before_its_start() -> None:
    method = build("mean-teacher", consistency_start=10)
    early = method.train_step(phantom_batch(), make_context(9, 100))
    late = method.train_step(phantom_batch(), make_context(10, 100))
    assert early.logs["consistency_weight"] == 0.0
    assert late.logs["consistency_weight"] > 0.0


def test_mean_teacher_input_noise_keeps_its_size_relative_to_the_input() -> None:
    """SSL4MIS adds N(0, 0.1) clamped to +-0.2 to unit-scale inputs; under the published normalisation
    (inputs at about +-0.01) the same noise, scaled by the inputs' std, keeps that size relative to the image."""
    import dataclasses

    from harness.data.normalize import fit_normaliser

    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    method = build("mean-teacher")
    relative = {}
    for mode, channels in (("zscore", 1), ("published", 3)):
        normaliser = fit_normaliser(mode, channels, images)
        x = normaliser(images)
        ctx = dataclasses.replace(make_context(0, 10), input_scale=normaliser.input_std)
        noise = method.teacher_input(x, ctx) - x
        assert float(noise.abs().max()) <= 0.2 * normaliser.input_std * (1 + 1e-5)
        relative[mode] = float(noise.std() / x.std())
    assert relative["zscore"] == pytest.approx(0.096, abs=0.005)  # N(0, 0.1) clamped at 2 sigma
    assert relative["published"] == pytest.approx(relative["zscore"], rel=0.05)


def test_mean_teacher_evaluates_the_student_unless_asked_for_the_teacher() -> None:
    method = build("mean-teacher")
    assert method.inference_network() is method.student
    teacher = build("mean-teacher", eval="teacher")
    assert teacher.inference_network() is teacher.teacher
    assert teacher.describe()["evaluated_network"] == "teacher"


def test_ua_mt_masks_uncertain_pixels_with_a_ramped_threshold() -> None:
    method = build("ua-mt")
    assert isinstance(method, UAMT)
    calls = []
    method.teacher.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    early = method.train_step(phantom_batch(), make_context(0, 100))
    assert calls == [2] + [4] * 4  # one noisy pass, then T = 8 predictions as 4 passes over two copies
    late = method.train_step(phantom_batch(), make_context(99, 100))
    # an untrained teacher predicts ~0.5 everywhere: uncertain under 0.75 ln 2, certain under ~ln 2
    assert float(early.logs["certain_fraction"]) < float(late.logs["certain_fraction"])
    assert float(late.logs["certain_fraction"]) > 0.5
    start, end = method.threshold(make_context(0, 100)), method.threshold(make_context(100, 100))
    assert start == pytest.approx((0.75 + 0.25 * 0.006737947) * 0.6931472, rel=1e-5)
    assert end == pytest.approx(0.6931472, rel=1e-6)


# --------------------------------------------------------------------------- cct / mgcc wiring


class _Recorder:
    """Identity perturbation that records what it was applied to."""

    name = "identity"

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.seen.append(x)
        return x


def _wire_hooks(method: CCT) -> tuple[dict[str, Any], list[_Recorder]]:
    rec: dict[str, Any] = {"encoder": [], "context": {}, "decoders": {}}
    bb = method.backbone
    bb.encoder.register_forward_hook(lambda m, i, o: rec["encoder"].append((i[0].shape[0], list(o))))
    for k, stage in enumerate(bb.context):
        stage.register_forward_hook(lambda m, i, o, k=k: rec["context"].setdefault(k, []).append((i[0], o)))
    decoders = {"main": bb.decoder, **{f"aux{k + 1}": d for k, d in enumerate(method.aux_decoders)}}
    for key, dec in decoders.items():
        dec.register_forward_pre_hook(lambda m, i, key=key: rec["decoders"].setdefault(key, []).append(list(i[0])))
    recorders = [_Recorder() for _ in method.perturbations]
    method.perturbations = recorders
    return rec, recorders


@pytest.mark.parametrize("context_lengths", [(1, 1, 1), (1, 1, 1, 1)])
def test_mgcc_aux_decoders_read_the_bottleneck_after_0_1_2_stages_in_one_forward(
    context_lengths: tuple[int, ...],
) -> None:
    method = build("mgcc", context_lengths)
    assert isinstance(method, MGCC)
    rec, recorders = _wire_hooks(method)
    batch = phantom_batch(n_labeled=3, n_unlabeled=2)
    method.train_step(batch, make_context(5, 10))
    assert [b for b, _ in rec["encoder"]] == [5]  # one pass over labeled + unlabeled
    encoded = rec["encoder"][0][1]
    assert all(len(calls) == 1 for calls in rec["context"].values())
    outputs = [encoded[-1]] + [rec["context"][k][0][1] for k in range(len(context_lengths))]
    for k in range(len(context_lengths)):
        assert rec["context"][k][0][0] is outputs[k]  # stages chained once, in order
    for k in range(3):
        (features,) = rec["decoders"][f"aux{k + 1}"]
        assert features[-1] is outputs[k], f"aux{k + 1} must read the bottleneck after {k} stages"
        assert all(f is e for f, e in zip(features[:-1], encoded[:-1], strict=True))
        assert len(recorders[k].seen) == len(encoded)  # every level perturbed
    (main,) = rec["decoders"]["main"]
    assert main[-1] is outputs[-1]
    assert method.describe()["aux_context_depths"] == [0, 1, 2]


def test_cct_aux_decoders_read_the_features_after_all_context_stages() -> None:
    method = build("cct")
    rec, recorders = _wire_hooks(method)
    method.train_step(phantom_batch(), make_context(5, 10))
    assert [b for b, _ in rec["encoder"]] == [4]
    last = rec["context"][2][0][1]
    for key in ("main", "aux1", "aux2", "aux3"):
        (features,) = rec["decoders"][key]
        assert features[-1] is last
    assert all(len(r.seen) == 5 for r in recorders)


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("mgcc", {}, (FeatureDropout, Dropout, FeatureNoise)),
        ("mgcc", {"order": "first-commit"}, (FeatureNoise, Dropout, FeatureDropout)),
        ("cct", {}, (FeatureNoise, Dropout, FeatureDropout)),
    ],
)
def test_perturbation_order(name: str, overrides: dict[str, str], expected: tuple[type, ...]) -> None:
    method = build(name, **overrides)
    assert isinstance(method, CCT)
    assert tuple(type(p) for p in method.perturbations) == expected
    assert method.perturbations[1].p == 0.3


@pytest.mark.parametrize("order", ["release", "first-commit"])
def test_mgcc_aux1_sees_the_perturbation_its_order_names(order: str) -> None:
    method = build("mgcc", order=order)
    assert isinstance(method, MGCC)
    seen: dict[str, list[torch.Tensor]] = {}
    method.backbone.encoder.register_forward_hook(lambda m, i, o: seen.setdefault("enc", list(o)))
    method.aux_decoders[0].register_forward_pre_hook(lambda m, i: seen.setdefault("aux1", list(i[0])))
    method.train_step(phantom_batch(), make_context(5, 10))
    clean, noisy = seen["enc"][-1], seen["aux1"][-1]
    if order == "release":  # feature dropout: whole positions zeroed, the rest untouched
        dropped = (noisy == 0).all(dim=1)
        assert dropped.any()
        assert torch.equal(noisy, clean * (~dropped).unsqueeze(1))
    else:  # feature noise: x * (1 + n), |n| <= 0.3
        ratio = noisy[clean != 0] / clean[clean != 0]
        assert ratio.min() >= 0.7 - 1e-5 and ratio.max() <= 1.3 + 1e-5
        assert not torch.equal(noisy, clean)


def test_mgcc_on_a_backbone_with_too_few_context_stages_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"UNet has 2.*backbone\.context_lengths=1,1,1"):
        build("mgcc", (1, 1))
    with pytest.raises(ConfigError, match="UNet has 0"):
        build("mgcc", ())


def test_cct_runs_on_a_backbone_without_context() -> None:
    method = build("cct", ())
    out = method.train_step(phantom_batch(), make_context(5, 10))
    assert torch.isfinite(out.loss)


# --------------------------------------------------------------------------- cps


def test_cps_has_one_optimizer_per_network_unless_shared() -> None:
    method = build("cps")
    assert isinstance(method, CPS)
    groups = method.optimizer_groups()
    assert len(groups) == 2
    ids = [{id(p) for g in opt for p in g["params"]} for opt in groups]
    assert ids[0] == {id(p) for p in method.net1.parameters()}
    assert ids[1] == {id(p) for p in method.net2.parameters()}
    shared = build("cps", shared_optimizer="true").optimizer_groups()
    assert len(shared) == 1 and len(shared[0][0]["params"]) == len(list(method.parameters()))
    assert method.describe()["evaluated_network"] == "net1"
    assert method.inference_network() is method.net1


def test_cps_networks_start_from_different_weights() -> None:
    method = build("cps")
    assert isinstance(method, CPS)
    w1 = next(method.net1.parameters())
    w2 = next(method.net2.parameters())
    assert not torch.equal(w1, w2)


# --------------------------------------------------------------------------- perturbations


def test_feature_noise_is_one_multiplicative_draw_shared_by_the_batch() -> None:
    x = torch.rand(3, 4, 5, 5) + 0.5
    g = torch.Generator().manual_seed(0)
    y = FeatureNoise(0.3)(x, g)
    n = y / x - 1
    assert torch.allclose(n, n[:1].expand_as(n), atol=1e-6)
    assert n.abs().max() <= 0.3 + 1e-6 and n.abs().max() > 0.2
    assert not torch.equal(FeatureNoise(0.3)(x, g), y)  # a fresh draw per call


def test_feature_noise_keeps_channels_last_and_draws_the_same_values() -> None:
    x = torch.rand(2, 4, 5, 5) + 0.5
    y = FeatureNoise(0.3)(x, torch.Generator().manual_seed(0))
    y_cl = FeatureNoise(0.3)(x.contiguous(memory_format=torch.channels_last), torch.Generator().manual_seed(0))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y_cl, y)


def test_dropout_is_always_on_and_rescales() -> None:
    x = torch.ones(4, 8, 32, 32)
    for gen in (None, torch.Generator().manual_seed(1)):
        y = Dropout(0.3)(x, gen)
        zero = (y == 0).float().mean().item()
        assert abs(zero - 0.3) < 0.02
        assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))


def test_feature_dropout_zeros_positions_above_a_shared_fraction_of_each_max() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 6, 8, 8, generator=g)
    y = FeatureDropout(0.7, 0.9)(x, torch.Generator().manual_seed(3))
    attention = x.mean(1)
    peak = attention.flatten(1).amax(1).view(-1, 1, 1)
    dropped = (y == 0).all(dim=1)
    assert torch.equal(y, x * (~dropped).unsqueeze(1))
    rel = attention / peak
    # one u for the batch: every kept position is below it, every dropped one at or above it
    low = rel[~dropped].max().item()
    high = rel[dropped].min().item()
    assert low < high
    assert high >= 0.7 - 1e-6 and low < 0.9
    assert dropped.flatten(1).any(1).all()  # each sample's peak is dropped


def test_perturbations_are_reproducible_from_the_generator() -> None:
    x = torch.rand(2, 4, 8, 8)
    for p in (FeatureNoise(), Dropout(), FeatureDropout()):
        a = p(x, torch.Generator().manual_seed(7))
        b = p(x, torch.Generator().manual_seed(7))
        assert torch.equal(a, b)
        low = p(x.bfloat16(), torch.Generator().manual_seed(7))
        assert low.dtype == torch.bfloat16


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(METHODS))
def test_step_on_cuda_in_bf16_and_channels_last(name: str) -> None:
    device = torch.device("cuda")
    method = build(name).to(device).to(memory_format=torch.channels_last)
    cpu = phantom_batch()
    batch = Batch(
        labeled_images=cpu.labeled_images.to(device).contiguous(memory_format=torch.channels_last),
        labeled_masks=cpu.labeled_masks.to(device),
        unlabeled_images=cpu.unlabeled_images.to(device).contiguous(memory_format=torch.channels_last),
    )
    generator = torch.Generator(device=device).manual_seed(0)
    ctx = make_context(90, 100)
    ctx.device, ctx.generator = device, generator
    ctx.augment = DeviceAugmenter(generator)
    ctx.autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    out = backward_one_step(method, ctx, batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    method.after_step(ctx)
    assert all(p.grad is not None for p in trainable(method).values())
