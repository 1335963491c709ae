"""A full disk while the checkpoint is written: one line, and ``last.pt`` and ``last.pt.sha256`` still a pair.

The disk fills (``OSError(ENOSPC)`` from the file's ``write``) at each write of :func:`save_checkpoint` in turn: the
checkpoint's own, the checksum file's widening to both digests, its narrowing to the new one. Whatever the moment,
no digest may name a checkpoint that is not there, and a checkpoint that is there must verify.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

import pytest
import torch
from synthetic_pairs import write_synthetic_pairs

from meddeblur.cli import main
from meddeblur.errors import UserError
from meddeblur.training import runs
from meddeblur.training.runs import CHECKPOINT, CHECKSUM, load_checkpoint, save_checkpoint


class _Full:
    """A file on a full disk: writing raises ENOSPC, as the kernel does; everything else is the real file's."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writelines(self, lines) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self._fh, name)


def _disk_fills_at(monkeypatch, name: str, attempt: int = 1) -> None:
    """The ``attempt``-th atomic write of the file ``name`` finds the disk full (the real atomic_write around it)."""
    real, seen = runs.atomic_write, []

    @contextlib.contextmanager
    def writing(path, *args, **kwargs):
        with real(path, *args, **kwargs) as fh:
            if Path(path).name == name:
                seen.append(path)
                if len(seen) == attempt:
                    yield _Full(fh)
                    return
            yield fh

    monkeypatch.setattr(runs, "atomic_write", writing)


def _state(epoch: int) -> dict:
    return {"epoch": epoch, "model": {"weight": torch.full((4, 4), float(epoch))}}


def _pair(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in (CHECKPOINT, CHECKSUM) if (run / name).exists()}


def _no_temporaries(run: Path) -> bool:
    return not list(run.glob(".*.tmp-*"))


@pytest.mark.parametrize(("name", "attempt"), [(CHECKPOINT, 1), (CHECKSUM, 1)])
def test_a_full_disk_at_the_first_checkpoint_leaves_no_checksum_without_its_checkpoint(tmp_path, monkeypatch, name, attempt):
    _disk_fills_at(monkeypatch, name, attempt)
    with pytest.raises(UserError, match="No space left on device") as refusal:
        save_checkpoint(tmp_path, _state(1))
    assert "\n" not in str(refusal.value)
    assert _pair(tmp_path) == {} and _no_temporaries(tmp_path)


@pytest.mark.parametrize(("name", "attempt"), [(CHECKPOINT, 1), (CHECKSUM, 1)])
def test_a_full_disk_at_a_later_checkpoint_keeps_the_previous_pair_as_it_was(tmp_path, monkeypatch, name, attempt):
    save_checkpoint(tmp_path, _state(1))
    before = _pair(tmp_path)
    _disk_fills_at(monkeypatch, name, attempt)
    with pytest.raises(UserError, match="No space left on device"):
        save_checkpoint(tmp_path, _state(2))
    assert _pair(tmp_path) == before and _no_temporaries(tmp_path)  # byte for byte: no digest of the lost epoch 2
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 1


def test_a_full_disk_after_the_checkpoint_is_in_place_leaves_a_pair_that_verifies(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, _state(1))
    _disk_fills_at(monkeypatch, CHECKSUM, attempt=2)  # the narrowing to the new digest alone
    with pytest.raises(UserError, match="No space left on device"):
        save_checkpoint(tmp_path, _state(2))
    assert load_checkpoint(tmp_path / CHECKPOINT)["epoch"] == 2 and _no_temporaries(tmp_path)


def test_a_failed_move_into_place_takes_back_the_checksum_it_wrote(tmp_path, monkeypatch):
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == CHECKPOINT:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(UserError, match="cannot write"):
        save_checkpoint(tmp_path, _state(1))
    assert _pair(tmp_path) == {} and _no_temporaries(tmp_path)


def test_train_on_a_full_disk_is_one_line_and_leaves_no_orphan_checksum(tmp_path, monkeypatch, capsys, one_thread):
    data = write_synthetic_pairs(tmp_path / "data", n=6, height=40, width=40, seed=3)
    run = tmp_path / "run"
    _disk_fills_at(monkeypatch, CHECKPOINT)
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--recipe", "reference", "--width", "4", "--size",
                 "32", "--batch", "4", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"meddeblur train: error: {run / CHECKPOINT}: cannot write (No space left on device)" in err, err
    assert not (run / CHECKSUM).exists() and not (run / CHECKPOINT).exists() and _no_temporaries(run)
