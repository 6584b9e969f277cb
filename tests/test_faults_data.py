"""Fault injection, silently wrong results: changed data under a finished run, decoding, non-finite training."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from faults import make_dataset, tiny_run
from PIL import Image

from harness.data.datasets import DataError, decode_image, load_dataset, read_dataset_toml
from harness.reporting.load import load
from harness.reporting.tables import build_tables
from harness.runs.freshness import StaleRunError
from harness.runs.lifecycle import execute
from harness.runs.store import read_run
from harness.training.engine import NonFiniteLossError


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))


def _quiet(_message: str) -> None:
    pass


# --------------------------------------------------------------------------- a changed dataset under a finished run


def test_blanked_masks_refuse_the_finished_run_and_retrain_changed_trains_it_again(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "ds"), tmp_path / "out"
    run = tiny_run(data)
    run_dir = execute(run, out, show_progress=False, log=_quiet)
    before = read_run(run_dir)
    said: list[str] = []
    execute(run, out, show_progress=False, log=said.append)
    assert said == [f"{run.name}: done already, skipped"]  # unchanged data: skipped as before

    for mask in (data / "masks" / "0").glob("*.png"):
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(mask)
    with pytest.raises(StaleRunError, match=r"mask fingerprint \w{12} -> \w{12}.*--retrain-changed") as caught:
        execute(run, out, show_progress=False, log=_quiet)
    assert run.name in str(caught.value)
    assert read_run(run_dir) == before  # refused: nothing touched

    assert tiny_run(data).run_id == run.run_id  # the run id hashes the configuration, not the data
    execute(run, out, show_progress=False, log=_quiet, retrain_changed=True)
    after = read_run(run_dir)
    assert after["status"] == "done" and after["retrained"]["changes"][0].startswith("mask fingerprint")
    assert after["data"]["mask_fingerprint"] != before["data"]["mask_fingerprint"]
    assert after["train"]["resumed_from"] is None  # trained from scratch, not resumed from the old checkpoint
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert not rows["lesion"].any()  # scored against the blank masks now


def test_a_changed_image_is_named_in_the_refusal(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "ds"), tmp_path / "out"
    run = tiny_run(data)
    execute(run, out, show_progress=False, log=_quiet)
    path = data / "images" / "benign (3).png"
    pixels = np.array(Image.open(path))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(path)
    with pytest.raises(StaleRunError, match=r"dataset fingerprint \w{12} -> \w{12} \(images changed 1: benign \(3\)\)"):
        execute(run, out, show_progress=False, log=_quiet)


def test_an_edited_split_file_refuses_the_finished_run(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "ds"), tmp_path / "out"
    run = tiny_run(data, split_file=str(tmp_path / "split.json"))
    execute(run, out, show_progress=False, log=_quiet)
    split = json.loads((tmp_path / "split.json").read_text())
    fold = split["folds"][0]
    fold["test"], fold["val"] = fold["val"], fold["test"]
    (tmp_path / "split.json").write_text(json.dumps(split))
    with pytest.raises(StaleRunError, match=r"split hash \w{12} -> \w{12} \(split file .*split\.json\)"):
        execute(run, out, show_progress=False, log=_quiet)


def test_an_interrupted_run_never_resumes_onto_changed_data(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "ds"), tmp_path / "out"
    run = tiny_run(data)
    run_dir = execute(run, out, show_progress=False, log=_quiet)
    record = read_run(run_dir)
    record["status"] = "running"  # as a killed process leaves it, checkpoints/latest.pt in place
    (run_dir / "run.json").write_text(json.dumps(record))
    for mask in (data / "masks" / "0").glob("*.png"):
        Image.fromarray(np.zeros((24, 24), np.uint8)).save(mask)
    with pytest.raises(StaleRunError, match="was interrupted while training on other data.*mask fingerprint"):
        execute(run, out, show_progress=False, log=_quiet)
    assert read_run(run_dir)["data"]["mask_fingerprint"] == record["data"]["mask_fingerprint"]  # still remembered
    with pytest.raises(StaleRunError):  # ... so a second attempt refuses too
        execute(run, out, show_progress=False, log=_quiet)
    execute(run, out, show_progress=False, log=_quiet, retrain_changed=True)
    assert read_run(run_dir)["train"]["resumed_from"] is None


def test_table_names_the_fingerprints_when_the_data_changed_between_runs(tmp_path: Path) -> None:
    data, out = make_dataset(tmp_path / "ds"), tmp_path / "out"
    execute(tiny_run(data, fold=0), out, show_progress=False, log=_quiet)
    for mask in (data / "masks" / "0").glob("*.png"):
        pixels = np.array(Image.open(mask))
        Image.fromarray(np.roll(pixels, 3, axis=0)).save(mask)
    execute(tiny_run(data, fold=1), out, show_progress=False, log=_quiet)
    frame = load(out)
    tables = build_tables(frame, metrics=["dice"], compare="none", defaults=None)
    assert len(tables) == 2  # never one table mixing the two versions of the data
    fingerprints = sorted(set(frame["mask_fingerprint"]))
    for table in tables:
        warning = [note for note in table.notes if "changed between runs" in note]
        assert len(warning) == 1 and all(f[:8] in warning[0] for f in fingerprints), table.notes


# --------------------------------------------------------------------------- decoding


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_16_bit_png_holding_8_bit_values_keeps_its_values() -> None:
    values = (np.arange(24 * 24).reshape(24, 24) % 200 + 20).astype(np.uint16)
    decoded = decode_image(_png(values), Path("x.png"))
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, values)  # the old >> 8 made this all black


def test_a_12_bit_png_is_scaled_by_its_bit_depth() -> None:
    values = np.linspace(0, 4095, 24 * 24).reshape(24, 24).astype(np.uint16)
    decoded = decode_image(_png(values), Path("x.png"))
    assert decoded.max() == 255 and decoded.min() == 0
    assert np.allclose(decoded, values / 4095 * 255, atol=0.51)


def test_a_float_tiff_with_nan_is_refused_naming_the_file() -> None:
    pixels = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    pixels[3, 4] = np.nan
    pixels[5, 6] = np.inf
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF")
    with pytest.raises(DataError, match=r"scan\.tif: 2 NaN or infinite pixel\(s\)"):
        decode_image(buffer.getvalue(), Path("scan.tif"))


def test_a_constant_image_warns_naming_the_file(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "ds")
    Image.fromarray(np.full((24, 24), 9, np.uint8)).save(data / "images" / "benign (2).png")
    with pytest.warns(UserWarning, match=r"benign \(2\)\.png: decodes to a constant image \(every pixel 9\)"):
        load_dataset(str(data), image_size=16, cache_dir=tmp_path / "c")


def test_16_bit_dataset_trains_on_the_same_pixels_as_its_8_bit_twin(tmp_path: Path) -> None:
    eight = make_dataset(tmp_path / "eight")
    sixteen = make_dataset(tmp_path / "sixteen")
    for path in (sixteen / "images").glob("*.png"):
        Image.fromarray(np.array(Image.open(path)).astype(np.uint16)).save(path)
    a = load_dataset(str(eight), image_size=16, cache_dir=tmp_path / "c")
    b = load_dataset(str(sixteen), image_size=16, cache_dir=tmp_path / "c")
    assert torch.equal(a.images, b.images) and b.images.float().std() > 30


@pytest.mark.parametrize(
    "line, key",
    [("mask_threshold = nan", "mask_threshold"), ("spacing = nan", "spacing"), ("spacing = inf", "spacing"),
     ("mask_threshold = -inf", "mask_threshold")],
)  # fmt: skip
def test_non_finite_dataset_toml_numbers_are_refused(tmp_path: Path, line: str, key: str) -> None:
    (tmp_path / "dataset.toml").write_text(line + "\n")
    with pytest.raises(DataError, match=rf"dataset\.toml: {key} = .* is invalid; expected a (positive|finite)"):
        read_dataset_toml(tmp_path / "dataset.toml")


def test_a_nan_mask_threshold_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--mask-threshold nan: use a finite number"):
        load_dataset(str(make_dataset(tmp_path / "ds")), image_size=16, mask_threshold=math.nan)


# --------------------------------------------------------------------------- non-finite training


def test_exploding_training_never_saves_non_finite_weights_and_says_which_checkpoints_it_kept(tmp_path: Path) -> None:
    """``lr=1e4`` as in the sweep: the weights blow up between logging windows (log_every 10)."""
    from test_engine import _trainer

    trainer = _trainer(tmp_path, iterations=40, lr=1e4, val_every=1, checkpoint_every=1, log_every=10)
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.train()
    message = str(caught.value)
    kept = dict(re.findall(r"(\w+\.pt) \(step (\d+)\)", message))
    assert kept and set(kept) <= {"best.pt", "latest.pt"}, message
    for name in ("best.pt", "latest.pt", "last.pt"):
        path = tmp_path / "checkpoints" / name
        if name not in kept:
            assert not path.exists() or name == "best.pt", name
            continue
        state = torch.load(path, weights_only=True)
        assert state["step"] == int(kept[name]), (name, message)
        assert all(t.isfinite().all() for t in state["method"].values() if t.is_floating_point()), name
        if name == "best.pt":
            assert math.isfinite(state["score"])
