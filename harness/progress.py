"""Progress of long steps: a live line in a terminal, plain lines at a steady interval elsewhere.

One :class:`Reporter` per process (or per run) decides where progress goes:

- ``record``: a sink that receives a plain line every ``interval`` seconds of every open task and a
  last line when the task ends (run.log). Always written, terminal or not.
- ``echo``: where the same plain lines go when there is no live display (a log file, nohup, Slurm).
- ``live``: draw one line per task in the terminal, redrawn in place. The step count, rate and ETA
  always fit; the loss terms fill what width is left and are cut with "…".

Code that runs a long loop opens a task and updates it::

    with reporter.task("ldm autoencoder", total=500, unit="step") as bar:
        for step in range(500):
            ...
            bar.update(step + 1, loss=loss)   # floats or 0-d tensors; read only when a line is drawn

Library code that is not handed a reporter uses :func:`current` (the one installed with
:func:`reporting`; silent by default, so tests and library calls print nothing).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

Sink = Callable[[str], None]
Clock = Callable[[], float]

#: seconds between two plain lines of one task
DEFAULT_INTERVAL = 30.0
#: tasks shorter than this leave no closing line
MIN_REPORTED_SECONDS = 1.0
#: how often loss terms given as tensors are read (each read may wait for the device)
TERMS_EVERY_S = 0.5


# --------------------------------------------------------------------------- formatting (pure)


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_rate(rate: float | None, unit: str) -> str:
    """``4.20 it/s``, or ``12.5 s/it`` below one unit per second."""
    if rate is None or rate <= 0 or not math.isfinite(rate):
        return f"? {unit}/s"
    if rate < 1.0:
        return f"{1.0 / rate:.3g} s/{unit}"
    return f"{rate:.3g} {unit}/s"


def format_value(key: str, value: float) -> str:
    if key == "lr":
        return f"{key}={value:.2e}"
    return f"{key}={value:.4g}"


@dataclass(frozen=True)
class Snapshot:
    """What one line shows: a task's state at one moment."""

    label: str
    done: float
    total: float
    unit: str
    elapsed: float
    rate: float | None
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def eta(self) -> float | None:
        if not self.rate:
            return None
        return max(0.0, self.total - self.done) / self.rate

    def count(self) -> str:
        total = int(self.total)
        return f"{min(int(self.done), total)}/{total}"

    def percent(self) -> str:
        return f"{int(100 * self.done / self.total) if self.total else 100}%"


def plain_line(s: Snapshot) -> str:
    """The whole state on one line, for log files: nothing is cut."""
    line = (
        f"{s.label} {s.count()} {s.unit} ({s.percent()}) · {format_rate(s.rate, s.unit)} · "
        f"ETA {format_duration(s.eta)} · elapsed {format_duration(s.elapsed)}"
    )
    terms = " ".join(format_value(k, v) for k, v in s.terms.items())
    return f"{line} · {terms}" if terms else line


def final_line(s: Snapshot, stopped: bool = False) -> str:
    """The closing line of a task: how much, how long, how fast (``stopped``: ended by an error or interrupt)."""
    end = "stopped at" if stopped else "done:"
    line = f"{s.label} {end} {s.count()} {s.unit} in {format_duration(s.elapsed)} ({format_rate(s.rate, s.unit)})"
    terms = " ".join(format_value(k, v) for k, v in s.terms.items())
    return f"{line} · {terms}" if terms else line


def terminal_line(s: Snapshot, width: int) -> str:
    """At most ``width - 1`` characters; count, percentage, rate and ETA are never cut.

    The terms follow in order while whole terms fit; "…" marks those left out. A progress bar is
    drawn only when there is room for one of at least 10 cells after everything else.
    """
    width = max(20, width) - 1  # the last column makes some terminals wrap
    status = f"{s.count()} {s.percent()} {format_rate(s.rate, s.unit)} ETA {format_duration(s.eta)}"
    room_for_label = width - len(status) - 1
    label = s.label if len(s.label) <= room_for_label else s.label[: max(0, room_for_label - 1)] + "…"
    line = f"{label} {status}".strip()
    terms = [format_value(k, v) for k, v in s.terms.items()]
    shown: list[str] = []
    used = len(line)
    for i, term in enumerate(terms):
        more = i < len(terms) - 1
        need = 1 + len(term) + (2 if more else 0)  # leave room for " …" if later terms are dropped
        if used + need > width:
            if used + 2 <= width:
                shown.append("…")
            break
        shown.append(term)
        used += 1 + len(term)
    tail = (" " + " ".join(shown)) if shown else ""
    bar_cells = min(30, width - len(line) - len(tail) - 3)
    if bar_cells >= 10 and s.total:
        filled = int(bar_cells * min(1.0, s.done / s.total))
        bar = "━" * filled + "─" * (bar_cells - filled)
        return f"{label} {bar} {status}{tail}"
    return f"{line}{tail}"


