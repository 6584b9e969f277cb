"""``summary``: the cells of ``bench table`` as a tidy DataFrame, for analysis in Python."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.reporting.load import load, unfinished_runs


def summary(
    runs: Path | str | Any,
    *,
    metrics: Sequence[str] | None = None,
    checkpoint: str = "best",
    compare: str | None = None,
    significance: bool = False,
    by: str | None = None,
) -> Any:
    """Exactly the numbers of ``bench table`` (same options, same defaults) as one tidy DataFrame.

    ``runs`` is a results directory (the ``--out`` of ``bench run``) or a frame from
    :func:`harness.reporting.load.load`. One row per table, method row, labeled fraction and metric
    (``mean``, ``std`` over runs, ``n`` runs, ``best``), plus a ``delta_<metric>`` row per shown metric
    against the reference (``mean``, ``ci_low``, ``ci_high``, ``train_sd``, the p-values of the
    image-level Wilcoxon on cluster means and of the run-level sign-flip test, raw and Holm), and a
    ``missing`` row per run left out. Columns: :data:`harness.reporting.tables.CSV_COLUMNS`.
    ``bench table --format csv`` prints the same rows.
    """
    import pandas as pd

    from harness.reporting.tables import DEFAULT_METRICS, build_tables, tidy_frame

    frame = runs if isinstance(runs, pd.DataFrame) else load(runs, checkpoint=checkpoint)
    tables = build_tables(
        frame,
        metrics=list(metrics or DEFAULT_METRICS),
        checkpoint=checkpoint,
        compare=compare,
        significance=significance,
        by=by,
        missing=[] if isinstance(runs, pd.DataFrame) else unfinished_runs(runs),
    )
    return tidy_frame(tables)
