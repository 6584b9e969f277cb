"""Every setting a user can change: the run settings and each registered component's parameters.

``bench params`` prints this catalogue; each entry says how to set the value on the command line.
"""

from __future__ import annotations

from typing import Any

from harness.config.params import param_table
from harness.config.presets import PRESETS
from harness.plugins import KIND_HOOKS, Registry, get_registry
from harness.runs.resolve import RunSpec

#: what a user may type for a kind -> the registry's kind
KIND_ALIASES = {
    "backbone": "backbone",
    "backbones": "backbone",
    "ssl": "ssl_method",
    "method": "ssl_method",
    "methods": "ssl_method",
    "ssl_method": "ssl_method",
    "ssl-method": "ssl_method",
    "generator": "generator",
    "generators": "generator",
    "dataset": "dataset",
    "datasets": "dataset",
    "data": "dataset",
    "executor": "executor",
    "executors": "executor",
    "tracker": "tracker",
    "trackers": "tracker",
    "run": "run",
}

#: how each kind's parameters are set on the command line ({name} is the component)
HOW_TO_SET = {
    "run": "--set KEY=VALUE",
    "backbone": "--set backbone.KEY=VALUE (every backbone that has KEY) or --set {name}.KEY=VALUE",
    "ssl_method": "--set {name}.KEY=VALUE",
    "generator": "--set {name}.KEY=VALUE",
    "dataset": "--data {name}:KEY=VALUE,KEY=VALUE",
    "executor": "--executor {name} --exec-set KEY=VALUE",
    "tracker": "--tracker {name} --tracker-set {name}.KEY=VALUE",
}

_RUN_PRESET_KEYS = {"folds": "fold"}


def canonical_kind(kind: str) -> str:
    """``ssl`` -> ``ssl_method`` ...; raises naming the kinds that exist."""
    from harness.config.params import ConfigError

    key = kind.strip().lower()
    if key not in KIND_ALIASES:
        raise ConfigError(f"unknown kind {kind!r}; use one of run, {', '.join(KIND_HOOKS)} (or ssl for ssl_method)")
    return KIND_ALIASES[key]


def _run_entry() -> dict[str, Any]:
    presets = {
        name: {_RUN_PRESET_KEYS.get(k, k): v for k, v in preset.as_dict().items() if k != "name"}
        for name, preset in PRESETS.items()
    }
    for values in presets.values():
        if values.get("fold", 0) is None:
            values["fold"] = "all"
    rows = [row for row in param_table(RunSpec, presets) if row["name"] != "overrides"]
    return {"kind": "run", "name": "run", "plugin": "segbench", "set": HOW_TO_SET["run"], "params": rows}


def catalog(kind: str | None = None, name: str | None = None, registry: Registry | None = None) -> list[dict[str, Any]]:
    """One entry per component (and one for the run settings): kind, name, plugin, how to set, params.

    Each param is ``{name, type, default, required, presets, help}``; ``presets`` holds only the
    presets that change the default.
    """
    registry = registry or get_registry()
    kinds = [canonical_kind(kind)] if kind else ["run", *KIND_HOOKS]
    entries = []
    for k in kinds:
        if k == "run":
            if name not in (None, "run"):
                from harness.config.params import ConfigError

                raise ConfigError(f"the run settings have no component {name!r}; use `bench params run`")
            entries.append(_run_entry())
            continue
        names = [name] if name else registry.names(k)
        for component_name in names:
            component = registry.get(k, component_name)
            params_cls = getattr(component, "Params", None)
            entries.append(
                {
                    "kind": k,
                    "name": component_name,
                    "plugin": registry.owner(k, component_name).name,
                    "set": HOW_TO_SET[k].format(name=component_name),
                    "params": param_table(params_cls, getattr(component, "PRESETS", {})) if params_cls else [],
                }
            )
    return entries
