"""Decoding image files: PNG, JPEG, TIFF, BMP and DICOM, by content, as float32 RGB in [0, 1].

8- and 16-bit images are read exactly; orientation is applied, the ICC profile and alpha are kept, and anything
that cannot be read faithfully (GIF, float or signed TIFF, values out of range, too large from the header) is
refused with a typed :class:`meddeblur.errors.UserError` naming the file.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
import struct
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import BmpImagePlugin, Image, ImageFile, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from meddeblur.errors import CorruptImage, EmptyFile, InvalidOption, TooLarge, UnsupportedFormat, UserError
from meddeblur.files import open_regular, read_whole
from meddeblur.io.dicom import read_dicom
from meddeblur.io.formats import MAX_PIXELS, SIGNATURES, LoadedImage, check_size, unsupported_kind
from meddeblur.io.png import PNG_SIGNATURE, colour_key_alpha, png_colour_chunks, png_without_text
from meddeblur.io.tiff import decode_tiff, decode_unopened_tiff, needs_tifffile

__all__ = ["read_image", "read_rgb", "orient"]

_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
# Importing the plugins registers their openers in Image.OPEN, which _open_header uses.
assert all(fmt in Image.OPEN for fmt in _PIL_FORMATS), (BmpImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin)
_GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_HEAD_BYTES = 132  # enough for the DICOM marker at offset 128


def _rawmode(im: ImageFile.ImageFile) -> str:
    """The decoder's raw mode, which is the only place Pillow reveals 16-bit RGB(A) files."""
    if not im.tile:
        return ""
    args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _open_header(f: IO[bytes], filename: str) -> Image.Image | None:
    """Parse the header with Pillow's PNG, JPEG, TIFF and BMP openers; None when none accepts the file.

    Like ``Image.open(formats=...)`` minus its decompression-bomb check, which
    :func:`read_image` replaces by its own limit (with the dimensions in the message).
    """
    f.seek(0)
    prefix = f.read(16)
    for fmt in _PIL_FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and not accept(prefix):
            continue
        f.seek(0)
        try:
            return factory(f, filename)
        except (
            SyntaxError,
            IndexError,
            TypeError,
            ValueError,
            KeyError,
            EOFError,
            OSError,
            struct.error,
            ZeroDivisionError,
            OverflowError,
            MemoryError,
            RecursionError,
        ):
            continue
    return None


def _decode_16bit_cv2(data: bytes) -> np.ndarray | None:
    # Pillow decodes 16-bit RGB(A) only down to 8 bits. Decoding from bytes rather than
    # cv2.imread keeps non-ASCII paths working on every platform.
    try:
        arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if arr is None or arr.dtype != np.uint16:
        return None
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    elif not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 2))):
        return None
    return arr


def _split(arr: np.ndarray, maxval: float, path: Path | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W[, C]) integers (or floats already in [0, 1] with ``maxval`` 1) -> (H, W, 3) float32 rgb and optional alpha.

    Values outside ``0..maxval`` are refused, never clipped: clipping would change pixel values silently.
    """
    if arr.size and (arr.min() < 0 or arr.max() > maxval):
        raise CorruptImage(
            f"{path}: pixel values {arr.min()}..{arr.max()} lie outside the 0..{maxval:g} range of a "
            f"{'16' if maxval > 255 else '8'}-bit image, which would be clipped; export it as unsigned 8- or 16-bit",
            value=path,
        )
    x = arr.astype(np.float32) / np.float32(maxval)
    if x.ndim == 2:
        x = x[:, :, None]
    channels = x.shape[2]
    alpha = x[:, :, -1].copy() if channels in (2, 4) else None
    color = x[:, :, :1] if channels in (1, 2) else x[:, :, :3]
    rgb = np.ascontiguousarray(np.broadcast_to(color, (*color.shape[:2], 3)))
    return rgb, alpha


def _to_8bit_mode(im: Image.Image) -> Image.Image:
    """Convert any 8-bit Pillow mode to one of L, LA, RGB, RGBA."""
    mode = im.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if mode == "1":
        return im.convert("L")
    if mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if mode in ("PA", "RGBa", "La"):
        return im.convert("LA" if mode == "La" else "RGBA")
    # CMYK, YCbCr, LAB, HSV, RGBX...: Pillow knows how to get RGB out of them.
    return im.convert("RGB")


@contextlib.contextmanager
def _c_stderr_silenced() -> Iterator[None]:
    """Send what C libraries print on file descriptor 2 to the null device for the block.

    libtiff (inside Pillow) and libpng (inside OpenCV) print their own lines about a
    corrupt file, which would break the one-line error; the :class:`UserError` raised
    instead says it. Process-wide while it lasts, so only decoding runs inside it.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no standard error at all: nothing to silence
        yield
        return
    try:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


