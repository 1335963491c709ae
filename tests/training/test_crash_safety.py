"""Crash safety of training: kills at any moment, damaged checkpoints, a diverging loss.

* SIGKILL at 5 seeded random moments of a real ``meddeblur train`` process (each
  kill followed by ``--resume``, itself killed again), then a final ``--resume``:
  best.safetensors and last.pt's weights are bitwise those of an uninterrupted run,
  history.csv too apart from its timing column. After every kill the checkpoint
  on disk must pass its checksum.
  Two of the kills wait for a checkpoint's temporary file and so land inside its write.
* Random kills rarely land between two particular file writes, so a second test
  copies the run folder just before *every* file replacement of a run (temporary
  files included: exactly what a kill there leaves behind) and resumes each copy.
* A truncated or altered last.pt, or a missing checksum, is one line naming it
  (exit 2); a NaN loss stops the run with the last good checkpoint untouched.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import cli_env
from synthetic_pairs import write_synthetic_pairs

from meddeblur.cli import main
from meddeblur.errors import UserError
from meddeblur.training.loop import train
from meddeblur.training.options import TrainOptions
from meddeblur.training.runs import load_checkpoint

# lr 3e-3 and --lr-patience 2: val loss improves for 3 epochs and then not, so resumes cross
# best-weight writes, epochs that keep an older best, and an LR cut (after epoch 5).
TINY = ["--recipe", "reference", "--width", "4", "--size", "32", "--batch", "4", "--lr", "3e-3", "--lr-patience", "2", "--device", "cpu"]
EPOCHS = 6


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs in-process work on one thread (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_pairs(tmp_path_factory.mktemp("data"), n=8, height=40, width=40, seed=3)


def _start(args: list) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "meddeblur", "train", *map(str, args)], env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _history_without_timings(run: Path) -> list[dict]:
    with open(run / "history.csv") as fh:
        return [{k: v for k, v in row.items() if k not in ("seconds", "cpu_seconds")} for row in csv.DictReader(fh)]


def _assert_same_result(run: Path, reference: Path) -> None:
    assert (run / "best.safetensors").read_bytes() == (reference / "best.safetensors").read_bytes()
    assert (run / "best.json").read_text() == (reference / "best.json").read_text()
    ours, theirs = (torch.load(r / "last.pt", weights_only=True) for r in (run, reference))
    assert ours["epoch"] == theirs["epoch"] and ours["model"].keys() == theirs["model"].keys()
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in ours["model"])
    assert _history_without_timings(run) == _history_without_timings(reference)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[Path, float, float]:
    """An uninterrupted run: (folder, seconds until its first log line, seconds of training after it)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    started = time.monotonic()
    proc = _start(["--data", data, "--out", run, "--epochs", EPOCHS, *TINY])
    while not (run / "train.log").exists() and proc.poll() is None:
        time.sleep(0.01)
    logged = time.monotonic()
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    return run, logged - started, time.monotonic() - logged


def _committed_epoch(run: Path) -> int:
    """The epoch of the checkpoint on disk (0 if none), which must verify whatever moment the kill hit."""
    return int(load_checkpoint(run / "last.pt")["epoch"]) if (run / "last.pt").exists() else 0


def _rows(run: Path) -> int:
    return len(_history_without_timings(run)) if (run / "history.csv").exists() else 0


def _log_size(run: Path) -> int:
    return (run / "train.log").stat().st_size if (run / "train.log").exists() else 0


def _wait(proc: subprocess.Popen, condition, timeout: float = 120) -> None:
    """Poll until ``condition()`` or the process ends."""
    give_up = time.monotonic() + timeout
    while proc.poll() is None and not condition() and time.monotonic() < give_up:
        time.sleep(0.0005)


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(data, reference, tmp_path):
    reference_run, startup, training = reference
    epoch_time = training / EPOCHS
    rng = random.Random(1234)
    run = tmp_path / "run"
    fresh = ["--data", data, "--out", run, "--epochs", EPOCHS, *TINY]
    in_checkpoint_write = {2: 4, 4: EPOCHS}  # attempt → epoch whose checkpoint write it interrupts
    landed = []
    for attempt in range(5):
        # Killed before run.json existed there is no run to resume: start it again.
        proc = _start(["--resume", run] if (run / "run.json").exists() else fresh)
        log_size = _log_size(run)
        if attempt == 0:  # from process start: during import or set-up, before any checkpoint
            _wait(proc, lambda: False, timeout=rng.uniform(0.3, 1.0) * startup)
        elif attempt in in_checkpoint_write:  # as soon as that checkpoint's temporary file shows
            _wait(proc, lambda target=in_checkpoint_write[attempt]: _rows(run) >= target - 1)
            _wait(proc, lambda: bool(list(run.glob(".last.pt.tmp-*"))))
        else:  # a random moment of the next two epochs, once this process has set up
            _wait(proc, lambda size=log_size: _log_size(run) > size)
            _wait(proc, lambda: False, timeout=rng.uniform(0, 2 * epoch_time))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        temporaries = len(list(run.glob(".*.tmp-*"))) if run.exists() else 0
        landed.append(f"rc {proc.returncode}: checkpoint epoch {_committed_epoch(run)}, history rows {_rows(run)}, temporary files {temporaries}")
    print("\n".join(landed))
    assert sum("rc -9" in line for line in landed) >= 4, landed  # nearly all attempts were really killed
    final = _start(["--resume", run])
    assert final.wait(timeout=120) == 0, final.stderr.read()
    _assert_same_result(run, reference_run)
    assert not list(run.glob(".*.tmp-*"))


