"""A folder run on Ray as a user sees it: a run that succeeds prints no line Ray marks as an error, and an actor
that dies ends the run in one line instead of Ray restarting it and retrying its image for ever."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import cli_env

from meddeblur.errors import UserError
from meddeblur.runs.archive import deblur_archive
from meddeblur.runs.workers import ModelSpec

pytest.importorskip("ray", reason="Ray is not installed: pip install 'meddeblur[ray]' (CI installs it with the test extra)")

#: A line of Ray's C++ logger at error level, e.g. ``[2026-12-07 23:29:41,978 E 9706 9706] core_worker.cc:2465: ...``.
RAY_ERROR_LINE = re.compile(r"^\[[\d-]+ [\d:,.]+ E \d+ \d+\]")


def _images(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        assert cv2.imwrite(str(folder / f"{i}.png"), np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    return folder


def test_a_run_that_succeeds_prints_no_line_ray_marks_as_an_error(tmp_path: Path, tiny_weights: Path) -> None:
    folder = _images(tmp_path / "in")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "meddeblur",
            "deblur",
            str(folder),
            "-o",
            str(tmp_path / "out"),
            "--model",
            str(tiny_weights),
            "--device",
            "cpu",
            "--cluster",
            "ray",
            "--workers",
            "2",
            "--quiet",
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("3 input(s): 3 written")
    said = done.stderr.splitlines()
    assert not [line for line in said if RAY_ERROR_LINE.match(line) or "core_worker" in line], done.stderr
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr, done.stderr


@dataclass(frozen=True)
class _KillingSpec(ModelSpec):
    """A model whose process kills itself (SIGKILL, as the out-of-memory killer does) on 17 x 19 images."""

    def load(self, device: str | None = None):
        engine = super().load(device)
        deblur_rgb = engine.deblur_rgb

        def dying(rgb, before_tile=None):
            if rgb.shape[:2] == (17, 19):
                os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(30)
            return deblur_rgb(rgb, before_tile=before_tile)

        engine.deblur_rgb = dying
        return engine


def test_an_actor_that_dies_ends_the_run_in_one_line_instead_of_being_restarted_for_ever(
    tmp_path: Path, tiny_weights: Path
) -> None:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors cannot import this test module
    try:
        folder = _images(tmp_path / "in")
        assert cv2.imwrite(str(folder / "dies.png"), np.zeros((17, 19, 3), np.uint8))
        started = time.monotonic()
        with pytest.raises(UserError) as caught:
            deblur_archive(
                [folder], tmp_path / "out", _KillingSpec(str(tiny_weights), device="cpu"), skip_bad=True, workers=2, cluster="ray"
            )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert time.monotonic() - started < 300
    message = str(caught.value)
    assert message.startswith("a Ray actor died while deblurring (its process ended: killed by the system's out-of-memory")
    assert "a rerun skips them" in message and "without cluster='ray'" in message and "\n" not in message
