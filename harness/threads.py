"""How many CPU threads a training process uses: never more than the cores that are free for it.

torch's default is one thread per core of the machine. On a machine where another process keeps a
core busy, two threads on the one free core wait on each other and a run takes 3x as long as
with one thread. The policy:

1. ``--threads N`` (or an executor that knows its allocation, e.g. Slurm), else ``SEGBENCH_THREADS``
   or ``OMP_NUM_THREADS`` in the environment, decides alone.
2. Otherwise start from the cores this process may run on (its affinity mask, capped by a cgroup
   CPU quota when one is set), not the machine's core count.
3. Subtract the cores other processes keep busy now: their CPU time on this process's cores over a
   half-second sample of ``/proc/stat``, rounded to whole cores. The 1-minute load average lags by
   minutes (right after ``pip install`` it reads about 1 on an idle machine, and a hog that has just
   started barely shows), so it only stands in where ``/proc/stat`` cannot be read, less this
   process's own recent CPU use.
4. Share what is left among the ``--jobs`` processes that train at once (at least one each).

:func:`choose` is a pure function of those inputs; :func:`decide` reads them from the system and
:func:`apply` sets torch's thread count and remembers the choice for run.json.
"""

from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count and why (written to run.log and run.json)."""

    threads: int
    reason: str
    cores: int | None = None
    load: float | None = None
    own_load: float | None = None
    jobs: int = 1
    #: cores other processes kept busy during the sample (None: not sampled)
    busy_now: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def choose(
    cores: int,
    load: float | None,
    own_load: float = 0.0,
    jobs: int = 1,
    override: int | None = None,
    busy_now: float | None = None,
) -> ThreadChoice:
    """The thread count for one of ``jobs`` processes on ``cores`` usable cores.

    ``busy_now``: cores other processes kept busy during a short sample (see :func:`busy_cores_now`);
    it decides when given. Otherwise the 1-minute ``load`` less ``own_load``, this process's share of
    it (its recent CPU use in cores), which is not someone else's work. ``override`` (``--threads``) wins.
    """
    jobs = max(1, jobs)
    if override is not None:
        if override < 1:
            raise ValueError(f"--threads must be at least 1, got {override}")
        return ThreadChoice(override, f"--threads {override}", cores, load, own_load, jobs)
    cores = max(1, cores)
    busy = 0
    if busy_now is not None:
        busy = max(0, math.floor(busy_now + 0.5))
        seen = f"{busy_now:.2f} busy over a {SAMPLE_SECONDS:g} s sample" + (f", 1-min load {load:.2f}" if load else "")
    elif load is not None:
        busy = max(0, math.floor(load - own_load + 0.5))
        seen = f"load {load:.2f}, ours {own_load:.2f}"
    free = max(1, cores - busy)
    threads = max(1, free // jobs)
    why = f"{cores} usable core(s)"
    if busy:
        why += f", {min(busy, cores)} kept busy by other processes ({seen})"
    if jobs > 1:
        why += f", shared by {jobs} parallel jobs"
    return ThreadChoice(threads, why, cores, load, own_load, jobs, busy_now)


# --------------------------------------------------------------------------- reading the system


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


#: seconds :func:`busy_cores_now` watches the machine for
SAMPLE_SECONDS = 0.5


def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over ``cpus`` from /proc/stat; None where it cannot be read.

    Busy is user + nice + system + irq + softirq; steal (time the hypervisor gave to other
    machines) is neither busy nor idle here, since no thread of ours can win it back.
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        user, nice, system, idle, iowait, irq, softirq = (float(v) for v in fields[:7])
        busy += user + nice + system + irq + softirq
        total += user + nice + system + idle + iowait + irq + softirq
    return (busy, total) if total else None


def busy_cores_now(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores of this process's affinity mask that other processes kept busy over ``seconds``.

    This process's own CPU use in that time (threads that keep running while it waits) is not
    counted. None where /proc/stat cannot be read (not Linux).
    """
    try:
        cpus = set(os.sched_getaffinity(0))
    except AttributeError:
        return None
    start, own_start = _cpu_times(cpus), _own_cpu_seconds()
    if start is None:
        return None
    time.sleep(seconds)
    end, own_end = _cpu_times(cpus), _own_cpu_seconds()
    if end is None or end[1] <= start[1]:
        return None
    fraction = (end[0] - start[0]) / (end[1] - start[1])
    # jiffies are per core: the busy fraction times the cores watched, less our own use in that time
    return max(0.0, fraction * len(cpus) - (own_end - own_start) / seconds)


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_load() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


_last_sample: tuple[float, float] | None = None
_started = (time.monotonic(), 0.0)


def own_load() -> float:
    """This process's CPU use in cores, averaged since the last call (or since it started), at most 1 minute back.

    The load average counts our own threads too; after one run of a grid they are not someone else's.
    """
    global _last_sample
    now, cpu = time.monotonic(), _own_cpu_seconds()
    then, cpu_then = _last_sample or _started
    _last_sample = (now, cpu)
    wall = now - then
    if wall <= 0.5:
        return 0.0
    return max(0.0, (cpu - cpu_then) / wall) * min(1.0, wall / 60.0)


#: environment variables that fix the thread count like ``--threads`` does (first one set wins)
ENV_OVERRIDES = ("SEGBENCH_THREADS", "OMP_NUM_THREADS")


def decide(jobs: int = 1, override: int | None = None) -> ThreadChoice:
    """:func:`choose` with this machine's cores and load.

    Without ``override`` an explicit ``SEGBENCH_THREADS`` or ``OMP_NUM_THREADS`` in the environment
    counts as one (torch itself honours OMP_NUM_THREADS; the user asked for that many).
    """
    if override is None:
        for name in ENV_OVERRIDES:
            value = os.environ.get(name, "").strip()
            if value.isdigit() and int(value) > 0:
                choice = choose(usable_cores(), machine_load(), 0.0, jobs, int(value))
                return ThreadChoice(choice.threads, f"{name}={value}", choice.cores, choice.load, None, jobs)
    if override is not None:
        return choose(usable_cores(), machine_load(), 0.0, jobs, override)
    return choose(usable_cores(), machine_load(), own_load(), jobs, None, busy_cores_now())


_applied: ThreadChoice | None = None


def apply(choice: ThreadChoice) -> ThreadChoice:
    """Set torch's intra-op threads to ``choice.threads`` and remember the choice (see :func:`applied`)."""
    import torch

    global _applied
    torch.set_num_threads(choice.threads)
    _applied = choice
    return choice


def applied() -> ThreadChoice | None:
    """The last choice :func:`apply` made in this process (None: torch's default was left alone)."""
    return _applied
