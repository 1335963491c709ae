"""Nothing lost: a folder run killed at any moment (SIGKILL) or stopped (SIGTERM), then run again, leaves every
input with exactly one whole output, none written twice, no temporary file behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import cli_env

from meddeblur.cli import main
from meddeblur.runs.archive import deblur_archive
from meddeblur.runs.workers import ModelSpec
from meddeblur.io.decode import read_image

IMAGES = 20


def _folder(root: Path) -> Path:
    folder = root / "in"
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        path = folder / ("sub" if i % 2 else "") / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    return folder


def _outputs(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in sorted(out.rglob("*")) if p.is_file()}


def _start(folder: Path, out: Path, weights: Path, *extra: str, background: bool = False) -> subprocess.Popen:
    """The CLI in a child process; ``background``: as a shell script's ``&`` job starts it — SIGINT ignored, in a
    process group of its own (so that the test can signal the group)."""
    command = [sys.executable, "-m", "meddeblur", "deblur", str(folder), "-o", str(out), "--model", str(weights), "--device", "cpu",
               "--recursive", "--quiet", "--log", str(out.parent / "run.jsonl"), *extra]
    # Otherwise as from a terminal, SIGINT at its default even when the tests themselves run as a background job.
    sigint = signal.SIG_IGN if background else signal.SIG_DFL
    return subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint), start_new_session=background)


def _wait_for_first_output(process: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 180  # a loaded machine imports torch slowly
    while not any(p.suffix == ".png" and not p.name.startswith(".") for p in out.rglob("*")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no output within 180 s"
        time.sleep(0.01)


def _check_finished(folder: Path, out: Path, reference: Path, kept: dict[str, int]) -> None:
    """Every input has one output equal to an uninterrupted run's; those there before the rerun were not rewritten."""
    outputs = _outputs(out)
    assert sorted(outputs) == sorted(_outputs(reference)) and len(outputs) == IMAGES  # no temporary file left either
    for name, path in outputs.items():
        np.testing.assert_array_equal(read_image(path).rgb, read_image(reference / name).rgb)
    assert {name: outputs[name].stat().st_mtime_ns for name in kept} == kept
    written: dict[str, int] = {}
    for line in (json.loads(text) for text in (out.parent / "run.jsonl").read_text().splitlines()):
        written[line["input"]] = written.get(line["input"], 0) + (line["status"] == "written")
    assert len(written) == IMAGES and max(written.values()) == 1  # none deblurred twice


def _running(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_a_run_killed_at_a_random_moment_is_finished_by_a_rerun(tmp_path: Path, tiny_weights: Path, one_thread) -> None:
    folder, out = _folder(tmp_path), tmp_path / "out"
    reference = deblur_archive([folder], tmp_path / "reference", ModelSpec(str(tiny_weights), device="cpu"), recursive=True)
    assert len(reference.written) == IMAGES
    process = _start(folder, out, tiny_weights, "--workers", "1")  # in one process: a temporary file is left behind
    _wait_for_first_output(process, out)
    time.sleep(random.uniform(0, 0.25))  # well inside the run even on a fast machine (20 images of 256 x 256)
    process.kill()
    process.communicate()
    done = {name: path.stat().st_mtime_ns for name, path in _outputs(out).items() if not name.split("/")[-1].startswith(".")}
    assert 0 < len(done) < IMAGES, "the run was not stopped midway"
    assert main(["deblur", str(folder), "-o", str(out), "--model", str(tiny_weights), "--device", "cpu", "--recursive", "--quiet",
                 "--log", str(tmp_path / "run.jsonl")]) == 0
    _check_finished(folder, out, tmp_path / "reference", done)


@pytest.mark.parametrize(("stop", "says"), [(signal.SIGTERM, "stopped by SIGTERM"), (signal.SIGINT, "interrupted (Ctrl-C)")])
def test_sigterm_or_ctrl_c_stops_the_workers_too_prints_the_summary_and_a_rerun_finishes(tmp_path: Path, tiny_weights: Path,
                                                                                         one_thread, stop: int, says: str) -> None:
    """SIGTERM from a supervisor, or Ctrl-C in a terminal (SIGINT to the run's process)."""
    folder, out = _folder(tmp_path), tmp_path / "out"
    deblur_archive([folder], tmp_path / "reference", ModelSpec(str(tiny_weights), device="cpu"), recursive=True)
    process = _start(folder, out, tiny_weights, "--workers", "2")
    _wait_for_first_output(process, out)
    children = [int(pid) for task in Path(f"/proc/{process.pid}/task").iterdir()
                for pid in (task / "children").read_text().split()] if Path("/proc").is_dir() else []
    process.send_signal(stop)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + stop and says in stderr and "Traceback" not in stderr, stderr
    # What was done so far, and how to finish: the summary of the part that ran, then the way to resume.
    first = stdout.splitlines()[0]
    assert first.startswith(f"{IMAGES} input(s): ") and first.endswith(" not reached") and "run the same command again to resume" in stdout
    assert len(children) >= 2  # the workers (and multiprocessing's resource tracker)
    deadline = time.monotonic() + 20
    while any(map(_running, children)):
        assert time.monotonic() < deadline, "worker processes outlived the run"
        time.sleep(0.1)
    done = {name: path.stat().st_mtime_ns for name, path in _outputs(out).items()}
    assert all(not name.split("/")[-1].startswith(".") for name in done)  # no temporary file left
    assert main(["deblur", str(folder), "-o", str(out), "--model", str(tiny_weights), "--device", "cpu", "--recursive", "--quiet",
                 "--log", str(tmp_path / "run.jsonl")]) == 0  # in this process: workers give the same pixels (test_archive)
    _check_finished(folder, out, tmp_path / "reference", done)


def test_a_background_run_is_not_stopped_by_a_process_group_sigint_it_ignores(tmp_path: Path, tiny_weights: Path,
                                                                               one_thread) -> None:
    """A script's background job ignores SIGINT; its workers must too, not stop quietly while the run goes on."""
    folder, out = _folder(tmp_path), tmp_path / "out"
    process = _start(folder, out, tiny_weights, "--workers", "2", background=True)
    _wait_for_first_output(process, out)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    assert f"{IMAGES} input(s): {IMAGES} written" in stdout and "0 refused" in stdout
