"""``bench data check``, ``bench data import-busi`` and ``bench split`` through typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.data.datasets import DataError


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def tiny_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for stratum, n in (("benign", 6), ("malignant", 4), ("normal", 2)):
        for k in range(1, n + 1):
            save(root / "images" / f"{stratum} ({k}).png", rng.integers(0, 256, (24, 32), dtype=np.uint8))
            mask = np.zeros((24, 32), np.uint8)
            if stratum != "normal":
                mask[4:12, 6:20] = 255
            save(root / "masks" / "0" / f"{stratum} ({k}).png", mask)
    # a near-duplicate: a copy of benign (1) with a different file (brightness + 1)
    image = np.asarray(Image.open(root / "images" / "benign (1).png")).astype(np.int16)
    save(root / "images" / "malignant (4).png", np.clip(image + 1, 0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def app():
    from harness.cli.app import build_app

    return build_app([])


@pytest.fixture
def run(app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_data_check(run, tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path / "tiny")
    result = run("data", "check", folder, "--json", "--image-size", 32)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images"] == 12 and report["empty_masks"] == 2
    assert report["strata"]["benign"]["images"] == 6 and report["width"] == [32, 32]
    assert report["duplicates"]["clusters"] == [["benign (1)", "malignant (4)"]]
    assert report["duplicates"]["label_conflicts"][0]["strata"] == ["benign", "malignant"]
    human = run("data", "check", folder, "--image-size", 32)
    assert human.exit_code == 0 and "12 images, 2 empty masks" in human.output and "label conflict" in human.output


def test_data_check_lists_problems(run, tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path / "tiny")
    (folder / "masks" / "0" / "benign (2).png").unlink()
    result = run("data", "check", folder, "--json")
    assert result.exit_code == 1
    problems = json.loads(result.output)["problems"]
    assert len(problems) == 1 and "benign (2).png: image without mask" in problems[0]
    assert not (tmp_path / "cache").exists()


def test_split_command(run, tmp_path: Path) -> None:
    folder = tiny_folder(tmp_path / "tiny")
    result = run("split", folder, "--k", 3, "--label-draws", 2, "--image-size", 32)
    assert result.exit_code == 0, result.output
    path = folder / "splits" / "kfold-k3-seed0.json"
    split = json.loads(path.read_text())
    assert len(split["folds"]) == 3 and split["parameters"]["label_draws"] == 2
    assert sorted(i for f in split["folds"] for i in f["test"]) == sorted(p.stem for p in (folder / "images").iterdir())
    for fold in split["folds"]:
        assert ("benign (1)" in fold["test"]) == ("malignant (4)" in fold["test"])
    again = run("split", folder, "--k", 3, "--label-draws", 2, "--image-size", 32)
    assert again.exit_code == 0  # same content: fine
    other = run("split", folder, "--k", 3, "--seed", 1, "--out", path, "--image-size", 32)
    assert isinstance(other.exception, DataError) and "--force" in str(other.exception)
    paper = run("split", folder, "--protocol", "paper-like", "--out", tmp_path / "p.json", "--image-size", 32)
    assert paper.exit_code == 0 and "model selection uses the reported test set" in paper.output
    bad = run("split", folder, "--k", 1, "--out", tmp_path / "bad.json")
    assert isinstance(bad.exception, DataError) and not (tmp_path / "bad.json").exists()


def test_import_busi_command(run, tmp_path: Path) -> None:
    src = tmp_path / "raw"
    save(src / "benign" / "benign (1).png", np.zeros((8, 8), np.uint8))
    save(src / "benign" / "benign (1)_mask.png", np.zeros((8, 8), np.uint8))
    result = run("data", "import-busi", src, tmp_path / "busi")
    assert result.exit_code == 0 and "wrote 1 images" in result.output
    again = run("data", "import-busi", src, tmp_path / "busi")
    assert isinstance(again.exception, DataError) and "not empty" in str(again.exception)
