"""Paper-style result tables from the per-image frame of :func:`harness.reporting.load.load`.

Rows are method labels (SSL method + generator + backbone, plus the settings that tell apart two
configurations of one method), column groups are labeled fractions, cells are mean ± std over runs
(folds, label draws, seeds) of each run's mean over its test images. A store that mixes settings
(dataset, image size, iterations, protocol, ...) gives one table per setting: such numbers are never
averaged together. :func:`build_tables` computes; the ``render_*`` functions only format.
"""

from __future__ import annotations

import functools
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table
from rich.text import Text

from harness.errors import UserError
from harness.reporting.stats import (
    EXACT_SIGN_FLIP_MAX,
    LOWER_IS_BETTER,
    Gain,
    PairedRun,
    collapse_clusters,
    hierarchical_gain,
    holm,
    known_metric,
    paired_differences,
    run_means,
    sign_flip_p,
    wilcoxon_p,
)

DEFAULT_METRICS = ("dice", "hd95", "iou", "empty_correct")
METRIC_TITLES = {
    "dice": "Dice",
    "iou": "IoU",
    "hd95": "HD95",
    "assd": "ASSD",
    "precision": "Precision",
    "recall": "Recall",
    "specificity": "Specificity",
    "accuracy": "Accuracy",
    "dice_all": "Dice (all)",
    "empty_correct": "Empty",
}
DECIMALS = {"hd95": 1, "assd": 1}
#: settings that must agree for numbers to share a table
SETTING_KEYS = (
    "dataset", "fingerprint", "mask_fingerprint", "include_strata", "protocol", "k", "selection_is_test", "image_size",
    "iterations", "resize", "eval_resolution",
)  # fmt: skip
#: run settings that tell two configurations of one method apart (besides its parameters)
ROW_KEYS = (
    "preset", "in_channels", "normalisation", "unlabeled", "n_synthetic", "labeled_batch", "unlabeled_batch", "lr",
    "ramp_horizon", "ramp_fraction", "train_precision",
)  # fmt: skip
PARAM_PREFIXES = ("method.", "backbone.", "generator.")
#: a run and its reference run share these (and the table's setting)
PAIR_KEYS = ("fold", "labeled", "draw", "seed")
ALPHA = 0.05
#: marks a cell whose image-level test (Wilcoxon on cluster means) is significant after Holm
DAGGER = "†"
#: marks a cell whose run-level test (sign-flip over matched run pairs) is significant after Holm
RUN_MARK = "*"
IMAGE_TEST = "Wilcoxon signed-rank on cluster means"
EXTRA_LABELS = "‡"
FORMATS = ("rich", "markdown", "latex", "csv")


class ReportError(UserError):
    """A table option or the results it reads are invalid; the message names the value."""


# --------------------------------------------------------------------------- labels


def base_label(ssl: str, generator: str, backbone: str) -> str:
    """``"mgcc + ldm / cmunet"``; the generator is left out when it is ``none``."""
    method = ssl if generator in ("none", "", None) else f"{ssl} + {generator}"
    return f"{method} / {backbone}"


