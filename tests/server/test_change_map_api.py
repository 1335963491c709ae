"""``POST /v1/deblur?change_map=true``: the image and the map of what deblurring changed, as the CLI's --change-map draws it."""

from __future__ import annotations

import base64
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

from test_server import weights  # noqa: F401  (the tiny NAFNet that visibly changes images)

from meddeblur.cli import main
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.io.decode import read_image
from meddeblur.io.ownership import read_provenance
from meddeblur.server import ServerSettings, create_app


def test_the_api_answers_the_image_and_the_change_map_the_cli_writes(weights: Path, tmp_path: Path, one_thread) -> None:
    image = (synthetic_dermoscopy(50, 70, seed=1) * 255).round().astype(np.uint8)
    upload = tmp_path / "in" / "lesion.png"
    upload.parent.mkdir()
    Image.fromarray(image).save(upload)
    app = create_app(ServerSettings(model=str(weights), device="cpu"))
    with TestClient(app) as client:
        plain = client.post("/v1/deblur", files={"file": ("lesion.png", upload.read_bytes(), "image/png")})
        answer = client.post("/v1/deblur?change_map=true", files={"file": ("lesion.png", upload.read_bytes(), "image/png")})
    assert plain.status_code == answer.status_code == 200
    assert answer.headers["content-type"] == "application/json" and answer.headers["x-model-id"] == plain.headers["x-model-id"]
    body = answer.json()
    assert base64.b64decode(body["image"]) == plain.content  # the same image as without the map
    assert (body["filename"], body["media_type"], body["width"], body["height"], body["bit_depth"]) == \
        ("lesion_deblurred.png", "image/png", 70, 50, 8)
    heat_map = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["change_map"]))).convert("RGB"))
    assert heat_map.shape == (128, 70 + 70, 3)

    # The CLI's --change-map on the same file: the same map, the same figures.
    assert main(["deblur", str(upload), "-o", str(tmp_path / "out"), "--model", str(weights), "--device", "cpu", "--change-map",
                 "--quiet"]) == 0
    written = tmp_path / "out" / "lesion.change.png"
    np.testing.assert_array_equal(heat_map, (read_image(written).rgb * 255).round().astype(np.uint8))
    assert body["change"] == read_provenance(tmp_path / "out" / "lesion.png")["change"]
    assert body["change"]["max"] > 0
