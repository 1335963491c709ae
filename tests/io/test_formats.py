"""Formats end to end: 16-bit without 8-bit rounding, and DICOM in and out (tags, pixels, refusals)."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from torch import nn

from meddeblur import __version__
from meddeblur.errors import UserError
from meddeblur.runs.files import deblur_files
from meddeblur.io.decode import read_image
from meddeblur.io.ownership import read_provenance
from meddeblur.io.provenance import make_record
from meddeblur.models import ModelConfig, build_model


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# --------------------------------------------------------------------------- 16-bit


@pytest.mark.parametrize("name", ["all.png", "all.tif"])
def test_every_16bit_value_survives_an_identity_nafnet(name: str, tmp_path: Path, one_thread) -> None:
    """All 65,536 values through a real (untrained, hence identity) NAFNet in float32: bit-exact, still 16-bit.

    One 8-bit rounding anywhere on the way would merge 256 neighbouring values and fail here.
    """
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    bgr = np.stack([values, values[::-1], values.T], axis=2)
    source = tmp_path / "in" / name
    source.parent.mkdir()
    assert cv2.imwrite(str(source), bgr)
    network = build_model(ModelConfig(arch="nafnet", width=8)).eval()

    (target,) = deblur_files(network, [source], tmp_path / "out", multiple=16)

    got = cv2.imread(str(target), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and read_image(target).bit_depth == 16
    np.testing.assert_array_equal(got, bgr)


# --------------------------------------------------------------------------- DICOM files made here


def _dataset(pixels: np.ndarray, photometric: str, bits_stored: int, signed: bool = False) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "P-0042", "19700101"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.AccessionNumber, ds.Modality = "20260101", "A123", "XC"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SeriesDescription = "dermoscopy"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.tobytes()
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _ints(shape, low: int, high: int, dtype, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high + 1, size=shape).astype(dtype)


# (photometric, pixels, bits stored, signed)
DICOM_KINDS = {
    "rgb8": ("RGB", lambda: _ints((37, 53, 3), 0, 255, np.uint8), 8, False),
    "mono2-16": ("MONOCHROME2", lambda: _ints((37, 53), 0, 65535, np.uint16), 16, False),
    "mono2-12": ("MONOCHROME2", lambda: _ints((37, 53), 0, 4095, np.uint16), 12, False),
    "mono2-signed16": ("MONOCHROME2", lambda: _ints((37, 53), -32768, 32767, np.int16), 16, True),
    "mono1-8": ("MONOCHROME1", lambda: _ints((37, 53), 0, 255, np.uint8), 8, False),
    "rgb16": ("RGB", lambda: _ints((20, 24, 3), 0, 65535, np.uint16), 16, False),
}


@pytest.mark.parametrize("kind", DICOM_KINDS)
def test_dicom_round_trip_is_exact_and_a_derived_instance(kind: str, tmp_path: Path) -> None:
    photometric, make, bits, signed = DICOM_KINDS[kind]
    pixels = make()
    source = _save(_dataset(pixels, photometric, bits, signed), tmp_path / "in" / "lesion.dcm")
    original = pydicom.dcmread(source)
    loaded = read_image(source)
    assert loaded.format == "DICOM" and loaded.grayscale == (pixels.ndim == 2)
    assert loaded.bit_depth == pixels.dtype.itemsize * 8
    assert 0 <= loaded.rgb.min() and loaded.rgb.max() <= 1 and loaded.rgb.max() > 0.9  # scaled by the stored range
    record = make_record("0123456789ab", "nafnet width 16", "torch", {"tile": 1024, "overlap": 128})

    (target,) = deblur_files(Identity(), [source], tmp_path / "out", provenance=record)

    assert target == tmp_path / "out" / "lesion.dcm"
    out = pydicom.dcmread(target)
    np.testing.assert_array_equal(out.pixel_array, pixels)
    assert out.pixel_array.dtype == pixels.dtype
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    for tag in ("PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation", "Rows", "Columns",
                "PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "AccessionNumber", "Modality"):
        assert out[tag].value == original[tag].value, tag
    assert out.SOPInstanceUID != original.SOPInstanceUID and out.SeriesInstanceUID != original.SeriesInstanceUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert list(out.ImageType) == ["DERIVED", "SECONDARY"]
    assert out.DerivationDescription.startswith(f"meddeblur {__version__}") and "model 0123456789ab" in out.DerivationDescription
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    equipment = out.ContributingEquipmentSequence[-1]
    assert (equipment.Manufacturer, equipment.SoftwareVersions) == ("meddeblur", __version__)
    assert "LossyImageCompression" not in out
    # The record, plus the change figures: the identity changed nothing.
    written = read_provenance(target)
    assert written.pop("time") and written.pop("source")["name"] == source.name  # when, and from which file (tested apart)
    assert written == {**record, "change": {"mean": 0.0, "max": 0.0, "share_over_4": 0.0}}
    assert read_provenance(source) is None
    assert pydicom.dcmread(source).SOPInstanceUID == original.SOPInstanceUID  # input untouched


def test_dicom_pixels_reach_the_network_and_back(tmp_path: Path) -> None:
    """A network that inverts its input: the DICOM written holds the inverted stored values (12-bit)."""

    class Invert(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 1 - x

    pixels = _ints((33, 40), 0, 4095, np.uint16)
    source = _save(_dataset(pixels, "MONOCHROME2", 12), tmp_path / "in" / "x.dcm")
    (target,) = deblur_files(Invert(), [source], tmp_path / "out")
    np.testing.assert_array_equal(pydicom.dcmread(target).pixel_array, 4095 - pixels)


def test_dicom_to_png_keeps_16_bits(tmp_path: Path) -> None:
    pixels = _ints((30, 40), 0, 65535, np.uint16)
    source = _save(_dataset(pixels, "MONOCHROME2", 16), tmp_path / "in" / "scan.dcm")
    (target,) = deblur_files(Identity(), [source], tmp_path / "out", fmt="png")
    assert target.name == "scan.png"
    np.testing.assert_array_equal(cv2.imread(str(target), cv2.IMREAD_UNCHANGED), pixels)


def test_dicom_without_extension_is_read_by_content(tmp_path: Path) -> None:
    source = _save(_dataset(_ints((20, 20, 3), 0, 255, np.uint8), "RGB", 8), tmp_path / "in" / "IM0001")
    (target,) = deblur_files(Identity(), [source], tmp_path / "out")
    assert target.name == "IM0001" and pydicom.dcmread(target).ImageType[0] == "DERIVED"


def test_rle_compressed_dicom_is_decoded_and_written_uncompressed(tmp_path: Path) -> None:
    pixels = _ints((24, 32, 3), 0, 255, np.uint8)
    ds = _dataset(pixels, "RGB", 8)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    source = _save(ds, tmp_path / "in" / "rle.dcm")
    (target,) = deblur_files(Identity(), [source], tmp_path / "out")
    out = pydicom.dcmread(target)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(out.pixel_array, pixels)
    assert "LossyImageCompression" not in out


def test_jpeg_baseline_dicom_is_decoded_and_stays_marked_lossy(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate

    rgb = _ints((32, 48, 3), 0, 255, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
    ds = _dataset(rgb, "YBR_FULL_422", 8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    source = _save(ds, tmp_path / "in" / "jpeg.dcm")

    (target,) = deblur_files(Identity(), [source], tmp_path / "out")

    out = pydicom.dcmread(target)
    assert out.PhotometricInterpretation == "RGB" and out.LossyImageCompression == "01"
    decoded = np.asarray(Image.open(buffer).convert("RGB")).astype(int)
    assert np.abs(out.pixel_array.astype(int) - decoded).max() <= 3  # JPEG's YCbCr→RGB conversions differ by rounding


# --------------------------------------------------------------------------- DICOM refused, one line each


def _message(path: Path) -> str:
    with pytest.raises(UserError) as excinfo:
        read_image(path)
    message = str(excinfo.value)
    assert str(path) in message and "\n" not in message
    return message


def test_compressed_dicom_without_a_decoder_is_refused_with_the_fix(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder (pylibjpeg/gdcm) is installed here, so such files are decoded")
    ds = _dataset(_ints((20, 20), 0, 255, np.uint8), "MONOCHROME2", 8)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(60) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    message = _message(_save(ds, tmp_path / "lossless.dcm"))
    assert "JPEG Lossless" in message and "cannot decode" in message and "pylibjpeg" in message


def test_truncated_dicom(tmp_path: Path) -> None:
    good = _save(_dataset(_ints((40, 40), 0, 255, np.uint8), "MONOCHROME2", 8), tmp_path / "good.dcm")
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size - 700])
    assert "truncated or corrupt" in _message(bad)


def test_dicom_without_pixels_multiframe_and_palette_are_refused(tmp_path: Path) -> None:
    ds = _dataset(_ints((20, 20), 0, 255, np.uint8), "MONOCHROME2", 8)
    del ds.PixelData
    assert "no (integer) Pixel Data" in _message(_save(ds, tmp_path / "report.dcm"))

    frames = _dataset(_ints((2, 20, 20), 0, 255, np.uint8), "MONOCHROME2", 8)
    frames.Rows, frames.Columns, frames.NumberOfFrames = 20, 20, 2
    assert "multi-frame" in _message(_save(frames, tmp_path / "frames.dcm"))

    palette = _dataset(_ints((20, 20), 0, 255, np.uint8), "PALETTE COLOR", 8)
    assert "PALETTE COLOR" in _message(_save(palette, tmp_path / "palette.dcm"))


def test_png_named_dcm_is_refused_before_writing(tmp_path: Path) -> None:
    source = tmp_path / "in" / "fake.dcm"
    source.parent.mkdir()
    assert cv2.imwrite(str(source.with_suffix(".png")), _ints((20, 20, 3), 0, 255, np.uint8))
    source.with_suffix(".png").rename(source)
    with pytest.raises(UserError, match="named .dcm but holds a PNG"):
        deblur_files(Identity(), [source], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("bits", "signed", "bad"), [(12, False, 4096), (12, False, 5000), (12, False, 65535), (10, False, 1024),
                                                     (12, True, 2048), (12, True, -2049), (8, False, None)])
def test_dicom_values_beyond_bits_stored_are_refused_not_masked(tmp_path: Path, bits: int, signed: bool, bad: int | None) -> None:
    """A reader may mask stored values to BitsStored bits (4096 → 0, 5000 → 904 at 12 bits): here they are refused."""
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    dtype = np.int16 if signed else (np.uint8 if bits == 8 else np.uint16)
    pixels = _ints((20, 24), low, high, dtype)
    pixels[0, :2] = [low, high]
    if bad is not None:
        pixels[3, 4] = bad
    path = _save(_dataset(pixels, "MONOCHROME2", bits, signed), tmp_path / "x.dcm")
    if bad is None:  # every value of the range is kept
        scaled = (pixels.astype(np.float64) - low) / (2 ** bits - 1)
        np.testing.assert_allclose(read_image(path).rgb[:, :, 0], scaled, rtol=0, atol=1e-6)
        return
    with pytest.raises(UserError, match=rf"pixel value {bad} lies outside the {low}\.\.{high} that BitsStored {bits} allows"):
        read_image(path)


def test_a_signed_dicom_whose_high_bits_are_left_zero_is_read_as_two_s_complement(tmp_path: Path) -> None:
    """Writers need not copy the sign into the bits above BitsStored: 0x0FFF in a 12-bit signed image is -1."""
    stored = np.array([0x0FFF, 0x0800, 0x07FF, 0], np.int16)  # -1, -2048, 2047, 0 with the high 4 bits zero
    pixels = np.resize(stored, (16, 16)).astype(np.int16)
    path = _save(_dataset(pixels, "MONOCHROME2", 12, True), tmp_path / "s.dcm")
    values = np.round(read_image(path).rgb[0, :4, 0] * 4095) - 2048
    np.testing.assert_array_equal(values, [-1, -2048, 2047, 0])
