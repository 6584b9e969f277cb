"""Writing a report folder whole: built beside its place, then moved in; never half-written."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import UserError


class OutputError(UserError):
    """The report cannot be written where asked; the message says what to do."""


def is_report(folder: Path, page: str, marker: str, head: int = 2000) -> bool:
    """Whether ``folder/page`` exists and carries ``marker`` near its start (an earlier report of ours)."""
    path = folder / page
    return path.is_file() and marker in path.read_text(encoding="utf-8", errors="replace")[:head]


@contextmanager
def report_folder(out: Path, page: str, marker: str, what: str, head: int = 2000) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on success it replaces ``out``, on failure it goes.

    ``out`` must be absent, empty, or an earlier report (``page`` holding ``marker``); anything else is
    refused before any work, naming the folder.
    """
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_report(out, page, marker, head))):
        raise OutputError(f"--out {out} exists and is not a segbench {what}; give a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
