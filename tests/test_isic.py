"""The pipeline on real dermoscopic photographs from ../shared (CC0 ISIC images).

The images are read in place and never copied into the repository. Where the
folder is absent these tests skip with the reason; under CI (CI=true), which has
it, a missing folder is a failure instead, so the tests cannot silently vanish.
"""

import json

import cv2
import numpy as np
from conftest import ISIC

from meddeblur.cli import main
from meddeblur.io.decode import read_image
from meddeblur.io.encode import write_image


def test_metadata_matches_decoded_images(isic_images):
    import csv

    rows = {r["image"]: r for r in csv.DictReader(open(ISIC / "metadata.csv"))}
    assert len(isic_images) == 557
    for path in isic_images[:: len(isic_images) // 10]:
        image = read_image(path)
        assert image.format == "JPEG" and image.bit_depth == 8 and not image.grayscale
        assert image.rgb.shape[:2] == (int(rows[path.name]["height"]), int(rows[path.name]["width"]))


def test_train_evaluate_deblur_on_real_photographs(isic_images, tmp_path):
    data = tmp_path / "pairs"
    for path in isic_images[:9]:
        # OpenCV's float arithmetic can land a hair above 1, which write_image refuses rather than clips.
        sharp = np.clip(cv2.resize(read_image(path).rgb, (96, 72), interpolation=cv2.INTER_AREA), 0.0, 1.0)
        blurred = np.clip(cv2.GaussianBlur(sharp, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT), 0.0, 1.0)
        write_image(data / "sharp" / f"{path.stem}_sharp.png", sharp)
        write_image(data / "blurred" / f"{path.stem}_blurred.png", blurred)
    run = tmp_path / "run"
    assert main(["train", "--recipe", "reference", "--data", str(data), "--out", str(run), "--width", "4", "--size", "64", "--epochs", "2", "--batch", "4"]) == 0
    assert main(["evaluate", "--model", str(run), "--native", "--device", "cpu"]) == 0
    report = json.loads((run / "eval-test" / "metrics.json").read_text())
    assert report["protocol"] == "native resolution" and report["images"] == 1
    blurred_input = isic_images[20]
    out = tmp_path / "out"
    assert main(["deblur", str(blurred_input), "-o", str(out), "--model", str(run), "--device", "cpu"]) == 0
    restored = read_image(out / blurred_input.name)
    assert restored.rgb.shape == read_image(blurred_input).rgb.shape and restored.format == "JPEG"
    assert np.isfinite(restored.rgb).all()
