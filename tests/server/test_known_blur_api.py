"""A known blur over HTTP: ``serve --psf`` (a default PSF, e.g. a calibrated ``device.psf.json``), the ``psf`` field of
``POST /v1/deblur`` (a spec; a kernel file only with the API key) and every method of the registry; refusals in one
line; ``change_levels=true`` (the change of every pixel and a colour scale fitted to it, for the page)."""

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

from test_server import API_KEY, weights  # noqa: F401  (the tiny NAFNet that visibly changes images)

from meddeblur.cli import main
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.inference.change_map import change_between
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.decode import read_image
from meddeblur.io.ownership import read_provenance
from meddeblur.models import DEFAULT_WEIGHTS, PSF_WEIGHTS, weights_id
from meddeblur.psf.kernel import load_psf, psf_from_array
from meddeblur.restore import registry
from meddeblur.server import ServerSettings, create_app

DEVICE_PSF = "gauss:sigma=1.2"  # what the "calibrated" device.psf.json holds


def _image(height: int = 50, width: int = 70, seed: int = 1) -> np.ndarray:
    return (synthetic_dermoscopy(height, width, seed=seed) * 255).round().astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(client: TestClient, image: np.ndarray | None = None, kernel: tuple | None = None, data: dict | None = None,
          headers: dict | None = None, **params):
    files = {"file": ("lesion.png", _png(_image() if image is None else image), "image/png")}
    if kernel is not None:
        files["psf"] = kernel
    return client.post("/v1/deblur", files=files, data=data, params=params, headers=headers)


def _pixels(response) -> np.ndarray:
    body = response.content if response.headers["content-type"] != "application/json" else base64.b64decode(response.json()["image"])
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body  # the project's error shape, one line
    return body["error"]


@pytest.fixture(scope="module")
def device_psf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibrated PSF file as ``meddeblur calibrate`` writes it, in a folder whose name must never reach a client."""
    return load_psf(DEVICE_PSF).save_json(tmp_path_factory.mktemp("clinic-secret-folder") / "device.psf.json")


@pytest.fixture(scope="module")
def shipped(device_psf: Path) -> TestClient:
    """The shipped models, started with ``--psf device.psf.json``."""
    with TestClient(create_app(ServerSettings(device="cpu", psf=str(device_psf)))) as client:
        yield client


@pytest.fixture(scope="module")
def tiny(weights: Path) -> TestClient:  # noqa: F811
    """A blind model of the clinic's own, no default PSF, no API key."""
    with TestClient(create_app(ServerSettings(model=str(weights), device="cpu"))) as client:
        yield client


