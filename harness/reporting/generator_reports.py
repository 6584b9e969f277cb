"""The memorisation reports of ``bench generate`` found in a results directory, as rows for a page.

``bench generate --cache-dir RUNS/generators --out RUNS/...`` scores the generator a run used (same
cache key: the fit is reused, not repeated) and writes ``report.json`` and ``nearest.png``; the HTML
site and the Markdown page both show them beside the generator's samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def number(value: Any, digits: int = 3) -> str:
    """A value as a page shows it: '–' for missing or NaN, yes/no for booleans, ``digits`` decimals for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return str(value)


def memorisation_reports(root: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """``{generator cache key: (folder, report.json)}`` of the ``bench generate`` reports under ``root``."""
    found = {}
    for path in sorted(root.rglob("report.json")):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and report.get("cache_key") and "memorisation" in report:
            found[report["cache_key"]] = (path.parent, report)
    return found


def memorisation_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, value) rows of one report: near-copies, the threshold and the similarities it compares."""
    mem = report["memorisation"]
    rows = [
        ("near-copies", f"{mem.get('near_copies')} of {mem.get('n_samples')} samples"),
        ("threshold", f"{number(mem.get('threshold'))} (held-out quantile {mem.get('quantile')})"),
        ("similarity to nearest training image, median", number((mem.get("samples") or {}).get("median"))),
        ("held-out real images, median", number((mem.get("heldout") or {}).get("median"))),
        ("samples above the held-out 95th percentile", str(mem.get("above_heldout_p95"))),
    ]
    if report.get("fid") is not None:
        rows.append(("FID", number(report["fid"], 2)))
    return rows
