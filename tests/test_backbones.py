"""Backbones (unet, cmunet, smp): contract, published sizes, layers, weights, CLI and benchmark."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from torch import nn
from typer.testing import CliRunner

from harness.api import Backbone, resolve_params
from harness.cli.commands import backbones as backbones_cmd
from harness.config.params import ConfigError
from harness.errors import UserError
from harness.evaluation.complexity import backbone_complexity, count_macs, count_parameters
from harness.plugins import build_registry
from plugins.backbones.blocks import MSAG, ConcatConv2d, ConvMixerLayer, DecoderStage, DepthwiseConv2d
from plugins.backbones.cmunet import CMUNet, CMUNetParams
from plugins.backbones.smp import SMPBackboneError, SMPParams, SMPUNet
from plugins.backbones.unet import UNet, UNetParams

TINY_TIMM = "tu-test_resnet.r160_in1k"


def tiny_cmunet(in_channels: int = 1, out_channels: int = 1) -> CMUNet:
    return CMUNet(in_channels, out_channels, CMUNetParams(dim_mult=1, lengths=(1, 1), kernel=3))


def tiny_unet(in_channels: int = 1, out_channels: int = 1, context: tuple[int, ...] = ()) -> UNet:
    return UNet(in_channels, out_channels, UNetParams(width=4, context_lengths=context, kernel=3))


def tiny_smp(in_channels: int = 1, out_channels: int = 1, **kw) -> SMPUNet:
    return SMPUNet(in_channels, out_channels, SMPParams(encoder=TINY_TIMM, decoder_channels=(16, 8, 8, 4, 4), **kw))


@pytest.fixture(scope="module")
def own_registry():
    """The real plugin registry, restricted to the three backbone plugins (others load slowly)."""
    return build_registry(env={"SEGBENCH_LOAD_PLUGINS": "unet,cmunet,smp"})


@pytest.fixture
def app(monkeypatch, own_registry) -> typer.Typer:
    monkeypatch.setattr(backbones_cmd, "get_registry", lambda: own_registry)
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    backbones_cmd.register(app)
    return app


@pytest.fixture(scope="module")
def smp_net() -> SMPUNet:
    torch.manual_seed(0)
    return tiny_smp(in_channels=3, out_channels=2, context_lengths=(1,))


# --------------------------------------------------------------------------- contract


def test_the_three_backbones_are_registered_through_entry_points(own_registry):
    registry = own_registry
    assert not registry.problems
    assert registry.get("backbone", "unet") is UNet
    assert registry.get("backbone", "cmunet") is CMUNet
    assert registry.get("backbone", "smp") is SMPUNet
    for cls in (UNet, CMUNet, SMPUNet):
        assert issubclass(cls, Backbone)


@pytest.mark.parametrize(
    ("build", "in_ch", "out_ch", "size"),
    [
        (tiny_cmunet, 1, 1, 32),
        (tiny_cmunet, 3, 2, 48),
        (tiny_unet, 1, 3, 16),
        (tiny_unet, 3, 1, 64),
    ],
)
def test_unet_family_shapes(build, in_ch, out_ch, size):
    net = build(in_ch, out_ch)
    x = torch.randn(2, in_ch, size, size)
    features = net.encode(x)
    assert len(features) == 5
    for level, f in enumerate(features):
        assert f.shape == (2, net.widths[level], size >> level, size >> level)
    assert net(x).shape == (2, out_ch, size, size)


def test_cmunet_context_is_one_module_per_block():
    net = CMUNet(1, 1, CMUNetParams(dim_mult=1, lengths=(2, 1, 3), kernel=5))
    assert [len(block) for block in net.context] == [2, 1, 3]
    deep = net.encode(torch.randn(2, 1, 32, 32))[-1]
    partial = net.apply_context([deep], stages=1)[-1]
    assert partial.shape == deep.shape and not torch.equal(partial, deep)


def test_smp_shapes_drop_the_input_image(smp_net):
    x = torch.randn(2, 3, 64, 64)
    features = smp_net.encode(x)
    assert [f.shape[1] for f in features] == smp_net.feature_channels
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]  # first real stage is at stride 2
    assert all(f is not x for f in features)
    assert len(smp_net.context) == 1
    assert smp_net(x).shape == (2, 2, 64, 64)
    assert smp_net(torch.randn(1, 3, 96, 64)).shape == (1, 2, 96, 64)


def test_smp_transformer_style_encoder_drops_the_empty_placeholder():
    net = SMPUNet(1, 1, SMPParams(encoder="tu-test_convnext", decoder_channels=(16, 8, 8, 4, 4)))
    features = net.encode(torch.randn(1, 1, 64, 64))
    assert all(f.shape[1] > 0 for f in features)
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]
    assert net(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)


def test_gradient_reaches_every_parameter_of_backbone_and_extra_decoders():
    smp_net = tiny_smp(in_channels=3, context_lengths=(1,))
    for m in smp_net.modules():  # timm zero-initialises the last BN of each residual branch
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
    for net, in_ch in ((tiny_cmunet(), 1), (tiny_unet(context=(1,)), 1), (smp_net, 3)):
        extra = net.new_decoder()
        features = net.encode(torch.randn(2, in_ch, 32, 32))
        loss = net.decoder(net.apply_context(features)).mean() + extra(net.apply_context(features, 0)).square().mean()
        loss.backward()
        for module in (net, extra):
            for name, p in module.named_parameters():
                assert p.grad is not None, f"{type(net).__name__}: no gradient for {name}"
                assert torch.isfinite(p.grad).all(), name
                if p.dim() > 1:
                    assert p.grad.abs().sum() > 0, f"{type(net).__name__}: zero gradient for {name}"


def test_new_decoders_share_no_parameters(smp_net):
    for net in (tiny_cmunet(), tiny_unet(), smp_net):
        decoders = [net.decoder, net.new_decoder(), net.new_decoder()]
        storages = [{p.untyped_storage().data_ptr() for p in d.parameters()} for d in decoders]
        for i in range(3):
            for j in range(i + 1, 3):
                assert not storages[i] & storages[j]
        backbone_rest = {p.untyped_storage().data_ptr() for p in [*net.encoder.parameters(), *net.context.parameters()]}
        assert not backbone_rest & storages[1]
        # every decoder has its own MSAG gates
        if isinstance(net, CMUNet):
            assert all(len(d.gates) == 4 for d in decoders)


def test_published_mgcc_parameter_counts():
    with torch.device("meta"):  # sizes only: nothing is allocated or initialised
        net = CMUNet(3, 1, CMUNetParams(dim_mult=4, lengths=(3, 3, 3), kernel=7))
        extra = [net.new_decoder() for _ in range(3)]
    assert count_parameters(net) == 52_142_145
    assert count_parameters(net) + sum(count_parameters(d) for d in extra) == 122_182_980
    # REFERENCE §1.7 breakdown
    assert count_parameters(net.encoder) == 18_851_136
    assert [count_parameters(block) for block in net.context] == [3_314_688] * 3
    assert count_parameters(net.decoder) == 23_346_945
    assert count_parameters(net.decoder.gates) == 7_671_040


def test_published_mgcc_macs_match_the_reference_estimates():
    with torch.device("meta"):
        net = CMUNet(3, 1, CMUNetParams())
        c = backbone_complexity(net, 3, 256)
    assert round(c["macs_encoder"] / 1e9, 1) == 17.0
    assert round(c["macs_context"] / 1e9, 1) == 2.5
    assert round(c["macs_decoder"] / 1e9, 1) == 71.9
    assert round(c["macs"] / 1e9, 1) == 91.5


def test_unet_width_64_is_the_mgcc_baseline_size():
    with torch.device("meta"):
        wide = UNet(3, 1, UNetParams(width=64))
    assert wide.widths == [64, 128, 256, 512, 1024]
    assert round(count_parameters(wide) / 1e6, 1) == 34.5  # REFERENCE §1.8 estimate
    assert UNet(1, 1).widths == [16, 32, 64, 128, 256]
    assert len(UNet(1, 1).context) == 0


@pytest.mark.parametrize(("build", "size", "divisor"), [(tiny_cmunet, 40, 16), (tiny_unet, 24, 16), (tiny_smp, 48, 32)])
def test_bad_input_size_names_size_and_divisor(build, size, divisor):
    net = build()
    assert net.divisor == divisor
    with pytest.raises(ValueError, match=rf"divisible by {divisor}, got {size}x{size}"):
        net(torch.randn(1, 1, size, size))


def test_smp_divisor_follows_depth():
    net = SMPUNet(1, 1, SMPParams(encoder=TINY_TIMM, depth=3))
    assert net.divisor == 8 and len(net.encode(torch.randn(1, 1, 24, 24))) == 3
    assert net(torch.randn(1, 1, 24, 24)).shape == (1, 1, 24, 24)


def test_params_from_presets_and_command_line_strings():
    p = resolve_params(CMUNet, "quick", {"lengths": "1,2", "kernel": "5"}, "backbone cmunet")
    assert p == CMUNetParams(dim_mult=1, lengths=(1, 2), kernel=5)
    assert resolve_params(CMUNet, "paper", {}, "backbone cmunet").dim_mult == 4
    assert resolve_params(UNet, None, {"context_lengths": "3,3,3"}, "b").context_lengths == (3, 3, 3)
    s = resolve_params(SMPUNet, None, {"encoder": "tu-resnet10t", "weights": "none", "depth": "4"}, "b")
    assert (s.weights, s.depth, s.channels()) == (None, 4, (256, 128, 64, 32))
    with pytest.raises(ConfigError, match="kernel must be a positive odd number"):
        resolve_params(CMUNet, None, {"kernel": "4"}, "backbone cmunet")
    with pytest.raises(ConfigError, match="decoder_channels has 2 entries but depth is 5"):
        resolve_params(SMPUNet, None, {"decoder_channels": "8,4"}, "backbone smp")


def test_smp_unknown_encoder_is_a_user_error():
    with pytest.raises(SMPBackboneError, match="'no_such_encoder'"):
        SMPUNet(1, 1, SMPParams(encoder="no_such_encoder"))


# --------------------------------------------------------------------------- smp local weights


def _encoder_state(net: SMPUNet) -> dict[str, torch.Tensor]:
    return net.encoder.encoder.state_dict()


def test_smp_loads_local_weights_in_every_accepted_key_style(tmp_path, smp_net):
    source = _encoder_state(smp_net)
    styles = {
        "own.pt": source,
        "timm.pt": {k.removeprefix("model."): v for k, v in source.items()} | {"head.fc.weight": torch.zeros(2, 2)},
        "model.pt": {"state_dict": {f"encoder.{k}": v for k, v in source.items()} | {"decoder.x": torch.zeros(1)}},
    }
    for filename, state in styles.items():
        torch.save(state, tmp_path / filename)
        loaded = tiny_smp(in_channels=3, weights=str(tmp_path / filename))
        for key, tensor in _encoder_state(loaded).items():
            assert torch.equal(tensor, source[key]), (filename, key)


def test_documented_offline_weights_recipes_load(tmp_path, app):
    """docs/pretrained.md: a timm model's state_dict and a whole smp model's load via --set smp.weights=FILE."""
    import segmentation_models_pytorch as smp
    import timm

    torch.manual_seed(1)
    timm_model = timm.create_model(TINY_TIMM.removeprefix("tu-"), pretrained=False)  # pretrained=True online
    torch.save(timm_model.state_dict(), tmp_path / "timm.pt")
    smp_model = smp.Unet(encoder_name=TINY_TIMM, encoder_weights=None, encoder_depth=5)
    torch.save(smp_model.state_dict(), tmp_path / "smp.pt")
    for path, reference in ((tmp_path / "timm.pt", timm_model.state_dict()),
                            (tmp_path / "smp.pt", {k.removeprefix("encoder.model."): v
                                                   for k, v in smp_model.state_dict().items()})):  # fmt: skip
        params = resolve_params(SMPUNet, "quick", {"encoder": TINY_TIMM, "weights": str(path)}, "backbone smp")
        loaded = _encoder_state(SMPUNet(3, 1, params))
        assert loaded and all(torch.equal(v, reference[k.removeprefix("model.")]) for k, v in loaded.items()), path
    sets = ["--set", f"smp.encoder={TINY_TIMM}", "--set", f"smp.weights={tmp_path / 'timm.pt'}"]
    result = CliRunner().invoke(app, ["backbones", "--backbone", "smp", "--image-size", "32", *sets, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["params_values"]["weights"] == str(tmp_path / "timm.pt")


def test_smp_adapts_rgb_first_conv_to_one_channel(tmp_path, smp_net):
    torch.save(_encoder_state(smp_net), tmp_path / "rgb.pt")
    grey = tiny_smp(in_channels=1, weights=str(tmp_path / "rgb.pt"))
    first = [k for k, v in _encoder_state(smp_net).items() if v.dim() == 4][0]
    assert torch.allclose(_encoder_state(grey)[first], _encoder_state(smp_net)[first].sum(1, keepdim=True))


def test_smp_weights_errors_name_the_file(tmp_path, smp_net):
    with pytest.raises(SMPBackboneError, match="missing.pt does not exist"):
        tiny_smp(weights=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SMPBackboneError, match="cannot read weights file .*junk.pt"):
        tiny_smp(weights=str(tmp_path / "junk.pt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(SMPBackboneError, match="does not hold a state dict"):
        tiny_smp(weights=str(tmp_path / "list.pt"))
    torch.save(tiny_unet().state_dict(), tmp_path / "other.pt")
    with pytest.raises(SMPBackboneError, match="other.pt lacks"):
        tiny_smp(weights=str(tmp_path / "other.pt"))
    state = _encoder_state(smp_net)
    key = [k for k, v in state.items() if v.dim() == 4][-1]
    torch.save(state | {key: torch.zeros(1, 1, 1, 1)}, tmp_path / "shape.pt")
    with pytest.raises(SMPBackboneError, match="has shape"):
        tiny_smp(in_channels=3, weights=str(tmp_path / "shape.pt"))
    assert issubclass(SMPBackboneError, UserError)


# --------------------------------------------------------------------------- layers = published layers


class PublishedMSAG(nn.Module):
    """The published MSAG layer by layer (three branch BNs), to check ours computes the same."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.p = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))
        self.o = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        self.d = nn.Sequential(nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.BatchNorm2d(c))
        self.v = nn.Sequential(nn.Conv2d(3 * c, c, 1), nn.BatchNorm2d(c), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.v(torch.relu(torch.cat((self.p(x), self.o(x), self.d(x)), 1)))
        return x + x * g


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)


