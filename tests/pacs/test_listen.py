"""``meddeblur pacs --listen --forward``: a C-STORE SCP that deblurs and forwards to a real Orthanc, exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("dicomweb_client", reason="meddeblur pacs needs the [pacs] extra")
pytest.importorskip("pynetdicom", reason="meddeblur pacs needs the [pacs] extra")

from pacs_helpers import clean_orthanc, orthanc  # noqa: E402,F401  (fixtures)
from pacs_helpers import as_bytes, bad_instances, free_port, good_instances, make_instance, pacs_command  # noqa: E402


def _send(port: int, datasets: list, title: str = "MEDDEBLUR") -> list[int]:
    """C-STORE each dataset to the node as a modality would; the statuses back."""
    from pynetdicom import AE

    entity = AE(ae_title="MODALITY")
    for ds in datasets:
        entity.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    deadline = time.monotonic() + 60
    while True:
        association = entity.associate("127.0.0.1", port, ae_title=title)
        if association.is_established:
            break
        assert time.monotonic() < deadline, "the node did not start listening"
        time.sleep(0.3)
    try:
        return [association.send_c_store(ds).Status for ds in datasets]
    finally:
        association.release()


def _wait_for(orthanc, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while orthanc.count() < count and time.monotonic() < deadline:
        time.sleep(0.1)


def _wait_for_spool(spool: Path, timeout: float = 60) -> None:
    """Until the node has handled everything it received (each spooled instance is removed once handled)."""
    deadline = time.monotonic() + timeout
    while list(spool.glob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(spool.glob("*.dcm")), "the node did not finish what it received"


def _start(orthanc, tmp_path: Path, model: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(pacs_command("--listen", f"MEDDEBLUR@{port}", "--forward", f"ORTHANC@127.0.0.1:{orthanc.dicom}",
                                         "--state", tmp_path / "state.sqlite", "--model", model, "--device", "cpu"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _stop(node: subprocess.Popen, how: int) -> tuple[str, str]:
    os.kill(node.pid, how)
    out, err = node.communicate(timeout=60)
    return out, err


def test_listener_deblurs_forwards_once_and_survives_sigkill(clean_orthanc, tiny_weights, tmp_path) -> None:
    port = free_port()
    good, bad = good_instances(), bad_instances()
    node = _start(clean_orthanc, tmp_path, tiny_weights, port)
    try:
        statuses = _send(port, [*good.values(), *bad.values()])
        assert statuses == [0] * (len(good) + len(bad))  # bad ones are accepted, then skipped with a record: never a stuck sender
        _wait_for_spool(tmp_path / "state.spool")
    finally:
        out, err = _stop(node, signal.SIGTERM)
    assert node.returncode == 0, err
    assert "6 derived instance(s) stored" in out and "3 skipped" in out, out + err
    assert "Traceback" not in err
    stored = clean_orthanc.instances()
    derived = {d.SourceImageSequence[0].ReferencedSOPInstanceUID: d for d in stored}
    assert set(derived) == {ds.SOPInstanceUID for ds in good.values()}  # only derived instances reach the destination
    for source in good.values():
        out_ds = derived[source.SOPInstanceUID]
        assert out_ds.SOPClassUID == source.SOPClassUID and "DERIVED" in list(out_ds.ImageType)
        assert out_ds.ReferencedImageSequence[-1].ReferencedSOPInstanceUID == source.SOPInstanceUID

    # Sent again after a restart: recorded, nothing forwarded twice.
    node = _start(clean_orthanc, tmp_path, tiny_weights, port)
    try:
        assert _send(port, list(good.values())) == [0] * len(good)
        _wait_for_spool(tmp_path / "state.spool")
    finally:
        out, _ = _stop(node, signal.SIGKILL)
    assert clean_orthanc.count() == len(good)

    # Killed after "success" but before forwarding: the instance waits in the spool, the restarted node forwards it.
    late = make_instance("late", seed=42)
    spool = tmp_path / "state.spool"
    (spool / "00000000000000000001-1-1.dcm").write_bytes(as_bytes(late))
    node = _start(clean_orthanc, tmp_path, tiny_weights, port)
    try:
        _wait_for(clean_orthanc, len(good) + 1)
    finally:
        _stop(node, signal.SIGTERM)
    assert clean_orthanc.count() == len(good) + 1 and not list(spool.glob("*.dcm"))


def test_listener_refuses_a_bad_forward_address_in_one_line(tiny_weights, tmp_path, run_cli) -> None:
    failed = run_cli("pacs", "--listen", "MEDDEBLUR@11112", "--forward", "ORTHANC@localhost", "--model", tiny_weights)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert "--forward ORTHANC@localhost: write AET@HOST:PORT" in failed.stderr


def test_an_unreachable_destination_is_one_line_at_start(tiny_weights, tmp_path, run_cli) -> None:
    failed = run_cli("pacs", "--listen", f"MEDDEBLUR@{free_port()}", "--forward", f"NOBODY@127.0.0.1:{free_port()}",
                     "--state", tmp_path / "state.sqlite", "--model", tiny_weights, "--device", "cpu")
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert "--forward NOBODY@127.0.0.1:" in failed.stderr and "no association" in failed.stderr
