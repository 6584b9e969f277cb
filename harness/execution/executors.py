"""The executor contract: where the runs of a grid are trained, and building one by name.

An executor receives a :class:`harness.execution.tasks.Request` (resolved runs, results directory,
device, processes per run) and trains every run somewhere: in this process, in parallel local
processes (``plugins.executors.local``), as Slurm jobs (``plugins.executors.slurm``), or on any
engine a plugin adds with ``register_executors``. The results directory is the only shared state.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from harness.api import NoParams
from harness.execution.tasks import ExecutorError, Report, Request


class Executor(ABC):
    """Trains the runs of a request somewhere. Register one with ``register_executors``.

    ``Params`` is a dataclass of the executor's options; ``bench run --exec-set KEY=VALUE``, ``--jobs``
    and the ``--<executor>-<field>`` options the executor lists in ``cli_options`` fill it.
    """

    Params: ClassVar[type] = NoParams
    #: ``Params`` fields ``bench run`` offers as ``--<executor>-<field>`` options (help from the field's comment)
    cli_options: ClassVar[tuple[str, ...]] = ()

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


@dataclass(frozen=True)
class ExecutorFlag:
    """A ``bench run`` option an executor adds for one of its parameters: ``--slurm-partition``."""

    executor: str
    param: str
    type: type
    help: str

    @property
    def flag(self) -> str:
        return f"--{self.executor}-{self.param}".replace("_", "-")

    @property
    def dest(self) -> str:
        """The Python name of the option (unique over executors)."""
        return f"{self.executor}_{self.param}".replace("-", "_")


def executor_flags() -> list[ExecutorFlag]:
    """The options every registered executor adds to ``bench run`` (its ``cli_options``)."""
    from harness.config.params import field_help
    from harness.plugins import get_registry

    registry = get_registry()
    flags = []
    for name in registry.names("executor"):
        cls = registry.get("executor", name)
        params = getattr(cls, "Params", NoParams)
        hints = typing.get_type_hints(params) if dataclasses.is_dataclass(params) else {}
        helps = field_help(params)
        for param in getattr(cls, "cli_options", ()):
            if param not in hints:
                raise ExecutorError(f"executor {name}: cli_options names {param!r}, which is not a field of its Params")
            tp = hints[param]
            if typing.get_origin(tp) in (typing.Union, types.UnionType):  # Optional[X] -> X
                tp = next(arg for arg in typing.get_args(tp) if arg is not type(None))
            flags.append(ExecutorFlag(name, param, tp, f"{name}: {helps.get(param, '')}".strip()))
    return flags


def executor_options(
    name: str, jobs: int | None, flags: dict[tuple[str, str], Any], settings: list[str] | None
) -> dict[str, Any]:
    """The options ``bench run`` gives executor ``name``: ``--jobs``, the executors' own options and ``--exec-set``.

    ``flags`` maps (executor, parameter) to the value of that executor's option (None: not given).
    """
    options: dict[str, Any] = {}
    if jobs is not None:
        options["jobs"] = jobs
    for (owner, param), value in flags.items():
        if value is None:
            continue
        if owner != name:
            flag = f"--{owner}-{param}".replace("_", "-")
            raise ExecutorError(f"{flag} is an option of the {owner} executor; add --executor {owner}")
        options[param] = value
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ExecutorError(f"--exec-set {item!r}: expected KEY=VALUE, e.g. --exec-set poll_s=30")
        options[key.strip().replace("-", "_")] = value.strip()
    return options
