"""Independent near-duplicate leak check of a split file, on the dataset's full-resolution files.

For every fold, counts the test images that have a near-duplicate in the same fold's train or val
part (or, with an ``unlabeled/`` folder, among the unlabeled images the fold would train on). The
descriptor is deliberately not segbench's: a difference hash of the whole full-resolution file
(grey, resized to 17 x 16, 256 bits), near-duplicates at Hamming distance <= 20. The result of
such a hash depends on the resampling filter, so a pair counts when any of PIL's filters (nearest,
box, bilinear, Hamming, bicubic, Lanczos) puts it within the threshold.

    python benchmarks/check_split_leaks.py ../shared/data/busi SPLIT.json [--threshold 20] [--json]

Exit status 1 when any test image has a twin across the boundary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


FILTERS = ("NEAREST", "BOX", "BILINEAR", "HAMMING", "BICUBIC", "LANCZOS")


def file_dhashes(path: Path) -> list[np.ndarray]:
    """256-bit difference hashes of the whole file (grey, 17 x 16, right neighbour brighter), one per filter."""
    with Image.open(path) as image:
        grey = image.convert("L")
        out = []
        for name in FILTERS:
            small = np.asarray(grey.resize((17, 16), getattr(Image.Resampling, name)), np.int16)
            out.append((small[:, 1:] > small[:, :-1]).ravel())
    return out


def hashes_of(folder: Path) -> dict[str, list[np.ndarray]]:
    return {p.stem: file_dhashes(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in EXTENSIONS}


def min_distance(a: list[list[np.ndarray]], b: list[list[np.ndarray]]) -> np.ndarray:
    """len(a) x len(b) smallest Hamming distance over the filters (same filter on both sides)."""
    return np.min([hamming(np.stack([x[f] for x in a]), np.stack([y[f] for y in b])) for f in range(len(FILTERS))], 0)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.int32), b.astype(np.int32)
    return a @ (1 - b).T + (1 - a) @ b.T


def leaks(split: dict, images: dict, unlabeled: dict, threshold: int) -> list[dict]:
    """One record per (fold, test image, twin) with the twin's part and the distance."""
    out = []
    unlabeled_ids = sorted(unlabeled)
    for index, fold in enumerate(split["folds"]):
        test = [i for i in fold["test"] if i in images]
        others = {"train": fold["train"], "val": fold["val"] if fold["val"] != fold["test"] else []}
        test_bits = [images[i] for i in test]
        for part, ids in others.items():
            ids = [i for i in ids if i in images]
            if not ids:
                continue
            dist = min_distance(test_bits, [images[i] for i in ids])
            for r, c in zip(*np.nonzero(dist <= threshold), strict=True):
                out.append({"fold": index, "test": test[r], "twin": ids[c], "part": part, "distance": int(dist[r, c])})
        if unlabeled_ids:
            excluded = set(fold.get("unlabeled_excluded", []))
            pool = [i for i in unlabeled_ids if i not in excluded]
            if pool:
                dist = min_distance(test_bits, [unlabeled[i] for i in pool])
                for r, c in zip(*np.nonzero(dist <= threshold), strict=True):
                    out.append(
                        {
                            "fold": index,
                            "test": test[r],
                            "twin": pool[c],
                            "part": "unlabeled",
                            "distance": int(dist[r, c]),
                        }
                    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="dataset folder with images/ (and optionally unlabeled/)")
    parser.add_argument("split", type=Path, help="a split file written by `bench split`")
    parser.add_argument("--threshold", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print every leak as JSON")
    args = parser.parse_args(argv)
    split = json.loads(args.split.read_text())
    images = hashes_of(args.data / "images")
    unlabeled = hashes_of(args.data / "unlabeled") if (args.data / "unlabeled").is_dir() else {}
    found = leaks(split, images, unlabeled, args.threshold)
    leaked = sorted({(r["fold"], r["test"]) for r in found})
    if args.json:
        print(json.dumps({"test_images_with_a_twin": len(leaked), "leaks": found}, indent=2))
    else:
        for r in found:
            print(f"fold {r['fold']}: test {r['test']!r} ~ {r['part']} {r['twin']!r} (distance {r['distance']})")
        print(f"{len(leaked)} test image(s) with a twin at Hamming <= {args.threshold} in their fold's other parts")
    return 1 if leaked else 0


if __name__ == "__main__":
    sys.exit(main())
