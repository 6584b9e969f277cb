"""Options shared by several ``bench`` commands: one spelling, one default and one help text per idea.

Old spellings stay accepted as hidden aliases (``--seeds`` for ``--seed``); :func:`either` merges
an option with its alias and returns the flag the user typed, so errors can name it.
"""

from __future__ import annotations

from typing import Any, TypeVar

import typer

from harness.errors import UserError

T = TypeVar("T")

DATA_HELP = "Dataset folder or registered name, e.g. phantom:count=400,size=128 (default: the built-in phantom)."
DEVICE_HELP = "auto (CUDA when present, else the CPU), cpu, cuda, cuda:1 ..."
PRESET_HELP = "auto (paper on CUDA, quick on the CPU), quick, medium or paper; `bench params` shows what each sets."
SET_HELP = "KEY=VALUE, repeatable: backbone.dim_mult=2, mgcc.consistency=7, lr=0.005; `bench params` lists every key."
CHECKPOINT_HELP = "best (on validation) or last."
JSON_HELP = "Print machine-readable JSON."
SEED_HELP = "Seed(s), comma-separated: training seeds of bench run, the generator seed of bench generate."


def data_option() -> Any:
    return typer.Option(None, "--data", help=DATA_HELP)


def device_option() -> Any:
    return typer.Option("auto", "--device", help=DEVICE_HELP)


def preset_option() -> Any:
    return typer.Option("auto", "--preset", help=PRESET_HELP)


def set_option(help: str = SET_HELP) -> Any:
    return typer.Option(None, "--set", help=help)


def checkpoint_option() -> Any:
    return typer.Option("best", "--checkpoint", help=CHECKPOINT_HELP)


def json_option() -> Any:
    return typer.Option(False, "--json", help=JSON_HELP)


def alias(flag: str) -> Any:
    """A hidden old spelling of an option; merge it with :func:`either`."""
    return typer.Option(None, flag, hidden=True)


def either(value: T | None, flag: str, old_value: T | None, old_flag: str) -> tuple[T | None, str]:
    """The value of ``flag`` or of its hidden alias ``old_flag``, and the flag the user typed."""
    if old_value is None:
        return value, flag
    if value is not None and value != old_value:
        raise UserError(f"{flag} and {old_flag} are the same option; give it once")
    return old_value, old_flag


def data_argument_or_option(argument: str | None, option: str | None) -> str | None:
    """``bench data check PATH`` and ``bench data check --data PATH`` mean the same."""
    if argument is not None and option is not None and argument != option:
        raise UserError(f"the dataset is given twice ({argument} and --data {option}); give it once")
    return option if option is not None else argument
