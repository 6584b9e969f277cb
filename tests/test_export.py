"""``bench export``: TorchScript and ONNX files that match PyTorch, and a sidecar that is enough to use them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import Workspace, png, train_tiny_run
from typer.testing import CliRunner

from harness.data.datasets import decode_image, resize_image
from harness.inference.export import ExportError, export_run, load_exported, sidecar_path
from harness.inference.network import InferenceError, load_run_network
from harness.inference.predict import predict_images


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return train_tiny_run(tmp_path_factory.mktemp("export"))


def dataset_inputs(workspace: Workspace, n: int = 4) -> tuple[list[Path], np.ndarray, list[tuple]]:
    """``n`` images of the dataset folder: paths, their resized grey arrays (n x 32 x 32) and boxes."""
    paths = sorted((workspace.data / "images").iterdir())[:n]
    resized = [resize_image(decode_image(p.read_bytes(), p), 32, "squash") for p in paths]
    return paths, np.stack([r[0] for r in resized]), [r[1] for r in resized]


def normalise_from_sidecar(images: np.ndarray, info: dict) -> np.ndarray:
    """What a user outside segbench does with the sidecar: z-score with its mean/std, NCHW float32."""
    norm = info["preprocessing"]["normalisation"]
    assert norm["mode"] == "zscore"
    x = (images.astype(np.float32) - norm["mean"]) / norm["std"]
    return np.repeat(x[:, None], info["input"]["channels"], axis=1).astype(np.float32)


def round_trip(workspace: Workspace, fmt: str, path: Path) -> dict:
    result = export_run(workspace.run_dir, fmt, path)
    assert result.path == path and path.exists() and result.sidecar == sidecar_path(path)
    info = json.loads(result.sidecar.read_text())
    run = json.loads((workspace.run_dir / "run.json").read_text())
    assert info["format"] == fmt and info["input"]["shape"] == ["batch", 1, 32, 32]
    assert info["input"]["image_size"] == 32 and info["input"]["channels"] == 1
    assert {k: info["preprocessing"]["normalisation"][k] for k in run["normalisation"]} == run["normalisation"]
    assert info["preprocessing"]["resize"] == "squash" and info["run"]["checkpoint"] == "best"
    _, images, _ = dataset_inputs(workspace)
    x = normalise_from_sidecar(images, info)
    net = load_run_network(workspace.run_dir, "best", "cpu").net
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    run_exported = load_exported(path)
    assert run_exported is not None
    np.testing.assert_allclose(run_exported(x), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(run_exported(x[:1]), expected[:1], atol=1e-4, rtol=0)  # any batch size
    assert not list(path.parent.glob(".*.tmp"))
    return info


def test_torchscript_round_trip(workspace: Workspace, tmp_path: Path) -> None:
    info = round_trip(workspace, "torchscript", tmp_path / "model.pt")
    assert info["check"]["checked"] and info["check"]["max_abs_diff"] <= 1e-4


def test_onnx_round_trip_with_onnxruntime(workspace: Workspace, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    info = round_trip(workspace, "onnx", tmp_path / "model.onnx")
    assert info["check"]["runtime"] == "onnxruntime" and info["opset"] >= 9
    assert info["input"]["name"] == "image" and info["output"]["name"] == "logits"


def test_sidecar_and_exported_model_reproduce_predict(workspace: Workspace, tmp_path: Path) -> None:
    """Sidecar preprocessing + the exported model + its stated postprocessing give bench predict's masks."""
    info = round_trip(workspace, "torchscript", tmp_path / "model.pt")
    paths, images, boxes = dataset_inputs(workspace)
    logits = load_exported(tmp_path / "model.pt")(normalise_from_sidecar(images, info))
    predict_images(workspace.run_dir, paths, tmp_path / "pred", device="cpu", log=lambda s: None, show_progress=False)
    for k, path in enumerate(paths):
        top, left, h, w = boxes[k]
        expected = png(tmp_path / "pred" / "masks" / f"{path.stem}.png") > 0
        box = torch.from_numpy(logits[k : k + 1, :, top : top + h, left : left + w])
        native = torch.nn.functional.interpolate(box, size=expected.shape, mode="bilinear", align_corners=False)
        np.testing.assert_array_equal(torch.sigmoid(native)[0, 0].numpy() > 0.5, expected)


def test_onnx_without_the_onnx_package_names_it(workspace: Workspace, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail as when it is not installed
    with pytest.raises(ExportError, match=r"needs the 'onnx' package.*pip install onnx.*--format torchscript"):
        export_run(workspace.run_dir, "onnx", tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_errors(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--format 'tflite'"):
        export_run(workspace.run_dir, "tflite", tmp_path / "m")
    with pytest.raises(ExportError, match="is a folder"):
        export_run(workspace.run_dir, "torchscript", tmp_path)
    with pytest.raises(InferenceError, match="has no run.json"):
        export_run(tmp_path, "torchscript", tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_cli_export(workspace: Workspace, tmp_path: Path) -> None:
    from harness.cli.app import build_app

    out = tmp_path / "net.pt"
    result = CliRunner().invoke(
        build_app([]), ["export", str(workspace.run_dir), "--format", "torchscript", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "matches PyTorch" in result.output and out.exists() and sidecar_path(out).exists()
