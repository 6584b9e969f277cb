"""The example third-party package and one-file plugins, through the real `bench` command line.

The fast tests import the example from its source folder; the slow ones pip-install it into this
environment (editable, offline), run `bench` in subprocesses and uninstall it again.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from harness.plugins import build_registry
from harness.testing import check_backbone, check_ssl_method

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "segbench-fixmatch"
GUIDE = ROOT / "docs" / "writing-plugins.md"
BENCH = str(Path(sys.executable).parent / "bench")
TINY_RUN = ["--preset", "quick", "--iterations", "20", "--image-size", "32", "--quiet"]


@pytest.fixture
def example_plugin(monkeypatch):
    """The example's plugin module, imported from its source folder (no installation)."""
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    return importlib.import_module("segbench_fixmatch.plugin")


def test_example_registers_a_method_a_backbone_and_a_command(example_plugin) -> None:
    registry = build_registry(entry_points=[], extra_plugins=[("fixmatch", example_plugin)], env={})
    info = registry.plugins["fixmatch"]
    assert info.status == "loaded", info.error
    assert info.hooks == ["register_backbones", "register_commands", "register_ssl_methods"]
    assert sorted(info.components) == [("backbone", "attention-unet"), ("ssl_method", "fixmatch")]
    check_ssl_method(registry.get("ssl_method", "fixmatch"))
    check_backbone(registry.get("backbone", "attention-unet"), {"width": 4})

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """test root"""

    registry.manager.hook.register_commands(app=app)
    result = CliRunner().invoke(app, ["fixmatch-info", "--json"])
    assert result.exit_code == 0, result.output
    defaults = {row["name"]: row["default"] for row in json.loads(result.stdout)}
    assert defaults == {"threshold": 0.95, "lambda_u": 1.0, "hard_label": True, "temperature": 0.5}


# --------------------------------------------------------------------------- subprocess helpers


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGBENCH_")}
    return {**env, "SEGBENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **extra}


def _run(args: list[str], tmp_path: Path, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_env(tmp_path, **env))
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _plugins(tmp_path: Path, *plugin_files: Path) -> tuple[dict[str, dict], str]:
    options = [arg for f in plugin_files for arg in ("--plugin", str(f))]
    result = _run([BENCH, *options, "plugins", "--json"], tmp_path)
    return {row["name"]: row for row in json.loads(result.stdout)}, result.stderr


def _one_run(out: Path) -> dict:
    (record,) = [json.loads(p.read_text()) for p in out.glob("*/run.json")]
    assert record["status"] == "done"
    return record


def one_file_plugin(tmp_path: Path) -> Path:
    """The one-file plugin of writing-plugins.md, exactly as the guide shows it."""
    guide = GUIDE.read_text()
    match = re.search(r"<!-- test: one-file-plugin -->\n```python\n(.*?)```", guide, re.S)
    assert match, "writing-plugins.md lost its one-file plugin example"
    path = tmp_path / "entropy_min.py"
    path.write_text(match.group(1))
    return path


# --------------------------------------------------------------------------- the installed package


@pytest.mark.slow
def test_installed_example_is_listed_runs_and_passes_its_own_tests(tmp_path) -> None:
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(EXAMPLE)], tmp_path)
    try:
        rows, _ = _plugins(tmp_path)
        row = rows["fixmatch"]
        assert (row["status"], row["distribution"], row["version"]) == ("loaded", "segbench-fixmatch", "0.1.0")
        assert "register_commands" in row["hooks"]
        assert {(c["kind"], c["name"]) for c in row["components"]} == {
            ("ssl_method", "fixmatch"),
            ("backbone", "attention-unet"),
        }
        assert "threshold" in _run([BENCH, "fixmatch-info"], tmp_path).stdout

        out = tmp_path / "runs"
        _run(
            [BENCH, "run", "--ssl", "fixmatch", "--backbone", "attention-unet", *TINY_RUN, "--out", str(out)], tmp_path
        )
        record = _one_run(out)
        plugins = record["versions"]["plugins"]
        assert plugins["ssl_method"] == {
            "name": "fixmatch",
            "plugin": "fixmatch",
            "distribution": "segbench-fixmatch",
            "version": "0.1.0",
        }
        assert plugins["backbone"]["distribution"] == "segbench-fixmatch"
        assert record["config"]["method_params"]["threshold"] == 0.95
        assert (out / record["name"] / "metrics.csv").is_file()

        # the example's own suite, with the kit parametrizing over what the installed package registers
        tests = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], EXAMPLE)
        assert re.search(r"\b7 passed\b", tests.stdout) and "skipped" not in tests.stdout, tests.stdout
    finally:
        _run([*pip, "uninstall", "-y", "segbench-fixmatch"], tmp_path)
    rows, _ = _plugins(tmp_path)
    assert "fixmatch" not in rows


# --------------------------------------------------------------------------- one-file plugins


@pytest.mark.slow
def test_one_file_plugin_registers_for_one_invocation(tmp_path) -> None:
    plugin = one_file_plugin(tmp_path)
    rows, stderr = _plugins(tmp_path, plugin)
    row = rows["entropy_min"]
    assert (row["status"], row["distribution"]) == ("loaded", "(file)")
    assert row["components"] == [{"kind": "ssl_method", "name": "entropy-min"}]
    assert "entropy_min" not in stderr
    assert "entropy_min" not in _plugins(tmp_path)[0]  # not without --plugin

    out = tmp_path / "runs"
    args = ["--ssl", "entropy-min", "--backbone", "unet", "--set", "backbone.width=4", *TINY_RUN, "--out", str(out)]
    _run([BENCH, "--plugin", str(plugin), "run", *args], tmp_path)
    record = _one_run(out)
    assert record["versions"]["plugins"]["ssl_method"]["distribution"] == "(file)"


HOOKIMPL = "from harness.hookspecs import hookimpl\n\n@hookimpl\n"
BROKEN = {
    "typo": HOOKIMPL + 'def register_backbone(register):\n    register("t", object)\n',
    "dup": HOOKIMPL + 'def register_backbones(register):\n    register("unet", object)\n',
    "broken": "import segbench_no_such_module_xyz\n",
}


@pytest.mark.slow
def test_broken_plugins_are_reported_clearly_without_breaking_the_cli(tmp_path) -> None:
    files = []
    for name, text in BROKEN.items():
        files.append(tmp_path / f"{name}.py")
        files[-1].write_text(text)
    good = one_file_plugin(tmp_path)
    rows, stderr = _plugins(tmp_path, *files, good)
    assert (rows["typo"]["status"], rows["broken"]["status"], rows["entropy_min"]["status"]) == (
        "failed",
        "failed",
        "loaded",
    )
    assert "did you mean 'register_backbones'" in rows["typo"]["error"]
    assert "No module named 'segbench_no_such_module_xyz'" in rows["broken"]["error"]
    # one of the two plugins that register backbone "unet" keeps it; the other fails, naming both
    (clash,) = [rows[n] for n in ("dup", "unet") if rows[n]["status"] == "failed"]
    assert "'unet'" in clash["error"] and "'dup'" in clash["error"]
    for name in ("typo", "broken", clash["name"]):
        assert f"warning: plugin {name!r}" in stderr
    assert "Traceback" not in stderr

    strict = _run([BENCH, "--plugin", str(files[0]), "plugins"], tmp_path, ok=False, SEGBENCH_STRICT_PLUGINS="1")
    assert strict.returncode == 2
    assert "error: plugin 'typo'" in strict.stderr and "Traceback" not in strict.stderr
