"""The plugin docs cannot fall behind the code: hooks, environment variables and the example's files."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from harness import api, hookspecs

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "writing-plugins.md"
USER_DOC = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "examples" / "segbench-fixmatch"
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def hookspec_functions() -> list:
    marker = f"{hookspecs.PROJECT}_spec"
    return [f for _, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, marker)]


def signature_line(function) -> str:
    """``def name(arg: Type) -> Return`` as written in hookspecs.py (annotations are strings there)."""
    sig = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {function.__name__}({params}) -> {sig.return_annotation}"


def test_there_are_hookspecs_to_check() -> None:
    names = {f.__name__ for f in hookspec_functions()}
    assert {"register_backbones", "register_ssl_methods", "register_commands"} <= names


@pytest.mark.parametrize("function", hookspec_functions(), ids=lambda f: f.__name__)
def test_every_hook_is_documented_with_its_exact_signature(function) -> None:
    guide = GUIDE.read_text()
    line = signature_line(function)
    assert f"### {function.__name__}" in guide, f"writing-plugins.md has no section for hook {function.__name__}"
    assert line in guide, f"writing-plugins.md does not show the signature `{line}`"


@pytest.mark.parametrize("function", hookspec_functions(), ids=lambda f: f.__name__)
def test_every_hook_has_a_test(function) -> None:
    tests = [p for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name]
    users = [p.name for p in tests if function.__name__ in p.read_text()]
    assert users, f"no test in tests/ mentions hook {function.__name__}; add one that uses it"


def test_every_plugin_environment_variable_is_documented_for_users() -> None:
    code = (ROOT / "harness" / "plugins.py").read_text()
    variables = set(re.findall(r"SEGBENCH_[A-Z_]+", code))
    assert variables, "harness/plugins.py reads no SEGBENCH_* variable any more: update this test"
    missing = sorted(v for v in variables if v not in USER_DOC.read_text())
    assert not missing, f"docs/plugins.md does not explain {missing}"


def test_every_contract_of_the_api_is_described_in_the_guide() -> None:
    guide = GUIDE.read_text()
    contracts = [
        name
        for name, obj in vars(api).items()
        if inspect.isclass(obj)
        and obj.__module__ == api.__name__
        and not issubclass(obj, Exception)  # errors are raised for plugins, not implemented by them
        and not name.startswith("_")
        and name != "NoParams"
    ]
    missing = [name for name in contracts if not re.search(rf"\b{name}\b", guide)]
    assert not missing, f"writing-plugins.md does not describe {missing} from harness/api.py"


def _shown_files(guide: str) -> dict[str, str]:
    """``<!-- file: PATH -->`` followed by a fenced block: the example file the guide shows."""
    shown = {}
    for match in re.finditer(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", guide, re.S):
        shown[match.group(1)] = match.group(2)
    return shown


def test_the_guide_shows_every_file_of_the_example_verbatim() -> None:
    shown = _shown_files(GUIDE.read_text())
    files = sorted(
        str(p.relative_to(EXAMPLE))
        for p in EXAMPLE.rglob("*")
        if p.suffix in (".py", ".toml") and "egg-info" not in str(p) and "__pycache__" not in p.parts
    )
    assert files and set(shown) == set(files), f"shown {sorted(shown)}, example has {files}"
    for path, text in shown.items():
        assert text == (EXAMPLE / path).read_text(), f"writing-plugins.md shows an outdated {path}"


@pytest.mark.parametrize("doc", [GUIDE, USER_DOC], ids=lambda p: p.name)
def test_python_blocks_in_the_docs_parse(doc: Path) -> None:
    for lang, body in FENCE.findall(doc.read_text()):
        if lang != "python":
            continue
        if re.fullmatch(r"def [^\n]+\) -> [^\n]+\n", body):  # a bare signature line: give it a body
            body = body.rstrip() + ": ...\n"
        ast.parse(body)
