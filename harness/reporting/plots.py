"""Figures of a results directory: seaborn plots written as PNG and PDF.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas), never through pyplot,
so importing this module changes no global backend. :func:`plot_all` is what ``bench plot`` runs.
The qualitative grid needs predictions: it rebuilds each run's network from its run.json and
checkpoint (:func:`harness.inference.network.load_run_network`) and predicts a few test images.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import textwrap
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import MatplotlibDeprecationWarning
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from harness.errors import UserError
from harness.reporting.load import load
from harness.reporting.stats import run_means
from harness.reporting.tables import SETTING_KEYS, canonical, fraction_text, method_labels, row_order
from harness.runs.store import CURVES_FILE, read_run

Log = Callable[[str], None]
FORMATS = ("png", "pdf")


class PlotError(UserError):
    """A figure cannot be made from these results; the message says what is missing."""


# --------------------------------------------------------------------------- plumbing


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas (no pyplot, no global backend)."""
    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.pdf`` atomically; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{name}.{fmt}"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fig.savefig(tmp, format=fmt, dpi=150 if fmt == "png" else None)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths


def palette(labels: Sequence[str]) -> dict[str, Any]:
    """One colour per method label, the same in every figure."""
    colours = sns.color_palette("tab10" if len(labels) <= 10 else "husl", len(labels))
    return dict(zip(labels, colours, strict=True))


def _wrap(label: str, width: int = 22) -> str:
    return "\n".join(textwrap.wrap(label, width)) or label


def _fraction_axis(ax: Any, fractions: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(fractions)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([fraction_text(f) for f in fractions])


def labelled(frame: pd.DataFrame, label_defaults: Any = "registry") -> pd.DataFrame:
    """``frame`` with the table's row label of every run in ``label``."""
    runs = frame.drop_duplicates("run").set_index("run", drop=False)
    kwargs = {} if label_defaults == "registry" else {"defaults": label_defaults}
    labels = method_labels(runs, **kwargs)
    return frame.assign(label=frame["run"].map(labels))


# --------------------------------------------------------------------------- Dice figures


def dice_box(frame: pd.DataFrame, colours: dict[str, Any] | None = None) -> Figure:
    """Per-image Dice (images with a lesion) per method: box plots with every image as a dot, one panel per fraction."""
    lesion = frame[frame["lesion"]]
    if lesion.empty:
        raise PlotError("no test image with a lesion: per-image Dice plots need some")
    order = row_order(frame)
    colours = colours or palette(order)
    fractions = sorted(lesion["labeled"].unique())
    fig = new_figure(3.2 * len(fractions) + 2.5, 0.45 * len(order) + 1.6)
    axes = fig.subplots(1, len(fractions), sharey=True, squeeze=False)[0]
    for ax, fraction in zip(axes, fractions, strict=True):
        part = lesion[lesion["labeled"] == fraction]
        present = [label for label in order if label in set(part["label"])]
        kwargs = {"data": part, "x": "dice", "y": "label", "order": order, "hue": "label", "hue_order": present}
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated ``vert`` to bxp
            warnings.simplefilter("ignore", MatplotlibDeprecationWarning)
            sns.boxplot(
                ax=ax, **kwargs, palette=colours, showfliers=False, width=0.65, linewidth=1.3, fill=False, legend=False
            )
        sns.stripplot(
            ax=ax, **kwargs, palette=colours, size=2.2, alpha=0.4, jitter=0.22, edgecolor="none", legend=False, zorder=0
        )
        ax.set_title(f"{fraction_text(fraction)} labeled")
        ax.set_xlabel("Dice per image (lesion images)")
        ax.set_ylabel("")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(order)), [_wrap(label, 30) for label in order])
    return fig