def test_msag_equals_the_published_layer_with_gradients():
    torch.manual_seed(0)
    c = 4
    ref, ours = PublishedMSAG(c).double(), MSAG(c).double()
    _randomise(ref)
    with torch.no_grad():
        ours.pointwise.load_state_dict(ref.p[0].state_dict())
        ours.ordinary.load_state_dict(ref.o[0].state_dict())
        ours.dilated.load_state_dict(ref.d[0].state_dict())
        ours.vote.load_state_dict(ref.v[0].state_dict())
        ours.vote_norm.load_state_dict(ref.v[1].state_dict())
        for i, branch in enumerate((ref.p, ref.o, ref.d)):
            ours.branch_norm.weight[i * c : (i + 1) * c] = branch[1].weight
            ours.branch_norm.bias[i * c : (i + 1) * c] = branch[1].bias
    assert count_parameters(ours) == count_parameters(ref)
    x = torch.randn(3, c, 8, 8, dtype=torch.float64)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yo = ref(xr), ours(xo)
    torch.testing.assert_close(yo, yr)
    g = torch.randn_like(yr)
    yr.backward(g)
    yo.backward(g)
    torch.testing.assert_close(xo.grad, xr.grad)
    torch.testing.assert_close(ours.ordinary.weight.grad, ref.o[0].weight.grad)
    torch.testing.assert_close(ours.branch_norm.weight.grad[c : 2 * c], ref.o[1].weight.grad)
    torch.testing.assert_close(ours.branch_norm.running_mean[2 * c :], ref.d[1].running_mean)


