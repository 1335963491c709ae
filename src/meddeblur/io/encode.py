"""Encoding images: :func:`encode_image` to bytes, :func:`write_image` atomically to a file.

8- and 16-bit PNG and TIFF, 8-bit JPEG (quality 95, 4:4:4 chroma by default) and BMP, each with the colour
metadata (ICC profile; PNG's gAMA, cHRM, sRGB, cICP chunks) and the provenance record where the format has room
for them (:mod:`meddeblur.io.formats` says which keeps what). Pixels come as numpy uint8, uint16 or float in
[0, 1] (:func:`meddeblur.io.pixels.unit_float`); nothing is clipped: anything else is refused.
"""

from __future__ import annotations

import io as _io
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, features

from meddeblur.errors import InvalidOption
from meddeblur.files import atomic_write, remove_quietly
from meddeblur.io.formats import BY_NAME, LoadedImage, resolve_format
from meddeblur.io.pixels import describe, unit_float
from meddeblur.io.provenance import add_png_chunk, embed, png_chunk, sidecar_path, to_json, with_losses
from meddeblur.io.tiff import encode_tiff16

__all__ = ["check_jpeg_quality", "encode_image", "write_image", "icc_colour_space"]

_ACCEPTED = "numpy (H, W), (H, W, 1|2|3|4) (2 and 4: with alpha), uint8, uint16 or float in [0, 1]"


def check_jpeg_quality(quality: int) -> int:
    """``quality`` if it is a JPEG quality (1–100), else :class:`~meddeblur.errors.InvalidOption`."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InvalidOption(f"jpeg_quality={quality}: choose 1 to 100", value=quality, option="jpeg_quality")
    return quality


def _quantize(x: np.ndarray, maxval: int, dtype: type) -> np.ndarray:
    # x is already checked to lie in [0, 1] (unit_float); rounding is the only change.
    return np.round(np.asarray(x, dtype=np.float64) * maxval).astype(dtype)


def icc_colour_space(icc: bytes) -> str | None:
    """The data colour space an ICC profile describes (``RGB``, ``GRAY``, ``CMYK``, ...); None if it is not a profile."""
    if len(icc) < 128 or icc[36:40] != b"acsp":
        return None
    return icc[16:20].decode("latin-1").strip() or None


def _planes(rgb: Any, alpha: Any, grayscale: bool | None) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(colour (H, W) grey or (H, W, 3), alpha (H, W) or None, grey?) as floats in [0, 1]; a trailing alpha channel split off."""
    x = unit_float(rgb, "rgb", _ACCEPTED)
    if x.ndim == 3 and x.shape[2] in (2, 4):
        if alpha is not None:
            raise ValueError(f"rgb has {x.shape[2]} channels (the last is alpha) and alpha is given too; pass one of them")
        x, alpha = x[:, :, :-1], x[:, :, -1]
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] == 3)) or 0 in x.shape:
        raise ValueError(f"rgb: expected (H, W) or (H, W, C) with C in 1/2/3/4; got {describe(rgb)}. Accepted: {_ACCEPTED}")
    grey = x.ndim == 2 if grayscale is None else grayscale
    if grey and x.ndim == 3:
        x = x.astype(np.float32).mean(axis=2)
    elif not grey and x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2)
    if alpha is not None:
        a = unit_float(alpha, "alpha", "numpy (H, W) uint8, uint16 or float in [0, 1]")
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if a.shape != x.shape[:2]:
            raise ValueError(f"alpha must have shape {x.shape[:2]}, got {np.shape(alpha)}")
        alpha = a
    return x, alpha, grey


