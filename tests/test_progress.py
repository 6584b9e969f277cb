"""The progress reporter: plain lines on a steady interval, terminal lines that never lose count or ETA."""

from __future__ import annotations

import io

import pytest
import torch

from harness import progress
from harness.progress import Reporter, Snapshot, format_duration, plain_line, terminal_line


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, interval: float = 30.0) -> tuple[Reporter, list[str], list[str]]:
    record: list[str] = []
    echo: list[str] = []
    reporter = Reporter(record=record.append, echo=echo.append, interval=interval, clock=clock, timer=False)
    return reporter, record, echo


def test_plain_lines_come_at_the_interval_with_step_rate_eta_and_terms() -> None:
    clock = FakeClock()
    reporter, record, echo = make(clock)
    bar = reporter.task("train", total=300, unit="it")
    for step in range(1, 301):
        clock.now += 0.5  # 2 it/s
        bar.update(step, loss=torch.tensor(1.25), consistency=0.5)
    bar.close()
    # 150 s of work: lines at 30, 60, 90, 120 and 150 s, then the closing line
    assert len(record) == 6 and record == echo
    assert record[0].startswith("train 60/300 it (20%) · 2 it/s · ETA 2m00s · elapsed 30s · loss=1.25 consistency=0.5")
    assert record[-1] == "train done: 300/300 it in 2m30s (2 it/s) · loss=1.25 consistency=0.5"


def test_a_resumed_task_counts_its_rate_from_where_it_started() -> None:
    clock = FakeClock()
    reporter, record, _ = make(clock, interval=10)
    bar = reporter.task("train", total=100, start=80)
    clock.now += 10
    bar.update(90)
    assert "90/100" in record[0] and "1 it/s" in record[0] and "ETA 10s" in record[0]


def test_short_tasks_leave_no_line_and_slow_rates_read_as_seconds_per_unit() -> None:
    clock = FakeClock()
    reporter, record, _ = make(clock)
    with reporter.task("quick", total=3) as bar:
        bar.advance()
    assert record == []
    with reporter.task("ldm sampling", total=128, unit="img") as bar:
        clock.now += 40
        bar.update(2)
    assert "20 s/img" in record[0]


def test_a_live_reporter_records_lines_but_does_not_echo_them_while_a_line_is_live() -> None:
    clock = FakeClock()
    record: list[str] = []
    echo: list[str] = []
    reporter = Reporter(record=record.append, echo=echo.append, clock=clock, timer=False)
    reporter._live_task = object()  # type: ignore[assignment]  # as if a terminal line were drawn
    bar = reporter.task("train", total=10)
    clock.now += 31
    bar.update(5)
    reporter.message("resuming from step 5")
    assert len(record) == 2 and echo == ["resuming from step 5"]


@pytest.mark.parametrize("width", [40, 60, 80, 100])
def test_terminal_line_fits_and_keeps_count_rate_and_eta(width: int) -> None:
    terms = {"loss": 1.3301, "sup": 0.81234, "consistency": 0.0123, "consistency_weight": 6.9, "lr": 0.0012}
    snap = Snapshot("train", 123, 300, "it", elapsed=51.0, rate=2.41, terms=terms)
    line = terminal_line(snap, width)
    assert len(line) <= width - 1
    for part in ("123/300", "41%", "2.41 it/s", "ETA 1m13s"):
        assert part in line
    if width <= 80:
        assert "…" in line  # not every term fits: the cut is marked, whole terms only
    assert "=…" not in line and not line.endswith("=")


def test_terminal_line_through_rich_at_80_columns() -> None:
    """What a terminal of 80 columns really shows (rich renders the line)."""
    from rich.console import Console
    from rich.text import Text

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    snap = Snapshot("ldm denoiser", 412, 800, "step", 100.0, 4.12, {"loss": 0.123456, "lr": 1e-3})
    console.print(Text(terminal_line(snap, console.width), no_wrap=True, overflow="crop"))
    shown = out.getvalue().splitlines()
    assert len(shown) == 1 and len(shown[0]) <= 80
    assert "412/800" in shown[0] and "ETA 1m34s" in shown[0] and "loss=0.1235" in shown[0]


def test_plain_line_keeps_every_term() -> None:
    terms = {f"term{i}": float(i) for i in range(12)}
    line = plain_line(Snapshot("train", 1, 2, "it", 1.0, 1.0, terms))
    assert all(f"term{i}={i}" in line for i in range(12))


def test_durations() -> None:
    assert [format_duration(s) for s in (5, 65, 3725, None)] == ["5s", "1m05s", "1h02m", "?"]


def test_current_reporter_is_silent_until_one_is_installed() -> None:
    assert progress.current() is progress.SILENT
    lines: list[str] = []
    with progress.reporting(Reporter(record=lines.append, timer=False)) as reporter:
        assert progress.current() is reporter
        progress.current().message("hello")
    assert progress.current() is progress.SILENT and lines == ["hello"]


def test_the_timer_thread_writes_while_the_loop_is_stuck_in_one_step() -> None:
    lines: list[str] = []
    reporter = Reporter(record=lines.append, interval=0.05)
    bar = reporter.task("evaluate", total=10)
    bar.update(3)
    import time

    deadline = time.monotonic() + 5
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    bar.close()
    assert len(lines) >= 2 and lines[0].startswith("evaluate 3/10")


def test_a_task_left_open_by_an_exception_is_closed_as_stopped_when_reporting_ends() -> None:
    clock = FakeClock()
    reporter, record, _ = make(clock)
    with pytest.raises(KeyboardInterrupt), progress.reporting(reporter):
        bar = progress.task("ldm denoiser", total=800, unit="step")
        clock.now += 40
        bar.update(80)
        raise KeyboardInterrupt
    assert bar.closed and record[-1].startswith("ldm denoiser stopped at 80/800 step in 40s")


def test_a_task_opened_after_a_silence_reports_at_the_interval_since_the_last_line() -> None:
    clock = FakeClock()
    reporter, record, _ = make(clock)
    reporter.message("generator ldm: fitting")
    clock.now += 25  # setup work that no task covers
    bar = reporter.task("ldm autoencoder", total=100, unit="step")
    clock.now += 6
    bar.update(1)
    assert record[-1].startswith("ldm autoencoder 1/100 step")  # 31 s after the last line, not 60