#: What a file may hold beyond the pixels of an image at the pixel limit (8 bytes each: 16-bit RGBA, uncompressed):
#: metadata, thumbnails, further pages.
_SLACK_BYTES = 256 << 20


def read_image(path: str | os.PathLike[str] | IO[bytes], min_size: int = 16, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read a PNG, JPEG, TIFF, BMP or DICOM file (decoded by content) as float32 RGB in [0, 1].

    ``path`` is a file's path, or a binary file object (anything whose ``read()`` gives bytes: an open file, the
    ``BytesIO`` of an upload), read from where it stands to its end and named in messages by its ``name`` if it has
    one: a web handler holds bytes, not paths, and writing them to a temporary file only to read them back would cost
    a copy and a file to clean up. The same size limit applies as to a file.

    8- and 16-bit images are supported (DICOM: see :mod:`meddeblur.io.dicom`; TIFFs beyond 8-bit through tifffile,
    planes chunky or separate); the stored orientation (JPEG/PNG EXIF, TIFF tag) is applied, the ICC profile is
    kept in ``icc`` and a PNG colour key (tRNS) becomes alpha; of a multi-frame file (APNG, multi-page TIFF, MPO)
    the first frame is read. Raises :class:`UserError` for a missing, unreadable, non-regular (folder, FIFO,
    device), corrupt, unsupported (GIF, WebP, signed/32-bit/float TIFF, ...), too small or too large file:
    images of more than ``max_pixels`` pixels are refused from their header, before any decoding. Pixel
    values are never clipped: values outside the format's range are refused. The file is read into memory and
    decoded from there, once; a file that changes while it is read is refused, never decoded as a mix of two
    versions (:func:`meddeblur.files.read_whole`).
    """
    for name, value, least in (("min_size", min_size, 1), ("max_pixels", max_pixels, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidOption(f"{name}={value!r}: must be a positive whole number", value=value, option=name)
    limit = 8 * max_pixels + _SLACK_BYTES
    if hasattr(path, "read") and not isinstance(path, (str, os.PathLike)):
        stream_name = _stream_name(path)
        return _read_open(stream_name, _io.BytesIO(_read_stream(path, stream_name, limit)), min_size, max_pixels)
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidOption(
            f"path: expected a file path or a binary file object (with read()), got {type(path).__name__}",
            value=path,
            option="path",
        )
    path = Path(path)
    with open_regular(path) as f:
        data = read_whole(path, f, limit)
    return _read_open(path, _io.BytesIO(data), min_size, max_pixels)


def _stream_name(stream: object) -> Path:
    """What messages call a file object: its file's name (an open file), else its type, e.g. ``<BytesIO>``."""
    name = getattr(stream, "name", None)
    return Path(name) if isinstance(name, (str, os.PathLike)) and os.fspath(name) else Path(f"<{type(stream).__name__}>")


def _read_stream(stream: IO[bytes], name: Path, limit: int) -> bytes:
    """The bytes left in ``stream``, refused past ``limit`` (:class:`TooLarge`) as :func:`read_image` refuses a file."""
    chunks, size = [], 0
    try:
        # Until the end: a raw stream (a socket's, an unbuffered file's) may give fewer bytes than asked for.
        while size <= limit:
            chunk = stream.read(limit + 1 - size)
            if isinstance(chunk, str):
                raise InvalidOption(
                    f"{name}: a text stream, not bytes; open the file in binary mode ('rb')", value=name, option="path"
                )
            if not chunk:  # b"" at the end (None: a non-blocking stream with nothing ready, taken as the end)
                break
            chunks.append(bytes(chunk))
            size += len(chunk)
    except (OSError, ValueError) as exc:  # a stream opened for writing, a closed file, a failing disk
        if isinstance(exc, UserError):
            raise
        raise UserError(
            f"{name}: cannot read ({getattr(exc, 'strerror', None) or exc}); pass a binary file object open for reading",
            value=name,
        ) from None
    if size > limit:
        raise TooLarge(
            f"{name}: more than {limit:,} bytes, more than an image within this tool's pixel limit holds; downscale or "
            "tile it, or export it alone (one page)",
            value=name,
        )
    return b"".join(chunks)