def canonical(value: Any) -> str:
    """A comparable text form: 7 == 7.0 == "7"; None == NaN; lists as comma-joined text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "None"
    if isinstance(value, list | tuple):
        return ",".join(canonical(v) for v in value)
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:g}" if math.isfinite(number) else str(value)


@functools.lru_cache(maxsize=64)
def _component_defaults(kind: str, name: str, preset: str) -> dict[str, Any]:
    try:
        from harness.api import params_dict, resolve_params
        from harness.plugins import get_registry

        component = get_registry().get(kind, name)
        return params_dict(resolve_params(component, preset, {}, f"{kind} {name}"))
    except Exception:  # a plugin that no longer loads only costs the default-hiding in labels
        return {}


@functools.lru_cache(maxsize=8)
def _run_defaults(preset: str) -> dict[str, Any]:
    try:
        from harness.config.presets import get_preset
        from harness.runs.resolve import setting_defaults

        return setting_defaults(get_preset(preset))
    except Exception:  # the runner may be unimportable in a reading-only install
        return {}


def recorded_defaults(run: pd.Series) -> dict[str, Any] | None:
    """The defaults a run wrote to run.json (``defaults``) as flat columns; None for runs made before that."""
    text = run.get("defaults")
    if not isinstance(text, str) or not text:
        return None
    recorded = json.loads(text)
    out = dict(recorded.get("run", {}))
    for block, prefix in (
        ("method_params", "method."),
        ("backbone_params", "backbone."),
        ("generator_params", "generator."),
    ):
        out.update({prefix + name: value for name, value in (recorded.get(block) or {}).items()})
    return out


def registry_defaults(run: pd.Series) -> dict[str, Any]:
    """Default values of a run's settings and parameters (``method.<name>`` ...) for its preset.

    Read from the run's run.json; only runs made before it recorded them resolve them through the registry.
    """
    recorded = recorded_defaults(run)
    if recorded is not None:
        return recorded
    preset = str(run.get("preset"))
    out = dict(_run_defaults(preset))
    for kind, prefix, column in (
        ("ssl_method", "method.", "ssl"),
        ("backbone", "backbone.", "backbone"),
        ("generator", "generator.", "generator"),
    ):
        params = _component_defaults(kind, str(run.get(column)), preset)
        out.update({prefix + name: value for name, value in params.items()})
    return out


Defaults = Callable[[pd.Series], dict[str, Any]]


def method_labels(runs: pd.DataFrame, defaults: Defaults | None = registry_defaults) -> pd.Series:
    """The row label of every run (one row of ``runs`` per run).

    Runs of one method, generator and backbone whose other settings differ anywhere (method or
    backbone parameters, unlabeled pool, ...) get those settings appended where they differ from the
    defaults: ``"mgcc / cmunet (consistency=0.1)"``. ``defaults=None`` shows every differing value.
    """
    bases = pd.Series(
        [base_label(r.ssl, r.generator, r.backbone) for r in runs.itertuples()], index=runs.index, dtype=object
    )
    keys = [c for c in runs.columns if c in ROW_KEYS or c.startswith(PARAM_PREFIXES)]
    labels = bases.copy()
    for base, part in runs.groupby(bases, sort=False):
        varying = [c for c in keys if part[c].map(canonical).nunique() > 1]
        if not varying:
            continue
        short = [c.split(".", 1)[-1] for c in varying]
        names = [s if short.count(s) == 1 else c for s, c in zip(short, varying, strict=True)]
        for index, run in part.iterrows():
            known = defaults(run) if defaults else {}
            extras = [
                f"{name}={canonical(run[c])}"
                for name, c in zip(names, varying, strict=True)
                if c not in known or canonical(known[c]) != canonical(run[c])
            ]
            labels[index] = f"{base} ({', '.join(extras)})" if extras else base
    # two configurations can only share a label if formatting hid their difference: number them
    config_keys = runs[keys].apply(lambda r: json.dumps([canonical(v) for v in r]), axis=1) if keys else bases
    for label, part in runs.groupby(labels, sort=False):
        configs = list(dict.fromkeys(config_keys[part.index]))
        if len(configs) > 1:
            for index in part.index:
                labels[index] = f"{label} #{configs.index(config_keys[index]) + 1}"
    return labels


def row_order(runs: pd.DataFrame) -> list[str]:
    """Supervised rows first, then by method, generator (none first) and backbone, in label order."""
    keyed = runs.drop_duplicates("label").assign(
        _sup=lambda d: d["ssl"] != "supervised", _gen=lambda d: d["generator"] != "none"
    )
    return list(keyed.sort_values(["_sup", "ssl", "_gen", "generator", "backbone", "label"])["label"])


# --------------------------------------------------------------------------- the table model


@dataclass
class Cell:
    """One metric of one row and labeled fraction."""

    mean: float
    std: float
    n: int
    best: bool = False
    mark: str = ""


@dataclass
class Comparison:
    """One row's paired comparison with its reference on one metric and labeled fraction."""

    gain: Gain
    image_p: float = math.nan
    image_p_holm: float = math.nan
    run_p: float = math.nan
    run_p_holm: float = math.nan
    run_test: str = ""


@dataclass
class ResultTable:
    """One table: a setting (and optionally an image group), ready to render in any format."""

    title: str
    group: str | None
    fractions: list[float]
    metrics: list[str]
    rows: list[str]
    cells: dict[tuple[str, float, str], Cell]
    counts: dict[tuple[str, float], int]
    gain_metric: str | None = None
    reference: str | None = None
    #: the gain of ``gain_metric`` per (row, fraction), or "ref" for the reference row
    gains: dict[tuple[str, float], Gain | str] = field(default_factory=dict)
    #: (raw, Holm) p of the image-level test of ``gain_metric`` per (row, fraction)
    pvalues: dict[tuple[str, float], tuple[float, float]] = field(default_factory=dict)
    #: every shown metric's comparison per (row, fraction, metric)
    comparisons: dict[tuple[str, float, str], Comparison] = field(default_factory=dict)
    #: runs left out of the table: (run, why)
    missing: list[tuple[str, str]] = field(default_factory=list)
    #: rows whose generator used extra labels (marked with a double dagger)
    flagged: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _run_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop_duplicates("run").set_index("run", drop=False)


def _setting_key(run: pd.Series) -> tuple[str, ...]:
    return tuple(canonical(run.get(k)) for k in SETTING_KEYS)


def _check_options(frame: pd.DataFrame, metrics: Sequence[str], checkpoint: str, by: str | None) -> None:
    unknown = [m for m in metrics if not known_metric(m)]
    if unknown:
        raise ReportError(
            f"--metrics: unknown metric {unknown[0]!r}; use any of {', '.join(METRIC_TITLES)} "
            "(or published_* when recorded)"
        )
    if not metrics:
        raise ReportError("--metrics is empty; e.g. --metrics dice,hd95")
    if checkpoint not in ("best", "last"):
        raise ReportError(f"--checkpoint {checkpoint!r}: use best or last")
    if by not in (None, "group"):
        raise ReportError(f"--by {by!r}: the only split is 'group' (image group / stratum)")
    missing = [m for m in metrics if m.startswith("published_") and m not in frame]
    if missing:
        raise ReportError(
            f"--metrics {missing[0]}: not recorded in these runs (train with bench run --published-metrics)"
        )


