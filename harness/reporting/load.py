"""Loading a results store into pandas: one row per test image of every finished run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.runs.store import METRICS_FILE, RUN_FILE, read_run, run_dirs

# --------------------------------------------------------------------------- reading into pandas
# The reading side: ``load`` is the one entry point for tables, figures and users' own analysis.

#: run.json ``config`` keys copied as columns as they are
CONFIG_COLUMNS = (
    "ssl", "backbone", "generator", "data", "labeled", "fold", "draw", "seed", "preset", "image_size",
    "in_channels", "resize", "include_strata", "normalisation", "unlabeled", "n_synthetic", "eval_resolution",
    "published_metrics", "deterministic",
)  # fmt: skip
#: run.json ``config.train`` keys copied as columns (``precision`` is renamed: it is also a metric)
TRAIN_COLUMNS = {
    "iterations": "iterations",
    "labeled_batch": "labeled_batch",
    "unlabeled_batch": "unlabeled_batch",
    "lr": "lr",
    "ramp_horizon": "ramp_horizon",
    "ramp_fraction": "ramp_fraction",
    "precision": "train_precision",
}
#: parameter blocks of run.json ``config``: kept as a JSON string and flattened as ``<prefix>.<name>``
PARAM_BLOCKS = {"method_params": "method", "backbone_params": "backbone", "generator_params": "generator"}


class ResultsError(UserError):
    """A results directory or one of its files cannot be read."""


def _scalar(value: Any) -> Any:
    """Lists become comma-joined strings so that columns stay hashable; None stays None."""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return value


def run_record(run: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One finished run's configuration and provenance as flat columns (see :func:`load`)."""
    config = run.get("config", {})
    data = run.get("data", {})
    train = run.get("train", {})
    split = config.get("split", {}) or {}
    record: dict[str, Any] = {
        "run": run.get("name", run_dir.name),
        "run_id": run.get("run_id"),
        "run_dir": str(run_dir),
    }
    record.update({key: _scalar(config.get(key)) for key in CONFIG_COLUMNS})
    if record.get("resize") is None:  # the dataset's default decided: run.json records what was used
        record["resize"] = data.get("resize")
    record.update({column: config.get("train", {}).get(key) for key, column in TRAIN_COLUMNS.items()})
    record.update(
        protocol=data.get("protocol") or split.get("protocol"),
        k=split.get("k"),
        selection_is_test=bool(data.get("selection_is_test", False)),
        dataset=data.get("name"),
        fingerprint=data.get("fingerprint"),
        mask_fingerprint=data.get("mask_fingerprint"),
        split_file=data.get("split_file") or split.get("file"),
        split_hash=data.get("split_hash"),
        n_labeled=data.get("n_labeled"),
        uses_extra_labels=bool((run.get("generator") or {}).get("uses_extra_labels", False)),
        generator_cache=(run.get("generator") or {}).get("cache_dir"),
        best_step=train.get("best_step"),
        train_seconds=train.get("seconds"),
        images_per_second=train.get("images_per_second"),
        segbench_version=(run.get("versions") or {}).get("segbench"),
        metric_policy=json.dumps(run.get("metric_policy") or {}, sort_keys=True),
        # the defaults the run was resolved against (tables label runs by what differs from them)
        defaults=json.dumps(run["defaults"], sort_keys=True, default=str) if run.get("defaults") else None,
    )
    for block, prefix in PARAM_BLOCKS.items():
        params = config.get(block) or {}
        record[block] = json.dumps(params, sort_keys=True, default=str)
        record.update({f"{prefix}.{name}": _scalar(value) for name, value in sorted(params.items())})
    return record