def clipped_band(mean: np.ndarray, std: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """mean ± std clipped to the metric's range [low, high] (Dice cannot go below 0 or above 1)."""
    std = np.nan_to_num(np.asarray(std, float))
    return np.clip(mean - std, low, high), np.clip(mean + std, low, high)


def dice_vs_fraction(frame: pd.DataFrame, colours: dict[str, Any] | None = None) -> Figure:
    """Mean Dice per run against the labeled fraction: mean ± std over runs per method, every run as a dot.

    Methods are nudged sideways a little so that their error bars do not hide each other. With a
    single labeled fraction there is no trend to show: methods go on the x axis instead (a dot plot).
    Error bars are clipped to [0, 1]; with one run per method there are none, and the legend says so.
    """
    means = run_means(frame, "dice").rename("dice").reset_index()
    runs = frame.drop_duplicates("run").set_index("run")
    means = means.assign(label=means["run"].map(runs["label"]), labeled=means["run"].map(runs["labeled"]))
    if means.empty:
        raise PlotError("no test image with a lesion: Dice vs labeled fraction needs some")
    order = [label for label in row_order(frame) if label in set(means["label"])]
    colours = colours or palette(order)
    fractions = sorted(means["labeled"].unique())
    several_runs = bool((means.groupby(["label", "labeled"]).size() > 1).any())
    spread_text = "mean ± std over runs; dots: runs" if several_runs else "one run per method and fraction"
    if len(fractions) == 1:
        return _dice_dot_plot(means, order, colours, fractions[0], spread_text)
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    spread = np.linspace(-0.12, 0.12, len(order)) if len(order) > 1 else np.zeros(1)
    for label, nudge in zip(order, spread, strict=True):
        part = means[means["label"] == label]
        stats = part.groupby("labeled")["dice"].agg(["mean", "std"]).reset_index()
        x = stats["labeled"] * 2.0**nudge
        low, high = clipped_band(stats["mean"].to_numpy(), stats["std"].to_numpy(), 0.0, 1.0)
        yerr = np.vstack([stats["mean"] - low, high - stats["mean"]])
        ax.errorbar(x, stats["mean"], yerr=yerr, color=colours[label], marker="o", markersize=5, capsize=3,
                    linewidth=1.5, label=label)  # fmt: skip
        if several_runs:
            ax.scatter(part["labeled"] * 2.0**nudge, part["dice"], color=colours[label], s=10, alpha=0.4, linewidths=0)
    _fraction_axis(ax, fractions)
    ax.set_xlabel("labeled fraction of the training images")
    ax.set_ylabel("mean Dice over lesion images (per run)")
    ax.grid(alpha=0.3)
    ax.legend(title=spread_text, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig


def _dice_dot_plot(
    means: pd.DataFrame, order: list[str], colours: dict[str, Any], fraction: float, spread_text: str
) -> Figure:
    """One labeled fraction: each method's mean Dice (± std, clipped to [0, 1]) and its runs, methods on the x axis."""
    fig = new_figure(1.1 * len(order) + 2.5, 4.2)
    ax = fig.subplots()
    for x, label in enumerate(order):
        values = means.loc[means["label"] == label, "dice"].to_numpy(float)
        mean, std = values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0
        low, high = clipped_band(np.array([mean]), np.array([std]), 0.0, 1.0)
        ax.errorbar([x], [mean], yerr=[[mean - low[0]], [high[0] - mean]], color=colours[label], marker="o",
                    markersize=7, capsize=4, linewidth=1.5)  # fmt: skip
        if len(values) > 1:
            jitter = np.linspace(-0.12, 0.12, len(values))
            ax.scatter(x + jitter, values, color=colours[label], s=12, alpha=0.45, linewidths=0)
    ax.set_xticks(range(len(order)), [_wrap(label, 16) for label in order], fontsize=8)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel("mean Dice over lesion images (per run)")
    ax.set_title(f"{fraction_text(fraction)} labeled ({spread_text})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


def dice_vs_iterations(frame: pd.DataFrame, colours: dict[str, Any] | None = None) -> Figure:
    """Mean test Dice per run against its training budget T, one line per method and labeled fraction.

    Each budget is its own run (its schedule ends at its own T), so this is the curve that tells when
    a longer run stops paying off, not a learning curve of one run.
    """
    if frame["iterations"].nunique() < 2:
        raise PlotError("all runs have one budget (iterations): Dice vs iterations needs at least two")
    means = run_means(frame, "dice").rename("dice").reset_index()
    runs = frame.drop_duplicates("run").set_index("run")
    means = means.assign(
        label=means["run"].map(runs["label"]),
        labeled=means["run"].map(runs["labeled"]),
        iterations=means["run"].map(runs["iterations"]),
        image_size=means["run"].map(runs["image_size"]),
    )
    if means.empty:
        raise PlotError("no test image with a lesion: Dice vs iterations needs some")
    order = [label for label in row_order(frame) if label in set(means["label"])]
    colours = colours or palette(order)
    fractions = sorted(means["labeled"].unique())
    sizes = sorted(int(v) for v in means["image_size"].unique())  # budgets at several sizes: one line per size
    styles = dict(zip(fractions, ("-", "--", ":", "-."), strict=False))
    markers = dict(zip(sizes, ("o", "s", "^", "D"), strict=False))
    fig = new_figure(7.5, 4.2)
    ax = fig.subplots()
    for label, fraction, size in itertools.product(order, fractions, sizes):
        part = means[(means["label"] == label) & (means["labeled"] == fraction) & (means["image_size"] == size)]
        if part.empty:
            continue
        stats = part.groupby("iterations")["dice"].agg(["mean", "std", "count"]).reset_index()
        name = label + (f", {fraction_text(fraction)} labeled" if len(fractions) > 1 else "")
        name += f", {size}²" if len(sizes) > 1 else ""
        ax.plot(stats["iterations"], stats["mean"], color=colours[label], linestyle=styles.get(fraction, "-"),
                marker=markers.get(size, "o"), markersize=5, linewidth=1.5, label=name)  # fmt: skip
        if (stats["count"] > 1).any():
            low = (stats["mean"] - stats["std"].fillna(0)).clip(lower=0)
            high = (stats["mean"] + stats["std"].fillna(0)).clip(upper=1)
            ax.fill_between(stats["iterations"], low, high, color=colours[label], alpha=0.15, linewidth=0)
    budgets = sorted(int(v) for v in means["iterations"].unique())
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(budgets))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{b:,}" for b in budgets])
    ax.set_xlabel("training iterations T (each point its own run)")
    ax.set_ylabel("mean test Dice over lesion images")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------- learning curves


def _run_curves(path: Path, points: int) -> pd.DataFrame:
    """(step, kind, value) rows of one curves.jsonl."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    curves = pd.DataFrame.from_records(records)
    if curves.empty or "step" not in curves:
        return pd.DataFrame(columns=["step", "kind", "value"])
    event = curves["event"] if "event" in curves else pd.Series(np.nan, index=curves.index, dtype=object)
    parts = []
    train = curves[event.isna()].sort_values("step")
    if "loss" in train and not train.empty:
        window = max(1, len(train) // points)
        smooth = train["loss"].rolling(window, min_periods=1).mean()
        keep = train.index[window - 1 :: window]
        parts.append(pd.DataFrame({"step": train.loc[keep, "step"], "kind": "loss", "value": smooth.loc[keep]}))
    val = curves[event == "val"]
    if not val.empty and ("dice_lesion" in val or "dice_all" in val):
        value = val["dice_lesion"] if "dice_lesion" in val else val["dice_all"]
        if "dice_all" in val:  # no lesion image in the validation set: fall back as selection does
            value = value.fillna(val["dice_all"])
        parts.append(pd.DataFrame({"step": val["step"], "kind": "val Dice", "value": value}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["step", "kind", "value"])


def load_curves(frame: pd.DataFrame, points: int = 200) -> pd.DataFrame:
    """Training and validation curves of every run in ``frame`` (which has ``label``).

    Columns: run, label, labeled, step, kind ("loss" or "val Dice"), value. Training losses are a
    moving average over about 1/``points`` of the run, sampled at about ``points`` steps.
    """
    parts = []
    for info in frame.drop_duplicates("run").itertuples():
        path = Path(info.run_dir) / CURVES_FILE
        if path.exists():
            curves = _run_curves(path, points)
            parts.append(curves.assign(run=info.run, label=info.label, labeled=info.labeled))
    columns = ["run", "label", "labeled", "step", "kind", "value"]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


#: the range a curve's values can take: bands are clipped to it
CURVE_RANGE = {"loss": (0.0, math.inf), "val Dice": (0.0, 1.0)}


def learning_curves(
    curves: pd.DataFrame, colours: dict[str, Any] | None = None, order: list[str] | None = None
) -> Figure:
    """Loss (top) and validation Dice (bottom) against the step, one column per labeled fraction.

    Each method's line is the mean over its runs; a band of ± std (clipped to the value's range)
    appears where it has several runs, and the legend mentions the band only then. Validation
    points carry markers, so a run validated once still shows its point.
    """
    if curves.empty:
        raise PlotError("no curves.jsonl with training or validation rows in these runs")
    order = order or sorted(curves["label"].unique())
    colours = colours or palette(order)
    fractions = sorted(curves["labeled"].unique())
    kinds = [k for k in ("loss", "val Dice") if k in set(curves["kind"])]
    fig = new_figure(3.6 * len(fractions) + 2.6, 2.8 * len(kinds))
    axes = fig.subplots(len(kinds), len(fractions), squeeze=False, sharex="col")
    banded = False
    for i, kind in enumerate(kinds):
        for j, fraction in enumerate(fractions):
            ax = axes[i][j]
            part = curves[(curves["kind"] == kind) & (curves["labeled"] == fraction)]
            for label in [label for label in order if label in set(part["label"])]:
                stats = part[part["label"] == label].groupby("step")["value"].agg(["mean", "std", "count"])
                marker = "o" if kind == "val Dice" else None
                ax.plot(stats.index, stats["mean"], color=colours[label], linewidth=1.2, marker=marker, markersize=3.5,
                        label=label)  # fmt: skip
                if (stats["count"] > 1).any():
                    low, high = clipped_band(stats["mean"].to_numpy(), stats["std"].to_numpy(), *CURVE_RANGE[kind])
                    ax.fill_between(stats.index, low, high, color=colours[label], alpha=0.2, linewidth=0)
                    banded = True
            positive = not part.empty and (part["value"] > 0).all()
            if kind == "loss" and positive and part["value"].max() > 10 * part["value"].min():
                ax.set_yscale("log")
            if kind == "val Dice":
                ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{kind}, {fraction_text(fraction)} labeled", fontsize=10)
            ax.set_ylabel("training loss (moving avg.)" if kind == "loss" else "val Dice (lesion images)")
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
    handles = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        axes[0][-1].legend(
            [handles[label] for label in order if label in handles], [label for label in order if label in handles],
            title="mean over runs, band: ± std" if banded else None, loc="upper left", bbox_to_anchor=(1.02, 1.0),
            fontsize=8, frameon=False,
        )  # fmt: skip
    return fig


# --------------------------------------------------------------------------- qualitative grid


@dataclass
class Sample:
    """One test image on the model grid with its ground truth and each method's predicted mask."""

    id: str
    image: np.ndarray
    truth: np.ndarray
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    dice: dict[str, float] = field(default_factory=dict)


def choose_runs(frame: pd.DataFrame, fraction: float | None = None) -> tuple[float, dict[str, str]]:
    """(fraction, {label: run}) for the grid: one run per method on the same fold, draw and seed.

    The fraction defaults to the smallest one that has the most methods; the fold, draw and seed to
    the lowest combination that has the most methods at that fraction.
    """
    runs = frame.drop_duplicates("run")
    fractions = sorted(runs["labeled"].unique())
    if fraction is None:
        fraction = max(fractions, key=lambda f: (runs.loc[runs["labeled"] == f, "label"].nunique(), -f))
    elif not any(math.isclose(fraction, f) for f in fractions):
        raise PlotError(f"--labeled {fraction:g}: no runs at it; fractions here: {', '.join(map(str, fractions))}")
    else:
        fraction = next(f for f in fractions if math.isclose(fraction, f))
    at = runs[runs["labeled"] == fraction]
    combos = at.groupby(["fold", "draw", "seed"])["label"].nunique()
    best = max(combos.index, key=lambda c: (combos[c], tuple(-v for v in c)))
    chosen = at[(at["fold"] == best[0]) & (at["draw"] == best[1]) & (at["seed"] == best[2])]
    return fraction, {label: part["run"].iloc[0] for label, part in chosen.groupby("label", sort=False)}


def choose_images(frame: pd.DataFrame, runs: dict[str, str], n: int) -> list[str]:
    """``n`` test ids shared by the runs, hardest to easiest by mean Dice; one lesion-free image when there is one."""
    part = frame[frame["run"].isin(runs.values())]
    shared = part.groupby("id")["run"].nunique()
    shared = set(shared[shared == len(runs)].index)
    part = part[part["id"].isin(shared)]
    lesion = part[part["lesion"]].groupby("id")["dice"].mean().sort_values(kind="stable")
    empty = sorted(set(part.loc[~part["lesion"], "id"]))
    n_lesion = min(len(lesion), n - 1 if empty and n > 2 else n)
    picks = []
    if n_lesion:
        positions = np.linspace(0, len(lesion) - 1, n_lesion).round().astype(int)
        picks = [lesion.index[p] for p in dict.fromkeys(positions)]
    return picks + empty[: n - len(picks)]


def predict_samples(
    frame: pd.DataFrame,
    runs: dict[str, str],
    ids: list[str],
    *,
    checkpoint: str = "best",
    device: str = "cpu",
    datasets: dict[str, Any] | None = None,
) -> list[Sample]:
    """Predict ``ids`` with every run of ``runs`` ({label: run}) from its checkpoint (model grid, in the image box)."""
    import torch

    from harness.inference.network import load_run_network
    from harness.training.device import resolve_device

    torch_device = resolve_device(device)
    datasets = {} if datasets is None else datasets
    info = frame.drop_duplicates("run").set_index("run")
    for run_name in runs.values():
        path = Path(info.loc[run_name, "run_dir"]) / "checkpoints" / f"{checkpoint}.pt"
        if not path.exists():
            raise PlotError(f"{path} is missing: the qualitative grid needs each run's {checkpoint} checkpoint")
    samples: dict[str, Sample] = {}
    for label, run_name in runs.items():
        run_dir = Path(info.loc[run_name, "run_dir"])
        run = read_run(run_dir)
        cfg = run["config"]
        dataset = _dataset_for(cfg, datasets)
        recorded = (run.get("data") or {}).get("fingerprint")
        if recorded and dataset.fingerprint != recorded:
            raise PlotError(f"dataset {cfg['data']} changed since run {run_name} was trained (fingerprint differs)")
        index = dataset.index(ids)
        predict = load_run_network(run_dir, checkpoint, torch_device).predictor()
        with torch.no_grad():
            logits = predict(dataset.images[torch.as_tensor(index)].to(torch_device)).float().cpu()
        scores = frame[(frame["run"] == run_name) & frame["id"].isin(ids)].set_index("id")["dice"]
        for k, (image_id, i) in enumerate(zip(ids, index, strict=True)):
            top, left, h, w = dataset.boxes[i]
            box = (slice(top, top + h), slice(left, left + w))
            if image_id not in samples:
                samples[image_id] = Sample(
                    image_id, dataset.images[i, 0][box].cpu().numpy(), dataset.masks[i, 0][box].cpu().numpy()
                )
            samples[image_id].predictions[label] = (torch.sigmoid(logits[k, 0][box]) > 0.5).numpy()
            samples[image_id].dice[label] = float(scores.get(image_id, math.nan))
    return [samples[i] for i in ids]


def _overlay(ax: Any, image: np.ndarray, mask: np.ndarray | None, truth: np.ndarray | None, colour: Any) -> None:
    ax.imshow(image, cmap="gray", interpolation="nearest")
    if mask is not None and mask.any():
        rgba = np.zeros((*mask.shape, 4))
        rgba[mask] = (*colour[:3], 0.35)
        ax.imshow(rgba, interpolation="nearest")
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.0)
    if truth is not None and truth.any():
        ax.contour(truth.astype(float), levels=[0.5], colors=["#00e000"], linewidths=0.9, linestyles="dashed")
    ax.set_xticks([])
    ax.set_yticks([])


