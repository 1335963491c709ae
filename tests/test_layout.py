"""The package layout: no import cycle inside ``meddeblur``, no oversized module, every module importable alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import meddeblur

PACKAGE = Path(meddeblur.__file__).parent
#: Longest module allowed; the guide's "~400 lines", with a little room for a docstring.
MAX_LINES = 420


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every ``meddeblur`` module ``path`` imports, at the top or inside a function (both can close a cycle)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "meddeblur")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "meddeblur":
            for alias in node.names:  # `from meddeblur.training import distributed` imports a module
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module)
    return {name for name in found if name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself): Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package() -> None:
    graph = {name: _imports(path) for name, path in MODULES.items()}
    assert sum(map(len, graph.values())) > 50  # the graph really was read
    assert _cycles(graph) == []


def test_no_module_is_oversized() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("module", ["meddeblur.files", "meddeblur.io.decode", "meddeblur.io.encode", "meddeblur.io.ownership",
                                    "meddeblur.degradation.pipeline", "meddeblur.training.runs", "meddeblur.inference.batch"])
def test_a_module_imports_alone(module: str) -> None:
    # A fresh interpreter: a hidden dependency on import order (a cycle broken only by luck) fails here.
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=120)
