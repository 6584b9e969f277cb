"""The run's config and id are derived from the RunSpec declarations, and the defaults travel in run.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from harness.config.presets import PRESETS, Preset
from harness.reporting.load import run_record
from harness.reporting.tables import registry_defaults
from harness.runs.resolve import RunSpec, resolve

#: a valid value other than the default for every RunSpec field (the base run uses the ldm generator,
#: so that the pool settings count)
OTHER_VALUES = {
    "ssl": "cct", "backbone": "unet", "generator": "none", "data": "phantom:count=40", "labeled": 0.5, "fold": 0,
    "draw": 1, "seed": 1, "preset": "medium", "image_size": 32, "iterations": 7, "labeled_batch": 2,
    "unlabeled_batch": 2, "in_channels": 3, "resize": "pad", "include_strata": ["benign"], "normalisation": "published",
    "precision": "bf16", "channels_last": False, "compile": True, "val_every": 3, "checkpoint_every": 3,
    "ramp_horizon": "published", "ramp_fraction": 0.5, "loss": "ssl4mis", "lr": 0.02, "eval_resolution": "model",
    "published_metrics": True, "unlabeled": "synthetic", "n_synthetic": 9, "protocol": "paper-like", "k": 3,
    "val_fraction": 0.2, "val_from": "labeled", "label_draws": 2, "split_seed": 1, "split_file": "other-split.json",
    "deterministic": True, "overrides": {"mgcc": {"consistency": "0.1"}},
}  # fmt: skip


def test_every_run_setting_reaches_the_run_id():
    base = RunSpec(generator="ldm", fold=1)
    assert set(OTHER_VALUES) == {f.name for f in dataclasses.fields(RunSpec)}, "add the new field here"
    base_id = resolve(base).run_id
    for name, value in OTHER_VALUES.items():
        changes = {name: value}
        if name == "normalisation":
            changes["in_channels"] = 3  # the published normalisation needs 3 channels
        if name == "backbone":
            changes["overrides"] = {"backbone": {"context_lengths": "1,1,1"}}  # mgcc needs context stages
        if name == "fold":
            changes["fold"] = 0
        if name == "protocol":
            changes.update(val_from="train", fold=0)
        assert resolve(dataclasses.replace(base, **changes)).run_id != base_id, name


def test_presets_are_typed():
    assert all(isinstance(p, Preset) and p.name == name for name, p in PRESETS.items())
    assert PRESETS["quick"].folds == (0,) and PRESETS["paper"].folds is None
    run = resolve(RunSpec(preset="paper", ssl="supervised"))
    assert run.preset is PRESETS["paper"] and run.settings.precision == "fp32" and run.image_size == 256


def test_resolved_defaults_are_recorded_for_reporting():
    run = resolve(RunSpec(ssl="mgcc", overrides={"mgcc": {"consistency": "0.1"}}))
    assert run.config["method_params"]["consistency"] == 0.1
    assert run.defaults["method_params"]["consistency"] == 7.0  # the default, not this run's value
    assert run.defaults["run"]["ramp_horizon"] == "scaled" and run.defaults["preset"]["iterations"] == 300
    record = run_record({"config": run.config, "defaults": run.defaults, "status": "done"}, Path("r"))
    defaults = registry_defaults(pd.Series(record))
    assert defaults["method.consistency"] == 7.0 and defaults["train_precision"] == "auto"


def test_tables_read_recorded_defaults_without_the_registry():
    recorded = {"run": {"lr": 0.01}, "method_params": {"gate": 3}, "backbone_params": {}, "generator_params": {}}
    row = pd.Series({"ssl": "a-method-no-longer-installed", "preset": "quick", "defaults": json.dumps(recorded)})
    assert registry_defaults(row) == {"lr": 0.01, "method.gate": 3}


def test_old_run_dirs_fall_back_to_the_registry():
    row = pd.Series({"ssl": "mgcc", "backbone": "cmunet", "generator": "none", "preset": "quick", "defaults": None})
    defaults = registry_defaults(row)
    assert defaults["method.consistency"] == 7.0 and defaults["backbone.dim_mult"] == 1
