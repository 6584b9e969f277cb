"""Shared helpers of the fault-injection tests (tests/test_faults_*.py): tiny real runs, real file systems."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from harness.runs.resolve import ResolvedRun, RunSpec, resolve

TINY_OVERRIDES = {
    "backbone": {"width": "4", "context_lengths": "1,1,1"},
    "": {"val_every": "2", "checkpoint_every": "2"},
}


def make_dataset(root: Path, n: int = 10, size: int = 24, seed: int = 0) -> Path:
    """A folder dataset of ``n`` random images with a rectangle lesion each (images/ + masks/0/)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        for sub, array in (
            ("images", rng.integers(0, 256, (size, size), dtype=np.uint8)),
            ("masks/0", _rectangle(size, i)),
        ):
            path = root / sub / f"benign ({i}).png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    return root


def _rectangle(size: int, i: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[2 + i % 4 : size // 2 + i % 4, 3 : size // 2 + 3] = 255
    return mask


def tiny_run(data: Path, **spec: object) -> ResolvedRun:
    """A supervised run of 4 iterations at 16² with a width-4 U-Net (about a second on one CPU thread)."""
    values: dict[str, object] = dict(
        ssl="supervised", backbone="unet", data=str(data), image_size=16, iterations=4, k=2, label_draws=1,
        labeled=0.5, precision="fp32", overrides=TINY_OVERRIDES,
    )  # fmt: skip
    values.update(spec)
    return resolve(RunSpec(**values))  # type: ignore[arg-type]


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[bool]:
    """Mount a tmpfs of ``size`` at ``path`` when this process may (root); yields whether it did."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make the folder ``path`` read-only: a read-only bind mount as root (root ignores modes), else chmod."""
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True, capture_output=True)
        try:
            yield
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")] if p.is_dir()}
    for p in modes:
        p.chmod(0o555)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
