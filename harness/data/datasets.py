"""Datasets: the folder layout (images/ + masks/0/), validation, decode-once cache, ``load_dataset``.

A dataset folder holds ``images/<id>.<ext>`` and ``masks/0/<id>.<ext>``, optionally
``unlabeled/<id>.<ext>`` (image-only data), ``groups.csv`` (columns ``id``, ``stratum``, ``case``)
and ``dataset.toml`` (defaults: channels, resize, normalisation, strata, spacing, include_strata,
mask_threshold). Images are decoded to grayscale, resized to the run's image size and cached on
disk as uint8 under a key made of the files' SHA-256 and the load parameters; a changed file
misses the cache. All files are validated before anything is cached.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
import tomllib
import warnings
import zipfile
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from harness import progress
from harness.api import DatasetSource, SegDataset
from harness.errors import UserError
from harness.osutil import make_shareable

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")
RESIZE_MODES = ("squash", "pad")
NORMALISATIONS = ("zscore", "published")
#: 2: 16-bit images are scaled by their bit depth (an 8-bit-valued 16-bit PNG no longer decodes black)
CACHE_VERSION = 2
#: larger files are not read as images (a guard against devices and runaway files named *.png)
MAX_FILE_BYTES = 512 * 2**20
#: a dataset name becomes part of file names (split files): letters, digits and . _ - + space only
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+ -]*")
DEFAULT_SOURCE = "phantom"
TOML_KEYS = ("name", "channels", "resize", "normalisation", "strata", "spacing", "include_strata", "mask_threshold")
MAX_LISTED = 20


class DataError(UserError, ValueError):
    """A dataset file or option is invalid; the message names the file and the fix.

    ``problems`` lists every problem found (one entry per file) when several were collected.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


# --------------------------------------------------------------------------- ids, strata, options


def stratum_of(item_id: str) -> str:
    """The first word of an id (``benign (4)`` -> ``benign``; ``case12_a`` -> ``case``); ``all`` if none."""
    word = re.split(r"[\s_\-.(\[]+", item_id.strip(), maxsplit=1)[0]
    word = word.rstrip("0123456789")
    return word or "all"


def parse_spec_params(spec: str | None) -> dict[str, str]:
    """``name:key=value,key=value`` -> ``{key: value}`` (empty for a bare name)."""
    if not spec or ":" not in spec:
        return {}
    out: dict[str, str] = {}
    for part in spec.split(":", 1)[1].split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise DataError(f"dataset {spec!r}: expected name:key=value,... e.g. phantom:count=50,size=64")
        key, value = part.split("=", 1)
        out[key.strip()] = value.strip()
    return out


@dataclass
class DatasetConfig:
    """The defaults a folder's dataset.toml sets (None: not set)."""

    name: str | None = None
    channels: int | None = None
    resize: str | None = None
    normalisation: str | None = None
    strata: dict[str, str] = field(default_factory=dict)
    spacing: float | None = None
    include_strata: list[str] | None = None
    mask_threshold: float | None = None


