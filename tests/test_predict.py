"""``bench predict`` on a tiny run trained in the test: outputs at the inputs' sizes, evaluation's numbers, errors."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from harness.evaluation.metrics import METRIC_NAMES, image_metrics
from harness.inference.network import InferenceError, load_run_network
from harness.inference.predict import PredictError, find_inputs, predict_images, tta_predictor
from harness.runs.lifecycle import execute
from harness.runs.resolve import RunSpec, resolve
from plugins.datasets.phantom import PhantomParams, generate


@dataclass
class Workspace:
    root: Path
    data: Path  # a dataset folder: images/ + masks/0/
    run_dir: Path


def make_dataset_folder(root: Path, count: int = 24) -> Path:
    """Phantom images cropped (and some enlarged) to different non-square sizes; one saved as JPEG."""
    ids, _, images, masks = generate(PhantomParams(count=count, size=48, seed=3))
    for i, (item_id, image, mask) in enumerate(zip(ids, images, masks, strict=True)):
        h, w = 48 - 4 * (i % 3), 48 - 6 * (i % 4)
        image, mask = image[:h, :w], mask[:h, :w]
        if i % 2:  # larger than the model grid and not a multiple of it
            image, mask = image.repeat(2, 0).repeat(2, 1)[:-3], mask.repeat(2, 0).repeat(2, 1)[:-3]
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks" / "0").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"{item_id}.{'jpg' if i == 1 else 'png'}")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / "0" / f"{item_id}.png")
    return root


def train_tiny_run(root: Path, data: Path | None = None) -> Workspace:
    """A 30-iteration supervised width-4 U-Net run on a dataset folder, at 32 px.

    30 iterations (under a second): after 6 every pixel is still above 0.5, and a comparison of
    all-foreground masks could not tell a wrong resampling or resize from the right one.
    """
    data = data or make_dataset_folder(root / "data")
    spec = RunSpec(
        ssl="supervised",
        backbone="unet",
        data=str(data),
        iterations=30,
        image_size=32,
        preset="quick",
        k=3,
        precision="fp32",
        overrides={"backbone": {"width": "4"}},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGBENCH_CACHE", str(root / "cache"))
        run_dir = execute(resolve(spec), root / "runs", show_progress=False, log=lambda s: None, device_name="cpu")
    return Workspace(root, data, run_dir)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return train_tiny_run(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def predicted(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("predicted")
    result = predict_images(
        workspace.run_dir, [workspace.data / "images"], out, probabilities="npy", device="cpu",
        log=lambda s: None, show_progress=False,
    )  # fmt: skip
    return result


def png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_outputs_have_the_input_sizes(workspace: Workspace, predicted) -> None:
    out = predicted.out
    images = sorted((workspace.data / "images").iterdir())
    assert len(images) == 24
    sizes = set()
    for path in images:
        with Image.open(path) as img:
            width, height = img.size
        sizes.add((height, width))
        mask = png(out / "masks" / f"{path.stem}.png")
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        with Image.open(out / "overlays" / f"{path.stem}.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (width, height)
        prob = np.load(out / "probabilities" / f"{path.stem}.npy")
        assert prob.shape == (height, width) and prob.dtype == np.float32 and 0 <= prob.min() <= prob.max() <= 1
        np.testing.assert_array_equal(prob > 0.5, mask == 255)
    assert len(sizes) > 6 and any(h > 32 for h, _ in sizes)  # many sizes, some larger than the model grid
    manifest = json.loads((out / "predict.json").read_text())
    assert manifest["tta"]["enabled"] is False and manifest["threshold"] == 0.5
    assert manifest["checkpoint"]["name"] == "best" and manifest["checkpoint"]["step"] >= 0
    assert manifest["preprocessing"]["resize"] == "squash" and manifest["n_with_ground_truth"] == 24
    assert not list(out.rglob("*.tmp"))


def test_overlay_draws_prediction_and_truth(workspace: Workspace, predicted) -> None:
    item = next(r for r in predicted.rows if r["lesion"] and not r["pred_empty"])
    overlay = png(predicted.out / "overlays" / f"{item['id']}.png")
    assert (overlay == (0, 230, 0)).all(axis=2).any()  # ground-truth contour
    assert (overlay == (255, 40, 40)).all(axis=2).any()  # prediction contour


def test_metrics_equal_the_runs_own_evaluation(workspace: Workspace, predicted) -> None:
    """Predicting the dataset folder gives, for the run's test images, the rows the run's evaluation wrote."""
    own = {r["id"]: r for r in read_csv(workspace.run_dir / "metrics.csv") if r["checkpoint"] == "best"}
    ours = {r["id"]: r for r in read_csv(predicted.out / "metrics.csv")}
    assert len(own) >= 5 and set(own) <= set(ours)
    for image_id, expected in own.items():
        got = ours[image_id]
        for column in ("stratum", "lesion", "pred_empty", "height", "width", "resolution", "checkpoint_step"):
            assert got[column] == expected[column], (image_id, column)
        for name in METRIC_NAMES:
            assert float(got[name]) == pytest.approx(float(expected[name]), rel=1e-9, abs=1e-12), (image_id, name)


def test_probabilities_follow_the_dataset_loaders_path(workspace: Workspace, predicted) -> None:
    """Probability maps equal the network on the dataset loader's resized images, resampled like evaluation."""
    from harness.data.datasets import load_dataset

    loaded = load_run_network(workspace.run_dir, "best", "cpu")
    dataset = load_dataset(str(workspace.data), image_size=32, cache_dir=workspace.root / "cache")
    logits = loaded.predictor()(dataset.images)
    some_foreground = False
    for k, image_id in enumerate(dataset.ids):
        top, left, h, w = dataset.boxes[k]
        box = logits[k : k + 1, :, top : top + h, left : left + w]
        native = dataset.native_masks[k].shape
        expected = torch.sigmoid(torch.nn.functional.interpolate(box, size=native, mode="bilinear"))[0, 0].numpy()
        got = np.load(predicted.out / "probabilities" / f"{image_id}.npy")
        np.testing.assert_allclose(got, expected, atol=1e-6)
        some_foreground |= 0 < (got > 0.5).mean() < 0.5
    assert some_foreground  # the masks are not trivially all foreground or all background