@pytest.fixture(scope="module")
def keyed(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:  # noqa: F811
    key = tmp_path_factory.mktemp("key") / "key.txt"
    key.write_text(API_KEY)
    with TestClient(create_app(ServerSettings(model=str(weights), device="cpu", api_key_file=str(key)))) as client:
        yield client


# --------------------------------------------------------------------------- serve --psf


def test_a_bad_default_psf_stops_serve_in_one_line(run_cli, tmp_path: Path, capsys, weights: Path, one_thread) -> None:  # noqa: F811
    bad = run_cli("serve", "--psf", "gauss:sigma=99", "--port", "1", timeout=600)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "--psf " in bad.stderr and "out of range" in bad.stderr and "Traceback" not in bad.stderr
    assert "Uvicorn running" not in bad.stderr + bad.stdout
    for workers in ("1", "2"):  # several worker processes: checked once, in the parent, before any starts
        assert main(["serve", "--psf", str(tmp_path / "missing.psf.json"), "--workers", workers, "--port", "1"]) == 2
        assert "missing.psf.json: no such PSF file" in capsys.readouterr().err
    # A model of one's own that cannot restore with a PSF by the default method is found at start-up, not per request.
    assert main(["serve", "--psf", "gauss:sigma=1", "--model", str(weights), "--device", "cpu", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--psf gauss:sigma=1: requests that name no method are restored with it by {registry.KNOWN_BLUR_DEFAULT}" in err


def test_the_default_psf_restores_requests_that_name_none(shipped: TestClient, device_psf: Path, tmp_path: Path, one_thread) -> None:
    image = _image()
    answer = _post(shipped, image)
    assert answer.status_code == 200, answer.text
    told = json.loads(answer.headers["x-psf"])
    assert answer.headers["x-method"] == registry.KNOWN_BLUR_DEFAULT
    assert (told["source"], told["from"], told["size"], told["digest"]) == ("device.psf.json", "server default", [9, 9],
                                                                             load_psf(device_psf).digest)
    assert answer.headers["x-model-id"] == weights_id(PSF_WEIGHTS)  # the kernel-conditioned network made it
    assert "clinic-secret-folder" not in json.dumps(dict(answer.headers))
    # The same pixels as the CLI told the same file.
    (tmp_path / "in").mkdir()
    Image.fromarray(image).save(tmp_path / "in" / "lesion.png")
    assert main(["deblur", str(tmp_path / "in" / "lesion.png"), "-o", str(tmp_path / "out"), "--psf", str(device_psf),
                 "--device", "cpu", "--quiet"]) == 0
    np.testing.assert_array_equal(_pixels(answer), np.asarray(Image.open(tmp_path / "out" / "lesion.png").convert("RGB")))
    (tmp_path / "answer.png").write_bytes(answer.content)
    assert read_provenance(tmp_path / "answer.png")["parameters"]["psf"]["digest"] == told["digest"]
    health = shipped.get("/healthz").json()
    assert health["default_psf"]["source"] == "device.psf.json" and health["kernel_uploads"] is False


def test_a_request_says_otherwise(shipped: TestClient, one_thread) -> None:
    blind = _post(shipped, psf="")  # an empty psf: no PSF, the blind network
    assert blind.status_code == 200 and "x-psf" not in blind.headers
    assert blind.headers["x-model-id"] == weights_id(DEFAULT_WEIGHTS) and blind.headers["x-method"] == registry.NETWORK
    spec = _post(shipped, method="wiener", psf="gauss:sigma=2")
    assert spec.status_code == 200 and json.loads(spec.headers["x-psf"])["from"] == "spec"
    assert "x-model-id" not in spec.headers  # Wiener has no weights
    named = _post(shipped, psf="device.psf.json")  # the default, named as the page shows it
    assert named.status_code == 200 and json.loads(named.headers["x-psf"])["from"] == "server default"
    error = _error(_post(shipped, method="wiener", psf=""), 400)
    assert error.startswith("method=wiener restores a known blur and psf is empty") and "(device.psf.json)" in error


@pytest.mark.parametrize("method", list(registry.METHODS))
def test_every_registry_method_is_served(shipped: TestClient, device_psf: Path, method: str, tmp_path: Path, one_thread) -> None:
    image = _image(64, 72, seed=2)
    answer = _post(shipped, image, method=method)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-method"] == method
    if registry.Told.ESTIMATE in registry.get(method).told:  # estimates its own: the default PSF is not used
        assert "x-psf" not in answer.headers and "x-restoration" in answer.headers
        return
    assert json.loads(answer.headers["x-psf"])["source"] == "device.psf.json"
    (tmp_path / "in.png").write_bytes(_png(image))
    source = read_image(tmp_path / "in.png").rgb
    expected = Deblurrer.load(device="cpu").with_psf(load_psf(device_psf), method=method)(source)
    np.testing.assert_array_equal(_pixels(answer), np.round(np.clip(expected, 0, 1) * 255).astype(np.uint8))


# --------------------------------------------------------------------------- the psf field and the methods


def test_psf_and_method_come_from_the_query_or_the_form(tiny: TestClient, tmp_path: Path) -> None:
    by_query = _post(tiny, method="wiener", psf="gauss:sigma=1.6")
    by_form = _post(tiny, data={"method": "rl", "psf": "defocus:radius=2"})
    assert by_query.status_code == by_form.status_code == 200, (by_query.text, by_form.text)
    for answer, method, spec in ((by_query, "wiener", "gauss:sigma=1.6"), (by_form, "rl", "defocus:radius=2")):
        (tmp_path / "a.png").write_bytes(answer.content)
        parameters = read_provenance(tmp_path / "a.png")["parameters"]
        assert parameters["method"] == method and parameters["psf"]["digest"] == load_psf(spec).digest
        assert json.loads(answer.headers["x-psf"])["source"] == spec and answer.headers["x-method"] == method
    conflict = _error(_post(tiny, data={"psf": "gauss:sigma=2"}, psf="gauss:sigma=1"), 400)
    assert conflict.startswith("psf: the query says psf=gauss:sigma=1 and the form psf=gauss:sigma=2")


@pytest.mark.parametrize("params, status, needle", [
    ({"method": "wiener"}, 400, "method=wiener restores a known blur and this server has no default PSF (meddeblur serve --psf)"),
    ({"method": "pnp", "psf": ""}, 400, "method=pnp restores a known blur"),
    ({"method": "psf", "psf": "gauss:sigma=1"}, 400, "psf=gauss:sigma=1: method=psf estimates the PSF from each image"),
    ({"method": "magic"}, 400, "method=magic: choose one of " + "; ".join(f"{n} ({m.summary})" for n, m in registry.METHODS.items())),
    ({"psf": "gauss:sigma=99", "method": "wiener"}, 400, "psf='gauss:sigma=99': gauss:sigma=99 is out of range"),
    ({"psf": "motion:length=101,angle=0", "method": "wiener"}, 422, "is larger than the lesion.png (70×50)"),
    ({"explain": "true", "psf": ""}, 400, "add method=psf (estimate it) or psf=SPEC (a known one)"),
])
def test_what_cannot_be_done_is_refused_in_one_line(tiny: TestClient, params: dict, status: int, needle: str) -> None:
    assert needle in _error(_post(tiny, **params), status)
    assert _post(tiny).status_code == 200  # and the server keeps serving


def test_the_kernel_conditioned_network_on_a_blind_model_of_ones_own_is_400_without_its_path(tiny: TestClient, weights: Path) -> None:  # noqa: F811
    error = _error(_post(tiny, method="network", psf="gauss:sigma=1"), 400)
    assert error.startswith("method=network: this server cannot restore a known PSF this way") and "tiny.safetensors" in error
    assert str(weights.parent) not in error and "choose method wiener or rl or pnp" in error


def test_a_psf_text_is_never_opened_as_a_file_on_the_server(tiny: TestClient, device_psf: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "kernel.npy", np.ones((3, 3)))
    for text in (str(device_psf), str(tmp_path / "kernel.npy"), "kernel.npy", "../device.psf.json"):
        error = _error(_post(tiny, method="wiener", psf=text), 400)
        assert error.startswith(f"psf={text}: give a PSF spec") and "API key" in error


def test_explain_draws_a_known_psf(tiny: TestClient) -> None:
    pytest.importorskip("matplotlib")
    body = _post(tiny, method="wiener", psf="gauss:sigma=1.6", explain="true").json()
    drawn = json.loads(Image.open(io.BytesIO(base64.b64decode(body["psf_image"]))).info["meddeblur"])
    assert drawn["drawn_psf"]["digest"] == load_psf("gauss:sigma=1.6").digest
    assert body["method"] == "wiener" and body["psf"]["source"] == "gauss:sigma=1.6" and body["model_id"] is None


def test_the_openapi_description_offers_every_method(tiny: TestClient) -> None:
    operation = tiny.get("/openapi.json").json()["paths"]["/v1/deblur"]["post"]
    method = next(p for p in operation["parameters"] if p["name"] == "method")
    assert all(f"{name}: {m.summary}" in method["description"] for name, m in registry.METHODS.items())
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["method"]["enum"] == list(registry.METHODS) and "psf" in form


# --------------------------------------------------------------------------- kernel files


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_kernel_files_are_taken_only_with_the_api_key(tiny: TestClient) -> None:
    kernel = ("blur.npy", _npy(np.ones((3, 3))), "application/octet-stream")
    error = _error(_post(tiny, kernel=kernel, method="wiener"), 403)
    assert error.startswith("psf: this server takes kernel files only with its API key")
    assert tiny.get("/healthz").json()["kernel_uploads"] is False


def test_an_authenticated_caller_may_send_a_kernel_file(keyed: TestClient, device_psf: Path, tmp_path: Path) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    assert _post(keyed, kernel=("blur.npy", _npy(np.ones((3, 3))), "x/y"), method="wiener").status_code == 401
    kernel = np.outer([1, 2, 1], [1, 3, 1]).astype(np.float64)
    for name, data, expected in (("blur.npy", _npy(kernel), psf_from_array(kernel)),
                                 ("device.psf.json", device_psf.read_bytes(), load_psf(device_psf))):
        answer = _post(keyed, kernel=(name, data, "application/octet-stream"), method="wiener", headers=auth)
        assert answer.status_code == 200, answer.text
        told = json.loads(answer.headers["x-psf"])
        assert (told["source"], told["from"], told["digest"]) == (name, "kernel file", expected.digest)
    assert keyed.get("/healthz").json()["kernel_uploads"] is True


@pytest.mark.parametrize("name, data, status, needle", [
    ("big.npy", b"\x93NUMPY" + bytes(4 * 2**20), 413, "psf: big.npy is 4.0 MiB, more than the 4 MiB a kernel file may be"),
    ("notes.txt", b"hello, a kernel?", 415, "psf: notes.txt is not a kernel file"),
    ("negative.npy", _npy(-np.ones((3, 3))), 400, "psf=negative.npy: the kernel has negative values"),
    ("cut.json", b'{"format": "meddeblur-psf", "kernel": [[1, 2], [3', 422, "cut.json: not a PSF file written by meddeblur"),
    ("empty.npy", b"", 400, "psf: empty.npy is empty"),
])
def test_bad_kernel_files_are_one_line_naming_the_file(keyed: TestClient, name: str, data: bytes, status: int, needle: str) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    error = _error(_post(keyed, kernel=(name, data, "application/octet-stream"), method="wiener", headers=auth), status)
    assert needle in error and "meddeblur-psf-" not in error and "/tmp" not in error
    both = _error(_post(keyed, kernel=("k.npy", _npy(np.ones((3, 3))), "x/y"), data={"psf": "gauss:sigma=1"}, headers=auth), 400)
    assert both.startswith("psf: a spec (psf=gauss:sigma=1) and a kernel file were both sent")


# --------------------------------------------------------------------------- the change of every pixel, for the page


def test_change_levels_answer_every_pixels_change_and_a_scale_fitted_to_it(tiny: TestClient) -> None:
    from meddeblur.server.change_view import nice_scale

    image = _image(60, 80, seed=3)
    body = _post(tiny, image, change_levels="true").json()
    packed = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["change_levels"]))).convert("RGB")).astype(np.float64)
    levels = (packed[..., 0] * 256 + packed[..., 1]) / 256
    after = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("RGB"))
    expected = change_between(image, after)
    np.testing.assert_allclose(levels, expected.levels, atol=1 / 512)
    assert body["change"] == expected.figures.as_dict() and body["change_levels_media_type"] == "image/png"
    assert body["change_percentile"] == pytest.approx(np.percentile(expected.levels, 99), abs=1e-3)
    assert body["change_scale"] == nice_scale(body["change_percentile"]) and body["change_scale"] < 64  # not the CLI's 64
    assert "change_map" not in body  # the CLI's drawn map only when asked for


def test_nice_scale_rounds_the_percentile_up() -> None:
    from meddeblur.server.change_view import nice_scale

    assert [nice_scale(v) for v in (0, 3.9, 5, 5.1, 37, 199.5, 250, 300)] == [5, 5, 5, 10, 50, 200, 255, 255]
