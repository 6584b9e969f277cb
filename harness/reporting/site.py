"""``bench report``: a static HTML site of a results directory, the page a lab shares with a reviewer.

``index.html`` holds the comparison tables (:func:`harness.reporting.tables.build_tables`, the numbers
of ``bench table``), the figures of ``bench plot``, the list of runs and a provenance footer; ``runs/``
holds one page per run: configuration, learning curves, per-image test metrics (sortable), qualitative
overlays, and its generator's samples and memorisation report when there are any. Pages are Jinja2
templates (``harness/reporting/templates``); CSS and JavaScript are inlined and images copied, so the
folder opens from disk with no server and no network. The site is built in a temporary folder and
moved into place, so a failed build leaves no half-written report.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness import __version__
from harness.errors import UserError
from harness.reporting.generator_reports import memorisation_reports, memorisation_rows, number
from harness.reporting.load import load, unfinished_runs
from harness.reporting.output import report_folder
from harness.reporting.plots import (
    choose_images,
    generator_figures,
    labelled,
    plot_all,
    predict_samples,
    qualitative_grid,
)
from harness.reporting.tables import (
    DEFAULT_METRICS,
    METRIC_TITLES,
    ReportError,
    ResultTable,
    build_tables,
    fraction_text,
    table_grid,
)
from harness.runs.run_figures import learning_curve_figure, read_curves
from harness.runs.store import read_run

Log = Callable[[str], None]
MARKER = "segbench-report"
#: per-image columns shown on a run page, in order (those present in metrics.csv)
IMAGE_COLUMNS = ("id", "stratum", "lesion", "pred_empty", "dice", "iou", "hd95", "assd", "precision", "recall")
FIGURE_CAPTIONS = {
    "dice_per_image": "Per-image test Dice (images with a lesion), one box per method and labeled fraction.",
    "dice_vs_fraction": "Mean test Dice against the labeled fraction (mean ± std over runs; dots: runs).",
    "learning_curves": "Training loss (moving average) and validation Dice against the iteration.",
    "qualitative": "Test images with each method's prediction (red) over the ground truth (dashed green).",
    "generator": "Real training images of the fold beside the generator's samples.",
}


@dataclass
class Image:
    """An image copied into the site: its path relative to the page, caption and optional PDF."""

    src: str
    caption: str
    pdf: str | None = None


@dataclass
class RunPage:
    """What one run's page shows."""

    name: str
    file: str
    label: str
    facts: list[tuple[str, str]]
    test: list[tuple[str, str]]
    config_json: str
    columns: list[str]
    rows: list[list[tuple[str, str]]]
    images: list[Image] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memorisation: list[tuple[str, str]] = field(default_factory=list)
    provenance: list[tuple[str, str]] = field(default_factory=list)


# --------------------------------------------------------------------------- small helpers


def _save_png(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)


