"""``bench predict``: a trained run on new images, at each image's own resolution.

Each image is decoded and resized to the run's model grid exactly as the dataset loader does
(:mod:`harness.data.datasets`), normalised as in training and predicted by the run's inference network
(optionally averaged over the 8 flip/rotation views, on logits). The logits of the image's box are
resampled bilinearly to the image's own size and thresholded there: the path of evaluation at
native resolution. Where ground truth sits next to the images (``masks/0/``), the rows of
metrics.csv come from :func:`harness.evaluation.evaluate.evaluate_images` itself, so the numbers and the
empty-mask policy are evaluation's.

Outputs under ``--out``: ``masks/<id>.png`` (0/255), ``probabilities/<id>.png|.npy`` (optional),
``overlays/<id>.png`` (red: prediction, green: ground truth), ``metrics.csv`` (with ground truth)
and ``predict.json`` (what was done, written last).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from harness import __version__, progress
from harness.api import SegDataset
from harness.data.datasets import (
    IMAGE_EXTENSIONS,
    DataError,
    DatasetConfig,
    atomic_write_bytes,
    decode_image,
    decode_mask,
    read_dataset_toml,
    resize_image,
    resize_mask,
    stratum_of,
)
from harness.errors import UserError
from harness.evaluation.evaluate import evaluate_images, summarise
from harness.evaluation.metrics import METRIC_POLICY, boundary
from harness.inference.network import LoadedRun, Predict, load_run_network
from harness.runs.store import atomic_write_json, write_rows_csv
from harness.training.device import resolve_device

Log = Callable[[str], None]
PROBABILITY_FORMATS = ("png", "npy")
MANIFEST_FILE = "predict.json"
#: (quarter turns, horizontal flip) of each test-time view; the first is the plain image
TTA_VIEWS: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))
TTA_DESCRIPTION = (
    "8 views (rotations by 0, 90, 180 and 270 degrees, each with and without a horizontal flip); each view's "
    "logits are mapped back to the original orientation and averaged before resampling and thresholding"
)
PRED_COLOUR = (255, 40, 40)
TRUTH_COLOUR = (0, 230, 0)
MAX_LISTED = 20


class PredictError(UserError):
    """The inputs or options of ``bench predict`` are invalid; the message names the file or value."""


# --------------------------------------------------------------------------- inputs


@dataclass
class InputImage:
    """One image to predict and, when it has one, its ground-truth mask and the mask folder's settings."""

    path: Path
    id: str
    mask_path: Path | None = None
    mask_threshold: float | None = None
    spacing: float | None = None
    stratum: str = "all"


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _mask_folder(image_dir: Path) -> Path | None:
    """``masks/0/`` beside the images folder (dataset layout) or inside it."""
    for candidate in (image_dir.parent / "masks" / "0", image_dir / "masks" / "0"):
        if candidate.is_dir():
            return candidate
    return None


def find_inputs(inputs: Sequence[Path | str]) -> list[InputImage]:
    """The images named by ``inputs`` (folders or files), paired with ground truth where a masks/0/ folder has it.

    A dataset folder (one holding ``images/``) stands for its images. Ids are the file stems and must be unique.
    """
    paths: list[Path] = []
    for given in inputs:
        path = Path(given).expanduser()
        if path.is_dir():
            files = _image_files(path)
            if not files and (path / "images").is_dir():
                files = _image_files(path / "images")
            if not files:
                raise PredictError(f"{path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); pass a folder of images")
            paths += files
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise PredictError(f"{path}: unsupported file type {path.suffix!r}; use one of {IMAGE_EXTENSIONS}")
            paths.append(path)
        else:
            raise PredictError(f"{path} does not exist; pass image files or a folder of images")
    by_id: dict[str, Path] = {}
    for path in dict.fromkeys(paths):
        if path.stem in by_id:
            raise PredictError(
                f"{by_id[path.stem]} and {path} have the same name {path.stem!r}: outputs are named after the image, "
                "so predict them in separate calls (or rename one)"
            )
        by_id[path.stem] = path
    settings: dict[Path, tuple[Path | None, dict[str, Path], DatasetConfig]] = {}
    images = []
    for item_id, path in by_id.items():
        if path.parent not in settings:
            mask_dir = _mask_folder(path.parent)
            masks = {p.stem: p for p in _image_files(mask_dir)} if mask_dir else {}
            config = read_dataset_toml(mask_dir.parent.parent / "dataset.toml") if mask_dir else DatasetConfig()
            settings[path.parent] = (mask_dir, masks, config)
        mask_dir, masks, config = settings[path.parent]
        stratum = stratum_of(item_id)
        images.append(
            InputImage(
                path=path,
                id=item_id,
                mask_path=masks.get(item_id),
                mask_threshold=config.mask_threshold,
                spacing=config.spacing,
                stratum=config.strata.get(stratum, stratum),
            )
        )
    return images


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc}); check that it exists and is readable") from None


