"""``bench predict`` and ``bench export``: use a trained run on new images, or export its network."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli import options


def predict(
    run_dir: Path = typer.Argument(..., help="One run's directory (a folder under the --out of bench run)."),
    images: list[Path] = typer.Argument(..., help="Image files or folders (a dataset folder means its images/)."),
    out: Path = typer.Option(..., "--out", help="Folder for masks/, overlays/, probabilities/, metrics.csv."),
    checkpoint: str = options.checkpoint_option(),
    threshold: float = typer.Option(0.5, "--threshold", help="Foreground where sigmoid(logit) > this."),
    tta: bool = typer.Option(False, "--tta", help="Average logits over flips and 90-degree rotations (8 views)."),
    probabilities: str = typer.Option(
        None, "--probabilities", help="Also write probability maps: png (16-bit) or npy (float32)."
    ),
    overlays: bool = typer.Option(True, "--overlays/--no-overlays", help="Write overlay PNGs."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per forward pass."),
    device: str = options.device_option(),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Predict images at their own resolution; with masks/0/ next to them, also score them like evaluation."""
    from rich.console import Console

    from harness.inference.predict import predict_images

    console = Console()
    predict_images(
        run_dir,
        images,
        out,
        checkpoint=checkpoint,
        threshold=threshold,
        tta=tta,
        probabilities=probabilities,
        overlays=overlays,
        batch_size=batch_size,
        device=device,
        log=lambda line: console.print(line, markup=False, highlight=False),
        show_progress=not quiet,
    )


def export(
    run_dir: Path = typer.Argument(..., help="One run's directory (a folder under the --out of bench run)."),
    fmt: str = typer.Option(..., "--format", help="onnx or torchscript."),
    out: Path = typer.Option(..., "--out", help="Model file; <file>.json records input size and normalisation."),
    checkpoint: str = options.checkpoint_option(),
) -> None:
    """Export the run's inference network (ONNX or TorchScript) with a JSON of its input size and normalisation."""
    from harness.inference.export import export_run

    result = export_run(run_dir, fmt, out, checkpoint=checkpoint)
    check = result.info["check"]
    verdict = (
        f"matches PyTorch within {check['tolerance']:g} (max |diff| {check['max_abs_diff']:.2g}, {check['runtime']})"
        if check.get("checked")
        else f"not checked: {check.get('why')}"
    )
    typer.echo(f"wrote {result.path} ({fmt}); {verdict}")
    typer.echo(f"wrote {result.sidecar} (input size, channels, resize and normalisation)")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
    app.command("export")(export)
