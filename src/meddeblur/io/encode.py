"""Encoding images: :func:`encode_image` to bytes, :func:`write_image` atomically to a file.

8- and 16-bit PNG and TIFF, 8-bit JPEG (quality 95, 4:4:4 chroma by default) and BMP, each with the ICC profile
and the provenance record where the format has room for them (:mod:`meddeblur.io.formats` says which keeps what).
"""

from __future__ import annotations

import io as _io
import os
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, features

from meddeblur.errors import InvalidOption
from meddeblur.files import atomic_write, remove_quietly
from meddeblur.io.formats import resolve_format
from meddeblur.io.provenance import add_png_chunk, embed, sidecar_path, to_json
from meddeblur.io.tiff import encode_tiff16

__all__ = ["check_jpeg_quality", "encode_image", "write_image"]


def check_jpeg_quality(quality: int) -> int:
    """``quality`` if it is a JPEG quality (1–100), else :class:`~meddeblur.errors.InvalidOption`."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise InvalidOption(f"jpeg_quality={quality}: choose 1 to 100", value=quality, option="jpeg_quality")
    return quality


def _quantize(x: np.ndarray, maxval: int, dtype: type) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(x, 0.0, 1.0) * maxval).astype(dtype)


def encode_image(
    rgb: np.ndarray,
    format: str,
    *,
    alpha: np.ndarray | None = None,
    grayscale: bool = False,
    bit_depth: int = 8,
    jpeg_quality: int = 95,
    provenance: dict[str, Any] | None = None,
    icc: bytes | None = None,
) -> bytes:
    """A float RGB image in [0, 1] encoded as the bytes of a PNG, JPEG, TIFF or BMP file.

    ``rgb`` is (H, W, 3) or (H, W) grey, float; values are clipped and rounded. ``alpha`` is (H, W) in [0, 1].
    ``grayscale=True`` stores one channel, the mean of R, G and B. 16 bits (``bit_depth=16``) are written for
    PNG and TIFF only; JPEG and BMP are always 8-bit and drop the alpha channel. A 16-bit grey PNG with alpha is
    stored as RGBA because OpenCV cannot encode two channels (a TIFF stays grey + alpha). ``icc`` (an ICC
    profile) and ``provenance`` (a :func:`meddeblur.io.provenance.make_record`) go into PNG, JPEG and TIFF
    metadata; BMP has no room for either (:func:`write_image` writes its provenance to a sidecar).

    >>> import numpy as np
    >>> encode_image(np.zeros((16, 16, 3)), "png")[:8]
    b'\\x89PNG\\r\\n\\x1a\\n'
    """
    fmt = resolve_format(Path(), format)
    check_jpeg_quality(jpeg_quality)
    if bit_depth not in (8, 16):
        raise InvalidOption(f"bit_depth={bit_depth}: must be 8 or 16", value=bit_depth, option="bit_depth")
    x = np.asarray(rgb)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2) if not grayscale else x
    elif x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"rgb must have shape (H, W, 3) or (H, W), got {np.shape(rgb)}")
    if grayscale and x.ndim == 3:
        x = x.astype(np.float32).mean(axis=2)
    if bit_depth not in fmt.bit_depths:
        bit_depth = 8
    if not fmt.alpha:
        alpha = None
    if fmt.name == "BMP":
        icc = None
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.ndim == 3 and alpha.shape[2] == 1:
            alpha = alpha[:, :, 0]
        if alpha.shape != x.shape[:2]:
            raise ValueError(f"alpha must have shape {x.shape[:2]}, got {alpha.shape}")
        if x.ndim == 2 and bit_depth == 16 and fmt.name == "PNG":
            x = np.repeat(x[:, :, None], 3, axis=2)
        x = np.dstack([x, alpha])
    data = _encode(x, fmt.name, bit_depth, alpha is not None, jpeg_quality, icc)
    return embed(data, fmt.name, provenance) if provenance is not None else data


def _encode(x: np.ndarray, fmt: str, bit_depth: int, has_alpha: bool, jpeg_quality: int, icc: bytes | None) -> bytes:
    if bit_depth == 16 and fmt == "TIFF":
        return encode_tiff16(_quantize(x, 65535, np.uint16), has_alpha, icc)
    if bit_depth == 16:
        arr = _quantize(x, 65535, np.uint16)
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        ok, buf = cv2.imencode(".png", arr)
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode a {arr.shape} image as 16-bit PNG")
        data = buf.tobytes()
        return add_png_chunk(data, b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)) if icc else data
    im = Image.fromarray(_quantize(x, 255, np.uint8))  # mode from shape: L, LA, RGB, RGBA
    options: dict[str, Any] = {"icc_profile": icc} if icc else {}
    if fmt == "JPEG":
        # 4:4:4 chroma keeps the fine colour detail deblurring is judged on.
        options.update(quality=int(jpeg_quality), subsampling=0)
    elif fmt == "TIFF" and features.check("libtiff"):
        options["compression"] = "tiff_lzw"
    buffer = _io.BytesIO()
    im.save(buffer, format=fmt, **options)
    return buffer.getvalue()


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

    ``format`` is taken from the suffix when None; the other arguments are :func:`encode_image`'s. A BMP's
    ``provenance`` goes into a ``NAME.bmp.json`` sidecar, written after the image (and the image removed again
    if that fails: an image must not go out without its provenance).
    """
    path = Path(path)
    fmt = resolve_format(path, format)
    data = encode_image(rgb, fmt.name, alpha=alpha, grayscale=grayscale, bit_depth=bit_depth, jpeg_quality=jpeg_quality,
                        provenance=provenance, icc=icc)
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