# --------------------------------------------------------------------------- tasks


class ProgressTask:
    """One long step: ``update(done, **terms)`` as it goes, ``close()`` (or ``with``) at the end."""

    def __init__(self, reporter: Reporter, label: str, total: float, start: float = 0, unit: str = "it") -> None:
        self.reporter, self.label, self.unit = reporter, label, unit
        self.total = float(total)
        self.start = self.done = float(start)
        self._t0 = reporter.clock()
        # a task opened after a silence (setup work no task covered) writes its first line as soon as
        # the interval since the reporter's last line has passed, not a whole interval after it opened
        self._last_line = reporter._last_line_at if reporter._last_line_at is not None else self._t0
        self._raw: dict[str, Any] = {}
        self._terms: dict[str, float] = {}
        self._terms_read = -math.inf
        self._lock = threading.Lock()
        self._lines = 0
        self.closed = False
        self._stop = threading.Event()
        self._live: Any = None
        reporter._opened(self)

    # ---------------------------------------------------------------- state

    def update(self, done: float | None = None, **terms: Any) -> None:
        """Set the count of finished units (absolute) and, optionally, the loss terms to show."""
        if done is not None:
            self.done = float(done)
        if terms:
            self._raw.update(terms)
        now = self.reporter.clock()
        if self._raw and now - self._terms_read >= TERMS_EVERY_S:
            self._read_terms(now)
        self.tick(now)

    def advance(self, n: float = 1, **terms: Any) -> None:
        """Add ``n`` finished units."""
        self.update(self.done + n, **terms)

    def _read_terms(self, now: float) -> None:
        terms = {}
        for key, value in self._raw.items():
            with contextlib.suppress(TypeError, ValueError, RuntimeError):
                terms[key] = float(value)
        self._terms, self._terms_read = terms, now

    def snapshot(self, now: float | None = None) -> Snapshot:
        now = self.reporter.clock() if now is None else now
        elapsed = max(0.0, now - self._t0)
        gained = self.done - self.start
        rate = gained / elapsed if elapsed > 0 and gained > 0 else None
        return Snapshot(self.label, self.done, self.total, self.unit, elapsed, rate, dict(self._terms))

    # ---------------------------------------------------------------- output

    def tick(self, now: float | None = None) -> None:
        """Write a plain line when ``interval`` seconds have passed since the last one (any thread)."""
        now = self.reporter.clock() if now is None else now
        with self._lock:
            if self.closed or now - self._last_line < self.reporter.interval:
                return
            self._last_line = now
            self._lines += 1
            self.reporter._line(plain_line(self.snapshot(now)))

    def close(self, stopped: bool = False) -> None:
        """End the task: stop its timer and live line; write a closing line unless it was short.

        ``stopped``: the loop ended early (an exception); the line says "stopped at" instead of "done".
        """
        if self.closed:
            return
        now = self.reporter.clock()
        if self._raw:
            self._read_terms(now)
        with self._lock:
            self.closed = True
            snap = self.snapshot(now)
        self._stop.set()
        self.reporter._closed(self)
        if self._lines or snap.elapsed >= self.reporter.min_reported:
            self.reporter._line(final_line(snap, stopped))

    def __enter__(self) -> ProgressTask:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(stopped=exc_type is not None)


# --------------------------------------------------------------------------- reporters


