"""The FastAPI application: the page, the deblurring endpoint, the model card and a health check.

Every error is answered as JSON ``{"error": "one line"}`` with a 4xx status (5xx only for
a busy server or a bug), and the server keeps serving after any bad upload.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline

from meddeblur import __version__
from meddeblur.errors import UserError
from meddeblur.inference.change_map import THRESHOLD_LEVELS
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.formats import OUTPUT_SUFFIXES
from meddeblur.psf.kernel import PSF
from meddeblur.restore import registry
from meddeblur.server.answer import json_answer, psf_header, restoration_header
from meddeblur.server.card import model_card
from meddeblur.server.change_view import PERCENTILE, SCALES
from meddeblur.server.choice import DEFAULT, KERNEL_FILE, Choice, choose, load_default_psf, method_named, read_kernel, spec_psf
from meddeblur.server.connections import ConnectionLimits, configure
from meddeblur.server.engine import Deadline, InferencePool, Methods, UploadGate, check_default_psf, load_served_model
from meddeblur.server.error_handlers import add_error_handlers
from meddeblur.server.imaging import OUTPUT_FORMATS, Deblurred, UploadError, deblur_upload, display_name
from meddeblur.server.openapi import deblur_openapi, method_help, psf_help
from meddeblur.server.security import Guard
from meddeblur.server.settings import ServerSettings
from meddeblur.server.upload import KERNEL_FIELD, Received, receive_upload

# The page loads nothing from elsewhere: the Content-Security-Policy that Guard sets on it makes the browser enforce it.
_PAGE_HEADERS = {"Cache-Control": "no-cache"}
#: Where page.html takes this server's configuration (methods, default PSF, colour scales): a JSON script block.
_PAGE_CONFIG = '<script id="config" type="application/json">{}</script>'


def _cannot(choice: Choice, error: UserError, served: Deblurrer) -> str:
    """Why this server cannot restore ``choice``, in one line without its own paths."""
    why = " ".join(str(error).split())
    if served.weights is not None:
        why = why.replace(str(served.weights), served.weights.name)
    if choice.estimates:
        return f"method={choice.method}: this server cannot estimate the PSF ({why})"
    others = [name for name in registry.names(registry.Told.PSF) if name != choice.method]
    return f"method={choice.method}: this server cannot restore a known PSF this way ({why}); choose method {' or '.join(others)}"


def _deblur_job(methods: Methods, choice: Choice, upload: Any, *args: Any) -> tuple[Deblurrer, Deblurred]:
    """On a pool thread: the Deblurrer for ``choice`` (bound on first use), then :func:`deblur_upload`."""
    try:
        engine = methods.get(choice.method, choice.psf)
    except BaseException as error:
        upload.close()  # deblur_upload would have closed it
        if isinstance(error, UserError):
            raise UploadError(400, _cannot(choice, error, methods.served)) from None
        raise
    return engine, deblur_upload(engine, upload, *args)


def _once(name: str, query: str | None, form: str | None) -> str | None:
    """A field that may come in the query or the form: once, or twice alike."""
    if query is not None and form is not None and query != form:
        raise UploadError(400, f"{name}: the query says {name}={query} and the form {name}={form}; give it once")
    return query if query is not None else form


def _page(default_psf: PSF | None) -> str:
    """page.html with this server's configuration: the registry's methods, the default PSF, the change view's scales."""
    config = {
        "methods": [
            {
                "name": name,
                "label": method.label,
                "summary": method.summary,
                "takes_psf": registry.Told.PSF in method.told,
                "estimates": registry.Told.ESTIMATE in method.told,
                "needs_psf": not method.told & {registry.Told.NOTHING, registry.Told.ESTIMATE},
            }
            for name, method in registry.METHODS.items()
        ],
        "default_method": registry.KNOWN_BLUR_DEFAULT if default_psf is not None else registry.NETWORK,
        "default_psf": None if default_psf is None else {**default_psf.describe(), "from": DEFAULT},
        "explain": importlib.util.find_spec("matplotlib") is not None,
        "scales": list(SCALES),
        "percentile": PERCENTILE,
        "threshold": THRESHOLD_LEVELS,
    }
    page = resources.files("meddeblur.server").joinpath("page.html").read_text(encoding="utf-8")
    # "<" escaped: nothing in the data can close the script block.
    return page.replace(_PAGE_CONFIG.format("null"), _PAGE_CONFIG.format(json.dumps(config).replace("<", "\\u003c")))


