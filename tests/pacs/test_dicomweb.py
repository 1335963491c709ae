"""``meddeblur pacs --dicomweb`` against a real Orthanc: derived series, references, pixels, reruns, SIGKILL, logins."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dicomweb_client", reason="meddeblur pacs needs the [pacs] extra")
pytest.importorskip("pynetdicom", reason="meddeblur pacs needs the [pacs] extra")

from pacs_helpers import clean_orthanc, orthanc  # noqa: E402,F401  (fixtures)
from pacs_helpers import (DERMOSCOPIC, PASSWORD, USER, as_bytes, bad_instances, good_instances, make_instance,  # noqa: E402
                          pacs_command)


def _node(orthanc, tmp_path: Path, model: Path, *extra: object, password: str = PASSWORD) -> list[str]:
    secret = tmp_path / f"password-{len(password)}"
    secret.write_text(password + "\n")
    return pacs_command("--dicomweb", orthanc.dicomweb, "--user", USER, "--password-file", secret, "--state",
                        tmp_path / "state.sqlite", "--model", model, "--device", "cpu", *extra)


def _run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _derived(instances: list) -> dict[str, object]:
    """Derived instances by the SOP Instance UID of their source."""
    return {d.SourceImageSequence[0].ReferencedSOPInstanceUID: d for d in instances if "DERIVED" in list(d.ImageType)}


def test_once_derives_every_good_instance_once_and_skips_the_bad(clean_orthanc, tiny_weights, tmp_path, run_cli) -> None:
    good, bad = good_instances(), bad_instances()
    sources = tmp_path / "sources"
    sources.mkdir()
    for name, ds in {**good, **bad}.items():
        clean_orthanc.upload(as_bytes(ds))
        if name in good:
            ds.save_as(sources / f"{name}.dcm", enforce_file_format=True)

    done = _run(_node(clean_orthanc, tmp_path, tiny_weights, "--once"))
    assert done.returncode == 0, done.stderr
    assert "6 derived instance(s) stored" in done.stdout and "3 skipped" in done.stdout
    for name in bad:  # each bad one: a log line naming it and why
        uid = bad[name].SOPInstanceUID
        assert any(line.startswith("meddeblur pacs: skipped") and uid in line for line in done.stderr.splitlines()), (name, done.stderr)
    assert "Traceback" not in done.stderr

    stored = clean_orthanc.instances()
    derived = _derived(stored)
    assert set(derived) == {ds.SOPInstanceUID for ds in good.values()}
    # The same pixels as `meddeblur deblur` writes for the same files.
    folder = run_cli("deblur", sources, "-o", tmp_path / "files", "--model", tiny_weights, "--device", "cpu")
    assert folder.returncode == 0, folder.stderr
    series = {d.SeriesInstanceUID for d in derived.values()}
    for name, source in good.items():
        out = derived[source.SOPInstanceUID]
        assert out.SOPClassUID == source.SOPClassUID
        assert out.SeriesInstanceUID != source.SeriesInstanceUID and out.StudyInstanceUID == source.StudyInstanceUID
        assert list(out.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert out.ReferencedImageSequence[-1].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert out.ReferencedImageSequence[-1].ReferencedSOPClassUID == source.SOPClassUID
        assert out.private_block(0x0011, "meddeblur")[0x01].value.startswith("{")
        assert str(out.DerivationDescription).startswith("meddeblur")
        assert (out.BitsStored, out.SamplesPerPixel) == (source.BitsStored, source.SamplesPerPixel)
        import pydicom

        expected = pydicom.dcmread(tmp_path / "files" / f"{name}.dcm")
        np.testing.assert_array_equal(out.pixel_array, expected.pixel_array, err_msg=name)
        if source.SOPClassUID == DERMOSCOPIC:
            for keyword in ("AnatomicRegionSequence", "ImageLaterality", "PixelSpacing", "PatientID", "StudyInstanceUID"):
                assert out[keyword] == source[keyword], keyword
    assert len(series) == len(good)  # one new series per source series, never the source's
    assert derived[good["jpeg"].SOPInstanceUID].LossyImageCompression == "01"

    again = _run(_node(clean_orthanc, tmp_path, tiny_weights, "--once"))
    assert again.returncode == 0 and "0 derived instance(s) stored" in again.stdout, again.stdout + again.stderr
    assert f"{len(good) + len(bad)} seen before" in again.stdout
    assert clean_orthanc.count() == len(stored)


def test_sigkill_then_restart_neither_duplicates_nor_misses(clean_orthanc, tiny_weights, tmp_path) -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    series = "1.2.826.0.1.3680043.8.498.2"
    sources = [make_instance(f"s{i}", samples=3, rows=160, cols=192, seed=i, study=study, series=series) for i in range(8)]
    for ds in sources:
        clean_orthanc.upload(as_bytes(ds))
    node = subprocess.Popen(_node(clean_orthanc, tmp_path, tiny_weights, "--poll-seconds", "0.2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while clean_orthanc.count() <= len(sources) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.kill(node.pid, signal.SIGKILL)  # mid-run: between a store and its record, or mid-deblur
        node.wait()
    first = clean_orthanc.count() - len(sources)
    assert first >= 1
    restarted = _run(_node(clean_orthanc, tmp_path, tiny_weights, "--once"))
    assert restarted.returncode == 0, restarted.stderr
    derived = _derived(clean_orthanc.instances())
    assert set(derived) == {ds.SOPInstanceUID for ds in sources} and clean_orthanc.count() == 2 * len(sources)
    assert len({d.SeriesInstanceUID for d in derived.values()}) == 1  # one derived series across the restart

    # The archive is the truth: with the local records gone, nothing is made twice.
    (tmp_path / "state.sqlite").unlink()
    for leftover in tmp_path.glob("state.sqlite-*"):
        leftover.unlink()
    lost = _run(_node(clean_orthanc, tmp_path, tiny_weights, "--once"))
    assert lost.returncode == 0 and "0 derived instance(s) stored" in lost.stdout, lost.stdout + lost.stderr
    assert f"{len(sources)} already in the archive" in lost.stdout
    assert clean_orthanc.count() == 2 * len(sources)


@pytest.mark.parametrize("case", ["password", "unreachable"])
def test_login_and_connection_failures_are_one_line(orthanc, tiny_weights, tmp_path, case) -> None:
    if case == "password":
        command = _node(orthanc, tmp_path, tiny_weights, "--once", password="wrong")
    else:
        from pacs_helpers import free_port

        command = [part if part != orthanc.dicomweb else f"http://127.0.0.1:{free_port()}/dicom-web"
                   for part in _node(orthanc, tmp_path, tiny_weights, "--once")]
    failed = _run(command)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("meddeblur pacs: error: --dicomweb "), failed.stderr
    assert ("refused the login (HTTP 401)" if case == "password" else "cannot reach") in lines[0]
    assert "--user" in lines[0] or case == "unreachable"
