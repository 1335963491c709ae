"""``meddeblur serve``'s API: round trips keep format/bit depth/channels, every bad upload is a 4xx JSON error,
the pool answers 503 when full, uploads are capped while streaming, the page and docs load nothing from elsewhere."""

from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import threading
import warnings
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

with warnings.catch_warnings():
    # Starlette 1.x suggests its httpx fork for the test client; httpx is what FastAPI documents and works.
    warnings.simplefilter("ignore", UserWarning)
    from fastapi.testclient import TestClient

from meddeblur import __version__
from meddeblur.infer import deblur_array
from meddeblur.io import read_image
from meddeblur.models import ModelConfig, build_model, load_model, save_weights, weights_id
from meddeblur.provenance import read_provenance
from meddeblur.server import ServerSettings, create_app
from meddeblur.server.card import model_card
from meddeblur.server.engine import ServedModel
from meddeblur.server.imaging import display_name
from meddeblur.synthetic import synthetic_dermoscopy

ROOT = Path(__file__).resolve().parents[1]
MAX_UPLOAD_MB = 0.25
MAX_PIXELS = 100_000


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # Inference runs on the server's pool thread; one intra-op thread is fastest on a loaded small machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny NAFNet that visibly changes images (an untrained one is exactly the identity)."""
    config = ModelConfig(arch="nafnet", width=8)
    torch.manual_seed(0)
    network = build_model(config)
    torch.nn.init.normal_(network.ending.weight, std=0.02)
    return save_weights(network, config, tmp_path_factory.mktemp("server-model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def client(weights: Path) -> TestClient:
    app = create_app(ServerSettings(model=str(weights), device="cpu", max_upload_mb=MAX_UPLOAD_MB, max_pixels=MAX_PIXELS))
    with TestClient(app) as test_client:
        yield test_client


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def sample(height: int = 50, width: int = 70, seed: int = 0) -> np.ndarray:
    """A synthetic dermoscopy-like 8-bit RGB image whose sides are not multiples of 16."""
    return (synthetic_dermoscopy(height, width, seed) * 255).round().astype(np.uint8)


def post(client: TestClient, data: bytes, name: str = "lesion.png", mime: str = "image/png", **params) -> httpx.Response:
    return client.post("/v1/deblur", files={"file": (name, data, mime)}, params=params)


def decoded(response: httpx.Response, tmp_path: Path, suffix: str = ".png"):
    path = tmp_path / f"answer{suffix}"
    path.write_bytes(response.content)
    return read_image(path)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` RGB pixels, with almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- round trips


def test_png_round_trip_is_the_model_output_with_model_id_and_timing(client, weights, tmp_path):
    image = sample()
    response = post(client, encode(image, "PNG"), name="case 12/lesion.png")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model-id"] == weights_id(weights)
    assert float(response.headers["x-processing-time-ms"]) >= float(response.headers["x-deblur-time-ms"]) > 0
    assert response.headers["x-image-size"] == "70x50"
    assert 'filename="lesion_deblurred.png"' in response.headers["content-disposition"]
    result = decoded(response, tmp_path)
    model = load_model(weights, "cpu")[0]
    expected = deblur_array(model, image.astype(np.float32) / 255, multiple=16)
    np.testing.assert_array_equal(np.round(result.rgb * 255), np.round(np.clip(expected, 0, 1) * 255))
    assert np.abs(result.rgb * 255 - image).max() >= 2, "the (perturbed) model must have changed the image"
    (tmp_path / "answer.png").write_bytes(response.content)
    record = read_provenance(tmp_path / "answer.png")  # the served file says what made it, like the CLI's outputs
    assert record is not None and record["model_id"] == weights_id(weights) and record["tool"] == "meddeblur"


@pytest.mark.parametrize("case", ["png16", "gray", "rgba", "jpeg", "tiff16", "bmp"])
def test_answer_keeps_format_bit_depth_and_channels(client, tmp_path, case):
    rgb8 = sample(40, 36, seed=1)
    if case == "png16":
        data, fmt, depth = _encode_cv2(rgb8.astype(np.uint16) * 257, ".png"), "PNG", 16
    elif case == "tiff16":
        data, fmt, depth = _encode_cv2(rgb8.astype(np.uint16) * 257, ".tif"), "TIFF", 16
    elif case == "gray":
        data, fmt, depth = encode(rgb8[:, :, 1], "PNG"), "PNG", 8
    elif case == "rgba":
        alpha = np.tile(np.linspace(0, 255, 36).astype(np.uint8), (40, 1))
        data, fmt, depth = encode(np.dstack([rgb8, alpha]), "PNG"), "PNG", 8
    elif case == "jpeg":
        data, fmt, depth = encode(rgb8, "JPEG", quality=95), "JPEG", 8
    else:
        data, fmt, depth = encode(rgb8, "BMP"), "BMP", 8
    response = post(client, data, name=f"x.{fmt.lower()}", mime="application/octet-stream")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff", "BMP": "image/bmp"}[fmt]
    assert response.headers["x-bit-depth"] == str(depth)
    result = decoded(response, tmp_path, suffix="")
    assert (result.format, result.bit_depth, result.rgb.shape) == (fmt, depth, (40, 36, 3))
    assert result.grayscale == (case == "gray")
    if case == "rgba":
        np.testing.assert_allclose(result.alpha * 255, np.tile(np.linspace(0, 255, 36).astype(np.uint8), (40, 1)), atol=0.5)
    else:
        assert result.alpha is None


def _encode_cv2(rgb16: np.ndarray, ext: str) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(ext, cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


def test_format_query_converts_and_bad_format_is_400(client, tmp_path):
    jpeg = encode(sample(), "JPEG", quality=90)
    as_png = post(client, jpeg, name="a.jpg", mime="image/jpeg", format="png")
    assert as_png.status_code == 200 and as_png.headers["content-type"] == "image/png"
    assert decoded(as_png, tmp_path).format == "PNG"
    as_tiff = post(client, jpeg, name="a.jpg", mime="image/jpeg", format="TIFF")
    assert as_tiff.status_code == 200 and as_tiff.content[:4] in (b"II*\x00", b"MM\x00*")
    bad = post(client, jpeg, name="a.jpg", mime="image/jpeg", format="gif")
    assert bad.status_code == 400 and "format=gif" in bad.json()["error"]


def test_dicom_upload_needs_an_image_format_and_keeps_16_bits(client, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 40, 48, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (sample(40, 48)[:, :, 0].astype(np.uint16) * 257).tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    refused = post(client, buffer.getvalue(), name="scan.dcm", mime="application/dicom")
    assert refused.status_code == 415 and "format=png" in refused.json()["error"]
    answered = post(client, buffer.getvalue(), name="scan.dcm", mime="application/dicom", format="png")
    assert answered.status_code == 200 and answered.headers["x-bit-depth"] == "16"
    result = decoded(answered, tmp_path)
    assert (result.format, result.bit_depth, result.grayscale, result.rgb.shape) == ("PNG", 16, True, (40, 48, 3))


def test_raw_body_upload_works_like_multipart(client):
    response = client.post("/v1/deblur", content=encode(sample(), "PNG"), headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")


# --------------------------------------------------------------------------- bad uploads


def _gif() -> bytes:
    return encode(sample(), "GIF")


BAD_UPLOADS = {
    # name: (request keyword arguments, status, words the message must contain)
    "empty body": (lambda: {"content": b""}, 400, "empty upload"),
    "no file field": (lambda: {"data": {"note": "x"}, "files": {"other": (None, "y")}}, 400, "no file"),
    "empty file": (lambda: {"files": {"file": ("empty.png", b"", "image/png")}}, 400, "empty.png: empty file"),
    "not an image": (lambda: {"files": {"file": ("notes.png", b"hello, this is text\n" * 20, "image/png")}}, 415, "notes.png: not a readable image"),
    "unsupported type": (lambda: {"files": {"file": ("anim.png", _gif(), "image/png")}}, 415, "anim.png: is a GIF image"),
    "truncated PNG": (lambda: {"files": {"file": ("cut.png", encode(sample(), "PNG")[:600], "image/png")}}, 422, "cut.png: cannot decode image (truncated"),
    "too small": (lambda: {"files": {"file": ("tiny.png", encode(sample(16, 16)[:8, :8], "PNG"), "image/png")}}, 422, "smaller than 16 px"),
    "too large": (lambda: {"files": {"file": ("big.bmp", b"BM" + bytes(int(MAX_UPLOAD_MB * 2**20)), "image/bmp")}}, 413, "larger than 0.25 MiB"),
    "too many pixels": (lambda: {"files": {"file": ("wide.png", encode(np.zeros((300, 400, 3), np.uint8), "PNG"), "image/png")}},
                        413, "400x300 (120,000 pixels), more than the 100,000"),
    "bomb header": (lambda: {"files": {"file": ("bomb.png", png_header_only(100_000, 100_000), "image/png")}}, 413, "100000x100000"),
    "malformed multipart": (lambda: {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400, "boundary"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_upload_is_a_4xx_json_error_and_the_server_keeps_serving(client, name):
    make, status, words = BAD_UPLOADS[name]
    response = client.post("/v1/deblur", **make())
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert words in message
    assert "\n" not in message and "meddeblur-in-" not in message and "/tmp" not in message  # no server paths leak
    assert post(client, encode(sample(32, 32), "PNG")).status_code == 200


def test_display_name_keeps_only_a_safe_base_name():
    assert display_name("C:\\scans\\a b(1).png") == "a b(1).png"
    assert display_name('../../etc/"x"\r\n.png') == "_x___.png"
    assert display_name(None) == display_name("") == display_name("..") == "upload"


def test_oversized_upload_is_refused_while_streaming(weights):
    """Without Content-Length the cap still stops reading early; with a large one nothing is read at all."""
    app = create_app(ServerSettings(model=str(weights), device="cpu", max_upload_mb=MAX_UPLOAD_MB))
    chunk, chunks = 64 * 1024, 200  # 12.5 MiB offered, 0.25 MiB allowed
    sent = {"raw": 0, "multipart": 0, "declared": 0}

    def body(kind: str, head: bytes = b""):
        async def generate():
            if head:
                yield head
            for _ in range(chunks):
                sent[kind] += 1
                yield b"\0" * chunk
        return generate()

    boundary = "xYz"
    head = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n".encode()

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            raw = await http.post("/v1/deblur", content=body("raw"), headers={"content-type": "application/octet-stream"})
            multipart = await http.post("/v1/deblur", content=body("multipart", head),
                                        headers={"content-type": f"multipart/form-data; boundary={boundary}"})
            declared = await http.post("/v1/deblur", content=body("declared"),
                                       headers={"content-type": "application/octet-stream", "content-length": str(chunk * chunks)})
            return [raw, multipart, declared]

    for response in asyncio.run(run()):
        assert response.status_code == 413 and "larger than 0.25 MiB" in response.json()["error"]
    assert sent["raw"] <= 6 and sent["multipart"] <= 6, sent  # stopped right after the cap, not at the end
    assert sent["declared"] == 0
    assert app.state.pool.busy == 0


# --------------------------------------------------------------------------- back-pressure


class _Gate(torch.nn.Module):
    """An identity network that blocks until released, to hold the pool busy."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Semaphore(0)
        self.release = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.started.release()
        assert self.release.wait(30), "test never released the gate"
        return x


def test_full_queue_answers_503_with_retry_after_and_recovers(weights):
    gate = _Gate()
    served = ServedModel(gate, ModelConfig(arch="nafnet", width=8), weights, "gate", torch.device("cpu"))
    app = create_app(ServerSettings(device="cpu", threads=1, queue=1), model=served)
    png = encode(sample(32, 32), "PNG")

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
            def upload():
                return http.post("/v1/deblur", files={"file": ("a.png", png, "image/png")})
            first, second = asyncio.create_task(upload()), asyncio.create_task(upload())
            while app.state.pool.busy < 2:  # one running (blocked in the gate), one waiting
                await asyncio.sleep(0.01)
            assert await asyncio.to_thread(gate.started.acquire, True, 30)
            refused = await upload()
            health = await http.get("/healthz")  # the event loop is not blocked by the running job
            gate.release.set()
            return refused, health, await first, await second

    refused, health, first, second = asyncio.run(run())
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1 and "busy" in refused.json()["error"]
    assert health.status_code == 200 and health.json()["busy"] == 2 and health.json()["capacity"] == 2
    assert first.status_code == second.status_code == 200 and first.headers["x-model-id"] == "gate"
    assert app.state.pool.busy == 0


# --------------------------------------------------------------------------- model card, page, docs


def test_model_card_describes_the_served_weights(client, weights):
    card = client.get("/v1/model").json()
    assert card["id"] == weights_id(weights) and card["version"] == __version__
    assert card["architecture"]["name"] == "nafnet" and card["architecture"]["width"] == 8
    assert card["training_data"] and "not for diagnosis alone" in card["limits"]
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model_id"] == card["id"] and health["max_upload_mb"] == MAX_UPLOAD_MB


def test_model_card_reads_training_info_and_a_matching_curated_card(tmp_path):
    config = ModelConfig(arch="nafnet", width=8)
    path = save_weights(build_model(config), config, tmp_path / "m.safetensors", extra={"training": {"epochs": 3, "data": "ISIC CC0 subset"}})
    model_id = weights_id(path)
    card = model_card(config, path, model_id)
    assert card["training"] == {"epochs": 3, "data": "ISIC CC0 subset"} and card["training_data"] == "ISIC CC0 subset"
    curated = {"id": model_id, "training_data": {"images": 390}, "limits": "L", "version": "9", "architecture": {"arch": "nafnet", "parameters": 5}}
    (tmp_path / "model_card.json").write_text(json.dumps(curated))
    card = model_card(config, path, model_id)
    assert card["training_data"] == {"images": 390} and card["limits"] == "L" and card["version"] == __version__
    assert card["architecture"]["name"] == "nafnet" and card["architecture"]["parameters"] == 5 and card["architecture"]["width"] == 8
    (tmp_path / "model_card.json").write_text(json.dumps({"id": "0123456789ab", "limits": "other model"}))
    assert "not for diagnosis alone" in model_card(config, path, model_id)["limits"]


def test_page_has_the_parts_and_loads_nothing_from_elsewhere(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    page = response.text
    for part in ('type="file"', 'id="drop"', "<progress", 'id="slider"', 'id="download"', 'role="alert"', "not for diagnosis alone"):
        assert part in page, part
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"""(fetch\(|open\(\s*["']POST["'],\s*)["'`]https?:""", page)


def test_api_docs_are_served_without_a_cdn(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", docs.text)
    assert assets and all(a.startswith("/") and not a.startswith("//") for a in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset
    spec = client.get("/openapi.json").json()
    assert {"/v1/deblur", "/v1/model", "/healthz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/deblur"]["post"]["requestBody"]["content"]


# --------------------------------------------------------------------------- command line and load benchmark


def test_serve_command_refuses_bad_options_before_listening(run_cli, tmp_path, capsys):
    from meddeblur.cli import main

    missing = run_cli("serve", "--model", tmp_path / "nope.safetensors", "--port", "1", timeout=600)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.safetensors: no such model" in missing.stderr
    assert "Uvicorn running" not in missing.stderr + missing.stdout
    for option, value in (("--max-upload-mb", "0"), ("--max-pixels", "nan"), ("--workers", "0"), ("--queue", "-1"), ("--tile", "8")):
        assert main(["serve", option, value, "--model", str(tmp_path / "nope.safetensors")]) == 2
        assert f"{option} " in capsys.readouterr().err


def test_load_benchmark_runs_against_a_real_server(weights, tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server child: one thread is fastest on a loaded small machine
    spec = importlib.util.spec_from_file_location("load", ROOT / "benchmarks" / "load.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    # Two worker processes: the multi-process path (settings through the environment, a model per worker, RSS of all).
    assert load.main(["--model", str(weights), "--requests", "12", "--clients", "4", "--warmup", "2", "--sizes", "48x40", "80x64",
                      "--workers", "2", "--queue", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "load.json").read_text())
    assert result["requests"]["sent"] == 12 and result["requests"]["ok"] + result["requests"]["busy_503"] == 12
    assert result["requests"]["unexpected"] == 0 and result["latency_ms"]["p50"] > 0
    assert result["rss_mib"]["start"] > 0 and result["rss_mib"]["end"] > 0
    assert "p95" in (tmp_path / "load.md").read_text()
