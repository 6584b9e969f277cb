"""Rebuild a trained run's inference network from its run directory (run.json + a checkpoint).

Shared by ``bench predict``, ``bench export`` and the qualitative grid of ``bench plot``. The
network is rebuilt with the run's recorded plugin names and parameters, the checkpoint is loaded
with ``weights_only=True``, and every way this can fail is a :class:`InferenceError` that names
the missing file or component.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.api import build_method
from harness.config.params import ConfigError, build_params
from harness.data.normalize import Normaliser
from harness.errors import UserError
from harness.plugins import PluginError, Registry, get_registry
from harness.runs.store import RUN_FILE
from harness.training.device import autocast_factory
from harness.training.engine import make_predictor

CHECKPOINTS = ("best", "last")
Predict = Callable[[torch.Tensor], torch.Tensor]


class InferenceError(UserError):
    """A run directory cannot be turned back into a network; the message names what is missing."""


@dataclass
class LoadedRun:
    """A run's inference network (eval mode, on ``device``) with what is needed to feed it."""

    net: nn.Module
    normaliser: Normaliser
    run: dict[str, Any]
    run_dir: Path
    checkpoint: str
    checkpoint_path: Path
    step: int
    score: float | None
    device: torch.device
    resize: str
    resize_source: str

    @property
    def config(self) -> dict[str, Any]:
        return self.run["config"]

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def precision(self) -> str:
        return (self.config.get("train") or {}).get("precision", "fp32")

    def predictor(self) -> Predict:
        """``predict(uint8 N x 1 x S x S on device) -> fp32 logits`` with the run's normalisation and precision."""
        channels_last = bool((self.config.get("train") or {}).get("channels_last")) and self.device.type == "cuda"
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        return make_predictor(self.net, self.normaliser, autocast_factory(self.device, self.precision), channels_last)


