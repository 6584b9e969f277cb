"""``bench data check``, ``bench data import-busi`` and ``bench split``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.cli import options
from harness.data import dedup
from harness.data.busi_import import import_busi
from harness.data.datasets import DataError, load_dataset, summarize
from harness.data.splits import (
    find_groups,
    grouping_record,
    grouping_warnings,
    load_split,
    make_split,
    save_split,
    split_from_lists,
)

data_app = typer.Typer(help="Check and import datasets.", no_args_is_help=True)

HASH_SIZE = typer.Option(dedup.DEFAULT_HASH_SIZE, "--hash-size", help="Difference-hash size (bits = size^2).")
DUP_THRESHOLD = typer.Option(
    dedup.DEFAULT_THRESHOLD, "--dup-threshold", help="Near-duplicate Hamming threshold; -1 turns grouping off."
)
IMAGE_SIZE = typer.Option(128, "--image-size", help="Size the images are decoded at (and cached) for hashing.")


def _strata(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def check(
    path: str = typer.Argument(None, help="Dataset folder or registered name (or give it with --data)."),
    data: str = options.data_option(),
    as_json: bool = options.json_option(),
    image_size: int = IMAGE_SIZE,
    resize: str = typer.Option(None, "--resize", help="squash or pad (default: dataset.toml, else squash)."),
    mask_threshold: float = typer.Option(None, "--mask-threshold", help="Count mask values above T as foreground."),
    hash_size: int = HASH_SIZE,
    dup_threshold: int = DUP_THRESHOLD,
    k: int = typer.Option(5, "--k", help="Warn when a duplicate group holds more than 1/k of the images."),
) -> None:
    """Validate a dataset: counts per stratum, sizes, empty masks, duplicates, label conflicts, problems."""
    path = options.data_argument_or_option(path, data)
    try:
        dataset = load_dataset(path, image_size=image_size, resize=resize, mask_threshold=mask_threshold)
    except DataError as exc:
        if as_json:
            typer.echo(json.dumps({"ok": False, "problems": exc.problems}, indent=2))
        else:
            typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(1) from None
    threshold = dup_threshold if dup_threshold >= 0 else None
    grouping = find_groups(dataset, hash_size, threshold)
    report = {
        "ok": True,
        **summarize(dataset),
        "duplicates": grouping_record(grouping, hash_size, threshold),
        "warnings": grouping_warnings(grouping, k),
        "problems": [],
    }
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_check(report)


def _print_check(report: dict) -> None:
    console = Console()
    table = Table(title=f"{report['name']}: {report['images']} images, {report['empty_masks']} empty masks")
    for column in ("stratum", "images", "empty masks", "width", "height"):
        table.add_column(column, justify="left" if column == "stratum" else "right")
    for name, row in report["strata"].items():
        width, height = ("-".join(map(str, row[key])) for key in ("width", "height"))
        table.add_row(name, str(row["images"]), str(row["empty_masks"]), width, height)
    console.print(table)
    if report["unlabeled_images"]:
        console.print(f"unlabeled images: {report['unlabeled_images']}")
    d = report["duplicates"]
    console.print(
        f"exact duplicates: {len(d['exact_duplicates'])} cluster(s); near-duplicates (dHash {d['hash_size']}x"
        f"{d['hash_size']}, <= {d['threshold']} bits): {d['n_clusters']} cluster(s) holding "
        f"{d['n_images_in_clusters']} images, largest {d['largest_cluster']}; {d['n_groups']} independent groups"
    )
    if d.get("ncc_threshold") is not None:
        console.print(
            f"  of which joined by the speckle NCC (>= {d['ncc_threshold']}) and missed by the dHash: "
            f"{len(d['ncc_added_pairs'])} pair(s)"
        )
    for conflict in d["label_conflicts"]:
        pairs = ", ".join(f"{i}: {s}" for i, s in zip(conflict["ids"], conflict["strata"], strict=True))
        console.print(escape(f"  label conflict: {pairs} -> stratified as {conflict['majority']}"))
    for warning in report["warnings"]:
        typer.secho(f"warning: {warning}", fg="yellow")
    console.print("problems: none")


def import_busi_command(
    src: Path = typer.Argument(..., help="The unpacked BUSI release (benign/, malignant/, normal/)."),
    dst: Path = typer.Argument(..., help="New dataset folder to create (must not exist or be empty)."),
) -> None:
    """Convert the raw BUSI release into images/ + masks/0/, merging each image's masks with OR."""
    result = import_busi(src, dst)
    counts = ", ".join(f"{name} {n}" for name, n in result.per_class.items())
    typer.echo(f"wrote {result.n_images} images to {result.destination} ({counts})")
    if result.merged:
        typer.echo(f"merged several masks for {len(result.merged)} images: {', '.join(result.merged)}")


