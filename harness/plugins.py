"""The plugin host: loads built-in and third-party plugins from the ``segbench`` entry-point group.

Each entry point is loaded on its own, so one broken plugin never stops the others: its error is
recorded, shown once by the CLI and listed by ``bench plugins``. Environment variables:

- ``SEGBENCH_STRICT_PLUGINS=1``: any load or registration error is fatal.
- ``SEGBENCH_DISABLE_PLUGINS=a,b``: do not load these plugins.
- ``SEGBENCH_LOAD_PLUGINS=a,b``: load only these plugins.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import importlib.util
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from harness import hookspecs
from harness.errors import UserError

ENTRY_POINT_GROUP = "segbench"

#: component kind -> the hook that registers it
KIND_HOOKS: dict[str, str] = {
    "backbone": "register_backbones",
    "ssl_method": "register_ssl_methods",
    "generator": "register_generators",
    "dataset": "register_datasets",
    "executor": "register_executors",
    "tracker": "register_trackers",
}
KNOWN_HOOKS = frozenset([*KIND_HOOKS.values(), "register_commands"])


class PluginError(UserError, RuntimeError):
    """A plugin could not be loaded or registered something invalid."""


@dataclass
class PluginInfo:
    """What ``bench plugins`` shows about one plugin."""

    name: str
    distribution: str = ""
    version: str = ""
    module: str = ""
    status: str = "loaded"  # loaded | failed | disabled
    error: str = ""
    hooks: list[str] = field(default_factory=list)
    components: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "status": self.status,
            "error": self.error,
            "hooks": list(self.hooks),
            "components": [{"kind": k, "name": n} for k, n in self.components],
        }


@dataclass
class Registry:
    """Every registered component, by kind and name, and the plugins they came from."""

    plugins: dict[str, PluginInfo]
    components: dict[str, dict[str, Any]]
    owners: dict[tuple[str, str], str]
    manager: pluggy.PluginManager

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> Any:
        """Return the component ``name`` of ``kind``, or raise naming the ones that exist."""
        try:
            return self.components[kind][name]
        except KeyError:
            known = ", ".join(self.names(kind)) or "none"
            hint = difflib.get_close_matches(name, self.names(kind), n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise PluginError(
                f"unknown {kind.replace('_', ' ')} {name!r}; installed: {known}.{extra}{self._disabled_hint(name)} "
                "Run `bench plugins` to see what is installed and what failed to load."
            ) from None

    def _disabled_hint(self, name: str) -> str:
        """Point at a plugin that SEGBENCH_LOAD_PLUGINS / SEGBENCH_DISABLE_PLUGINS kept from loading."""
        disabled = sorted(n for n, info in self.plugins.items() if info.status == "disabled")
        if not disabled:
            return ""
        same = [n for n in disabled if n.replace("_", "-") == name.replace("_", "-")]
        if same:
            return (
                f" Plugin {same[0]!r} is disabled: add it to SEGBENCH_LOAD_PLUGINS "
                "(or remove it from SEGBENCH_DISABLE_PLUGINS)."
            )
        return f" Disabled by SEGBENCH_LOAD_PLUGINS / SEGBENCH_DISABLE_PLUGINS: {', '.join(disabled)}."

    def owner(self, kind: str, name: str) -> PluginInfo:
        return self.plugins[self.owners[(kind, name)]]

    @property
    def problems(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.status == "failed"]


def strict_plugins(env: Mapping[str, str] | None = None) -> bool:
    """True when ``SEGBENCH_STRICT_PLUGINS`` asks for plugin errors to be fatal."""
    env = os.environ if env is None else env
    return env.get("SEGBENCH_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def _env_list(env: Mapping[str, str], key: str) -> set[str] | None:
    value = env.get(key, "").strip()
    if not value:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _hook_names(plugin: object) -> list[str]:
    """Names of the attributes of ``plugin`` marked with ``@hookimpl``."""
    marker = f"{hookspecs.PROJECT}_impl"
    return sorted(name for name in dir(plugin) if not name.startswith("_") and hasattr(getattr(plugin, name), marker))


def _load_file_plugin(path: Path) -> ModuleType:
    if not path.is_file():
        raise PluginError(f"plugin file {path} does not exist; pass the path of a .py file")
    module_name = f"segbench_local_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin file {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)  # leave no half-imported module behind
        raise
    return module


def build_registry(
    *,
    entry_points: Iterable[md.EntryPoint] | None = None,
    extra_plugins: Iterable[tuple[str, object]] = (),
    plugin_files: Iterable[Path] = (),
    env: Mapping[str, str] | None = None,
) -> Registry:
    """Load plugins and collect their components.

    ``entry_points`` defaults to the installed ``segbench`` group; ``extra_plugins`` are inline
    ``(name, module_or_object)`` pairs; ``plugin_files`` are one-file plugins loaded by path.
    """
    env = os.environ if env is None else env
    strict = strict_plugins(env)
    disabled = _env_list(env, "SEGBENCH_DISABLE_PLUGINS") or set()
    only = _env_list(env, "SEGBENCH_LOAD_PLUGINS")

    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}

    def fail(info: PluginInfo, message: str) -> None:
        info.status = "failed"
        info.error = message
        if strict:
            raise PluginError(f"plugin {info.name!r} ({info.distribution or 'local'}): {message}")

    def add(info: PluginInfo, plugin: object) -> None:
        infos[info.name] = info
        info.hooks = _hook_names(plugin)
        unknown = [h for h in info.hooks if h not in KNOWN_HOOKS]
        if unknown:
            hints = [difflib.get_close_matches(h, KNOWN_HOOKS, n=1) for h in unknown]
            described = ", ".join(
                f"{h!r}" + (f" (did you mean {m[0]!r}?)" if m else "") for h, m in zip(unknown, hints, strict=True)
            )
            fail(info, f"implements unknown hook {described}; known hooks: {', '.join(sorted(KNOWN_HOOKS))}")
            return
        try:
            manager.register(plugin, name=info.name)
        except pluggy.PluginValidationError as exc:
            fail(info, f"hook signature does not match segbench's hookspecs: {exc}")

    eps = list(md.entry_points(group=ENTRY_POINT_GROUP)) if entry_points is None else list(entry_points)
    for ep in sorted(eps, key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(
            name=ep.name,
            distribution=dist.name if dist else "",
            version=dist.version if dist else "",
            module=ep.value,
        )
        if ep.name in infos:
            fail(info, f"entry-point name already used by {infos[ep.name].distribution or 'another plugin'}")
            continue
        if ep.name in disabled or (only is not None and ep.name not in only):
            info.status = "disabled"
            infos[ep.name] = info
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - any import error must not stop the other plugins
            infos[ep.name] = info
            fail(info, f"import failed: {type(exc).__name__}: {exc}")
            continue
        add(info, plugin)

    for name, plugin in extra_plugins:
        add(PluginInfo(name=name, distribution="(inline)", module=getattr(plugin, "__name__", repr(plugin))), plugin)
    for path in plugin_files:
        path = Path(path)
        name = path.stem if path.stem not in infos else str(path)
        info = PluginInfo(name=name, distribution="(file)", module=str(path))
        try:
            plugin = _load_file_plugin(path)
        except PluginError:
            raise
        except Exception as exc:  # noqa: BLE001
            infos[info.name] = info
            fail(info, f"import failed: {type(exc).__name__}: {exc}")
            continue
        add(info, plugin)

    components: dict[str, dict[str, Any]] = {kind: {} for kind in KIND_HOOKS}
    owners: dict[tuple[str, str], str] = {}
    for kind, hook_name in KIND_HOOKS.items():
        hook = getattr(manager.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order: the first plugin keeps a contested name
            info = infos[impl.plugin_name]
            if info.status != "loaded":
                continue
            staged: list[tuple[str, Any]] = []

            def register(name: str, component: Any, _staged: list = staged) -> None:
                _staged.append((name, component))

            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001
                fail(info, f"{hook_name} raised {type(exc).__name__}: {exc}")
                continue
            clash = [(n, owners[(kind, n)]) for n, _ in staged if (kind, n) in owners]
            if clash:
                name, other = clash[0]
                fail(
                    info,
                    f"{kind.replace('_', ' ')} name {name!r} is registered by both plugin {other!r} "
                    f"and plugin {info.name!r}; rename one or disable one with SEGBENCH_DISABLE_PLUGINS",
                )
                continue
            for name, component in staged:
                components[kind][name] = component
                owners[(kind, name)] = info.name
                info.components.append((kind, name))

    # Plugins that failed while registering must not add commands either.
    for info in infos.values():
        if info.status == "failed" and manager.has_plugin(info.name):
            manager.unregister(name=info.name)
    return Registry(plugins=infos, components=components, owners=owners, manager=manager)


_REGISTRY: Registry | None = None
_PLUGIN_FILES: list[Path] = []


def add_plugin_files(paths: Iterable[Path]) -> None:
    """Load these one-file plugins too (``bench --plugin FILE``); resets the cached registry."""
    global _REGISTRY
    _PLUGIN_FILES.extend(Path(p) for p in paths)
    _REGISTRY = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry(plugin_files=_PLUGIN_FILES)
    return _REGISTRY


def add_plugin_commands(registry: Registry, app: Any, warn: Any) -> None:
    """Call every plugin's ``register_commands(app)``; one that raises is reported, not fatal.

    ``warn(message)`` reports a failure; with ``SEGBENCH_STRICT_PLUGINS=1`` it is raised instead.
    """
    strict = strict_plugins()
    for impl in registry.manager.hook.register_commands.get_hookimpls():
        try:
            impl.function(app=app)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
            message = f"plugin {impl.plugin_name!r} failed: register_commands raised {type(exc).__name__}: {exc}"
            info = registry.plugins.get(impl.plugin_name)
            if info is not None:
                info.status, info.error = "failed", message
            if strict:
                raise PluginError(message) from exc
            warn(message)
