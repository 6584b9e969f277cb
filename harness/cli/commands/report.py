"""``bench table``, ``bench plot`` and ``bench report``: tables, figures and an HTML site of a results directory."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli import options
from harness.errors import UserError

SUFFIX_FORMATS = {".md": "markdown", ".markdown": "markdown", ".tex": "latex", ".csv": "csv"}


def table(
    runs: Path = typer.Argument(..., help="Results directory (the --out of bench run) or one run directory."),
    metrics: str = typer.Option(
        "dice,hd95,iou,empty_correct", "--metrics", help="Comma list: dice, hd95, iou, assd, empty_correct, ..."
    ),
    checkpoint: str = options.checkpoint_option(),
    compare: str = typer.Option(
        None,
        "--compare",
        help="Reference of the gains: supervised (default when present), another method (mean-teacher), a row "
        "label, or none.",
    ),
    significance: bool = typer.Option(
        False,
        "--significance",
        help="Mark cells whose tests against the reference are significant (Holm): † images, * runs.",
    ),
    fmt: str = typer.Option(
        None, "--format", help="rich (terminal), markdown, latex or csv; default rich, or from --out's suffix."
    ),
    by: str = typer.Option(None, "--by", help="'group': one table per image group (benign / malignant / normal)."),
    out: Path = typer.Option(None, "--out", help="Write the table to this file instead of the terminal."),
) -> None:
    """Mean ± std over runs per method and labeled fraction, with paired gains and significance marks."""
    from rich.console import Console

    from harness.reporting.load import load, unfinished_runs
    from harness.reporting.tables import FORMATS, build_tables, data_versions, render, render_rich
    from harness.runs.store import atomic_write_text

    fmt = fmt or (SUFFIX_FORMATS.get(out.suffix.lower(), "rich") if out else "rich")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    frame = load(runs, checkpoint=checkpoint)
    for name, found in data_versions(frame.drop_duplicates("run")).items():
        typer.secho(
            f"warning: dataset {name} changed between runs ({len(found)} fingerprints: {', '.join(found)}); "
            "their results are shown in separate tables",
            fg="yellow",
            err=True,
        )
    tables = build_tables(
        frame,
        metrics=[m.strip() for m in metrics.split(",") if m.strip()],
        checkpoint=checkpoint,
        compare=compare,
        significance=significance,
        by=by,
        missing=unfinished_runs(runs),
    )
    if out is not None:
        atomic_write_text(out, render(tables, fmt))
        typer.echo(f"wrote {out}")
    elif fmt == "rich":
        console = Console()
        for rich_table in render_rich(tables, width=console.width):
            console.print(rich_table)
    else:
        typer.echo(render(tables, fmt), nl=False)


def plot(
    runs: Path = typer.Argument(..., help="Results directory (the --out of bench run)."),
    out: Path = typer.Option(Path("figures"), "--out", help="Folder for the PNG and PDF figures."),
    checkpoint: str = options.checkpoint_option(),
    images: int = typer.Option(4, "--images", help="Test images in the qualitative grid (0: no grid)."),
    labeled: str = typer.Option(None, "--labeled", help="Labeled fraction of the qualitative grid (0.25 or 1/4)."),
    fraction_alias: str = options.alias("--fraction"),
    device: str = options.device_option(),
) -> None:
    """Box/strip plots, Dice vs labeled fraction, learning curves, a qualitative grid, generator samples."""
    from harness.config.params import coerce_value
    from harness.reporting.plots import plot_all

    labeled, flag = options.either(labeled, "--labeled", fraction_alias, "--fraction")
    fraction = None if labeled is None else coerce_value(labeled, float, flag)
    written, skipped = plot_all(
        runs, out, checkpoint=checkpoint, n_images=images, fraction=fraction, device=device, log=typer.echo
    )
    for path in written:
        typer.echo(f"wrote {path}")
    for what, why in skipped.items():
        typer.secho(f"skipped {what}: {why}", fg="yellow", err=True)


def report(
    runs: Path = typer.Argument(..., help="Results directory (the --out of bench run)."),
    out: Path = typer.Option(Path("report"), "--out", help="Folder for the HTML site (index.html, runs/, figures/)."),
    metrics: str = typer.Option("dice,hd95,iou,empty_correct", "--metrics", help="Table metrics, as for bench table."),
    checkpoint: str = options.checkpoint_option(),
    compare: str = typer.Option(None, "--compare", help="Reference of the gains, as for bench table."),
    significance: bool = typer.Option(
        None,
        "--significance/--no-significance",
        help="Significance marks against the reference, as bench table --significance (default: when there is one).",
    ),
    images: int = typer.Option(4, "--images", help="Test images per qualitative grid (0: none)."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw the figures (off: tables and numbers)."),
    device: str = options.device_option(),
    fmt: str = typer.Option(
        "html", "--format", help="html (a static site) or markdown (README.md + figures/, a results page for a repo)."
    ),
    title: str = typer.Option(None, "--title", help="markdown: the page's title."),
    command: list[str] = typer.Option(
        None, "--command", help="markdown: a command line that produced the results, shown under Reproduce (repeat)."
    ),
) -> None:
    """A report to share: a static HTML site (tables, figures, a page per run) or a Markdown results page."""
    metric_list = [m.strip() for m in metrics.split(",") if m.strip()]
    if fmt == "markdown":
        from harness.reporting.page import build_page

        page = build_page(
            runs, out, metrics=metric_list, checkpoint=checkpoint, compare=compare, significance=significance,
            images=images, figures=figures, device=device, title=title, commands=command or (), log=typer.echo,
        )  # fmt: skip
        typer.echo(f"wrote {page}")
        return
    if fmt != "html":
        raise UserError(f"--format {fmt!r}: use html or markdown")
    from harness.reporting.site import build_site, site_size

    index = build_site(
        runs, out, metrics=metric_list, checkpoint=checkpoint,
        compare=compare, significance=significance, images=images, figures=figures, device=device,
        log=typer.echo,
    )  # fmt: skip
    files, size = site_size(out)
    typer.echo(f"wrote {index} ({files} files, {size / 2**20:.1f} MiB); open it in a browser")


def register(app: typer.Typer) -> None:
    app.command("table")(table)
    app.command("plot")(plot)
    app.command("report")(report)