def create_app(settings: ServerSettings | None = None, model: Deblurrer | None = None) -> FastAPI:
    """The application for one worker process; loads the model now (once) unless ``model`` is given.

    Requests are deblurred with ``model``'s tiling (:func:`load_served_model` takes it from ``settings``).
    """
    settings = settings or ServerSettings()
    configure(ConnectionLimits(settings.header_timeout, settings.max_client_connections))
    # The default PSF first: a bad --psf is found in milliseconds, before the model's seconds.
    default_psf = load_default_psf(settings.psf) if settings.psf is not None else None
    served = model or load_served_model(settings.model, settings.device, settings.tile, settings.overlap)
    methods = Methods(served, settings.estimator)
    if default_psf is not None:
        check_default_psf(methods, default_psf)
    pool = InferencePool(settings.threads, settings.queue)
    uploads = UploadGate(settings.max_uploads, settings.body_timeout)
    card = model_card(served.config, served.weights, served.model_id, served.provenance.get("model"))
    page = _page(default_psf)
    key = settings.api_key()
    # Kernel files are parsed by more code than a spec: taken only from callers who showed the API key (Guard lets no
    # other through to /v1/ when there is one). docs/commands.md, "Methods and a known blur".
    kernel_uploads = key is not None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown()

    app = FastAPIOffline(
        title="meddeblur",
        version=__version__,
        lifespan=lifespan,
        description="Deblurring of dermoscopic images. Output images are computer-processed and not for diagnosis alone.",
    )
    app.state.settings, app.state.model, app.state.pool, app.state.uploads = settings, served, pool, uploads
    app.state.default_psf = default_psf
    add_error_handlers(app)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Filename"],
            expose_headers=[
                "X-Model-Id",
                "X-Method",
                "X-PSF",
                "X-Processing-Time-Ms",
                "X-Deblur-Time-Ms",
                "X-Image-Size",
                "X-Bit-Depth",
                "X-Restoration",
                "Content-Disposition",
                "Retry-After",
            ],
        )
    # Guard wraps the whole stack, the error middleware included, so that every response (a 500 too) is checked and
    # gets the security headers.
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: Guard(  # type: ignore[method-assign]
        build(), allowed_hosts=settings.allowed_hosts, api_key=key, cors_origins=settings.cors_origins
    )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @app.get("/healthz", summary="Liveness, load and limits")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "model_id": served.model_id,
            "version": __version__,
            "busy": pool.busy,
            "capacity": pool.capacity,
            "uploading": uploads.active,
            "max_upload_mb": settings.max_upload_mb,
            "max_pixels": settings.max_pixels,
            "deadline_s": settings.deadline,
            "body_timeout_s": settings.body_timeout,
            "api_key_required": key is not None,
            "kernel_uploads": kernel_uploads,
            "default_psf": None if default_psf is None else {k: v for k, v in default_psf.describe().items() if k != "params"},
        }

    @app.get("/v1/model", summary="The model card: id, version, architecture, training data, limits")
    async def model_info() -> dict[str, Any]:
        return card

    async def choice_of(
        received: Received, method: str | None, psf: str | None, queried: tuple[PSF | None, str | None]
    ) -> Choice:
        """The request's :class:`Choice` from its query (``queried``: the query's PSF, already parsed) and form."""
        method = method_named(_once("method", method, received.fields.get("method")))
        text = _once("psf", psf, received.fields.get(KERNEL_FIELD))
        if received.kernel is not None:
            if text is not None:
                raise UploadError(400, f"psf: a spec (psf={text}) and a kernel file were both sent; send one")
            if not kernel_uploads:
                raise UploadError(
                    403,
                    "psf: this server takes kernel files only with its API key (meddeblur serve "
                    "--api-key-file); send a spec such as psf=gauss:sigma=1.6, or have the file made the "
                    "server's default (serve --psf FILE)",
                )
            found, given = await asyncio.to_thread(read_kernel, *received.kernel), KERNEL_FILE
        elif text is None:
            found, given = None, None
        else:
            found, given = queried if text == psf else spec_psf(text, default_psf, kernel_uploads)
        return choose(method, found, given, text is not None or received.kernel is not None, default_psf)

    @app.post(
        "/v1/deblur",
        summary="Deblur one image",
        openapi_extra=deblur_openapi(default_psf, kernel_uploads),
        responses={200: {"content": {"image/png": {}}}},
    )
    async def deblur(
        request: Request,
        format: str | None = Query(None, description="output format: png, jpeg, tiff or bmp (default: the input's)"),
        change_map: bool = Query(
            False, description="answer JSON instead: the image and the map of what deblurring changed (base64), with its figures"
        ),
        change_levels: bool = Query(
            False,
            description="answer JSON instead: the image, the change of every pixel (PNG, "
            "base64) and a colour scale fitted to it, for drawing your own map",
        ),
        method: str | None = Query(
            None,
            description=method_help()
            + "; left out: "
            + registry.KNOWN_BLUR_DEFAULT
            + " told the PSF when there is one, else the blind network; also a form field",
        ),
        psf: str | None = Query(None, description=psf_help(default_psf, kernel_uploads)),
        explain: bool = Query(
            False,
            description="answer JSON with the image and the PSF it was restored with drawn as PNG "
            "(psf_image, base64): the estimated one (method=psf) or the known one",
        ),
    ) -> Response:
        started = time.perf_counter()
        if format and format.lower() not in OUTPUT_FORMATS:
            raise UploadError(400, f"format={format}: choose one of png, jpeg, tiff, bmp (or leave it out to keep the input's)")
        # What the query says is checked before the upload is received: a wrong method or spec costs no upload.
        method_named(method)
        queried = spec_psf(psf, default_psf, kernel_uploads) if psf is not None else (None, None)
        if explain and importlib.util.find_spec("matplotlib") is None:
            raise UploadError(
                501, "explain=true: this server cannot draw (matplotlib is not installed; pip install 'meddeblur[plots]')"
            )
        # The upload is received first, within --body-timeout, holding only an upload place: a slow or stalled client
        # never holds a processing slot.
        with uploads.enter():
            received = await receive_upload(request, settings.max_upload_bytes, settings.body_timeout)
        upload = received.file
        try:
            choice = await choice_of(received, method, psf, queried)
            if explain and choice.psf is None and not choice.estimates:
                raise UploadError(
                    400,
                    "explain=true draws the PSF the image was restored with, and the blind network uses none; "
                    "add method=psf (estimate it) or psf=SPEC (a known one)",
                )
            slot = pool.admit(settings.deadline)
        except BaseException:
            upload.close()
            raise
        deadline = Deadline(settings.deadline, pool)
        async with slot:
            name = display_name(received.filename)
            engine, result = await slot.run(
                _deblur_job,
                methods,
                choice,
                upload,
                name,
                format,
                settings.max_pixels,
                settings.jpeg_quality,
                deadline,
                change_map,
                explain,
                change_levels,
            )
        total_ms = (time.perf_counter() - started) * 1000
        stem = name.rsplit(".", 1)[0] if "." in name else name
        suffix = OUTPUT_SUFFIXES[result.format.lower()].lstrip(".")
        headers = {
            "X-Method": choice.method,
            "X-Processing-Time-Ms": f"{total_ms:.1f}",
            "X-Deblur-Time-Ms": f"{result.seconds * 1000:.1f}",
            "X-Image-Size": f"{result.width}x{result.height}",
            "X-Bit-Depth": str(result.bit_depth),
            "Server-Timing": (
                f'wait;desc="upload and queue";dur={total_ms - result.seconds * 1000:.1f}, deblur;dur={result.seconds * 1000:.1f}'
            ),
            "Content-Disposition": f'inline; filename="{stem}_deblurred.{suffix}"',
        }
        if engine.provenance.get("model_id"):  # Wiener and Richardson-Lucy have no weights
            headers["X-Model-Id"] = engine.provenance["model_id"]
        if choice.psf is not None:
            headers["X-PSF"] = psf_header(choice.psf_record() or {})
        if result.restoration is not None:
            headers["X-Restoration"] = restoration_header(result.restoration)
        if change_map or change_levels or explain:
            del headers["Content-Disposition"]
            return JSONResponse(
                json_answer(result, f"{stem}_deblurred.{suffix}", engine, choice, change_map, change_levels, explain),
                headers=headers,
            )
        return Response(result.data, media_type=result.media_type, headers=headers)

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory for ``--workers N``: each worker process builds its own app (and loads the model once)."""
    import torch

    settings = ServerSettings.from_env()
    torch.set_num_threads(settings.torch_threads())
    return create_app(settings)
