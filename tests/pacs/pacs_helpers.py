"""Helpers of the pacs tests: a real Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on 127.0.0.1, and the instances the tests send it.

The ``orthanc`` fixture starts Orthanc from a JSON configuration generated in a temporary folder: DICOMweb plugin on,
free HTTP and DICOM ports, authentication on with a test user, storage in the folder; it waits until Orthanc answers
and stops it by its PID. Where Orthanc or its DICOMweb plugin is missing, every test that needs it is skipped, saying
so. (Fixtures here, imported by the test modules, not in a conftest.py: a second ``conftest`` module would shadow
tests/conftest.py, which other test modules import by that name.)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "meddeblur-test", "s3cret-pw"
DERMOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.7"
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
SECONDARY = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    http: int
    dicom: int
    folder: Path
    pid: int

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.http}"

    @property
    def dicomweb(self) -> str:
        return f"{self.root}/dicom-web"

    def session(self):
        import requests

        session = requests.Session()
        session.auth = (USER, PASSWORD)
        return session

    def upload(self, data: bytes) -> None:
        answer = self.session().post(f"{self.root}/instances", data=data, timeout=30)
        answer.raise_for_status()

    def instances(self) -> list:
        """Every stored instance, as pydicom datasets."""
        import pydicom

        s = self.session()
        ids = s.get(f"{self.root}/instances", timeout=30).json()
        return [pydicom.dcmread(io.BytesIO(s.get(f"{self.root}/instances/{i}/file", timeout=30).content)) for i in ids]

    def count(self) -> int:
        return len(self.session().get(f"{self.root}/instances", timeout=30).json())

    def clear(self) -> None:
        s = self.session()
        for patient in s.get(f"{self.root}/patients", timeout=30).json():
            s.delete(f"{self.root}/patients/{patient}", timeout=30)



@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    if ORTHANC is None or not PLUGIN.is_file():
        pytest.skip("Orthanc and its DICOMweb plugin are not installed (apt-get install orthanc orthanc-dicomweb)")
    folder = tmp_path_factory.mktemp("orthanc")
    http, dicom = free_port(), free_port()
    config = {"Name": "meddeblur-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": http, "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
              "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "Plugins": [str(PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
              "UnknownSopClassAccepted": True, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
              "StorageCompression": False, "HttpThreadsCount": 4, "ConcurrentJobs": 1}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=folder)
    server = Orthanc(http, dicom, folder, process.pid)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if server.session().get(f"{server.root}/system", timeout=2).status_code == 200:
                    break
            except Exception:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not start: {(folder / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield server
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture
def clean_orthanc(orthanc: Orthanc) -> Orthanc:
    orthanc.clear()
    return orthanc


def _pixels(rows: int, cols: int, samples: int, bits: int, seed: int) -> np.ndarray:
    """A smooth blob with a soft edge, like a blurred lesion."""
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    blob = 1 / (1 + np.exp(((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) ** 0.5 - rows / 3))
    rng = np.random.default_rng(seed)
    base = 0.2 + 0.6 * blob + 0.02 * rng.standard_normal((rows, cols))
    planes = np.stack([base * f for f in (1.0, 0.8, 0.6)], axis=2) if samples == 3 else base
    return np.round(np.clip(planes, 0, 1) * (2 ** bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def make_instance(name: str, *, sop_class: str = SECONDARY, modality: str = "XC", samples: int = 1, bits: int = 8,
                  rows: int = 48, cols: int = 64, seed: int = 0, study: str | None = None, series: str | None = None):
    """A single-frame instance with patient, study and (for the dermoscopic class) the lesion's context attributes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.PatientName, ds.PatientID = "Test^Pacs", "PACS-1"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = modality, name, 1, 1
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if sop_class == DERMOSCOPIC:
        region = Dataset()
        region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "40983000", "SCT", "Upper arm"
        ds.AnatomicRegionSequence = [region]
        ds.ImageLaterality = "L"
        ds.PixelSpacing = [0.02, 0.02]
        ds.AcquisitionContextSequence = []
    arr = _pixels(rows, cols, samples, bits, seed)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit, ds.PixelRepresentation = bits - 1, 0
    ds.PixelData = arr.tobytes()
    return ds


def jpeg_instance(name: str, **kwargs):
    """A JPEG baseline (lossy) RGB instance: Pillow encodes, pydicom encapsulates (pydicom has no JPEG encoder of its own)."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = make_instance(name, samples=3, bits=8, **kwargs)
    rgb = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns, 3)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def unsupported_instance(name: str, **kwargs):
    """JPEG Lossless (Process 14 SV1), which no decoder installed here reads (pylibjpeg-libjpeg / GDCM are not)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    ds = make_instance(name, **kwargs)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    return ds


def corrupt_instance(name: str, **kwargs):
    """Pixel Data cut to a third of what Rows x Columns need."""
    ds = make_instance(name, **kwargs)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3 // 2 * 2]
    return ds


def as_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def good_instances() -> dict:
    """8- and 16-bit, grey and RGB, the dermoscopic class, a JPEG-compressed one: each must give a derived instance."""
    return {"grey8": make_instance("grey8", seed=1), "grey16": make_instance("grey16", bits=16, seed=2),
            "rgb8": make_instance("rgb8", sop_class=VL_PHOTO, samples=3, seed=3),
            "rgb16": make_instance("rgb16", samples=3, bits=16, seed=4),
            "dermoscopic": make_instance("dermoscopic", sop_class=DERMOSCOPIC, samples=3, seed=5),
            "jpeg": jpeg_instance("jpeg", seed=6)}


def bad_instances() -> dict:
    """Each must be skipped with a record and a log line, and never stop the node."""
    return {"corrupt": corrupt_instance("corrupt", seed=7), "unsupported": unsupported_instance("unsupported", seed=8),
            "ct": make_instance("ct", sop_class=CT, modality="CT", bits=16, seed=9)}


def pacs_command(*args: object) -> list[str]:
    import sys

    return [sys.executable, "-m", "meddeblur", "pacs", *map(str, args)]
