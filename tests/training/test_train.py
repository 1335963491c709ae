"""Tiny end-to-end runs: train → files → evaluate, exact resume, perceptual loss wiring."""

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic_pairs import write_synthetic_pairs

from meddeblur.cli import main
from meddeblur.losses import VGG19Features

TINY = ["--recipe", "reference", "--width", "4", "--size", "32", "--batch", "4"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_synthetic_pairs(tmp_path_factory.mktemp("data"), n=8, height=40, width=40, seed=3)


def _weights_equal(a: Path, b: Path) -> bool:
    left, right = load_file(str(a)), load_file(str(b))
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_end_to_end_train_then_evaluate(pairs, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(pairs), "--out", str(run), "--epochs", "3", *TINY]) == 0
    for name in ("history.csv", "curves.png", "last.pt", "best.safetensors", "best.json", "split.json", "run.json", "train.log"):
        assert (run / name).is_file(), name
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["val_psnr"]) > 0 and 0 < float(r["val_ssim"]) <= 1 for r in rows)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (run / "train.log").read_text()
    assert "perceptual term off" in log  # the default loss is said plainly
    split = json.loads((run / "split.json").read_text())
    assert split["seed"] == 42 and len(split["train"]) + len(split["val"]) + len(split["test"]) == 8
    assert not list(run.glob(".*tmp*"))

    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--device", "cpu"]) == 0
    report_dir = run / "eval-test"
    report = json.loads((report_dir / "metrics.json").read_text())
    assert report["images"] == len(split["test"]) and report["split"] == "test"
    assert {r["name"] for r in report["per_image"]} == set(split["test"])
    assert set(report["summary"]) == {"input_psnr", "input_ssim", "model_psnr", "model_ssim"}
    assert "| input (blurred vs sharp) |" in (report_dir / "report.md").read_text()
    with open(report_dir / "per_image.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(split["test"])
    assert (report_dir / "comparison.png").stat().st_size > 1000

    assert main(["evaluate", "--model", str(run / "best.safetensors"), "--split", "all", "--out", str(tmp_path / "all")]) == 0
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["images"] == 8


def test_resume_gives_identical_weights(pairs, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", "--data", str(pairs), "--out", str(straight), "--epochs", "4", *TINY]) == 0
    assert main(["train", "--data", str(pairs), "--out", str(resumed), "--epochs", "2", *TINY]) == 0
    assert not _weights_equal(straight / "best.safetensors", resumed / "best.safetensors")
    assert main(["train", "--resume", str(resumed), "--epochs", "4"]) == 0
    assert _weights_equal(straight / "best.safetensors", resumed / "best.safetensors")
    last_a = torch.load(straight / "last.pt", weights_only=True)
    last_b = torch.load(resumed / "last.pt", weights_only=True)
    assert all(torch.equal(last_a["model"][k], last_b["model"][k]) for k in last_a["model"])
    assert last_a["history"][-1]["val_loss"] == last_b["history"][-1]["val_loss"]


def test_training_with_perceptual_loss_from_a_vgg19_file(pairs, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "vgg19-random.pth"
    torch.save(VGG19Features().state_dict(), weights)
    run = tmp_path / "run"
    assert main(["train", "--data", str(pairs), "--out", str(run), "--epochs", "1", "--vgg19-weights", str(weights), *TINY]) == 0
    log = (run / "train.log").read_text()
    assert "VGG19 perceptual" in log and str(weights) in log


def test_early_stopping_and_lr_plateau_follow_keras(pairs, tmp_path, monkeypatch):
    import meddeblur.training.loop as training

    val_losses = iter([1.0, 0.5, 0.6, 0.50005, 0.7, 0.8, 0.9, 1.0])
    real_run_epoch = training.run_epoch

    def scripted(model, loss_fn, loader, device, optimizer=None, desc=""):
        stats = real_run_epoch(model, loss_fn, loader, device, optimizer, desc)
        return stats if optimizer is not None else {**stats, "loss": next(val_losses)}

    monkeypatch.setattr(training, "run_epoch", scripted)
    run = tmp_path / "run"
    args = ["--epochs", "20", "--patience", "4", "--lr-patience", "2", "--lr", "1e-3"]
    assert main(["train", "--data", str(pairs), "--out", str(run), *args, *TINY]) == 0
    rows = list(csv.DictReader(open(run / "history.csv")))
    # Best at epoch 2; 0.50005 is not an improvement for early stopping (min_delta 0 means any
    # decrease counts, and it is higher), so epochs 3-6 are 4 bad epochs → stop after epoch 6.
    assert len(rows) == 6
    assert json.loads((run / "best.json").read_text())["epoch"] == 2
    # LR is cut after 2 bad epochs (Keras ReduceLROnPlateau: wait >= patience), i.e. from epoch 5 on.
    assert [float(r["lr"]) for r in rows] == [1e-3, 1e-3, 1e-3, 1e-3, 5e-4, 5e-4]
    assert "early stopping" in (run / "train.log").read_text()


def test_early_stopping_unit():
    from meddeblur.training.loop import EarlyStopping

    stopper = EarlyStopping(patience=2)
    assert stopper.update(1.0, 1) and not stopper.update(1.0, 2) and not stopper.stopped
    assert not stopper.update(1.5, 3) and stopper.stopped and stopper.best_epoch == 1


def test_no_pickle_loading_anywhere():
    source = Path(__file__).parents[2] / "src" / "meddeblur"
    for path in source.rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, f"{path}: {call}"


def test_train_other_architectures_and_deblur_tiled(pairs, tmp_path):
    from meddeblur.models import load_model

    for arch in ("nafnet", "attention-unet-residual"):
        run = tmp_path / arch
        assert main(["train", "--data", str(pairs), "--out", str(run), "--arch", arch, "--epochs", "1", *TINY]) == 0
        _, config, _ = load_model(run)
        assert config.arch == arch and config.width == 4
        out = tmp_path / f"{arch}-out"
        assert main(["deblur", str(pairs / "blurred"), "-o", str(out), "--model", str(run), "--tile", "32", "--overlap", "8"]) == 0
        assert len(list(out.glob("*.png"))) == 8


def test_max_minutes_stops_between_epochs_and_resume_respects_the_budget(pairs, tmp_path, monkeypatch):
    import time
    from types import SimpleNamespace

    import meddeblur.training.loop as train_module

    clock = iter(range(0, 10_000, 30))  # every perf_counter() call in train advances 30 s: each epoch "takes" ≥ 30 s
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock)), process_time=time.process_time))
    run = tmp_path / "run"
    assert main(["train", "--data", str(pairs), "--out", str(run), "--epochs", "50", "--max-minutes", "1.5", *TINY]) == 0
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    spent = sum(float(r["seconds"]) for r in rows)
    assert 2 <= len(rows) < 50 and spent >= 90 and spent - float(rows[-1]["seconds"]) < 90
    assert all(float(r["cpu_seconds"]) > 0 for r in rows)
    assert "budget used after epoch" in (run / "train.log").read_text()
    assert main(["train", "--resume", str(run), "--max-minutes", "1.5"]) == 0  # budget already spent: no new epoch
    with open(run / "history.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    assert main(["train", "--resume", str(run), "--max-minutes", "0"]) == 2  # a budget must be positive


def test_batchnorm_never_sees_a_training_batch_of_one(tmp_path, capsys):
    from synthetic_pairs import write_synthetic_pairs

    few = write_synthetic_pairs(tmp_path / "few", n=3, height=32, width=32, seed=5)  # 70/20/10 of 3: one training pair
    assert main(["train", "--data", str(few), "--out", str(tmp_path / "one"), "--recipe", "reference", "--width", "4", "--size", "16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "BatchNorm" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "one").exists()  # nothing half-made
    eight = write_synthetic_pairs(tmp_path / "eight", n=8, height=32, width=32, seed=6)  # 5 training pairs, batch 4: a last batch of one
    run = tmp_path / "run"
    assert main(["train", "--data", str(eight), "--out", str(run), "--epochs", "1", "--recipe", "reference", "--width", "4",
                 "--size", "16", "--batch", "4"]) == 0
    assert (run / "best.safetensors").is_file()


def test_resume_with_a_checkpoint_of_another_architecture_is_one_line(pairs, tmp_path, capsys):
    import shutil

    first, other = tmp_path / "first", tmp_path / "other"
    assert main(["train", "--data", str(pairs), "--out", str(first), "--epochs", "1", *TINY]) == 0
    assert main(["train", "--data", str(pairs), "--out", str(other), "--epochs", "1", *TINY, "--arch", "nafnet"]) == 0
    for name in ("last.pt", "last.pt.sha256"):
        shutil.copyfile(other / name, first / name)
    capsys.readouterr()
    assert main(["train", "--resume", str(first), "--epochs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different runs" in err[0] and "Traceback" not in err[0]
