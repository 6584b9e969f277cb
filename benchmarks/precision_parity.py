"""Test-Dice parity of bf16 autocast and fp32: mean ± std over seeds, per preset and precision.

    # the runs (phantom, one thread each, at most two at a time):
    OMP_NUM_THREADS=1 nice -n 10 bench run --preset quick --ssl mgcc --seeds 0,1,2 --precision fp32 --out P/quick-fp32
    OMP_NUM_THREADS=1 nice -n 10 bench run --preset quick --ssl mgcc --seeds 0,1,2 --precision bf16 --out P/quick-bf16
    python benchmarks/precision_parity.py P/quick-fp32 P/quick-bf16 [--out benchmarks/results/precision-parity.json]

Reads every finished run.json under the given folders and groups them by (preset, iterations,
precision that ran); Dice is the test set's mean lesion Dice of the ``best`` checkpoint (and of
``last``). Runs still training are listed as unfinished. Writes the table as JSON (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any


def collect(folders: list[Path]) -> tuple[dict[tuple, list[dict[str, Any]]], list[str]]:
    """Finished runs grouped by (preset, iterations, precision); names of unfinished runs."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    unfinished = []
    for folder in folders:
        for path in sorted(folder.glob("*/run.json")):
            run = json.loads(path.read_text())
            cfg = run["config"]
            if run.get("status") != "done":
                unfinished.append(f"{path.parent} ({run.get('status')}, precision {cfg['train']['precision']})")
                continue
            key = (cfg["preset"], cfg["train"]["iterations"], cfg["train"]["precision"])
            groups[key].append(
                {
                    "run": str(path.parent),
                    "seed": cfg["seed"],
                    "ssl": cfg["ssl"],
                    "dice_best": run["test"]["best"]["dice"],
                    "dice_last": run["test"]["last"]["dice"],
                    "train_seconds": round(run["train"]["seconds"], 1),
                    "images_per_second": round(run["train"]["images_per_second"], 2),
                    "threads": run.get("threads"),
                }
            )
    return groups, unfinished


def _spread(values: list[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else float("nan"),
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "precision-parity.json")
    parser.add_argument("--note", default="", help="how the runs were made (shortened, load, ...)")
    args = parser.parse_args(argv)
    groups, unfinished = collect(args.folders)
    table = []
    for (preset, iterations, precision), runs in sorted(groups.items()):
        row = {"preset": preset, "iterations": iterations, "precision": precision, "seeds": [r["seed"] for r in runs]}
        row["dice_best"] = _spread([r["dice_best"] for r in runs])
        row["dice_last"] = _spread([r["dice_last"] for r in runs])
        row["runs"] = runs
        table.append(row)
        print(
            f"{preset:7s} T={iterations:<5d} {precision}: test Dice (best) {row['dice_best']['mean']:.4f} ± "
            f"{row['dice_best']['std']:.4f} over {len(runs)} seed(s); last {row['dice_last']['mean']:.4f}"
        )
    for name in unfinished:
        print(f"unfinished: {name}")
    record = {
        "benchmark": "test Dice (lesion images, native resolution) of bf16 autocast vs fp32 training, mean ± std "
        "over seeds",
        "note": args.note,
        "table": table,
        "unfinished": unfinished,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