def read_dataset_toml(path: Path) -> DatasetConfig:
    """Read and validate ``dataset.toml`` (a missing file gives the empty config)."""
    if not path.is_file():
        return DatasetConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid TOML ({exc}); fix the syntax or delete the file") from None
    unknown = sorted(set(raw) - set(TOML_KEYS))
    if unknown:
        raise DataError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(TOML_KEYS)}")

    def bad(key: str, expected: str) -> DataError:
        return DataError(f"{path}: {key} = {raw[key]!r} is invalid; expected {expected}")

    config = DatasetConfig()
    if "name" in raw:
        if not isinstance(raw["name"], str) or not SAFE_NAME.fullmatch(raw["name"]):
            raise bad("name", "a name of letters, digits, '.', '_', '-', '+' or spaces (it becomes a file name)")
        config.name = raw["name"]
    if "channels" in raw:
        if raw["channels"] not in (1, 3) or isinstance(raw["channels"], bool):
            raise bad("channels", "1 or 3")
        config.channels = int(raw["channels"])
    if "resize" in raw:
        if raw["resize"] not in RESIZE_MODES:
            raise bad("resize", " or ".join(RESIZE_MODES))
        config.resize = raw["resize"]
    if "normalisation" in raw:
        if raw["normalisation"] not in NORMALISATIONS:
            raise bad("normalisation", " or ".join(NORMALISATIONS))
        config.normalisation = raw["normalisation"]
    if "strata" in raw:
        strata = raw["strata"]
        if not isinstance(strata, dict) or not all(isinstance(v, str) and v for v in strata.values()):
            raise bad("strata", 'a table renaming strata, e.g. strata = { B = "benign", M = "malignant" }')
        config.strata = dict(strata)
    if "spacing" in raw:
        value = raw["spacing"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise bad("spacing", "a positive number (mm per pixel at the original resolution)")
        config.spacing = float(value)
    if "include_strata" in raw:
        value = raw["include_strata"]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise bad("include_strata", 'a list of strata, e.g. ["benign", "malignant"]')
        config.include_strata = list(value)
    if "mask_threshold" in raw:
        value = raw["mask_threshold"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
            raise bad("mask_threshold", "a finite number >= 0 (mask values above it are foreground)")
        config.mask_threshold = float(value)
    return config


# --------------------------------------------------------------------------- scanning


@dataclass
class FolderScan:
    """The files of a dataset folder, paired by id, with strata and cases."""

    root: Path
    config: DatasetConfig
    images: dict[str, Path]
    masks: dict[str, Path]
    unlabeled: dict[str, Path]
    strata: dict[str, str]
    cases: dict[str, str]


def _list_files(folder: Path, problems: list[str]) -> dict[str, Path]:
    """Image files of ``folder`` by id; records unsupported files and ids with two extensions."""
    by_id: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name in ("Thumbs.db", "desktop.ini"):
            continue
        if path.is_dir():
            continue
        if not path.is_file():  # a FIFO, socket or device would block or never end when read
            problems.append(f"{path}: not a regular file (a pipe, socket or device); remove it from the dataset")
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(
                f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
                f"use one of {', '.join(IMAGE_EXTENSIONS)} or move the file out of the dataset"
            )
            continue
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            problems.append(
                f"{path}: {size / 2**20:.0f} MiB, more than the {MAX_FILE_BYTES // 2**20} MiB an image may have; "
                "re-export it smaller or move it out of the dataset"
            )
            continue
        by_id.setdefault(path.stem, []).append(path)
    out = {}
    for item_id, paths in by_id.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            problems.append(f"{folder}: id {item_id!r} has several files ({names}); keep one of them")
        out[item_id] = paths[0]
    return out


def _read_groups(path: Path, ids: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``groups.csv``: per-id ``stratum`` and ``case`` overrides."""
    known = set(ids)
    strata: dict[str, str] = {}
    cases: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            if "id" not in columns or not ({"stratum", "case"} & set(columns)):
                raise DataError(
                    f"{path}: needs a header with an 'id' column and a 'stratum' and/or 'case' column, "
                    f"found {columns or 'no header'}"
                )
            seen = set()
            for line, row in enumerate(reader, start=2):
                if None in row:  # DictReader files fields beyond the header under the key None
                    raise DataError(
                        f"{path} line {line}: {len(row[None])} field(s) more than the header's {len(columns)} "
                        f"({', '.join(columns)}); quote values that hold commas, or drop the extra fields"
                    )
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                item_id = row["id"]
                if Path(item_id).suffix.lower() in IMAGE_EXTENSIONS:
                    item_id = Path(item_id).stem
                if item_id not in known:
                    raise DataError(
                        f"{path} line {line}: id {item_id!r} is not an image of images/; fix or drop the row"
                    )
                if item_id in seen:
                    raise DataError(f"{path} line {line}: id {item_id!r} appears twice; keep one row per image")
                seen.add(item_id)
                if row.get("stratum"):
                    strata[item_id] = row["stratum"]
                if row.get("case"):
                    cases[item_id] = row["case"]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read it as CSV ({exc}); save it as UTF-8 CSV") from None
    return strata, cases


def check_mask_folders(root: Path) -> None:
    """Refuse mask folders other than masks/0/: only one foreground class is supported so far."""
    masks = Path(root) / "masks"
    others = sorted(p.name for p in masks.iterdir() if p.is_dir() and p.name != "0") if masks.is_dir() else []
    if others:
        listed = ", ".join(f"masks/{name}/" for name in others)
        message = (
            f"dataset folder {root} has {listed}: only masks/0/ (one foreground class) is supported, "
            "multi-class masks are not yet; merge the classes into masks/0/ or move the other folders out"
        )
        raise DataError(message, [message])


def scan_folder(root: Path) -> FolderScan:
    """Pair images with masks and read dataset.toml / groups.csv; raise DataError listing every problem."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; pass a folder holding images/ and masks/0/")
    config = read_dataset_toml(root / "dataset.toml")
    image_dir, mask_dir, unlabeled_dir = root / "images", root / "masks" / "0", root / "unlabeled"
    if not image_dir.is_dir():
        hint = ""
        if any(p.is_dir() and any(p.glob("*_mask*.png")) for p in root.iterdir()):
            hint = " It looks like the raw BUSI release: convert it with `bench data import-busi SRC DST`."
        raise DataError(
            f"{root} has no images/ folder; a dataset folder holds images/<id>.png and masks/0/<id>.png.{hint}"
        )
    check_mask_folders(root)
    problems: list[str] = []
    images = _list_files(image_dir, problems)
    if mask_dir.is_dir():
        masks = _list_files(mask_dir, problems)
    else:
        masks = {}
        if images:
            where = " (masks/ holds files directly: move them to masks/0/)" if (root / "masks").is_dir() else ""
            problems.append(
                f"{root}: no masks/0/ folder{where}; put one mask per image in masks/0/<id>.png, "
                "or move image-only data to unlabeled/"
            )
    unlabeled = _list_files(unlabeled_dir, problems) if unlabeled_dir.is_dir() else {}
    if not images:
        raise DataError(
            f"{image_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
            "put images/<id>.png and masks/0/<id>.png in the dataset folder"
        )
    if mask_dir.is_dir():
        for item_id in sorted(images.keys() - masks.keys()):
            problems.append(
                f"{images[item_id]}: image without mask (expected masks/0/{item_id}.png); add the mask "
                "or move the image to unlabeled/"
            )
        for item_id in sorted(masks.keys() - images.keys()):
            problems.append(f"{masks[item_id]}: mask without image (expected images/{item_id}.png); remove it")
    for item_id in sorted(unlabeled.keys() & images.keys()):
        problems.append(f"{unlabeled[item_id]}: id {item_id!r} is also in images/; rename one of them")
    if problems:
        raise_problems(root, problems)
    strata = {i: stratum_of(i) for i in images}
    cases = {i: i for i in images}
    groups = root / "groups.csv"
    if groups.is_file():
        extra_strata, extra_cases = _read_groups(groups, images)
        strata.update(extra_strata)
        cases.update(extra_cases)
    strata = {i: config.strata.get(s, s) for i, s in strata.items()}
    return FolderScan(root, config, images, masks, unlabeled, strata, cases)


def raise_problems(root: Path, problems: list[str]) -> None:
    """Raise one DataError listing ``problems`` (the first MAX_LISTED of them)."""
    shown = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise DataError(
        f"dataset {root}: {len(problems)} problem(s); fix them and run again (nothing was written):\n{shown}{more}",
        problems,
    )


# --------------------------------------------------------------------------- decoding and resizing


REEXPORT = "re-export or remove the file"
DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)


def _reason(exc: Exception) -> str:
    return "not an image file Pillow can read" if isinstance(exc, UnidentifiedImageError) else str(exc)


def decode_image(data: bytes, path: Path) -> np.ndarray:
    """Decode image bytes to a 2-D grayscale uint8 array (first frame of multi-frame files)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L"):
                return _scale_by_bit_depth(np.asarray(img, dtype=np.uint16))
            if img.mode in ("I", "F"):
                arr = np.asarray(img, dtype=np.float64)
            else:
                return np.asarray(img.convert("L"), dtype=np.uint8)
    except DECODE_ERRORS as exc:
        raise DataError(f"{path}: unreadable or truncated image ({_reason(exc)}); {REEXPORT}") from None
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise DataError(f"{path}: {bad} NaN or infinite pixel(s) in a float image; {REEXPORT} with finite values")
    span = max(float(arr.max() - arr.min()), 1e-12)
    return ((arr - arr.min()) / span * 255).round().astype(np.uint8)


def _scale_by_bit_depth(arr: np.ndarray) -> np.ndarray:
    """16-bit pixels to uint8 by the bit depth the values actually use.

    An 8-bit image saved as 16-bit stays as it is (a plain shift by 8 would make it black); 10-, 12- or
    16-bit data is scaled from its bit range (2**bits - 1), so images of one scanner keep their relative
    brightness instead of being stretched one by one.
    """
    top = int(arr.max())
    if top <= 255:
        return arr.astype(np.uint8)
    full = (1 << top.bit_length()) - 1
    return np.round(arr.astype(np.float64) * (255 / full)).astype(np.uint8)


def warn_if_constant(image: np.ndarray, path: Path) -> None:
    """Warn when an image decodes to one value everywhere (a blank export, or a decoding it does not suit)."""
    if image.size and image.min() == image.max():
        warnings.warn(
            f"{path}: decodes to a constant image (every pixel {int(image.flat[0])}); check the file",
            stacklevel=2,
        )


def decode_mask(data: bytes, path: Path, threshold: float | None) -> np.ndarray:
    """Decode mask bytes to a bool array: values must be {0, 255} or {0, 1} unless ``threshold`` is given."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F"):
                arr = np.asarray(img)
            else:
                arr = np.asarray(img.convert("L"))
    except DECODE_ERRORS as exc:
        raise DataError(f"{path}: unreadable or truncated mask ({_reason(exc)}); {REEXPORT}") from None
    if arr.dtype == bool:  # 1-bit masks
        arr = arr.astype(np.uint8) * 255
    if threshold is not None:
        return arr > threshold
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}:
        return arr.astype(bool)
    sample = ", ".join(str(v) for v in values[:6].tolist())
    raise DataError(
        f"{path}: mask values other than {{0, 255}} or {{0, 1}} ({len(values)} distinct values: {sample}, ...); "
        "save masks as lossless 0/255 PNG, or pass --mask-threshold T to count values above T as foreground"
    )