def encode_image(
    rgb: np.ndarray,
    format: str,
    *,
    alpha: np.ndarray | None = None,
    grayscale: bool | None = None,
    bit_depth: int | None = None,
    jpeg_quality: int = 95,
    provenance: dict[str, Any] | None = None,
    icc: bytes | None = None,
    png_colour: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """An image encoded as the bytes of a PNG, JPEG, TIFF or BMP file.

    ``rgb`` is (H, W) or (H, W, 1) grey, (H, W, 2) grey + alpha, (H, W, 3) RGB or (H, W, 4) RGBA, as numpy uint8,
    uint16 (scaled by their range) or float in [0, 1]: floats outside it, NaN, other dtypes and masked arrays
    raise ``ValueError``. ``alpha`` is (H, W), same rules. ``grayscale`` (default: whether ``rgb`` is grey) stores one
    channel, the mean of R, G and B for an RGB ``rgb``. ``bit_depth`` (default 16 for uint16 ``rgb``, else 8) of
    16 is written for PNG and TIFF; JPEG is 8-bit without alpha, BMP 8-bit (32-bit BGRA with alpha).
    ``icc`` (an ICC profile) is copied when it describes the output's colour space (GRAY for grey, RGB for
    colour) into PNG, JPEG and TIFF; ``png_colour`` (``(kind, body)`` chunks such as gAMA, cHRM, sRGB, cICP,
    see :attr:`LoadedImage.png_colour`) into PNG. ``provenance`` (a :func:`meddeblur.io.provenance.make_record`)
    goes into the metadata, listing under ``not_kept`` whatever of these the output could not keep; BMP has no room
    for it (:func:`write_image` writes it to a sidecar).

    >>> import numpy as np
    >>> encode_image(np.zeros((16, 16, 3)), "png")[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    fmt = resolve_format(Path(), format)
    data, losses = _encoded(rgb, fmt.name, alpha, grayscale, bit_depth, jpeg_quality, icc, png_colour)
    return embed(data, fmt.name, with_losses(provenance, losses)) if provenance is not None else data


def _encoded(
    rgb: Any,
    fmt_name: str,
    alpha: Any,
    grayscale: bool | None,
    bit_depth: int | None,
    jpeg_quality: int,
    icc: bytes | None,
    png_colour: Sequence[tuple[bytes, bytes]],
) -> tuple[bytes, list[str]]:
    """(the file's bytes without provenance, what of the given metadata it could not keep)."""
    fmt = BY_NAME[fmt_name]
    check_jpeg_quality(jpeg_quality)
    if bit_depth is not None and bit_depth not in (8, 16):
        raise InvalidOption(f"bit_depth={bit_depth}: must be 8 or 16", value=bit_depth, option="bit_depth")
    wide = np.asarray(rgb).dtype == np.uint16
    x, alpha, grey = _planes(rgb, alpha, grayscale)
    losses: list[str] = []
    depth = bit_depth or (16 if wide else 8)
    if depth not in fmt.bit_depths:
        losses.append(f"16-bit samples (written as 8-bit: {fmt.name} holds 8 bits)")
        depth = 8
    if alpha is not None and not fmt.alpha:
        losses.append(f"alpha channel ({fmt.name} has none)")
        alpha = None
    if icc is not None:
        space, wanted = icc_colour_space(icc), "GRAY" if grey else "RGB"
        if fmt.name == "BMP":
            losses.append("ICC profile (BMP has no place for one)")
            icc = None
        elif space != wanted:
            losses.append(f"ICC profile ({space or 'not a valid profile'}; the output is {wanted})")
            icc = None
    if png_colour and fmt.name != "PNG":
        losses.append(
            f"PNG colour chunks {', '.join(kind.decode('latin-1') for kind, _ in png_colour)} ({fmt.name} has no place for them)"
        )
    if alpha is not None:
        x = np.dstack([x, alpha])
    data = _encode(x, fmt.name, depth, alpha is not None, grey, jpeg_quality, icc)
    if fmt.name == "PNG":
        for kind, body in reversed(tuple(png_colour)):
            data = add_png_chunk(data, kind, body)
    return data, losses


def _encode(x: np.ndarray, fmt: str, bit_depth: int, has_alpha: bool, grey: bool, jpeg_quality: int, icc: bytes | None) -> bytes:
    if bit_depth == 16 and fmt == "TIFF":
        return encode_tiff16(_quantize(x, 65535, np.uint16), has_alpha, icc)
    if bit_depth == 16:
        arr = _quantize(x, 65535, np.uint16)
        if grey and has_alpha:
            data = _png16_grey_alpha(arr)  # OpenCV encodes 1, 3 or 4 channels only
        else:
            if arr.ndim == 3:
                arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
            ok, buf = cv2.imencode(".png", arr)
            if not ok:
                raise RuntimeError(f"OpenCV failed to encode a {arr.shape} image as 16-bit PNG")
            data = buf.tobytes()
        return add_png_chunk(data, b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)) if icc else data
    pixels = _quantize(x, 255, np.uint8)
    if fmt == "BMP" and has_alpha:
        return _bmp_with_alpha(pixels if not grey else np.dstack([np.repeat(pixels[:, :, :1], 3, axis=2), pixels[:, :, 1:]]))
    im = Image.fromarray(pixels)  # mode from shape: L, LA, RGB, RGBA
    options: dict[str, Any] = {"icc_profile": icc} if icc else {}
    if fmt == "JPEG":
        # 4:4:4 chroma keeps the fine colour detail deblurring is judged on.
        options.update(quality=int(jpeg_quality), subsampling=0)
    elif fmt == "TIFF" and features.check("libtiff"):
        options["compression"] = "tiff_lzw"
    buffer = _io.BytesIO()
    im.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png16_grey_alpha(arr: np.ndarray) -> bytes:
    """A 16-bit grey + alpha PNG (colour type 4) of (H, W, 2) uint16: every row with filter 0, deflated."""
    height, width = arr.shape[:2]
    rows = np.zeros((height, 1 + width * 4), np.uint8)
    rows[:, 1:] = arr.astype(">u2").view(np.uint8).reshape(height, width * 4)
    header = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + png_chunk(b"IEND", b"")
    )


