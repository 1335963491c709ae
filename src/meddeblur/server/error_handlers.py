"""How the application answers errors: every one as JSON ``{"error": "one line"}``, a bug as a logged 500.

Separate from :mod:`meddeblur.server.app` (the routes): these handlers are registered once on the application and
hold no state of their own.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from meddeblur.server.engine import QueueFull
from meddeblur.server.imaging import UploadError

__all__ = ["add_error_handlers", "error_response"]

log = logging.getLogger("meddeblur.server")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def uploaderror_response(_: Request, exc: UploadError) -> JSONResponse:
        # A refused upload may not have been read to its end: the connection cannot carry another request.
        return error_response(exc.status, exc.message, {"Connection": "close"} if exc.status in (408, 413) else None)

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return error_response(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=400)  # nobody is listening; not worth a log line

    @app.exception_handler(HTTPException)
    async def httperror_response(_: Request, exc: HTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return error_response(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server keeps running, please report this")