def test_letterboxed_run_from_dataset_toml(workspace: Workspace, tmp_path: Path) -> None:
    """A run whose dataset.toml chose pad resizing: predict finds the mode and crops each image's box."""
    data = Path(shutil.copytree(workspace.data, tmp_path / "padded"))
    (data / "dataset.toml").write_text('resize = "pad"\n')
    padded = train_tiny_run(tmp_path, data)
    result = predict_images(padded.run_dir, [data], tmp_path / "out", device="cpu", log=lambda s: None,
                            show_progress=False)  # fmt: skip
    assert result.manifest["preprocessing"]["resize"] == "pad"
    own = {r["id"]: r for r in read_csv(padded.run_dir / "metrics.csv") if r["checkpoint"] == "best"}
    ours = {r["id"]: r for r in result.rows}
    for image_id, expected in own.items():
        for name in METRIC_NAMES:
            assert ours[image_id][name] == pytest.approx(float(expected[name]), rel=1e-9, abs=1e-12), (image_id, name)


def test_written_masks_give_the_metrics(workspace: Workspace, predicted) -> None:
    for row in predicted.rows[:8]:
        pred = png(predicted.out / "masks" / f"{row['id']}.png") > 0
        truth = png(workspace.data / "masks" / "0" / f"{row['id']}.png") > 0
        assert image_metrics(pred, truth)["dice"] == pytest.approx(row["dice"])


def test_tta_is_equivariant_to_flips_and_rotations(workspace: Workspace) -> None:
    loaded = load_run_network(workspace.run_dir, "best", "cpu")
    plain, averaged = loaded.predictor(), tta_predictor(loaded.predictor(), True)
    x = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for transform in (lambda t: torch.rot90(t, 1, (-2, -1)), lambda t: t.flip(-1), lambda t: t.flip(-2)):
        torch.testing.assert_close(averaged(transform(x)), transform(averaged(x)), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain(x.flip(-1)), plain(x).flip(-1), atol=1e-5)  # the network alone is not


def test_tta_and_16_bit_probabilities(workspace: Workspace, tmp_path: Path) -> None:
    images = sorted((workspace.data / "images").glob("*.png"))[:3]
    result = predict_images(
        workspace.run_dir, images, tmp_path, tta=True, probabilities="png", overlays=False, batch_size=2,
        device="cpu", log=lambda s: None, show_progress=False,
    )  # fmt: skip
    assert result.manifest["tta"]["enabled"] is True and result.manifest["tta"]["views"] == 8
    assert all(row["tta"] is True for row in result.rows)
    assert read_csv(tmp_path / "metrics.csv")[0]["tta"] == "True"
    assert not (tmp_path / "overlays").exists()
    with Image.open(tmp_path / "probabilities" / f"{images[0].stem}.png") as image:
        assert image.mode.startswith("I")
    prob = png(tmp_path / "probabilities" / f"{images[0].stem}.png")
    mask = png(tmp_path / "masks" / f"{images[0].stem}.png") > 0
    np.testing.assert_array_equal(prob.astype(np.float64) / 65535 > 0.5, mask)


