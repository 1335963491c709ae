"""``method="psf"`` through runs: the restoration record in provenance and the run log, ``--explain``'s PSF figure
(written once, kept on a rerun), ``info``, the CLI's refusals, the ModelSpec that carries it to workers, never batched.

The blur estimators are the conftest's forced ones (``none``, ``gauss``) and an untrained one: fast and predictable.
Images of 160×180 px are estimated; a 100-px one is too small and must take the blind route, saying why.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meddeblur.cli import main
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.runs.plan import Task
from meddeblur.runs.archive import deblur_archive
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.runs.log import LOG_FIELDS
from meddeblur.runs.jobs import Settings, deblur_tasks
from meddeblur.runs.workers import ModelSpec
from meddeblur.io.decode import read_image
from meddeblur.io.ownership import read_provenance
from meddeblur.models import weights_id
from meddeblur.psf import load_psf


def _save(path: Path, height: int, width: int, seed: int = 1) -> np.ndarray:
    image = (synthetic_dermoscopy(height, width, seed=seed) * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return image


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """``in/big.png`` (160×180, estimated) and ``in/small.png`` (100×120, too small to estimate)."""
    _save(tmp_path / "in" / "big.png", 160, 180)
    _save(tmp_path / "in" / "small.png", 100, 120, seed=2)
    return tmp_path / "in"


def _log(path: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(list(line) == list(LOG_FIELDS) for line in lines)
    return {Path(line["input"]).name: line for line in lines}


def test_provenance_and_log_carry_the_restoration_record(inputs: Path, tmp_path: Path, estimators, one_thread) -> None:
    spec = ModelSpec(device="cpu", method="psf", estimator=str(estimators["gauss"]))
    report = deblur_archive([inputs], tmp_path / "out", spec, log=tmp_path / "run.jsonl", progress=False)
    assert report.exit_code == 0 and len(report.written) == 2
    assert LOG_FIELDS.index("restoration") == LOG_FIELDS.index("change_map") + 1
    logged = _log(tmp_path / "run.jsonl")

    big = read_provenance(tmp_path / "out" / "big.png")
    assert big["parameters"]["method"] == "psf" and big["parameters"]["estimator_id"] == weights_id(estimators["gauss"])
    record = big["restoration"]
    assert record["psf"]["source"] == "gauss:sigma=1" and record["psf"]["confidence"] > 0.99
    assert load_psf(record["psf"]["source"]).digest == record["psf"]["digest"]  # the record rebuilds the PSF exactly
    assert record["result"] in ("restored", "blind") and {"ratio", "limit", "passed"} <= set(record["consistency"])
    assert logged["big.png"]["restoration"] == record

    small = read_provenance(tmp_path / "out" / "small.png")["restoration"]
    assert small["result"] == "blind" and "smaller than 128 px" in small["reason"] and "psf" not in small
    assert logged["small.png"]["restoration"] == small
    assert logged["small.png"]["reason"] == f"fell back to the blind network: {small['reason']}"
    assert f"small.png: fell back to the blind network: {small['reason']}" in report.summary(tmp_path / "out")
    # The fallback really is the blind network's output.
    source = read_image(inputs / "small.png").rgb
    expected = np.round(np.clip(Deblurrer.load(device="cpu").deblur_rgb(source), 0, 1) * 255)
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "out" / "small.png").rgb * 255), expected)


def test_no_blur_found_leaves_the_pixels_as_they_are(inputs: Path, tmp_path: Path, estimators, one_thread) -> None:
    from meddeblur.runs import deblur_files

    written = deblur_files(Deblurrer.load(device="cpu").with_estimated_psf(estimators["none"]), [inputs / "big.png"], tmp_path / "out")
    record = read_provenance(written[0])["restoration"]
    assert (record["result"], record["reason"], record["psf"]["family"]) == ("unchanged", "no blur found", "none")
    np.testing.assert_array_equal(read_image(written[0]).rgb, read_image(inputs / "big.png").rgb)


def test_explain_writes_the_psf_figure_and_a_rerun_keeps_it(inputs: Path, tmp_path: Path, estimators, one_thread, capsys) -> None:
    out = tmp_path / "out"
    args = ["deblur", str(inputs), "-o", str(out), "--method", "psf", "--estimator", str(estimators["gauss"]), "--explain", "--quiet"]
    assert main(args) == 0
    figure = out / "big.psf.png"
    output = read_provenance(out / "big.png")
    drawn = read_provenance(figure)
    assert drawn["operation"] == "psf plot" and drawn["restoration"] == output["restoration"]
    assert drawn["drawn_psf"]["digest"] == load_psf("gauss:sigma=1").digest
    assert Image.open(figure).size[0] > 300  # a real figure: kernel and MTF side by side
    assert not (out / "small.psf.png").exists()  # too small to estimate: no PSF to draw

    stamps = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    capsys.readouterr()
    assert main(args) == 0
    assert "2 skipped (2 already done)" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == stamps  # nothing rewritten

    figure.unlink()  # a missing figure is redone, with its output; the small image still has none to draw
    assert main(args) == 0
    assert "1 written" in capsys.readouterr().out and figure.is_file()


def test_a_single_image_run_prints_the_estimate_and_the_result(inputs: Path, tmp_path: Path, estimators, one_thread, capsys) -> None:
    assert main(["deblur", str(inputs / "big.png"), "-o", str(tmp_path / "out"), "--method", "psf", "--estimator",
                 str(estimators["none"]), "--quiet"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"{inputs / 'big.png'}: estimated PSF none (confidence 1.00): left unchanged (no blur found)"


def test_explain_draws_a_known_psf_too(inputs: Path, tmp_path: Path, one_thread) -> None:
    assert main(["deblur", str(inputs / "big.png"), "-o", str(tmp_path / "out"), "--psf", "gauss:sigma=1.2", "--method", "wiener",
                 "--explain", "--quiet"]) == 0
    drawn = read_provenance(tmp_path / "out" / "big.psf.png")
    assert drawn["drawn_psf"]["source"] == "gauss:sigma=1.2" and "restoration" not in drawn


def test_info_prints_the_restoration_in_a_few_lines(inputs: Path, tmp_path: Path, estimators, one_thread, capsys) -> None:
    spec = ModelSpec(device="cpu", method="psf", estimator=str(estimators["gauss"]))
    deblur_archive([inputs], tmp_path / "out", spec, progress=False)
    deblur_archive([inputs / "big.png"], tmp_path / "known", ModelSpec(psf="gauss:sigma=1.2", method="rl"), progress=False)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "out" / "big.png"), str(tmp_path / "out" / "small.png"), str(tmp_path / "known" / "big.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    made_from = [line for line in lines if line.startswith("  made from: ")]
    assert len(made_from) == 3 and f"sha256 {read_provenance(tmp_path / 'out' / 'big.png')['source']['sha256']}; made " in made_from[0]
    lines = [line for line in lines if line not in made_from]
    record = read_provenance(tmp_path / "out" / "big.png")["restoration"]
    assert lines[1] == "  estimated PSF: gauss:sigma=1 (7×7 px, MTF50 0.188 cycles/px, digest fe3954e5c91f), family gauss, confidence 1.00"
    assert lines[2].startswith(f"  consistency: residual ratio {record['consistency']['ratio']:.2f} (limit 4.0): ")
    assert lines[3] == f"  result: {record['result']}: {record['reason']}"
    assert lines[5] == "  result: blind: the image is smaller than 128 px: too small to estimate its blur"
    assert lines[6].startswith(f"{tmp_path / 'known' / 'big.png'}: ") and "psf gauss:sigma=1.2 (" in lines[6]
    assert len(lines) == 7  # a known PSF: its one line, as before


@pytest.mark.parametrize("extra, needle", [
    (("--method", "psf", "--psf", "gauss:sigma=1"), "--method psf estimates the PSF from each image; drop --psf gauss:sigma=1"),
    (("--method", "psf", "--engine", "onnx"), "--method psf: the ONNX engine cannot restore with a PSF"),
    (("--estimator", "weights.safetensors"), "--estimator weights.safetensors: blur-estimator weights are used by --method psf "
                                             "only; add --method psf or drop --estimator"),
    (("--explain",), "--explain: draws the PSF each image was restored with, and the blind network uses none; add --method psf"),
    (("--method", "psf", "--estimator", "missing.safetensors"), "missing.safetensors: no blur-estimator weights there"),
])
def test_refusals_are_one_line_and_exit_2(tmp_path: Path, capsys, extra: tuple[str, ...], needle: str) -> None:
    _save(tmp_path / "a.png", 40, 40)
    assert main(["deblur", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *extra]) == 2
    captured = capsys.readouterr()
    assert needle in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert not (tmp_path / "out").exists() and captured.out == ""


def test_the_model_spec_carries_the_method_to_other_processes(inputs: Path, tmp_path: Path, estimators) -> None:
    spec = ModelSpec(device="cpu", method="psf", estimator=str(estimators["gauss"]))
    copy = pickle.loads(pickle.dumps(spec))  # how it reaches worker processes and Ray actors
    assert copy == spec and copy.estimates_psf
    loaded = copy.load()
    assert loaded.estimates_psf and loaded.provenance == spec.load().provenance
    # Two worker processes give what one process gives, the records included.
    here = deblur_archive([inputs], tmp_path / "here", spec, progress=False, workers=1)
    there = deblur_archive([inputs], tmp_path / "there", spec, progress=False, workers=2)
    assert len(here.written) == len(there.written) == 2
    for name in ("big.png", "small.png"):
        here_record, there_record = (read_provenance(tmp_path / where / name) for where in ("here", "there"))
        assert here_record.pop("time") and there_record.pop("time")  # when each was made: all else is equal
        assert here_record == there_record
        np.testing.assert_array_equal(read_image(tmp_path / "here" / name).rgb, read_image(tmp_path / "there" / name).rgb)


class _Estimating:
    """An engine that estimates each image's PSF on a CUDA device (pretended): batching it would call the engine itself."""

    provenance = {"tool": "meddeblur", "operation": "deblur", "parameters": {}}
    tile, overlap, size_multiple, psf, estimates_psf = 0, 0, 16, None, True
    device = torch.device("cuda")

    def __call__(self, batch):
        raise AssertionError("images of an estimated PSF were batched together")

    def restore_rgb(self, rgb, before_tile=None):
        return rgb.astype(np.float32), {"result": "unchanged", "reason": "no blur found"}


def test_images_are_never_batched_when_the_psf_is_estimated(tmp_path: Path) -> None:
    tasks = []
    for i in range(3):
        _save(tmp_path / f"{i}.png", 40, 48, seed=i)
        tasks.append(Task(tmp_path / f"{i}.png", tmp_path / "out" / f"{i}.png"))
    outcomes = list(deblur_tasks(_Estimating(), tasks, Settings(batch=8)))
    assert [outcome.restoration["result"] for outcome in outcomes] == ["unchanged"] * 3
    assert read_provenance(tmp_path / "out" / "0.png")["restoration"] == {"result": "unchanged", "reason": "no blur found"}
