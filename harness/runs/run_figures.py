"""The figures of one finished run that are sent to its trackers: learning curves and test Dice per image.

Drawn on :class:`matplotlib.figure.Figure` objects with an Agg canvas (never pyplot), from the files
the run wrote (curves.jsonl) and its per-image test rows. The comparison figures of a results
directory are :mod:`harness.reporting.plots`'.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from harness.runs.store import CURVES_FILE


def read_curves(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's curves.jsonl (training windows and ``event: val`` rows); [] when absent."""
    path = Path(run_dir) / CURVES_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def learning_curve_figure(rows: list[dict[str, Any]], title: str) -> Any | None:
    """Training loss and validation Dice against the step (None when the run logged nothing)."""
    train = [r for r in rows if r.get("event") is None and "loss" in r]
    val = [r for r in rows if r.get("event") == "val"]
    if not train and not val:
        return None
    fig = _figure(7.0, 2.8)
    ax_loss, ax_val = fig.subplots(1, 2)
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1.0, color="#1f77b4")
    ax_loss.set(xlabel="iteration", ylabel="training loss", title="loss")
    key = "dice_lesion" if any(_finite(r.get("dice_lesion")) for r in val) else "dice_all"
    points = [(r["step"], r[key]) for r in val if _finite(r.get(key))]
    if points:
        ax_val.plot(*zip(*points, strict=True), marker="o", ms=3, lw=1.0, color="#d62728")
    ax_val.set(xlabel="iteration", ylabel=f"val {key.replace('_', ' ')}", title="validation Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return fig


def per_image_dice_figure(rows: list[dict[str, Any]], title: str) -> Any | None:
    """Histogram of per-image test Dice over images with a lesion, one series per checkpoint."""
    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in rows if r.get("lesion")))
    if not checkpoints:
        return None
    fig = _figure(4.2, 2.8)
    ax = fig.subplots()
    for checkpoint in checkpoints:
        values = [r["dice"] for r in rows if r.get("lesion") and r["checkpoint"] == checkpoint]
        ax.hist(values, bins=20, range=(0, 1), alpha=0.6, label=f"{checkpoint} (n={len(values)})")
    ax.set(xlabel="Dice (test images with a lesion)", ylabel="images", title=title)
    ax.legend(fontsize=8, frameon=False)
    return fig


def run_figures(run_dir: Path, test_rows: list[dict[str, Any]], name: str) -> list[tuple[str, Any]]:
    """``[(figure name, Figure)]`` of one run for its trackers."""
    figures = [
        ("learning_curves", learning_curve_figure(read_curves(run_dir), name)),
        ("test_dice", per_image_dice_figure(test_rows, name)),
    ]
    return [(n, f) for n, f in figures if f is not None]
