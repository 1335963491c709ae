"""PNG specifics of decoding: the colour chunks kept for the output, text chunks beyond Pillow's limit, tRNS colour keys."""

from __future__ import annotations

import io as _io
import os
import struct
import zlib
from typing import IO

import numpy as np
from PIL import Image

__all__ = ["PNG_SIGNATURE", "PNG_COLOUR_CHUNKS", "png_colour_chunks", "png_without_text", "colour_key_alpha"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def png_without_text(f: IO[bytes], max_pixels: int) -> IO[bytes] | None:
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
    out = bytearray(PNG_SIGNATURE) + ihdr
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


#: PNG chunks that say how the stored values map to colours, copied to PNG outputs (iCCP goes as ``icc``).
PNG_COLOUR_CHUNKS = (b"gAMA", b"cHRM", b"sRGB", b"cICP", b"mDCv", b"cLLi")


def png_colour_chunks(f: IO[bytes]) -> tuple[tuple[bytes, bytes], ...]:
    """The colour chunks (:data:`PNG_COLOUR_CHUNKS`) before the image data, as (kind, body); those with a bad CRC are left out."""
    found: list[tuple[bytes, bytes]] = []
    f.seek(8)
    while True:
        header = f.read(8)
        if len(header) < 8:
            break
        (length,) = struct.unpack(">I", header[:4])
        kind = header[4:8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind in PNG_COLOUR_CHUNKS and length <= 64 and kind not in dict(found):
            body, crc = f.read(length), f.read(4)
            if len(crc) == 4 and struct.unpack(">I", crc)[0] == zlib.crc32(kind + body):
                found.append((kind, body))
        else:
            f.seek(length + 4, os.SEEK_CUR)
    return tuple(found)


def colour_key_alpha(im: Image.Image, arr: np.ndarray, maxval: float) -> np.ndarray | None:
    """A PNG tRNS colour key (grey or RGB, not palette) as an alpha channel: 0 where the pixel equals the key."""
    key = im.info.get("transparency")
    if im.format != "PNG" or key is None or isinstance(key, bytes) or (arr.ndim == 3 and arr.shape[2] in (2, 4)):
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
