"""Reading kernel files (``.npy``, grey ``.png``, meddeblur's PSF ``.json``) without trusting them.

A PSF file names itself a kernel of at most :data:`MAX_SIDE` pixels a side, so everything it may cost is known
before its data is read: each reader checks, in this order, the file's size in bytes, then what its header
declares (the ``.npy`` header's shape and dtype, the PNG's width and height, the JSON's nesting depth), and only
then decodes. A file that is not what it claims fails in one line naming it, in milliseconds and kilobytes: a
``.npy`` header claiming 100000×100000, a sparse 1.6 GB array, a 97 KB PNG that would decode to 10000×10000, a
JSON kernel nested 100,000 lists deep. Pickled ``.npy`` files are never read (they can run code).

The readers return plain values; :mod:`meddeblur.psf.kernel` turns them into a :class:`~meddeblur.psf.kernel.PSF`.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from meddeblur.errors import CorruptFile, InvalidOption, UnsupportedFormat, UserError

__all__ = ["MAX_SIDE", "read_npy", "read_png", "read_json"]

#: The widest kernel accepted, px: a measured kernel wider than this is more likely a mistaken file than a blur.
MAX_SIDE = 401
_NPY_HEADER = 10_000  # numpy's own default bound on an .npy header (a 2-D numeric header is ~128 bytes)
# Magic, version, length field, header, and a MAX_SIDE² array of the widest number type numpy has (16-byte longdouble).
_NPY_BYTES = 12 + _NPY_HEADER + MAX_SIDE**2 * 16
# A MAX_SIDE² kernel as JSON (save_json: one number a line, ~30 bytes) is under 5 MB; the rest is the calibration record.
_JSON_BYTES = 16 * 2**20
_PNG_BYTES = 16 * 2**20  # a 16-bit MAX_SIDE² PNG stored uncompressed is 0.3 MB; the rest would be metadata
_JSON_DEPTH = 32  # a PSF file nests 6 deep (record → calibration → edges → edge → list); json.loads recurses per level
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALARS = (str, int, float, bool, type(None))


def _too_large(path: Path, why: str, fix: str = "crop the kernel to the blur's support") -> InvalidOption:
    return InvalidOption(f"psf={path}: {why}; {fix}", value=str(path), option="psf")


def _check_bytes(path: Path, limit: int) -> int:
    """The file's size, refused above ``limit`` before a byte of it is read (a sparse file costs nothing to ``stat``)."""
    size = path.stat().st_size
    if size > limit:
        raise _too_large(
            path,
            f"the file is {size / 1e6:.1f} MB, more than a kernel of at most {MAX_SIDE}×{MAX_SIDE} px "
            f"takes ({limit / 1e6:.1f} MB)",
        )
    return size


def _check_sides(path: Path, height: int, width: int) -> None:
    if max(height, width) > MAX_SIDE:
        raise _too_large(path, f"the kernel is {width}×{height} px, more than {MAX_SIDE} px a side")


