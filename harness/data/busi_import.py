"""Convert the raw BUSI release into the dataset-folder layout (``bench data import-busi SRC DST``).

The release stores ``SRC/<class>/<class> (n).png`` with masks ``<class> (n)_mask.png`` and, for
extra lesions, ``_mask_1.png``, ``_mask_2.png``, ... (optionally inside a ``Dataset_BUSI_with_GT``
folder). Images are copied byte for byte to ``DST/images/``; each image's masks are merged with a
logical OR (any non-zero pixel is foreground) into one 0/255 PNG in ``DST/masks/0/``. Everything
is checked first and written into a temporary folder that is renamed to DST at the end, so a
failed import leaves nothing behind.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data.datasets import DECODE_ERRORS, IMAGE_EXTENSIONS, DataError, raise_problems
from harness.osutil import make_shareable

MASK_NAME = re.compile(r"(?P<id>.+?)_mask(?:_(?P<n>\d+))?")


@dataclass
class BusiImport:
    """What an import did: images per class and the images whose masks were merged."""

    destination: Path
    per_class: dict[str, int] = field(default_factory=dict)
    merged: dict[str, int] = field(default_factory=dict)  # id -> number of mask files

    @property
    def n_images(self) -> int:
        return sum(self.per_class.values())


def _class_dirs(src: Path) -> list[Path]:
    """Folders of ``src`` that hold images; descends into a single wrapper folder."""
    dirs = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    with_images = [d for d in dirs if any(f.suffix.lower() in IMAGE_EXTENSIONS for f in d.iterdir())]
    if not with_images and len(dirs) == 1:
        return _class_dirs(dirs[0])
    return with_images


def _merged_mask(paths: list[Path], size: tuple[int, int], problems: list[str]) -> bytes | None:
    """One 0/255 PNG: the OR of the masks in ``paths``, all of image size ``size`` (width, height)."""
    merged = np.zeros((size[1], size[0]), bool)
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()
                array = np.asarray(img.convert("L"))
        except DECODE_ERRORS as exc:
            problems.append(f"{path}: unreadable or truncated mask ({exc}); re-download the file")
            return None
        if array.shape != merged.shape:
            problems.append(
                f"{path}: mask is {array.shape[1]}x{array.shape[0]} but its image is {size[0]}x{size[1]}; "
                "masks must match their images"
            )
            return None
        merged |= array > 0
    out = io.BytesIO()
    Image.fromarray(merged.astype(np.uint8) * 255, mode="L").save(out, format="PNG", optimize=True)
    return out.getvalue()


def import_busi(src: Path, dst: Path) -> BusiImport:
    """Convert the BUSI release at ``src`` into a new dataset folder ``dst`` (which must be absent or empty)."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise DataError(f"{src} is not a folder; pass the unpacked BUSI release (benign/, malignant/, normal/)")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(f"{dst} exists and is not empty; choose a new destination folder (nothing was changed)")
    images: dict[str, Path] = {}
    masks: dict[str, list[Path]] = {}
    classes: dict[str, str] = {}
    problems: list[str] = []
    for folder in _class_dirs(src):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            match = MASK_NAME.fullmatch(path.stem)
            if match:
                masks.setdefault(match["id"], []).append(path)
            elif path.stem in images:
                problems.append(f"{path}: id {path.stem!r} also in {images[path.stem]}; rename one of them")
            else:
                images[path.stem] = path
                classes[path.stem] = folder.name
    if not images:
        raise DataError(f"{src}: no BUSI images found (expected <class>/<class> (n).png with _mask.png files)")
    for item_id in sorted(masks.keys() - images.keys()):
        problems.append(f"{masks[item_id][0]}: mask without image {item_id!r}; remove it or restore the image")
    merged: dict[str, bytes] = {}
    for item_id in sorted(images):
        path = images[item_id]
        if item_id not in masks:
            problems.append(f"{path}: image without mask (expected {item_id}_mask.png next to it)")
            continue
        try:
            with Image.open(path) as img:
                size = img.size
                img.verify()
        except DECODE_ERRORS as exc:
            problems.append(f"{path}: unreadable or truncated image ({exc}); re-download the file")
            continue
        data = _merged_mask(sorted(masks[item_id]), size, problems)
        if data is not None:
            merged[item_id] = data
    if problems:
        raise_problems(src, problems)

    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
        make_shareable(tmp)  # the imported dataset folder: 0755 like any folder, not mkdtemp's 0700
    except OSError as exc:
        raise DataError(f"cannot create {dst} ({exc}); choose a writable destination") from None
    try:
        (tmp / "images").mkdir()
        (tmp / "masks" / "0").mkdir(parents=True)
        for item_id, path in images.items():
            shutil.copyfile(path, tmp / "images" / path.name)
            (tmp / "masks" / "0" / f"{item_id}.png").write_bytes(merged[item_id])
        if dst.exists():
            dst.rmdir()  # empty, checked above
        os.rename(tmp, dst)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"writing {dst} failed ({exc}); nothing was left behind: free space, then retry") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BusiImport(
        destination=dst,
        per_class=dict(sorted(Counter(classes.values()).items())),
        merged={i: len(m) for i, m in sorted(masks.items()) if len(m) > 1},
    )
