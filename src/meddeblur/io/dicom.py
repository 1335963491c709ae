"""DICOM in and out (pydicom): single-frame RGB and monochrome images, 8- or 16-bit.

Reading scales the stored values by their own range (``2**BitsStored - 1``; signed data shifted
by half of it first), so a 12-bit CT-like image spans [0, 1] like any other input; the Modality
and VOI LUTs (rescale, window) are left to the viewer and kept unchanged in the output. Stored
values outside that range (bits set above BitsStored, e.g. 4096 in a 12-bit image) are refused:
masking them to BitsStored bits, as a reader may, would change pixel values silently.

Writing makes a *derived* instance of the source: new SOP Instance UID and Series Instance UID,
ImageType ``DERIVED\\SECONDARY``, DerivationDescription naming meddeblur, its version and the model
id, a Source Image Sequence pointing at the original, meddeblur as contributing (processing)
equipment, and the full provenance JSON in a private ``meddeblur`` block. Patient, study and
equipment tags are copied as they are. Pixels are stored uncompressed (Explicit VR Little Endian)
with the source's bit depth; a source that was lossy-compressed stays marked as such.

Compressed sources are decoded by whatever pydicom decoders are installed (Pillow handles JPEG
baseline/extended and JPEG 2000, pydicom itself RLE and Deflate); for the others (JPEG Lossless,
JPEG-LS, ...) the file is refused, naming the transfer syntax and the packages that decode it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np

from meddeblur import __version__
from meddeblur.errors import CorruptImage, TooLarge, TooSmall, UnsupportedFormat, require
from meddeblur.files import atomic_path
from meddeblur.io.formats import LoadedImage
from meddeblur.io.provenance import TOOL, summary, to_json

__all__ = ["DicomSource", "is_dicom", "read_dicom", "write_dicom", "read_dicom_provenance"]

_PRIVATE_GROUP = 0x0011
_PROVENANCE_ELEMENT = 0x01
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
_PROCESSING_EQUIPMENT = ("109102", "DCM", "Processing Equipment")
_CODEC_HINT = (
    "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pyjpegls, or convert it to uncompressed (e.g. gdcmconv --raw)"
)


@dataclass
class DicomSource:
    """What writing a derived instance needs from the source file."""

    dataset: Any  # pydicom Dataset, pixel data included
    bits_stored: int
    signed: bool
    photometric: str  # of the decoded pixels: MONOCHROME1, MONOCHROME2 or RGB
    lossy: bool  # the source's pixels went through lossy compression


def is_dicom(head: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then ``DICM``."""
    return head[128:132] == b"DICM"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # pydicom warns and logs about every odd tag; the one-line UserError is the only message a user gets.
    logger = logging.getLogger("pydicom")
    disabled = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def _read_dataset(path: Path, f: IO[bytes]) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    f.seek(0)
    try:
        return pydicom.dcmread(f)
    except InvalidDicomError:
        raise CorruptImage(f"{path}: not a valid DICOM file (corrupt header); re-export or remove it", value=path) from None
    except Exception:  # EOFError, struct.error, ValueError...: a file cut short or damaged
        raise CorruptImage(f"{path}: cannot decode DICOM (truncated or corrupt); re-export or remove it", value=path) from None


def _int(ds: Any, name: str, default: int | None = None) -> int:
    value = ds.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(name) from None


def _decode_pixels(path: Path, ds: Any) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array

    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        # The stored values as they are: pydicom would otherwise mask the bits above BitsStored (4096 → 0 at 12 bits).
        return pixel_array(ds, correct_unused_bits=False)
    except Exception:
        pass
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except (NotImplementedError, ValueError):
            available = False
        if not available:
            raise UnsupportedFormat(
                f"{path}: DICOM compressed as {syntax.name}, which this installation cannot decode; {_CODEC_HINT}", value=path
            ) from None
    raise CorruptImage(
        f"{path}: cannot decode DICOM pixel data (truncated or corrupt); re-export or remove it", value=path
    ) from None


def _lossless_syntaxes() -> set[str]:
    import pydicom.uid

    names = (
        "RLELossless",
        "JPEGLosslessP14",
        "JPEGLosslessSV1",
        "JPEGLSLossless",
        "JPEG2000Lossless",
        "HTJ2KLossless",
        "HTJ2KLosslessRPCL",
        "JPEGXLLossless",
    )
    return {str(getattr(pydicom.uid, name)) for name in names if hasattr(pydicom.uid, name)}