def _bmp_with_alpha(rgba: np.ndarray) -> bytes:
    """A 32-bit BMP with an alpha mask (BITMAPV4HEADER, BI_BITFIELDS, sRGB), bottom-up, of (H, W, 4) uint8."""
    height, width = rgba.shape[:2]
    pixels = np.ascontiguousarray(rgba[::-1][:, :, [2, 1, 0, 3]]).tobytes()  # BGRA rows, last row first
    offset = 14 + 108
    info = struct.pack("<IiiHHIIiiII", 108, width, height, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    info += struct.pack("<IIII", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000) + b"BGRs" + b"\x00" * 48
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + pixels


def write_image(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    *,
    alpha: np.ndarray | None = None,
    grayscale: bool | None = None,
    bit_depth: int | None = None,
    format: str | None = None,
    jpeg_quality: int = 95,
    provenance: dict[str, Any] | None = None,
    icc: bytes | None = None,
    png_colour: Sequence[tuple[bytes, bytes]] = (),
    metadata_from: LoadedImage | None = None,
) -> Path:
    """Write an image (any array :func:`encode_image` takes: uint8, uint16 or float in [0, 1]) atomically; returns the path.

    ``format`` is taken from the suffix when None; the other arguments are :func:`encode_image`'s.
    ``metadata_from``: a decoded source image (:func:`meddeblur.read_image`) whose colour metadata (ICC profile,
    PNG colour chunks) the output keeps, unless ``icc`` / ``png_colour`` are given. A BMP's ``provenance`` goes
    into a ``NAME.bmp.json`` sidecar, written after the image (and the image removed again if that fails: an
    image must not go out without its provenance).
    """
    path = Path(path)
    fmt = resolve_format(path, format)
    if metadata_from is not None:
        icc = icc if icc is not None else metadata_from.icc
        png_colour = png_colour or metadata_from.png_colour
    data, losses = _encoded(rgb, fmt.name, alpha, grayscale, bit_depth, jpeg_quality, icc, png_colour)
    if provenance is not None:
        provenance = with_losses(provenance, losses)
        data = embed(data, fmt.name, provenance)
    with atomic_write(path) as f:
        f.write(data)
    if provenance is not None and fmt.name == "BMP":
        try:
            with atomic_write(sidecar_path(path), "w") as fh:
                fh.write(to_json(provenance) + "\n")
        except BaseException:
            remove_quietly(path)
            raise
    return path