def letterbox(height: int, width: int, size: int, mode: str) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an image inside the size x size grid."""
    if mode == "squash":
        return 0, 0, size, size
    scale = size / max(height, width)
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return (size - h) // 2, (size - w) // 2, h, w


def resize_image(image: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Resize a uint8 image to size x size (bilinear, antialiased); pad keeps the aspect ratio."""
    top, left, h, w = box = letterbox(*image.shape, size, mode)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    out = np.zeros((size, size), np.uint8)
    out[top : top + h, left : left + w] = resized
    return out, box


def resize_mask(mask: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resize a bool mask like its image: bilinear on 0/255, foreground where >= 128."""
    resized, _ = resize_image(mask.astype(np.uint8) * 255, size, mode)
    return resized >= 128


# --------------------------------------------------------------------------- the decode cache


def default_cache_dir() -> Path:
    """``$SEGBENCH_CACHE/data``, else ``~/.cache/segbench/data``."""
    root = os.environ.get("SEGBENCH_CACHE")
    return Path(root).expanduser() / "data" if root else Path.home() / ".cache" / "segbench" / "data"


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(handle)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        make_shareable(tmp)  # mkstemp makes 0600; split files and caches are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class HashMemo:
    """Remembers each file's SHA-256 with its (size, mtime, ctime, inode) so unchanged files are not re-read.

    Any write to a file changes its ctime, so a changed file is always hashed again.
    """

    def __init__(self, cache_root: Path, dataset_root: Path) -> None:
        name = _sha256_text(str(dataset_root.resolve()))[:20]
        self.path = cache_root / f"v{CACHE_VERSION}" / "hashes" / f"{name}.json"
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def hash(self, path: Path) -> str:
        try:
            st = path.stat()
            signature = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            known = self.entries.get(str(path))
            if known and known[:4] == signature:
                return known[4]
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise DataError(f"{path}: cannot read the file ({exc}); check that it exists and is readable") from None
        self.entries[str(path)] = [*signature, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            with contextlib.suppress(OSError):  # the memo only saves time
                atomic_write_bytes(self.path, lambda h: h.write(json.dumps(self.entries).encode()))


class DecodeCache:
    """Decoded arrays on disk: one .npz per item (keyed by its files' hashes) and one pack per item list.

    Both live under a directory keyed by the load parameters; the pack makes a repeated load one read.
    """

    def __init__(self, root: Path, params: dict[str, Any]) -> None:
        self.root = Path(root)
        self.dir = self.root / f"v{CACHE_VERSION}" / _sha256_text(json.dumps(params, sort_keys=True))[:20]
        self._warned = False

    def item_path(self, image_hash: str, mask_hash: str | None) -> Path:
        key = _sha256_text(f"{image_hash}:{mask_hash}")
        return self.dir / "items" / key[:2] / f"{key}.npz"

    def pack_path(self, items: list[_Item]) -> Path:
        key = _sha256_text("\n".join(f"{it.item_id}\t{it.image_hash}\t{it.mask_hash}" for it in items))
        return self.dir / "packs" / f"{key}.npz"

    @staticmethod
    def read(path: Path) -> dict[str, np.ndarray] | None:
        """The arrays cached at ``path``; None when absent, or damaged (warned, removed: decoded again)."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            warnings.warn(f"data cache file {path} is damaged ({exc}); decoding again and rewriting it", stacklevel=2)
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def write(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        try:
            atomic_write_bytes(path, lambda handle: np.savez(handle, **arrays))
        except OSError as exc:
            if not self._warned:
                message = f"cannot write the data cache under {self.root} ({exc}); the next load decodes again"
                warnings.warn(message, stacklevel=2)
            self._warned = True


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(mask.ravel())


def _unpack(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.unpackbits(packed, count=int(np.prod(shape))).view(bool).reshape(shape)


@dataclass
class _Item:
    item_id: str
    image_path: Path
    mask_path: Path | None
    image_hash: str = ""
    mask_hash: str | None = None
    arrays: dict[str, np.ndarray] | None = None
    cached: bool = False


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc}); check that it exists and is readable") from None


def _decode(item: _Item, size: int, mode: str, threshold: float | None) -> dict[str, np.ndarray]:
    """Decode, validate and resize one item's image and mask."""
    image = decode_image(_read(item.image_path), item.image_path)
    warn_if_constant(image, item.image_path)
    image_small, box = resize_image(image, size, mode)
    arrays = {"image": image_small, "box": np.array(box, np.int32), "native_shape": np.array(image.shape, np.int32)}
    if item.mask_path is not None:
        mask = decode_mask(_read(item.mask_path), item.mask_path, threshold)
        if mask.shape != image.shape:
            raise DataError(
                f"{item.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is "
                f"{image.shape[1]}x{image.shape[0]} (width x height); masks must match their images"
            )
        arrays["mask"] = _pack(resize_mask(mask, size, mode))
        arrays["native_mask"] = _pack(mask)
    return arrays


def _map(function: Any, items: list[_Item], label: str) -> list[str]:
    """Run ``function(item)`` on threads (decoders release the GIL); return the DataError messages."""

    def run(item: _Item) -> str | None:
        try:
            function(item)
        except DataError as exc:
            return str(exc)
        return None

    problems = []
    with (
        ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool,
        progress.task(label, len(items), unit="file") as bar,
    ):
        for problem in pool.map(run, items):
            bar.advance()
            if problem:
                problems.append(problem)
    return problems


def decode_items(
    items: list[_Item], cache_root: Path, root: Path, size: int, mode: str, threshold: float | None
) -> dict[str, np.ndarray]:
    """Stacked arrays of ``items``: from the pack when nothing changed, else per item (cached or decoded).

    Every file is validated before anything is written; on a problem a DataError lists them all.
    """
    memo = HashMemo(cache_root, root)

    def hash_item(item: _Item) -> None:
        item.image_hash = memo.hash(item.image_path)
        item.mask_hash = memo.hash(item.mask_path) if item.mask_path is not None else None

    problems = _map(hash_item, items, "hashing dataset files")
    if problems:
        raise_problems(root, problems)
    cache = DecodeCache(cache_root, {"size": size, "resize": mode, "mask_threshold": threshold})
    pack_path = cache.pack_path(items)
    pack = cache.read(pack_path)
    if pack is None:

        def prepare(item: _Item) -> None:
            item.arrays = cache.read(cache.item_path(item.image_hash, item.mask_hash))
            item.cached = item.arrays is not None
            if item.arrays is None:
                item.arrays = _decode(item, size, mode, threshold)

        problems = _map(prepare, items, "decoding dataset")
        if problems:
            raise_problems(root, problems)
        for item in items:
            if not item.cached:
                cache.write(cache.item_path(item.image_hash, item.mask_hash), item.arrays)
        pack = _stack(items)
        cache.write(pack_path, pack)
    memo.save()
    return pack


def _stack(items: list[_Item]) -> dict[str, np.ndarray]:
    """One dict of stacked arrays for all items (labeled ones, with masks, first)."""
    labeled = [it.arrays for it in items if "mask" in it.arrays]
    natives = [a["native_mask"] for a in labeled]
    return {
        "images": np.stack([it.arrays["image"] for it in items]),
        "boxes": np.stack([it.arrays["box"] for it in items]),
        "native_shapes": np.stack([it.arrays["native_shape"] for it in items]),
        "masks": np.stack([a["mask"] for a in labeled]),
        "native_masks": np.concatenate(natives),
        "native_offsets": np.cumsum([0] + [len(n) for n in natives]),
    }


# --------------------------------------------------------------------------- assembling a SegDataset


def fingerprint_of(ids: Iterable[str], content_hashes: dict[str, str]) -> str:
    """SHA-256 over the sorted ids and their content hashes."""
    text = "".join(f"{i}\t{content_hashes[i]}\n" for i in sorted(ids))
    return hashlib.sha256(text.encode()).hexdigest()


def mask_fingerprint_of(ids: Iterable[str], mask_hashes: dict[str, str], threshold: float | None = None) -> str:
    """SHA-256 over the sorted ids and their masks' hashes (and the threshold that binarises them).

    Kept apart from :func:`fingerprint_of`, which splits and generator caches key on (images only):
    a run records both, so that changed masks are noticed too.
    """
    text = f"threshold\t{threshold}\n" + "".join(f"{i}\t{mask_hashes[i]}\n" for i in sorted(ids))
    return hashlib.sha256(text.encode()).hexdigest()


def select_strata(ids: list[str], strata: list[str], include: list[str] | None, where: str) -> list[int]:
    """Positions of the ids whose stratum is in ``include`` (all when None); unknown strata are an error."""
    if not include:
        return list(range(len(ids)))
    present = sorted(set(strata))
    unknown = [s for s in include if s not in present]
    if unknown:
        raise DataError(
            f"--include-strata {','.join(include)}: {where} has no stratum {unknown[0]!r}; "
            f"its strata are {', '.join(present)}"
        )
    return [k for k, s in enumerate(strata) if s in include]


def assemble_dataset(
    *,
    name: str,
    ids: list[str],
    native_images: list[np.ndarray],
    native_masks: list[np.ndarray],
    strata: list[str],
    cases: list[str],
    content_hashes: dict[str, str],
    options: dict[str, Any],
    spacing: float | None = None,
) -> SegDataset:
    """Build a SegDataset from native-resolution arrays (used by in-memory sources like the phantom)."""
    size, mode = int(options["image_size"]), options.get("resize") or "squash"
    keep = select_strata(ids, strata, options.get("include_strata"), f"dataset {name!r}")
    images, masks, boxes = [], [], []
    for k in keep:
        image, box = resize_image(native_images[k], size, mode)
        images.append(image)
        masks.append(resize_mask(native_masks[k], size, mode))
        boxes.append(box)
    kept = [ids[k] for k in keep]
    hashes = {i: content_hashes[i] for i in kept}
    mask_hashes = {ids[k]: hashlib.sha256(np.packbits(native_masks[k]).tobytes()).hexdigest() for k in keep}
    return SegDataset(
        name=name,
        ids=kept,
        images=torch.from_numpy(np.stack(images))[:, None],
        masks=torch.from_numpy(np.stack(masks))[:, None],
        strata=[strata[k] for k in keep],
        cases=[cases[k] for k in keep],
        native_masks=[np.asarray(native_masks[k], bool) for k in keep],
        boxes=boxes,
        unlabeled=torch.zeros((0, 1, size, size), dtype=torch.uint8),
        unlabeled_ids=[],
        content_hashes=hashes,
        fingerprint=fingerprint_of(kept, hashes),
        mask_fingerprint=mask_fingerprint_of(kept, mask_hashes),
        spacing=spacing,
        options={**{k: v for k, v in options.items() if k != "cache_dir"}, "resize": mode},
    )


def load_folder(root: Path, options: dict[str, Any]) -> SegDataset:
    """Load a dataset folder with ``options`` (image_size, resize, include_strata, mask_threshold, cache_dir)."""
    scan = scan_folder(root)
    config = scan.config
    size = int(options["image_size"])
    mode = options.get("resize") or config.resize or "squash"
    if mode not in RESIZE_MODES:
        raise DataError(f"--resize {mode!r} is not one of {', '.join(RESIZE_MODES)}")
    threshold = options.get("mask_threshold")
    threshold = config.mask_threshold if threshold is None else float(threshold)
    include = options.get("include_strata") or config.include_strata
    ids = sorted(scan.images)
    ids = [ids[k] for k in select_strata(ids, [scan.strata[i] for i in ids], include, str(scan.root))]
    labeled = [_Item(i, scan.images[i], scan.masks[i]) for i in ids]
    unlabeled = [_Item(i, p, None) for i, p in sorted(scan.unlabeled.items())]
    cache_root = Path(options.get("cache_dir") or default_cache_dir())
    pack = decode_items(labeled + unlabeled, cache_root, scan.root, size, mode, threshold)

    n = len(labeled)
    # One unpack of all native masks, then zero-copy views (each mask starts on a byte boundary).
    bits = np.unpackbits(pack["native_masks"]).view(bool)
    starts, shapes = pack["native_offsets"] * 8, pack["native_shapes"]
    native_masks = [bits[starts[k] : starts[k] + h * w].reshape(h, w) for k, (h, w) in enumerate(shapes[:n].tolist())]
    masks = np.unpackbits(pack["masks"], axis=1, count=size * size).view(bool).reshape(n, 1, size, size)
    hashes = {it.item_id: it.image_hash for it in labeled + unlabeled}
    resolved = {
        "source": "folder",
        "path": str(scan.root.resolve()),
        "image_size": size,
        "resize": mode,
        "include_strata": list(include) if include else None,
        "mask_threshold": threshold,
        "channels": options.get("channels") or config.channels,
        "normalisation": options.get("normalisation") or config.normalisation,
    }
    return SegDataset(
        name=config.name or scan.root.resolve().name,
        ids=ids,
        images=torch.from_numpy(pack["images"][:n, None].copy()),
        masks=torch.from_numpy(masks),
        strata=[scan.strata[i] for i in ids],
        cases=[scan.cases[i] for i in ids],
        native_masks=native_masks,
        boxes=[tuple(int(v) for v in box) for box in pack["boxes"][:n]],
        unlabeled=torch.from_numpy(pack["images"][n:, None].copy()),
        unlabeled_ids=[it.item_id for it in unlabeled],
        content_hashes=hashes,
        fingerprint=fingerprint_of(ids, hashes),
        mask_fingerprint=mask_fingerprint_of(ids, {it.item_id: str(it.mask_hash) for it in labeled}, threshold),
        spacing=config.spacing,
        options=resolved,
    )


# --------------------------------------------------------------------------- the entry point


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or spec.startswith((".", "~"))


def resolve_source(spec: str | None, registry: Any = None) -> tuple[DatasetSource, str | None]:
    """The registered source for ``spec`` and the spec to give it: a folder path, a registered name
    (``name:key=value,...``) or, for None, the default ``phantom``."""
    from harness.plugins import PluginError, get_registry

    registry = registry or get_registry()
    if spec is None or not spec.strip():
        return registry.get("dataset", DEFAULT_SOURCE)(), None
    path = Path(spec).expanduser()
    if path.is_dir():
        return registry.get("dataset", "folder")(), str(path)
    if path.exists():
        raise DataError(f"--data {spec}: is a file; pass the dataset folder that holds images/ and masks/0/")
    if _looks_like_path(spec):
        raise DataError(f"--data {spec}: folder {path} does not exist; check the path")
    name = spec.split(":", 1)[0]
    try:
        return registry.get("dataset", name)(), spec
    except PluginError:
        known = ", ".join(registry.names("dataset")) or "none"
        raise DataError(
            f"--data {spec}: no folder of that name here and no installed dataset {name!r} "
            f"(installed: {known}); pass a dataset folder path"
        ) from None


def load_dataset(
    spec: str | None,
    *,
    image_size: int,
    resize: str | None = None,
    include_strata: list[str] | None = None,
    mask_threshold: float | None = None,
    cache_dir: Path | None = None,
    registry: Any = None,
    params: dict[str, Any] | None = None,
) -> SegDataset:
    """Load a dataset by folder path or registered name (None: the phantom) at ``image_size``.

    ``resize`` (squash|pad), ``include_strata`` and ``mask_threshold`` override the folder's
    dataset.toml; ``params`` are source parameters (e.g. the phantom's count and size).
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"image size {image_size!r} is invalid; use an integer >= 8, e.g. 128")
    if resize is not None and resize not in RESIZE_MODES:
        raise DataError(f"--resize {resize!r} is not one of {', '.join(RESIZE_MODES)}")
    if mask_threshold is not None and not 0 <= mask_threshold < math.inf:
        raise DataError(f"--mask-threshold {mask_threshold}: use a finite number >= 0")
    source, source_spec = resolve_source(spec, registry)
    options = {
        "image_size": image_size,
        "resize": resize,
        "include_strata": list(include_strata) if include_strata else None,
        "mask_threshold": mask_threshold,
        "cache_dir": Path(cache_dir) if cache_dir else None,
        "params": dict(params or {}),
    }
    return source.load(source_spec, options)


def summarize(dataset: SegDataset) -> dict[str, Any]:
    """Counts per stratum, empty masks and the native size range of a dataset (JSON-ready)."""

    def sizes(positions: list[int]) -> dict[str, list[int]]:
        hw = np.array([dataset.native_masks[k].shape for k in positions])
        return {
            "width": [int(hw[:, 1].min()), int(hw[:, 1].max())],
            "height": [int(hw[:, 0].min()), int(hw[:, 0].max())],
        }

    empty = [not bool(m.any()) for m in dataset.native_masks]
    strata = {}
    for stratum in sorted(set(dataset.strata)):
        positions = [k for k, s in enumerate(dataset.strata) if s == stratum]
        n_empty = sum(empty[k] for k in positions)
        strata[stratum] = {"images": len(positions), "empty_masks": n_empty, **sizes(positions)}
    return {
        "name": dataset.name,
        "images": len(dataset),
        "empty_masks": sum(empty),
        "unlabeled_images": len(dataset.unlabeled_ids),
        "cases": len(set(dataset.cases)),
        **sizes(list(range(len(dataset)))),
        "strata": strata,
        "fingerprint": dataset.fingerprint,
        "options": dataset.options,
    }
