"""The thread policy: a pure function of (usable cores, load, own load, jobs, --threads)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from harness import threads
from harness.threads import choose


@pytest.mark.parametrize(
    ("cores", "load", "own", "jobs", "override", "expected"),
    [
        (2, 0.05, 0.0, 1, None, 2),  # idle 2-core machine: both cores
        (2, 1.02, 0.0, 1, None, 1),  # another process keeps one core busy: one thread, not two on one core
        (2, 2.9, 0.0, 1, None, 1),  # overloaded: still one
        (2, 1.9, 1.0, 1, None, 1),  # we made half of that load ourselves: one other process
        (2, 2.0, 2.0, 1, None, 2),  # all of the load is ours (the previous run of the grid)
        (16, 3.4, 0.0, 1, None, 13),  # three busy of sixteen
        (16, 0.0, 0.0, 4, None, 4),  # --jobs 4 share the cores
        (2, 0.0, 0.0, 2, None, 1),  # --jobs 2 on two cores: one thread per process
        (2, 1.0, 0.0, 4, None, 1),  # never zero
        (4, None, 0.0, 1, None, 4),  # no load average on this system
        (2, 1.5, 0.0, 1, 2, 2),  # --threads wins
    ],
)
def test_choose(cores, load, own, jobs, override, expected) -> None:
    choice = choose(cores, load, own, jobs, override)
    assert choice.threads == expected
    assert choice.reason  # always says why


@pytest.mark.parametrize(
    ("cores", "load", "busy_now", "expected"),
    [
        (2, 1.1, 0.02, 2),  # right after pip install: the load average still reads 1, the machine is idle
        (2, 0.3, 1.01, 1),  # a hog that started seconds ago: the load average has not caught up
        (2, 0.0, 0.45, 2),  # under half a core: rounds to none
        (8, None, 2.6, 5),  # no load average, three cores busy
    ],
)
def test_a_sample_of_busy_cores_decides_over_the_load_average(cores, load, busy_now, expected) -> None:
    assert choose(cores, load, 0.0, 1, None, busy_now).threads == expected


def test_reasons_name_the_inputs() -> None:
    assert choose(2, 1.02, 0.0).reason == "2 usable core(s), 1 kept busy by other processes (load 1.02, ours 0.00)"
    assert choose(2, 0.1, 0.0, 2).reason == "2 usable core(s), shared by 2 parallel jobs"
    assert choose(2, 1.5, 0.0, 1, 3).reason == "--threads 3"
    assert choose(2, 1.5, 0.0, 1, 3).as_dict()["load"] == 1.5
    assert choose(2, 0.3, 0.0, 1, None, 1.01).reason == (
        "2 usable core(s), 1 kept busy by other processes (1.01 busy over a 0.5 s sample, 1-min load 0.30)"
    )
    with pytest.raises(ValueError, match="--threads"):
        choose(2, 0.0, 0.0, 1, 0)


def test_apply_sets_torch_and_is_remembered() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        choice = threads.apply(choose(1, 0.0))
        assert torch.get_num_threads() == 1 and threads.applied() is choice
    finally:
        torch.set_num_threads(before)


def test_decide_reads_this_machine(monkeypatch) -> None:
    for name in threads.ENV_OVERRIDES:
        monkeypatch.delenv(name, raising=False)
    choice = threads.decide()
    assert 1 <= choice.threads <= threads.usable_cores() and "usable core" in choice.reason


@pytest.mark.skipif(threads.busy_cores_now() is None, reason="no /proc/stat on this system")
def test_the_sample_sees_a_process_that_keeps_a_core_busy() -> None:
    """A child spinning on one of our cores counts as about one busy core (more if the machine is busy too)."""
    hog = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 30\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)  # let it start
        assert threads.busy_cores_now() >= 0.7
    finally:
        hog.kill()
        hog.wait()


def test_the_environment_can_fix_the_count(monkeypatch) -> None:
    monkeypatch.delenv("SEGBENCH_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert (threads.decide().threads, threads.decide().reason) == (3, "OMP_NUM_THREADS=3")
    monkeypatch.setenv("SEGBENCH_THREADS", "1")
    assert threads.decide().reason == "SEGBENCH_THREADS=1"
    assert threads.decide(override=2).threads == 2  # --threads wins
