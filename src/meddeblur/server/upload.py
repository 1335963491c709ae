"""Reading an upload as a stream, with a size cap enforced while it arrives.

FastAPI's ``UploadFile`` parameter would read the whole body before the endpoint runs;
here the body is pulled through a receive wrapper that stops at the cap, so an oversized
upload costs at most the cap in (disk-spooled) memory and is refused with 413.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from typing import IO

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message, Receive

from meddeblur.server.imaging import UploadError

#: Multipart framing (boundaries, part headers) on top of the file itself.
_FRAMING_BYTES = 64 * 1024
#: Uploads stay in memory up to this size, then go to a temporary file.
_SPOOL_BYTES = 1024 * 1024
#: The multipart field of a kernel file sent with the image (a text field of that name is a PSF spec).
KERNEL_FIELD = "psf"


class _Capped:
    """A receive callable that fails with 413 once more than ``limit`` body bytes came in, and with 408
    when the body has not fully arrived ``timeout`` seconds after the first call (a stalled or lying client)."""

    def __init__(self, receive: Receive, limit: int, limit_text: str, timeout: float | None = None) -> None:
        self._receive, self._limit, self._text = receive, limit, limit_text
        self._timeout = timeout
        self._deadline: float | None = None
        self.received = 0

    async def __call__(self) -> Message:
        if self._timeout is None:
            message = await self._receive()
        else:
            loop = asyncio.get_running_loop()
            if self._deadline is None:
                self._deadline = loop.time() + self._timeout
            try:
                message = await asyncio.wait_for(self._receive(), max(0.0, self._deadline - loop.time()))
            except asyncio.TimeoutError:
                raise UploadError(
                    408,
                    f"upload not received within {self._timeout:g} s ({self.received:,} bytes came); "
                    "send it again over a faster connection, or compress it",
                ) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self._limit:
                raise UploadError(413, f"upload larger than {self._text}; downscale or compress the image")
        return message


def _limit_text(limit: int) -> str:
    return f"{limit / 1024 / 1024:g} MiB"


@dataclass
class Received:
    """One request's upload: the image (a spooled temporary file; the caller closes it) and the client's file name,
    the form's text fields (``method``, ``psf``; none for a raw body) and a kernel file sent as the field ``psf``
    (its bytes and file name, or None)."""

    file: IO[bytes]
    filename: str | None
    fields: dict[str, str] = field(default_factory=dict)
    kernel: tuple[bytes, str | None] | None = None


async def receive_upload(request: Request, limit: int, timeout: float | None = None) -> Received:
    """The uploaded image and what came with it (:class:`Received`).

    Accepts ``multipart/form-data`` with a ``file`` field (what browsers and ``curl -F``
    send), beside it the text fields ``method`` and ``psf`` or a kernel file as ``psf``, or the raw image as the body
    (``curl --data-binary``). Errors are
    :class:`UploadError`: 413 over ``limit`` bytes, 408 when the body is not all there after
    ``timeout`` seconds (a stalled client, or a Content-Length larger than the body), 400 for a
    missing or empty body.
    """
    text = _limit_text(limit)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + _FRAMING_BYTES:
        raise UploadError(413, f"upload of {int(declared):,} bytes is larger than {text}; downscale or compress the image")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        capped = Request(request.scope, _Capped(request.receive, limit + _FRAMING_BYTES, text, timeout))
        # Two files at most: the image and a kernel; the whole body stays under the upload cap.
        form = await capped.form(max_files=2, max_fields=8)
        kernel_part = form.get(KERNEL_FIELD)
        file = form.get("file")
        if file is None:
            file = next(
                (value for key, value in form.multi_items() if isinstance(value, UploadFile) and key != KERNEL_FIELD), None
            )
        if not isinstance(file, UploadFile):
            await form.close()
            raise UploadError(400, "no file in the upload; send multipart/form-data with the image in a field named 'file'")
        if file.size is not None and file.size > limit:
            await form.close()
            raise UploadError(413, f"upload larger than {text}; downscale or compress the image")
        fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
        kernel = None
        if isinstance(kernel_part, UploadFile):
            # Read whole (a kernel is small: choice.read_kernel refuses more than 4 MiB), then closed: only the image's
            # spooled file outlives the form, and closing that is the caller's job.
            kernel = (await kernel_part.read(), kernel_part.filename)
            await kernel_part.close()
        return Received(file.file, file.filename, fields, kernel)
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115  (it outlives this function: the caller closes it)
    try:
        async for chunk in Request(request.scope, _Capped(request.receive, limit, text, timeout)).stream():
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    if spool.tell() == 0:
        spool.close()
        raise UploadError(400, "empty upload; send the image as multipart/form-data (field 'file') or as the request body")
    return Received(spool, request.headers.get("x-filename"))