def _load_pair(item: InputImage, with_image: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The native image (grey uint8) and ground-truth mask (bool) of ``item``; DataError names a bad file."""
    image = decode_image(_read_bytes(item.path), item.path) if with_image else None
    mask = None
    if item.mask_path is not None:
        mask = decode_mask(_read_bytes(item.mask_path), item.mask_path, item.mask_threshold)
    return image, mask


@dataclass
class _Prepared:
    image: np.ndarray  # S x S uint8 on the model grid
    box: tuple[int, int, int, int]
    shape: tuple[int, int]  # native (height, width)


def prepare_inputs(items: list[InputImage], size: int, mode: str) -> list[_Prepared]:
    """Decode, validate and resize every image (and check its mask) before anything is written."""

    def prepare(item: InputImage) -> _Prepared | str:
        try:
            image, mask = _load_pair(item)
            assert image is not None
            if mask is not None and mask.shape != image.shape:
                return (
                    f"{item.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                    f"{image.shape[1]}x{image.shape[0]} (width x height); masks must match their images"
                )
            small, box = resize_image(image, size, mode)
        except DataError as exc:
            return str(exc)
        return _Prepared(small, box, (int(image.shape[0]), int(image.shape[1])))

    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        prepared = list(pool.map(prepare, items))
    problems = [p for p in prepared if isinstance(p, str)]
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise PredictError(
            f"{len(problems)} input file(s) cannot be used; fix or remove them and run again (nothing was written):"
            f"\n{shown}{more}"
        )
    return prepared  # type: ignore[return-value]


# --------------------------------------------------------------------------- prediction


def _view(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return x.flip(-1) if flip else x


def _unview(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    x = x.flip(-1) if flip else x
    return torch.rot90(x, -turns, dims=(-2, -1)) if turns else x


def tta_predictor(predict: Predict, tta: bool) -> Predict:
    """``predict`` itself, or the mean of its logits over the 8 flip/rotation views (square inputs)."""
    if not tta:
        return predict

    def averaged(images: torch.Tensor) -> torch.Tensor:
        total = None
        for turns, flip in TTA_VIEWS:
            logits = _unview(predict(_view(images, turns, flip)), turns, flip)
            total = logits if total is None else total + logits
        return total / len(TTA_VIEWS)

    return averaged


def native_probability(logits: torch.Tensor, box: tuple[int, int, int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Foreground probability at the native size: the box of 1 x S x S logits, resampled bilinearly, then sigmoid.

    The same resampling as evaluation at native resolution (align_corners=False, before the threshold).
    """
    top, left, h, w = box
    box_logits = logits[None, :, top : top + h, left : left + w].float()
    return torch.sigmoid(F.interpolate(box_logits, size=shape, mode="bilinear", align_corners=False))[0, 0]


def _score(
    item: InputImage,
    prepared: _Prepared,
    logits: torch.Tensor,
    truth: np.ndarray,
    size: int,
    mode: str,
    threshold: float,
    published: bool,
) -> dict[str, Any]:
    """One metrics row, from evaluation's own code on a one-image dataset and the logits already computed."""
    dataset = SegDataset(
        name="predict",
        ids=[item.id],
        images=torch.from_numpy(prepared.image)[None, None],
        masks=torch.from_numpy(resize_mask(truth, size, mode))[None, None],
        strata=[item.stratum],
        cases=[item.id],
        native_masks=[truth],
        boxes=[prepared.box],
        unlabeled=torch.zeros((0, 1, size, size), dtype=torch.uint8),
        unlabeled_ids=[],
        content_hashes={},
        fingerprint="",
        spacing=item.spacing,
    )
    rows = evaluate_images(
        lambda _images: logits[None],  # the image's logits, computed once for every output
        dataset,
        [0],
        resolution="native",
        published=published,
        batch_size=1,
        device=logits.device,
        threshold=threshold,
    )
    return rows[0]


# --------------------------------------------------------------------------- outputs


def overlay_image(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """H x W x 3 uint8: the grey image, the prediction tinted and outlined in red, the truth outlined in green."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    red = np.array(PRED_COLOUR, np.float32)
    rgb[pred] = 0.75 * rgb[pred] + 0.25 * red
    thickness = max(1, round(max(image.shape) / 300))

    def outline(mask: np.ndarray) -> np.ndarray:
        edge = boundary(mask)
        return ndimage.binary_dilation(edge, iterations=thickness - 1) & mask if thickness > 1 else edge

    if truth is not None:
        rgb[outline(truth)] = TRUTH_COLOUR
    rgb[outline(pred)] = PRED_COLOUR
    return np.round(rgb).astype(np.uint8)


def _write_png(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, lambda handle: Image.fromarray(array).save(handle, format="PNG"))


def _write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, lambda handle: np.save(handle, array))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class PredictResult:
    """What :func:`predict_images` did: the manifest it wrote, the metric rows and their summary."""

    out: Path
    manifest: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] | None = None


def _check_options(threshold: float, batch_size: int, probabilities: str | None) -> None:
    if not 0.0 < threshold < 1.0:
        raise PredictError(f"--threshold {threshold}: must lie strictly between 0 and 1, e.g. 0.5")
    if batch_size < 1:
        raise PredictError(f"--batch-size {batch_size}: must be at least 1")
    if probabilities is not None and probabilities not in PROBABILITY_FORMATS:
        raise PredictError(f"--probabilities {probabilities!r}: use {' or '.join(PROBABILITY_FORMATS)}")


def _output_paths(out: Path, item: InputImage, probabilities: str | None, overlays: bool) -> dict[str, Path]:
    paths = {"mask": out / "masks" / f"{item.id}.png"}
    if probabilities:
        paths["probability"] = out / "probabilities" / f"{item.id}.{probabilities}"
    if overlays:
        paths["overlay"] = out / "overlays" / f"{item.id}.png"
    return paths


def _check_no_overwrite(items: list[InputImage], outputs: list[dict[str, Path]], out: Path) -> None:
    inputs = {p.resolve() for item in items for p in (item.path, item.mask_path) if p is not None}
    for paths in outputs:
        for path in paths.values():
            if path.resolve() in inputs:
                raise PredictError(f"--out {out} would overwrite the input {path}; choose another output folder")


def predict_images(
    run_dir: Path | str,
    inputs: Sequence[Path | str],
    out: Path | str,
    *,
    checkpoint: str = "best",
    threshold: float = 0.5,
    tta: bool = False,
    probabilities: str | None = None,
    overlays: bool = True,
    batch_size: int = 8,
    device: str = "auto",
    log: Log = print,
    show_progress: bool = True,
) -> PredictResult:
    """Predict every image of ``inputs`` with the run in ``run_dir`` and write masks, overlays, metrics and a manifest.

    ``probabilities``: None, "png" (16-bit, p x 65535) or "npy" (float32). Every input is decoded and
    checked before anything is written; ``predict.json`` is written last.
    """
    _check_options(threshold, batch_size, probabilities)
    out = Path(out)
    started = time.time()
    torch_device = resolve_device(device)
    loaded: LoadedRun = load_run_network(run_dir, checkpoint, torch_device)
    items = find_inputs(inputs)
    outputs = [_output_paths(out, item, probabilities, overlays) for item in items]
    _check_no_overwrite(items, outputs, out)
    size, mode = loaded.image_size, loaded.resize
    published = bool(loaded.config.get("published_metrics"))
    prepared = prepare_inputs(items, size, mode)
    predict = tta_predictor(loaded.predictor(), tta)
    log(
        f"predicting {len(items)} image(s) with {loaded.run.get('name', Path(run_dir).name)} ({checkpoint} checkpoint, "
        f"step {loaded.step}) on {torch_device}; model grid {size} px ({mode}); tta {'on' if tta else 'off'}"
    )

    rows: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    reporter = progress.installed_or_console(True) if show_progress else progress.SILENT
    bar = reporter.task("predict", total=len(items), unit="img")
    try:
        for start in range(0, len(items), batch_size):
            chunk = range(start, min(start + batch_size, len(items)))
            images = torch.from_numpy(np.stack([prepared[i].image for i in chunk]))[:, None].to(torch_device)
            with torch.no_grad():
                logits = predict(images).float()
                for k, i in enumerate(chunk):
                    item, prep, paths = items[i], prepared[i], outputs[i]
                    prob = native_probability(logits[k], prep.box, prep.shape)
                    pred = (prob > threshold).cpu().numpy()
                    image, truth = _load_pair(item, with_image=overlays)
                    _write_png(paths["mask"], pred.astype(np.uint8) * 255)
                    if probabilities == "png":
                        _write_png(paths["probability"], np.round(prob.cpu().numpy() * 65535).astype(np.uint16))
                    elif probabilities == "npy":
                        _write_npy(paths["probability"], prob.cpu().numpy().astype(np.float32))
                    if overlays:
                        assert image is not None
                        _write_png(paths["overlay"], overlay_image(image, pred, truth))
                    if truth is not None:
                        row = _score(item, prep, logits[k], truth, size, mode, threshold, published)
                        row.update(
                            file=str(item.path), checkpoint=checkpoint, checkpoint_step=loaded.step, tta=tta,
                            threshold=threshold,
                        )  # fmt: skip
                        rows.append(row)
                    records.append(
                        {
                            "id": item.id,
                            "image": str(item.path),
                            "height": prep.shape[0],
                            "width": prep.shape[1],
                            "ground_truth": str(item.mask_path) if item.mask_path else None,
                            "foreground_fraction": float(pred.mean()),
                            **{name: str(path.relative_to(out)) for name, path in paths.items()},
                        }
                    )
            bar.advance(len(chunk))
    finally:
        bar.close()

    summary = summarise(rows) if rows else None
    if rows:
        write_rows_csv(out / "metrics.csv", rows)
    manifest = _manifest(loaded, out, items, records, rows, summary, tta=tta, threshold=threshold,
                         probabilities=probabilities, overlays=overlays, device=torch_device,
                         seconds=time.time() - started)  # fmt: skip
    atomic_write_json(out / MANIFEST_FILE, manifest)
    _log_summary(log, loaded, out, items, summary, tta, overlays)
    return PredictResult(out=out, manifest=manifest, rows=rows, summary=summary)


def _manifest(
    loaded: LoadedRun,
    out: Path,
    items: list[InputImage],
    records: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    *,
    tta: bool,
    threshold: float,
    probabilities: str | None,
    overlays: bool,
    device: torch.device,
    seconds: float,
) -> dict[str, Any]:
    run = loaded.run
    return {
        "tool": "bench predict",
        "segbench": __version__,
        "torch": torch.__version__,
        "created": time.time(),
        "seconds": round(seconds, 3),
        "device": str(device),
        "run": {
            "dir": str(Path(loaded.run_dir).resolve()),
            "name": run.get("name"),
            "run_id": run.get("run_id"),
            "ssl": loaded.config.get("ssl"),
            "backbone": loaded.config.get("backbone"),
            "status": run.get("status"),
            "test": (run.get("test") or {}).get(loaded.checkpoint),
        },
        "checkpoint": {
            "name": loaded.checkpoint,
            "path": str(loaded.checkpoint_path.resolve()),
            "step": loaded.step,
            "validation_score": loaded.score,
            "sha256": _sha256(loaded.checkpoint_path),
        },
        "preprocessing": {
            "image_size": loaded.image_size,
            "resize": loaded.resize,
            "resize_source": loaded.resize_source,
            "normalisation": loaded.normaliser.as_dict(),
            "precision": loaded.precision,
        },
        "tta": {"enabled": tta, "views": len(TTA_VIEWS) if tta else 1, "description": TTA_DESCRIPTION if tta else None},
        "threshold": threshold,
        "resampling": "logits of the image's box resampled bilinearly (align_corners=False) to the image's own "
        f"size, then foreground where sigmoid > {threshold}",
        "outputs": {
            "masks": "masks/<id>.png, 0/255, the input image's size",
            "probabilities": {
                None: None,
                "png": "probabilities/<id>.png, 16-bit grey, value = round(p x 65535)",
                "npy": "probabilities/<id>.npy, float32 probabilities in [0, 1]",
            }[probabilities],
            "overlays": "overlays/<id>.png: prediction tinted and outlined in red, ground truth outlined in green"
            if overlays
            else None,
            "metrics": "metrics.csv" if rows else None,
        },
        "n_images": len(items),
        "n_with_ground_truth": len(rows),
        "summary": summary,
        "metric_policy": METRIC_POLICY if rows else None,
        "images": records,
    }


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _log_summary(
    log: Log,
    loaded: LoadedRun,
    out: Path,
    items: list[InputImage],
    summary: dict[str, Any] | None,
    tta: bool,
    overlays: bool,
) -> None:
    log(f"wrote {len(items)} mask(s) to {out / 'masks'}" + (f", overlays to {out / 'overlays'}" if overlays else ""))
    missing = sum(item.mask_path is None for item in items)
    if summary is None:
        log("no ground truth (masks/0/ next to the images): no metrics.csv")
        return
    if missing:
        log(f"note: {missing} image(s) have no mask in masks/0/ and are not scored")
    unit = "mm" if any(item.spacing for item in items) else "px"
    log(
        f"metrics ({summary['n_images']} images at their own resolution, {summary['n_lesion']} with a lesion, "
        f"tta {'on' if tta else 'off'}): Dice {_fmt(summary['dice'])}, IoU {_fmt(summary['iou'])}, "
        f"HD95 {_fmt(summary['hd95'], 2)} {unit} over lesion images; Dice over all images {_fmt(summary['dice_all'])}; "
        f"lesion-free predicted empty {_fmt(summary['empty_correct'], 3)} -> {out / 'metrics.csv'}"
    )
    own = (loaded.run.get("test") or {}).get(loaded.checkpoint)
    if own:
        log(
            f"the run's own evaluation ({loaded.checkpoint} checkpoint, its {own.get('n_images')} held-out test "
            f"images): Dice {_fmt(own.get('dice'))}, HD95 {_fmt(own.get('hd95'), 2)}"
        )