def _read_open(path: Path, f: IO[bytes], min_size: int, max_pixels: int) -> LoadedImage:
    """:func:`read_image` of the file whose bytes ``f`` holds."""
    head = f.read(_HEAD_BYTES)
    if not head:
        raise EmptyFile(f"{path}: empty file (0 bytes), not a readable image; re-export or remove it", value=path)
    if head[128:132] == b"DICM":
        return read_dicom(path, f, min_size, max_pixels)
    # Decoder warnings (odd EXIF, malformed MPO, ...) are not actionable and must not reach stderr.
    with warnings.catch_warnings(), _c_stderr_silenced():
        warnings.simplefilter("ignore")
        try:
            opened = _open_header(f, os.fspath(path))
        except Exception:  # a plugin failing in an unexpected way on a crafted header
            opened = None
        if head.startswith(PNG_SIGNATURE):
            # Pillow refuses PNGs whose text chunks decompress beyond its limit (1 MiB each); such a file
            # is valid, and its pixels do not depend on the text: decode it without the text chunks.
            if opened is None:
                stripped = png_without_text(f, max_pixels)
                if stripped is not None:
                    f, opened = stripped, _open_header(stripped, os.fspath(path))
            else:
                try:
                    with opened as im:
                        return _decode(path, f, im, min_size, max_pixels)
                except UserError as error:
                    stripped = png_without_text(f, max_pixels) if "truncated or corrupt" in str(error) else None
                    if stripped is None:
                        raise
                    f, opened = stripped, _open_header(stripped, os.fspath(path))
        if opened is None and head.startswith((b"II*\x00", b"MM\x00*")):
            # Pillow cannot even open some valid TIFFs (16-bit grey + alpha, floating-point RGB): tifffile can say.
            fallback = decode_unopened_tiff(path, f, min_size, max_pixels)
            if fallback is not None:
                return _finish(path, None, "TIFF", *fallback)
        if opened is None:
            kind = unsupported_kind(head)
            if kind is not None:
                raise UnsupportedFormat(
                    f"{path}: is {kind}, which meddeblur does not read; convert it to PNG or TIFF", value=path
                )
            if head.startswith(SIGNATURES):
                # e.g. a TIFF cut short loses the directory at its end, so Pillow cannot identify it.
                raise CorruptImage(f"{path}: cannot decode image (truncated or corrupt); re-export or remove it", value=path)
            raise UnsupportedFormat(
                f"{path}: not a readable image (PNG/JPEG/TIFF/BMP/DICOM expected); convert it or remove it", value=path
            )
        with opened as im:
            return _decode(path, f, im, min_size, max_pixels)


def _decode(path: Path, f: IO[bytes], im: ImageFile.ImageFile, min_size: int, max_pixels: int) -> LoadedImage:
    image = _decode_pixels(path, f, im, min_size, max_pixels)
    if image.format == "PNG":
        image.png_colour = png_colour_chunks(f)
    return image