def _within_bits_stored(path: Path, arr: np.ndarray, stored: int, allocated: int, signed: bool) -> np.ndarray:
    """The stored values as numbers of ``stored`` bits (signed: two's complement), or CorruptImage if bits above them are set.

    Above BitsStored an unsigned image has zeros. A signed one has zeros too (the value is then the low bits in
    two's complement), or, in an image where any value has them set, copies of the sign bit. Anything else (4096 in
    a 12-bit image) is a value out of range, refused rather than masked to BitsStored bits as a reader may.
    """
    if stored >= allocated or not arr.size:
        return arr
    raw = arr.astype(np.int64) & (2**allocated - 1)  # the allocated bits as stored
    low, high = raw & (2**stored - 1), raw >> stored
    sign = (low >> (stored - 1)) & 1 if signed else np.zeros_like(low)
    allowed = high == 0
    if signed and (high != 0).any():  # a writer that extends the sign: the high bits must all equal it
        allowed = np.where(sign == 1, high == 2 ** (allocated - stored) - 1, high == 0)
    if not allowed.all():
        bad = int(arr[~allowed].flat[0])
        limits = f"{-(2 ** (stored - 1))}..{2 ** (stored - 1) - 1}" if signed else f"0..{2**stored - 1}"
        raise CorruptImage(
            f"{path}: DICOM pixel value {bad} lies outside the {limits} that BitsStored {stored} allows; it would "
            f"be cut to {stored} bits, so re-export it with BitsStored matching the data",
            value=path,
        )
    return low - (sign << stored) if signed else low


def read_dicom(path: Path, f: IO[bytes], min_size: int, max_pixels: int) -> LoadedImage:
    """Decode a single-frame DICOM image from the open file ``f`` (see the module docstring for scaling)."""
    require("pydicom", f"{path}: reading a DICOM file")
    with _quiet():
        ds = _read_dataset(path, f)
        if "PixelData" not in ds:
            raise UnsupportedFormat(
                f"{path}: DICOM file holds no (integer) Pixel Data, e.g. a report or float image; give an image instance",
                value=path,
            )
        try:
            rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
            frames = _int(ds, "NumberOfFrames", 1)
            samples = _int(ds, "SamplesPerPixel", 1)
            allocated = _int(ds, "BitsAllocated")
            stored = _int(ds, "BitsStored", allocated)
            signed = _int(ds, "PixelRepresentation", 0) == 1
        except ValueError as exc:
            raise CorruptImage(
                f"{path}: DICOM image tag {exc} missing or invalid (corrupt file); re-export or remove it", value=path
            ) from None
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
        if cols < min_size or rows < min_size:
            raise TooSmall(f"{path}: image is {cols}x{rows}, smaller than {min_size} px; use a larger image", value=path)
        if rows * cols > max_pixels:
            raise TooLarge(
                f"{path}: image is {cols}x{rows} ({rows * cols:,} pixels), more than the {max_pixels:,} "
                "this tool decodes; downscale or tile it first",
                value=path,
            )
        if frames != 1:
            raise UnsupportedFormat(
                f"{path}: multi-frame DICOM ({frames} frames) is not supported; export the frames as single images", value=path
            )
        if allocated not in (8, 16):
            raise UnsupportedFormat(
                f"{path}: DICOM with {allocated} bits allocated per pixel is not supported (8 and 16 are); "
                "convert it to 8 or 16 bits allocated",
                value=path,
            )
        if not 1 <= stored <= allocated:
            raise CorruptImage(
                f"{path}: DICOM header is inconsistent: BitsStored {stored} does not fit in BitsAllocated {allocated} "
                "(corrupt or mis-written file); re-export it from the source system",
                value=path,
            )
        if not ((samples == 1 and photometric in _MONOCHROME) or (samples == 3 and photometric in _COLOUR)):
            raise UnsupportedFormat(
                f"{path}: DICOM photometric interpretation {photometric or '(none)'} with {samples} sample(s) "
                "is not supported (MONOCHROME1/2, RGB, YBR_FULL are); convert it to RGB",
                value=path,
            )
        arr = _decode_pixels(path, ds)
    expected = (rows, cols) if samples == 1 else (rows, cols, 3)
    if arr.shape != expected:
        raise CorruptImage(
            f"{path}: cannot decode DICOM (pixel data does not match Rows/Columns); re-export or remove it", value=path
        )
    arr = _within_bits_stored(path, arr, stored, allocated, signed)
    maxval = float(2**stored - 1)
    values = arr.astype(np.float32)
    if signed:
        values += np.float32(2 ** (stored - 1))
    rgb = values / np.float32(maxval)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    lossy = str(ds.get("LossyImageCompression", "00")).strip() == "01" or bool(
        syntax is not None and syntax.is_compressed and syntax not in _lossless_syntaxes()
    )
    source = DicomSource(ds, stored, signed, photometric if samples == 1 else "RGB", lossy)
    return LoadedImage(
        np.ascontiguousarray(rgb, dtype=np.float32), None, samples == 1, 8 if allocated == 8 else 16, "DICOM", path, source
    )


