"""Device, precision and determinism settings of a run."""

from __future__ import annotations

import contextlib
import os
import platform
import random
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        from harness.errors import UserError

        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


def describe_device(device: torch.device) -> str:
    """What the device is, for run.json: the GPU's name, or the CPU's model name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor or machine string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: what ``--precision`` accepts; ``auto`` resolves per device with :func:`choose_precision`
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp16", "fp32")
#: CPU feature flags (``/proc/cpuinfo``) that mean native bf16 arithmetic (x86 AVX-512 / AMX, Arm)
NATIVE_BF16_CPU_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def autocast_factory(device: torch.device, precision: str) -> Callable[[], AbstractContextManager[Any]]:
    """A zero-argument function returning the autocast context for ``precision`` (bf16 | fp16 | fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return lambda: torch.autocast(device_type=device.type, dtype=dtype)
    raise ValueError(f"unknown precision {precision!r}; use bf16, fp16 or fp32")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where /proc/cpuinfo is unreadable."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in, what was asked for, and why (recorded in run.json)."""

    precision: str
    requested: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"used": self.precision, "requested": self.requested, "reason": self.reason}


def choose_precision(
    requested: str,
    device: torch.device,
    *,
    flags: frozenset[str] | None = None,
    cuda_bf16: bool | None = None,
    source: str | None = None,
) -> PrecisionChoice:
    """Resolve ``requested`` (auto | bf16 | fp16 | fp32) for ``device``.

    ``auto``: bf16 autocast where the hardware computes bf16 natively (CPUs with AVX-512 BF16, AMX
    or Arm BF16; CUDA GPUs of compute capability 8.0 or newer), fp16 with a gradient scaler on CUDA
    GPUs without bf16 (V100, T4), fp32 elsewhere. ``flags`` and ``cuda_bf16`` override the detection
    (for tests); ``source`` says where an explicit request came from (default: ``--precision``).
    fp16 is CUDA-only: a CPU has no fast fp16 path and the scaler targets GPUs.
    """
    from harness.errors import UserError

    if requested not in PRECISIONS:
        raise UserError(f"--precision {requested!r}: use {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        has_bf16 = torch.cuda.is_bf16_supported(including_emulation=False) if cuda_bf16 is None else cuda_bf16
        native = "this GPU computes bf16 natively" if has_bf16 else "this GPU has no native bf16"
    elif device.type == "cpu":
        found = sorted((cpu_flags() if flags is None else flags) & NATIVE_BF16_CPU_FLAGS)
        has_bf16 = bool(found)
        native = f"this CPU has native bf16 ({', '.join(found)})" if found else "this CPU has no native bf16"
    else:
        has_bf16, native = False, f"no bf16 detection for device type {device.type}"
    if requested == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU (it trains with a gradient scaler); use bf16 or fp32")
    if requested != "auto":
        note = "" if requested != "bf16" or has_bf16 else f"; {native}: emulated, likely slower than fp32"
        return PrecisionChoice(requested, requested, f"{source or '--precision ' + requested}{note}")
    if has_bf16:
        return PrecisionChoice("bf16", "auto", f"auto: {native}")
    if device.type == "cuda":
        return PrecisionChoice("fp16", "auto", f"auto: {native}, so fp16 autocast with a gradient scaler")
    return PrecisionChoice("fp32", "auto", f"auto: {native}")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and torch; optionally ask for deterministic kernels (one consistent set of flags)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def rng_state(generator: torch.Generator | None) -> dict[str, Any]:
    """Every RNG state a resumed run needs to continue identically."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def _numpy_state() -> tuple[Any, ...]:
    # as tensors and Python scalars so checkpoints load with torch.load(weights_only=True)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])
