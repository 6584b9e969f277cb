"""``bench export``: a run's inference network as ONNX or TorchScript, with a sidecar JSON.

The exported model is the inference network only: ``logits = model(x)`` with ``x`` the normalised
N x C x S x S float32 input (the batch size is free) and one logit channel out. How to get ``x``
from an image (resize mode, size, normalisation) is recorded next to it in ``<file>.json``.
Before the files are put in place the exported model is run on random inputs and compared with
PyTorch (TorchScript always; ONNX when onnxruntime is installed).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import __version__
from harness.errors import UserError
from harness.inference.network import LoadedRun, load_run_network
from harness.osutil import make_shareable
from harness.runs.store import atomic_write_json

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "image", "logits"


class ExportError(UserError):
    """The network cannot be exported as asked; the message names the missing package or the problem."""


@dataclass
class ExportResult:
    """The exported model file, its sidecar JSON and the check of the export against PyTorch."""

    path: Path
    sidecar: Path
    info: dict[str, Any]


def sidecar_path(path: Path | str) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError(
            "--format onnx needs the 'onnx' package, which is not installed: pip install onnx "
            "(and onnxruntime to check and run the exported model), or use --format torchscript"
        ) from None
    return onnx


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    # torch.jit.trace and the TorchScript-based ONNX exporter warn that they are deprecated; the files
    # they write are still the formats asked for, so the warnings would only confuse users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _export_torchscript(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet_exporters(), torch.no_grad():
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _export_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    _require_onnx()
    with _quiet_exporters(), torch.no_grad():
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,  # the TorchScript-based exporter needs only `onnx` (the dynamo one also needs onnxscript)
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )


def load_exported(path: Path | str, fmt: str | None = None) -> Callable[[np.ndarray], np.ndarray] | None:
    """``run(x: N x C x S x S float32) -> logits`` for an exported file, or None for ONNX without onnxruntime."""
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix.lower() == ".onnx" else "torchscript")
    if fmt == "torchscript":
        with _quiet_exporters():
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_torchscript(x: np.ndarray) -> np.ndarray:
            with torch.no_grad(), _quiet_exporters():
                return module(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

        return run_torchscript
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]


def _check(loaded: LoadedRun, path: Path, fmt: str, shape: tuple[int, ...]) -> dict[str, Any]:
    """Compare the exported file with PyTorch on random normalised-scale inputs of another batch size."""
    run = load_exported(path, fmt)
    if run is None:
        return {"checked": False, "why": "onnxruntime is not installed (pip install onnxruntime to check the model)"}
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = loaded.net(x).float().numpy()
    got = run(x.numpy())
    if got.shape != expected.shape:
        raise ExportError(f"the exported model returns shape {got.shape}, PyTorch {expected.shape}; export failed")
    diff = float(np.abs(got - expected).max())
    if not diff <= TOLERANCE:
        raise ExportError(
            f"the exported {fmt} model differs from PyTorch by up to {diff:.3g} (> {TOLERANCE}); nothing was written"
        )
    runtime = "onnxruntime" if fmt == "onnx" else "torch.jit"
    return {"checked": True, "runtime": runtime, "batch": shape[0], "max_abs_diff": diff, "tolerance": TOLERANCE}


NORMALISATION_TEXT = {
    "zscore": "x = (grey - mean) / std on grey values 0..255, the grey channel repeated to in_channels",
    "published": "x = ((grey / 255 - imagenet_mean) / imagenet_std) / 255 per channel, grey repeated to 3 channels",
}


def _sidecar(loaded: LoadedRun, path: Path, fmt: str, check: dict[str, Any]) -> dict[str, Any]:
    size, channels = loaded.image_size, loaded.in_channels
    info: dict[str, Any] = {
        "format": fmt,
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "created": time.time(),
        "input": {
            "name": INPUT_NAME if fmt == "onnx" else None,
            "shape": ["batch", channels, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "image_size": size,
            "channels": channels,
        },
        "output": {
            "name": OUTPUT_NAME if fmt == "onnx" else None,
            "shape": ["batch", 1, size, size],
            "meaning": "foreground logits; mask = sigmoid(logits) > 0.5 (the threshold of evaluation)",
        },
        "preprocessing": {
            "grey": "decode to 8-bit grey (harness.data.datasets.decode_image)",
            "resize": loaded.resize,
            "resize_source": loaded.resize_source,
            "resize_rule": "squash: bilinear (antialiased) to size x size; pad: keep the aspect ratio, longer side "
            "to size, centred on a zero background (harness.data.datasets.resize_image)",
            "normalisation": {**loaded.normaliser.as_dict(), "formula": NORMALISATION_TEXT[loaded.normaliser.mode]},
        },
        "postprocessing": "crop the image's box from the logits, resample bilinearly (align_corners=False) to the "
        "image's own size, then threshold sigmoid at 0.5 (what `bench predict` does)",
        "run": {
            "dir": str(Path(loaded.run_dir).resolve()),
            "name": loaded.run.get("name"),
            "run_id": loaded.run.get("run_id"),
            "ssl": loaded.config.get("ssl"),
            "backbone": loaded.config.get("backbone"),
            "backbone_params": loaded.config.get("backbone_params"),
            "checkpoint": loaded.checkpoint,
            "step": loaded.step,
            "validation_score": loaded.score,
            "test": (loaded.run.get("test") or {}).get(loaded.checkpoint),
        },
        "check": check,
        "versions": {"segbench": __version__, "torch": torch.__version__},
    }
    if fmt == "onnx":
        onnx = _require_onnx()
        model = onnx.load(str(path))
        info["versions"]["onnx"] = onnx.__version__
        info["opset"] = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return info


def export_run(
    run_dir: Path | str, fmt: str, out: Path | str, *, checkpoint: str = "best", check_batch: int = 3
) -> ExportResult:
    """Export the run's inference network as ``fmt`` (onnx | torchscript) to ``out`` plus ``<out>.json``.

    Both files are written to temporaries, checked, then renamed into place: nothing is left half-written.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: use {' or '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; give a file name, e.g. {out / ('model.' + _suffix(fmt))}")
    loaded = load_run_network(run_dir, checkpoint, "cpu")
    loaded.net.float()
    example = torch.zeros((2, loaded.in_channels, loaded.image_size, loaded.image_size))
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            (_export_onnx if fmt == "onnx" else _export_torchscript)(loaded.net, example, tmp)
        except (RuntimeError, TypeError, ValueError, torch.jit.Error) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ExportError(
                f"exporting {loaded.config.get('ssl')}/{loaded.config.get('backbone')} as {fmt} failed: {first}"
            ) from None
        check = _check(loaded, tmp, fmt, (check_batch, *example.shape[1:]))
        info = _sidecar(loaded, tmp, fmt, check)
        info["file"] = out.name
        make_shareable(tmp)  # an exported model is meant to be shared: 0644, not mkstemp's 0600
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    sidecar = sidecar_path(out)
    atomic_write_json(sidecar, info)
    return ExportResult(path=out, sidecar=sidecar, info=info)


def _suffix(fmt: str) -> str:
    return "onnx" if fmt == "onnx" else "pt"