def _derived_dataset(source: DicomSource, pixels: np.ndarray, record: dict[str, Any]) -> Any:
    from pydicom.dataset import Dataset
    from pydicom.pixels import set_pixel_data
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    original = source.dataset
    ds = copy.deepcopy(original)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    # Stale after processing, or describing the compressed stream that is no longer there.
    for name in ("SmallestImagePixelValue", "LargestImagePixelValue", "ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if name in ds:
            del ds[name]
    set_pixel_data(ds, pixels, source.photometric, source.bits_stored, generate_instance_uid=True)
    ds.SeriesInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "SOPClassUID" in ds:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    previous = list(original.get("ImageType", []) or [])
    ds.ImageType = ["DERIVED", "SECONDARY", *[str(v) for v in previous[2:]]]
    ds.DerivationDescription = summary(record)[:1024]  # ST: at most 1024 characters
    description = f"deblurred: {original.get('SeriesDescription', '')}".strip().rstrip(":")
    ds.SeriesDescription = description[:64]  # LO: at most 64 characters
    now = datetime.now()
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    if source.lossy:
        ds.LossyImageCompression = "01"
    if "SOPClassUID" in original and "SOPInstanceUID" in original:
        reference = Dataset()
        reference.ReferencedSOPClassUID = original.SOPClassUID
        reference.ReferencedSOPInstanceUID = original.SOPInstanceUID
        ds.SourceImageSequence = [reference]
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = _PROCESSING_EQUIPMENT
    equipment = Dataset()
    equipment.PurposeOfReferenceCodeSequence = [purpose]
    equipment.Manufacturer = TOOL
    equipment.SoftwareVersions = __version__
    equipment.ContributionDateTime = now.strftime("%Y%m%d%H%M%S")
    equipment.ContributionDescription = summary(record)[:1024]
    ds.ContributingEquipmentSequence = [*original.get("ContributingEquipmentSequence", []), equipment]
    block = ds.private_block(_PRIVATE_GROUP, TOOL, create=True)
    block.add_new(_PROVENANCE_ELEMENT, "LT", to_json(record))
    return ds


def write_dicom(path: str | os.PathLike[str], rgb: np.ndarray, source: DicomSource, record: dict[str, Any]) -> Path:
    """Write ``rgb`` ((H, W, 3) float in [0, 1]) as a derived instance of ``source``, atomically."""
    require("pydicom", f"{path}: writing a DICOM file")
    path = Path(path)
    maxval = 2**source.bits_stored - 1
    x = np.nan_to_num(np.asarray(rgb, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if source.photometric in _MONOCHROME:
        x = x.mean(axis=2) if x.ndim == 3 else x
    values = np.round(np.clip(x, 0.0, 1.0) * maxval).astype(np.int64)
    if source.signed:
        values -= 2 ** (source.bits_stored - 1)
    allocated = int(source.dataset.BitsAllocated)
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[(allocated, source.signed)]
    with _quiet():
        ds = _derived_dataset(source, np.ascontiguousarray(values.astype(dtype)), record)
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return path


def read_dicom_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The meddeblur record of a DICOM file (private block, else a DerivationDescription naming meddeblur)."""
    require("pydicom", f"{path}: reading a DICOM file")
    import json

    import pydicom

    with _quiet():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            raise CorruptImage(
                f"{path}: cannot read DICOM header (truncated or corrupt); re-export or remove it", value=path
            ) from None
        try:
            text = ds.private_block(_PRIVATE_GROUP, TOOL)[_PROVENANCE_ELEMENT].value
            record = json.loads(text)
            if isinstance(record, dict):
                return record
        except (KeyError, ValueError, TypeError):
            pass
        derivation = str(ds.get("DerivationDescription", ""))
    return {"tool": TOOL, "summary": derivation} if derivation.startswith(TOOL) else None