@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_conv_equals_nn_conv2d_with_gradients(channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours = DepthwiseConv2d(6, 5).double()
    ref = nn.Conv2d(6, 6, 5, padding=2, groups=6).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 9, 7, dtype=torch.float64).to(memory_format=fmt)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    yo, yr = ours(xo), ref(xr)
    g = torch.randn_like(yr)
    yo.backward(g)
    yr.backward(g)
    torch.testing.assert_close(yo, yr)
    torch.testing.assert_close(xo.grad, xr.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    assert yo.is_contiguous(memory_format=fmt) and xo.grad.is_contiguous(memory_format=fmt)


def test_depthwise_conv_under_bf16_autocast_matches_native():
    torch.manual_seed(0)
    ours = DepthwiseConv2d(8, 7).to(memory_format=torch.channels_last)
    ref = nn.Conv2d(8, 8, 7, padding=3, groups=8).to(memory_format=torch.channels_last)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 8, 8, 8).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yo, yr = ours(x), ref(x)
    assert yo.dtype == yr.dtype == torch.bfloat16
    torch.testing.assert_close(yo, yr)
    yo.float().square().sum().backward()
    yr.float().square().sum().backward()
    assert ours.weight.grad.dtype == torch.float32
    scale = ref.weight.grad.abs().max().item()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=0.02, atol=0.02 * scale)


