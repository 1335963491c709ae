"""Reading and writing images, and atomic file output.

Images are float32 arrays in [0, 1] with shape (H, W, 3). Decoding goes by file
content, not by extension. Every file the package writes goes through
:func:`atomic_write` or :func:`atomic_path`, so an interrupted run never leaves a
half-written output behind.
"""

from __future__ import annotations

import contextlib
import errno
import io as _io
import os
import re
import secrets
import stat
import struct
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import cv2
import numpy as np
from PIL import BmpImagePlugin, Image, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, features

from meddeblur.errors import CorruptImage, EmptyFile, NotFound, TooLarge, TooSmall, UnsupportedFormat, UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "LoadedImage",
    "check_regular_file",
    "check_replaceable",
    "is_own_output",
    "remove_stale_temporaries",
    "read_image",
    "read_rgb",
    "write_image",
    "atomic_write",
    "atomic_path",
    "list_images",
    "resize_area",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")

_SUFFIX_FORMAT = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
_FORMAT_ALIASES = {"PNG": "PNG", "JPEG": "JPEG", "JPG": "JPEG", "TIFF": "TIFF", "TIF": "TIFF", "BMP": "BMP"}
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
# Importing the plugins registers their openers in Image.OPEN, which _open_header uses.
assert all(fmt in Image.OPEN for fmt in _PIL_FORMATS), (BmpImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin)

#: Images with more pixels are refused from their header, before decoding: 100 megapixels
#: already take 1.2 GB as float32 RGB, and a crafted header can claim 10^10.
MAX_PIXELS = 100_000_000
_GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass
class LoadedImage:
    """A decoded image plus what is needed to write a result back the same way."""

    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]; grayscale replicated to 3 channels
    alpha: np.ndarray | None  # (H, W) float32 in [0, 1], or None
    grayscale: bool
    bit_depth: int  # 8 or 16
    format: str  # "PNG", "JPEG", "TIFF", "BMP" or "DICOM"
    path: Path
    source: Any = None  # what writing back needs beyond pixels (DICOM: a meddeblur.dicom.DicomSource)
    icc: bytes | None = None  # the embedded ICC colour profile, copied to PNG, JPEG and TIFF outputs


# --------------------------------------------------------------------------- reading


def _rawmode(im: Image.Image) -> str:
    """The decoder's raw mode, which is the only place Pillow reveals 16-bit RGB(A) files."""
    if not im.tile:
        return ""
    args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")

# Formats people do have lying around that are not decoded here: each gets a message saying so.
_UNSUPPORTED_SIGNATURES = (
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 image"),
    (b"\xffO\xffQ", "a JPEG 2000 image"),
    (b"II+\x00", "a BigTIFF image"),
    (b"MM\x00+", "a BigTIFF image"),
    (b"%PDF", "a PDF document"),
    (b"8BPS", "a Photoshop document"),
    (b"\x93NUMPY", "a NumPy array"),
)
_HEAD_BYTES = 132  # enough for the DICOM marker at offset 128


def _unsupported_kind(head: bytes) -> str | None:
    """What a file holding an image format this package does not read is, from its first bytes."""
    for signature, kind in _UNSUPPORTED_SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"):
        return "a HEIF/AVIF image"
    return None


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular(path: Path, mode: int) -> UserError:
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    if kind == "a folder":
        return UserError(f"{path}: is a folder, not an image file; give an image file", value=path)
    return UserError(f"{path}: is {kind}, not a regular file; give an image file", value=path)


def _open_error(path: Path, exc: OSError) -> UserError:
    """The message for a file that cannot be opened (or stat-ed) for reading."""
    if isinstance(exc, PermissionError):
        return UserError(f"{path}: permission denied; make the file readable (chmod +r) or copy it somewhere readable", value=path)
    if exc.errno == errno.ELOOP:
        return UserError(f"{path}: symbolic link loop; fix or remove the link", value=path)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return NotFound(f"{path}: broken symbolic link (its target {target} does not exist); fix or remove the link", value=path)
        return NotFound(f"{path}: no such file; check the path", value=path)
    return UserError(f"{path}: cannot open ({exc.strerror or exc}); check the file", value=path)


