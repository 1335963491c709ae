"""The registry is the one list of restoration methods: everything reads it, nothing else spells a method name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import meddeblur
from meddeblur.errors import InvalidOption
from meddeblur.restore import registry

SRC = Path(meddeblur.__file__).resolve().parent


def _spellings(path: Path) -> list[str]:
    """Places in ``path`` that spell a method name where the registry should be read instead."""
    names = set(registry.METHODS)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []

    def constant(node: ast.AST) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names else None

    def about_methods(node: ast.AST) -> bool:
        text = ast.unparse(node).lower()
        return "method" in text

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and about_methods(node):
            for side in (node.left, *node.comparators):
                if constant(side):
                    found.append(f"{path.name}:{node.lineno}: compares with {constant(side)!r}")
                if isinstance(side, (ast.Tuple, ast.List, ast.Set)) and any(constant(e) for e in side.elts):
                    found.append(f"{path.name}:{node.lineno}: a list of method names")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and sum(bool(constant(e)) for e in node.elts) >= 2:
            found.append(f"{path.name}:{node.lineno}: a list of method names")
        elif isinstance(node, ast.keyword) and node.arg and "method" in node.arg and constant(node.value):
            found.append(f"{path.name}:{node.lineno}: {node.arg}={constant(node.value)!r}")
        elif isinstance(node, ast.arguments):
            positional = node.posonlyargs + node.args
            pairs = list(zip(positional[len(positional) - len(node.defaults):], node.defaults)) + list(zip(node.kwonlyargs, node.kw_defaults))
            found += [f"{path.name}:{node.lineno if hasattr(node, 'lineno') else '?'}: default {arg.arg}={constant(d)!r}"
                      for arg, d in pairs if d is not None and "method" in arg.arg and constant(d)]
        elif isinstance(node, ast.Dict) and sum(bool(k is not None and constant(k)) for k in node.keys) >= 2:
            found.append(f"{path.name}:{node.lineno}: a dict keyed by method names")
    return found


def test_no_module_but_the_registry_spells_a_method_name() -> None:
    found = [hit for path in sorted(SRC.rglob("*.py")) if path != SRC / "restore" / "registry.py" for hit in _spellings(path)]
    assert not found, "read meddeblur.restore.registry instead:\n" + "\n".join(found)


def test_the_check_finds_a_second_list(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('CHOICES = ("wiener", "rl")\ndef f(method="pnp"):\n    return method == "psf"\n')
    assert len(_spellings(bad)) == 3


def test_the_cli_and_the_server_offer_what_the_registry_holds() -> None:
    from meddeblur.cli.parser import build_parser

    parser = build_parser()
    deblur = parser._subparsers._group_actions[0].choices["deblur"]  # argparse keeps sub-commands here
    method = next(a for a in deblur._actions if a.dest == "method")
    assert tuple(method.choices) == tuple(registry.METHODS)
    from meddeblur.server.engine import WITHOUT_PSF
    from meddeblur.server.openapi import deblur_openapi

    offered = deblur_openapi(None, False)["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["method"]
    assert offered["enum"] == list(registry.METHODS)  # every method, the known-blur ones with a PSF
    assert set(WITHOUT_PSF) == {n for n, m in registry.METHODS.items() if m.told & {registry.Told.NOTHING, registry.Told.ESTIMATE}}


def test_every_known_blur_method_builds_and_labels_its_output() -> None:
    import numpy as np

    deblurrer = meddeblur.Deblurrer.load()
    image = np.random.default_rng(0).random((48, 64, 3)).astype(np.float32)
    for name in registry.names(registry.Told.PSF):
        bound = deblurrer.with_psf("gauss:sigma=1", method=name)
        assert bound(image).shape == image.shape
        assert bound.provenance["parameters"]["method"] == name


def test_unknown_and_misplaced_methods_are_refused_in_one_line() -> None:
    with pytest.raises(InvalidOption, match="choose one of"):
        registry.get("magic")
    with pytest.raises(InvalidOption, match="does not restore a known PSF"):
        registry.known_blur(registry.ESTIMATED)