def test_concat_conv_equals_conv_of_concatenation():
    torch.manual_seed(0)
    ours = ConcatConv2d(5, 3, 3, padding=1).double()
    a, b = torch.randn(2, 2, 6, 6, dtype=torch.float64), torch.randn(2, 3, 6, 6, dtype=torch.float64)
    expected = nn.functional.conv2d(torch.cat((a, b), 1), ours.weight, ours.bias, padding=1)
    torch.testing.assert_close(ours(a, b), expected)
    with pytest.raises(ValueError, match="expects 5 input channels"):
        ours(a, a)


@pytest.mark.parametrize("build", [tiny_cmunet, tiny_unet])
def test_bf16_autocast_channels_last_training_step_keeps_the_layout(build):
    torch.manual_seed(0)
    net = build(1, 1)
    x = torch.randn(2, 1, 32, 32)
    reference = net(x)
    net = net.to(memory_format=torch.channels_last)
    seen: list[str] = []

    def check(module, args, output):
        seen.append(type(module).__name__)
        assert output.is_contiguous(memory_format=torch.channels_last), type(module).__name__

    for m in net.modules():
        if isinstance(m, (MSAG, ConvMixerLayer, DecoderStage, ConcatConv2d, DepthwiseConv2d)):
            m.register_forward_hook(check)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = net.apply_context(net.encode(x.to(memory_format=torch.channels_last)))
        out = net.decoder(features)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in features)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 1, 32, 32)
    out.float().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert torch.corrcoef(torch.stack([out.float().flatten(), reference.detach().flatten()]))[0, 1] > 0.98
    if isinstance(net, CMUNet):
        assert {"MSAG", "ConvMixerLayer", "DepthwiseConv2d", "ConcatConv2d"} <= set(seen)


