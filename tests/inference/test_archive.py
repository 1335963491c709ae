"""Folder runs as archives: statuses, exit codes, the run log, mirrored trees, resuming, change maps, workers."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from meddeblur.cli import main
from meddeblur.errors import UserError
from meddeblur.runs.plan import Task, plan_run
from meddeblur.runs.archive import deblur_archive
from meddeblur.inference.change_map import change_between, change_map_path
from meddeblur.runs.log import LOG_FIELDS, RunLog
from meddeblur.runs.jobs import Settings, deblur_tasks
from meddeblur.runs.workers import ModelSpec
from meddeblur.io.decode import read_image
from meddeblur.io.ownership import read_provenance


def _image(path: Path, height: int = 40, width: int = 48, seed: int = 0, dtype=np.uint8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    top = np.iinfo(dtype).max
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, top + 1, (height, width, 3)).astype(dtype))
    return path


def _archive(root: Path) -> Path:
    """in/: 2 good images, a sub-folder with 2 more, an empty and a truncated JPEG, a text file and a WebP-named file."""
    folder = root / "in"
    _image(folder / "a.png", seed=1)
    _image(folder / "b.jpg", seed=2)
    _image(folder / "sub" / "c.png", seed=3)
    _image(folder / "sub" / "deeper" / "d.tif", 33, 21, seed=4, dtype=np.uint16)
    (folder / "empty.jpg").write_bytes(b"")
    truncated = _image(folder / "sub" / "cut.jpg", seed=5)
    truncated.write_bytes(truncated.read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "photo.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    return folder


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _cli(*args: object) -> int:
    return main(["deblur", *map(str, args), "--device", "cpu", "--quiet"])


def test_a_nested_archive_gives_statuses_exit_codes_a_log_and_a_mirrored_tree(tmp_path: Path, tiny_weights: Path, capsys, one_thread) -> None:
    folder = _archive(tmp_path)
    out, log = tmp_path / "out", tmp_path / "run.jsonl"
    rc = _cli(folder, "-o", out, "--model", tiny_weights, "--recursive", "--skip-bad", "--log", log)

    assert rc == 1  # two inputs refused, the rest written
    text = capsys.readouterr().out
    assert "6 input(s): 4 written" in text and "2 refused" in text
    assert "refused: " + str(folder / "empty.jpg") in text and str(folder / "sub" / "cut.jpg") in text
    assert "not images, left alone:" in text and "notes.txt" in text and "photo.webp" in text
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "b.jpg", "sub/c.png", "sub/deeper/d.tif"]  # the tree mirrored, nothing else
    assert read_image(out / "sub" / "deeper" / "d.tif").bit_depth == 16

    lines = _log(log)
    assert all(list(line) == list(LOG_FIELDS) for line in lines)
    statuses = {Path(line["input"]).name: line["status"] for line in lines}
    assert statuses == {"a.png": "written", "b.jpg": "written", "c.png": "written", "d.tif": "written",
                        "empty.jpg": "refused", "cut.jpg": "refused"}
    a = next(line for line in lines if line["input"].endswith("a.png"))
    record = read_provenance(out / "a.png")
    assert a["model_id"] == record["model_id"] and a["parameters"] == record["parameters"] == {"tile": 1024, "overlap": 128}
    assert a["change"] == record["change"] and set(a["change"]) == {"mean", "max", "share_over_4"}
    assert a["output"] == str(out / "a.png") and a["seconds"] > 0
    empty = next(line for line in lines if line["input"].endswith("empty.jpg"))
    assert "empty file" in empty["reason"] and empty["output"] is None

    # Without --skip-bad the first input that cannot be read stops the run: exit code 2, one line naming it.
    assert _cli(folder, "-o", tmp_path / "stop", "--model", tiny_weights, "--recursive") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "empty.jpg" in error and "--skip-bad" in error

    # A usage error: exit code 2 before anything is done.
    assert _cli(folder, "-o", tmp_path / "bad", "--model", tiny_weights, "--workers", "0") == 2
    assert "--workers 0" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_without_recursive_sub_folders_are_named_not_entered(tmp_path: Path, tiny_weights: Path, capsys, one_thread) -> None:
    folder = _archive(tmp_path)
    assert _cli(folder, "-o", tmp_path / "out", "--model", tiny_weights, "--skip-bad") == 1
    text = capsys.readouterr().out
    assert f"folders not entered (pass --recursive" in text and str(folder / "sub") in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg"]


def test_a_rerun_rewrites_nothing_and_redo_rewrites_everything(tmp_path: Path, tiny_weights: Path, capsys, one_thread) -> None:
    folder = _archive(tmp_path)
    out, log = tmp_path / "out", tmp_path / "run.jsonl"
    args = (folder, "-o", out, "--model", tiny_weights, "--recursive", "--skip-bad", "--log", log)
    _cli(*args)
    first = _mtimes(out)
    capsys.readouterr()

    assert _cli(*args) == 1  # the two bad inputs are refused again
    assert _mtimes(out) == first
    assert "4 skipped (4 already done)" in capsys.readouterr().out
    second = _log(log)[6:]
    assert sorted(line["status"] for line in second) == ["refused"] * 2 + ["skipped"] * 4
    assert all("already done" in line["reason"] for line in second if line["status"] == "skipped")

    _cli(*args, "--redo")
    assert all(_mtimes(out)[name] > first[name] for name in first)

    # Another pixel-shaping option (the tile size lands in the provenance's parameters): done again, replacing them.
    before = _mtimes(out)
    _cli(*args, "--tile", "512")
    assert all(_mtimes(out)[name] > before[name] for name in before)
    assert read_provenance(out / "a.png")["parameters"]["tile"] == 512


def test_resume_compares_the_whole_parameters_dict_whatever_its_keys(tmp_path: Path, tiny_model) -> None:
    source = _image(tmp_path / "in" / "x.png")
    record = {"tool": "meddeblur", "operation": "deblur", "model_id": "abc", "engine": "torch", "parameters": {"tile": 0, "psf": "gauss:sigma=1"}}
    out = tmp_path / "out"
    plan = plan_run([source], out, record)
    assert [task.input for task in plan.tasks] == [source]
    from meddeblur.runs.execute import InProcess, execute
    from meddeblur.runs.files import _Network

    execute(plan, InProcess(_Network(tiny_model, "cpu", 0, 0, 16, record), Settings()), record)
    assert plan_run([source], out, record).tasks == []  # done
    other = {**record, "parameters": {**record["parameters"], "psf": "gauss:sigma=2"}}
    (task,) = plan_run([source], out, other).tasks  # a key the resume rule was never told about still counts
    assert "another model or other options" in task.note
    assert len(plan_run([source], out, {**record, "model_id": "def"}).tasks) == 1
    assert len(plan_run([source], out, record, resume=False).tasks) == 1


def test_own_outputs_are_skipped_unless_allowed(tmp_path: Path, tiny_weights: Path, capsys, one_thread) -> None:
    source = _image(tmp_path / "in" / "x.png")
    _cli(source, "-o", tmp_path / "first", "--model", tiny_weights)
    capsys.readouterr()
    again = tmp_path / "first" / "x.png"
    assert _cli(again, "-o", tmp_path / "second", "--model", tiny_weights, "--log", tmp_path / "log.jsonl") == 0
    assert "1 skipped (1 meddeblur output(s))" in capsys.readouterr().out
    (line,) = _log(tmp_path / "log.jsonl")
    assert line["status"] == "skipped" and "is a meddeblur output" in line["reason"] and "--allow-outputs" in line["reason"]  # the CLI's words
    assert not (tmp_path / "second").exists() or not any((tmp_path / "second").iterdir())
    assert _cli(again, "-o", tmp_path / "second", "--model", tiny_weights, "--allow-outputs") == 0
    assert (tmp_path / "second" / "x.png").is_file()


def test_the_log_never_appends_to_a_file_that_is_not_a_run_log(tmp_path: Path) -> None:
    photo = _image(tmp_path / "photo.png")
    before = photo.read_bytes()
    with pytest.raises(UserError, match="not a meddeblur run log"):
        RunLog(photo, {})
    assert photo.read_bytes() == before


# --------------------------------------------------------------------------- change maps


def test_change_figures_and_map_on_a_known_pair() -> None:
    before = np.zeros((20, 50, 3), np.uint8)
    after = before.copy()
    after[:, :5] = (10, 0, 0)  # 10 % of the pixels moved by 10 levels in one channel
    after[:, 5:10, 1] = 3  # 10 % moved by 3 (not more than 4)
    change = change_between(before, after)
    assert change.figures.as_dict() == {"mean": 1.3, "max": 10.0, "share_over_4": 0.1}
    assert change.scale() == 16
    heat = change.heat()
    np.testing.assert_array_equal(heat[0, 30], (0, 0, 4))  # unchanged: the darkest colour
    assert heat[0, 0].sum() > heat[0, 7].sum() > heat[0, 30].sum()
    picture = change.image()
    assert picture.shape == (128, 50 + 70, 3) and (picture[:20, :50] == heat).all()
    # 16-bit images are measured in 8-bit levels too; grey against colour, float against integer.
    assert change_between(np.zeros((16, 16), np.uint16), np.full((16, 16), 257 * 6, np.uint16)).figures.max == 6.0
    assert change_between(np.zeros((16, 16), np.float32), np.full((16, 16, 3), 2 / 255, np.float32)).figures.mean == 2.0
    with pytest.raises(ValueError, match="after: shape"):
        change_between(before, after[:10])
    with pytest.raises(ValueError, match="before: float values"):
        change_between(np.full((16, 16), 2.0), after[:16, :16])


def test_change_map_is_written_beside_each_output_with_the_figures_in_its_provenance(tmp_path: Path) -> None:
    source = _image(tmp_path / "in" / "x.png")
    report = _identity_run([source], tmp_path / "out", change_map=True)
    (outcome,) = report.outcomes
    heat_map = change_map_path(tmp_path / "out" / "x.png")
    assert outcome.change_map == str(heat_map) and outcome.change == {"mean": 0.0, "max": 0.0, "share_over_4": 0.0}
    assert read_provenance(heat_map)["operation"] == "change map"
    assert read_image(heat_map).rgb.shape == (128, 48 + 70, 3)  # the identity changes nothing: every figure is 0


def _identity_run(inputs: list[Path], out: Path, **options):
    from test_deblur import Identity

    from meddeblur.runs.files import _Network
    from meddeblur.runs.execute import InProcess, execute
    from meddeblur.io.provenance import make_record

    record = make_record("identity", "identity", "torch", {"tile": 0})
    plan = plan_run(inputs, out, record, change_map=options.get("change_map", False))
    engine = _Network(Identity(), "cpu", 0, 0, 16, record)
    return execute(plan, InProcess(engine, Settings(change_map=options.get("change_map", False))), record)


def test_adding_change_map_on_a_rerun_redoes_only_what_lacks_one(tmp_path: Path, tiny_weights: Path, one_thread) -> None:
    folder = tmp_path / "in"
    for i in range(2):
        _image(folder / f"{i}.png", seed=i)
    _cli(folder, "-o", tmp_path / "out", "--model", tiny_weights)
    _cli(folder, "-o", tmp_path / "out", "--model", tiny_weights, "--change-map")
    first = _mtimes(tmp_path / "out")
    assert sorted(first) == ["0.change.png", "0.png", "1.change.png", "1.png"]
    _cli(folder, "-o", tmp_path / "out", "--model", tiny_weights, "--change-map")
    assert _mtimes(tmp_path / "out") == first


# --------------------------------------------------------------------------- progress, batching


def test_progress_bars_count_images_and_the_tiles_of_a_large_one(tmp_path: Path, tiny_weights: Path, capsys, one_thread) -> None:
    folder = tmp_path / "in"
    _image(folder / "small.png", seed=1)
    _image(folder / "large.png", 70, 90, seed=2)
    deblur_archive([folder], tmp_path / "out", ModelSpec(str(tiny_weights), device="cpu", tile=32, overlap=8), progress=True)
    bars = capsys.readouterr().err
    assert "2/2" in bars and "image" in bars
    assert "large.png" in bars and "tile" in bars  # 70 x 90 in 32-px tiles


class _FakeCuda(torch.nn.Module):
    """An engine claiming a CUDA device (computing on the CPU) that records how many images each forward pass gets."""

    def __init__(self, model) -> None:
        super().__init__()
        from meddeblur.io.provenance import make_record

        self.model, self.passes = model, []
        self.device, self.tile, self.overlap, self.size_multiple = torch.device("cuda"), 0, 0, 16
        self.provenance = make_record("fake", "fake", "torch", {})

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        from meddeblur.inference.batch import deblur_tensor

        self.passes.append(len(batch))
        return deblur_tensor(self.model, batch)

    psf, estimates_psf = None, False

    def restore_rgb(self, rgb: np.ndarray, before_tile=None) -> tuple[np.ndarray, dict]:
        return self(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])[0].permute(1, 2, 0).numpy(), {}


def test_images_of_one_size_are_batched_on_a_gpu_with_the_pixels_of_one_by_one(tmp_path: Path, tiny_model, one_thread) -> None:
    sources = [_image(tmp_path / "in" / f"{i}.png", 32, 48 if i != 2 else 40, seed=i) for i in range(5)]
    engine = _FakeCuda(tiny_model)
    tasks = [Task(source, tmp_path / "batched" / source.name) for source in sources]
    outcomes = list(deblur_tasks(engine, tasks, Settings(batch=3)))
    assert sorted(engine.passes) == [1, 1, 3]  # 0, 1, 3 together; 2 (another size) alone; 4 left over
    assert {outcome.status for outcome in outcomes} == {"written"}
    one_by_one = list(deblur_tasks(engine, [Task(s, tmp_path / "single" / s.name) for s in sources], Settings(batch=1)))
    assert len(one_by_one) == 5
    for source in sources:
        np.testing.assert_array_equal(read_image(tmp_path / "batched" / source.name).rgb, read_image(tmp_path / "single" / source.name).rgb)


# --------------------------------------------------------------------------- workers and Ray


def _pixels_of(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): read_image(p).rgb for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith(".json")}


def test_two_workers_give_the_pixels_of_one(tmp_path: Path, tiny_weights: Path, one_thread) -> None:
    folder = _archive(tmp_path)
    spec = ModelSpec(str(tiny_weights), device="cpu")
    one = deblur_archive([folder], tmp_path / "one", spec, recursive=True, skip_bad=True, log=tmp_path / "one.jsonl")
    two = deblur_archive([folder], tmp_path / "two", spec, recursive=True, skip_bad=True, log=tmp_path / "two.jsonl", workers=2)
    assert sorted(o.status for o in one.outcomes) == sorted(o.status for o in two.outcomes)
    first, second = _pixels_of(tmp_path / "one"), _pixels_of(tmp_path / "two")
    assert sorted(first) == sorted(second) == ["a.png", "b.jpg", "sub/c.png", "sub/deeper/d.tif"]
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert {Path(line["input"]).name: line["status"] for line in _log(tmp_path / "one.jsonl")} == \
        {Path(line["input"]).name: line["status"] for line in _log(tmp_path / "two.jsonl")}


def test_embedded_ray_gives_the_pixels_and_statuses_of_a_local_run(tmp_path: Path, tiny_weights: Path, one_thread) -> None:
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'meddeblur[ray]' (CI installs it with the test extra)")
    folder = _archive(tmp_path)
    spec = ModelSpec(str(tiny_weights), device="cpu")
    local = deblur_archive([folder], tmp_path / "local", spec, recursive=True, skip_bad=True, log=tmp_path / "local.jsonl")
    ray = deblur_archive([folder], tmp_path / "ray", spec, recursive=True, skip_bad=True, log=tmp_path / "ray.jsonl", workers=2,
                         cluster="ray")
    assert ray.exit_code == local.exit_code == 1
    first, second = _pixels_of(tmp_path / "local"), _pixels_of(tmp_path / "ray")
    assert sorted(first) == sorted(second) and len(first) == 4
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    statuses = [{Path(line["input"]).name: (line["status"], line["change"]) for line in _log(tmp_path / f"{kind}.jsonl")}
                for kind in ("local", "ray")]
    assert statuses[0] == statuses[1]
    # The same resume rule: a rerun on Ray rewrites nothing.
    before = _mtimes(tmp_path / "ray")
    again = deblur_archive([folder], tmp_path / "ray", spec, recursive=True, skip_bad=True, workers=2, cluster="ray")
    assert len(again.with_status("skipped")) == 4 and _mtimes(tmp_path / "ray") == before


def test_ray_address_without_the_ray_cluster_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="ray_address=auto.*cluster='ray'"):
        deblur_archive([tmp_path], tmp_path / "out", ray_address="auto")
    with pytest.raises(UserError, match="cluster='dask'"):
        deblur_archive([tmp_path], tmp_path / "out", cluster="dask")
    assert os.listdir(tmp_path) == []


@dataclass(frozen=True)
class _DyingSpec(ModelSpec):
    """A model whose worker process ends on 17 x 19 images: ``death`` "exit" (exit code 9), or a signal's name
    that the worker sends itself (SIGKILL: as the out-of-memory killer does; SIGINT: a process-group Ctrl-C)."""

    death: str = "exit"

    def load(self, device: str | None = None):
        engine = super().load(device)
        deblur_rgb, death = engine.deblur_rgb, self.death

        def dying(rgb, before_tile=None):
            if rgb.shape[:2] == (17, 19):
                if death == "exit":
                    os._exit(9)
                os.kill(os.getpid(), getattr(signal, death))
                time.sleep(30)  # the signal arrives meanwhile
            return deblur_rgb(rgb, before_tile=before_tile)

        engine.deblur_rgb = dying
        return engine


@pytest.mark.parametrize(("death", "says"), [("exit", "ended unexpectedly (exit code 9)"),
                                             ("SIGKILL", "was killed by SIGKILL (the system's out-of-memory killer"),
                                             ("SIGINT", "was stopped by SIGINT")])
def test_a_worker_that_dies_refuses_its_image_and_the_run_goes_on(tmp_path: Path, tiny_weights: Path, one_thread, death: str,
                                                                  says: str) -> None:
    folder = tmp_path / "in"
    for i in range(3):
        _image(folder / f"{i}.png", seed=i)
    _image(folder / "dies.png", 17, 19)
    spec = _DyingSpec(str(tiny_weights), device="cpu", death=death)
    # As from a terminal: a test run started in the background inherits SIGINT ignored, and so would its workers.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        report = deblur_archive([folder], tmp_path / "out", spec, skip_bad=True, workers=2)
    finally:
        signal.signal(signal.SIGINT, previous)
    (refused,) = report.with_status("refused")
    assert refused.input == str(folder / "dies.png") and f"the worker process deblurring it {says}" in refused.reason
    assert "out of memory" not in refused.reason or death == "SIGKILL"
    assert sorted(p.name for p in report.written) == [f"{i}.png" for i in range(3)] and report.exit_code == 1


def test_an_input_that_cannot_be_opened_is_found_before_anything_is_written(tmp_path: Path, tiny_weights: Path, capsys,
                                                                             one_thread) -> None:
    folder = tmp_path / "in"
    _image(folder / "a.png")
    os.mkfifo(folder / "pipe.png")  # would block a reader forever
    assert _cli(folder, "-o", tmp_path / "out", "--model", tiny_weights) == 2
    assert "pipe.png: is a named pipe" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert _cli(folder, "-o", tmp_path / "out", "--model", tiny_weights, "--skip-bad") == 1
    assert "refused: " + str(folder / "pipe.png") in capsys.readouterr().out and (tmp_path / "out" / "a.png").is_file()


def test_a_run_without_a_terminal_prints_a_progress_line_every_so_often(tmp_path: Path, tiny_weights: Path, capsys,
                                                                          one_thread) -> None:
    from meddeblur.runs.execute import progress_line

    folder = tmp_path / "in"
    for i in range(3):
        _image(folder / f"{i}.png", seed=i)
    deblur_archive([folder], tmp_path / "out", ModelSpec(str(tiny_weights), device="cpu"), workers=1, progress_every=0)
    lines = capsys.readouterr().err.splitlines()  # captured: not a terminal, so lines rather than bars
    assert [line.split(" images")[0] for line in lines] == [f"deblurring: {i}/3" for i in (1, 2, 3)]
    assert "images/s, about" in lines[0] and "left" not in lines[-1]
    deblur_archive([folder], tmp_path / "quiet", ModelSpec(str(tiny_weights), device="cpu"), workers=1, progress=False)
    assert capsys.readouterr().err == ""
    assert progress_line(12, 200, 30.0, 1) == "deblurring: 12/200 images (6 %), 0.40 images/s, about 7 min 50 s left, 1 refused"


def test_the_log_of_a_command_line_run_speaks_in_flags(tmp_path: Path, tiny_weights: Path, one_thread) -> None:
    source, log = _image(tmp_path / "in" / "x.png"), tmp_path / "run.jsonl"
    for _ in range(2):
        assert _cli(source, "-o", tmp_path / "out", "--model", tiny_weights, "--log", log) == 0
    skipped = _log(log)[-1]
    assert skipped["status"] == "skipped" and "--redo" in skipped["reason"] and "redo=True" not in skipped["reason"]
