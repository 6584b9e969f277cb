"""The plugin host: entry points loaded one by one, strict mode, disable/load lists, validation."""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import types

import pytest
from typer.testing import CliRunner

from harness.hookspecs import hookimpl
from harness.plugins import PluginError, build_registry


def _module(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


class _FakeBackbone:
    """Any object can be registered; the host does not inspect components."""


def _good_plugin(name: str = "good", component: str = "tiny") -> types.ModuleType:
    @hookimpl
    def register_backbones(register):
        register(component, _FakeBackbone)

    return _module(name, register_backbones=register_backbones)


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Install modules importable by name and return entry points for them."""

    def make(**modules: types.ModuleType) -> list[md.EntryPoint]:
        eps = []
        for ep_name, module in modules.items():
            monkeypatch.setitem(sys.modules, module.__name__, module)
            eps.append(md.EntryPoint(name=ep_name, value=module.__name__, group="segbench"))
        return eps

    return make


def test_inline_plugin_registers_components():
    registry = build_registry(entry_points=[], extra_plugins=[("inline", _good_plugin())], env={})
    assert registry.get("backbone", "tiny") is _FakeBackbone
    assert registry.plugins["inline"].components == [("backbone", "tiny")]
    assert registry.plugins["inline"].hooks == ["register_backbones"]


def test_one_hook_call_registers_many():
    @hookimpl
    def register_ssl_methods(register):
        register("a", object)
        register("b", object)

    registry = build_registry(
        entry_points=[], extra_plugins=[("many", _module("m", register_ssl_methods=register_ssl_methods))], env={}
    )
    assert registry.names("ssl_method") == ["a", "b"]


def test_import_error_does_not_stop_other_plugins(fake_entry_points):
    eps = fake_entry_points(good=_good_plugin("segbench_test_good"))
    eps.append(md.EntryPoint(name="broken", value="segbench_test_missing_module_xyz", group="segbench"))
    registry = build_registry(entry_points=eps, env={})
    assert registry.plugins["broken"].status == "failed"
    assert "segbench_test_missing_module_xyz" in registry.plugins["broken"].error
    assert registry.plugins["good"].status == "loaded"
    assert registry.get("backbone", "tiny") is _FakeBackbone


def test_strict_mode_makes_load_errors_fatal(fake_entry_points):
    eps = [md.EntryPoint(name="broken", value="segbench_test_missing_module_xyz", group="segbench")]
    with pytest.raises(PluginError, match="broken"):
        build_registry(entry_points=eps, env={"SEGBENCH_STRICT_PLUGINS": "1"})


def test_disable_and_load_lists(fake_entry_points):
    eps = fake_entry_points(one=_good_plugin("segbench_test_one", "c1"), two=_good_plugin("segbench_test_two", "c2"))
    disabled = build_registry(entry_points=eps, env={"SEGBENCH_DISABLE_PLUGINS": "one"})
    assert disabled.plugins["one"].status == "disabled"
    assert disabled.names("backbone") == ["c2"]
    only = build_registry(entry_points=eps, env={"SEGBENCH_LOAD_PLUGINS": "one"})
    assert only.names("backbone") == ["c1"]
    assert only.plugins["two"].status == "disabled"


def test_a_component_of_a_disabled_plugin_names_the_plugin_to_add(fake_entry_points):
    eps = fake_entry_points(one=_good_plugin("segbench_test_one", "c1"), c2=_good_plugin("segbench_test_two", "c2"))
    only = build_registry(entry_points=eps, env={"SEGBENCH_LOAD_PLUGINS": "one"})
    with pytest.raises(PluginError, match="Plugin 'c2' is disabled: add it to SEGBENCH_LOAD_PLUGINS"):
        only.get("backbone", "c2")
    with pytest.raises(PluginError, match="Disabled by SEGBENCH_LOAD_PLUGINS / SEGBENCH_DISABLE_PLUGINS: c2"):
        only.get("backbone", "c3")


def test_misspelt_hook_is_an_error_naming_the_plugin(fake_entry_points):
    @hookimpl
    def register_backbone(register):  # missing the final "s"
        register("x", object)

    eps = fake_entry_points(typo=_module("segbench_test_typo", register_backbone=register_backbone))
    registry = build_registry(entry_points=eps, env={})
    info = registry.plugins["typo"]
    assert info.status == "failed"
    assert "register_backbone" in info.error and "did you mean 'register_backbones'" in info.error
    with pytest.raises(PluginError, match="typo"):
        build_registry(entry_points=eps, env={"SEGBENCH_STRICT_PLUGINS": "1"})


def test_duplicate_component_names_name_both_plugins(fake_entry_points):
    eps = fake_entry_points(
        first=_good_plugin("segbench_test_first", "same"), second=_good_plugin("segbench_test_second", "same")
    )
    registry = build_registry(entry_points=eps, env={})
    failed = [p for p in registry.plugins.values() if p.status == "failed"]
    assert [p.name for p in failed] == ["second"]  # the first registration keeps the name
    assert "'first'" in failed[0].error and "'second'" in failed[0].error
    assert registry.get("backbone", "same") is _FakeBackbone
    with pytest.raises(PluginError, match="first"):
        build_registry(entry_points=eps, env={"SEGBENCH_STRICT_PLUGINS": "1"})


def test_unknown_component_lists_installed():
    registry = build_registry(entry_points=[], extra_plugins=[("inline", _good_plugin())], env={})
    with pytest.raises(PluginError, match="installed: tiny"):
        registry.get("backbone", "tinny")


def test_broken_distribution_does_not_break_the_cli(tmp_path, monkeypatch):
    """A real dist-info with a broken entry point: `bench plugins --json` still works and shows it."""
    dist = tmp_path / "brokenplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[segbench]\nbrokenplug = brokenplug_missing_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SEGBENCH_STRICT_PLUGINS", raising=False)
    import harness.plugins as plugins_module

    monkeypatch.setattr(plugins_module, "_REGISTRY", None)
    from harness.cli.app import app, build_app

    build_app([])
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["brokenplug"]["status"] == "failed"
    assert rows["brokenplug"]["distribution"] == "brokenplug"
    assert "brokenplug_missing_module" in rows["brokenplug"]["error"]
    assert rows["mgcc"]["status"] == "loaded"
    monkeypatch.setattr(plugins_module, "_REGISTRY", None)


def test_hook_with_a_wrong_signature_is_reported_not_fatal(fake_entry_points):
    @hookimpl
    def register_backbones(reg):  # the hookspec's argument is called `register`
        reg("x", object)

    eps = fake_entry_points(badsig=_module("segbench_test_badsig", register_backbones=register_backbones))
    registry = build_registry(entry_points=eps, env={})
    assert registry.plugins["badsig"].status == "failed"
    assert "signature" in registry.plugins["badsig"].error


def test_a_failing_register_commands_does_not_break_the_cli():
    import typer

    from harness.plugins import add_plugin_commands

    @hookimpl
    def register_commands(app):
        raise RuntimeError("boom")

    registry = build_registry(
        entry_points=[], extra_plugins=[("cmds", _module("m2", register_commands=register_commands))], env={}
    )
    warnings: list[str] = []
    add_plugin_commands(registry, typer.Typer(), warnings.append)
    assert warnings and "'cmds'" in warnings[0] and "boom" in warnings[0]
    assert registry.plugins["cmds"].status == "failed"