def qualitative_grid(samples: list[Sample], labels: list[str], title: str = "") -> Figure:
    """Rows: test images; columns: image, ground truth, each method's prediction (filled) over the truth (dashed)."""
    if not samples:
        raise PlotError("no test image shared by the runs for the qualitative grid")
    columns = ["image", "ground truth", *labels]
    fig = new_figure(1.9 * len(columns), 1.95 * len(samples) + 0.5)
    axes = fig.subplots(len(samples), len(columns), squeeze=False)
    red = (0.9, 0.1, 0.1)
    for r, sample in enumerate(samples):
        _overlay(axes[r][0], sample.image, None, None, red)
        axes[r][0].set_ylabel(_wrap(sample.id, 16), fontsize=8)
        _overlay(axes[r][1], sample.image, sample.truth, None, (0.0, 0.85, 0.0))
        for c, label in enumerate(labels, start=2):
            _overlay(axes[r][c], sample.image, sample.predictions.get(label), sample.truth, red)
            score = sample.dice.get(label, math.nan)
            if not math.isnan(score):
                box = {"facecolor": "black", "alpha": 0.5, "pad": 1, "lw": 0}
                axes[r][c].text(
                    0.03, 0.04, f"Dice {score:.2f}", transform=axes[r][c].transAxes, fontsize=7, color="white", bbox=box
                )
    for c, name in enumerate(columns):
        axes[0][c].set_title(_wrap(name, 18), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------- generator samples


def tile(images: np.ndarray, columns: int = 4, gap: int = 2) -> np.ndarray:
    """N x H x W uint8 images as one grid image (white gaps)."""
    n, h, w = images.shape
    rows = max(1, math.ceil(n / columns))
    grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap), 255, np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image
    return grid


