"""``meddeblur serve``'s API: round trips keep format/bit depth/channels, every bad upload is a 4xx JSON error,
the pool answers 503 when full, uploads are capped while streaming, the page and docs load nothing from elsewhere."""

from __future__ import annotations

import asyncio
import importlib
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
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.inference.batch import deblur_array
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.decode import read_image
from meddeblur.io.ownership import read_provenance
from meddeblur.io.provenance import make_record
from meddeblur.models import ModelConfig, build_model, load_model, save_weights, size_multiple, weights_id
from meddeblur.server import ServerSettings, create_app
from meddeblur.server.card import model_card
from meddeblur.server.imaging import display_name

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


def _served(network: torch.nn.Module, weights: Path, model_id: str, tile: int = 1024, overlap: int = 128) -> Deblurrer:
    """A stand-in network served as if loaded from ``weights`` (what create_app gets from Deblurrer.load)."""
    config = ModelConfig(arch="nafnet", width=8)
    record = make_record(model_id, "nafnet width 8", "torch", {"tile": tile, "overlap": overlap})
    return Deblurrer(network, size_multiple(config), record, torch.device("cpu"), tile, overlap, config, weights)


def test_full_queue_answers_503_with_retry_after_and_recovers(weights):
    gate = _Gate()
    served = _served(gate, weights, "gate")
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
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the server child: one thread is fastest on a loaded small machine
    load = importlib.import_module("benchmarks.stress.load")
    # Two worker processes: the multi-process path (settings through the environment, a model per worker, RSS of all).
    assert load.main(["--model", str(weights), "--requests", "12", "--clients", "4", "--warmup", "2", "--sizes", "48x40", "80x64",
                      "--workers", "2", "--queue", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "load.json").read_text())
    assert result["requests"]["sent"] == 12 and result["requests"]["ok"] + result["requests"]["busy_503"] == 12
    assert result["requests"]["unexpected"] == 0 and result["latency_ms"]["p50"] > 0
    assert result["rss_mib"]["start"] > 0 and result["rss_mib"]["end"] > 0
    assert "p95" in (tmp_path / "load.md").read_text()


# --------------------------------------------------------------------------- hardening (issue 12): stalled uploads, deadlines,
# URL length, API key, Host allow-list, cross-site requests, security headers. Every input is made here.

import contextlib  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

from meddeblur.server.run import network_settings, uvicorn_options  # noqa: E402
from meddeblur.server.security import DATA_POLICY, HTML_POLICY  # noqa: E402

API_KEY = "k" * 12 + "-test-key-0123456789"


@contextlib.contextmanager
def real_server(app):
    """``app`` behind a real uvicorn (the options `meddeblur serve` uses) on a free loopback port: yields the port."""
    import uvicorn

    config = uvicorn.Config(app, **{**uvicorn_options(app.state.settings, "127.0.0.1", 0, "warning"), "lifespan": "off"})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)


