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


#: The pipeline, bottom up (docs/architecture.md): a package, or a module at the top of ``meddeblur``, imports only
#: from its own layer or the layers below it.
LAYERS = [
    {"meddeblur", "errors"},
    {"files", "device", "shipped"},
    {"io", "plots", "metrics"},
    {"physics", "degradation", "losses"},
    {"models"},
    {"psf"},
    {"data", "synth"},
    {"restore"},
    {"inference"},
    {"runs"},
    {"training", "evaluation", "monai", "demo"},
    {"pacs", "server"},
    {"cli", "__main__"},
]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    rank = {unit: level for level, units in enumerate(LAYERS) for unit in units}
    return sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                  if rank[_unit(target)] > rank[_unit(module)])


def test_every_package_has_a_layer_and_none_imports_one_above_it() -> None:
    graph = {name: _imports(path) for name, path in MODULES.items()}
    assert {_unit(name) for name in MODULES} == set().union(*LAYERS)
    assert _upward_imports(graph) == []


def test_the_layer_check_finds_an_upward_import() -> None:
    assert _upward_imports({"meddeblur.io.decode": {"meddeblur.runs.plan"}, "meddeblur.runs.plan": {"meddeblur.io.decode"}}) == [
        "meddeblur.io.decode imports meddeblur.runs.plan"]