class Reporter:
    """Where progress goes: ``record`` (always), ``echo`` (when not live) and, with ``live``, the terminal.

    ``timer``: a thread per task writes the plain line on time even while the loop is inside one
    long step (validation, a slow batch); tests turn it off and drive ``clock`` themselves.
    """

    def __init__(
        self,
        *,
        record: Sink | None = None,
        echo: Sink | None = None,
        live: bool = False,
        interval: float = DEFAULT_INTERVAL,
        clock: Clock = time.monotonic,
        timer: bool = True,
        console: Any = None,
        min_reported: float = MIN_REPORTED_SECONDS,
    ) -> None:
        self.record, self.echo = record, echo
        self.live = live
        self.interval = interval
        self.clock = clock
        self.timer = timer
        self.console = console
        self.min_reported = min_reported
        self._live_task: ProgressTask | None = None
        self._open: list[ProgressTask] = []
        self._last_line_at: float | None = None

    def task(self, label: str, total: float, *, start: float = 0, unit: str = "it") -> ProgressTask:
        """Open a task of ``total`` units, ``start`` of them already done (a resumed loop)."""
        return ProgressTask(self, label, total, start, unit)

    def close_open(self) -> None:
        """Close every task still open (a loop left by an exception without closing its task)."""
        for task in list(self._open):
            task.close(stopped=True)

    def message(self, text: str) -> None:
        """A one-off line (e.g. "resuming from step N"): recorded and shown."""
        self._line(text, always_echo=True)

    # ---------------------------------------------------------------- internals

    def _line(self, text: str, always_echo: bool = False) -> None:
        self._last_line_at = self.clock()
        if self.record is not None:
            self.record(text)
        if self.echo is not None and (always_echo or self._live_task is None):
            self.echo(text)

    def _opened(self, task: ProgressTask) -> None:
        self._open.append(task)
        if self.live and self._live_task is None:
            self._start_live(task)
        if self.timer:
            wait = min(5.0, self.interval / 3)

            def beat() -> None:
                while not task._stop.wait(wait):
                    task.tick()

            threading.Thread(target=beat, name=f"progress-{task.label}", daemon=True).start()

    def _closed(self, task: ProgressTask) -> None:
        with contextlib.suppress(ValueError):
            self._open.remove(task)
        if task is self._live_task:
            with contextlib.suppress(Exception):
                task._live.stop()
            self._live_task = None

    def _start_live(self, task: ProgressTask) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        console = self.console or Console()

        def render() -> Text:
            return Text(terminal_line(task.snapshot(), console.width), no_wrap=True, overflow="crop")

        # transient: the closing line replaces the live one
        live = Live(get_renderable=render, console=console, refresh_per_second=2, transient=True)
        try:
            live.start()
        except Exception:  # another live display is active: this task only records  # noqa: BLE001
            return
        task._live = live
        self._live_task = task


#: reports nothing (library calls, tests)
SILENT = Reporter(timer=False)

_current: ContextVar[Reporter] = ContextVar("segbench_progress", default=SILENT)


def current() -> Reporter:
    """The reporter installed by :func:`reporting` (silent when none is)."""
    return _current.get()


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Make ``reporter`` the one :func:`current` returns inside the block.

    Tasks of ``reporter`` still open when the block ends (a loop that raised before closing its
    task) are closed as stopped, so that no timer keeps writing about a loop that is gone.
    """
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)
        reporter.close_open()


def task(label: str, total: float, *, start: float = 0, unit: str = "it") -> ProgressTask:
    """Open a task on the current reporter."""
    return current().task(label, total, start=start, unit=unit)


def stdout_line(text: str) -> None:
    """Echo sink for logs without a terminal: one timestamped line, flushed at once (nohup, Slurm)."""
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stdout, flush=True)


def for_console(*, show: bool = True, record: Sink | None = None, console: Any = None) -> Reporter:
    """The reporter for a command: live in a terminal, timestamped plain lines on stdout otherwise.

    ``show=False`` (``--quiet``): nothing on screen, lines still go to ``record``. The interval between
    plain lines is ``$SEGBENCH_PROGRESS_INTERVAL`` seconds (default 30).
    """
    interval = float(os.environ.get("SEGBENCH_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    if console is None:
        from rich.console import Console

        console = Console()
    live = show and console.is_terminal and not console.is_dumb_terminal
    echo: Sink | None = None
    if show and live:
        echo = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    elif show:
        echo = stdout_line
    return Reporter(record=record, echo=echo, live=live, console=console, interval=interval)


def installed_or_console(show: bool) -> Reporter:
    """The installed reporter; when there is none, the console's (``show``) or a silent one."""
    reporter = current()
    if reporter is SILENT and show:
        return for_console()
    return reporter
