"""``bench report --format markdown``: a results page that lives in a repository (README.md + figures/).

The page holds what a reader needs to trust a comparison and to redo it: the setup (dataset and
its fingerprint, split, budget, precision, device, threads), ``bench table``'s table with paired
gains, intervals and tests, ``bench plot``'s figures, one row per run with its test Dice and wall
time, the total time, and for every run the ``bench run`` command that trains it again (checked to
resolve to the recorded run id). Everything is read from the results directory; nothing is typed
by hand, so anyone can regenerate the page from their own results.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness import __version__
from harness.reporting.generator_reports import memorisation_reports, memorisation_rows, number
from harness.reporting.load import load
from harness.reporting.output import report_folder
from harness.reporting.plots import labelled, plot_all
from harness.reporting.tables import DEFAULT_METRICS, build_tables, fraction_text, render_markdown
from harness.runs.replay import replay
from harness.runs.store import read_run

Log = Callable[[str], None]
PAGE = "README.md"
MARKER = "<!-- segbench results page -->"
FIGURE_TITLES = {
    "dice_per_image": "Per-image test Dice (images with a lesion)",
    "dice_vs_fraction": "Test Dice against the labeled fraction",
    "dice_vs_iterations": "Test Dice against the training budget",
    "learning_curves": "Learning curves",
    "qualitative": "Qualitative test predictions",
    "generator": "Generator samples beside real training images",
    "nearest": "Generator samples and their nearest training images",
}


def _distinct(values: Sequence[Any]) -> str:
    seen = [str(v) for v in dict.fromkeys(v for v in values if v is not None and v == v)]
    return ", ".join(seen) if seen else "–"


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _records(frame: pd.DataFrame) -> list[tuple[pd.Series, dict[str, Any]]]:
    runs = frame.drop_duplicates("run").sort_values(["label", "labeled", "fold", "draw", "seed", "run"])
    return [(row, read_run(Path(row["run_dir"])) or {}) for _, row in runs.iterrows()]


def setup_rows(records: list[tuple[pd.Series, dict[str, Any]]]) -> list[list[str]]:
    """What the runs were: dataset, split, budget, precision, device, threads, code version."""

    def field(get: Callable[[pd.Series, dict[str, Any]], Any]) -> str:
        return _distinct([get(row, rec) for row, rec in records])

    def data(rec: dict[str, Any], key: str) -> Any:
        return (rec.get("data") or {}).get(key)

    def train(rec: dict[str, Any], key: str) -> Any:
        return ((rec.get("config") or {}).get("train") or {}).get(key)

    def commit(rec: dict[str, Any]) -> str | None:
        git = (rec.get("versions") or {}).get("git") or {}
        return (git.get("commit", "")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")) or None

    return [
        [
            "dataset",
            field(
                lambda r, c: (
                    f"{data(c, 'name')} ({data(c, 'n_images')} images, fingerprint {str(data(c, 'fingerprint'))[:12]})"
                )
            ),
        ],  # fmt: skip
        [
            "split",
            field(
                lambda r, c: (
                    f"{data(c, 'protocol')}, file {Path(str(data(c, 'split_file'))).name}, "
                    f"hash {str(data(c, 'split_hash'))[:12]}"
                )
            ),
        ],  # fmt: skip
        ["folds", field(lambda r, c: r["fold"])],
        ["labeled fractions", field(lambda r, c: fraction_text(float(r["labeled"])))],
        ["methods", field(lambda r, c: r["label"])],
        ["preset, image size", field(lambda r, c: f"{r['preset']}, {int(r['image_size'])}²")],
        ["iterations T", field(lambda r, c: train(c, "iterations"))],
        [
            "batch (labeled + unlabeled)",
            field(lambda r, c: f"{train(c, 'labeled_batch')} + {train(c, 'unlabeled_batch')}"),
        ],  # fmt: skip
        ["precision", field(lambda r, c: train(c, "precision"))],
        ["device", field(lambda r, c: f"{c.get('device', '?')} ({c.get('device_name') or 'not recorded'})")],
        ["threads per run", field(lambda r, c: c.get("threads"))],
        ["logical CPUs", field(lambda r, c: c.get("logical_cpus"))],
        ["segbench", field(lambda r, c: f"{(c.get('versions') or {}).get('segbench')}, commit {commit(c)}")],
        ["torch", field(lambda r, c: (c.get("versions") or {}).get("torch"))],
    ]


def run_rows(records: list[tuple[pd.Series, dict[str, Any]]], checkpoint: str) -> tuple[list[list[str]], float, float]:
    """One row per run, plus (sum of the runs' wall times, span from the first start to the last end)."""
    rows, total, starts, ends = [], 0.0, [], []
    for row, rec in records:
        test = (rec.get("test") or {}).get(checkpoint) or {}
        train = rec.get("train") or {}
        wall = rec["ended"] - rec["started"] if rec.get("ended") and rec.get("started") else None
        if wall is not None:
            total += wall
            starts.append(rec["started"])
            ends.append(rec["ended"])
        rows.append([
            str(row["label"]), fraction_text(float(row["labeled"])), str(row["fold"]), str(row["draw"]),
            str(row["seed"]), f"{test.get('dice', float('nan')):.4f}", f"{test.get('hd95', float('nan')):.1f}",
            f"{train.get('best_step', '–')} / {train.get('steps', '–')}", _duration(train.get("seconds")),
            _duration(wall), f"{train.get('images_per_second', float('nan')):.1f}", str(rec.get("threads", "–")),
            f"`{rec.get('run_id', '')}`",
        ])  # fmt: skip
    span = max(ends) - min(starts) if starts else float("nan")
    return rows, total, span


def _figures(root: Path, out: Path, checkpoint: str, images: int, device: str, log: Log) -> tuple[list[str], dict]:
    written, skipped = plot_all(root, out / "figures", checkpoint=checkpoint, n_images=images, device=device, log=log)
    lines = []
    for path in written:
        if path.suffix != ".png":
            continue
        prefix = next((p for p in FIGURE_TITLES if path.stem.startswith(p)), path.stem)
        title = FIGURE_TITLES.get(prefix, path.stem)
        suffix = path.stem[len(prefix) :].strip("_").replace("_", " ")
        lines.append(f"**{title}**{f' ({suffix})' if suffix else ''}\n\n![{title}](figures/{path.name})\n")
    return lines, skipped


def _fidelity_rows(report: dict[str, Any]) -> list[list[str]]:
    fidelity = report.get("fidelity") or {}
    samples, noise = fidelity.get("samples") or {}, fidelity.get("noise") or {}
    definitions = fidelity.get("definitions") or {}
    return [
        [
            f"{key} ({definitions[key]})" if definitions.get(key) else key,
            number(samples.get(key)),
            number(noise.get(key)),
        ]
        for key in samples
    ]


def generator_section(records: list[tuple[pd.Series, dict[str, Any]]], root: Path, figures: Path) -> list[str]:
    """Per generator the runs used: its memorisation and fidelity report and nearest pairs, or how to make them."""
    used: dict[str, tuple[str, Any]] = {}
    for _, rec in records:
        info, config = rec.get("generator") or {}, rec.get("config") or {}
        if info.get("cache_key"):
            used.setdefault(info["cache_key"], (config.get("generator"), config.get("fold")))
    if not used:
        return []
    reports = memorisation_reports(root)
    parts = ["## Generator"]
    for key, (name, fold) in sorted(used.items(), key=lambda item: str(item[1][1])):
        found = reports.get(key)
        if found is None:
            parts.append(
                f"{name}, fold {fold} (cache `{key[:12]}`): no memorisation report. `bench generate --data ... "
                f"--fold {fold} --cache-dir {root / 'generators'} --out {root / 'generate'}/fold{fold}` with the "
                "runs' generator settings scores the cached fit without fitting again."
            )
            continue
        directory, report = found
        fit = report.get("fit") or {}
        head = (
            f"**{name}, fold {fold}** (cache `{key[:12]}`, {report.get('n_samples')} samples scored against "
            f"{report.get('n_train')} training and {report.get('n_heldout')} held-out images; fitted in "
            f"{_duration(fit.get('fit_seconds'))}; report `{directory.relative_to(root)}/report.json`)"
        )
        parts += [head, _markdown_table(["memorisation", ""], [list(row) for row in memorisation_rows(report)])]
        fidelity = _fidelity_rows(report)
        if fidelity:
            parts.append(
                _markdown_table(["fidelity against the training images", "samples", "uniform noise"], fidelity)
            )
        nearest = directory / "nearest.png"
        if nearest.is_file():
            figures.mkdir(parents=True, exist_ok=True)
            target = figures / f"nearest_fold{fold}_{key[:12]}.png"
            shutil.copy2(nearest, target)
            parts.append(f"![{FIGURE_TITLES['nearest']}](figures/{target.name})\n")
    return parts


def build_page(
    runs: Path | str,
    out: Path | str,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    checkpoint: str = "best",
    compare: str | None = None,
    significance: bool = True,
    images: int = 4,
    figures: bool = True,
    device: str = "cpu",
    title: str | None = None,
    commands: Sequence[str] = (),
    log: Log = print,
) -> Path:
    """Write the Markdown results page of the runs under ``runs`` to ``out/README.md`` (figures in ``out/figures``).

    ``commands`` are the command lines that produced the results (shown first under "Reproduce");
    every run's own ``bench run`` line follows, rebuilt from its run.json and checked against its run id.
    """
    root, out = Path(runs), Path(out)
    frame_all = load(root)
    tables = build_tables(
        frame_all, metrics=list(metrics), checkpoint=checkpoint, compare=compare, significance=significance
    )
    frame = labelled(frame_all[frame_all["checkpoint"] == checkpoint])
    records = _records(frame)
    with report_folder(out, PAGE, MARKER, "results page", head=500) as tmp:
        figure_lines, skipped = (
            _figures(root, tmp, checkpoint, images if figures else 0, device, log) if figures else ([], {})
        )
        rows, total, span = run_rows(records, checkpoint)
        again = f"{str(root).rstrip('/')}-again"  # a fresh store: the recorded runs would be skipped as done
        replays = [(row, replay(rec, again)) for row, rec in records]
        dataset = _distinct([(rec.get("data") or {}).get("name") for _, rec in records])
        created = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        parts = [
            MARKER,
            f"# {title or f'segbench results: {dataset}'}",
            f"{len(records)} runs from `{root}`, page written by segbench {__version__} on {created} with\n\n"
            f"    bench report {root} --format markdown --out {out}",
            "## Setup",
            _markdown_table(["", ""], setup_rows(records)),
            f"## Results ({checkpoint} checkpoint on validation, scored on each fold's test part)",
            render_markdown(tables).strip(),
        ]
        if figure_lines:
            parts += ["## Figures", *figure_lines]
        if skipped:
            parts.append("Figures left out: " + "; ".join(f"{k} ({v})" for k, v in sorted(skipped.items())) + ".")
        parts += generator_section(records, Path(root), tmp / "figures")
        parts += [
            "## Runs",
            _markdown_table(
                [
                    "method",
                    "labeled",
                    "fold",
                    "draw",
                    "seed",
                    "test Dice",
                    "HD95",
                    "best step / T",
                    "training",
                    "wall",
                    "images/s",
                    "threads",
                    "run id",
                ],  # fmt: skip
                rows,
            ),
            f"Wall time: {_duration(total)} summed over runs; {_duration(span)} from the first start to the last end.",
            "## Reproduce",
        ]
        if commands:
            parts.append("The results were produced with:\n\n" + "\n".join(f"    {c}" for c in commands))
        exact = sum(r.exact for _, r in replays)
        parts.append(
            f"Each run again, alone, from the directory the runs were made in, into the fresh store `{again}` at the "
            f"thread count it used; `bench table {again}` then shows its test Dice ({exact} of {len(replays)} "
            "commands resolve to the recorded run id, the others are marked):\n\n"
            + "\n".join(
                f"    {r.text}" + ("" if r.exact else "   # does not resolve to the recorded run id")
                for _, r in replays
            )  # fmt: skip
        )
        (tmp / PAGE).write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return out / PAGE
