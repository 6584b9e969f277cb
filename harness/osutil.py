"""Small operating-system helpers every layer shares: the permissions of files users share, process liveness."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: the usual umask, assumed where the process's own cannot be read
DEFAULT_UMASK = 0o022


def umask() -> int:
    """This process's umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return DEFAULT_UMASK


def make_shareable(path: Path | str) -> None:
    """Give a file or folder the permissions a plain ``open``/``mkdir`` would (0644 / 0755 under umask 022).

    ``tempfile.mkstemp`` and ``mkdtemp`` create 0600 / 0700 entries; renamed into place they would keep
    split files, exported models and caches private to their owner.
    """
    base = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, base & ~umask())


def pid_alive(pid: Any) -> bool:
    """Whether a process with this id exists on this host (one we may not signal counts as alive)."""
    try:
        pid = int(pid)
        if pid <= 0:  # kill(0 or -1) would ask about process groups, not one process
            return False
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return True
