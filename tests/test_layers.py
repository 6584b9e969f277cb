"""The import contract of harness/: layers that import only downward, no cycles, no plugins.

Every import counts, also one inside a function: a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "harness"

#: lowest first; a module may import its own layer and the layers before it
LAYERS: list[tuple[str, ...]] = [
    ("harness", "harness.errors", "harness.hookspecs"),
    ("harness.config",),
    ("harness.api", "harness.plugins"),
    ("harness.data",),
    ("harness.evaluation",),
    ("harness.training",),
    ("harness.generation",),
    ("harness.runs",),
    ("harness.execution",),
    ("harness.inference",),
    ("harness.reporting",),
    ("harness.testing", "harness.cli"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(HARNESS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{module} is in no layer of tests/test_layers.py; add it"
    return best


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Modules of harness/ (and top-level plugins) that ``path`` imports, at any depth of the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    out = set()
    for name in found:
        if name.split(".")[0] == "plugins":
            out.add(name)
        elif name.split(".")[0] == "harness":
            while name not in known and "." in name:  # from harness.x import symbol -> harness.x
                name = name.rsplit(".", 1)[0]
            out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in HARNESS.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, known) - {name} for name, path in files.items()}


GRAPH = import_graph()


def test_harness_never_imports_plugins() -> None:
    offenders = sorted(f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets if t.startswith("plugins"))
    assert not offenders, "the host must not know a plugin:\n" + "\n".join(offenders)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_only_downward(module: str) -> None:
    mine = layer_of(module)
    upward = sorted(t for t in GRAPH[module] if not t.startswith("plugins") and layer_of(t) > mine)
    assert not upward, f"{module} (layer {mine}) imports higher layers: {upward}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(GRAPH.get(node, ())):
            if target not in GRAPH:
                continue
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layers_cover_every_sub_package() -> None:
    packages = {module_name(p.parent) for p in HARNESS.rglob("__init__.py")} - {"harness"}
    named = {prefix for layer in LAYERS for prefix in layer}
    assert packages <= named | {p for p in packages if any(p.startswith(n + ".") for n in named)}
