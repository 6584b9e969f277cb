"""A wrong configuration is refused before any work: one line naming the value, non-zero exit, nothing on disk.

``bench run`` and ``bench run --dry-run`` run the same checks (both resolve every run first).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.cli.app import main
from harness.config.params import ConfigError
from harness.data.datasets import DataError
from harness.runs.resolve import RunSpec, resolve


def bench(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run the ``bench`` entry point in this process; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["bench", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image-size", "50"], "--image-size 50: backbone cmunet needs a multiple of 16; use e.g. 48 or 64"),
        (["--folds", "7"], "--folds 7: the kfold split (k = 5) has folds 0 to 4"),
        (["--fold", "7"], "--fold 7: the kfold split (k = 5) has folds 0 to 4"),
        (["--iterations", "0"], "--iterations 0: must be at least 1"),
        (["--iterations", "-5"], "--iterations -5: must be at least 1"),
        (["--data", "/nonexistent"], "--data /nonexistent: folder /nonexistent does not exist"),
        (["--set", "foo.bar=3"], "--set foo.bar=3: no setting group or installed component 'foo'"),
        (["--labeled", "0"], "--labeled 0.0: a labeled fraction must be in (0, 1]"),
        (["--backbone", "unet"], "needs a backbone with at least 3 context stages, but backbone UNet has 0"),
    ],
)
def test_a_wrong_run_exits_with_one_line_and_writes_nothing(args, message, dry_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs"
    monkeypatch.chdir(tmp_path)
    extra = ["--dry-run"] if dry_run else []
    code, _, err = bench(
        ["run", *args, "--device", "cpu", "--preset", "quick", "--out", str(out), *extra], monkeypatch, capsys
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not out.exists()  # no run folder, no splits/ folder, no generator cache
    assert not any(tmp_path.iterdir())


def test_set_scopes_accept_both_spellings_and_change_the_run():
    plain = resolve(RunSpec(ssl="mean-teacher"))
    typed = resolve(RunSpec(ssl="mean-teacher", overrides={"mean-teacher": {"ema_decay": "0.9"}}))
    entry_point = resolve(RunSpec(ssl="mean-teacher", overrides={"mean_teacher": {"ema_decay": "0.9"}}))
    assert typed.run_id == entry_point.run_id != plain.run_id
    assert entry_point.config["method_params"]["ema_decay"] == 0.9


def test_set_keys_are_checked_also_for_a_component_the_run_does_not_use():
    # ``--ssl mgcc,cct --set mgcc.x=...`` reaches the cct run too: a typo must not pass there silently
    with pytest.raises(ConfigError, match="ssl method mgcc has no parameter 'consistancy'; its parameters are: "):
        resolve(RunSpec(ssl="cct", overrides={"mgcc": {"consistancy": "1"}}))
    with pytest.raises(ConfigError, match="backbone unet has no parameter 'widht'"):
        resolve(RunSpec(overrides={"unet": {"widht": "4"}}))


def test_unknown_scope_lists_what_exists():
    with pytest.raises(ConfigError) as info:
        resolve(RunSpec(overrides={"foo": {"bar": "3"}}))
    assert "use one of: backbone, " in str(info.value) and "mean-teacher" in str(info.value)


def test_image_size_is_checked_against_the_backbone_instance_divisor():
    # smp's divisor is 2 ** depth, set per instance
    with pytest.raises(ConfigError, match="--image-size 48: backbone smp needs a multiple of 32"):
        resolve(RunSpec(ssl="supervised", backbone="smp", image_size=48))
    assert resolve(RunSpec(ssl="supervised", backbone="smp", image_size=64)).image_size == 64


def test_label_draw_and_paper_like_folds_are_checked():
    with pytest.raises(ConfigError, match="--draw 3: .* has label draws 0 to 2"):
        resolve(RunSpec(draw=3))
    with pytest.raises(ConfigError, match="--fold 3: the paper-like split has folds 0 to 2"):
        resolve(RunSpec(protocol="paper-like", fold=3))


def test_folds_are_checked_against_a_given_split_file(tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"folds": [{"labeled_orders": [[], []]}] * 2}))
    with pytest.raises(ConfigError, match=f"--fold 2: split file {split} has folds 0 to 1"):
        resolve(RunSpec(split_file=str(split), fold=2))
    with pytest.raises(ConfigError, match="--draw 2: .* has label draws 0 to 1"):
        resolve(RunSpec(split_file=str(split), draw=2))


def _write_folder(root: Path, mask_folders: tuple[str, ...]) -> Path:
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / "a.png")
    for name in mask_folders:
        (root / "masks" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / name / "a.png")
    return root


def test_mask_folders_other_than_0_are_refused(tmp_path, monkeypatch, capsys):
    data = _write_folder(tmp_path / "multi", ("0", "1"))
    with pytest.raises(DataError, match=r"has masks/1/: only masks/0/ \(one foreground class\) is supported"):
        resolve(RunSpec(data=str(data)))
    out = tmp_path / "runs"
    code, _, err = bench(["run", "--data", str(data), "--device", "cpu", "--out", str(out)], monkeypatch, capsys)
    assert code == 2 and "masks/1/" in err and not out.exists()
    code, _, err = bench(["data", "check", str(data)], monkeypatch, capsys)
    assert code == 1 and "has masks/1/: only masks/0/" in err
    ok = _write_folder(tmp_path / "single", ("0",))
    assert resolve(RunSpec(data=str(ok))).config["data"] == str(ok)


def test_a_weights_file_is_checked_before_any_work(tmp_path):
    from harness.plugins import get_registry

    smp = get_registry().get("backbone", "smp")
    from harness.api import resolve_params

    backbone = smp(3, 1, resolve_params(smp, "quick", {}, "backbone smp"))
    weights = tmp_path / "encoder.pt"
    torch.save(backbone.encoder.state_dict(), weights)
    spec = RunSpec(ssl="supervised", backbone="smp", in_channels=3, overrides={"smp": {"weights": str(weights)}})
    assert resolve(spec).config["backbone_params"]["weights"] == str(weights)
    missing = dataclasses.replace(spec, overrides={"smp": {"weights": str(tmp_path / "nope.pt")}})
    with pytest.raises(ConfigError, match="nope.pt does not exist"):
        resolve(missing)