def build_tables(
    frame: pd.DataFrame,
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    checkpoint: str = "best",
    compare: str | None = None,
    significance: bool = False,
    by: str | None = None,
    defaults: Defaults | None = registry_defaults,
    resamples: int = 2000,
    missing: Sequence[tuple[str, str]] = (),
) -> list[ResultTable]:
    """The tables of ``frame`` (from :func:`harness.reporting.load.load`): one per setting, per group with ``by``.

    ``compare``: ``None`` = the supervised row of the same backbone when one exists, ``"supervised"``,
    ``"none"``, or a row label. Each shown metric is compared with the reference: a paired gain with a
    cluster-bootstrap interval (:func:`compare_runs`), an image-level Wilcoxon on cluster means and a
    run-level sign-flip test, each Holm-corrected over the table's comparisons. ``significance``
    marks the cells whose tests are significant. ``missing``: (run, why) of runs that are not in
    ``frame`` (failed, running: :func:`harness.reporting.load.unfinished_runs`), named under each table.
    """
    metrics = list(dict.fromkeys(metrics))
    _check_options(frame, metrics, checkpoint, by)
    frame = frame[frame["checkpoint"] == checkpoint]
    if frame.empty:
        raise ReportError(f"no per-image rows for checkpoint {checkpoint!r} in these runs")
    runs = _run_frame(frame)
    runs["label"] = method_labels(runs, defaults)
    frame = frame.assign(label=frame["run"].map(runs["label"]))
    settings = runs.apply(_setting_key, axis=1)
    tables = []
    for key in dict.fromkeys(settings):
        setting_runs = runs[settings == key]
        part = frame[frame["run"].isin(setting_runs.index)]
        groups: list[str | None] = [None] if by is None else sorted(part["stratum"].dropna().unique())
        for group in groups:
            sub = part if group is None else part[part["stratum"] == group]
            sub_runs = setting_runs[setting_runs.index.isin(sub["run"].unique())]
            tables.append(
                _one_table(sub, sub_runs, metrics, checkpoint, compare, significance, group, resamples, list(missing))
            )
            tables[-1].notes += _data_version_notes(runs, setting_runs)
    return tables


