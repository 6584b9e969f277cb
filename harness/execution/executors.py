"""The executor contract: where the runs of a grid are trained, and building one by name.

An executor receives a :class:`harness.execution.tasks.Request` (resolved runs, results directory,
device, processes per run) and trains every run somewhere: in this process, in parallel local
processes (``plugins.executors.local``), as Slurm jobs (``plugins.executors.slurm``), or on any
engine a plugin adds with ``register_executors``. The results directory is the only shared state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from harness.api import NoParams
from harness.execution.tasks import ExecutorError, Report, Request


class Executor(ABC):
    """Trains the runs of a request somewhere. Register one with ``register_executors``.

    ``Params`` is a dataclass of the executor's options; ``bench run --exec-set KEY=VALUE`` (and the
    built-in ``--jobs`` / ``--slurm-*`` options) fill it.
    """

    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any) -> None:
        self.params = params

    @abstractmethod
    def submit(self, request: Request) -> Report:
        """Train (or submit) every run of ``request``; return when done, or when submitted and not ``wait``."""

    @classmethod
    def job_state(cls, job: dict[str, Any]) -> str | None:
        """``queued`` or ``running`` while the job recorded in ``job`` (a job.json) is alive, else None."""
        return None


def executor_names() -> list[str]:
    """Registered executor names."""
    from harness.plugins import get_registry

    return get_registry().names("executor")


def build_executor(name: str, options: dict[str, Any]) -> Executor:
    """The executor ``name`` with its options (``{"jobs": 2}``) validated against its ``Params``."""
    from harness.config.params import build_params
    from harness.plugins import get_registry

    cls = get_registry().get("executor", name)
    return cls(build_params(getattr(cls, "Params", NoParams), options, f"executor {name}"))


def executor_options(name: str, jobs: int | None, slurm: dict[str, Any], settings: list[str] | None) -> dict[str, Any]:
    """The options ``bench run`` gives executor ``name``: ``--jobs``, ``--slurm-*`` and ``--exec-set KEY=VALUE``."""
    options: dict[str, Any] = {}
    if jobs is not None:
        options["jobs"] = jobs
    for key, value in slurm.items():
        if value is None:
            continue
        if name != "slurm":
            flag = "--slurm-" + key.replace("_", "-")
            raise ExecutorError(f"{flag} is an option of the slurm executor; add --executor slurm")
        options[key] = value
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ExecutorError(f"--exec-set {item!r}: expected KEY=VALUE, e.g. --exec-set poll_s=30")
        options[key.strip().replace("-", "_")] = value.strip()
    return options
