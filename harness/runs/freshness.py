"""Is a run's recorded data still the data on disk? Fingerprints and split hashes compared.

A run id hashes the configuration (the data *path*), not the data, so that ids stay stable while
a dataset folder is being fixed. The data a run was trained on is recorded in its run.json
(``data.fingerprint``, ``data.mask_fingerprint``, ``data.split_hash``); before a finished run is
reported as current, or an interrupted one resumes, these are compared with the data as it is now.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from harness.api import SegDataset
from harness.errors import UserError
from harness.runs.store import CURVES_FILE, METRICS_FILE

#: the flag that retrains a run whose data changed (``bench run``)
RETRAIN_FLAG = "--retrain-changed"
#: what a retrain clears from the run directory (run.json and run.log stay: the run's story)
RUN_OUTPUTS = ("checkpoints", METRICS_FILE, CURVES_FILE)


class StaleRunError(UserError):
    """A run was trained (or started) on data that has changed since."""


def identity(dataset: SegDataset, split_hash: str) -> dict[str, str]:
    """What a run records to tell its data apart: the dataset's fingerprints and the split's hash."""
    return {"fingerprint": dataset.fingerprint, "mask_fingerprint": dataset.mask_fingerprint, "split_hash": split_hash}


def _changed_ids(split_file: str | None, dataset: SegDataset) -> str:
    """Ids whose image changed, added or missing, told from the per-id hashes a split file keeps (or "")."""
    try:
        old = json.loads(Path(str(split_file)).read_text())["dataset"]["content_hashes"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    new = dataset.content_hashes
    parts = []
    for label, ids in (
        ("changed", sorted(i for i in old.keys() & new.keys() if old[i] != new[i])),
        ("missing now", sorted(old.keys() - new.keys())),
        ("new", sorted(set(dataset.ids) - old.keys())),
    ):
        if ids:
            parts.append(f"{label} {len(ids)}: {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}")
    return f" (images {'; '.join(parts)})" if parts else ""


def changes(recorded: dict[str, Any] | None, current: dict[str, str], dataset: SegDataset) -> list[str]:
    """What differs between a run's recorded ``data`` block and ``current`` (empty: nothing, or nothing recorded).

    A value the record lacks (a run made before it was recorded) is not compared.
    """
    recorded = recorded or {}
    found = []
    old, new = recorded.get("fingerprint"), current["fingerprint"]
    if old and old != new:
        found.append(f"dataset fingerprint {old[:12]} -> {new[:12]}{_changed_ids(recorded.get('split_file'), dataset)}")
    old, new = recorded.get("mask_fingerprint"), current["mask_fingerprint"]
    if old and new and old != new:
        found.append(f"mask fingerprint {old[:12]} -> {new[:12]} (masks or mask_threshold changed)")
    old, new = recorded.get("split_hash"), current["split_hash"]
    if old and old != new:
        found.append(f"split hash {old[:12]} -> {new[:12]} (split file {recorded.get('split_file')})")
    return found


def refusal(run_name: str, what: str, found: list[str]) -> StaleRunError:
    """The one message for a run whose data changed: what changed and the ways out."""
    return StaleRunError(
        f"run {run_name} {what} on other data than now: {'; '.join(found)}. Its results are not current. "
        f"Rerun with {RETRAIN_FLAG} to train it again on the current data (its checkpoints and metrics are "
        "replaced), restore the old data, or give a new --out to keep both."
    )


def folder_signature(data: str | None) -> tuple | None:
    """(name, size, mtime, ctime, inode) of every file under a dataset folder; None for other sources.

    Any write to a file changes its ctime, so an equal signature means unchanged files.
    """
    root = Path(data).expanduser() if data else None
    if root is None or not root.is_dir():
        return None
    found = []
    for path in sorted(root.rglob("*")):
        try:
            st = path.stat()
        except OSError:
            continue
        found.append((str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(found)


def clear_outputs(run_dir: Path) -> None:
    """Remove what training wrote (checkpoints, metrics, curves) so that the run starts from scratch."""
    for name in RUN_OUTPUTS:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