def _raw(port: int, request: bytes, read_timeout: float = 20) -> bytes:
    """Send ``request`` on a fresh socket and read the answer until the server closes or ``read_timeout`` passes."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(request)
        answer = b""
        with contextlib.suppress(socket.timeout, ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and b'"}' in answer:
                    break
    return answer


def _multipart_head(boundary: str = "b0undary") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()


def test_stalled_uploads_do_not_starve_processing_and_time_out_with_408(weights):
    """40 clients send headers and 100 body bytes, then stall: a good request still gets 200 well within the body
    timeout (the stalled ones hold no processing slot), and each stalled one is answered 408 when the timeout passes."""
    timeout = 3.0
    # 40 clients, all on 127.0.0.1 here: more than the 32 connections one address may hold by default.
    app = create_app(ServerSettings(model=str(weights), device="cpu", threads=1, queue=1, body_timeout=timeout, max_client_connections=64))
    png = encode(sample(32, 32), "PNG")
    with real_server(app) as port:
        stalled = []
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"POST /v1/deblur HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b0undary\r\n"
                         b"Content-Length: 100000\r\n\r\n" + (_multipart_head() + b"\0" * 100)[:100])
            stalled.append(sock)
        while app.state.uploads.active < 40:
            time.sleep(0.02)
        began = time.monotonic()
        good = httpx.post(f"http://127.0.0.1:{port}/v1/deblur", files={"file": ("a.png", png, "image/png")}, timeout=30)
        took = time.monotonic() - began
        assert good.status_code == 200, good.text
        assert took < timeout, f"good request took {took:.1f} s behind 40 stalled uploads"
        answers = []
        for sock in stalled:
            sock.settimeout(timeout + 15)
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := sock.recv(4096):  # until the server closes the connection
                    answer += chunk
            answers.append(answer)
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers) and len(answers) == 40, answers[:3]
    assert b"not received within 3 s" in answers[0]
    assert app.state.pool.busy == 0 and app.state.uploads.active == 0


def test_content_length_larger_than_the_body_is_408_not_a_hang(weights):
    app = create_app(ServerSettings(model=str(weights), device="cpu", body_timeout=1.0))
    with real_server(app) as port:
        began = time.monotonic()
        answer = _raw(port, b"POST /v1/deblur HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                            b"Content-Length: 5000\r\n\r\n" + b"\x89PNG" + b"\0" * 96)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - began < 10


@pytest.mark.parametrize("length", [10_000, 60_000])
def test_over_long_url_is_414_not_a_reset(weights, length):
    app = create_app(ServerSettings(model=str(weights), device="cpu"))
    with real_server(app) as port:
        answer = _raw(port, f"GET /v1/model?q={'a' * length} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 414"), answer[:200]
    assert b"longer than the 8,192" in answer and b"nosniff" in answer.lower()


def test_api_key_is_required_on_the_api_and_compared_exactly(weights, tmp_path):
    key_file = tmp_path / "key.txt"
    key_file.write_text(API_KEY + "\n")
    app = create_app(ServerSettings(model=str(weights), device="cpu", api_key_file=str(key_file)))
    png = encode(sample(32, 32), "PNG")
    with TestClient(app) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": API_KEY[:-1]}, {"Authorization": f"Basic {API_KEY}"}):
            refused = http.post("/v1/deblur", files={"file": ("a.png", png, "image/png")}, headers=headers)
            assert refused.status_code == 401 and "API key" in refused.json()["error"], headers
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert http.get("/v1/model", headers=headers).status_code == 401
        ok = http.post("/v1/deblur", files={"file": ("a.png", png, "image/png")}, headers={"Authorization": f"Bearer {API_KEY}"})
        assert ok.status_code == 200
        assert http.get("/v1/model", headers={"X-API-Key": API_KEY}).status_code == 200
        assert http.get("/healthz").json()["api_key_required"] is True  # liveness and the page stay open
        assert http.get("/").status_code == 200


def test_api_key_sources_and_bad_keys(tmp_path, monkeypatch):
    from meddeblur.errors import UserError

    monkeypatch.setenv("MEDDEBLUR_API_KEY", API_KEY)
    assert ServerSettings().api_key() == API_KEY
    (tmp_path / "short").write_text("secret")
    with pytest.raises(UserError, match="at least 16 printable ASCII characters"):
        ServerSettings(api_key_file=str(tmp_path / "short")).validate()
    with pytest.raises(UserError, match="cannot read it"):
        ServerSettings(api_key_file=str(tmp_path / "missing")).validate()
    monkeypatch.delenv("MEDDEBLUR_API_KEY")
    assert ServerSettings().api_key() is None


def test_network_bind_without_key_warns_and_loopback_gets_a_host_allow_list(capsys, monkeypatch):
    monkeypatch.delenv("MEDDEBLUR_API_KEY", raising=False)
    settings = network_settings(ServerSettings(), "0.0.0.0")
    err = capsys.readouterr().err
    assert "WARNING" in err and "without an API key" in err and settings.allowed_hosts is None
    local = network_settings(ServerSettings(), "127.0.0.1")
    assert capsys.readouterr().err == "" and set(local.allowed_hosts) == {"localhost", "127.0.0.1", "::1"}
    monkeypatch.setenv("MEDDEBLUR_API_KEY", API_KEY)
    network_settings(ServerSettings(allowed_hosts=("scanner.example",)), "0.0.0.0")
    assert capsys.readouterr().err == ""


def test_host_header_allow_list_refuses_dns_rebinding(weights):
    app = create_app(ServerSettings(model=str(weights), device="cpu", allowed_hosts=("localhost", "127.0.0.1", "::1")))
    with TestClient(app, base_url="http://localhost:8000") as http:
        assert http.get("/v1/model").status_code == 200
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST."):
            assert http.get("/healthz", headers={"Host": host}).status_code == 200, host
        for host in ("attacker.example", "attacker.example:8000", "localhost.attacker.example", ""):
            refused = http.get("/v1/model", headers={"Host": host})
            assert refused.status_code == 400 and "Host" in refused.json()["error"], host


def test_cross_site_posts_are_refused_and_cors_is_off_unless_asked(weights):
    png = encode(sample(32, 32), "PNG")
    app = create_app(ServerSettings(model=str(weights), device="cpu"))
    with TestClient(app, base_url="http://127.0.0.1:8000") as http:
        def upload(**headers):
            return http.post("/v1/deblur", files={"file": ("a.png", png, "image/png")}, headers=headers)
        assert upload(**{"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert upload(**{"Sec-Fetch-Site": "same-site"}).status_code == 403
        assert upload(Origin="http://evil.example").status_code == 403
        assert upload(Origin="http://127.0.0.1:8000", **{"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert upload(Origin="https://127.0.0.1:8000").status_code == 200  # behind a TLS proxy: same host, https origin
        assert upload(Origin="http://127.0.0.1:9999").status_code == 403
        assert upload().status_code == 200  # curl and scripts send neither header
        preflight = http.options("/v1/deblur", headers={"Origin": "https://viewer.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
    app = create_app(ServerSettings(model=str(weights), device="cpu", cors_origins=("https://viewer.example",)))
    with TestClient(app, base_url="http://127.0.0.1:8000") as http:
        allowed = http.post("/v1/deblur", files={"file": ("a.png", png, "image/png")},
                            headers={"Origin": "https://viewer.example", "Sec-Fetch-Site": "cross-site"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://viewer.example"
        other = http.post("/v1/deblur", files={"file": ("a.png", png, "image/png")}, headers={"Origin": "https://evil.example"})
        assert other.status_code == 403


@pytest.mark.parametrize("request_", ["page", "docs", "model", "health", "not_found", "bad_upload", "image", "unauthorised", "bug"])
def test_every_response_carries_the_security_headers(weights, request_, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    app = create_app(ServerSettings(model=str(weights), device="cpu", api_key_file=str(key_file) if request_ == "unauthorised" else None))
    if request_ == "bug":  # an unexpected exception: answered 500 by the outermost error handler, still with the headers
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") != "/v1/model"]

        @app.get("/v1/model")
        async def broken():
            raise RuntimeError("boom")
    with TestClient(app, raise_server_exceptions=False) as http:
        response = {
            "page": lambda: http.get("/"),
            "docs": lambda: http.get("/docs"),
            "model": lambda: http.get("/v1/model"),
            "health": lambda: http.get("/healthz"),
            "not_found": lambda: http.get("/nothing-here"),
            "bad_upload": lambda: post(http, b"GIF89a" + bytes(40), name="x.gif", mime="image/gif"),
            "image": lambda: post(http, encode(sample(32, 32), "PNG")),
            "unauthorised": lambda: http.get("/v1/model"),
            "bug": lambda: http.get("/v1/model"),
        }[request_]()
    expected_status = {"page": 200, "docs": 200, "model": 200, "health": 200, "not_found": 404, "bad_upload": 415,
                       "image": 200, "unauthorised": 401, "bug": 500}[request_]
    assert response.status_code == expected_status, response.text
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["content-security-policy"] == (HTML_POLICY if request_ in ("page", "docs") else DATA_POLICY)
    if request_ in ("image", "model", "unauthorised", "bad_upload", "bug"):
        assert headers["cache-control"] == "no-store"


class _Slow(torch.nn.Module):
    """An identity network taking ``seconds`` per forward pass."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_processing_deadline_stops_a_long_job_between_tiles_with_503(weights):
    """A 4-tile image at 0.6 s per tile under a 1 s deadline: stopped after the tile that crossed it, 503 + Retry-After;
    then, knowing the speed, a second such image is refused before any tile runs."""
    slow = _Slow(0.6)
    served = _served(slow, weights, "slow", tile=64, overlap=16)
    app = create_app(ServerSettings(device="cpu", deadline=1.0, tile=64, overlap=16), model=served)
    png = encode(sample(100, 100), "PNG")  # 100 px with 64 px tiles: 2 × 2 tiles
    with TestClient(app) as http:
        first = post(http, png)
        assert first.status_code == 503 and int(first.headers["retry-after"]) >= 1, first.text
        assert "1 s processing deadline" in first.json()["error"]
        assert slow.calls == 2  # the tile in progress at the deadline finishes; the next ones never start
        small = post(http, encode(sample(32, 32), "PNG"))  # one tile, 0.6 s: within the deadline
        assert small.status_code == 200
        calls = slow.calls
        second = post(http, png)
        assert second.status_code == 503 and "needs about" in second.json()["error"] and slow.calls == calls
        waited = time.monotonic()
        while app.state.pool.busy and time.monotonic() - waited < 5:  # the slot is freed by the job's done-callback
            time.sleep(0.01)
        assert app.state.pool.busy == 0


