"""Figures render from a small results store (Agg canvas): files exist, are non-empty and are real PNG/PDF."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from test_report import METHODS, fake_defaults, make_store, write_run

from harness.errors import UserError
from harness.reporting.load import load
from harness.reporting.plots import (
    Sample,
    choose_images,
    choose_runs,
    dice_box,
    generator_figures,
    labelled,
    load_curves,
    plot_all,
    qualitative_grid,
    save_figure,
    tile,
)
from harness.runs.store import atomic_write_json


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_store(tmp_path_factory.mktemp("runs"))
    write_samples(root / "generators" / "ldm-fold0", 8)  # the other folds' caches hold no samples
    return root


def write_samples(cache: Path, n: int, size: int = 32) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    samples = torch.randint(0, 255, (n, 1, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.save(samples, cache / f"samples-n{n}-s0-abcdef123456.pt")


@pytest.fixture(scope="module")
def frame(store: Path) -> pd.DataFrame:
    return labelled(load(store, checkpoint="best"), fake_defaults)


def assert_figure_files(paths: list[Path]) -> None:
    for path in paths:
        assert path.stat().st_size > 1000, path
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else head.startswith(b"%PDF")


def test_plot_all_writes_every_figure(store: Path, tmp_path: Path) -> None:
    backend = matplotlib.get_backend()
    written, skipped = plot_all(store, tmp_path / "fig", n_images=3, label_defaults=fake_defaults, log=lambda _: None)
    names = {p.name for p in written}
    for stem in ("dice_per_image", "dice_vs_fraction", "learning_curves", "generator_ldm-fold0"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
    assert_figure_files(written)
    # the fixture runs have no checkpoints: the grid is skipped with a reason, the rest is still written
    assert "qualitative" in skipped and "checkpoint" in skipped["qualitative"]
    assert matplotlib.get_backend() == backend  # no global backend switch
    assert not list((tmp_path / "fig").glob(".*.tmp"))


def test_curves_are_loaded_per_run_and_kind(frame: pd.DataFrame) -> None:
    curves = load_curves(frame, points=10)
    assert set(curves["kind"]) == {"loss", "val Dice"}
    assert curves["run"].nunique() == frame["run"].nunique()
    one = curves[(curves["run"] == curves["run"].iloc[0]) & (curves["kind"] == "val Dice")]
    assert one["step"].tolist() == [99, 199, 299]
    loss = curves[(curves["run"] == curves["run"].iloc[0]) & (curves["kind"] == "loss")]
    assert 5 <= len(loss) <= 30 and loss["value"].is_monotonic_decreasing


def test_qualitative_choice_of_runs_and_images(frame: pd.DataFrame) -> None:
    fraction, runs = choose_runs(frame)
    assert fraction == 0.25 and len(runs) == len(METHODS)
    folds = frame[frame["run"].isin(runs.values())]["fold"].unique()
    assert folds.tolist() == [0]
    ids = choose_images(frame, runs, 4)
    assert len(ids) == 4 and len(set(ids)) == 4
    lesion = frame.drop_duplicates("id").set_index("id")["lesion"]
    assert [bool(lesion[i]) for i in ids] == [True, True, True, False]
    dice = frame[frame["run"].isin(runs.values())].groupby("id")["dice"].mean()
    assert dice[ids[0]] <= dice[ids[1]] <= dice[ids[2]]  # hardest to easiest
    with pytest.raises(UserError, match="--labeled 0.3"):
        choose_runs(frame, 0.3)
    assert choose_runs(frame, 0.5)[0] == 0.5


def test_qualitative_grid_draws_overlays(tmp_path: Path) -> None:
    yy, xx = np.mgrid[:48, :48]
    truth = (yy - 24) ** 2 + (xx - 20) ** 2 < 100
    image = (yy * 3).astype(np.uint8)
    sample = Sample("img-1", image, truth, {"a": truth, "b": np.zeros_like(truth)}, {"a": 0.9, "b": 0.0})
    fig = qualitative_grid([sample, sample], ["a", "b"], title="test")
    assert len(fig.axes) == 2 * 4
    assert_figure_files(save_figure(fig, tmp_path, "grid"))
    with pytest.raises(UserError):
        qualitative_grid([], ["a"])


def test_dice_box_needs_lesion_images(frame: pd.DataFrame) -> None:
    with pytest.raises(UserError, match="lesion"):
        dice_box(frame[~frame["lesion"]])


def test_generator_figures_from_the_cache(frame: pd.DataFrame, store: Path) -> None:
    assert generator_figures(frame[frame["generator"] == "none"], store) == []
    ((name, fig),) = generator_figures(frame, store)  # only fold 0's cache holds samples
    assert name == "generator_ldm-fold0"
    (ax,) = fig.axes  # the fixture's split file has no folds: no real images, and the caption says why
    assert ax.get_title() == "generated (8)"
    assert ax.get_images()[0].get_array().shape == (2 * 32 + 2, 4 * 32 + 3 * 2)
    assert "real images not shown" in fig.get_suptitle()


def test_tile_lays_images_out_in_rows() -> None:
    images = np.stack([np.full((3, 2), k, np.uint8) for k in range(5)])
    grid = tile(images, columns=2, gap=1)
    assert grid.shape == (3 * 3 + 2, 2 * 2 + 1)
    assert grid[0, 0] == 0 and grid[0, 3] == 1 and grid[4, 0] == 2 and grid[8, 0] == 4 and grid[8, 3] == 255


@pytest.mark.slow
def test_generator_figure_shows_the_folds_real_training_images(tmp_path: Path) -> None:
    from harness.runs.lifecycle import load_run_dataset
    from harness.runs.resolve import RunSpec

    data = "phantom:count=12,size=32"
    ids = load_run_dataset(RunSpec(data=data), 32).ids
    split = tmp_path / "split.json"
    atomic_write_json(split, {"folds": [{"train": ids[:9]}]})
    run_dir = write_run(tmp_path, "mgcc+ldm/cmunet", 0.25, 0, image_size=32, split_file=split)
    run = json.loads((run_dir / "run.json").read_text())
    run["config"]["data"] = data
    atomic_write_json(run_dir / "run.json", run)
    write_samples(tmp_path / "generators" / "ldm-fold0", 4)
    ((_, fig),) = generator_figures(labelled(load(tmp_path), fake_defaults), tmp_path)
    assert [ax.get_title() for ax in fig.axes] == ["real training images (9)", "generated (4)"]


@pytest.mark.slow
def test_qualitative_grid_from_trained_runs(tmp_path: Path) -> None:
    """Two tiny real runs on the phantom: the grid predicts with their checkpoints; the table loads them."""
    from harness.reporting.tables import build_tables
    from harness.runs.grid import expand
    from harness.runs.lifecycle import execute

    base = {"preset": "quick", "data": "phantom:count=40,size=48", "image_size": 32, "iterations": 4, "k": 3,
            "val_every": 2, "checkpoint_every": 2}  # fmt: skip
    axes = {"ssl": ["supervised", "mean-teacher"], "backbone": ["unet"], "labeled": ["0.5"], "fold": ["0"]}
    runs_dir = tmp_path / "runs"
    for run in expand(base, axes, ["backbone.width=4"]):
        execute(run, runs_dir, log=lambda _: None, show_progress=False, device_name="cpu")
    written, skipped = plot_all(runs_dir, tmp_path / "fig", n_images=3, log=lambda _: None)
    assert "qualitative" not in skipped, skipped
    assert_figure_files([p for p in written if p.stem == "qualitative"])
    frame = labelled(load(runs_dir, checkpoint="best"))
    fraction, chosen = choose_runs(frame)
    ids = choose_images(frame, chosen, 3)
    from harness.reporting.plots import predict_samples

    samples = predict_samples(frame, chosen, ids)
    assert [s.id for s in samples] == ids
    for sample in samples:
        assert set(sample.predictions) == set(chosen)
        assert all(m.shape == sample.truth.shape == sample.image.shape for m in sample.predictions.values())
    (table,) = build_tables(load(runs_dir))
    assert set(table.rows) == {"supervised / unet", "mean-teacher / unet"}


def _curves(runs_per_method: int, val_points: int, dice: float) -> pd.DataFrame:
    rows = []
    for method in ("a", "b"):
        for r in range(runs_per_method):
            run = f"{method}{r}"
            rows += [{"run": run, "label": method, "labeled": 0.25, "step": s, "kind": "loss", "value": 1 / (s + 1)}
                     for s in range(0, 100, 10)]  # fmt: skip
            rows += [{"run": run, "label": method, "labeled": 0.25, "step": 99 + 100 * v, "kind": "val Dice",
                      "value": dice + 0.04 * (r - 0.5)} for v in range(val_points)]  # fmt: skip
    return pd.DataFrame(rows)


def test_learning_curves_show_a_single_validation_and_clip_the_band_to_the_metric() -> None:
    from harness.reporting.plots import learning_curves

    once = learning_curves(_curves(1, 1, 0.5))
    val_ax = once.axes[1]
    points = [line for line in val_ax.get_lines() if len(line.get_xdata()) == 1]
    assert len(points) == 2 and all(line.get_marker() == "o" for line in points)  # visible, not an empty panel
    assert once.axes[0].get_legend().get_title().get_text() == ""  # one run each: no band, none mentioned
    assert not val_ax.collections

    near_zero = learning_curves(_curves(2, 3, 0.01))  # mean 0.01, std 0.028: the raw band would reach -0.018
    bands = [c for c in near_zero.axes[1].collections]
    assert bands and min(path.vertices[:, 1].min() for c in bands for path in c.get_paths()) >= 0.0
    assert near_zero.axes[0].get_legend().get_title().get_text() == "mean over runs, band: ± std"


def test_dice_vs_fraction_with_one_fraction_is_a_dot_plot_per_method(frame: pd.DataFrame) -> None:
    from harness.reporting.plots import dice_vs_fraction

    one = frame[frame["labeled"] == 0.25]
    fig = dice_vs_fraction(one)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert len(labels) == one["label"].nunique() and all(labels) and ax.get_legend() is None
    assert "25% labeled" in ax.get_title() and "mean ± std over runs" in ax.get_title()
    single = one[one["fold"] == one["fold"].min()]
    assert "one run per method" in dice_vs_fraction(single).axes[0].get_title()
    several = dice_vs_fraction(frame).axes[0]
    assert several.get_legend().get_title().get_text() == "mean ± std over runs; dots: runs"
    for line in several.get_lines():
        assert (np.asarray(line.get_ydata(), float) >= 0).all() and (np.asarray(line.get_ydata(), float) <= 1).all()
