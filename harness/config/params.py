"""Parameter dataclasses: building them from defaults plus ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from fractions import Fraction
from typing import Any, Literal, get_args, get_origin

from harness.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration value is invalid; the message names the key and what to do."""


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, str]]:
    """Split ``["backbone.dim_mult=2", "loss=ssl4mis"]`` into ``{"backbone": {...}, "": {...}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set backbone.dim_mult=2")
        key, value = item.split("=", 1)
        scope, _, name = key.strip().rpartition(".")
        if not name:
            raise ConfigError(f"--set {item!r}: empty key")
        out.setdefault(scope, {})[name] = value.strip()
    return out


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """Convert a command-line string to the type ``tp`` (Literal, Union, tuple, bool, int, ...)."""
    if not isinstance(value, str):
        return value
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and value.lower() in ("none", "null", ""):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot parse {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        for choice in choices:
            if str(choice) == value:
                return choice
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    if origin in (tuple, list):
        args = get_args(tp)
        inner = args[0] if args else str
        parts = [p for p in value.strip("()[] ").split(",") if p.strip()]
        items = [coerce_value(p.strip(), inner, where) for p in parts]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is float and value.count("/") == 1:  # a fraction: --labeled 1/8
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{where}: expected a number or a fraction such as 1/8, got {value!r}") from None
    if tp in (int, float):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        return value
    raise ConfigError(f"{where}: cannot set a value of type {tp} from the command line")


def build_params(cls: type, overrides: dict[str, Any] | None, who: str) -> Any:
    """Instantiate the parameters dataclass ``cls`` with ``overrides`` coerced to field types.

    ``who`` names the component in errors (``"backbone cmunet"``).
    """
    overrides = dict(overrides or {})
    if not dataclasses.is_dataclass(cls):
        if overrides:
            raise ConfigError(f"{who} takes no parameters, got {', '.join(overrides)}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"{who} has no parameter {unknown[0]!r}; its parameters are: {', '.join(sorted(names))}")
    kwargs = {k: coerce_value(v, hints[k], f"{who} parameter {k}") for k, v in overrides.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{who}: {exc}") from None


def describe_params(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) of each field of a parameters dataclass."""
    if not dataclasses.is_dataclass(cls):
        return []
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        rows.append((f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), default))
    return rows


def type_name(tp: Any) -> str:
    """A short, readable name of a field type: ``int``, ``tuple[int, ...]``, ``bf16 | fp32``."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(str(choice) for choice in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in get_args(tp))
    if origin is not None:
        args = ", ".join("..." if arg is Ellipsis else type_name(arg) for arg in get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _comment_help(cls: type) -> dict[str, str]:
    """Help from ``#:`` comments above a field and from a trailing ``# ...`` comment on its line."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    pending: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"([A-Za-z_]\w*)\s*:[^=]*(?:=.*)?$", stripped)
        if match and not stripped.startswith(("def ", "class ", "@")):
            trailing = stripped.split("  # ", 1)[1].strip() if "  # " in stripped else ""
            text = " ".join(pending) or trailing
            if text:
                out.setdefault(match.group(1), text)
        pending = []
    return out


def _docstring_help(cls: type) -> dict[str, str]:
    """Help from ``name: text`` or ``` ``name``: text``` lines of the class docstring."""
    out: dict[str, str] = {}
    for line in (inspect.getdoc(cls) or "").splitlines():
        match = re.match(r"\s*[-*]?\s*``?(\w+)``?\s*[:—-]\s+(.+)", line)
        if match:
            out.setdefault(match.group(1), match.group(2).strip())
    return out


def field_help(cls: type) -> dict[str, str]:
    """Help text per field: ``field(metadata={"help": ...})``, else a ``#:`` comment, else the docstring."""
    if not dataclasses.is_dataclass(cls):
        return {}
    comments: dict[str, str] = {}
    doc: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):  # a subclass's text wins
        comments.update(_comment_help(klass))
        doc.update(_docstring_help(klass))
    out = {}
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help") or comments.get(f.name) or doc.get(f.name) or ""
        out[f.name] = str(text)
    return out


def param_table(cls: type, presets: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every field of a parameters dataclass: name, type, default, per-preset value and help text.

    ``presets`` is the component's ``PRESETS`` table; a preset appears under a field only when it
    changes that field.
    """
    if not dataclasses.is_dataclass(cls):
        return []
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    rows = []
    for name, _, default in describe_params(cls):
        rows.append(
            {
                "name": name,
                "type": type_name(hints[name]),
                "default": None if default is dataclasses.MISSING else default,
                "required": default is dataclasses.MISSING,
                "presets": {p: values[name] for p, values in (presets or {}).items() if name in values},
                "help": helps.get(name, ""),
            }
        )
    return rows
