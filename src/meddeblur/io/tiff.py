"""TIFFs beyond what Pillow handles (16-bit, planar, CMYK, premultiplied alpha), read and written with tifffile.

Pillow decodes only unsigned 1- and 8-bit TIFF samples correctly; everything else goes through here, and what
cannot be mapped back to a fixed value range (signed, 32-bit, floating point) is refused by name.
"""

from __future__ import annotations

import contextlib
import io as _io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import TiffImagePlugin

from meddeblur.errors import CorruptImage, UnsupportedFormat, UserError
from meddeblur.io.formats import check_size

__all__ = ["needs_tifffile", "decode_tiff", "decode_unopened_tiff", "encode_tiff16"]


def needs_tifffile(im: TiffImagePlugin.TiffImageFile) -> bool:
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


def decode_unopened_tiff(
    path: Path, f: IO[bytes], min_size: int, max_pixels: int
) -> tuple[np.ndarray, float, bool, int, int, bytes | None] | None:
    """A TIFF Pillow cannot open, decoded (or refused by name) with tifffile: (pixels, max value, grey, bits,
    orientation, ICC profile); None if tifffile cannot parse it either."""
    try:
        with _first_tiff_page(path, f) as page:
            width, height = int(page.imagewidth), int(page.imagelength)
            orientation = page.tags.valueof(274, 1)
            icc = page.tags.valueof(34675)
    except Exception:
        return None
    check_size(path, width, height, min_size, max_pixels)
    try:
        arr, maxval, grayscale, depth = decode_tiff(path, f)
    except UserError:
        raise
    except MemoryError:
        raise CorruptImage(
            f"{path}: ran out of memory decoding this {width}x{height} image; re-export or downscale it", value=path
        ) from None
    except Exception:
        raise CorruptImage(f"{path}: cannot decode image (truncated or corrupt); re-export or remove it", value=path) from None
    orientation = int(orientation) if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
    return arr, maxval, grayscale, depth, orientation, bytes(icc) if icc else None


def decode_tiff(path: Path, f: IO[bytes]) -> tuple[np.ndarray, float, bool, int]:
    """Decode the first page of a 16-bit (or otherwise non-8-bit) TIFF with tifffile: (pixels as stored, max value, grey, bits).

    The pixels are in the stored layout, checked against the page's own ImageWidth and ImageLength (Pillow reports
    the displayed size, rows and columns swapped for orientations 5 to 8); the caller applies the orientation.
    Chunky and planar ("separate") layouts, grey, grey+alpha, RGB(A) and CMYK(A); signed,
    32-bit and floating-point samples, and bit depths other than 8 and 16, are refused by name.
    """
    with _first_tiff_page(path, f) as page:
        bits = int(page.bitspersample)
        kind = np.dtype(page.dtype).kind if page.dtype is not None else "?"
        if kind == "f":
            raise UnsupportedFormat(
                f"{path}: {bits}-bit floating-point TIFF is not supported (no fixed value range to map back "
                "to); export it as 8- or 16-bit unsigned integers",
                value=path,
            )
        if kind == "i":
            raise UnsupportedFormat(
                f"{path}: signed {bits}-bit integer TIFF is not supported (negative values would be lost); "
                "export it as unsigned 8- or 16-bit",
                value=path,
            )
        if kind != "u" or bits not in (8, 16):
            raise UnsupportedFormat(
                f"{path}: {bits}-bit TIFF is not supported (8- and 16-bit unsigned samples are kept exactly); "
                "export it as 8- or 16-bit",
                value=path,
            )
        photometric = int(page.photometric)
        extras = len(page.extrasamples or ())
        colours = int(page.samplesperpixel) - extras
        allowed = {0: 1, 1: 1, 2: 3, 5: 4}
        if allowed.get(photometric) != colours or extras > 1:
            name = _TIFF_PHOTOMETRIC.get(photometric, str(photometric))
            raise UnsupportedFormat(
                f"{path}: {bits}-bit TIFF with photometric {name}, {colours} colour and {extras} extra "
                "channel(s) is not supported (grey, RGB or CMYK, each with optional alpha, are); convert it to RGB",
                value=path,
            )
        arr = page.asarray()
        axes = page.axes
        height, width = int(page.imagelength), int(page.imagewidth)
        associated = extras == 1 and int(page.extrasamples[0]) == 1
    if axes == "SYX":
        arr = np.moveaxis(arr, 0, -1)
    elif axes not in ("YXS", "YX"):
        raise UnsupportedFormat(f"{path}: TIFF page layout {axes} is not supported; export it as a plain 2-D image", value=path)
    if arr.shape[:2] != (height, width):
        raise CorruptImage(
            f"{path}: cannot decode TIFF (pixel data does not match the header); re-export or remove it", value=path
        )
    maxval = float(2**bits - 1)
    if arr.dtype != (np.uint16 if bits == 16 else np.uint8):
        raise CorruptImage(
            f"{path}: cannot decode TIFF ({arr.dtype} samples for {bits} bits); re-export or remove it", value=path
        )
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


def encode_tiff16(arr: np.ndarray, has_alpha: bool, icc: bytes | None) -> bytes:
    """A 16-bit TIFF (tifffile, deflate): grey, grey + alpha, RGB or RGBA, with the ICC profile if any."""
    import tifffile

    colour = arr.ndim == 3 and arr.shape[2] >= 3
    buffer = _io.BytesIO()
    tifffile.imwrite(
        buffer,
        arr,
        photometric="rgb" if colour else "minisblack",
        compression="zlib",
        extrasamples=("unassalpha",) if has_alpha else None,
        iccprofile=icc,
        metadata=None,
    )
    return buffer.getvalue()