def _decode_pixels(path: Path, f: IO[bytes], im: ImageFile.ImageFile, min_size: int, max_pixels: int) -> LoadedImage:
    # Cameras write multi-picture JPEGs, which Pillow's JPEG opener reports as MPO.
    fmt = "JPEG" if im.format == "MPO" else str(im.format)
    width, height = im.size
    check_size(path, width, height, min_size, max_pixels)
    try:
        mode, rawmode = im.mode, _rawmode(im)
        if fmt == "TIFF" and isinstance(im, TiffImagePlugin.TiffImageFile) and needs_tifffile(im):  # a TIFF is a TiffImageFile
            arr, maxval, grayscale, depth = decode_tiff(path, f)
            # The pixels are decoded by tifffile; Pillow's header still gives orientation and ICC profile.
            return _finish(path, im, fmt, arr, maxval, grayscale, depth)
        if mode == "F":
            raise UnsupportedFormat(
                f"{path}: 32-bit floating-point images are not supported (no fixed value range to map back "
                "to); export as 8- or 16-bit unsigned integers",
                value=path,
            )
        # The header only was parsed so far; a truncated or corrupt body fails here.
        im.load()
        if mode in _GRAY16_MODES:
            return _finish(path, im, fmt, np.asarray(im), 65535.0, True, 16)
        if ";16" not in rawmode:
            converted = _to_8bit_mode(im)
            return _finish(path, im, fmt, np.asarray(converted), 255.0, converted.mode in ("L", "LA"), 8)
        f.seek(0)
        pixels = _decode_16bit_cv2(f.read())
        if pixels is None or pixels.shape[:2] != (height, width):
            raise CorruptImage(f"{path}: cannot decode 16-bit image (truncated or corrupt); re-export or remove it", value=path)
        # Pillow reports 16-bit grey+alpha PNGs as RGBA; the raw mode still says LA.
        return _finish(path, im, fmt, pixels, 65535.0, rawmode.startswith(("LA", "L;")), 16)
    except UserError:
        raise
    except MemoryError:
        raise CorruptImage(
            f"{path}: ran out of memory decoding this {width}x{height} image (corrupt, or too large for this "
            "machine); re-export or downscale it",
            value=path,
        ) from None
    except Exception:  # Pillow raises OSError, SyntaxError, ValueError, zlib/struct errors...
        raise CorruptImage(f"{path}: cannot decode image (truncated or corrupt); re-export or remove it", value=path) from None


def _orientation(im: Image.Image) -> int:
    """The EXIF/TIFF Orientation (1..8) of JPEG (APP1), PNG (eXIf) and TIFF (tag 274) files; 1 when absent."""
    value = im.getexif().get(0x0112, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an (H, W[, C]) array stored with EXIF ``orientation`` upright (what Pillow's ``exif_transpose`` does)."""
    turns = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    turn = turns.get(orientation)
    return np.ascontiguousarray(turn(arr)) if turn else arr


def _finish(
    path: Path,
    im: Image.Image | None,
    fmt: str,
    arr: np.ndarray,
    maxval: float,
    grayscale: bool,
    depth: int,
    orientation: int = 1,
    icc: bytes | None = None,
) -> LoadedImage:
    """Integer pixels (H, W[, C]) → LoadedImage: tRNS colour key as alpha, orientation applied, ICC profile kept.

    With a Pillow image ``im``, orientation and ICC profile come from it; else from the arguments.
    """
    if im is not None:
        alpha_key = colour_key_alpha(im, arr, maxval)
        if alpha_key is not None:
            arr = np.dstack([arr, alpha_key])
        orientation, icc = _orientation(im), im.info.get("icc_profile") or None
    arr = orient(arr, orientation)
    rgb, alpha = _split(arr, maxval, path)
    height, width = arr.shape[:2]
    return _checked(path, LoadedImage(rgb, alpha, grayscale, depth, fmt, path, icc=icc), (width, height))


def _checked(path: Path, image: LoadedImage, size: tuple[int, int]) -> LoadedImage:
    """The decoded arrays agree with the header: (H, W, 3) and (H, W) float32."""
    width, height = size
    ok = image.rgb.shape == (height, width, 3) and image.rgb.dtype == np.float32
    if image.alpha is not None:
        ok = ok and image.alpha.shape == (height, width) and image.alpha.dtype == np.float32
    if not ok:
        raise CorruptImage(f"{path}: cannot decode image (inconsistent pixel data); re-export or remove it", value=path)
    return image


def read_rgb(path: str | os.PathLike[str], min_size: int = 16) -> np.ndarray:
    """Read an image as (H, W, 3) float32 RGB in [0, 1], discarding alpha."""
    return read_image(path, min_size=min_size).rgb