def data_versions(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Datasets that appear in ``runs`` with more than one fingerprint: ``{name: [fingerprint, ...]}``.

    The fingerprint of a run is its data fingerprint, plus its mask fingerprint where recorded.
    """
    if "fingerprint" not in runs:
        return {}
    keys = runs.apply(_fingerprint_text, axis=1)
    names = runs.apply(_data_name, axis=1)
    versions = {name: sorted(set(keys[names == name])) for name in dict.fromkeys(names)}
    return {name: found for name, found in versions.items() if len(found) > 1}


def _fingerprint_text(run: pd.Series) -> str:
    data, masks = run.get("fingerprint"), run.get("mask_fingerprint")
    text = str(data)[:12] if isinstance(data, str) and data else "unrecorded"
    return text + (f"/masks {masks[:8]}" if isinstance(masks, str) and masks else "")


def _data_version_notes(runs: pd.DataFrame, setting_runs: pd.DataFrame) -> list[str]:
    """Say so when the data of this table's runs changed between runs (they are split into tables)."""
    notes = []
    for name, found in data_versions(runs).items():
        here = sorted(
            set(setting_runs[setting_runs.apply(_data_name, axis=1) == name].apply(_fingerprint_text, axis=1))
        )
        if here:
            notes.append(
                f"WARNING: dataset {name} changed between runs: these results hold {len(found)} versions of it "
                f"(fingerprints {', '.join(found)}), each in its own table; this table holds runs on {', '.join(here)}."
            )
    return notes


def _cells(
    frame: pd.DataFrame, runs: pd.DataFrame, metrics: list[str], fractions: list[float], rows: list[str]
) -> tuple[dict, dict, list[str]]:
    cells: dict[tuple[str, float, str], Cell] = {}
    counts = runs.groupby(["label", "labeled"]).size().to_dict()
    kept = []
    for metric in metrics:
        means = run_means(frame, metric)
        for (label, fraction), part in runs.groupby(["label", "labeled"]):
            values = means.reindex(part.index).dropna().to_numpy()
            if len(values):
                std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
                cells[(label, fraction, metric)] = Cell(float(values.mean()), std, len(values))
        if any((r, f, metric) in cells for r in rows for f in fractions):
            kept.append(metric)
    for metric in kept:
        for fraction in fractions:
            column = [cells[(r, fraction, metric)] for r in rows if (r, fraction, metric) in cells]
            if len(column) < 2:
                continue
            shown = [round(c.mean, DECIMALS.get(metric, 3)) for c in column]
            if len(set(shown)) == 1:  # every row ties: nothing stands out
                continue
            best = min(shown) if metric in LOWER_IS_BETTER else max(shown)
            for cell, value in zip(column, shown, strict=True):
                cell.best = value == best
    return cells, counts, kept


def _reference_rows(runs: pd.DataFrame, rows: list[str], compare: str | None) -> dict[str, str]:
    """``{row label: reference row label}`` for the rows that have a reference.

    ``compare`` is a row label, or a method name (``mean-teacher``): then each row is compared with
    that method's row of the same backbone. ``None`` means ``supervised`` when there is one.
    """
    if compare is not None and compare.lower() == "none":
        return {}
    wanted = "".join((compare or "").split()).lower()
    match = [r for r in rows if "".join(r.split()).lower() == wanted]
    if match:
        return {r: match[0] for r in rows}
    method = (wanted or "supervised").replace("_", "-")
    reference = runs[runs["ssl"].str.lower().str.replace("_", "-") == method]
    if reference.empty:
        if compare is None:
            return {}
        methods = ", ".join(sorted(runs["ssl"].unique()))
        raise ReportError(
            f"--compare {compare!r} is neither a row nor a method of this table; methods: {methods}; "
            f"rows: {'; '.join(rows)}; or --compare none"
        )
    per_backbone: dict[str, str] = {}
    for backbone, part in reference.groupby("backbone"):
        labels = sorted(part["label"].unique(), key=lambda s: (len(s), s))
        per_backbone[backbone] = labels[0]
    row_backbone = runs.drop_duplicates("label").set_index("label")["backbone"]
    return {r: per_backbone[row_backbone[r]] for r in rows if row_backbone[r] in per_backbone}


def _test_set(run: pd.Series) -> str:
    """The test set a run was scored on: its split file (by hash) and fold."""
    return f"{canonical(run.get('split_hash'))}/fold {canonical(run.get('fold'))}"


def _matched_pairs(
    runs: pd.DataFrame, row: str, ref: str, fraction: float, by_run: dict[str, pd.DataFrame]
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(run, reference run) pairs of ``row`` at ``fraction``, and (run, why) for runs left unpaired."""
    mine = runs[(runs["label"] == row) & (runs["labeled"] == fraction)]
    theirs = runs[(runs["label"] == ref) & (runs["labeled"] == fraction)]
    ref_by_key = {tuple(canonical(r[k]) for k in PAIR_KEYS): name for name, r in theirs.iterrows()}
    pairs, unpaired = [], []
    for name, run in mine.iterrows():
        key = tuple(canonical(run[k]) for k in PAIR_KEYS)
        partner = ref_by_key.get(key)
        if partner is None or name not in by_run or partner not in by_run:
            where = ", ".join(f"{k} {v}" for k, v in zip(PAIR_KEYS, key, strict=True))
            unpaired.append((str(name), f"no finished {ref} run with {where}: not in the gain"))
            continue
        pairs.append((str(name), str(partner)))
    return pairs, unpaired


def compare_runs(pairs: list[tuple[pd.DataFrame, pd.DataFrame, str]], metric: str, resamples: int) -> Comparison | None:
    """The gain of ``metric`` over (run frame, reference frame, test set) pairs with both tests (raw p).

    The public entry point for other reports: the interval of :func:`hierarchical_gain`, the
    image-level Wilcoxon on cluster means and the run-level sign-flip test over the pairs' gains.
    """
    paired, diffs = [], []
    for mine, theirs, test_set in pairs:
        d = paired_differences(mine, theirs, metric)
        if d.empty:
            continue
        diffs.append(d)
        paired.append(PairedRun(test_set, d["cluster"].astype(str).to_numpy(), d["diff"].to_numpy(float)))
    if not paired:
        return None
    gain = hierarchical_gain(paired, resamples=resamples)
    # image-level: one value per (test set, cluster), the mean over its images and the run pairs
    merged = pd.concat(
        [d.assign(cluster=f"{p.test_set}|" + d["cluster"].astype(str)) for d, p in zip(diffs, paired, strict=True)]
    )
    run_p, run_test = sign_flip_p(np.array([p.gain for p in paired]))
    return Comparison(gain, image_p=wilcoxon_p(collapse_clusters(merged)), run_p=run_p, run_test=run_test)


def _comparisons(
    frame: pd.DataFrame, runs: pd.DataFrame, refs: dict[str, str], fractions: list[float], metrics: list[str],
    resamples: int,
) -> tuple[dict[tuple[str, float, str], Comparison | str], list[tuple[str, str]]]:  # fmt: skip
    by_run = dict(tuple(frame.groupby("run", sort=False)))
    out: dict[tuple[str, float, str], Comparison | str] = {}
    unpaired: list[tuple[str, str]] = []
    for row, ref in refs.items():
        for fraction in fractions:
            present = ((runs["label"] == row) & (runs["labeled"] == fraction)).any()
            if row == ref:
                out.update({(row, fraction, m): "ref" for m in metrics if present})
                continue
            names, left = _matched_pairs(runs, row, ref, fraction, by_run)
            unpaired += left
            pairs = [(by_run[a], by_run[b], _test_set(runs.loc[a])) for a, b in names]
            for metric in metrics:
                result = compare_runs(pairs, metric, resamples) if pairs else None
                if result is not None:
                    out[(row, fraction, metric)] = result
    # Holm over every comparison of this table, separately for each test
    found = [c for c in out.values() if isinstance(c, Comparison)]
    for attr in ("image_p", "run_p"):
        adjusted = holm([getattr(c, attr) for c in found])
        for c, a in zip(found, adjusted, strict=True):
            setattr(c, f"{attr}_holm", float(a))
    return out, unpaired


def _one_table(
    frame: pd.DataFrame,
    runs: pd.DataFrame,
    metrics: list[str],
    checkpoint: str,
    compare: str | None,
    significance: bool,
    group: str | None,
    resamples: int,
    missing: list[tuple[str, str]],
) -> ResultTable:
    fractions = sorted(float(f) for f in runs["labeled"].unique())
    rows = row_order(runs)
    cells, counts, kept = _cells(frame, runs, metrics, fractions, rows)
    refs = _reference_rows(runs, rows, compare)
    if significance and not refs:
        raise ReportError("--significance needs a reference row: add supervised runs or name one with --compare ROW")
    gain_metric = "dice" if "dice" in kept else (kept[0] if kept else None)
    comparisons: dict = {}
    unpaired: list[tuple[str, str]] = []
    if refs and gain_metric:
        comparisons, unpaired = _comparisons(frame, runs, refs, fractions, kept, resamples)
    gains = {(r, f): (c if c == "ref" else c.gain) for (r, f, m), c in comparisons.items() if m == gain_metric}
    pvalues = {
        (r, f): (c.image_p, c.image_p_holm)
        for (r, f, m), c in comparisons.items()
        if m == gain_metric and isinstance(c, Comparison) and not math.isnan(c.image_p)
    }
    if significance:
        for (row, fraction, metric), c in comparisons.items():
            cell = cells.get((row, fraction, metric))
            if cell is None or not isinstance(c, Comparison):
                continue
            cell.mark = (DAGGER if c.image_p_holm < ALPHA else "") + (RUN_MARK if c.run_p_holm < ALPHA else "")
    first = runs.iloc[0]
    title = f"{_data_name(first)}: {int(first['image_size'])} px, T = {int(first['iterations'])}"
    if group is not None:
        title += f", group {group}"
    table = ResultTable(
        title=title,
        group=group,
        fractions=fractions,
        metrics=kept,
        rows=rows,
        cells=cells,
        counts=counts,
        gain_metric=gain_metric if refs else None,
        reference=_reference_text(refs, compare),
        gains=gains,
        pvalues=pvalues,
        comparisons={k: c for k, c in comparisons.items() if isinstance(c, Comparison)},
        missing=list(dict.fromkeys([*missing, *unpaired])),
        flagged=set(runs.loc[runs["uses_extra_labels"].fillna(False).astype(bool), "label"]),
    )
    table.notes = _notes(table, frame, runs, checkpoint, significance, resamples)
    return table


def _data_name(run: pd.Series) -> str:
    name = run.get("dataset")
    return str(name) if isinstance(name, str) and name else str(run.get("data"))


def _reference_text(refs: dict[str, str], compare: str | None) -> str | None:
    if not refs:
        return None
    targets = sorted(set(refs.values()))
    if (
        len(targets) == 1
        and compare is not None
        and "".join(targets[0].split()).lower() == "".join(compare.split()).lower()
    ):
        return targets[0]
    method = compare or "supervised"
    return f"the {method} row of the same backbone (here " + "; ".join(targets) + ")"


# --------------------------------------------------------------------------- footnotes


def _policy_summary(runs: pd.DataFrame) -> str:
    policies = runs["metric_policy"].dropna().unique() if "metric_policy" in runs else []
    text = (
        "Metrics are computed per image and averaged over images; a pixel is foreground where sigmoid(logit) > 0.5; "
        "empty masks: both empty gives Dice 1 and HD95 0, exactly one empty gives Dice 0 and HD95 = the image "
        "diagonal."
    )
    if len(policies) > 1:
        text += " WARNING: these runs were scored under different metric policies (see each run.json)."
    return text


def _notes(
    table: ResultTable, frame: pd.DataFrame, runs: pd.DataFrame, checkpoint: str, significance: bool, resamples: int
) -> list[str]:
    first = runs.iloc[0]
    notes = []
    lesion = [METRIC_TITLES.get(m, m) for m in table.metrics if m not in ("empty_correct", "dice_all")]
    what = f"{', '.join(lesion)} over test images with a lesion" if lesion else ""
    if "empty_correct" in table.metrics:
        what += ("; " if what else "") + "Empty = share of lesion-free test images predicted empty"
    if "dice_all" in table.metrics:
        what += ("; " if what else "") + "Dice (all) over every test image"
    notes.append(
        "Mean ± std over n runs (folds × label draws × seeds) of each run's mean over its test images "
        f"({what}); best per column in bold."
    )
    if first["selection_is_test"]:
        protocol = f"Protocol: {first['protocol']} (paper-like): the validation set is the test set, so " + (
            "best-checkpoint numbers are optimistic (the checkpoint was chosen on the test images)."
            if checkpoint == "best"
            else "the last checkpoint involves no selection on it."
        )
    else:
        k = first.get("k")
        folds = f"{int(k)}-fold " if k is not None and not pd.isna(k) else ""
        protocol = (
            f"Protocol: {first['protocol']} ({folds}cross-validation with a validation set kept apart from each "
            "fold's test set)."
        )
    notes.append(protocol)
    notes.append(
        "Checkpoint: best validation Dice." if checkpoint == "best" else "Checkpoint: last (after the final iteration)."
    )
    strata = first.get("include_strata")
    data = f"data {_data_name(first)}" + (f" ({strata} only)" if isinstance(strata, str) else "")
    notes.append(
        f"{data}; images resized to {int(first['image_size'])}×{int(first['image_size'])} ({first['resize']}), "
        f"scored at {first['eval_resolution']} resolution; T = {int(first['iterations'])} iterations; "
        "HD95 in pixels (mm where the dataset gives a spacing)."
    )
    notes.append(_policy_summary(runs))
    if table.reference and table.comparisons:  # a table of the reference row alone has no gain column
        clustered = "cluster" in frame and bool((frame["cluster"] != frame["id"]).any())
        unit = (
            "split-file group (near-duplicate cluster or case)"
            if clustered
            else "test image (the split file groups none)"
        )
        title = METRIC_TITLES.get(table.gain_metric or "", table.gain_metric)
        notes.append(
            f"Δ{title}: paired gain over {table.reference}, each run against the reference run of the same fold, "
            "labeled fraction, label draw and seed, averaged over the run pairs of each test set, then over test "
            "sets; sd = standard deviation of the run-level gain between seeds and label draws on the same test "
            "set (training noise; – where each test set has one run pair)."
        )
        notes.append(
            f"[95% CI]: the resampled unit is the {unit}, drawn with replacement within each fold ({resamples} "
            "resamples) and shared by every run pair on that fold; it holds the trained networks fixed."
        )
        n = len(table.comparisons)
        notes.append(
            f"p img: two-sided {IMAGE_TEST} (one value per {unit.split(' (')[0]} and fold); p run: two-sided "
            f"sign-flip permutation test of the run-level gains of the matched run pairs (exact up to "
            f"{EXACT_SIGN_FLIP_MAX} pairs; 5 pairs cannot reach {ALPHA:g}); both Holm-corrected over the {n} "
            "comparisons (rows x fractions x metrics) of this table; n.s. = Holm p >= "
            f"{ALPHA:g}."
        )
    if significance and table.comparisons:
        notes.append(
            f"{DAGGER} image-level test significant, {RUN_MARK} run-level test significant (Holm p < {ALPHA:g}, "
            "each metric tested on its own values)."
        )
    if table.missing:
        named = "; ".join(f"{name} ({why})" for name, why in table.missing)
        notes.append(f"Not in the table: {named}.")
    if table.flagged:
        notes.append(
            f"{EXTRA_LABELS} Uses extra labels: the conditional generator of {', '.join(sorted(table.flagged))} was "
            "fitted with the "
            "image-level classes of all training images, not only the labeled fraction."
        )
    versions = runs["segbench_version"].dropna().unique() if "segbench_version" in runs else []
    if len(versions) > 1:
        notes.append(f"Runs were made by different segbench versions: {', '.join(sorted(map(str, versions)))}.")
    return notes


# --------------------------------------------------------------------------- formatting


def fraction_text(fraction: float) -> str:
    """0.125 -> ``"12.5%"``."""
    return f"{fraction * 100:g}%"


def _number(value: float, metric: str) -> str:
    return f"{value:.{DECIMALS.get(metric, 3)}f}"


def cell_text(cell: Cell | None, metric: str, pm: str = "±") -> str:
    """``"0.712 ± 0.021"`` (the mean alone for one run); ``"–"`` when there is no value."""
    if cell is None:
        return "–"
    text = _number(cell.mean, metric)
    if not math.isnan(cell.std):
        text += f" {pm} {_number(cell.std, metric)}"
    return text


def p_text(p: float) -> str:
    """``"p 0.012"``, ``"p 3e-05"`` (below 0.001) or ``"n.s."`` (at or above the significance level)."""
    if math.isnan(p):
        return "–"
    if p >= ALPHA:
        return "n.s."
    return f"p {p:.0e}" if p < 0.001 else f"p {p:.3f}"


def gain_text(gain: Gain | str | None, comparison: Comparison | None = None) -> str:
    """``"+0.030 [+0.025, +0.035] sd 0.010; img p 0.004, run n.s."`` (the tests when given)."""
    if gain is None:
        return "–"
    if isinstance(gain, str):
        return gain
    if math.isnan(gain.mean):
        return "–"
    mean, low, high = (round(v, 3) + 0.0 for v in (gain.mean, gain.low, gain.high))  # + 0.0: no "-0.000"
    text = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
    text += f" sd {gain.train_sd:.3f}" if not math.isnan(gain.train_sd) else " sd –"
    if comparison is not None:
        text += f"; img {p_text(comparison.image_p_holm)}, run {p_text(comparison.run_p_holm)}"
    return text


def _row_label(table: ResultTable, row: str) -> str:
    return f"{row} {EXTRA_LABELS}" if row in table.flagged else row


def _columns(table: ResultTable) -> list[tuple[str, str | None]]:
    """(kind, metric) per column of one fraction group: metrics, then n, then the gain."""
    cols: list[tuple[str, str | None]] = [("metric", m) for m in table.metrics] + [("n", None)]
    if table.gain_metric:
        cols.append(("gain", table.gain_metric))
    return cols


def _header(kind: str, metric: str | None, arrows: tuple[str, str] = ("↑", "↓")) -> str:
    if kind == "n":
        return "n"
    title = METRIC_TITLES.get(metric or "", metric or "")
    if kind == "gain":
        return f"Δ{title} [95% CI] sd; p"
    return f"{title} {arrows[1] if metric in LOWER_IS_BETTER else arrows[0]}"


def _value(table: ResultTable, row: str, fraction: float, kind: str, metric: str | None) -> tuple[str, bool]:
    """(text, bold) of one body cell."""
    if kind == "n":
        n = table.counts.get((row, fraction))
        return (str(n) if n else "–"), False
    if kind == "gain":
        comparison = table.comparisons.get((row, fraction, table.gain_metric or ""))
        return gain_text(table.gains.get((row, fraction)), comparison), False
    cell = table.cells.get((row, fraction, metric or ""))
    return cell_text(cell, metric or "") + (cell.mark if cell else ""), bool(cell and cell.best)


@dataclass
class GridCell:
    """One body cell as every renderer shows it: its text, bold when best, and what it holds."""

    text: str
    bold: bool
    fraction: float
    kind: str  # metric | n | gain
    metric: str | None


def table_grid(table: ResultTable) -> tuple[list[tuple[float, list[str]]], list[tuple[str, list[GridCell]]]]:
    """The table as header groups ``[(fraction, [column titles])]`` and rows ``[(row label, cells)]``.

    For renderers outside this module (the HTML report): the same texts as Markdown and LaTeX.
    """
    cols = _columns(table)
    header = [(f, [_header(k, m) for k, m in cols]) for f in table.fractions]
    body = []
    for row in table.rows:
        cells = []
        for fraction in table.fractions:
            for kind, metric in cols:
                text, bold = _value(table, row, fraction, kind, metric)
                cells.append(GridCell(text, bold, fraction, kind, metric))
        body.append((_row_label(table, row), cells))
    return header, body


def render_markdown(tables: Sequence[ResultTable]) -> str:
    """GitHub Markdown: a bold title, a pipe table, then the notes."""
    out = []
    for table in tables:
        cols = _columns(table)
        header = ["Method"] + [f"{_header(k, m)} ({fraction_text(f)})" for f in table.fractions for k, m in cols]
        lines = [f"**{table.title}**", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
        for row in table.rows:
            values = [_row_label(table, row).replace("|", "\\|")]
            for fraction in table.fractions:
                for kind, metric in cols:
                    text, bold = _value(table, row, fraction, kind, metric)
                    values.append(f"**{text}**" if bold else text)
            lines.append("| " + " | ".join(values) + " |")
        lines += ["", *(f"- {note}" for note in table.notes)]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{"}
_TEX.update({"}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "×": r"$\times$"})
_TEX.update({"Δ": r"$\Delta$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "–": "--", "↑": r"$\uparrow$"})
_TEX.update({"↓": r"$\downarrow$", ">": r"$>$", "<": r"$<$"})


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and map the few symbols the tables use to math mode."""
    return "".join(_TEX.get(ch, ch) for ch in text)


def render_latex(tables: Sequence[ResultTable], label: str = "tab:segbench") -> str:
    """A booktabs ``table`` environment per table (needs ``\\usepackage{booktabs}``), notes below."""
    out = ["% segbench results table: needs \\usepackage{booktabs}"]
    for i, table in enumerate(tables):
        cols = _columns(table)
        width = len(cols)
        spec = "l" + "".join(" " + "r" * width for _ in table.fractions)
        group_head = " & ".join(
            rf"\multicolumn{{{width}}}{{c}}{{{tex_escape(fraction_text(f))} labeled}}" for f in table.fractions
        )
        rules = " ".join(
            rf"\cmidrule(lr){{{2 + j * width}-{1 + (j + 1) * width}}}" for j in range(len(table.fractions))
        )
        heads = " & ".join(tex_escape(_header(k, m)) for _ in table.fractions for k, m in cols)
        lines = [
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            rf"\caption{{{tex_escape(table.title)}: mean $\pm$ std over runs.}}",
            rf"\label{{{label}{'' if len(tables) == 1 else f'-{i + 1}'}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            rf" & {group_head} \\",
            rules,
            rf"Method & {heads} \\",
            r"\midrule",
        ]
        for row in table.rows:
            values = [tex_escape(_row_label(table, row))]
            for fraction in table.fractions:
                for kind, metric in cols:
                    text, bold = _value(table, row, fraction, kind, metric)
                    text = tex_escape(text)
                    values.append(rf"\textbf{{{text}}}" if bold else text)
            lines.append(" & ".join(values) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip", r"\begin{minipage}{\linewidth}\footnotesize"]
        lines += [tex_escape(note) + (r" \\" if j < len(table.notes) - 1 else "") for j, note in enumerate(table.notes)]
        lines += [r"\end{minipage}", r"\end{table}"]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


CSV_COLUMNS = (
    "table", "group", "method", "labeled", "metric", "mean", "std", "n", "best", "ci_low", "ci_high", "train_sd",
    "test_sets", "clusters", "resampled_unit", "p_wilcoxon_cluster_means", "p_wilcoxon_cluster_means_holm",
    "p_sign_flip_runs", "p_sign_flip_runs_holm", "run_test", "significant", "reference", "missing",
)  # fmt: skip


def render_csv(tables: Sequence[ResultTable]) -> str:
    """Long CSV: one line per table, row, fraction and metric, plus a ``delta_<metric>`` line per comparison.

    A delta line's p-value columns name their test (``p_wilcoxon_cluster_means``: Wilcoxon signed-rank
    on cluster means; ``p_sign_flip_runs``: sign-flip over the matched run pairs, ``run_test`` says
    exact or sampled) and its ``metric`` names the metric tested. Runs left out are one line each
    (``metric`` = ``missing``).
    """
    buf = io.StringIO()
    tidy_frame(tables).to_csv(buf, index=False, float_format="%.6g")
    return buf.getvalue()


def tidy_frame(tables: Sequence[ResultTable]) -> pd.DataFrame:
    """The cells of ``tables`` as a tidy frame with the columns of :data:`CSV_COLUMNS` (full precision)."""
    records = []
    for table in tables:
        for row in table.rows:
            for fraction in table.fractions:
                base = {"table": table.title, "group": table.group or "", "method": row, "labeled": fraction}
                for metric in table.metrics:
                    cell = table.cells.get((row, fraction, metric))
                    if cell is not None:
                        records.append({**base, "metric": metric, "mean": cell.mean, "std": cell.std, "n": cell.n,
                                        "best": cell.best})  # fmt: skip
                for metric in table.metrics:
                    c = table.comparisons.get((row, fraction, metric))
                    if c is None:
                        continue
                    g = c.gain
                    records.append({
                        **base, "metric": f"delta_{metric}", "mean": g.mean, "n": g.pairs, "ci_low": g.low,
                        "ci_high": g.high, "train_sd": g.train_sd, "test_sets": g.test_sets, "clusters": g.clusters,
                        "resampled_unit": "split-file group within fold",
                        "p_wilcoxon_cluster_means": c.image_p, "p_wilcoxon_cluster_means_holm": c.image_p_holm,
                        "p_sign_flip_runs": c.run_p, "p_sign_flip_runs_holm": c.run_p_holm, "run_test": c.run_test,
                        "significant": bool(c.image_p_holm < ALPHA) if not math.isnan(c.image_p_holm) else "",
                        "reference": table.reference,
                    })  # fmt: skip
        for name, why in table.missing:
            records.append({"table": table.title, "group": table.group or "", "method": name, "metric": "missing",
                            "missing": why})  # fmt: skip
    return pd.DataFrame(records, columns=list(CSV_COLUMNS))


def _rich_table(table: ResultTable, fractions: list[float], title: str, caption: str | None) -> Table:
    cols = _columns(table)
    rich = Table(title=title, caption=caption, caption_justify="left")
    rich.add_column("Method", no_wrap=True)
    for fraction in fractions:
        for kind, metric in cols:
            head = _header(kind, metric)
            rich.add_column(head if len(fractions) == 1 else f"{fraction_text(fraction)}\n{head}", justify="right")
    for row in table.rows:
        values: list[Text] = [Text(_row_label(table, row))]
        for fraction in fractions:
            for kind, metric in cols:
                text, bold = _value(table, row, fraction, kind, metric)
                values.append(Text(text, style="bold green" if bold else ""))
        rich.add_row(*values)
    return rich


def render_rich(tables: Sequence[ResultTable], width: int | None = None) -> list[Table]:
    """rich Tables for the terminal, notes as the caption.

    When a table with every labeled fraction side by side is wider than ``width`` it is shown as one
    table per fraction instead (the notes under the last one).
    """
    from rich.console import Console
    from rich.measure import Measurement

    out = []
    for table in tables:
        caption = "\n".join(table.notes)
        full = _rich_table(table, table.fractions, table.title, caption)
        if width is not None and len(table.fractions) > 1:
            console = Console(width=10_000, file=io.StringIO())
            if Measurement.get(console, console.options, full).maximum > width:
                last = table.fractions[-1]
                for f in table.fractions:
                    title = f"{table.title}, {fraction_text(f)} labeled"
                    out.append(_rich_table(table, [f], title, caption if f == last else None))
                continue
        out.append(full)
    return out


def render(tables: Sequence[ResultTable], fmt: str) -> str:
    """The tables as text in ``fmt`` (``rich`` gives plain text, as the terminal would show it)."""
    if fmt == "markdown":
        return render_markdown(tables)
    if fmt == "latex":
        return render_latex(tables)
    if fmt == "csv":
        return render_csv(tables)
    if fmt == "rich":
        from rich.console import Console

        console = Console(record=True, width=240, file=io.StringIO())
        for rich in render_rich(tables):
            console.print(rich)
        return console.export_text()
    raise ReportError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