def _default_out(data: str | None, name: str, include: list[str] | None) -> Path:
    suffix = f"-{'+'.join(include)}" if include else ""
    folder = Path(data).expanduser() if data and Path(data).expanduser().is_dir() else Path(".")
    return folder / "splits" / f"{name}{suffix}.json"


def split(
    data_argument: str = typer.Argument(None, help="Dataset folder or registered name (or give it with --data)."),
    data: str = options.data_option(),
    protocol: str = typer.Option("kfold", "--protocol", help="kfold or paper-like (3 x 70/30, selection on test)."),
    k: int = typer.Option(5, "--k", help="Number of folds (kfold)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share held out for model selection."),
    val_from: str = typer.Option(
        None, "--val-from", help="train (default) or labeled; with --from-lists also test (the default there)."
    ),
    label_draws: int = typer.Option(3, "--label-draws", help="Independent labeled-subset draws per fold."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fold assignment and the label draws."),
    out: Path = typer.Option(None, "--out", help="Output file (default: DATA/splits/<protocol>-k<k>-seed<s>.json)."),
    from_lists: list[Path] = typer.Option(
        None, "--from-lists", help="Import published busi_train/val .txt lists or a splits_final.json (file/folder)."
    ),
    include_strata: str = typer.Option(None, "--include-strata", help="Only these strata, e.g. benign,malignant."),
    hash_size: int = HASH_SIZE,
    dup_threshold: int = DUP_THRESHOLD,
    image_size: int = IMAGE_SIZE,
    force: bool = typer.Option(False, "--force", help="Replace an existing, different split file."),
) -> None:
    """Write a split file: folds (train/val/test ids) and nested labeled subsets, grouped by duplicates."""
    data = options.data_argument_or_option(data_argument, data)
    include = _strata(include_strata)
    dataset = load_dataset(data, image_size=image_size, include_strata=include)
    threshold = dup_threshold if dup_threshold >= 0 else None
    common = dict(seed=seed, label_draws=label_draws, hash_size=hash_size, dup_threshold=threshold)
    if from_lists:
        result = split_from_lists(dataset, from_lists, val_from=val_from or "test", val_fraction=val_fraction, **common)
        name = f"lists-k{len(result['folds'])}-seed{seed}"
    else:
        result = make_split(
            dataset, protocol=protocol, k=k, val_fraction=val_fraction, val_from=val_from or "train", **common
        )
        name = f"{protocol}-k{len(result['folds'])}-seed{seed}"
    path = out or _default_out(data, name, include)
    if path.exists() and not force:
        try:
            same = json.loads(path.read_text()) == result
        except (OSError, ValueError):
            same = False
        if not same:
            raise DataError(f"{path} exists and holds a different split; pass --force to replace it or choose --out")
    try:
        save_split(result, path)
    except OSError as exc:
        raise DataError(f"cannot write the split file {path} ({exc}); choose another place with --out FILE") from None
    load_split(path, dataset)  # read back: the file must round-trip
    _print_split(result, path)


def _print_split(result: dict, path: Path) -> None:
    info = result["dataset"]
    typer.echo(f"{result['protocol']} split of {info['name']} ({info['n_images']} images)")
    table = Table()
    for column in ("fold", "train", "val", "test"):
        table.add_column(column, justify="right")
    for fold in result["folds"]:
        val = str(len(fold["val"])) if fold["val"] else "from labeled"
        table.add_row(str(fold["index"]), str(len(fold["train"])), val, str(len(fold["test"])))
    Console().print(table)
    d = result["duplicates"]
    typer.echo(
        f"near-duplicate clusters: {d['n_clusters']} ({d['n_images_in_clusters']} images, largest "
        f"{d['largest_cluster']}); label conflicts: {len(d['label_conflicts'])}"
        + ("" if result["protocol"] == "lists" else "; groups never cross train/val/test")
    )
    if result["selection_is_test"]:
        typer.secho(f"note: {result['note']}", fg="yellow")
    for warning in result["warnings"]:
        typer.secho(f"warning: {warning}", fg="yellow")
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    if not data_app.registered_commands:
        data_app.command("check")(check)
        data_app.command("import-busi")(import_busi_command)
    if not any(group.typer_instance is data_app for group in app.registered_groups):
        app.add_typer(data_app, name="data")
    if not any(command.callback is split for command in app.registered_commands):
        app.command("split")(split)
