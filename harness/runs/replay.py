"""The ``bench run`` command line that trains a recorded run again, checked against its run id.

A results page lists, for every run, one command that reproduces it exactly: the grid axes as
options and every other setting as ``--set key=value``. The command is rebuilt from run.json
(its ``spec`` when the run recorded one, else its resolved ``config``), then resolved again: only
a command whose run id equals the recorded one is offered, so a page never shows a command that
would train something else.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from typing import Any

from harness.errors import UserError
from harness.plugins import Registry
from harness.runs.resolve import RunSpec, resolve

#: RunSpec fields given as their own ``bench run`` options (the grid axes and the data)
AXIS_OPTIONS = {
    "data": "--data",
    "ssl": "--ssl",
    "generator": "--generator",
    "backbone": "--backbone",
    "labeled": "--labeled",
    "fold": "--fold",
    "draw": "--draw",
    "seed": "--seed",
    "preset": "--preset",
}
#: run.json config keys that are RunSpec fields of the same name
CONFIG_FIELDS = (
    "ssl", "backbone", "generator", "labeled", "fold", "draw", "seed", "preset", "image_size", "in_channels",
    "resize", "include_strata", "normalisation", "eval_resolution", "published_metrics", "deterministic",
)  # fmt: skip
#: run.json ``config.split`` keys -> RunSpec fields
SPLIT_FIELDS = {
    "file": "split_file", "protocol": "protocol", "k": "k", "val_fraction": "val_fraction", "val_from": "val_from",
    "label_draws": "label_draws", "seed": "split_seed",
}  # fmt: skip
#: run.json ``config.train`` keys that are RunSpec fields of the same name
TRAIN_FIELDS = (
    "iterations", "labeled_batch", "unlabeled_batch", "lr", "ramp_horizon", "ramp_fraction", "precision",
    "channels_last", "compile", "val_every", "checkpoint_every", "loss",
)  # fmt: skip
#: run.json ``config`` parameter blocks -> the --set scope of the component named by the config key
PARAM_SCOPES = {"backbone_params": "backbone", "method_params": "ssl", "generator_params": "generator"}


@dataclass
class Replay:
    """A command that retrains a recorded run, and whether it resolves to the recorded run id."""

    argv: list[str]
    run_id: str | None
    recorded_id: str | None

    @property
    def exact(self) -> bool:
        return self.run_id is not None and self.run_id == self.recorded_id

    @property
    def text(self) -> str:
        return shlex.join(self.argv)


def _set_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def spec_from_record(run: dict[str, Any]) -> RunSpec:
    """The RunSpec of a recorded run: its ``spec`` when run.json has one, else rebuilt from ``config``."""
    names = {f.name for f in dataclasses.fields(RunSpec)}
    if isinstance(run.get("spec"), dict):
        return RunSpec(**{k: v for k, v in run["spec"].items() if k in names})
    config = run.get("config") or {}
    values: dict[str, Any] = {k: config[k] for k in CONFIG_FIELDS if k in config}
    data = config.get("data")
    values["data"] = None if data in (None, "phantom") else data
    values.update(
        {field: config["split"][key] for key, field in SPLIT_FIELDS.items() if key in config.get("split", {})}
    )
    values.update({k: config["train"][k] for k in TRAIN_FIELDS if k in config.get("train", {})})
    if config.get("unlabeled") not in (None, "none"):
        values["unlabeled"] = config["unlabeled"]
    if config.get("n_synthetic") not in (None, 0):
        values["n_synthetic"] = config["n_synthetic"]
    spec = RunSpec(**{k: v for k, v in values.items() if k in names})
    return dataclasses.replace(spec, overrides=_param_overrides(spec, config))


def _param_overrides(spec: RunSpec, config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``--set`` entries for every component parameter whose recorded value differs from its default."""
    try:
        defaults = resolve(dataclasses.replace(spec, overrides={})).config
    except UserError:  # a component that no longer resolves: give every recorded parameter
        defaults = {}
    overrides: dict[str, dict[str, str]] = {}
    for block, scope_key in PARAM_SCOPES.items():
        recorded = config.get(block) or {}
        default = defaults.get(block) or {}
        scope = str(config.get(scope_key, ""))
        default = json.loads(json.dumps(default, default=str))  # tuples compare as the lists run.json holds
        for key, value in recorded.items():
            if key not in default or default[key] != value:
                overrides.setdefault(scope, {})[key] = _set_text(value)
    return overrides


def command_for(spec: RunSpec, out: str, threads: int | None = None) -> list[str]:
    """``bench run`` arguments that train ``spec`` into ``out``, at ``threads`` torch threads when given."""
    argv = ["bench", "run"]
    default = RunSpec()
    for field, option in AXIS_OPTIONS.items():
        value = getattr(spec, field)
        if field in ("data", "generator", "backbone") and value == getattr(default, field):
            continue
        argv += [option, _set_text(value)]
    for field in dataclasses.fields(RunSpec):
        if field.name in AXIS_OPTIONS or field.name == "overrides":
            continue
        value = getattr(spec, field.name)
        if value != getattr(default, field.name):
            argv += ["--set", f"{field.name}={_set_text(value)}"]
    for scope, values in sorted(spec.overrides.items()):
        for key, value in sorted(values.items()):
            argv += ["--set", f"{scope}.{key}={value}" if scope else f"{key}={value}"]
    if threads is not None:
        argv += ["--threads", str(threads)]
    return [*argv, "--out", out]


def _run_id(spec: RunSpec, registry: Registry | None) -> str | None:
    try:
        return resolve(spec, registry).run_id
    except UserError:
        return None


def _shortest(spec: RunSpec, target: str, registry: Registry | None) -> RunSpec:
    """``spec`` without the settings that equal what the preset gives anyway (same run id without them)."""
    default = RunSpec()
    for field in dataclasses.fields(RunSpec):
        if field.name in AXIS_OPTIONS or field.name == "overrides":
            continue
        if getattr(spec, field.name) != getattr(default, field.name):
            trial = dataclasses.replace(spec, **{field.name: getattr(default, field.name)})
            if _run_id(trial, registry) == target:
                spec = trial
    return spec


def replay(run: dict[str, Any], out: str, registry: Registry | None = None) -> Replay:
    """The command that retrains the recorded ``run`` into ``out``, resolved again to check its run id.

    It runs at the thread count the run recorded: the id does not depend on it, but a CPU's results can
    (the order in which a convolution sums over threads), and a replay should give the same numbers.
    """
    spec = spec_from_record(run)
    run_id = _run_id(spec, registry)
    if run_id is not None and run_id == run.get("run_id"):
        spec = _shortest(spec, run_id, registry)
    threads = run.get("threads")
    on_cpu = isinstance(threads, int) and threads > 0 and (run.get("device") or "cpu") == "cpu"
    return Replay(command_for(spec, out, threads if on_cpu else None), run_id, run.get("run_id"))
