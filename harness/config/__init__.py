"""Configuration: parameter dataclasses and ``--set`` overrides (params), run presets (presets).

The parameter helpers are re-exported here: third-party plugins import them as ``harness.config``.
"""

from harness.config.params import ConfigError, build_params, coerce_value, describe_params, parse_overrides

__all__ = ["ConfigError", "build_params", "coerce_value", "describe_params", "parse_overrides"]
