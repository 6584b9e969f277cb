"""Experiment trackers of one run: built from ``bench run --tracker``, fed by the engine and the lifecycle.

:class:`Trackers` fans every call out to the selected :class:`harness.api.Tracker` plugins. A tracker
that is unknown, cannot be built or raises is dropped with one warning and the run goes on
(``SEGBENCH_STRICT_PLUGINS=1`` raises instead): a tracker never breaks or changes a run.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.api import ScalarRow, TrackedRun, Tracker, TrackerError
from harness.config.params import build_params
from harness.errors import UserError
from harness.plugins import Registry, strict_plugins

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrackerChoice:
    """Which trackers a run feeds and their options: ``{"mlflow": {"tracking_uri": "http://..."}}``."""

    names: tuple[str, ...] = ()
    options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.names)


def parse_tracker_choice(trackers: str | None, settings: Iterable[str] | None) -> TrackerChoice:
    """``--tracker tensorboard,mlflow`` and ``--tracker-set mlflow.tracking_uri=URI`` as a :class:`TrackerChoice`."""
    names = tuple(dict.fromkeys(n.strip() for n in (trackers or "").split(",") if n.strip()))
    options: dict[str, dict[str, str]] = {}
    for item in settings or []:
        key, sep, value = item.partition("=")
        name, dot, param = key.strip().partition(".")
        if not sep or not dot or not name or not param:
            raise UserError(
                f"--tracker-set {item!r}: expected TRACKER.KEY=VALUE, e.g. mlflow.tracking_uri=http://host:5000"
            )
        if name not in names:
            raise UserError(f"--tracker-set {item!r}: tracker {name!r} is not selected; add --tracker {name}")
        options.setdefault(name, {})[param.replace("-", "_")] = value.strip()
    return TrackerChoice(names, options)


def check_tracker_choice(choice: TrackerChoice, registry: Registry, warn: Log) -> TrackerChoice:
    """Validate options before any run starts; an unknown tracker is warned about and left out.

    Option errors are the user's to fix and raise at once; an unknown name (a plugin not installed)
    is one warning, fatal only with ``SEGBENCH_STRICT_PLUGINS=1``.
    """
    kept = []
    for name in choice.names:
        try:
            cls = registry.get("tracker", name)
        except UserError as exc:
            if strict_plugins():
                raise
            warn(f"warning: --tracker {name}: {exc} Training goes on without it.")
            continue
        build_params(cls.Params, dict(choice.options.get(name, {})), f"tracker {name}")
        kept.append(name)
    return TrackerChoice(tuple(kept), {n: o for n, o in choice.options.items() if n in kept})


def _finite_scalars(values: Mapping[str, Any], prefix: str, skip: Iterable[str] = ()) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if key in skip or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[f"{prefix}/{key}"] = float(value)
    return out


def curve_scalars(rows: Iterable[Mapping[str, Any]]) -> list[ScalarRow]:
    """curves.jsonl rows as tracker rows: training terms as ``train/<term>``, validation as ``val/<metric>``."""
    out = []
    for row in rows:
        prefix = "val" if row.get("event") == "val" else "train"
        scalars = _finite_scalars(row, prefix, skip=("step", "event"))
        if scalars:
            out.append((int(row["step"]), scalars))
    return out


def final_scalars(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``{"best": summarise(...), "last": ...}`` as ``test/best/dice``, ``test/last/hd95``, ..."""
    out: dict[str, float] = {}
    for checkpoint, summary in summaries.items():
        out.update(_finite_scalars(summary, f"test/{checkpoint}"))
    return out


class Trackers:
    """The run's trackers behind one interface; every call is guarded (see the module docstring)."""

    def __init__(self, trackers: list[tuple[str, Tracker]], log: Log, strict: bool | None = None) -> None:
        self._active = list(trackers)
        self._log = log
        self._strict = strict_plugins() if strict is None else strict

    @classmethod
    def build(cls, choice: TrackerChoice, registry: Registry, log: Log) -> Trackers:
        """Instantiate the chosen trackers; one that cannot be built is warned about and left out."""
        self = cls([], log)
        for name in choice.names:
            try:
                tracker_cls = registry.get("tracker", name)
                params = build_params(tracker_cls.Params, dict(choice.options.get(name, {})), f"tracker {name}")
                self._active.append((name, tracker_cls(params)))
            except Exception as exc:  # noqa: BLE001 - a tracker must not break the run
                self._failed(name, "could not be built", exc)
        return self

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._active]

    def __bool__(self) -> bool:
        return bool(self._active)

    def _failed(self, name: str, what: str, exc: BaseException) -> None:
        message = f"tracker {name!r} {what}: {type(exc).__name__}: {exc}"
        if self._strict:
            raise TrackerError(message + " (SEGBENCH_STRICT_PLUGINS=1 makes tracker errors fatal)") from exc
        self._log(f"warning: {message}; the run goes on without it (SEGBENCH_STRICT_PLUGINS=1 makes this fatal)")

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self._active):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker must not break the run
                self._active.remove((name, tracker))
                self._failed(name, f"failed in {method}", exc)
                if method != "finish":
                    with contextlib.suppress(Exception):  # let it release what it opened
                        tracker.finish("failed")

    def start(self, run: TrackedRun) -> None:
        self._each("start", run)

    def log_curves(self, rows: list[dict[str, Any]]) -> None:
        """Called by the engine with the rows it just wrote to curves.jsonl (host values: no extra sync)."""
        if self._active:
            scalars = curve_scalars(rows)
            if scalars:
                self._each("log_scalars", scalars)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._each("log_metrics", metrics, step)

    def log_figures(self, figures: Iterable[tuple[str, Any]], step: int) -> None:
        for name, figure in figures:
            self._each("log_figure", name, figure, step)

    def finish(self, status: str) -> None:
        self._each("finish", status)
        self._active = []