# --------------------------------------------------------------------------- a hostile probe (issue 33)


def test_a_non_ascii_api_key_is_refused_at_start(tmp_path, monkeypatch):
    """HTTP headers carry Latin-1 bytes: a UTF-8 key was accepted at start and then matched no request."""
    from meddeblur.errors import UserError

    monkeypatch.setenv("MEDDEBLUR_API_KEY", "schlüssel-geheim-0123456789")
    with pytest.raises(UserError, match="printable ASCII characters"):
        ServerSettings().validate()
    (tmp_path / "key").write_text("ключ" * 5, encoding="utf-8")
    with pytest.raises(UserError, match=r"api_key_file=.*printable ASCII characters"):
        ServerSettings(api_key_file=str(tmp_path / "key")).validate()


def test_a_cmyk_profile_is_not_copied_onto_the_rgb_answer(client, tmp_path):
    cmyk = struct.pack(">I4sI4s4s4s12s4s", 132, b"none", 0x02100000, b"prtr", b"CMYK", b"Lab ", bytes(12), b"acsp").ljust(128, b"\0")
    cmyk += struct.pack(">I", 0)
    buffer = io.BytesIO()
    Image.new("CMYK", (32, 32), (10, 20, 30, 40)).save(buffer, "JPEG", icc_profile=cmyk)
    data = buffer.getvalue()
    answer = post(client, data, "c.jpg", "image/jpeg")
    assert answer.status_code == 200, answer.text
    with Image.open(io.BytesIO(answer.content)) as out:
        assert out.mode == "RGB" and "icc_profile" not in out.info
    (tmp_path / "a.jpg").write_bytes(answer.content)
    assert read_provenance(tmp_path / "a.jpg")["not_kept"] == ["ICC profile (CMYK; the output is RGB)"]


