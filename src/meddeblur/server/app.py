"""The FastAPI application: the page, the deblurring endpoint, the model card and a health check.

Every error is answered as JSON ``{"error": "one line"}`` with a 4xx status (5xx only for
a busy server or a bug), and the server keeps serving after any bad upload.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from meddeblur import __version__
from meddeblur.errors import UserError
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.formats import OUTPUT_SUFFIXES
from meddeblur.server.card import model_card
from meddeblur.server.connections import ConnectionLimits, configure
from meddeblur.restore import registry
from meddeblur.server.engine import METHODS, Deadline, InferencePool, Methods, QueueFull, UploadGate, load_served_model
from meddeblur.server.imaging import OUTPUT_FORMATS, Deblurred, UploadError, deblur_upload, display_name
from meddeblur.server.security import Guard
from meddeblur.server.settings import ServerSettings
from meddeblur.server.upload import receive_upload

log = logging.getLogger("meddeblur.server")

# The page loads nothing from elsewhere: the Content-Security-Policy that Guard sets on it makes the browser enforce it.
_PAGE_HEADERS = {"Cache-Control": "no-cache"}
_ERROR_SCHEMA = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}}}}
_DEBLUR_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary", "description": "PNG, JPEG, TIFF or BMP (decoded by content)"}}}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "200": {"description": "The deblurred image (input's format and bit depth unless `format`); headers "
                               "X-Model-Id, X-Processing-Time-Ms, X-Deblur-Time-Ms, X-Image-Size, and with method=psf "
                               "X-Restoration (JSON: the estimated PSF, the consistency check, result and reason; a PSF map "
                               "only as its grid size — the whole record is in the image's provenance and the JSON answer)",
                "content": {**{t: {"schema": {"type": "string", "format": "binary"}}
                               for t in ("image/png", "image/jpeg", "image/tiff", "image/bmp")},
                            # ?change_map=true: the same image in JSON, with the heat map of |output - input| and its figures.
                            "application/json": {"schema": {"type": "object", "properties": {
                                "image": {"type": "string", "format": "byte"}, "media_type": {"type": "string"},
                                "filename": {"type": "string"}, "width": {"type": "integer"}, "height": {"type": "integer"},
                                "bit_depth": {"type": "integer"}, "model_id": {"type": "string"},
                                "change": {"type": "object", "description": "mean and max absolute change in 8-bit levels, "
                                           "share of pixels changed by more than 4 levels", "properties": {
                                               k: {"type": "number"} for k in ("mean", "max", "share_over_4")}},
                                "change_map": {"type": "string", "format": "byte", "description": "PNG: heat map (the image's "
                                               "width x height, top left) and its colour bar in levels (right)"},
                                "change_map_media_type": {"type": "string"},
                                # method=psf: what was done; ?explain=true: the PSF used, drawn as deblur --explain draws it.
                                "restoration": {"type": "object", "description": "method=psf: the estimated PSF (source spec, "
                                                "params, size, digest, MTF50, family, confidence), the consistency check and "
                                                "`result` (restored, unchanged or blind) with its `reason`"},
                                "psf_image": {"type": ["string", "null"], "format": "byte", "description": "explain=true: PNG "
                                              "of the PSF's kernel beside its MTF (null when no PSF was estimated)"},
                                "psf_image_media_type": {"type": "string"}}}}}},
        "400": {"description": "empty upload, no file field, bad format", **_ERROR_SCHEMA},
        "401": {"description": "API key missing or wrong (only when the server has one)", **_ERROR_SCHEMA},
        "403": {"description": "cross-site request from a browser", **_ERROR_SCHEMA},
        "408": {"description": "upload not received within --body-timeout", **_ERROR_SCHEMA},
        "413": {"description": "upload larger than --max-upload-mb, or more pixels than --max-pixels", **_ERROR_SCHEMA},
        "415": {"description": "not an image, or an unsupported format (GIF, WebP, DICOM, ...)", **_ERROR_SCHEMA},
        "422": {"description": "truncated or corrupt image, smaller than 16 px", **_ERROR_SCHEMA},
        "503": {"description": "queue full, too many uploads at once, or the --deadline cannot be met: retry after the "
                               "Retry-After header's seconds", **_ERROR_SCHEMA},
    },
}


def _as_json(result: Deblurred, filename: str, model_id: str, change_map: bool, explain: bool) -> dict[str, Any]:
    """The JSON answer (``?change_map=true`` or ``?explain=true``): the image and its change map as base64, the change
    figures in 8-bit levels; with ``method=psf`` the restoration record, with ``explain`` the PSF's figure."""
    answer: dict[str, Any] = {"image": base64.b64encode(result.data).decode("ascii"), "media_type": result.media_type,
                              "filename": filename, "width": result.width, "height": result.height, "bit_depth": result.bit_depth,
                              "model_id": model_id}
    if change_map:
        answer.update(change=result.change, change_map=base64.b64encode(result.change_map or b"").decode("ascii"),
                      change_map_media_type="image/png")
    if result.restoration is not None:
        answer["restoration"] = result.restoration
    if explain:
        answer.update(psf_image=base64.b64encode(result.psf_image).decode("ascii") if result.psf_image else None,
                      psf_image_media_type="image/png")
    return answer