def read_npy(path: Path) -> np.ndarray:
    """The 2-D numeric array of an ``.npy`` file, its header checked before its data is read.

    Refused in one line: a file or a declared shape beyond :data:`MAX_SIDE`, a shape that is not 2-D, a dtype
    that is not integer or float (object arrays are pickles, never loaded), data shorter than the header says.
    """
    size = _check_bytes(path, _NPY_BYTES)
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=_NPY_HEADER)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=_NPY_HEADER)
            else:  # 3.0 exists only for structured dtypes with non-Latin-1 field names: never a kernel
                raise UnsupportedFormat(
                    f"{path}: .npy format version {version[0]}.{version[1]} is not read; save the kernel with numpy.save",
                    value=path,
                )
            if len(shape) != 2:
                raise InvalidOption(
                    f"psf={path}: a PSF must be a 2-D array, got shape {shape}; pass a non-negative 2-D kernel "
                    "with a positive sum",
                    value=str(path),
                    option="psf",
                )
            _check_sides(path, *shape)
            if dtype.hasobject:
                raise UnsupportedFormat(
                    f"{path}: the array holds Python objects (a pickle, never loaded: it can run code); "
                    "save a numeric array with numpy.save",
                    value=path,
                )
            if dtype.kind not in "iuf":
                raise InvalidOption(
                    f"psf={path}: dtype {dtype} is not a number type; save an integer or float array",
                    value=str(path),
                    option="psf",
                )
            if size - fh.tell() < math.prod(shape) * dtype.itemsize:
                raise CorruptFile(
                    f"{path}: the file is shorter than its header's {shape[1]}×{shape[0]} {dtype} array; "
                    "save it again with numpy.save",
                    value=path,
                )
            fh.seek(0)
            return np.lib.format.read_array(fh, allow_pickle=False, max_header_size=_NPY_HEADER)
    except UserError:
        raise
    except (OSError, ValueError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise CorruptFile(f"{path}: cannot read the kernel ({reason}); save it with numpy.save", value=path) from None


def read_png(path: Path) -> np.ndarray:
    """The float64 values of a grey PNG (8 or 16 bit), its width and height checked before it is decoded."""
    from PIL import Image

    _check_bytes(path, _PNG_BYTES)
    try:
        with warnings.catch_warnings():
            # Pillow warns from the header of a huge image; the size is refused just below, in one line of our own.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=["PNG"])
        with image:
            width, height = image.size
            _check_sides(path, height, width)
            if image.mode not in ("L", "I;16", "I;16B", "I", "F"):
                raise UnsupportedFormat(
                    f"{path}: a PSF image must be greyscale (this one is {image.mode}); save the kernel as grey PNG or .npy",
                    value=path,
                )
            return np.asarray(image).astype(np.float64)
    except UserError:
        raise
    except Image.DecompressionBombError:  # raised by open itself, from the header, above ~179 million pixels
        raise _too_large(path, f"the image is far larger than {MAX_SIDE}×{MAX_SIDE} px") from None
    except Exception as error:  # Pillow raises many types for damaged files
        raise CorruptFile(f"{path}: cannot read the PSF image ({error}); re-save it as a grey PNG", value=path) from None


def _depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings: linear time and no recursion, whatever the text."""
    brackets = np.frombuffer(re.sub(r"[^\[\]{}]", "", _JSON_STRING.sub("", text)).encode("ascii"), np.uint8)
    depth = deepest = 0
    for start in range(0, len(brackets), 2**20):  # in slices: 16 MB of '[' stays a few MB of working memory
        codes = brackets[start : start + 2**20]
        levels = depth + np.cumsum(np.where((codes == ord("[")) | (codes == ord("{")), 1, -1), dtype=np.int64)
        deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def read_json(path: Path, fmt: str) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """(kernel, params, the rest of the record) of a PSF ``.json`` whose ``format`` is ``fmt``.

    Its size and nesting depth are bounded before it is parsed, and its structure checked after: ``kernel`` a
    list of equal-length rows of numbers at most :data:`MAX_SIDE` long, ``params`` absent, null or an object of
    single values. Anything else fails in one line naming the file.
    """

    def corrupt(problem: str) -> CorruptFile:
        return CorruptFile(f"{path}: {problem}; write a PSF file with meddeblur calibrate (or PSF.save_json)", value=path)

    _check_bytes(path, _JSON_BYTES)
    try:
        with path.open("rb") as fh:
            text = fh.read(_JSON_BYTES + 1).decode("utf-8")
    except OSError as error:
        raise corrupt(f"cannot read it ({error})") from None
    except UnicodeDecodeError:
        raise corrupt("not UTF-8 text, so not a PSF file written by meddeblur") from None
    depth = _depth(text)
    if depth > _JSON_DEPTH:
        raise corrupt(f"nested {depth} levels deep, more than a PSF file's {_JSON_DEPTH}")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: a depth the count above missed must still be one line
        raise corrupt(f"not a PSF file written by meddeblur ({type(error).__name__}: {str(error)[:120]})") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise corrupt(f'not a PSF file written by meddeblur (no "format": "{fmt}")')
    rows = record.get("kernel")
    if not isinstance(rows, list) or not rows or not all(isinstance(row, list) for row in rows):
        raise corrupt('"kernel" must be a list of rows, each a list of numbers')
    _check_sides(path, len(rows), max(map(len, rows)))
    if len({len(row) for row in rows}) != 1 or not rows[0]:
        raise corrupt('"kernel" rows must all have the same, non-zero length')
    # bool is an int to Python but not a number here; a string such as "1_6" would be parsed by numpy's float().
    if not all(type(v) in (int, float) for row in rows for v in row):
        raise corrupt('"kernel" must hold only numbers')
    try:
        kernel = np.array(rows, dtype=np.float64)
    except OverflowError:  # an integer literal beyond float64 (json reads any length of digits as int)
        raise corrupt('"kernel" holds a number beyond the float range') from None
    params = record.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict) or not all(isinstance(v, _SCALARS) for v in params.values()):
        raise corrupt('"params" must be an object of names to single values (numbers or words)')
    return kernel, params, record