def _finished_runs(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    runs = []
    for run_dir in run_dirs(root):
        try:
            run = read_run(run_dir)
        except (OSError, json.JSONDecodeError) as exc:
            raise ResultsError(
                f"{run_dir / RUN_FILE} is not readable JSON ({exc}); delete that run directory and rerun it"
            ) from None
        if run and run.get("status") == "done":
            runs.append((run_dir, run))
    return runs


def unfinished_runs(path: Path | str) -> list[tuple[str, str]]:
    """(run name, why) for every run directory under ``path`` that is not done (failed, running, unreadable)."""
    out = []
    for run_dir in run_dirs(_check_root(path)):
        try:
            run = read_run(run_dir) or {}
        except (OSError, json.JSONDecodeError):
            out.append((run_dir.name, "run.json unreadable"))
            continue
        status = run.get("status", "no run.json")
        if status != "done":
            error = run.get("error")
            out.append((str(run.get("name", run_dir.name)), f"{status}: {error}" if error else str(status)))
    return out


def _check_root(path: Path | str) -> Path:
    root = Path(path)
    if not root.exists():
        raise ResultsError(f"results directory {root} does not exist; give the --out folder of `bench run`")
    return root


def runs_frame(path: Path | str) -> Any:
    """One row per finished run under ``path``: the configuration columns of :func:`load`, no images."""
    import pandas as pd

    root = _check_root(path)
    return pd.DataFrame([run_record(run, run_dir) for run_dir, run in _finished_runs(root)])


def split_clusters(split_file: Path | str | None) -> dict[str, str]:
    """``{image id: group}`` from a split file (harness.data.splits); empty when it has none or is unreadable.

    A group is the union of near-duplicate clusters and cases (one patient), the unit that never
    straddles train and test. The file's ``groups`` map lists the images in groups of two or more;
    older files may only have ``duplicates.clusters`` (lists of ids).
    """
    if not split_file:
        return {}
    try:
        split = json.loads(Path(split_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(split, dict):
        return {}
    groups = split.get("groups")
    if isinstance(groups, dict) and groups:
        return {str(i): str(g) for i, g in groups.items()}
    clusters = (split.get("duplicates") or {}).get("clusters") if isinstance(split.get("duplicates"), dict) else None
    if isinstance(clusters, list):
        return {str(i): str(members[0]) for members in clusters if members for i in members}
    return {}


def _read_metrics(run_dir: Path) -> Any:
    import pandas as pd

    path = run_dir / METRICS_FILE
    if not path.exists():
        raise ResultsError(f"{path} is missing although {run_dir / RUN_FILE} says the run is done; rerun it")
    try:
        frame = pd.read_csv(path, dtype={"id": str, "stratum": str, "checkpoint": str})
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path} is not a readable metrics table ({exc}); rerun the run") from None
    for column in ("lesion", "pred_empty"):
        if column in frame:
            frame[column] = frame[column].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))
    return frame


def load(path: Path | str, *, checkpoint: str | None = "best") -> Any:
    """Per-image rows of every finished run under ``path`` (a results directory or one run directory).

    By default only the ``best`` checkpoint's rows, as ``bench table`` uses; ``checkpoint="last"``
    for the other, ``None`` for both. Rows include lesion-free images, whose ``dice`` is 1 (predicted
    empty) or 0 by the empty-mask policy: the tables average ``dice``, ``iou`` and ``hd95`` over
    lesion images only (``frame[frame.lesion]``), per run first, then over runs. For exactly the
    numbers of ``bench table`` use :func:`harness.reporting.summary`.

    Columns: the metrics.csv columns (id, stratum, lesion, pred_empty, height, width, resolution,
    dice, iou, hd95, assd, precision, recall, specificity, accuracy, [published_*], checkpoint,
    checkpoint_step); the run's configuration (run, run_id, run_dir, ssl, backbone, generator, data,
    labeled, fold, draw, seed, preset, image_size, ..., iterations, lr, precision, protocol,
    selection_is_test, dataset, fingerprint, split_file, split_hash, uses_extra_labels, ...); its
    parameters as JSON strings (method_params, backbone_params, generator_params) and flattened
    (``method.<name>``, ``backbone.<name>``, ``generator.<name>``); and ``cluster``, the image's group
    in the split file (near-duplicate cluster or case; the id itself where it is in no group).
    Running and failed runs are left out.
    """
    import pandas as pd

    root = _check_root(path)
    if checkpoint not in (None, "best", "last"):
        raise ResultsError(f"checkpoint {checkpoint!r}: use best or last")
    frames = []
    clusters_by_file: dict[str, dict[str, str]] = {}
    for run_dir, run in _finished_runs(root):
        frame = _read_metrics(run_dir)
        if checkpoint is not None:
            frame = frame[frame["checkpoint"] == checkpoint]
        record = run_record(run, run_dir)
        split_file = record["split_file"] or ""
        if split_file not in clusters_by_file:
            clusters_by_file[split_file] = split_clusters(split_file)
        clusters = clusters_by_file[split_file]
        frame = frame.assign(cluster=[clusters.get(i, i) for i in frame["id"]])
        config = pd.DataFrame([record] * len(frame), index=frame.index)
        frames.append(pd.concat([frame, config], axis=1))
    if not frames:
        raise ResultsError(f"no finished runs under {root}: train some with `bench run --out {root}`")
    return pd.concat(frames, ignore_index=True, sort=False)
