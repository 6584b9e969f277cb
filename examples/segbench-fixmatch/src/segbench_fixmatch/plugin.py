"""The plugin module named by the ``segbench`` entry point: one function per hook."""

from __future__ import annotations

from typing import Any

from harness.hookspecs import Register, hookimpl

from segbench_fixmatch.backbone import AttentionUNet
from segbench_fixmatch.commands import fixmatch_info
from segbench_fixmatch.method import FixMatch


@hookimpl
def register_ssl_methods(register: Register) -> None:
    register("fixmatch", FixMatch)


@hookimpl
def register_backbones(register: Register) -> None:
    register("attention-unet", AttentionUNet)


@hookimpl
def register_commands(app: Any) -> None:
    app.command("fixmatch-info")(fixmatch_info)
