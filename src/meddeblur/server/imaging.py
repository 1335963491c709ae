"""Upload → deblurred image bytes, with the same decoding, checks and output rules as ``meddeblur deblur``."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from meddeblur.errors import (
    CorruptImage,
    EmptyFile,
    InvalidOption,
    MissingExtra,
    TooLarge,
    TooSmall,
    UnsupportedFormat,
    UserError,
)
from meddeblur.inference.change_map import CHANGE_MAP_OPERATION, change_of
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.decode import read_image
from meddeblur.io.encode import encode_image
from meddeblur.io.formats import BY_NAME, FORMAT_ALIASES, MEDIA_TYPES, LoadedImage
from meddeblur.runs.explain import psf_plot
from meddeblur.server.change_view import change_view
from meddeblur.server.engine import Deadline

#: ``?format=`` values and what is answered for them.
OUTPUT_FORMATS = {alias.lower(): name for alias, name in FORMAT_ALIASES.items()}

# read_image silences C-library chatter by swapping file descriptor 2 process-wide and
# changes the global warning filters: two decodes overlapping in threads could leave
# stderr pointing at /dev/null for good. Decoding is a small part of a request's time.
_DECODE_LOCK = threading.Lock()


class UploadError(Exception):
    """A bad upload: answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Deblurred:
    """The answer to one upload."""

    data: bytes
    format: str  # PNG, JPEG, TIFF or BMP
    width: int
    height: int
    bit_depth: int
    seconds: float  # decode + deblur + encode, without waiting in the queue
    change: dict[str, float] | None = None  # with change_map: ChangeFigures.as_dict() of output - input
    change_map: bytes | None = None  # with change_map: the heat map PNG, as ``meddeblur deblur --change-map`` writes it
    restoration: dict[str, Any] | None = None  # method=psf: what was done with the image (Deblurrer.restore_rgb's record)
    psf_image: bytes | None = None  # with explain: the PNG of the PSF used, as ``meddeblur deblur --explain`` draws it
    change_view: dict[str, Any] | None = None  # with change_levels: change_view.change_view() (levels PNG, percentile, scale)

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]


def display_name(filename: str | None) -> str:
    """The client's file name, safe to echo in messages and headers (no folders, controls or quotes)."""
    name = re.split(r"[\\/]", filename or "")[-1]
    name = re.sub(r"[^\w.\- ()+,]", "_", name, flags=re.ASCII).strip(" .")[:120]
    return name or "upload"


#: HTTP status per :mod:`meddeblur.errors` class of a refused upload; the most specific class present wins.
STATUSES: dict[type[UserError], int] = {
    EmptyFile: 400,
    InvalidOption: 400,
    TooLarge: 413,
    UnsupportedFormat: 415,
    MissingExtra: 415,
    CorruptImage: 422,
    TooSmall: 422,
}


def status_for(error: UserError) -> int:
    """HTTP status for a :func:`read_image` refusal: by class (:data:`STATUSES`), 422 for any other user error."""
    return next((STATUSES[cls] for cls in type(error).__mro__ if cls in STATUSES), 422)


def decode_upload(path: Path, name: str, max_pixels: int) -> LoadedImage:
    """Decode the uploaded file by content; pixel count is checked from the header before decoding."""
    try:
        with _DECODE_LOCK:
            return read_image(path, max_pixels=max_pixels)
    except UserError as error:
        message = " ".join(str(error).replace(str(path), name).split())
        raise UploadError(status_for(error), message) from None


def output_format(requested: str | None, source: LoadedImage) -> str:
    """``?format=`` if given, else the input's own format (a DICOM input needs ``format``: no DICOM answers yet)."""
    if requested is None or requested == "":
        if source.format not in OUTPUT_FORMATS.values():
            raise UploadError(
                415,
                f"{source.format} uploads are answered only as an image file: add ?format=png "
                "(keeps 16 bits) or format=tiff; `meddeblur deblur` writes a derived DICOM",
            )
        return source.format
    fmt = OUTPUT_FORMATS.get(requested.lower())
    if fmt is None:
        raise UploadError(400, f"format={requested}: choose one of png, jpeg, tiff, bmp (or leave it out to keep the input's)")
    return fmt


