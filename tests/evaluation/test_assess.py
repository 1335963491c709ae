"""``meddeblur assess``: the blur score orders blur correctly, the CSV and flags, bad inputs."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from meddeblur.cli import main
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.degradation.kernels import gaussian_kernel
from meddeblur.degradation.resampling import resize_area
from meddeblur.evaluation.assess import ANALYSIS_SIDE, DEFAULT_THRESHOLD, blur_score
from meddeblur.io.encode import write_image
from meddeblur.physics import blur


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """A synthetic dermoscopy-like image at the analysis size (576×768), (H, W, 3) float32."""
    return synthetic_dermoscopy(ANALYSIS_SIDE * 3 // 4, ANALYSIS_SIDE, seed=3)


def _blurred(rgb: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return rgb
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    return blur(x, gaussian_kernel(sigma))[0].numpy().transpose(1, 2, 0)


def test_more_blur_scores_higher(scene: np.ndarray) -> None:
    scores = [blur_score(_blurred(scene, sigma)) for sigma in (0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    assert 0 < scores[0] and scores[-1] < 1


def test_score_ignores_contrast_and_brightness(scene: np.ndarray) -> None:
    assert blur_score(0.5 * scene + 0.25) == pytest.approx(blur_score(scene), rel=1e-4)


def test_score_is_taken_at_the_analysis_scale(scene: np.ndarray) -> None:
    """The file's pixel count does not decide: a large image scores as its area-downscaled copy."""
    big = np.kron(scene, np.ones((2, 2, 1), np.float32))  # 1152×1536, each pixel a 2×2 block
    small = resize_area(big, (ANALYSIS_SIDE * 3 // 4, ANALYSIS_SIDE))
    assert blur_score(big) == pytest.approx(blur_score(small), abs=1e-6)


def test_featureless_image_is_maximally_blurred() -> None:
    assert blur_score(np.full((64, 64, 3), 0.3, np.float32)) == 1.0


def test_cli_writes_csv_with_flags(scene: np.ndarray, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    write_image(folder / "sharp.png", scene)
    write_image(folder / "soft.png", _blurred(scene, 3.0))
    write_image(folder / "grey16.tif", _blurred(scene, 3.0), grayscale=True, bit_depth=16)
    table = tmp_path / "triage.csv"

    assert main(["assess", str(folder), "--csv", str(table)]) == 0

    with open(table, newline="", encoding="utf-8") as fh:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(fh)}
    assert list(rows["sharp.png"]) == ["path", "blur_score", "flag", "width", "height", "note"]
    assert rows["sharp.png"]["flag"] == "ok" and rows["soft.png"]["flag"] == "needs attention"
    assert rows["grey16.tif"]["flag"] == "needs attention"
    assert float(rows["sharp.png"]["blur_score"]) < DEFAULT_THRESHOLD < float(rows["soft.png"]["blur_score"])
    assert (rows["sharp.png"]["width"], rows["sharp.png"]["height"]) == ("768", "576")
    out = capsys.readouterr().out
    assert "3 image(s): 2 need attention" in out and str(table) in out

    # A threshold above every score flags nothing.
    assert main(["assess", str(folder), "--threshold", "0.99"]) == 0
    assert "0 need attention" in capsys.readouterr().out


@pytest.mark.parametrize("threshold", ["0", "1.5", "nan"])
def test_threshold_outside_0_1_is_refused(threshold: str, scene: np.ndarray, tmp_path: Path, capfd) -> None:
    image = write_image(tmp_path / "a.png", scene)
    assert main(["assess", str(image), "--threshold", threshold]) == 2
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and "--threshold" in err


def test_unreadable_file_stops_or_is_listed_with_skip_bad(scene: np.ndarray, tmp_path: Path, capfd) -> None:
    folder = tmp_path / "in"
    write_image(folder / "a.png", scene)
    bad = folder / "b.png"
    bad.write_bytes(b"GIF89a" + bytes(40))
    table = tmp_path / "t.csv"

    assert main(["assess", str(folder), "--csv", str(table)]) == 2
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and str(bad) in err and "--skip-bad" in err
    assert not table.exists()

    assert main(["assess", str(folder), "--csv", str(table), "--skip-bad"]) == 0
    with open(table, newline="", encoding="utf-8") as fh:
        rows = {Path(row["path"]).name: row for row in csv.DictReader(fh)}
    assert rows["b.png"]["flag"] == "unreadable" and rows["b.png"]["blur_score"] == "" and "GIF" in rows["b.png"]["note"]
    assert rows["a.png"]["flag"] == "ok"


def test_csv_never_overwrites_an_input(scene: np.ndarray, tmp_path: Path, capfd) -> None:
    image = write_image(tmp_path / "a.png", scene)
    before = image.read_bytes()
    assert main(["assess", str(image), "--csv", str(image)]) == 2
    assert "overwrite an input" in capfd.readouterr().err
    assert image.read_bytes() == before


def test_auc_benchmark_runs_and_resummarises(scene: np.ndarray, tmp_path: Path) -> None:
    module = importlib.import_module("benchmarks.assess_auc")
    images = tmp_path / "images"
    for i in range(3):
        write_image(images / f"{i}.png", synthetic_dermoscopy(96, 128, seed=i))
    assert module.main(["--images", str(images), "--sigmas", "1.5", "--out", str(tmp_path / "r")]) == 0
    result = json.loads((tmp_path / "r" / "assess_auc.json").read_text())
    assert result["images"] == 3 and result["paired_higher"]["1.5"] == 1.0 and 0.5 < result["auc"]["1.5"] <= 1.0
    assert len(result["per_image"]["sharp"]) == 3 and "best_threshold" in result
    assert module.main(["--from-json", str(tmp_path / "r" / "assess_auc.json"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "assess_auc.md").read_text() == (tmp_path / "r" / "assess_auc.md").read_text()


def test_auc_and_threshold_choice() -> None:
    module = importlib.import_module("benchmarks.assess_auc")
    assert module.auc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert module.auc([0.1, 0.3], [0.2, 0.4]) == 0.75
    assert module.auc([0.5], [0.5]) == 0.5
    threshold, accuracy = module.best_threshold([0.1, 0.2, 0.35], [0.3, 0.5, 0.6])
    assert accuracy == pytest.approx(5 / 6) and 0.2 < threshold < 0.5


def test_recursive_scores_the_images_of_sub_folders_too(scene: np.ndarray, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    write_image(folder / "a.png", scene)
    write_image(folder / "visit" / "b.png", _blurred(scene, 3.0))
    write_image(folder / "visit" / "again" / "c.png", scene)
    assert main(["assess", str(folder)]) == 0
    assert "1 image(s)" in capsys.readouterr().out
    assert main(["assess", str(folder), "--recursive"]) == 0
    out = capsys.readouterr().out
    assert "3 image(s): 1 need attention" in out and str(folder / "visit" / "again" / "c.png") in out