def _figure_caption(stem: str) -> str:
    for prefix, caption in FIGURE_CAPTIONS.items():
        if stem.startswith(prefix):
            suffix = stem[len(prefix) :].strip("_")
            return caption + (f" Setting {suffix.replace('_', ' ')}." if suffix and prefix != "generator" else "")
    return stem.replace("_", " ")


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("harness.reporting", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fraction"] = fraction_text
    return env


# --------------------------------------------------------------------------- tables


def html_tables(tables: Sequence[ResultTable]) -> list[dict[str, Any]]:
    """The tables of ``bench table`` as template data: header groups, rows of cells, notes."""
    out = []
    for table in tables:
        header, body = table_grid(table)
        rows = []
        for method, (label, cells) in zip(table.rows, body, strict=True):
            row = []
            for cell in cells:
                value = table.cells.get((method, cell.fraction, cell.metric or "")) if cell.kind == "metric" else None
                row.append(
                    {
                        "text": cell.text,
                        "bold": cell.bold,
                        "kind": cell.kind,
                        "metric": cell.metric or "",
                        "fraction": f"{cell.fraction:g}",
                        "mean": repr(value.mean) if value is not None else "",
                        "std": repr(value.std) if value is not None else "",
                    }
                )
            rows.append({"label": label, "method": method, "cells": row})
        out.append({"title": table.title, "group": table.group, "header": header, "rows": rows, "notes": table.notes})
    return out


# --------------------------------------------------------------------------- run pages


def _provenance(record: dict[str, Any]) -> list[tuple[str, str]]:
    versions = record.get("versions") or {}
    git = versions.get("git") or {}
    data = record.get("data") or {}
    commit = git.get("commit") or "unknown"
    if git.get("dirty"):
        commit += " (uncommitted changes)"
    return [
        ("segbench", str(versions.get("segbench", "unknown"))),
        ("git commit", commit),
        ("dataset", f"{data.get('name', '?')}, fingerprint {data.get('fingerprint', 'unknown')}"),
        ("split hash", str(data.get("split_hash", "unknown"))),
        ("torch / python", f"{versions.get('torch', '?')} / {versions.get('python', '?')}"),
        ("device", f"{record.get('device', '?')} {record.get('device_name') or ''}".strip()),
    ]


class _RunPages:
    """Builds every run page into ``site/runs``; figures that need a network or data degrade to a note."""

    def __init__(
        self, frame: pd.DataFrame, root: Path, site: Path, checkpoint: str, images: int, device: str, log: Log,
        figures: bool = True,
    ) -> None:  # fmt: skip
        self.frame, self.root, self.site, self.figures = frame, root, site, figures
        self.checkpoint, self.images, self.device, self.log = checkpoint, images, device, log
        self.datasets: dict[str, Any] = {}
        self.reports = memorisation_reports(root)

    def page(self, name: str) -> RunPage:
        rows = self.frame[self.frame["run"] == name]
        first = rows.iloc[0]
        run_dir = Path(first["run_dir"])
        record = read_run(run_dir) or {}
        folder = self.site / "runs" / name
        train = record.get("train") or {}
        speed = f"{number(train.get('seconds'), 1)} s, {number(train.get('images_per_second'), 1)} images/s"
        facts = [
            ("method", str(first["label"])),
            ("labeled fraction", fraction_text(float(first["labeled"]))),
            ("fold / label draw / seed", f"{first['fold']} / {first['draw']} / {first['seed']}"),
            ("preset, image size", f"{first['preset']}, {int(first['image_size'])} px"),
            ("iterations", str(int(first["iterations"]))),
            ("best validation step", number(train.get("best_step"))),
            ("training time", speed),
            ("run id", str(record.get("run_id", ""))),
        ]  # fmt: skip
        summary = (record.get("test") or {}).get(self.checkpoint) or {}
        test = [(METRIC_TITLES.get(k, k), number(summary.get(k), 1 if k in ("hd95", "assd") else 3))
                for k in ("dice", "iou", "hd95", "assd", "dice_all", "empty_correct") if k in summary]  # fmt: skip
        columns = [c for c in IMAGE_COLUMNS if c in rows.columns]
        table = [
            [(number(r[c], 1 if c in ("hd95", "assd") else 3), str(r[c])) for c in columns]
            for r in rows[columns].to_dict("records")
        ]
        page = RunPage(
            name=name,
            file=f"runs/{name}.html",
            label=str(first["label"]),
            facts=facts,
            test=test,
            config_json=json.dumps(record.get("config", {}), indent=2, sort_keys=True, default=str),
            columns=columns,
            rows=table,
            provenance=_provenance(record),
        )
        if not self.figures:
            return page
        curves = learning_curve_figure(read_curves(run_dir), name)
        if curves is not None:
            _save_png(curves, folder / "learning_curves.png")
            page.images.append(Image(f"{name}/learning_curves.png", "Training loss and validation Dice."))
        else:
            page.notes.append("No learning curves: curves.jsonl is missing or empty.")
        self._overlays(page, rows, folder)
        self._generator(page, rows, record, folder)
        return page

    def _overlays(self, page: RunPage, rows: pd.DataFrame, folder: Path) -> None:
        if self.images <= 0:
            return
        label = page.label
        try:
            ids = choose_images(rows, {label: page.name}, self.images)
            samples = predict_samples(
                rows, {label: page.name}, ids, checkpoint=self.checkpoint, device=self.device, datasets=self.datasets
            )
            fig = qualitative_grid(samples, [label], f"{self.checkpoint} checkpoint; hardest to easiest by Dice")
        except (UserError, ImportError, KeyError, RuntimeError, OSError, ValueError) as exc:
            page.notes.append(f"No qualitative overlays: {exc}")
            return
        _save_png(fig, folder / "overlays.png")
        page.images.append(
            Image(f"{page.name}/overlays.png", "Test images: prediction (red) over the ground truth (dashed green).")
        )

    def _generator(self, page: RunPage, rows: pd.DataFrame, record: dict[str, Any], folder: Path) -> None:
        if rows["generator"].iloc[0] in ("none", "", None):
            return
        try:
            figures = generator_figures(rows, self.root, cache=self.datasets, limit=1)
        except (UserError, ImportError, KeyError, RuntimeError, OSError, ValueError) as exc:
            figures = []
            page.notes.append(f"No generator samples: {exc}")
        for fig_name, fig in figures:
            _save_png(fig, folder / f"{fig_name}.png")
            page.images.append(Image(f"{page.name}/{fig_name}.png", _figure_caption("generator")))
        key = (record.get("generator") or {}).get("cache_key")
        found = self.reports.get(key) if key else None
        if found is None:
            page.notes.append(
                "No memorisation report for this generator: run `bench generate` with --cache-dir "
                f"{self.root / 'generators'} and --out inside the results directory to add one."
            )
            return
        directory, report = found
        page.memorisation = memorisation_rows(report)
        nearest = directory / "nearest.png"
        if nearest.exists():
            shutil.copy2(nearest, folder / "nearest.png")
            caption = "Most similar samples and their nearest training images."
            page.images.append(Image(f"{page.name}/nearest.png", caption))


# --------------------------------------------------------------------------- the site


def _site_provenance(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    def distinct(values: list[str]) -> str:
        return ", ".join(dict.fromkeys(v for v in values if v)) or "unknown"

    pairs = [_provenance(r) for r in records]
    keys = [k for k, _ in pairs[0]] if pairs else []
    return [(k, distinct([dict(p)[k] for p in pairs])) for k in keys if k not in ("device", "torch / python")]


def build_site(
    runs: Path | str,
    out: Path | str,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    checkpoint: str = "best",
    compare: str | None = None,
    significance: bool | None = None,
    images: int = 4,
    figures: bool = True,
    device: str = "cpu",
    log: Log = print,
) -> Path:
    """Write the report of the results under ``runs`` into ``out``; returns ``out/index.html``.

    ``metrics``, ``checkpoint``, ``compare`` and ``significance`` are ``bench table``'s options and
    give the same tables (``significance=None``: tested wherever a table has a reference row);
    ``images`` is the number of test images per qualitative grid (0: none); ``figures=False`` leaves
    every figure out (a quick tables-and-numbers report).
    """
    root, out = Path(runs), Path(out)
    frame_all = load(root, checkpoint=checkpoint)
    options = {"metrics": list(metrics), "checkpoint": checkpoint, "compare": compare, "missing": unfinished_runs(root)}
    try:
        tables = build_tables(frame_all, significance=significance is not False, **options)
    except ReportError:
        if significance is not None:
            raise
        tables = build_tables(frame_all, significance=False, **options)  # no reference row: no tests to show
    with report_folder(out, "index.html", MARKER, "report") as tmp:
        figures_dir = tmp / "figures"
        written, skipped = (
            plot_all(root, figures_dir, checkpoint=checkpoint, n_images=images, device=device, log=log)
            if figures
            else ([], {})
        )
        images = images if figures else 0
        shown = [
            Image(f"figures/{p.name}", _figure_caption(p.stem), f"figures/{p.stem}.pdf")
            for p in written
            if p.suffix == ".png"
        ]
        frame = labelled(frame_all[frame_all["checkpoint"] == checkpoint])
        order = {label: i for i, label in enumerate(row for table in tables for row in table.rows)}
        run_info = frame.drop_duplicates("run").assign(_order=lambda d: d["label"].map(order).fillna(len(order)))
        run_info = run_info.sort_values(["_order", "labeled", "fold", "draw", "seed", "run"])
        builder = _RunPages(frame, root, tmp, checkpoint, images, device, log, figures)
        pages = []
        for name in run_info["run"]:
            log(f"report: run page {name}")
            pages.append(builder.page(name))
        records = [read_run(Path(d)) or {} for d in run_info["run_dir"]]
        env = _environment()
        created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        common = {
            "marker": MARKER,
            "version": __version__,
            "created": created,
            "provenance": _site_provenance(records),
            "results": str(root.resolve()),
        }
        runs_table = [
            {
                "page": page,
                "labeled": float(info.labeled),
                "fold": info.fold,
                "draw": info.draw,
                "seed": info.seed,
                "dice": number(((record.get("test") or {}).get(checkpoint) or {}).get("dice")),
                "hd95": number(((record.get("test") or {}).get(checkpoint) or {}).get("hd95"), 1),
            }
            for page, info, record in zip(pages, run_info.itertuples(), records, strict=True)
        ]
        index = env.get_template("index.html").render(
            **common,
            root="",
            tables=html_tables(tables),
            checkpoint=checkpoint,
            figures=shown,
            skipped=sorted(skipped.items()),
            runs=runs_table,
            n_runs=len(pages),
        )
        (tmp / "index.html").write_text(index, encoding="utf-8")
        (tmp / "runs").mkdir(exist_ok=True)
        for page in pages:
            html = env.get_template("run.html").render(**common, root="../", run=page, checkpoint=checkpoint)
            (tmp / page.file).write_text(html, encoding="utf-8")
    return out / "index.html"


def site_size(out: Path) -> tuple[int, int]:
    """(files, bytes) of a written report."""
    files = [p for p in Path(out).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)
