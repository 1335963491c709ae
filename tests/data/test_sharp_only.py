"""Sharp-only training (--degrade), the synth command, and their round trips."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic_pairs import write_sharp_images

from meddeblur.cli import main
from meddeblur.data.pairs import PairDataset, fixed_degradation, sharp_only
from meddeblur.degradation.pipeline import quantize8
from meddeblur.degradation.spec import parse_spec
from meddeblur.io.decode import read_rgb
from meddeblur.physics import blur

TINY = ["--recipe", "reference", "--width", "4", "--size", "32", "--batch", "4"]


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    return write_sharp_images(tmp_path_factory.mktemp("sharp"), n=8, height=40, width=48, first_seed=100)


def _same(a, b) -> bool:
    left, right = load_file(str(a)), load_file(str(b))
    return all(torch.equal(left[k], right[k]) for k in left)


def test_training_stream_changes_per_epoch_but_validation_is_fixed(sharp_dir):
    pairs = sharp_only(sharp_dir)
    spec = parse_spec("gauss:sigma=0.5..2.5+noise:sigma=0..0.01")
    train_set = PairDataset(pairs, size=32, augment=False, seed=7, degrade=spec)
    train_set.set_epoch(1)
    first = train_set[0][0]
    train_set.set_epoch(2)
    assert not torch.equal(first, train_set[0][0])
    train_set.set_epoch(1)
    assert torch.equal(first, train_set[0][0])  # the same (seed, epoch, index) gives the same blur
    val_a = PairDataset(pairs, size=32, seed=1, degrade=spec, fixed=True)
    val_b = PairDataset(pairs, size=32, seed=2, degrade=spec, fixed=True)
    val_b.set_epoch(5)
    assert all(torch.equal(val_a[i][0], val_b[i][0]) for i in range(len(pairs)))  # run seed and epoch do not matter
    blurred, sharp = val_a[3]
    assert not torch.equal(blurred, sharp) and blurred.shape == sharp.shape == (3, 32, 32)


def test_sharp_only_train_resume_and_evaluate(sharp_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["train", "--sharp", str(sharp_dir), "--degrade", "mixed", *TINY]
    assert main([*common, "--out", str(straight), "--epochs", "3"]) == 0
    assert main([*common, "--out", str(resumed), "--epochs", "1"]) == 0
    assert main(["train", "--resume", str(resumed), "--epochs", "3"]) == 0
    assert _same(straight / "best.safetensors", resumed / "best.safetensors")  # the blur stream resumed exactly
    assert "synthesised from the sharp images with 'mixed'" in (straight / "train.log").read_text()
    assert json.loads((straight / "run.json").read_text())["options"]["degrade"] == "mixed"

    assert main(["evaluate", "--model", str(straight), "--device", "cpu"]) == 0
    report = json.loads((straight / "eval-test" / "metrics.json").read_text())
    assert "degraded with 'mixed'" in report["protocol"]
    test_names = json.loads((straight / "split.json").read_text())["test"]
    assert [r["name"] for r in report["per_image"]] == test_names
    # The fixed test degradation is the one fixed_degradation makes: input PSNR is reproducible.
    name = test_names[0]
    sharp = read_rgb(sharp_dir / f"{name}.png")
    from meddeblur.degradation.resampling import resize_area
    from meddeblur.metrics import psnr_ssim_numpy

    sharp = resize_area(sharp, (32, 32))
    made, _ = fixed_degradation(torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1))), parse_spec("mixed"), name)
    assert psnr_ssim_numpy(made.numpy().transpose(1, 2, 0), sharp)[0] == pytest.approx(report["per_image"][0]["input_psnr"], abs=1e-9)


def test_synth_then_train_then_evaluate(sharp_dir, tmp_path):
    data = tmp_path / "pairs"
    assert main(["synth", "--sharp", str(sharp_dir), "-o", str(data), "--degrade", "motion:length=7", "--seed", "3"]) == 0
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["spec"] == str(parse_spec("motion:length=7")) and len(manifest["images"]) == 8
    entry = manifest["images"][0]
    assert entry["family"] == "motion" and entry["params"]["length"] == 7
    kernel = np.load(data / entry["kernel"])
    assert kernel.sum() == pytest.approx(1, abs=1e-5)
    # The kernel in kernels/ reproduces the blurred image written to blurred/.
    sharp = read_rgb(data / "sharp" / f"{entry['name']}.png")
    again = quantize8(blur(torch.from_numpy(sharp.transpose(2, 0, 1).copy())[None], torch.from_numpy(kernel)))[0]
    assert np.abs(again.numpy().transpose(1, 2, 0) - read_rgb(data / "blurred" / f"{entry['name']}.png")).max() <= 1 / 255 + 1e-6
    # Same seed, same output; the folder is a normal paired data set for train/evaluate.
    again_dir = tmp_path / "again"
    assert main(["synth", "--sharp", str(sharp_dir), "-o", str(again_dir), "--degrade", "motion:length=7", "--seed", "3"]) == 0
    assert (again_dir / "blurred" / f"{entry['name']}.png").read_bytes() == (data / "blurred" / f"{entry['name']}.png").read_bytes()
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY]) == 0
    assert main(["evaluate", "--model", str(run), "--split", "all", "--out", str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["images"] == 8


@pytest.mark.parametrize("spec", ["blurr", "gauss:sigma=-1", "motion:length=abc", "down:scale=1"])
def test_invalid_degradation_spec_is_a_one_line_error(sharp_dir, tmp_path, spec):
    result = subprocess.run([sys.executable, "-m", "meddeblur", "train", "--sharp", str(sharp_dir), "--degrade", spec,
                             "--out", str(tmp_path / "run"), *TINY], capture_output=True, text=True)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and spec in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_synth_refuses_to_write_into_its_input(sharp_dir, capsys):
    assert main(["synth", "--sharp", str(sharp_dir), "-o", str(sharp_dir), "--degrade", "gauss:sigma=1"]) == 2
    assert "input folder" in capsys.readouterr().err


def test_native_crops_with_degradation(sharp_dir):
    pairs = sharp_only(sharp_dir)
    spec = parse_spec("defocus:radius=2")
    val = PairDataset(pairs, size=None, crop=32, seed=0, degrade=spec, fixed=True)
    blurred, sharp = val[0]
    assert blurred.shape == sharp.shape == (3, 32, 32) and not torch.equal(blurred, sharp)
    assert torch.equal(val[0][0], blurred)  # fixed: the same crop and blur every time
    train = PairDataset(pairs, size=None, crop=32, augment=True, seed=0, degrade=spec)
    train.set_epoch(1)
    first = train[0]
    train.set_epoch(2)
    assert not torch.equal(first[1], train[0][1]) or not torch.equal(first[0], train[0][0])
