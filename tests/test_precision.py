"""Which precision a run trains in: ``auto`` follows the hardware, an explicit choice wins."""

from __future__ import annotations

import pytest
import torch

from harness.errors import UserError
from harness.training.device import autocast_factory, choose_precision, cpu_flags

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SAPPHIRE_RAPIDS = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
SKYLAKE = frozenset({"avx2", "avx512f", "avx512bw"})


@pytest.mark.parametrize(
    ("device", "flags", "cuda_bf16", "expected"),
    [
        (CPU, SAPPHIRE_RAPIDS, None, "bf16"),
        (CPU, frozenset({"fp", "asimd", "bf16"}), None, "bf16"),  # Arm with BF16 (Graviton 3, Apple M2)
        (CPU, SKYLAKE, None, "fp32"),  # AVX-512 without BF16: emulated bf16 is slower than fp32
        (CPU, frozenset(), None, "fp32"),
        (CUDA, None, True, "bf16"),  # A100, H100, RTX 30xx/40xx
        (CUDA, None, False, "fp16"),  # V100, T4: fp16 with a gradient scaler
    ],
)
def test_auto_follows_the_hardware(device, flags, cuda_bf16, expected):
    choice = choose_precision("auto", device, flags=flags, cuda_bf16=cuda_bf16)
    assert choice.precision == expected
    assert choice.requested == "auto"
    assert choice.reason.startswith("auto: ")
    if expected == "bf16" and device.type == "cpu":
        assert "bf16" in choice.reason and "native" in choice.reason


@pytest.mark.parametrize("requested", ["fp32", "bf16"])
def test_an_explicit_precision_wins_on_any_hardware(requested):
    for flags in (SAPPHIRE_RAPIDS, SKYLAKE):
        choice = choose_precision(requested, CPU, flags=flags)
        assert choice.precision == requested and choice.requested == requested
    assert choose_precision(requested, CUDA, cuda_bf16=False).precision == requested


def test_bf16_without_native_support_is_allowed_but_says_so():
    assert "emulated" in choose_precision("bf16", CPU, flags=SKYLAKE).reason
    assert "emulated" not in choose_precision("bf16", CPU, flags=SAPPHIRE_RAPIDS).reason


def test_fp16_is_for_cuda_only_and_unknown_names_are_clear_errors():
    assert choose_precision("fp16", CUDA, cuda_bf16=True).precision == "fp16"
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        choose_precision("fp16", CPU, flags=SAPPHIRE_RAPIDS)
    with pytest.raises(UserError, match="use auto, bf16, fp16, fp32"):
        choose_precision("half", CPU)


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16\n\nprocessor\t: 1\n")
    assert {"avx512_bf16", "amx_bf16"} <= cpu_flags(x86)
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert "bf16" in cpu_flags(arm)
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_autocast_factory_maps_each_precision_to_its_dtype():
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast_factory(CPU, precision)():
            assert torch.get_autocast_dtype("cpu") == dtype and torch.is_autocast_enabled("cpu")
    with autocast_factory(CPU, "fp32")():
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        autocast_factory(CPU, "auto")


def test_auto_is_resolved_per_device_with_the_run_identity_kept():
    from harness.runs.lifecycle import with_device_precision
    from harness.runs.resolve import RunSpec, resolve

    for preset in ("quick", "medium"):
        run = resolve(RunSpec(ssl="supervised", backbone="unet", preset=preset, precision="auto"))
        assert run.settings.precision == run.config["train"]["precision"] == "auto"
        used, choice = with_device_precision(run, CPU)
        assert used.settings.precision == used.config["train"]["precision"] == choice.precision
        assert choice.precision in ("bf16", "fp32") and choice.requested == "auto"
        assert used.name == run.name and used.run_id == run.run_id
        assert run.config["train"]["precision"] == "auto"  # the resolved run is a copy
    explicit = resolve(RunSpec(ssl="supervised", backbone="unet", preset="quick", precision="fp32"))
    assert with_device_precision(explicit, CPU)[1].as_dict() == {
        "used": "fp32",
        "requested": "fp32",
        "reason": "--precision fp32",
    }


def test_parity_table_groups_finished_runs_by_precision(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "precision_parity.py"
    spec = importlib.util.spec_from_file_location("precision_parity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def run(name: str, precision: str, seed: int, dice: float, status: str = "done") -> None:
        (tmp_path / name).mkdir()
        config = {"preset": "quick", "seed": seed, "ssl": "mgcc", "train": {"iterations": 300, "precision": precision}}
        record = {"status": status, "config": config, "threads": 1}
        if status == "done":
            record["test"] = {"best": {"dice": dice}, "last": {"dice": dice - 0.01}}
            record["train"] = {"seconds": 10.0, "images_per_second": 80.0}
        (tmp_path / name / "run.json").write_text(json.dumps(record))

    run("a", "fp32", 0, 0.80)
    run("b", "fp32", 1, 0.84)
    run("c", "bf16", 0, 0.81)
    run("d", "bf16", 1, 0.0, status="running")
    out = module.main([str(tmp_path), "--out", str(tmp_path / "parity.json")])
    report = json.loads(out.read_text())
    rows = {r["precision"]: r for r in report["table"]}
    assert rows["fp32"]["dice_best"]["mean"] == 0.82 and rows["fp32"]["dice_best"]["n"] == 2
    assert rows["fp32"]["dice_best"]["std"] == round(0.04 / 2**0.5, 4)
    assert rows["bf16"]["seeds"] == [0] and len(report["unfinished"]) == 1