def _restoration_header(restoration: dict[str, Any]) -> str:
    """``X-Restoration``: the record as compact ASCII JSON, a PSF map only as its grid size (a header must stay small)."""
    brief = dict(restoration)
    if isinstance(brief.get("psf_map"), dict):
        brief["psf_map"] = {"grid": [len(brief["psf_map"].get("cell_rows", [])), len(brief["psf_map"].get("cell_cols", []))]}
    return json.dumps(brief, separators=(",", ":"), ensure_ascii=True)


def _deblur_job(methods: Methods, method: str, upload: Any, *args: Any) -> tuple[Deblurrer, Deblurred]:
    """On a pool thread: the Deblurrer for ``method`` (bound to the estimator on first use), then :func:`deblur_upload`."""
    try:
        engine = methods.get(method)
    except BaseException as error:
        upload.close()  # deblur_upload would have closed it
        if isinstance(error, UserError):
            raise UploadError(400, f"method={method}: this server cannot estimate the PSF ({' '.join(str(error).split())})") from None
        raise
    return engine, deblur_upload(engine, upload, *args)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError) -> JSONResponse:
        # A refused upload may not have been read to its end: the connection cannot carry another request.
        return _error(exc.status, exc.message, {"Connection": "close"} if exc.status in (408, 413) else None)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=400)  # nobody is listening; not worth a log line

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server keeps running, please report this")