def _existing(recorded: str | None, root: Path, folder: str) -> Path | None:
    """A path recorded in run.json, or the same name under ``root/folder`` (runs made from another cwd)."""
    if not recorded:
        return None
    path = Path(recorded)
    for candidate in (path, root / folder / path.name):
        if candidate.exists():
            return candidate
    return None


def _synthetic_images(directory: Path, n: int) -> np.ndarray | None:
    """The first ``n`` cached samples of a generator cache directory (harness.generation.pool layout)."""
    import torch

    files = sorted(directory.glob("samples-*.pt"))
    if not files:
        return None
    try:
        samples = torch.load(files[0], map_location="cpu", weights_only=True)
        return samples[:n, 0].numpy()
    except Exception as exc:  # noqa: BLE001 - truncated, garbage or not a tensor
        raise PlotError(
            f"generator samples file {files[0]} is damaged ({type(exc).__name__}); delete it: the next "
            "`bench run` of a run using this generator samples again"
        ) from None


def _dataset_for(cfg: dict[str, Any], cache: dict[str, Any]) -> Any:
    """The run's dataset as it was trained on (loaded once per data, size, resize and strata)."""
    from harness.runs.lifecycle import load_run_dataset
    from harness.runs.resolve import RunSpec

    key = json.dumps([cfg["data"], cfg["image_size"], cfg["resize"], cfg["include_strata"]])
    if key not in cache:
        spec = RunSpec(data=cfg["data"], resize=cfg["resize"], include_strata=cfg["include_strata"])
        cache[key] = load_run_dataset(spec, cfg["image_size"])
    return cache[key]