def check_regular_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path` if it is (a link to) a regular file; else a :class:`UserError` saying what it is.

    Never opens the file, so a FIFO or device is refused without blocking on it.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise _open_error(path, exc) from None
    if not stat.S_ISREG(mode):
        raise _not_regular(path, mode)
    return path


def _open_regular(path: Path) -> IO[bytes]:
    """Open a regular file for reading without ever blocking on a FIFO or device swapped in meanwhile."""
    check_regular_file(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


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
        except (SyntaxError, IndexError, TypeError, ValueError, KeyError, EOFError, OSError, struct.error,
                ZeroDivisionError, OverflowError, MemoryError, RecursionError):
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
        raise CorruptImage(f"{path}: pixel values {arr.min()}..{arr.max()} lie outside the 0..{maxval:g} range of a "
                        f"{'16' if maxval > 255 else '8'}-bit image, which would be clipped; export it as unsigned 8- or 16-bit", value=path)
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


def read_image(path: str | os.PathLike[str], min_size: int = 16, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read a PNG, JPEG, TIFF, BMP or DICOM file (decoded by content) as float32 RGB in [0, 1].

    8- and 16-bit images are supported (DICOM: see :mod:`meddeblur.dicom`; TIFFs beyond 8-bit through tifffile,
    planes chunky or separate); the stored orientation (JPEG/PNG EXIF, TIFF tag) is applied, the ICC profile is
    kept in ``icc`` and a PNG colour key (tRNS) becomes alpha; of a multi-frame file (APNG, multi-page TIFF, MPO)
    the first frame is read. Raises :class:`UserError` for a missing, unreadable, non-regular (folder, FIFO,
    device), corrupt, unsupported (GIF, WebP, signed/32-bit/float TIFF, ...), too small or too large file:
    images of more than ``max_pixels`` pixels are refused from their header, before any decoding. Pixel
    values are never clipped: values outside the format's range are refused.
    """
    path = Path(path)
    with _open_regular(path) as f:
        head = f.read(_HEAD_BYTES)
        if not head:
            raise EmptyFile(f"{path}: empty file (0 bytes), not a readable image; re-export or remove it", value=path)
        if head[128:132] == b"DICM":
            from meddeblur.dicom import read_dicom  # pydicom is imported only for DICOM files

            return read_dicom(path, f, min_size, max_pixels)
        # Decoder warnings (odd EXIF, malformed MPO, ...) are not actionable and must not reach stderr.
        with warnings.catch_warnings(), _c_stderr_silenced():
            warnings.simplefilter("ignore")
            try:
                opened = _open_header(f, os.fspath(path))
            except Exception:  # a plugin failing in an unexpected way on a crafted header
                opened = None
            if head.startswith(_PNG_SIGNATURE):
                # Pillow refuses PNGs whose text chunks decompress beyond its limit (1 MiB each); such a file
                # is valid, and its pixels do not depend on the text: decode it without the text chunks.
                if opened is None:
                    stripped = _png_without_text(f, max_pixels)
                    if stripped is not None:
                        f, opened = stripped, _open_header(stripped, os.fspath(path))
                else:
                    try:
                        with opened as im:
                            return _decode(path, f, im, min_size, max_pixels)
                    except UserError as error:
                        stripped = _png_without_text(f, max_pixels) if "truncated or corrupt" in str(error) else None
                        if stripped is None:
                            raise
                        f, opened = stripped, _open_header(stripped, os.fspath(path))
            if opened is None and head.startswith((b"II*\x00", b"MM\x00*")):
                # Pillow cannot even open some valid TIFFs (16-bit grey + alpha, floating-point RGB): tifffile can say.
                fallback = _tiff_without_pillow(path, f, min_size, max_pixels)
                if fallback is not None:
                    return fallback
            if opened is None:
                kind = _unsupported_kind(head)
                if kind is not None:
                    raise UnsupportedFormat(f"{path}: is {kind}, which meddeblur does not read; convert it to PNG or TIFF", value=path)
                if head.startswith(_SIGNATURES):
                    # e.g. a TIFF cut short loses the directory at its end, so Pillow cannot identify it.
                    raise CorruptImage(f"{path}: cannot decode image (truncated or corrupt); re-export or remove it", value=path)
                raise UnsupportedFormat(f"{path}: not a readable image (PNG/JPEG/TIFF/BMP/DICOM expected); convert it or remove it", value=path)
            with opened as im:
                return _decode(path, f, im, min_size, max_pixels)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def _png_without_text(f: IO[bytes], max_pixels: int) -> IO[bytes] | None:
    """The PNG in ``f`` minus its tEXt/zTXt/iTXt chunks, in memory; None if it has none or is not well formed.

    Text chunks are skipped without being read. What is copied is bounded by what an
    honest PNG of the size in its header can hold (8 bytes per pixel plus 16 MiB).
    """
    f.seek(8)
    ihdr = f.read(25)
    if len(ihdr) < 25 or ihdr[4:8] != b"IHDR":
        return None
    width, height = struct.unpack(">II", ihdr[8:16])
    if width * height > max_pixels:
        return None  # refused from the header anyway
    budget = 8 * width * height + (16 << 20)
    out = bytearray(_PNG_SIGNATURE) + ihdr
    dropped = False
    while True:
        header = f.read(8)
        if len(header) < 8:
            return None
        (length,) = struct.unpack(">I", header[:4])
        kind = header[4:8]
        if kind in _PNG_TEXT_CHUNKS:
            f.seek(length + 4, os.SEEK_CUR)
            dropped = True
            continue
        if len(out) + length + 12 > budget:
            return None
        body = f.read(length + 4)
        if len(body) < length + 4:
            return None
        out += header + body
        if kind == b"IEND":
            break
    return _io.BytesIO(bytes(out)) if dropped else None


def _decode(path: Path, f: IO[bytes], im: Image.Image, min_size: int, max_pixels: int) -> LoadedImage:
    # Cameras write multi-picture JPEGs, which Pillow's JPEG opener reports as MPO.
    fmt = "JPEG" if im.format == "MPO" else str(im.format)
    width, height = im.size
    _check_size(path, width, height, min_size, max_pixels)
    try:
        mode, rawmode = im.mode, _rawmode(im)
        if fmt == "TIFF" and _needs_tifffile(im):
            arr, maxval, grayscale, depth = _decode_tiff(path, f, width, height)
            # The pixels are decoded by tifffile; Pillow's header still gives orientation and ICC profile.
            return _finish(path, im, fmt, arr, maxval, grayscale, depth)
        if mode == "F":
            raise UnsupportedFormat(f"{path}: 32-bit floating-point images are not supported (no fixed value range to map back "
                            "to); export as 8- or 16-bit unsigned integers", value=path)
        # The header only was parsed so far; a truncated or corrupt body fails here.
        im.load()
        if mode in _GRAY16_MODES:
            return _finish(path, im, fmt, np.asarray(im), 65535.0, True, 16)
        if ";16" not in rawmode:
            converted = _to_8bit_mode(im)
            return _finish(path, im, fmt, np.asarray(converted), 255.0, converted.mode in ("L", "LA"), 8)
        f.seek(0)
        arr = _decode_16bit_cv2(f.read())
        if arr is None or arr.shape[:2] != (height, width):
            raise CorruptImage(f"{path}: cannot decode 16-bit image (truncated or corrupt); re-export or remove it", value=path)
        # Pillow reports 16-bit grey+alpha PNGs as RGBA; the raw mode still says LA.
        return _finish(path, im, fmt, arr, 65535.0, rawmode.startswith(("LA", "L;")), 16)
    except UserError:
        raise
    except MemoryError:
        raise CorruptImage(f"{path}: ran out of memory decoding this {width}x{height} image (corrupt, or too large for this "
                        "machine); re-export or downscale it", value=path) from None
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


def _colour_key_alpha(im: Image.Image, arr: np.ndarray, maxval: float) -> np.ndarray | None:
    """A PNG tRNS colour key (grey or RGB, not palette) as an alpha channel: 0 where the pixel equals the key."""
    key = im.info.get("transparency")
    if im.format != "PNG" or key is None or isinstance(key, bytes) or arr.ndim == 3 and arr.shape[2] in (2, 4):
        return None
    if arr.ndim == 2:
        if not isinstance(key, int):
            return None
        opaque = arr != key
    else:
        if not (isinstance(key, tuple) and len(key) == 3):
            return None
        opaque = (arr[:, :, :3] != np.asarray(key, dtype=arr.dtype)).any(axis=2)
    return (opaque * maxval).astype(arr.dtype)


def _finish(path: Path, im: Image.Image | None, fmt: str, arr: np.ndarray, maxval: float, grayscale: bool, depth: int,
            orientation: int = 1, icc: bytes | None = None) -> LoadedImage:
    """Integer pixels (H, W[, C]) → LoadedImage: tRNS colour key as alpha, orientation applied, ICC profile kept.

    With a Pillow image ``im``, orientation and ICC profile come from it; else from the arguments.
    """
    if im is not None:
        alpha_key = _colour_key_alpha(im, arr, maxval)
        if alpha_key is not None:
            arr = np.dstack([arr, alpha_key])
        orientation, icc = _orientation(im), im.info.get("icc_profile") or None
    arr = orient(arr, orientation)
    rgb, alpha = _split(arr, maxval, path)
    height, width = arr.shape[:2]
    return _checked(path, LoadedImage(rgb, alpha, grayscale, depth, fmt, path, icc=icc), (width, height))


# --------------------------------------------------------------------------- TIFF beyond 8-bit (tifffile)


def _needs_tifffile(im: Image.Image) -> bool:
    """TIFFs Pillow would decode wrongly or not at all: anything but unsigned 1- or 8-bit samples."""
    bits = im.tag_v2.get(258, (1,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    sample_format = im.tag_v2.get(339, (1,))
    sample_format = sample_format if isinstance(sample_format, tuple) else (sample_format,)
    return any(b not in (1, 8) for b in bits) or any(s != 1 for s in sample_format)


_TIFF_PHOTOMETRIC = {0: "MINISWHITE", 1: "MINISBLACK", 2: "RGB", 3: "PALETTE", 4: "MASK", 5: "SEPARATED", 6: "YCBCR", 8: "CIELAB"}


@contextlib.contextmanager
def _first_tiff_page(path: Path, f: IO[bytes]) -> Iterator[Any]:
    """tifffile's view of the first page of the TIFF in ``f`` (its log lines silenced: the UserError says it)."""
    import logging

    import tifffile

    logger = logging.getLogger("tifffile")
    disabled, logger.disabled = logger.disabled, True
    try:
        f.seek(0)
        with tifffile.TiffFile(f, name=path.name or "image.tif") as tif:
            yield tif.pages.first
    finally:
        logger.disabled = disabled


def _check_size(path: Path, width: int, height: int, min_size: int, max_pixels: int) -> None:
    """Refuse, from the header, an image smaller than ``min_size`` or with more than ``max_pixels`` pixels."""
    if width < min_size or height < min_size:
        raise TooSmall(f"{path}: image is {width}x{height}, smaller than {min_size} px; use a larger image", value=path)
    if width * height > max_pixels:
        raise TooLarge(
            f"{path}: image is {width}x{height} ({width * height:,} pixels), more than the {max_pixels:,} "
            "this tool decodes; downscale or tile it first", value=path)


def _tiff_without_pillow(path: Path, f: IO[bytes], min_size: int, max_pixels: int) -> LoadedImage | None:
    """A TIFF Pillow cannot open, decoded (or refused by name) with tifffile; None if tifffile cannot parse it either."""
    try:
        with _first_tiff_page(path, f) as page:
            width, height = int(page.imagewidth), int(page.imagelength)
            orientation = page.tags.valueof(274, 1)
            icc = page.tags.valueof(34675)
    except Exception:
        return None
    _check_size(path, width, height, min_size, max_pixels)
    try:
        arr, maxval, grayscale, depth = _decode_tiff(path, f, width, height)
    except UserError:
        raise
    except MemoryError:
        raise CorruptImage(f"{path}: ran out of memory decoding this {width}x{height} image; re-export or downscale it", value=path) from None
    except Exception:
        raise CorruptImage(f"{path}: cannot decode image (truncated or corrupt); re-export or remove it", value=path) from None
    orientation = int(orientation) if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
    return _finish(path, None, "TIFF", arr, maxval, grayscale, depth, orientation, bytes(icc) if icc else None)


def _decode_tiff(path: Path, f: IO[bytes], width: int, height: int) -> tuple[np.ndarray, float, bool, int]:
    """Decode the first page of a 16-bit (or otherwise non-8-bit) TIFF with tifffile: (pixels, max value, grey, bits).

    Chunky and planar ("separate") layouts, grey, grey+alpha, RGB(A) and CMYK(A); signed,
    32-bit and floating-point samples, and bit depths other than 8 and 16, are refused by name.
    """
    with _first_tiff_page(path, f) as page:
        bits = int(page.bitspersample)
        kind = np.dtype(page.dtype).kind if page.dtype is not None else "?"
        if kind == "f":
            raise UnsupportedFormat(f"{path}: {bits}-bit floating-point TIFF is not supported (no fixed value range to map back "
                            "to); export it as 8- or 16-bit unsigned integers", value=path)
        if kind == "i":
            raise UnsupportedFormat(f"{path}: signed {bits}-bit integer TIFF is not supported (negative values would be lost); "
                            "export it as unsigned 8- or 16-bit", value=path)
        if kind != "u" or bits not in (8, 16):
            raise UnsupportedFormat(f"{path}: {bits}-bit TIFF is not supported (8- and 16-bit unsigned samples are kept exactly); "
                            "export it as 8- or 16-bit", value=path)
        photometric = int(page.photometric)
        extras = len(page.extrasamples or ())
        colours = int(page.samplesperpixel) - extras
        allowed = {0: 1, 1: 1, 2: 3, 5: 4}
        if allowed.get(photometric) != colours or extras > 1:
            name = _TIFF_PHOTOMETRIC.get(photometric, str(photometric))
            raise UnsupportedFormat(f"{path}: {bits}-bit TIFF with photometric {name}, {colours} colour and {extras} extra "
                            "channel(s) is not supported (grey, RGB or CMYK, each with optional alpha, are); convert it to RGB", value=path)
        arr = page.asarray()
        axes = page.axes
        associated = extras == 1 and int(page.extrasamples[0]) == 1
    if axes == "SYX":
        arr = np.moveaxis(arr, 0, -1)
    elif axes not in ("YXS", "YX"):
        raise UnsupportedFormat(f"{path}: TIFF page layout {axes} is not supported; export it as a plain 2-D image", value=path)
    if arr.shape[:2] != (height, width):
        raise CorruptImage(f"{path}: cannot decode TIFF (pixel data does not match the header); re-export or remove it", value=path)
    maxval = float(2 ** bits - 1)
    if arr.dtype != (np.uint16 if bits == 16 else np.uint8):
        raise CorruptImage(f"{path}: cannot decode TIFF ({arr.dtype} samples for {bits} bits); re-export or remove it", value=path)
    if photometric == 0:  # MINISWHITE: 0 is white
        top = np.iinfo(arr.dtype).max
        arr = top - arr if arr.ndim == 2 else np.dstack([top - arr[:, :, 0], arr[:, :, 1:]])
    if photometric == 5 or associated:
        x = arr.astype(np.float32) / np.float32(maxval)
        if associated:  # premultiplied colour → straight colour, as Pillow does for 8-bit RGBa
            a = x[..., -1:]
            x[..., :-1] = np.where(a > 0, x[..., :-1] / np.maximum(a, np.float32(1e-12)), 0)
        if photometric == 5:  # CMYK → RGB the way Pillow converts 8-bit CMYK: (1 − C)(1 − K)
            cmy, k = x[..., :3], x[..., 3:4]
            x = np.concatenate([(1 - cmy) * (1 - k), x[..., 4:]], axis=-1)
        return np.clip(x, 0.0, 1.0), 1.0, False, bits
    return arr, maxval, photometric in (0, 1), bits


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


# --------------------------------------------------------------------------- atomic output


def _temp_name(path: Path) -> Path:
    # Hidden (so list_images skips it), unique, naming the writing process (so a later run can tell
    # a leftover from a kill from another process's work in progress), and ending in the real suffix
    # so that libraries choosing an encoder by extension pick the right one.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}{path.suffix}")


_TEMP_PATTERN = re.compile(r"\..+\.tmp-(?:(?P<pid>\d+)-)?[0-9a-f]{12}(?:\.[^.]*)?", re.ASCII | re.DOTALL)
#: A temporary file older than this is a leftover even if its process id is in use again (ids are recycled).
STALE_TEMP_SECONDS = 3600


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or cannot tell: keep its file
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete this tool's own temporary files left in ``folder`` by a killed run (``SIGKILL``, power loss).

    Only regular files named like :func:`_temp_name`'s are considered, and only those whose
    writing process no longer exists, or that are older than :data:`STALE_TEMP_SECONDS`; a
    concurrent run's file in progress is left alone. Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_PATTERN.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        pid = match.group("pid")
        dead = pid is not None and int(pid) != os.getpid() and not _process_alive(int(pid))
        if dead or now - info.st_mtime > STALE_TEMP_SECONDS:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


#: Errors of the device written to rather than of the program: reported naming the file.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def _write_error(path: Path, exc: OSError) -> UserError:
    hint = "free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else "check the disk"
    return UserError(f"{path}: cannot write ({exc.strerror or exc}); {hint} or choose another output path; nothing was left half-written")


def check_creatable_folder(folder: str | os.PathLike[str], option: str) -> None:
    """UserError unless ``folder`` exists as a folder or can be created (no file in the way of its path)."""
    folder = Path(folder)
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{folder}: cannot create this folder, {parent} is a file; choose another {option}")


def is_own_output(path: str | os.PathLike[str]) -> bool:
    """True if the existing file ``path`` was written by meddeblur: an image (or BMP sidecar) carrying its
    provenance record, an assess CSV, a synth manifest or an ONNX export (see the README's overwrite rule)."""
    from meddeblur.provenance import is_own_file

    return is_own_file(path)


def check_replaceable(path: str | os.PathLike[str], overwrite: bool, option: str = "output path") -> None:
    """The overwrite rule: UserError if ``path`` exists, is not meddeblur's own earlier output and ``overwrite`` is off."""
    path = Path(path)
    if overwrite or not os.path.lexists(path) or path.is_dir():
        return
    if os.path.islink(path) or not is_own_output(path):
        raise UserError(f"{path}: exists and was not written by meddeblur; move it away, choose another {option}, "
                        "or pass --overwrite to replace it")


def _prepare_parent(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name for the output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(
            f"{path}: cannot create folder {path.parent}, a file is in the way; choose another output path"
        ) from None
    except PermissionError:
        raise UserError(
            f"{path}: permission denied creating {path.parent}; choose another output path"
        ) from None
    if not path.parent.is_dir():
        raise UserError(f"{path}: {path.parent} is not a folder; choose another output path")


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible (nor needed) on every platform.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc}); choose another output path") from None
    _fsync_dir(path.parent)


def _remove_quietly(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        tmp.unlink()


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    mode: str = "wb",
    *,
    encoding: str | None = None,
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; it replaces ``path`` only if the block succeeds.

    Parent folders are created. On an exception the temporary file is removed and
    ``path`` is left untouched. Text modes default to UTF-8.
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write only supports write modes, got {mode!r}")
    path = Path(path)
    _prepare_parent(path)
    tmp = _temp_name(path)
    binary = "b" in mode
    try:
        # os.open with 0o666 honours the umask, unlike tempfile.mkstemp's 0o600.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc}); choose another output path") from None
    try:
        f = os.fdopen(fd, mode, encoding=None if binary else (encoding or "utf-8"), newline=newline)
    except BaseException:
        os.close(fd)
        _remove_quietly(tmp)
        raise
    try:
        with f:
            yield f
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
        _commit(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        if exc.errno in _WRITE_ERRNOS:
            raise _write_error(path, exc) from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for libraries that write by file name.

    The temporary name keeps ``path``'s suffix (e.g. ``torch.save``, ``savefig``).
    If the block succeeds the file is synced and moved onto ``path``; otherwise it
    is removed and ``path`` is left untouched.
    """
    path = Path(path)
    _prepare_parent(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise RuntimeError(f"atomic_path: nothing was written to {tmp} for {path}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # Some writers (safetensors) create 0600 files; give the result the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _commit(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        if exc.errno in _WRITE_ERRNOS:
            raise _write_error(path, exc) from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise


# --------------------------------------------------------------------------- writing


def _resolve_format(path: Path, format: str | None) -> str:
    if format is not None:
        fmt = _FORMAT_ALIASES.get(format.upper())
        if fmt is None:
            raise ValueError(f"unsupported image format {format!r}; use PNG, JPEG, TIFF or BMP")
        return fmt
    fmt = _SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"{path}: unknown image extension {path.suffix!r}; use .png, .jpg, .tif or .bmp"
        )
    return fmt


def _quantize(x: np.ndarray, maxval: int, dtype: type) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(x, 0.0, 1.0) * maxval).astype(dtype)


def write_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    grayscale: bool = False,
    bit_depth: int = 8,
    format: str | None = None,
    jpeg_quality: int = 95,
    provenance: dict[str, Any] | None = None,
    icc: bytes | None = None,
) -> Path:
    """Write a float RGB image in [0, 1] atomically and return the path.

    ``rgb`` is (H, W, 3) (or (H, W) grey); values are clipped and rounded.
    ``grayscale=True`` stores one channel, the mean of R, G and B. ``format`` is
    taken from the suffix when None. 16 bits are written for PNG and TIFF only;
    JPEG and BMP are always 8-bit and drop the alpha channel. A 16-bit grey PNG
    with alpha is stored as RGBA because OpenCV cannot encode two channels (a TIFF stays grey + alpha).
    ``icc`` (an ICC profile) is embedded in PNG, JPEG and TIFF files; BMP carries no metadata.
    ``provenance`` (a :func:`meddeblur.provenance.make_record`) goes into the file's
    metadata, or for BMP into a ``NAME.bmp.json`` sidecar.
    """
    path = Path(path)
    fmt = _resolve_format(path, format)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    x = np.asarray(rgb)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2) if not grayscale else x
    elif x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"rgb must have shape (H, W, 3) or (H, W), got {np.shape(rgb)}")
    if grayscale and x.ndim == 3:
        x = x.astype(np.float32).mean(axis=2)
    if fmt in ("JPEG", "BMP"):
        # JPEG has no alpha and Pillow's 32-bit BMPs do not read back with alpha.
        bit_depth, alpha = 8, None
    if fmt == "BMP":
        icc = None
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.ndim == 3 and alpha.shape[2] == 1:
            alpha = alpha[:, :, 0]
        if alpha.shape != x.shape[:2]:
            raise ValueError(f"alpha must have shape {x.shape[:2]}, got {alpha.shape}")
        if x.ndim == 2 and bit_depth == 16 and fmt == "PNG":
            x = np.repeat(x[:, :, None], 3, axis=2)
        x = np.dstack([x, alpha])

    if bit_depth == 16 and fmt == "TIFF":
        return _write_encoded(path, _encode_tiff16(_quantize(x, 65535, np.uint16), alpha is not None, icc), fmt, provenance)
    if bit_depth == 16:
        arr = _quantize(x, 65535, np.uint16)
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        ok, buf = cv2.imencode(".png", arr)
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode {path} as 16-bit {fmt}")
        data = buf.tobytes()
        if icc:
            from meddeblur.provenance import add_png_chunk

            data = add_png_chunk(data, b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc))
        return _write_encoded(path, data, fmt, provenance)

    im = Image.fromarray(_quantize(x, 255, np.uint8))  # mode from shape: L, LA, RGB, RGBA
    options: dict[str, Any] = {"icc_profile": icc} if icc else {}
    if fmt == "JPEG":
        # 4:4:4 chroma keeps the fine colour detail deblurring is judged on.
        options.update(quality=int(jpeg_quality), subsampling=0)
    elif fmt == "TIFF" and features.check("libtiff"):
        options["compression"] = "tiff_lzw"
    buffer = _io.BytesIO()
    im.save(buffer, format=fmt, **options)
    return _write_encoded(path, buffer.getvalue(), fmt, provenance)


def _encode_tiff16(arr: np.ndarray, has_alpha: bool, icc: bytes | None) -> bytes:
    """A 16-bit TIFF (tifffile, deflate): grey, grey + alpha, RGB or RGBA, with the ICC profile if any."""
    import tifffile

    colour = arr.ndim == 3 and arr.shape[2] >= 3
    buffer = _io.BytesIO()
    tifffile.imwrite(buffer, arr, photometric="rgb" if colour else "minisblack", compression="zlib",
                     extrasamples=("unassalpha",) if has_alpha else None, iccprofile=icc, metadata=None)
    return buffer.getvalue()


def _write_encoded(path: Path, data: bytes, fmt: str, provenance: dict[str, Any] | None) -> Path:
    if provenance is not None:
        from meddeblur.provenance import embed

        data = embed(data, fmt, provenance)
    with atomic_write(path) as f:
        f.write(data)
    if provenance is not None and fmt == "BMP":  # no metadata field in the format: a sidecar, written after the image
        from meddeblur.provenance import sidecar_path, to_json

        try:
            with atomic_write(sidecar_path(path), "w") as fh:
                fh.write(to_json(provenance) + "\n")
        except BaseException:
            _remove_quietly(path)  # an image must not go out without its provenance
            raise
    return path


# --------------------------------------------------------------------------- folders and resizing


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Entries with an image extension directly inside ``folder`` (hidden ones skipped), sorted by name.

    Sub-folders are skipped (the listing is not recursive), but anything else named
    like an image is listed, broken links, FIFOs and all, so that reading it fails
    with a message naming it rather than the image silently going missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        if not folder.exists():
            raise NotFound(f"{folder}: no such folder; give a folder of images", value=folder)
        raise UserError(f"{folder}: not a folder; give a folder of images", value=folder)
    try:
        entries = list(folder.iterdir())
    except PermissionError:
        raise UserError(f"{folder}: permission denied listing the folder; make it readable") from None
    except OSError as exc:
        raise UserError(f"{folder}: cannot list the folder ({exc.strerror or exc}); check it") from None
    # Hidden files include our own in-progress ".name.tmp-*" outputs.
    candidates = (p for p in entries if not p.name.startswith("."))
    files = [p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()]
    files.sort(key=lambda p: p.name)
    if not files:
        raise NotFound(f"{folder}: no images (png/jpg/jpeg/tif/tiff/bmp/dcm) found; check the folder", value=folder)
    return files


def resize_area(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W[, C]) float image to ``size`` = (height, width), float32 in [0, 1].

    Uses area averaging when shrinking (no aliasing) and bicubic when enlarging.
    """
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (height, width), got {size}")
    x = np.asarray(rgb, dtype=np.float32)
    in_h, in_w = x.shape[:2]
    if (in_h, in_w) == (h, w):
        return np.clip(x, 0.0, 1.0)
    interp = cv2.INTER_AREA if h <= in_h and w <= in_w else cv2.INTER_CUBIC
    out = cv2.resize(x, (w, h), interpolation=interp)  # cv2 takes (width, height)
    if x.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[:, :, None]
    # Bicubic overshoots at edges.
    return np.clip(out, 0.0, 1.0, out=out)
