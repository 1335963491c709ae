"""The denoiser's training: a pack of images travels to a GPU machine, training writes weights only when they improve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.models.denoiser import load_denoiser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pack")
    (folder / "images").mkdir()
    names = [f"img{i}" for i in range(4)]
    for i, name in enumerate(names):
        Image.fromarray((synthetic_dermoscopy(160, 200, seed=i) * 255).astype(np.uint8)).save(folder / "images" / f"{name}.png")
    (folder / "split.json").write_text(json.dumps({"seed": 0, "train": names[:3], "val": names[3:], "test": []}))
    out = folder / "pack.npz"
    done = subprocess.run([sys.executable, "scripts/train_denoiser.py", "--sharp", str(folder / "images"), "--split", str(folder / "split.json"),
                           "--write-pack", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


def test_gpu_script_trains_from_a_pack_on_the_cpu_with_a_tiny_budget(pack: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PACK": str(pack), "LOG_EVERY": "2", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "scripts/gpu_train.sh", "train", "0.05"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "train.log").read_text()
    assert "start: validation" in log and "\nstep " in log
    weights = tmp_path / "denoiser.safetensors"
    assert weights.is_file() or "not written" in log  # weights come back only when they beat the shipped ones
    if weights.is_file():
        assert load_denoiser(weights).widths


def test_gpu_script_refuses_without_a_pack_and_explains(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PACK": str(tmp_path / "missing.npz"), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "scripts/gpu_train.sh", "train", "0.05"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "missing.npz is missing" in done.stderr
    usage = subprocess.run(["bash", "scripts/gpu_train.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage" in usage.stderr
