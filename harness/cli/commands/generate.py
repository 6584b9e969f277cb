"""``bench generate``: fit (or reuse) a fold's generator, write samples, a grid and a memorisation report."""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from harness import threads as threads_mod
from harness.api import params_dict, resolve_params
from harness.cli import options
from harness.config.params import ConfigError, parse_overrides
from harness.config.presets import get_preset, resolve_preset
from harness.data.datasets import DataError, atomic_write_bytes
from harness.errors import UserError
from harness.generation.memorisation import fid, fidelity_report, memorisation
from harness.generation.pool import default_pool_size
from harness.plugins import get_registry
from harness.reporting.nearest import write_nearest_pairs
from harness.runs.lifecycle import generator_pool, load_fold
from harness.runs.resolve import RunSpec
from harness.runs.store import atomic_write_json
from harness.training.device import resolve_device

GRID_COLUMNS = 8
GRID_ROWS = 4


# --------------------------------------------------------------------------- images


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a uint8 H x W (grey) or H x W x 3 array as PNG, atomically."""
    data = _png_bytes(array)
    atomic_write_bytes(path, lambda handle: handle.write(data))


def tile(images: torch.Tensor, columns: int, pad: int = 2) -> np.ndarray:
    """A grey mosaic of N x 1 x S x S uint8 images, ``columns`` wide, white gaps of ``pad`` pixels."""
    n, size = images.shape[0], images.shape[-1]
    rows = max(1, -(-n // columns))
    cell = size + pad
    out = np.full((rows * cell + pad, columns * cell + pad), 255, np.uint8)
    for k, image in enumerate(images[:, 0].numpy()):
        r, c = divmod(k, columns)
        out[pad + r * cell : pad + r * cell + size, pad + c * cell : pad + c * cell + size] = image
    return out


def _titled(panel: np.ndarray, title: str, scale: int) -> Image.Image:
    image = Image.fromarray(panel).resize((panel.shape[1] * scale, panel.shape[0] * scale), Image.NEAREST)
    canvas = Image.new("L", (image.width, image.height + 22), 255)
    canvas.paste(image, (0, 22))
    ImageDraw.Draw(canvas).text((4, 5), title, fill=0)
    return canvas


def side_by_side(panels: list[tuple[str, np.ndarray]], scale: int) -> np.ndarray:
    """Titled panels next to each other with a white gutter."""
    images = [_titled(panel, title, scale) for title, panel in panels]
    width = sum(i.width for i in images) + 16 * (len(images) - 1)
    canvas = Image.new("L", (width, max(i.height for i in images)), 255)
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + 16
    return np.asarray(canvas)


# --------------------------------------------------------------------------- the command


def _overrides(items: list[str] | None, name: str) -> dict[str, str]:
    scoped = parse_overrides(items)
    unknown = sorted(set(scoped) - {name, "generator"})
    if unknown:
        raise ConfigError(f"--set {unknown[0] or '<no scope>'}.…: bench generate takes only {name}.<param> overrides")
    return {**scoped.get("generator", {}), **scoped.get(name, {})}


def _table(report: dict[str, Any]) -> Table:
    mem, fidel = report["memorisation"], report["fidelity"]
    sample, noise = fidel["samples"], fidel["noise"]
    table = Table(title=f"bench generate: {report['generator']} on {report['dataset']['name']} fold {report['fold']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("reference", justify="right")
    fit = report["fit"]
    table.add_row("fit time (s)", f"{fit.get('fit_seconds', float('nan')):.1f}", "cached" if report["cached"] else "")
    per_image = report["sample_seconds_per_image"]
    table.add_row(
        "sampling time per image (s)", "—" if per_image is None else f"{per_image:.4f}",
        "cached" if report["samples_cached"] else "",
    )  # fmt: skip
    for key in ("autoencoder_parameters", "denoiser_parameters"):
        if key in report["describe"]:
            table.add_row(key.replace("_", " "), f"{report['describe'][key]:,}", "")
    table.add_row(
        "near-copies", f"{mem['near_copies']} / {mem['n_samples']}",
        f"threshold {mem['threshold']:.3f} (held-out q{mem['quantile']:g}, n={mem['n_heldout']})",
    )  # fmt: skip
    table.add_row("samples above the held-out 95th percentile", str(mem["above_heldout_p95"]),
                  f"{0.05 * mem['n_samples']:.1f} expected for fresh real images")  # fmt: skip
    table.add_row(
        "similarity to nearest training image (median)", f"{mem['samples'].get('median', float('nan')):.3f}",
        f"held-out real: {mem['heldout']['median']:.3f}",
    )  # fmt: skip
    for key, label in (("histogram_w1", "intensity histogram W1"), ("speckle_w1", "speckle ratio W1"),
                       ("spectrum_l1", "log power spectrum L1")):  # fmt: skip
        table.add_row(f"{label} to training", f"{sample.get(key, float('nan')):.3f}", f"noise: {noise[key]:.3f}")
    table.add_row("FID", "—" if report["fid"] is None else f"{report['fid']:.2f}", report.get("fid_note", ""))
    return table


def generate(
    out: Path = typer.Option(..., "--out", help="Output folder for PNGs, grid and report."),
    data: str = options.data_option(),
    fold: int = typer.Option(0, "--fold", help="Fold whose training images the generator is fitted on."),
    n: int = typer.Option(None, "--n", help="Number of synthetic images (default: training images, capped by preset)."),
    generator: str = typer.Option("ldm", "--generator", help="Generator name (see `bench plugins`)."),
    preset: str = options.preset_option(),
    set_: list[str] = typer.Option(None, "--set", help="Generator overrides, e.g. --set ldm.unet_steps=2000."),
    drop_copies: bool = typer.Option(False, "--drop-copies", help="Do not write near-copies of training images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generator's fit and of its sampling."),
    image_size: int = typer.Option(None, "--image-size", help="Image size (default: the preset's)."),
    split: Path = typer.Option(None, "--split", help="Split JSON file (default: a 5-fold split made on the fly)."),
    k: int = typer.Option(5, "--k", help="Folds of the on-the-fly split."),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="Generator cache (default OUT/generators; runs/generators shares it with bench run)."
    ),
    quantile: float = typer.Option(0.99, "--quantile", help="Held-out quantile above which a sample is a near-copy."),
    inception: Path = typer.Option(None, "--inception", help="Local torchvision Inception-v3 weights file for FID."),
    device: str = options.device_option(),
    threads: int = typer.Option(None, "--threads", min=1, help="torch threads (default: the free cores)."),
) -> None:
    """Fit (or reuse) the generator of one fold and report its samples' memorisation and fidelity."""
    console = Console()
    choice = threads_mod.apply(threads_mod.decide(override=threads))
    console.print(f"torch threads: {choice.threads} ({choice.reason})", markup=False, highlight=False)
    dev = resolve_device(device)
    preset = resolve_preset(preset, dev.type == "cuda")
    size = image_size or get_preset(preset).image_size
    registry = get_registry()
    generator_cls = registry.get("generator", generator)
    if not getattr(generator_cls, "produces_images", True):
        raise UserError(f"generator {generator!r} makes no images; choose one such as 'ldm'")
    params = resolve_params(generator_cls, preset, _overrides(set_, generator), f"generator {generator}")
    if inception is not None and not inception.is_file():
        raise UserError(f"--inception {inception}: no such file; pass a local Inception-v3 state-dict file")

    if split is not None and not split.is_file():
        raise DataError(f"split file {split} does not exist; make one with `bench split`")
    # the fold and its pool come from the lifecycle's prepare phase, as in bench run (a split made here stays in memory)
    spec = RunSpec(data=data, fold=fold, k=k, split_file=str(split) if split else None)
    the_fold = load_fold(spec, size, out, labeled=1.0, save_split=False)
    dataset, parts = the_fold.dataset, the_fold.parts
    train_ids = parts.labeled + parts.unlabeled
    heldout_ids = list(dict.fromkeys(parts.val + parts.test))
    train_images = dataset.images[dataset.index(train_ids)]
    heldout_images = dataset.images[dataset.index(heldout_ids)]
    count = default_pool_size(params, len(train_ids)) if n is None else n
    if count < 1:
        raise UserError(f"--n {count}: ask for at least one synthetic image")

    out.mkdir(parents=True, exist_ok=True)
    samples, info = generator_pool(
        generator, params, the_fold, n=count, seed=seed, image_size=size, cache_root=cache_dir or out / "generators",
        device=dev, log=console.print, registry=registry,
    )  # fmt: skip

    console.print(f"scoring {count} samples against {len(train_ids)} training and {len(heldout_ids)} held-out images")
    mem = memorisation(samples, train_images, heldout_images, quantile=quantile)
    fidelity = fidelity_report(samples, train_images, seed=seed)
    fid_value, fid_note = None, "omitted: pass --inception FILE (local weights) to compute it"
    if inception is not None:
        fid_value = fid(samples, train_images, inception, dev)
        fid_note = (
            f"torchvision Inception-v3 from {inception}, {count} samples vs {len(train_ids)} training images; "
            "not comparable to pytorch-fid numbers, biased with fewer than ~2048 images"
        )

    images_dir = out / "images"
    images_dir.mkdir(exist_ok=True)
    for old in images_dir.glob("synthetic_*.png"):
        old.unlink()
    copies = set(mem.near_copies)
    written = []
    for k_img, image in enumerate(samples[:, 0].numpy()):
        if drop_copies and k_img in copies:
            continue
        path = images_dir / f"synthetic_{k_img:05d}.png"
        write_png(path, image)
        written.append(path.name)

    rng = random.Random(seed)
    shown = GRID_COLUMNS * GRID_ROWS
    real_pick = sorted(rng.sample(range(len(train_ids)), min(shown, len(train_ids))))
    scale = max(1, 128 // size)
    write_png(out / "grid.png", side_by_side([
        (f"synthetic ({generator}, first {min(shown, count)})", tile(samples[:shown], GRID_COLUMNS)),
        ("real training images (random)", tile(train_images[real_pick], GRID_COLUMNS)),
    ], scale))  # fmt: skip
    write_nearest_pairs(
        out, samples=samples, train_images=train_images, similarity=mem.similarity, nearest=mem.nearest,
        train_ids=train_ids, threshold=mem.threshold, n=GRID_COLUMNS,
    )  # fmt: skip

    mem_dict = mem.as_dict()
    mem_dict["nearest_training_id"] = [train_ids[int(i)] for i in mem.nearest]
    report = {
        "generator": generator,
        "preset": preset,
        "image_size": size,
        "seed": seed,
        "fold": fold,
        "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint, "spec": data},
        "n_train": len(train_ids),
        "n_heldout": len(heldout_ids),
        "n_samples": count,
        "params": params_dict(params),
        "cache_key": info["cache_key"],
        "cached": info["cached"],
        "checkpoint_sha256": info["checkpoint_sha256"],
        "uses_extra_labels": info["uses_extra_labels"],
        "fit": {k: v for k, v in info["fit"].items() if not k.endswith("_curve")},
        "sample_seconds_per_image": info["sample_seconds_per_image"],
        "samples_cached": info["samples_cached"],
        "describe": info["describe"],
        "memorisation": mem_dict,
        "fidelity": fidelity,
        "fid": fid_value,
        "fid_note": fid_note,
        "drop_copies": drop_copies,
        "written": len(written),
        "dropped": sorted(copies) if drop_copies else [],
        "files": {"images": str(images_dir), "grid": "grid.png", "nearest": "nearest.png"},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_json(out / "report.json", json.loads(json.dumps(report, default=str)))
    console.print(_table(report))
    console.print(f"wrote {len(written)} PNGs to {images_dir}, grid.png, nearest.png and report.json in {out}")


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
