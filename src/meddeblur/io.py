"""Reading and writing images, and atomic file output.

Images are float32 arrays in [0, 1] with shape (H, W, 3). Decoding goes by file
content, not by extension. Every file the package writes goes through
:func:`atomic_write` or :func:`atomic_path`, so an interrupted run never leaves a
half-written output behind.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import cv2
import numpy as np
from PIL import Image, ImageOps, features

from meddeblur.errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "LoadedImage",
    "read_image",
    "read_rgb",
    "write_image",
    "atomic_write",
    "atomic_path",
    "list_images",
    "resize_area",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

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
_GRAY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclass
class LoadedImage:
    """A decoded image plus what is needed to write a result back the same way."""

    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]; grayscale replicated to 3 channels
    alpha: np.ndarray | None  # (H, W) float32 in [0, 1], or None
    grayscale: bool
    bit_depth: int  # 8 or 16
    format: str  # "PNG", "JPEG", "TIFF" or "BMP"
    path: Path


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


def _has_image_signature(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return head.startswith(_SIGNATURES)


def _decode_16bit_cv2(path: Path) -> np.ndarray | None:
    # Pillow decodes 16-bit RGB(A) only down to 8 bits. Decoding from bytes rather than
    # cv2.imread keeps non-ASCII paths working on every platform.
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16:
        return None
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    return arr


def _split(arr: np.ndarray, maxval: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W[, C]) integers -> (H, W, 3) float32 rgb and optional alpha."""
    x = arr.astype(np.float32) / np.float32(maxval)
    np.clip(x, 0.0, 1.0, out=x)
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


def read_image(path: str | os.PathLike[str], min_size: int = 16) -> LoadedImage:
    """Read a PNG, JPEG, TIFF or BMP file (decoded by content) as float32 RGB in [0, 1].

    8- and 16-bit images are supported; JPEG EXIF orientation is applied. Raises
    :class:`UserError` for a missing, unreadable, corrupt or too small file.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an image file; give an image file")
    try:
        im_file = Image.open(path, formats=_PIL_FORMATS)
    except Image.DecompressionBombError:
        raise UserError(f"{path}: image is too large to process safely; downscale it first") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied; make the file readable") from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError):
        if _has_image_signature(path):
            # e.g. a TIFF cut short loses the directory at its end, so Pillow cannot identify it.
            raise UserError(
                f"{path}: cannot decode image (truncated or corrupt); re-export or remove it"
            ) from None
        raise UserError(f"{path}: not a readable image (PNG/JPEG/TIFF/BMP expected); convert it or remove it") from None

    with im_file as im:
        # Cameras write multi-picture JPEGs, which Pillow's JPEG opener reports as MPO.
        fmt = "JPEG" if im.format == "MPO" else str(im.format)
        width, height = im.size
        if width < min_size or height < min_size:
            raise UserError(
                f"{path}: image is {width}x{height}, smaller than {min_size} px; use a larger image"
            )
        mode, rawmode = im.mode, _rawmode(im)
        if mode == "F":
            raise UserError(f"{path}: floating-point images are not supported; export as 8- or 16-bit")
        try:
            # Image.open only parsed the header; a truncated or corrupt body fails here.
            im.load()
            if fmt == "JPEG":
                im = ImageOps.exif_transpose(im)
        except Image.DecompressionBombError:
            raise UserError(f"{path}: image is too large to process safely; downscale it first") from None
        except Exception:  # Pillow raises OSError, SyntaxError, ValueError, zlib/struct errors...
            raise UserError(
                f"{path}: cannot decode image (truncated or corrupt); re-export or remove it"
            ) from None

        if mode in _GRAY16_MODES:
            rgb, alpha = _split(np.asarray(im), 65535.0)
            return LoadedImage(rgb, alpha, True, 16, fmt, path)
        if ";16" in rawmode:
            arr = _decode_16bit_cv2(path)
            if arr is None:
                raise UserError(
                    f"{path}: cannot decode 16-bit image (truncated or corrupt); re-export or remove it"
                )
            rgb, alpha = _split(arr, 65535.0)
            # Pillow reports 16-bit grey+alpha PNGs as RGBA; the raw mode still says LA.
            return LoadedImage(rgb, alpha, rawmode.startswith(("LA", "L;")), 16, fmt, path)

        im = _to_8bit_mode(im)
        rgb, alpha = _split(np.asarray(im), 255.0)
        return LoadedImage(rgb, alpha, im.mode in ("L", "LA"), 8, fmt, path)


def read_rgb(path: str | os.PathLike[str], min_size: int = 16) -> np.ndarray:
    """Read an image as (H, W, 3) float32 RGB in [0, 1], discarding alpha."""
    return read_image(path, min_size=min_size).rgb


# --------------------------------------------------------------------------- atomic output


def _temp_name(path: Path) -> Path:
    # Hidden (so list_images skips it), unique, and ending in the real suffix so that
    # libraries choosing an encoder by extension pick the right one.
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(6)}{path.suffix}")


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
) -> Path:
    """Write a float RGB image in [0, 1] atomically and return the path.

    ``rgb`` is (H, W, 3) (or (H, W) grey); values are clipped and rounded.
    ``grayscale=True`` stores one channel, the mean of R, G and B. ``format`` is
    taken from the suffix when None. 16 bits are written for PNG and TIFF only;
    JPEG and BMP are always 8-bit and drop the alpha channel. A 16-bit grey image
    with alpha is stored as RGBA because OpenCV cannot encode two channels.
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
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.ndim == 3 and alpha.shape[2] == 1:
            alpha = alpha[:, :, 0]
        if alpha.shape != x.shape[:2]:
            raise ValueError(f"alpha must have shape {x.shape[:2]}, got {alpha.shape}")
        if x.ndim == 2 and bit_depth == 16:
            x = np.repeat(x[:, :, None], 3, axis=2)
        x = np.dstack([x, alpha])

    if bit_depth == 16:
        arr = _quantize(x, 65535, np.uint16)
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
        ext = ".png" if fmt == "PNG" else ".tif"
        ok, buf = cv2.imencode(ext, arr)
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode {path} as 16-bit {fmt}")
        with atomic_write(path) as f:
            f.write(buf.tobytes())
        return path

    im = Image.fromarray(_quantize(x, 255, np.uint8))  # mode from shape: L, LA, RGB, RGBA
    options: dict[str, Any] = {}
    if fmt == "JPEG":
        # 4:4:4 chroma keeps the fine colour detail deblurring is judged on.
        options = {"quality": int(jpeg_quality), "subsampling": 0}
    elif fmt == "TIFF" and features.check("libtiff"):
        options = {"compression": "tiff_lzw"}
    buffer = _io.BytesIO()
    im.save(buffer, format=fmt, **options)
    with atomic_write(path) as f:
        f.write(buffer.getbuffer())
    return path


# --------------------------------------------------------------------------- folders and resizing


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder`` (by extension, hidden files skipped), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise UserError(f"{folder}: {what}; give a folder of images")
    # Hidden files include our own in-progress ".name.tmp-*" outputs.
    candidates = (p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in candidates if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    files.sort(key=lambda p: p.name)
    if not files:
        raise UserError(f"{folder}: no images (png/jpg/jpeg/tif/tiff/bmp) found; check the folder")
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
