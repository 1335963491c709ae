"""Issue 11: the training distribution (resample, real, scaled crops), recipes, --init and the cosine schedule."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic_pairs import write_sharp_images

import meddeblur.training.loop as training
from meddeblur.cli import main
from meddeblur.data.pairs import sharp_only
from meddeblur.data.sampling import EpochSamples, ScaledCrops
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.degradation.pipeline import degrade
from meddeblur.degradation.resampling import down_up, down_up_kernel, resize
from meddeblur.degradation.spec import parse_spec
from meddeblur.errors import InvalidOption, UserError
from meddeblur.losses import LossWeights
from meddeblur.models import ModelConfig, load_model
from meddeblur.training.options import TrainOptions
from meddeblur.training.schedule import TrainControl, cosine_factor

TINY_DEFAULT = ["--width", "4", "--crop", "32", "--batch", "2", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory):
    return write_sharp_images(tmp_path_factory.mktemp("sharp"), n=10, height=72, width=80, first_seed=200)


def _image(seed: int = 0, size: int = 48) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(synthetic_dermoscopy(size, size, seed=seed).transpose(2, 0, 1)))


# --------------------------------------------------------------------------- resampling and degradations


def test_libraries_resample_differently_and_torch_has_no_lanczos():
    image = synthetic_dermoscopy(40, 48, seed=1)
    outputs = {lib: down_up(image, 2.0, "bilinear", "bicubic", lib) for lib in ("pil", "cv2", "torch")}
    assert all(out.shape == image.shape and out.dtype == np.float32 for out in outputs.values())
    assert not np.allclose(outputs["pil"], outputs["cv2"], atol=1e-3)  # cv2 does not antialias when shrinking
    assert resize(image, (20, 24), "box", "pil").shape == (20, 24, 3)
    with pytest.raises(ValueError, match="torch has no 'lanczos'"):
        resize(image, (20, 24), "lanczos", "torch")
    with pytest.raises(UserError, match="lib=torch has no up=lanczos"):
        parse_spec("resample:lib=torch,up=lanczos")


def test_resample_kernel_is_a_centred_psf():
    for scale, down, up, lib in ((2.0, "box", "bicubic", "pil"), (3.3, "bilinear", "lanczos", "cv2"), (1.5, "box", "bilinear", "torch")):
        kernel = down_up_kernel(scale, down, up, lib)
        k = kernel.shape[0]
        assert kernel.shape == (k, k) and k % 2 == 1 and k > 1
        assert torch.isclose(kernel.sum(), torch.tensor(1.0)) and (kernel >= 0).all()
        assert torch.allclose(kernel, kernel.flip(0).flip(1), atol=1e-3)  # symmetric: it does not shift the image


def test_resample_spec_draws_any_and_is_seeded():
    image = _image(2)
    spec = parse_spec("resample:scale=1.25..4,down=any,up=any,lib=any")
    first, done = degrade(image, spec, torch.Generator().manual_seed(5))
    again, _ = degrade(image, spec, torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    params = done[0].params
    assert params["lib"] in ("pil", "cv2", "torch") and params["down"] != "any" and 1.25 <= params["scale"] <= 4
    fixed, done = degrade(image, "resample", torch.Generator().manual_seed(0))
    assert done[0].params == {"scale": 2.0, "down": "box", "up": "bicubic", "lib": "pil"}
    expected = down_up(image.permute(1, 2, 0).numpy().copy(), 2.0, "box", "bicubic", "pil")
    assert torch.allclose(fixed, torch.round(torch.from_numpy(expected).permute(2, 0, 1) * 255) / 255)


def test_real_mix_has_an_unblurred_share_left_exactly_alone():
    image = torch.round(_image(3, 32) * 255) / 255
    generator = torch.Generator().manual_seed(11)
    families = Counter()
    for _ in range(300):
        out, done = degrade(image, "real", generator)
        families[done[0].family] += 1
        if done[0].family == "none":
            assert torch.equal(out, image) and done[0].params == {}  # sharp in, the same out: no noise, no JPEG
        else:
            assert not torch.equal(out, image)
    assert set(families) == {"none", "gauss", "defocus", "motion", "shake", "resample"}
    assert 0.08 <= families["none"] / 300 <= 0.25
    gauss_sigmas = [degrade(image, "real", torch.Generator().manual_seed(s))[1][0].params.get("sigma") for s in range(80)]
    assert min(s for s in gauss_sigmas if s is not None) < 0.8  # mild blur is part of the mix


# --------------------------------------------------------------------------- training samples


def test_scaled_crops_are_seeded_per_epoch_and_index(sharp_dir):
    pairs = sharp_only(sharp_dir)
    crops = ScaledCrops(pairs, 32, (1.0, 2.0), parse_spec("real"), seed=3, samples=12, soften=0.5, compress=0.5)
    assert len(crops) == 12
    crops.set_epoch(1)
    first = crops[4]
    assert first[0].shape == first[1].shape == (3, 32, 32)
    assert torch.equal(first[1], torch.round(first[1] * 255) / 255)  # targets are 8-bit like the photographs
    crops.set_epoch(2)
    assert not torch.equal(first[1], crops[4][1])
    crops.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, crops[4]))


def test_validation_crops_do_not_depend_on_seed_or_epoch(sharp_dir):
    pairs = sharp_only(sharp_dir)
    a = ScaledCrops(pairs, 64, (1.0, 1.0), parse_spec("real"), seed=1, fixed=True)
    b = ScaledCrops(pairs, 64, (1.0, 1.0), parse_spec("real"), seed=9, fixed=True)
    b.set_epoch(7)
    assert len(a) == len(pairs)
    assert all(torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][1], b[i][1]) for i in range(len(pairs)))
    with pytest.raises(UserError, match="smaller than crop=128"):
        ScaledCrops(pairs, 128, (1.0, 1.0), parse_spec("real"), fixed=True)[0]


def test_half_the_validation_sources_come_from_a_softer_camera(sharp_dir):
    from meddeblur.data.sampling import VALIDATION_SCALES, VALIDATION_SOFTEN
    from meddeblur.degradation.kernels import gaussian_kernel
    from meddeblur.degradation.pipeline import quantize8
    from meddeblur.io.decode import read_image
    from meddeblur.physics import blur

    pairs = sharp_only(sharp_dir)
    crops = ScaledCrops(pairs, 64, (1.0, 1.0), parse_spec("real"), fixed=True)
    for index in (0, len(VALIDATION_SCALES)):  # native scale, stored vs softened by VALIDATION_SOFTEN[1]
        rgb = read_image(pairs[index].sharp).rgb
        top, left = (rgb.shape[0] - 64) // 2, (rgb.shape[1] - 64) // 2
        stored = quantize8(torch.from_numpy(np.ascontiguousarray(rgb[top:top + 64, left:left + 64].transpose(2, 0, 1))).float())
        sigma = VALIDATION_SOFTEN[index // len(VALIDATION_SCALES)]
        expected = quantize8(blur(stored[None], gaussian_kernel(sigma))[0]) if sigma else stored
        assert torch.allclose(crops[index][1], expected, atol=1e-6), index
    assert sorted(set(VALIDATION_SOFTEN)) == [0.0, 0.7, 1.0] and VALIDATION_SOFTEN.count(0.0) == len(VALIDATION_SOFTEN) / 2


def test_epoch_samples_give_repeated_images_fresh_draws(sharp_dir):
    from meddeblur.data.pairs import PairDataset

    base = PairDataset(sharp_only(sharp_dir), size=32, augment=True, seed=0, degrade=parse_spec("gauss:sigma=0.5..3"))
    epoch = EpochSamples(base, 25)
    assert len(epoch) == 25 and epoch.rounds == 3
    assert not torch.equal(epoch[0][0], epoch[10][0])  # the same image, another round: another blur


# --------------------------------------------------------------------------- schedule


def test_cosine_factor_warms_up_then_anneals_to_zero():
    assert cosine_factor(0.0, 0, 10) == pytest.approx(0.1)
    assert cosine_factor(0.0, 9, 10) == pytest.approx(1.0)
    assert cosine_factor(0.5, 100, 10) == pytest.approx(0.5)
    assert cosine_factor(1.0, 100, 10) == pytest.approx(0.0)


def test_train_control_stops_at_its_horizon_and_round_trips():
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    control = TrainControl(net, optimizer, 1.0, steps=4, budget_seconds=None, ema=0.9)
    for _ in range(4):
        assert not control.finished()
        control.before_step()
        control.after_step(0.1)
    assert control.finished() and control.step == 4
    clone = TrainControl(torch.nn.Linear(2, 2), optimizer, 1.0, steps=4, budget_seconds=None, ema=0.9)
    clone.load_state_dict(control.state_dict())
    assert clone.step == 4 and torch.equal(clone.evaluated().weight, control.evaluated().weight)
    timed = TrainControl(net, optimizer, 1.0, steps=None, budget_seconds=10.0)
    timed.after_step(10.0)
    assert timed.finished()
    with pytest.raises(ValueError, match="horizon"):
        TrainControl(net, optimizer, 1.0, steps=None, budget_seconds=None)


# --------------------------------------------------------------------------- recipes and the CLI


@pytest.fixture
def captured(monkeypatch, tmp_path):
    seen = {}

    def fake_train(options, resume=False):
        seen["options"] = options
        return Path(options.out)

    monkeypatch.setattr(training, "train", fake_train)
    return seen


def test_recipe_reference_is_exactly_the_reference(captured, tmp_path):
    from synthetic_pairs import write_synthetic_pairs

    pairs = write_synthetic_pairs(tmp_path / "pairs", n=3, height=32, width=32, seed=1)
    assert main(["train", "--recipe", "reference", "--data", str(pairs), "--out", str(tmp_path / "run")]) == 0
    options = captured["options"]
    reference = TrainOptions(blurred_dir=options.blurred_dir, sharp_dir=options.sharp_dir, out=options.out, recipe="reference")
    assert options == reference
    assert (options.arch, options.width, options.size, options.batch, options.lr, options.optimizer, options.schedule,
            options.patience, options.loss) == ("attention-unet", None, 256, 8, 1e-4, "adam", "plateau", 10, LossWeights(0.85, 0.15, 1e-6))


def test_no_options_train_with_the_shipped_recipe(captured, sharp_dir, tmp_path):
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "run")]) == 0
    options = captured["options"]
    assert (options.recipe, options.arch, options.crop, options.size, options.degrade, options.optimizer, options.schedule) == \
        ("default", "nafnet", 64, None, "real", "adamw", "cosine")
    assert options.scales == (1.0, 4.0) and options.ema and options.clip and options.max_minutes
    blocks = {k: getattr(options, k) for k in ("enc_blocks", "middle_blocks", "dec_blocks") if getattr(options, k) is not None}
    assert ModelConfig(arch=options.arch, width=options.width, **blocks) == load_model(None)[1]  # the shipped network itself
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "r3"), "--arch", "attention-unet-residual"]) == 0
    assert (captured["options"].arch, captured["options"].enc_blocks, captured["options"].dec_blocks) == ("attention-unet-residual", None, None)
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "r2"), "--steps", "50"]) == 0
    assert captured["options"].steps == 50 and captured["options"].max_minutes is None  # --steps alone is the horizon
    assert (options.soften, options.compress) == (0.55, 0.2)
    assert (options.lr, options.loss) == (2e-3, LossWeights(ssim=0.15, l1=0.85))
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "r4"), "--soften", "0.6", "--compress", "0"]) == 0
    assert (captured["options"].soften, captured["options"].compress) == (0.6, 0.0)


def test_a_source_share_outside_0_to_1_is_refused_naming_the_flag(captured, sharp_dir, tmp_path, capsys):
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "run"), "--soften", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "meddeblur train: error: --soften 1.5: a share of the training sources, from 0 to 1"
    assert "options" not in captured


def test_loss_flags_set_their_terms_and_negative_weights_are_refused(captured, sharp_dir, tmp_path, capsys):
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "run"), "--w-l1", "0", "--w-psnr", "0.5", "--w-mse", "2"]) == 0
    assert captured["options"].loss == LossWeights(ssim=0.15, l1=0.0, perceptual=1e-6, mse=2.0, psnr=0.5)  # SSIM: the recipe's
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "r2"), "--w-psnr", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "meddeblur train: error: --w-psnr -1.0: must be 0 (term off) or a positive number"


def test_init_takes_the_architecture_from_the_weights(captured, sharp_dir, tmp_path, capsys):
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "run"), "--init", "default"]) == 0
    assert (captured["options"].arch, captured["options"].width, captured["options"].init) == ("nafnet", 16, "default")
    # fine-tuning: the recipe's fine-tuning rate and loss, not its from-scratch 2e-3 and SSIM term ...
    assert (captured["options"].lr, captured["options"].loss, captured["options"].crop) == (5e-4, LossWeights(ssim=0.0, l1=1.0), 128)
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "run1"), "--init", "default", "--lr", "1e-3", "--w-ssim", "0.2"]) == 0
    assert (captured["options"].lr, captured["options"].loss) == (1e-3, LossWeights(ssim=0.2, l1=1.0))  # ... unless flags say otherwise
    capsys.readouterr()
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "run2"), "--init", "default", "--arch", "attention-unet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--arch attention-unet conflicts with --init default" in err[0]
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "run3"), "--init", str(tmp_path / "nope.safetensors")]) == 2
    assert not (tmp_path / "run2").exists() and not (tmp_path / "run3").exists()


def test_default_recipe_trains_from_init_and_resumes_exactly(sharp_dir, tmp_path):
    seed_run = tmp_path / "seed"
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(seed_run), "--steps", "2", *TINY_DEFAULT]) == 0
    init = seed_run / "best.safetensors"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["train", "--sharp", str(sharp_dir), "--init", str(init), "--steps", "4", "--val-every", "2", *TINY_DEFAULT]
    assert main([*common, "--out", str(straight)]) == 0
    assert main([*common, "--out", str(resumed), "--epochs", "1"]) == 0
    assert main(["train", "--resume", str(resumed), "--epochs", "5"]) == 0
    left, right = load_file(str(straight / "best.safetensors")), load_file(str(resumed / "best.safetensors"))
    assert all(torch.equal(left[k], right[k]) for k in left)
    log = (straight / "train.log").read_text()
    assert f"starting from the weights of {init}" in log and "input" in log and "cosine over 4 steps" in log
    history = (straight / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,steps,") and len(history) == 3 and "val_input_psnr" in history[0]
    assert json.loads((straight / "run.json").read_text())["options"]["init"] == str(init)
    # A learning rate of ~0 keeps the initial weights: training really starts from them.
    still = tmp_path / "still"
    assert main([*common, "--lr", "1e-12", "--out", str(still)]) == 0
    start, kept = load_file(str(init)), load_file(str(still / "best.safetensors"))
    assert all(torch.allclose(start[k], kept[k], atol=1e-6) for k in start)


def test_init_with_more_blocks_grows_the_network_and_starts_from_the_same_function(sharp_dir, tmp_path, capsys):
    seed_run = tmp_path / "seed"
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(seed_run), "--steps", "2", "--dec-blocks", "0,1,1,1", *TINY_DEFAULT]) == 0
    init = seed_run / "best.safetensors"
    common = ["train", "--sharp", str(sharp_dir), "--init", str(init), "--steps", "2", "--val-every", "2", "--lr", "1e-12",
              *[a for a in TINY_DEFAULT if a not in ("--width", "4")]]
    grown = tmp_path / "grown"
    assert main([*common, "--out", str(grown), "--dec-blocks", "1,2,2,1", "--middle-blocks", "5"]) == 0
    config = json.loads((grown / "best.json").read_text())["config"]
    assert (config["width"], config["enc_blocks"], config["middle_blocks"], config["dec_blocks"]) == (4, [0, 1, 2, 4], 5, [1, 2, 2, 1])
    assert "grown from blocks 0,1,2,4 | 4 | 0,1,1,1 to blocks 0,1,2,4 | 5 | 1,2,2,1" in (grown / "train.log").read_text()
    before, after = load_model(init)[0], load_model(grown)[0]
    image = _image(seed=4, size=64)[None]
    with torch.no_grad():
        assert torch.allclose(after(image), before(image), atol=1e-5)  # lr ≈ 0: still the function it grew from
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "shrunk"), "--enc-blocks", "0,0,2,4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["meddeblur train: error: --enc-blocks 0,0,2,4: the initial weights have 0,1,2,4; a network can only grow "
                   "(same levels, at least as many blocks each)"]
    assert main(["train", "--sharp", str(sharp_dir), "--out", str(tmp_path / "unet"), "--arch", "attention-unet", "--middle-blocks", "2"]) == 2
    assert capsys.readouterr().err.strip() == "meddeblur train: error: --middle-blocks applies to nafnet only, not attention-unet"
    with pytest.raises(SystemExit) as usage:
        main([*common, "--out", str(tmp_path / "typo"), "--dec-blocks", "1,a"])
    assert usage.value.code == 2
    assert "invalid block counts value: '1,a'" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("shrunk", "unet", "typo"))


def test_train_options_check_block_counts_once_and_keep_them_through_run_json():
    with pytest.raises(InvalidOption) as error:
        TrainOptions(blurred_dir=None, sharp_dir="s", out="o", arch="nafnet", dec_blocks=(1, -1, 1, 1))
    assert error.value.option == "dec_blocks" and "`dec_blocks` must be a list of 1 to 8 block counts" in str(error.value)
    options = TrainOptions(blurred_dir=None, sharp_dir="s", out="o", arch="nafnet", enc_blocks=(0, 1, 2, 4), middle_blocks=5)
    assert TrainOptions.from_dict(json.loads(json.dumps(asdict(options)))) == options  # lists back to tuples


def test_default_recipe_trains_under_torchrun(sharp_dir, tmp_path):
    """NAFNet has no BatchNorm: the CPU path that averages BatchNorm statistics across processes must cope."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "meddeblur", "train", "--sharp", str(sharp_dir), "--out", str(run), "--steps", "2", *TINY_DEFAULT]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "best.safetensors").is_file() and "2 processes" in (run / "train.log").read_text()