def create_app(settings: ServerSettings | None = None, model: Deblurrer | None = None) -> FastAPI:
    """The application for one worker process; loads the model now (once) unless ``model`` is given.

    Requests are deblurred with ``model``'s tiling (:func:`load_served_model` takes it from ``settings``).
    """
    settings = settings or ServerSettings()
    configure(ConnectionLimits(settings.header_timeout, settings.max_client_connections))
    served = model or load_served_model(settings.model, settings.device, settings.tile, settings.overlap)
    methods = Methods(served, settings.estimator)
    pool = InferencePool(settings.threads, settings.queue)
    uploads = UploadGate(settings.max_uploads, settings.body_timeout)
    card = model_card(served.config, served.weights, served.model_id)
    page = resources.files("meddeblur.server").joinpath("page.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown()

    app = FastAPIOffline(title="meddeblur", version=__version__, lifespan=lifespan,
                         description="Deblurring of dermoscopic images. Output images are computer-processed and "
                                     "not for diagnosis alone.")
    app.state.settings, app.state.model, app.state.pool, app.state.uploads = settings, served, pool, uploads
    _add_error_handlers(app)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Filename"],
                           expose_headers=["X-Model-Id", "X-Processing-Time-Ms", "X-Deblur-Time-Ms", "X-Image-Size", "X-Bit-Depth",
                                           "X-Restoration",
                                           "Content-Disposition", "Retry-After"])
    # Guard wraps the whole stack, the error middleware included, so that every response (a 500 too) is checked and
    # gets the security headers.
    build = app.build_middleware_stack
    key = settings.api_key()
    app.build_middleware_stack = lambda: Guard(build(), allowed_hosts=settings.allowed_hosts, api_key=key,  # type: ignore[method-assign]
                                               cors_origins=settings.cors_origins)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @app.get("/healthz", summary="Liveness, load and limits")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model_id": served.model_id, "version": __version__, "busy": pool.busy,
                "capacity": pool.capacity, "uploading": uploads.active, "max_upload_mb": settings.max_upload_mb,
                "max_pixels": settings.max_pixels, "deadline_s": settings.deadline, "body_timeout_s": settings.body_timeout,
                "api_key_required": key is not None}

    @app.get("/v1/model", summary="The model card: id, version, architecture, training data, limits")
    async def model_info() -> dict[str, Any]:
        return card

    @app.post("/v1/deblur", summary="Deblur one image", openapi_extra=_DEBLUR_OPENAPI,
              responses={200: {"content": {"image/png": {}}}})
    async def deblur(request: Request, format: str | None = Query(
            None, description="output format: png, jpeg, tiff or bmp (default: the input's)"), change_map: bool = Query(
            False, description="answer JSON instead: the image and the map of what deblurring changed (base64), with its figures"),
            method: str = Query(registry.NETWORK, description="; ".join(f"{name}: {registry.get(name).summary}" for name in METHODS)
                                + "; what was done comes in X-Restoration"),
            explain: bool = Query(False, description="with method=psf: answer JSON with the image, the restoration record and "
                                  "the PSF drawn as PNG (psf_image, base64)")) -> Response:
        started = time.perf_counter()
        if format and format.lower() not in OUTPUT_FORMATS:
            raise UploadError(400, f"format={format}: choose one of png, jpeg, tiff, bmp (or leave it out to keep the input's)")
        if method not in METHODS:
            raise UploadError(400, f"method={method}: choose one of " + "; ".join(f"{name} ({registry.get(name).summary})" for name in METHODS))
        if explain and method != registry.ESTIMATED:
            raise UploadError(400, "explain=true draws the PSF the image was restored with, and the blind network uses none; "
                                   "add method=psf")
        if explain and importlib.util.find_spec("matplotlib") is None:
            raise UploadError(501, "explain=true: this server cannot draw (matplotlib is not installed; pip install 'meddeblur[plots]')")
        # The upload is received first, within --body-timeout, holding only an upload place: a slow or stalled client
        # never holds a processing slot.
        with uploads.enter():
            upload, filename = await receive_upload(request, settings.max_upload_bytes, settings.body_timeout)
        try:
            slot = pool.admit(settings.deadline)
        except QueueFull:
            upload.close()
            raise
        deadline = Deadline(settings.deadline, pool)
        async with slot:
            name = display_name(filename)
            engine, result = await slot.run(_deblur_job, methods, method, upload, name, format, settings.max_pixels,
                                            settings.jpeg_quality, deadline, change_map, explain)
        total_ms = (time.perf_counter() - started) * 1000
        stem = name.rsplit(".", 1)[0] if "." in name else name
        suffix = OUTPUT_SUFFIXES[result.format.lower()].lstrip(".")
        headers = {
            "X-Model-Id": engine.model_id,
            "X-Processing-Time-Ms": f"{total_ms:.1f}",
            "X-Deblur-Time-Ms": f"{result.seconds * 1000:.1f}",
            "X-Image-Size": f"{result.width}x{result.height}",
            "X-Bit-Depth": str(result.bit_depth),
            "Server-Timing": (f'wait;desc="upload and queue";dur={total_ms - result.seconds * 1000:.1f}, '
                              f"deblur;dur={result.seconds * 1000:.1f}"),
            "Content-Disposition": f'inline; filename="{stem}_deblurred.{suffix}"',
        }
        if result.restoration is not None:
            headers["X-Restoration"] = _restoration_header(result.restoration)
        if change_map or explain:
            del headers["Content-Disposition"]
            return JSONResponse(_as_json(result, f"{stem}_deblurred.{suffix}", engine.model_id, change_map, explain), headers=headers)
        return Response(result.data, media_type=result.media_type, headers=headers)

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for ``--workers N``: each worker process builds its own app (and loads the model once)."""
    import torch

    settings = ServerSettings.from_env()
    torch.set_num_threads(settings.torch_threads())
    return create_app(settings)