def test_killed_before_any_file_write_then_resumed_gives_the_uninterrupted_result(data, tmp_path, monkeypatch):
    """Snapshot the run folder just before every file replacement of a run (temporaries included), resume each."""
    # lr 1e-2: epoch 1 improves, epoch 2 does not, so both kinds of epoch are cut at every write.
    options = TrainOptions(blurred_dir=str(data / "blurred"), sharp_dir=str(data / "sharp"), out=str(tmp_path / "reference"),
                           width=4, size=32, batch=4, lr=1e-2, epochs=2, device="cpu")
    real_replace, snapshots = os.replace, []

    def snapshotting(src, dst, *args, **kwargs):
        if Path(dst).name != "run.json" and (Path(options.out) / "run.json").exists():  # before run.json: no run yet
            snapshots.append((Path(dst).name, shutil.copytree(options.out, tmp_path / f"killed-{len(snapshots)}")))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", snapshotting)
    train(options)
    monkeypatch.setattr(os, "replace", real_replace)
    written = [name for name, _ in snapshots]
    assert written.count("last.pt") == 2 and written.count("best.safetensors") == 1 and written.count("curves.png") == 2
    for name, run in snapshots:
        assert not (run / "last.pt").exists() or _committed_epoch(run) >= 1, name  # the checksum always verifies
        train(replace(options, out=str(run)), resume=True)
        _assert_same_result(run, Path(options.out))
        assert not list(run.glob(".*.tmp-*")), name


@pytest.fixture(scope="module")
def one_epoch_run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("one-epoch") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY]) == 0
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture
def finished_run(one_epoch_run, tmp_path) -> Path:
    return Path(shutil.copytree(one_epoch_run, tmp_path / "run"))


def _resume_error(run: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_truncated_checkpoint_is_one_line_naming_it(finished_run, capsys):
    path = finished_run / "last.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    err = _resume_error(finished_run, capsys)
    assert f"checkpoint {path} is corrupt or incomplete (checksum mismatch" in err


def test_altered_checkpoint_fails_its_checksum(finished_run, capsys):
    path = finished_run / "last.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert f"checkpoint {path} is corrupt or incomplete (checksum mismatch" in _resume_error(finished_run, capsys)


def test_checkpoint_without_checksum_is_refused(finished_run, capsys):
    (finished_run / "last.pt.sha256").unlink()
    err = _resume_error(finished_run, capsys)
    assert str(finished_run / "last.pt") in err and "sha256sum last.pt > last.pt.sha256" in err


@pytest.mark.parametrize(("bad_call", "message"), [
    (3, "training diverged at epoch 2 step 1 (loss nan); last good checkpoint {ckpt} kept — lower --lr or check the data"),
    (2, "training diverged at epoch 1 (val loss nan); no checkpoint written yet — lower --lr or check the data"),
])
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(data, tmp_path, capsys, monkeypatch, bad_call, message):
    from meddeblur.losses import DeblurLoss

    real_forward, calls = DeblurLoss.forward, iter(range(1000))

    def forward(self, pred, target):  # 5 train pairs, batch 4: loss calls 0, 1 train and 2 validates epoch 1
        loss, terms = real_forward(self, pred, target)
        return (loss * float("nan") if next(calls) >= bad_call else loss), terms

    monkeypatch.setattr(DeblurLoss, "forward", forward)
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "2", *TINY]) == 2
    err = capsys.readouterr().err
    assert message.format(ckpt=run / "last.pt") in err and len(err.strip().splitlines()) == 1
    if bad_call == 3:
        state = load_checkpoint(run / "last.pt")
        assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
        assert len(_history_without_timings(run)) == 1
    else:
        assert not (run / "last.pt").exists()
        with pytest.raises(UserError, match="no checkpoint to resume from"):
            load_checkpoint(run / "last.pt")
    monkeypatch.setattr(DeblurLoss, "forward", real_forward)
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0  # and it continues from there
    assert len(_history_without_timings(run)) == 2