def test_images_without_ground_truth(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "new"
    folder.mkdir()
    for path in sorted((workspace.data / "images").glob("*.png"))[:3]:
        shutil.copy(path, folder)
    lines: list[str] = []
    result = predict_images(workspace.run_dir, [folder], tmp_path / "out", device="cpu", log=lines.append,
                            show_progress=False)  # fmt: skip
    assert result.rows == [] and result.summary is None
    assert not (tmp_path / "out" / "metrics.csv").exists()
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == 3
    assert any("no metrics.csv" in line for line in lines)


def test_a_dataset_folder_stands_for_its_images(workspace: Workspace) -> None:
    items = find_inputs([workspace.data])
    assert len(items) == 24 and all(item.mask_path is not None for item in items)


def copy_run(workspace: Workspace, tmp_path: Path) -> Path:
    return Path(shutil.copytree(workspace.run_dir, tmp_path / workspace.run_dir.name))


def test_missing_checkpoint_is_a_clear_error(workspace: Workspace, tmp_path: Path) -> None:
    run_dir = copy_run(workspace, tmp_path)
    (run_dir / "checkpoints" / "best.pt").unlink()
    with pytest.raises(InferenceError, match=r"best\.pt is missing.*--checkpoint last"):
        predict_images(run_dir, [workspace.data], tmp_path / "out", device="cpu", show_progress=False)
    assert not (tmp_path / "out").exists()
    for name in ("last.pt", "latest.pt"):
        (run_dir / "checkpoints" / name).unlink(missing_ok=True)  # a finished run has no latest.pt
    with pytest.raises(InferenceError, match="no usable checkpoint"):
        load_run_network(run_dir, "last")


def test_not_a_run_directory(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="has no run.json"):
        load_run_network(tmp_path)
    with pytest.raises(InferenceError, match=f"It holds runs: {workspace.run_dir.name}"):
        load_run_network(workspace.run_dir.parent)
    with pytest.raises(InferenceError, match="does not exist"):
        load_run_network(tmp_path / "nowhere")


def test_config_that_cannot_be_rebuilt_names_the_missing_plugin(workspace: Workspace, tmp_path: Path) -> None:
    run_dir = copy_run(workspace, tmp_path)
    record = json.loads((run_dir / "run.json").read_text())
    record["config"]["ssl"] = "fancy-ssl"
    record["versions"]["plugins"]["ssl_method"].update(name="fancy-ssl", distribution="segbench-fancy")
    (run_dir / "run.json").write_text(json.dumps(record))
    with pytest.raises(InferenceError, match=r"ssl method 'fancy-ssl'.*segbench-fancy.*not installed"):
        load_run_network(run_dir)
    record["config"]["ssl"] = "supervised"
    record["config"]["backbone_params"]["depth_of_field"] = 3
    (run_dir / "run.json").write_text(json.dumps(record))
    with pytest.raises(InferenceError, match="depth_of_field"):
        load_run_network(run_dir)


def test_unreadable_image_is_a_clear_error_and_nothing_is_written(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(next((workspace.data / "images").glob("*.png")), folder)
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    with pytest.raises(PredictError, match=r"(?s)1 input file.*broken\.png: unreadable"):
        predict_images(workspace.run_dir, [folder], tmp_path / "out", device="cpu", show_progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_options(workspace: Workspace, tmp_path: Path) -> None:
    with pytest.raises(PredictError, match="--threshold"):
        predict_images(workspace.run_dir, [workspace.data], tmp_path, threshold=1.0, show_progress=False)
    with pytest.raises(PredictError, match="--probabilities 'tif'"):
        predict_images(workspace.run_dir, [workspace.data], tmp_path, probabilities="tif", show_progress=False)
    with pytest.raises(PredictError, match="does not exist"):
        predict_images(workspace.run_dir, [tmp_path / "missing.png"], tmp_path / "o", show_progress=False)


def test_cli_predict_prints_the_summary(workspace: Workspace, tmp_path: Path) -> None:
    from harness.cli.app import build_app

    app = build_app([])
    result = CliRunner().invoke(
        app, ["predict", str(workspace.run_dir), str(workspace.data / "images"), "--out", str(tmp_path), "--quiet",
              "--device", "cpu"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Dice" in result.output and "the run's own evaluation" in result.output
    assert (tmp_path / "metrics.csv").exists()
    missing = CliRunner().invoke(app, ["predict", str(tmp_path), str(workspace.data), "--out", str(tmp_path / "x")])
    assert isinstance(missing.exception, InferenceError)