def read_run_record(run_dir: Path | str) -> dict[str, Any]:
    """The run.json of ``run_dir``; raises when the folder is not a run directory."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise InferenceError(f"run directory {run_dir} does not exist; give a folder made by `bench run`")
    if not path.is_file():
        inside = sorted(p.parent.name for p in run_dir.glob(f"*/{RUN_FILE}"))
        hint = f" It holds runs: {', '.join(inside[:5])}{' ...' if len(inside) > 5 else ''}." if inside else ""
        raise InferenceError(
            f"{run_dir} has no {RUN_FILE}: give one run's directory (a folder under the --out of `bench run`).{hint}"
        )
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InferenceError(f"{path} is not readable JSON ({exc}); the run directory is damaged, rerun it") from None
    if not isinstance(run, dict):
        raise InferenceError(f"{path} does not hold a run record (a JSON object); rerun the run")
    missing = [key for key in ("config", "normalisation") if key not in run]
    if missing:
        status = run.get("status")
        raise InferenceError(
            f"{path} has no {' or '.join(missing)} (run status: {status}); the run has not got far "
            "enough to be used: train it with `bench run`"
        )
    return run


def _component(registry: Registry, run: dict[str, Any], kind: str, name: str, run_json: Path) -> Any:
    try:
        return registry.get(kind, name)
    except PluginError as exc:
        owner = ((run.get("versions") or {}).get("plugins") or {}).get(kind) or {}
        origin = ""
        if owner.get("distribution"):
            origin = f" (from plugin {owner.get('plugin')!r} of {owner['distribution']} {owner.get('version', '')})"
        raise InferenceError(
            f"{run_json}: cannot rebuild the network: it was trained with {kind.replace('_', ' ')} {name!r}{origin}, "
            f"which is not installed here; install that plugin, or load its file with --plugin FILE. ({exc})"
        ) from None


def _params(cls: Any, values: dict[str, Any], who: str, run_json: Path) -> Any:
    """The parameters dataclass from run.json values (JSON lists back to tuples where the field is a tuple)."""
    params_cls = getattr(cls, "Params", None)
    values = dict(values or {})
    if dataclasses.is_dataclass(params_cls):
        hints = typing.get_type_hints(params_cls)
        for key, value in values.items():
            if isinstance(value, list) and typing.get_origin(hints.get(key)) is tuple:
                values[key] = tuple(value)
    try:
        return build_params(params_cls, values, who)
    except ConfigError as exc:
        raise InferenceError(
            f"{run_json}: cannot rebuild {who} with its recorded parameters ({exc}); the installed plugin differs "
            "from the one the run was trained with"
        ) from None


def method_from_record(run: dict[str, Any], run_dir: Path, registry: Registry | None = None) -> nn.Module:
    """The run's SSL method with fresh weights, rebuilt from run.json's plugin names and parameters."""
    registry = registry or get_registry()
    run_json = Path(run_dir) / RUN_FILE
    cfg = run["config"]
    try:
        ssl, backbone, in_channels = cfg["ssl"], cfg["backbone"], int(cfg["in_channels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InferenceError(f"{run_json}: config lacks {exc}; the file is damaged, rerun the run") from None
    method_cls = _component(registry, run, "ssl_method", ssl, run_json)
    backbone_cls = _component(registry, run, "backbone", backbone, run_json)
    method_params = _params(method_cls, cfg.get("method_params"), f"method {ssl}", run_json)
    backbone_params = _params(backbone_cls, cfg.get("backbone_params"), f"backbone {backbone}", run_json)
    try:
        return build_method(method_cls, backbone_cls, in_channels, backbone_params, method_params)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InferenceError(f"{run_json}: building method {ssl} on backbone {backbone} failed: {exc}") from None


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """``run_dir/checkpoints/<checkpoint>.pt``; raises naming what exists when it is missing."""
    if checkpoint not in CHECKPOINTS:
        raise InferenceError(f"--checkpoint {checkpoint!r}: use {' or '.join(CHECKPOINTS)}")
    path = Path(run_dir) / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        present = sorted(p.stem for p in path.parent.glob("*.pt") if p.stem in CHECKPOINTS)
        hint = (
            f"it has {', '.join(present)}: pass --checkpoint {present[0]}"
            if present
            else "it has no usable checkpoint: finish training it with `bench run` (same options) first"
        )
        raise InferenceError(f"{path} is missing; {hint}")
    return path


def resolve_resize(run: dict[str, Any]) -> tuple[str, str]:
    """(resize mode the run's images were resized with, where that came from).

    run.json records ``resize`` only when it was given; otherwise the dataset folder's dataset.toml
    decided it (squash when it says nothing).
    """
    from harness.data.datasets import read_dataset_toml

    cfg = run["config"]
    if cfg.get("resize"):
        return cfg["resize"], "run config"
    recorded = (run.get("data") or {}).get("resize")
    if recorded:
        return recorded, "run data record"
    data = cfg.get("data")
    if data:
        folder = Path(str(data)).expanduser()
        if folder.is_dir():
            mode = read_dataset_toml(folder / "dataset.toml").resize
            if mode:
                return mode, f"{folder / 'dataset.toml'}"
    return "squash", "default (squash)"


def load_run_network(run_dir: Path | str, checkpoint: str = "best", device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild the run's inference network, load ``checkpoint`` (best | last) into it, eval mode, on ``device``."""
    run_dir = Path(run_dir)
    run = read_run_record(run_dir)
    path = checkpoint_path(run_dir, checkpoint)
    method = method_from_record(run, run_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
        raise InferenceError(f"{path}: cannot read the checkpoint ({exc}); it is damaged: rerun the run") from None
    if not isinstance(state, dict) or "method" not in state:
        raise InferenceError(f"{path} is not a segbench weights checkpoint (no 'method' state)")
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InferenceError(
            f"{path} does not fit the network rebuilt from run.json ({first}); the installed "
            f"{run['config']['ssl']}/{run['config']['backbone']} plugins differ from the ones it was trained with"
        ) from None
    try:
        normaliser = Normaliser(**run["normalisation"])
    except TypeError as exc:
        raise InferenceError(f"{run_dir / RUN_FILE}: invalid normalisation record ({exc})") from None
    device = torch.device(device)
    method.eval()
    net = method.inference_network().to(device).eval()
    resize, source = resolve_resize(run)
    score = state.get("score")
    return LoadedRun(
        net=net,
        normaliser=normaliser,
        run=run,
        run_dir=run_dir,
        checkpoint=checkpoint,
        checkpoint_path=path,
        step=int(state.get("step", -1)),
        score=float(score) if isinstance(score, int | float) else None,
        device=device,
        resize=resize,
        resize_source=source,
    )
