"""Every file a folder run writes is planned before anything is written, and "already done" is proven, not assumed.

Side files (PSF figures, change maps, BMP sidecars) and the run log follow the outputs' rules: never an input, never
a path another planned file takes, never a folder in the way, never a file of another kind without ``overwrite``.
A rerun skips an input only when its output records the very input file now at its path and decodes whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from datetime import datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from meddeblur.cli import main
from meddeblur.errors import UserError
from meddeblur.runs.plan import plan_run
from meddeblur.runs.log import LOG_FIELDS, check_run_log
from meddeblur.io.decode import read_image
from meddeblur.io.encode import write_image
from meddeblur.io.ownership import read_provenance
from meddeblur.io.provenance import make_record

RECORD = make_record("abc", "tiny", "torch", {"tile": 0, "psf": "gauss:sigma=1.2"})


def _image(path: Path, seed: int = 0, size: tuple[int, int] = (40, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (*size, 3)).astype(np.uint8))
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _deblur(*args: object) -> int:
    return main(["deblur", *map(str, args), "--psf", "gauss:sigma=1.2", "--method", "wiener", "--quiet"])


# --------------------------------------------------------------------------- planning every path


def test_a_psf_figure_never_replaces_an_input_even_with_overwrite(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    _image(folder / "x.png", 1), _image(folder / "x.psf.png", 2)
    before = _files(folder)
    # Outputs as TIFF beside the inputs: x.tif's figure would be in/x.psf.png, an input photo.
    assert _deblur(folder, "-o", folder, "--format", "tiff", "--explain", "--overwrite") == 2
    err = capsys.readouterr().err
    assert f"{folder / 'x.psf.png'}: is an input, and the PSF figure of" in err and "Traceback" not in err
    assert _files(folder) == before  # nothing written, not even the first output


def test_a_change_map_never_replaces_an_input(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _image(folder / "a.png", 1), _image(folder / "a.change.png", 2)
    with pytest.raises(UserError, match="a.change.png: is an input"):
        plan_run([folder], folder, RECORD, fmt="tiff", change_map=True, overwrite=True)


def test_a_psf_figure_never_replaces_a_deblurred_image_of_the_same_name(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    # An earlier run deblurred a photo that happened to be named x.psf.png into out/.
    write_image(out / "x.psf.png", np.full((8, 8, 3), 0.5, np.float32), provenance=RECORD)
    before = _files(out)
    source = _image(tmp_path / "in" / "x.png")
    with pytest.raises(UserError, match="is meddeblur's deblur output, not a psf plot output"):
        plan_run([source], out, RECORD, explain=True)
    assert _deblur(source, "-o", out, "--explain") == 2
    assert "x.psf.png: exists and is meddeblur's deblur output" in capsys.readouterr().err
    assert _files(out) == before
    plan_run([source], out, RECORD, explain=True, overwrite=True)  # said in so many words: it may go


def test_two_inputs_whose_side_files_collide_are_refused_before_writing(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _image(folder / "x.png", 1), _image(folder / "x.psf.png", 2)  # x.png's figure is x.psf.png's output
    with pytest.raises(UserError, match="both the PSF figure of .*x.png and the output of .*x.psf.png would be written there"):
        plan_run([folder], tmp_path / "out", RECORD, explain=True)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_folder_in_the_way_of_a_side_file_stops_the_run_before_the_output_is_written(tmp_path: Path, capsys) -> None:
    source, out = _image(tmp_path / "in" / "x.png"), tmp_path / "out"
    (out / "x.psf.png").mkdir(parents=True)
    assert _deblur(source, "-o", out, "--explain") == 2
    assert "x.psf.png: is a folder in the way" in capsys.readouterr().err
    assert not (out / "x.png").exists()
    (out / "x.psf.png").rmdir()
    (out / "x.change.png").mkdir()
    with pytest.raises(UserError, match="x.change.png: is a folder in the way"):
        plan_run([source], out, RECORD, change_map=True)


def test_a_bmp_sidecar_is_planned_like_its_image(tmp_path: Path) -> None:
    source, out = _image(tmp_path / "in" / "x.png"), tmp_path / "out"
    out.mkdir()
    (out / "x.bmp.json").write_text('{"mine": true}\n')
    with pytest.raises(UserError, match="x.bmp.json: exists and was not written by meddeblur"):
        plan_run([source], out, RECORD, fmt="bmp")


def test_the_log_is_planned_with_the_outputs(tmp_path: Path, capsys) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    _image(folder / "a.png", 1), _image(folder / "b.png", 2)
    assert _deblur(folder, "-o", out, "--log", out / "b.png") == 2
    assert f"{out / 'b.png'}: --log is where this run writes b.png" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(UserError, match="`log` is an input"):
        plan_run([folder], out, RECORD, log=folder / "a.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are a POSIX feature")
def test_a_log_on_a_named_pipe_is_refused_at_once(tmp_path: Path, capsys) -> None:
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    source = _image(tmp_path / "in" / "x.png")
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(_deblur(source, "-o", tmp_path / "out", "--log", fifo)), daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # unblock the hung open so that the suite goes on, then fail
        with open(fifo, "rb"):
            pass
        pytest.fail("--log on a named pipe blocked the run")
    assert codes == [2] and "--log is not a regular file (a named pipe or device)" in capsys.readouterr().err


def test_a_log_whose_last_line_was_cut_gets_the_rerun_on_a_new_line(tmp_path: Path, capsys) -> None:
    source, out, log = _image(tmp_path / "in" / "x.png"), tmp_path / "out", tmp_path / "run.jsonl"
    assert _deblur(source, "-o", out, "--log", log) == 0
    whole = log.read_bytes()
    log.write_bytes(whole + whole[: len(whole) // 2])  # an interrupted copy of a second line
    assert check_run_log(log) is True
    capsys.readouterr()
    assert _deblur(source, "-o", out, "--log", log) == 0
    assert "its last line had been cut" in capsys.readouterr().out
    lines = log.read_text().splitlines()
    assert len(lines) == 3 and lines[1] == whole[: len(whole) // 2].decode()
    assert json.loads(lines[2])["status"] == "skipped"


# --------------------------------------------------------------------------- proving "already done"


def _pixels_of(png: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_outputs_and_the_log_name_the_input_they_were_made_from(tmp_path: Path) -> None:
    source, out, log = _image(tmp_path / "in" / "x.png"), tmp_path / "out", tmp_path / "run.jsonl"
    assert _deblur(source, "-o", out, "--log", log, "--change-map", "--explain") == 0
    stamp = read_provenance(out / "x.png")["source"]
    assert stamp["sha256"] == _sha256(source) and stamp["size"] == source.stat().st_size and stamp["mtime"].endswith("Z")
    assert stamp["name"] == "x.png" and read_provenance(out / "x.png")["time"].endswith("+00:00")
    for side in ("x.change.png", "x.psf.png"):  # the side files carry it too: they are proven the same way
        assert read_provenance(out / side)["source"] == stamp
    assert _deblur(source, "-o", out, "--log", log, "--change-map", "--explain") == 0
    written, skipped = (json.loads(line) for line in log.read_text().splitlines())
    assert list(written) == list(LOG_FIELDS)
    assert written["status"] == "written" and skipped["status"] == "skipped"
    for line in (written, skipped):
        assert line["source"] == stamp and line["output_sha256"] == _sha256(out / "x.png")
        assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0)  # when, in UTC


def test_an_input_replaced_by_another_photo_of_the_same_name_is_redone(tmp_path: Path, capsys) -> None:
    source, out = _image(tmp_path / "in" / "x.png", 1), tmp_path / "out"
    assert _deblur(source, "-o", out) == 0
    stale = (out / "x.png").read_bytes()
    _image(source, 2)  # same name, same size, another photo
    capsys.readouterr()
    assert _deblur(source, "-o", out) == 0
    assert "1 written" in capsys.readouterr().out
    assert (out / "x.png").read_bytes() != stale
    assert read_provenance(out / "x.png")["source"]["sha256"] == _sha256(source)


def test_an_output_cut_short_is_redone(tmp_path: Path, capsys) -> None:
    source, out = _image(tmp_path / "in" / "x.png", size=(96, 96)), tmp_path / "out"
    assert _deblur(source, "-o", out) == 0
    whole = (out / "x.png").read_bytes()
    (out / "x.png").write_bytes(whole[: len(whole) // 2])  # its provenance chunk comes before the pixels: still readable
    assert read_provenance(out / "x.png") is not None
    (task,) = plan_run([source], out, read_provenance(out / "x.png")).tasks
    assert "x.png: damaged (it does not decode whole)" in (task.note or "")
    capsys.readouterr()
    assert _deblur(source, "-o", out) == 0
    assert "1 written" in capsys.readouterr().out
    np.testing.assert_array_equal(read_image(out / "x.png").rgb, _pixels_of(whole))


def test_an_output_copied_over_another_is_redone(tmp_path: Path, capsys) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    _image(folder / "a.png", 1), _image(folder / "b.png", 2)
    assert _deblur(folder, "-o", out) == 0
    b_made = read_image(out / "b.png").rgb
    shutil.copyfile(out / "a.png", out / "b.png")  # a's pixels under b's name, with a's record
    capsys.readouterr()
    assert _deblur(folder, "-o", out) == 0
    said = capsys.readouterr().out
    assert "1 written" in said and "1 skipped (1 already done)" in said
    np.testing.assert_array_equal(read_image(out / "b.png").rgb, b_made)


def test_a_damaged_change_map_is_redone_with_its_output(tmp_path: Path, capsys) -> None:
    source, out = _image(tmp_path / "in" / "x.png"), tmp_path / "out"
    assert _deblur(source, "-o", out, "--change-map") == 0
    heat = (out / "x.change.png").read_bytes()
    (out / "x.change.png").write_bytes(heat[: len(heat) // 2])
    capsys.readouterr()
    assert _deblur(source, "-o", out, "--change-map") == 0
    assert "1 written" in capsys.readouterr().out
    np.testing.assert_array_equal(read_image(out / "x.change.png").rgb, _pixels_of(heat))


def test_info_says_which_input_an_output_was_made_from_and_when(tmp_path: Path, capsys) -> None:
    source, out = _image(tmp_path / "in" / "x.png"), tmp_path / "out"
    assert _deblur(source, "-o", out) == 0
    capsys.readouterr()
    assert main(["info", str(out / "x.png")]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    record = read_provenance(out / "x.png")
    assert line == (f"  made from: x.png, {source.stat().st_size:,} bytes, modified {record['source']['mtime']}, "
                    f"sha256 {_sha256(source)}; made {record['time']}")
