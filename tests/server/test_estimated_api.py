"""``POST /v1/deblur?method=psf``: the PSF estimated from the upload, what was done in ``X-Restoration`` and the image's
provenance, ``?explain=true`` for the PSF's figure; the same pixels and record as ``meddeblur deblur --method psf``."""

from __future__ import annotations

import base64
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

from meddeblur.cli import main
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.io.decode import read_image
from meddeblur.io.ownership import read_provenance
from meddeblur.psf import load_psf
from meddeblur.server import ServerSettings, create_app


def _png(height: int, width: int, seed: int = 1) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((synthetic_dermoscopy(height, width, seed=seed) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(estimators) -> TestClient:
    with TestClient(create_app(ServerSettings(device="cpu", estimator=str(estimators["gauss"])))) as test_client:
        yield test_client


def _post(client: TestClient, data: bytes, **params) -> object:
    return client.post("/v1/deblur", files={"file": ("lesion.png", data, "image/png")}, params=params)


def test_method_psf_answers_the_record_in_a_header_and_the_provenance(client, estimators, tmp_path: Path, one_thread) -> None:
    upload = _png(160, 180)
    answer = _post(client, upload, method="psf")
    assert answer.status_code == 200, answer.text
    record = json.loads(answer.headers["x-restoration"])
    assert record["psf"]["source"] == "gauss:sigma=1" and record["result"] in ("restored", "blind")
    assert {"ratio", "limit", "passed"} <= set(record["consistency"])
    (tmp_path / "answer.png").write_bytes(answer.content)
    provenance = read_provenance(tmp_path / "answer.png")
    assert provenance["restoration"] == record and provenance["parameters"]["method"] == "psf"
    assert answer.headers["x-model-id"] == provenance["model_id"]

    # The CLI on the same file: the same pixels and the same record.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "lesion.png").write_bytes(upload)
    assert main(["deblur", str(tmp_path / "in" / "lesion.png"), "-o", str(tmp_path / "out"), "--method", "psf", "--estimator",
                 str(estimators["gauss"]), "--device", "cpu", "--quiet"]) == 0
    assert read_provenance(tmp_path / "out" / "lesion.png")["restoration"] == record
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "lesion.png").rgb, read_image(tmp_path / "answer.png").rgb)

    # The blind network, as before: no record.
    plain = _post(client, upload)
    assert plain.status_code == 200 and "x-restoration" not in plain.headers


def test_explain_answers_json_with_the_psf_figure(client, one_thread) -> None:
    answer = _post(client, _png(160, 180), method="psf", explain="true")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["restoration"] == json.loads(answer.headers["x-restoration"]) and "change_map" not in body
    figure = base64.b64decode(body["psf_image"])
    assert body["psf_image_media_type"] == "image/png" and Image.open(io.BytesIO(figure)).size[0] > 300
    drawn = json.loads(Image.open(io.BytesIO(figure)).info["meddeblur"])
    assert drawn["operation"] == "psf plot" and drawn["drawn_psf"]["digest"] == load_psf("gauss:sigma=1").digest


def test_a_small_upload_goes_to_the_blind_network_and_says_why(client, one_thread) -> None:
    answer = _post(client, _png(100, 120), method="psf", explain="true", change_map="true")
    assert answer.status_code == 200
    body = answer.json()
    assert body["restoration"]["result"] == "blind" and "smaller than 128 px" in body["restoration"]["reason"]
    assert body["psf_image"] is None and body["change"]["max"] >= 0 and body["change_map"]  # nothing to draw; the map is there
    # The header and model_id keep the run's configuration; made_by says which weights made these pixels: the blind ones.
    from meddeblur.models import DEFAULT_WEIGHTS, weights_id

    assert body["made_by"] == {"model_id": weights_id(DEFAULT_WEIGHTS), "model": "the blind network"}
    assert answer.headers["x-model-id"] == body["model_id"] != body["made_by"]["model_id"]


@pytest.mark.parametrize("params, needle", [({"method": "magic"}, "method=magic: choose one of network"),
                                            ({"explain": "true"}, "add method=psf")])
def test_bad_method_options_are_400_one_line(client, params: dict, needle: str) -> None:
    answer = _post(client, _png(40, 40), **params)
    assert answer.status_code == 400 and needle in answer.json()["error"]


def test_a_server_that_cannot_estimate_says_so(tmp_path: Path) -> None:
    from meddeblur.models import ModelConfig, build_model, save_weights

    weights = save_weights(build_model(ModelConfig(arch="nafnet", width=8)), ModelConfig(arch="nafnet", width=8), tmp_path / "own.safetensors")
    with TestClient(create_app(ServerSettings(model=str(weights), device="cpu"))) as own:
        answer = _post(own, _png(40, 40), method="psf")
    assert answer.status_code == 400 and "method=psf: this server cannot estimate the PSF" in answer.json()["error"]
    with pytest.raises(Exception, match="estimator=.*no such file"):
        ServerSettings(estimator=str(tmp_path / "missing.safetensors"))