# --------------------------------------------------------------------------- complexity


def test_count_macs_of_conv_and_linear_with_parts():
    conv = nn.Conv2d(3, 4, 3, padding=1, groups=1)
    depthwise = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    head = nn.Linear(4 * 8 * 8, 10)
    model = nn.Sequential(conv, nn.ReLU(), depthwise, nn.Flatten(), head)
    model.train()
    result = count_macs(model, torch.zeros(2, 3, 8, 8), parts={"first": conv, "rest": nn.ModuleList([depthwise, head])})
    assert result.parts == {"first": 4 * 64 * 27, "rest": 4 * 64 * 25 + 10 * 256}
    assert result.total == 4 * 64 * 27 + 4 * 64 * 25 + 10 * 256
    assert model.training  # mode restored
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- bench backbones


def test_bench_backbones_json_lists_counts(app):
    args = ["backbones", "--backbone", "cmunet", "--backbone", "unet", "--preset", "quick", "--image-size", "32"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["backbone"]: r for r in json.loads(result.output)}
    assert rows["cmunet"]["params_values"]["dim_mult"] == 1 and rows["cmunet"]["context_stages"] == 3
    with torch.device("meta"):
        assert rows["cmunet"]["params"] == count_parameters(CMUNet(3, 1, CMUNetParams(dim_mult=1)))
    assert rows["unet"]["params"] == count_parameters(UNet(3, 1))
    assert rows["unet"]["macs"] == backbone_complexity(UNet(3, 1), 3, 32)["macs"] > 0


def test_bench_backbones_overrides_and_errors(app):
    runner = CliRunner()
    ok = runner.invoke(
        app, ["backbones", "--backbone", "unet", "--set", "backbone.width=4", "--image-size", "16", "--json"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)[0]["params_values"]["width"] == 4
    bad = runner.invoke(app, ["backbones", "--backbone", "unet", "--set", "backbone.nope=1"])
    assert isinstance(bad.exception, ConfigError) and "nope" in str(bad.exception)
    odd = runner.invoke(app, ["backbones", "--backbone", "unet", "--image-size", "40"])
    assert isinstance(odd.exception, ConfigError) and "multiple of 16" in str(odd.exception)


def test_bench_backbones_table_lists_all_three(app):
    args = ["backbones", "--image-size", "64", "--preset", "paper", "--set", f"smp.encoder={TINY_TIMM}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("cmunet", "smp", "unet"):
        assert name in result.output
    assert "52,142,145" in result.output  # cmunet with the paper's settings


def test_speed_benchmark_writes_its_json(tmp_path, monkeypatch, own_registry):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_backbones.py"
    spec = importlib.util.spec_from_file_location("bench_backbones", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "get_registry", lambda: own_registry)
    out = tmp_path / "r.json"
    args = ["--backbone", "unet", "--set", "unet.width=2", "--image-size", "16", "--batch-size", "2"]
    module.main([*args, "--repeats", "2", "--warmup", "0", "--out", str(out)])
    report = json.loads(out.read_text())
    settings = report["results"][0]["settings"]
    assert {(s["dtype"], s["channels_last"]) for s in settings} == {
        ("fp32", False),
        ("bf16", False),
        ("fp32", True),
        ("bf16", True),
    }
    assert all(s["images_per_s"] > 0 and len(s["step_s"]) == 2 for s in settings)
    assert report["batch"] == 2 and report["image_size"] == 16