def _slow_client(port: int, source: str = "127.0.0.2") -> socket.socket:
    """A connection from ``source`` that has sent a request line and one header, and will not finish its head soon."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    return sock


def _closed_with(sock: socket.socket, timeout: float) -> bytes:
    """What the server sent before closing the connection within ``timeout`` seconds (b"open" if it did not)."""
    sock.settimeout(timeout)
    answer = b""
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except socket.timeout:
        return b"open"
    except OSError:
        pass
    return answer


def test_slow_header_clients_are_capped_per_address_and_timed_out(weights):
    """70 connections from one address sending headers slowly held every connection slot (uvicorn has no header timeout and
    counts them against limit_concurrency, 64 here), so good requests got 503. Now at most 4 stay open from one address,
    and those are answered 408 once their head is 1 s late although they keep sending header lines."""
    app = create_app(ServerSettings(model=str(weights), device="cpu", threads=1, queue=1, max_uploads=1,
                                    header_timeout=1.0, max_client_connections=4))
    assert uvicorn_options(app.state.settings, "127.0.0.1", 0)["limit_concurrency"] == 64
    with real_server(app) as port:
        slow = [_slow_client(port) for _ in range(70)]
        began = time.monotonic()
        good = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert good.status_code == 200, good.text
        answers = [_closed_with(sock, 5) for sock in slow[4:]]
        assert all(a.startswith(b"HTTP/1.1 503") and b"too many connections from 127.0.0.2" in a for a in answers), answers[:2]
        for _ in range(5):  # the four let in keep sending header lines, more slowly than the deadline allows
            time.sleep(0.3)
            for sock in slow[:4]:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")
        late = [_closed_with(sock, 5) for sock in slow[:4]]
        assert all(a.startswith(b"HTTP/1.1 408") and b"not received within 1 s" in a for a in late), late
        assert time.monotonic() - began < 8
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        keep_alive = httpx.Client(timeout=10)  # a kept-alive connection is not cut while it sends requests promptly
        for _ in range(3):
            assert keep_alive.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            time.sleep(0.6)
        keep_alive.close()
        for sock in slow:
            sock.close()


def test_an_onnx_model_from_meddeblur_export_is_served_with_its_card(weights: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra")
    from fastapi.testclient import TestClient

    from meddeblur.inference.onnx_engine import export_onnx

    onnx = tmp_path / "model.onnx"
    export_onnx(weights, onnx)
    with TestClient(create_app(ServerSettings(model=str(onnx), device="cpu"))) as http:
        card = http.get("/v1/model").json()
        answer = post(http, encode(sample(), "PNG"))
        refused = post(http, encode(sample(), "PNG"), psf="gauss:sigma=1.5")
    assert card["engine"] == "onnx" and card["architecture"]["name"].startswith("nafnet") and card["limits"]
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-id"] == card["id"]
    assert refused.status_code == 400 and "ONNX" in refused.text, refused.text
