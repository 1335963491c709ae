"""Shared fixtures: a tiny model saved once per session, a runner for the real CLI, template pairs, the ISIC images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest


def cli_env(**overrides: str) -> dict[str, str]:
    """Environment for a ``python -m meddeblur`` child: hermetic torch hub cache, one thread."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"})
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained width-4 Attention U-Net saved as ``tiny.safetensors`` (+ ``tiny.json``)."""
    import torch

    from meddeblur.models import ModelConfig, build_model, save_weights

    config = ModelConfig(width=4)
    torch.manual_seed(0)
    model = build_model(config)
    return save_weights(model, config, tmp_path_factory.mktemp("tiny-model") / "tiny.safetensors")


@pytest.fixture(scope="session")
def tiny_model(tiny_weights: Path):
    """The network in ``tiny_weights``, loaded on the CPU in eval mode."""
    from meddeblur.models import load_model

    return load_model(tiny_weights, "cpu")[0]


@pytest.fixture(scope="session")
def empty_torch_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TORCH_HOME with no hub cache, so nothing is found (or downloaded) there."""
    return tmp_path_factory.mktemp("torch-home")


@pytest.fixture(scope="session")
def run_cli(empty_torch_home: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli(*args, cwd=..., env={...})`` runs ``python -m meddeblur ARGS`` and captures its output.

    ``env`` holds variables to set on top of :func:`cli_env` (whose TORCH_HOME is empty).
    """

    def run(*args: object, cwd: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "meddeblur", *map(str, args)],
            cwd=cwd, env=cli_env(**{"TORCH_HOME": str(empty_torch_home), **(env or {})}),
            capture_output=True, text=True, encoding="utf-8", timeout=timeout, stdin=subprocess.DEVNULL,
        )

    return run


ISIC = Path(os.environ.get("MEDDEBLUR_ISIC_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "isic-dermoscopy"))


@pytest.fixture(scope="session")
def isic_images() -> list[Path]:
    """The real ISIC photographs in ../shared (read in place, never copied into the repository).

    Absent folder: the test skips and says why; under CI (CI set), which has the
    folder, its absence is a failure, so these tests cannot silently vanish.
    """
    images = sorted((ISIC / "images").glob("*.jpg"))
    if not images:
        if os.environ.get("CI"):
            pytest.fail(f"{ISIC}: ISIC images missing on CI, where ../shared must be present")
        pytest.skip(f"{ISIC}: ISIC images not present (../shared absent); set MEDDEBLUR_ISIC_DIR to run these tests")
    return images


@pytest.fixture
def one_thread():
    """In-process work on one thread, like the child processes: the same kernels and rounding, and no
    oversubscription of a small machine (a loaded 2-core machine crawls with two threads per process)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 synthetic 32×32 pairs in ``blurred/`` and ``sharp/``; copy before changing them."""
    from synthetic_pairs import write_synthetic_pairs

    return write_synthetic_pairs(tmp_path_factory.mktemp("template"), n=5, height=32, width=32, seed=0)


@pytest.fixture(scope="session")
def estimators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Blur-estimator weights for fast, predictable ``method="psf"`` runs: ``random`` (an untrained network: low
    confidence), ``none`` (always "no blur", confidence ~1) and ``gauss`` (always gauss:sigma=1, confidence ~1)."""
    import torch
    from safetensors.torch import save_file

    from meddeblur.psf.estimator_net import FAMILIES, BlurEstimatorNet

    folder = tmp_path_factory.mktemp("estimators")
    torch.manual_seed(0)
    paths = {"random": folder / "random.safetensors"}
    save_file(BlurEstimatorNet().state_dict(), str(paths["random"]))
    for family in ("none", "gauss"):
        network = BlurEstimatorNet()
        last = network.head[-1]
        with torch.no_grad():  # the output is its bias whatever the image: that family, and log σ = 0 (σ = 1)
            last.weight.zero_()
            last.bias.zero_()
            last.bias[FAMILIES.index(family)] = 12.0
        paths[family] = folder / f"{family}.safetensors"
        save_file(network.state_dict(), str(paths[family]))
    return paths