def _real_training_images(run: dict[str, Any], root: Path, n: int, cache: dict[str, Any]) -> np.ndarray:
    """``n`` of the images the run's generator was fitted on: its fold's training part, evenly spaced."""
    split_path = _existing((run.get("data") or {}).get("split_file"), root, "splits")
    if split_path is None:
        raise PlotError("the run's split file is missing")
    try:
        train = json.loads(split_path.read_text(encoding="utf-8"))["folds"][run["config"]["fold"]]["train"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise PlotError(f"{split_path} has no training ids for the run's fold ({exc})") from None
    picks = list(dict.fromkeys(np.linspace(0, len(train) - 1, min(n, len(train))).round().astype(int).tolist()))
    dataset = _dataset_for(run["config"], cache)
    return dataset.images[dataset.index([train[k] for k in picks]), 0].cpu().numpy()


def generator_figures(
    frame: pd.DataFrame, root: Path, n: int = 16, limit: int = 10, cache: dict[str, Any] | None = None
) -> list[tuple[str, Figure]]:
    """Per generator cache used by these runs: real training images of its fold beside its samples."""
    cache = {} if cache is None else cache
    with_generator = frame[frame["generator"] != "none"]
    if with_generator.empty or "generator_cache" not in frame:
        return []
    figures = []
    for info in with_generator.drop_duplicates("generator_cache").head(limit).itertuples():
        directory = _existing(info.generator_cache, Path(root), "generators")
        synthetic = _synthetic_images(directory, n) if directory is not None and directory.is_dir() else None
        if synthetic is None:
            continue
        run = read_run(Path(info.run_dir))
        try:
            real, why = _real_training_images(run, Path(root), n, cache), ""
        except (UserError, ImportError, OSError, KeyError, ValueError, RuntimeError) as exc:
            real, why = None, str(exc)
        panels = ([("real training images", real)] if real is not None else []) + [("generated", synthetic)]
        fig = new_figure(4.4 * len(panels), 4.9)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, images) in zip(axes, panels, strict=True):
            ax.imshow(tile(images), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{title} ({len(images)})", fontsize=10)
            ax.set_axis_off()
        caption = f"{info.generator} fitted on fold {info.fold}'s training images; cache {directory.name}"
        if real is None:
            caption += f"\nreal images not shown: {why}"
        fig.suptitle(caption, fontsize=9)
        figures.append((f"generator_{directory.name}", fig))
    return figures


# --------------------------------------------------------------------------- everything


def _settings(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(file-name suffix, part) per setting: figures never mix image sizes, datasets or run lengths."""
    key = frame[list(SETTING_KEYS)].apply(lambda r: "|".join(canonical(v) for v in r), axis=1)
    parts = [frame[key == k] for k in dict.fromkeys(key)]
    if len(parts) == 1:
        return [("", parts[0])]
    return [
        (f"_{p['dataset'].iloc[0] or 'data'}_{int(p['image_size'].iloc[0])}px_T{int(p['iterations'].iloc[0])}_{n}", p)
        for n, p in enumerate(parts, 1)
    ]


def plot_all(
    runs: Path | str,
    out: Path | str,
    *,
    checkpoint: str = "best",
    n_images: int = 4,
    fraction: float | None = None,
    device: str = "cpu",
    log: Log = print,
    label_defaults: Any = "registry",
) -> tuple[list[Path], dict[str, str]]:
    """Write every figure of the results under ``runs`` into ``out``; returns (files, {figure: why skipped})."""
    out = Path(out)
    frame = labelled(load(runs, checkpoint=checkpoint), label_defaults)
    written: list[Path] = []
    skipped: dict[str, str] = {}
    datasets: dict[str, Any] = {}  # loaded once for the grid and the generator figures

    def attempt(name: str, make: Callable[[], Figure]) -> None:
        try:
            fig = make()
        except PlotError as exc:
            skipped[name] = str(exc)
            return
        written.extend(save_figure(fig, out, name))

    for suffix, part in _settings(frame):
        order = row_order(part)
        colours = palette(order)
        attempt(f"dice_per_image{suffix}", lambda p=part, c=colours: dice_box(p, c))
        attempt(f"dice_vs_fraction{suffix}", lambda p=part, c=colours: dice_vs_fraction(p, c))
        curves = load_curves(part)
        attempt(f"learning_curves{suffix}", lambda c=curves, o=order, col=colours: learning_curves(c, col, o))
        if n_images > 0:
            grid = functools.partial(_qualitative, part, order, n_images, fraction, checkpoint, device, log, datasets)
            attempt(f"qualitative{suffix}", grid)
    if frame["iterations"].nunique() > 1:  # runs of several budgets: the budget curve spans the settings
        attempt("dice_vs_iterations", lambda: dice_vs_iterations(frame, palette(row_order(frame))))
    for name, fig in generator_figures(frame, Path(runs), cache=datasets):
        written.extend(save_figure(fig, out, name))
    return written, skipped


def _qualitative(
    frame: pd.DataFrame,
    order: list[str],
    n_images: int,
    fraction: float | None,
    checkpoint: str,
    device: str,
    log: Log,
    datasets: dict[str, Any],
) -> Figure:
    chosen_fraction, runs = choose_runs(frame, fraction)
    ids = choose_images(frame, runs, n_images)
    labels = [label for label in order if label in runs]
    log(f"qualitative grid: predicting {len(ids)} test images with {len(runs)} runs ({checkpoint} checkpoints)")
    try:
        samples = predict_samples(frame, runs, ids, checkpoint=checkpoint, device=device, datasets=datasets)
    except (UserError, ImportError, KeyError, RuntimeError, OSError, ValueError) as exc:
        # the other figures do not depend on it: say why the grid is missing instead of failing them
        raise PlotError(f"could not rebuild the runs' networks ({type(exc).__name__}: {exc})") from None
    first = frame[frame["run"] == next(iter(runs.values()))].iloc[0]
    title = (
        f"{fraction_text(chosen_fraction)} labeled, fold {first['fold']}, draw {first['draw']}, seed {first['seed']}; "
        f"{checkpoint} checkpoint; red: prediction, dashed green: ground truth; "
        f"model grid {int(first['image_size'])} px"
    )
    return qualitative_grid(samples, labels, title)
