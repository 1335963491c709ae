"""The image formats meddeblur reads and writes, in one table, and the decoded image type.

Each :class:`ImageFormat` gives a format's suffixes (the first is the one written), media type, the bit depths it
is written in and whether it keeps alpha; every other mapping (suffix → format, ``--format`` choices, HTTP media
types) is derived from :data:`FORMATS`, so adding a format is one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meddeblur.errors import InvalidOption, TooLarge, TooSmall, UnsupportedFormat

__all__ = [
    "ImageFormat",
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "SUFFIX_FORMATS",
    "OUTPUT_SUFFIXES",
    "FORMAT_ALIASES",
    "MEDIA_TYPES",
    "MAX_PIXELS",
    "LoadedImage",
    "resolve_format",
    "check_size",
    "unsupported_kind",
]


@dataclass(frozen=True)
class ImageFormat:
    """One file format: ``name`` as reported in :attr:`LoadedImage.format`, its ``suffixes`` (first = written),
    ``aliases`` accepted for ``format=``, HTTP ``media_type``, the ``bit_depths`` it is written in and whether
    ``alpha`` survives writing (JPEG has none; BMP keeps it as 32-bit BGRA with an alpha mask)."""

    name: str
    suffixes: tuple[str, ...]
    media_type: str
    bit_depths: tuple[int, ...]
    alpha: bool
    aliases: tuple[str, ...] = ()


#: DICOM is read by content and written back only as DICOM, from a DICOM source (:mod:`meddeblur.io.dicom`).
FORMATS = (
    ImageFormat("PNG", (".png",), "image/png", (8, 16), True),
    ImageFormat("JPEG", (".jpg", ".jpeg"), "image/jpeg", (8,), False, ("JPG",)),
    ImageFormat("TIFF", (".tif", ".tiff"), "image/tiff", (8, 16), True, ("TIF",)),
    ImageFormat("BMP", (".bmp",), "image/bmp", (8,), True),
    ImageFormat("DICOM", (".dcm",), "application/dicom", (8, 16), False, ("DCM",)),
)
BY_NAME = {f.name: f for f in FORMATS}
IMAGE_EXTENSIONS = tuple(suffix for f in FORMATS for suffix in f.suffixes)
SUFFIX_FORMATS = {suffix: f.name for f in FORMATS for suffix in f.suffixes}
#: ``--format`` / ``format=`` choices of the deblur command and API → the suffix written.
OUTPUT_SUFFIXES = {f.name.lower(): f.suffixes[0] for f in FORMATS if f.name != "DICOM"}
MEDIA_TYPES = {f.name: f.media_type for f in FORMATS}
#: Names ``format=`` accepts for writing (upper case) → the format.
FORMAT_ALIASES = {alias: f.name for f in FORMATS if f.name != "DICOM" for alias in (f.name, *f.aliases)}

#: Images with more pixels are refused from their header, before decoding: 100 megapixels
#: already take 1.2 GB as float32 RGB, and a crafted header can claim 10^10.
MAX_PIXELS = 100_000_000


@dataclass
class LoadedImage:
    """A decoded image plus what is needed to write a result back the same way."""

    rgb: np.ndarray  # (H, W, 3) float32 in [0, 1]; grayscale replicated to 3 channels
    alpha: np.ndarray | None  # (H, W) float32 in [0, 1], or None
    grayscale: bool
    bit_depth: int  # 8 or 16
    format: str  # "PNG", "JPEG", "TIFF", "BMP" or "DICOM"
    path: Path
    source: Any = None  # what writing back needs beyond pixels (DICOM: a meddeblur.io.dicom.DicomSource)
    icc: bytes | None = None  # the embedded ICC colour profile, copied to PNG, JPEG and TIFF outputs of its colour space
    #: A PNG's colour-describing chunks (gAMA, cHRM, sRGB, cICP, mDCv, cLLi) as (kind, body), copied to PNG outputs.
    png_colour: tuple[tuple[bytes, bytes], ...] = ()


def resolve_format(path: Path, format: str | None) -> ImageFormat:
    """The format to write ``path`` in: ``format`` (a name or alias, any case) or else the path's suffix."""
    if format is not None:
        name = FORMAT_ALIASES.get(format.upper())
        if name is None:
            raise InvalidOption(
                f"format={format!r}: unsupported image format; use PNG, JPEG, TIFF or BMP", value=format, option="format"
            )
        return BY_NAME[name]
    name = SUFFIX_FORMATS.get(path.suffix.lower())
    if name is None or name == "DICOM":
        raise UnsupportedFormat(f"{path}: unknown image extension {path.suffix!r}; use .png, .jpg, .tif or .bmp", value=path)
    return BY_NAME[name]


def check_size(path: Path, width: int, height: int, min_size: int, max_pixels: int) -> None:
    """Refuse, from the header, an image smaller than ``min_size`` or with more than ``max_pixels`` pixels."""
    if width < min_size or height < min_size:
        raise TooSmall(f"{path}: image is {width}x{height}, smaller than {min_size} px; use a larger image", value=path)
    if width * height > max_pixels:
        raise TooLarge(
            f"{path}: image is {width}x{height} ({width * height:,} pixels), more than the {max_pixels:,} "
            "this tool decodes; downscale or tile it first",
            value=path,
        )


SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")

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


def unsupported_kind(head: bytes) -> str | None:
    """What a file holding an image format this package does not read is, from its first bytes."""
    for signature, kind in _UNSUPPORTED_SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis"):
        return "a HEIF/AVIF image"
    return None


#: The suffixes of the PSF kernel files :func:`meddeblur.psf.kernel.load_psf` reads (a NumPy array, a PNG, a JSON record).
PSF_FILE_SUFFIXES = (".npy", ".png", ".json")


def names_psf_file(psf: str | Path) -> bool:
    """True if ``psf`` is read as a kernel file rather than a spec string: a :class:`~pathlib.Path`, a name ending in
    one of :data:`PSF_FILE_SUFFIXES`, or any existing file. Kept here, below the PSF code, so that a folder run can
    digest a PSF file (:mod:`meddeblur.runs.recipe`) without importing it."""
    path = Path(psf)
    return isinstance(psf, Path) or path.suffix.lower() in PSF_FILE_SUFFIXES or path.is_file()
