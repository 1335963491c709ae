"""A core-only install (``pip install meddeblur``, no extras) in a fresh virtual environment deblurs a PNG.

The environment is really new and really without extras: a ``venv`` holding only the distributions that
meddeblur's core requirements need (linked from this environment, so no download and no copy of torch), and
meddeblur itself installed from this source tree as a wheel, not in editable mode, so the packaging (every
sub-package, the shipped weights) is what is tested.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from importlib.metadata import Distribution, distribution
from pathlib import Path

import numpy as np
from packaging.requirements import Requirement
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
#: Modules only the extras install; none may be importable in the core environment.
EXTRA_MODULES = ("fastapi", "uvicorn", "onnx", "onnxruntime", "onnxscript", "pydicom", "matplotlib", "skimage", "multipart")


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _core_closure() -> dict[str, Distribution]:
    """Every distribution meddeblur's core requirements need, transitively (extras' markers are false here)."""
    found: dict[str, Distribution] = {}
    todo = [Requirement(r) for r in distribution("meddeblur").requires or []]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if _key(requirement.name) in found:
            continue
        dist = found[_key(requirement.name)] = distribution(requirement.name)
        todo.extend(Requirement(r) for r in dist.requires or [])
    return found


def _link_into(site: Path, dists: dict[str, Distribution]) -> None:
    for name, dist in dists.items():
        assert dist.files is not None, f"{name}: no RECORD, cannot tell its files"
        tops = {Path(f).parts[0] for f in dist.files if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)


def test_the_core_closure_has_no_extra():
    names = set(_core_closure())
    assert {"torch", "numpy", "pillow", "opencv-python-headless", "tifffile"} <= names
    assert not names & {_key(n) for n in ("fastapi", "uvicorn", "onnx", "onnxruntime", "pydicom", "matplotlib", "scikit-image")}


def test_a_core_only_install_in_a_fresh_venv_deblurs_a_png(tmp_path):
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    _link_into(site, _core_closure())
    # meddeblur itself: a wheel built from a copy of this tree (setuptools builds in place; the tree is not ours to write).
    source = tmp_path / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-compile",
                    "--target", str(site), str(source)], check=True, timeout=300, cwd=tmp_path,
                   env={**os.environ, "PIP_NO_INDEX": "1"})
    assert not (site / "meddeblur" / "__init__.py").is_symlink() and (site / "meddeblur" / "weights" / "default.safetensors").is_file()

    Image.fromarray((np.random.default_rng(0).random((40, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / "in.png")
    check = ("import importlib.util, meddeblur, sys; "
             f"absent = [m for m in {EXTRA_MODULES!r} if importlib.util.find_spec(m) is not None]; "
             "print(meddeblur.__file__); sys.exit(f'extras importable: {absent}' if absent else 0)")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    where = subprocess.run([python, "-c", check], capture_output=True, text=True, env=clean, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site)  # the installed copy, not this source tree
    done = subprocess.run([python, "-m", "meddeblur", "deblur", "in.png", "-o", "out", "--device", "cpu"],
                          capture_output=True, text=True, env=clean, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    with Image.open(tmp_path / "out" / "in.png") as result:
        assert result.size == (48, 40) and "meddeblur" in result.info
    # Something only an extra provides says which extra to install, in one line, exit 2.
    served = subprocess.run([python, "-m", "meddeblur", "serve", "--port", "0"], capture_output=True, text=True, env=clean,
                            cwd=tmp_path, timeout=120)
    assert served.returncode == 2 and "pip install 'meddeblur[serve]'" in served.stderr and served.stderr.count("\n") == 1