def encode_output(rgb: np.ndarray, source: LoadedImage, fmt: str, provenance: dict, jpeg_quality: int = 95) -> tuple[bytes, int]:
    """Encode the deblurred ``rgb`` like ``meddeblur deblur`` writes it: (file bytes, bit depth).

    Keeps grayscale, alpha (not in JPEG), 16 bits (PNG/TIFF only) and the colour metadata (an ICC profile of the
    output's colour space, PNG colour chunks), and writes the ``provenance`` record
    (:func:`meddeblur.io.provenance.make_record`, with what could not be kept) into the file's metadata.
    BMP has no metadata field (the CLI writes a sidecar): there the response headers carry it.
    """
    bit_depth = source.bit_depth if source.bit_depth in BY_NAME[fmt].bit_depths else 8
    data = encode_image(
        rgb,
        fmt,
        alpha=source.alpha,
        grayscale=source.grayscale,
        bit_depth=bit_depth,
        jpeg_quality=jpeg_quality,
        provenance=provenance,
        icc=source.icc,
        png_colour=source.png_colour,
    )
    return data, bit_depth


def deblur_upload(
    model: Deblurrer,
    upload: IO[bytes],
    name: str,
    requested_format: str | None,
    max_pixels: int,
    jpeg_quality: int,
    deadline: Deadline | None = None,
    change_map: bool = False,
    explain: bool = False,
    change_levels: bool = False,
) -> Deblurred:
    """The whole job of one request, run on a pool thread: decode, deblur, encode; closes ``upload``.

    ``change_map``: also measure what deblurring changed and draw its heat map
    (:func:`meddeblur.inference.change_map.change_of`, the same map as the CLI's ``--change-map``); ``change_levels``:
    the change of every pixel and a scale fitted to it, for the page to draw (:mod:`meddeblur.server.change_view`).
    A ``model`` that estimates the PSF (``method=psf``) says what it did (``restoration``, also written into the
    image's provenance); ``explain``: also draw the PSF used (:func:`meddeblur.runs.explain.psf_plot`, as the
    CLI's ``--explain``). A ``model`` told a PSF larger than the image refuses it (422).

    With a ``deadline``, a job that waited past it, whose image is expected to end past it, or
    that runs past it (checked before every tile) stops with :class:`QueueFull` (503).
    """
    started = time.perf_counter()
    try:
        if deadline is not None:
            deadline.check()
        with tempfile.TemporaryDirectory(prefix="meddeblur-in-") as folder:
            # read_image takes a path (it checks the file type before opening it).
            path = Path(folder) / "upload"
            upload.seek(0)
            with open(path, "wb") as fh:
                shutil.copyfileobj(upload, fh, 1 << 20)
            # Written and closed here, and nothing else writes it: an old modification time spares read_image the
            # wait it gives a file written just before (which might still be being written).
            os.utime(path, ns=(0, 0))
            source = decode_upload(path, name, max_pixels)
    finally:
        upload.close()  # here, on the pool thread, so it is never closed while being copied
    fmt = output_format(requested_format, source)
    height, width = source.rgb.shape[:2]
    if model.psf is not None:
        try:
            model.psf.check_fits(height, width, where=name)
        except UserError as error:
            raise UploadError(422, " ".join(str(error).split())) from None
    pixels = height * width
    if deadline is not None:
        deadline.check_estimate(pixels)
    began = time.perf_counter()
    restored, restoration = model.restore_rgb(source.rgb, before_tile=deadline.check if deadline is not None else None)
    if deadline is not None:
        deadline.pool.record(pixels, time.perf_counter() - began)
    record = {**model.provenance, "restoration": restoration} if restoration else model.provenance
    data, bit_depth = encode_output(restored, source, fmt, record, jpeg_quality)
    figures = heat_map = view = None
    if change_map or change_levels:
        change = change_of(source, restored, bit_depth)
        figures = change.figures.as_dict()
        if change_map:
            heat_map = encode_image(
                change.image().astype(np.float32) / 255,
                "PNG",
                provenance={**record, "operation": CHANGE_MAP_OPERATION, "change": figures},
            )
        if change_levels:
            view = change_view(change, record)
    kernel = psf_plot(model, restoration, record) if explain else None
    return Deblurred(
        data, fmt, width, height, bit_depth, time.perf_counter() - started, figures, heat_map, restoration or None, kernel, view
    )
