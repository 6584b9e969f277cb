"""Pack a dataset folder small enough to travel to a GPU machine (the device tool carries 64 MiB).

Images are scaled so that their longer side is at most ``--max-side`` pixels and stored as grey
JPEG (quality ``--quality``); masks are scaled with nearest-neighbour sampling and stored as PNG.
groups.csv and dataset.toml are copied; a PACKED.md records what was done. The result is a
different dataset (its fingerprint, near-duplicate hashes and native resolution change): results
on it are labelled with its own name and fingerprint.

    python benchmarks/pack_dataset.py ../shared/data/busi .gpu/busi --max-side 320
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image


def scaled_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def pack(source: Path, dest: Path, max_side: int, quality: int) -> int:
    """Write the packed copy of ``source`` to ``dest`` (which must not exist); returns its size in bytes."""
    if dest.exists():
        raise SystemExit(f"{dest} exists; remove it or choose another destination")
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks" / "0").mkdir(parents=True)
    for image_path in sorted((source / "images").iterdir()):
        with Image.open(image_path) as img:
            size = scaled_size(*img.size, max_side)
            grey = img.convert("L").resize(size, Image.Resampling.LANCZOS)
            grey.save(tmp / "images" / (image_path.stem + ".jpg"), quality=quality)
        mask_path = next((source / "masks" / "0").glob(image_path.stem + ".*"))
        with Image.open(mask_path) as mask:
            mask.convert("L").resize(size, Image.Resampling.NEAREST).save(
                tmp / "masks" / "0" / (image_path.stem + ".png")
            )
    for extra in ("groups.csv", "dataset.toml"):
        if (source / extra).exists():
            shutil.copy2(source / extra, tmp / extra)
    (tmp / "PACKED.md").write_text(
        f"Packed from {source.resolve().name} by benchmarks/pack_dataset.py: longer side <= {max_side} px, "
        f"grey JPEG quality {quality}, masks nearest-neighbour PNG.\n"
    )
    tmp.rename(dest)
    return sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--quality", type=int, default=95)
    args = parser.parse_args()
    size = pack(args.source, args.dest, args.max_side, args.quality)
    print(f"packed {args.source} -> {args.dest}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
