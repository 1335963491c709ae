"""The node without an archive: addresses and logins checked in one line, computed UIDs, records, refusals that give up."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("pydicom", reason="meddeblur pacs needs the [pacs] extra")

from pacs_helpers import as_bytes, bad_instances, make_instance  # noqa: E402

from meddeblur.errors import CorruptFile, InvalidOption  # noqa: E402
from meddeblur.pacs.config import Auth, Filters, check_url, is_loopback, parse_forward, parse_listen  # noqa: E402


def test_addresses_and_urls() -> None:
    assert str(parse_listen("MEDDEBLUR@11112")) == "MEDDEBLUR@127.0.0.1:11112"
    assert str(parse_forward("PACS@10.0.0.5:104")) == "PACS@10.0.0.5:104"
    for bad in ("MEDDEBLUR", "A@70000", "WAY-TOO-LONG-AE-TITLE@104"):
        with pytest.raises(InvalidOption, match="listen="):
            parse_listen(bad)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.0.0.5")
    secret = Auth(user="u", password="p")
    assert check_url("http://127.0.0.1:8042/dicom-web/", secret) == "http://127.0.0.1:8042/dicom-web"
    with pytest.raises(InvalidOption, match="unencrypted to pacs.example.org; use https://"):
        check_url("http://pacs.example.org/dicom-web", secret)
    with pytest.raises(InvalidOption, match="a bearer token or a user, not both"):
        Auth(user="u", password="p", token="t")


def test_filters_say_why() -> None:
    filters = Filters(modalities=("XC",))
    assert filters.refusal("1.2.840.10008.5.1.4.1.1.77.1.7", "XC") is None
    assert "SOP class 1.2.840.10008.5.1.4.1.1.2 is not one" in filters.refusal("1.2.840.10008.5.1.4.1.1.2", "XC")
    assert "modality CT is not one" in filters.refusal("1.2.840.10008.5.1.4.1.1.7", "CT")


def test_derived_uids_are_computed_not_drawn() -> None:
    from meddeblur.pacs.derive import derived_uids

    first = derived_uids("1.2.3", "1.2.3.4", "key")
    assert first == derived_uids("1.2.3", "1.2.3.4", "key") and first != derived_uids("1.2.3", "1.2.3.4", "other")
    assert all(uid.startswith("2.25.") and len(uid) <= 64 for uid in first)
    assert derived_uids("1.2.3", "1.2.3.5", "key")[0] == first[0]  # one derived series per source series


def test_missing_extra_is_one_line(monkeypatch, capsys) -> None:
    from meddeblur.cli.main import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pynetdicom" else real(name, *a))
    assert main(["pacs", "--dicomweb", "http://127.0.0.1:1/dicom-web", "--once"]) == 2
    err = capsys.readouterr().err
    assert err == "meddeblur pacs: error: meddeblur pacs needs pynetdicom, which is not installed; install it with: pip install 'meddeblur[pacs]'\n"


def test_a_damaged_state_file_is_one_line(tmp_path) -> None:
    from meddeblur.pacs.state import State

    (tmp_path / "state.sqlite").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(CorruptFile, match="not a meddeblur pacs state file"):
        State(tmp_path / "state.sqlite", "key")


def test_a_refused_instance_is_given_up_and_the_others_go_on(tiny_weights, tmp_path) -> None:
    import pydicom
    from io import BytesIO

    from meddeblur.runs.workers import ModelSpec
    from meddeblur.pacs.node import TRIES, Node
    from meddeblur.pacs.scp import DestinationError

    stored = []

    def store(ds) -> None:
        if ds.SamplesPerPixel == 1:
            raise DestinationError("forward=X: refused", instance=True)
        stored.append(ds)

    node = Node(ModelSpec(str(tiny_weights), device="cpu").load(), tmp_path / "state.sqlite", Filters(), store)
    grey, rgb = make_instance("grey", seed=1), make_instance("rgb", samples=3, seed=2)
    for _ in range(TRIES):
        with pytest.raises(DestinationError):
            node.handle(pydicom.dcmread(BytesIO(as_bytes(grey))))
        node.failed(grey.SOPInstanceUID, "forward=X: refused")
    assert node.state.get(grey.SOPInstanceUID).status == "skipped" and "given up after 3" in node.state.get(grey.SOPInstanceUID).reason
    assert node.handle(pydicom.dcmread(BytesIO(as_bytes(grey)))) == "known"
    assert node.handle(pydicom.dcmread(BytesIO(as_bytes(rgb)))) == "done" and len(stored) == 1
    for name, ds in bad_instances().items():  # never raised: recorded as skipped
        assert node.handle(pydicom.dcmread(BytesIO(as_bytes(ds)))) == "skipped", name
    assert node.state.counts() == {"done": 1, "skipped": 4}
    node.close()


def test_only_the_cli_imports_the_node_and_the_node_imports_the_library_only() -> None:
    import ast
    from pathlib import Path

    import meddeblur

    package = Path(meddeblur.__file__).parent

    def imported(path: Path) -> set[str]:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("meddeblur"):
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {a.name for a in node.names if a.name.startswith("meddeblur")}
        return names

    importers = {str(p.relative_to(package)) for p in package.rglob("*.py") if "pacs" not in p.relative_to(package).parts
                 and any(name.startswith("meddeblur.pacs") for name in imported(p))}
    assert importers == {"cli/commands.py"}
    allowed = ("meddeblur.pacs", "meddeblur.io", "meddeblur.inference", "meddeblur.runs", "meddeblur.restore", "meddeblur.models",
               "meddeblur.errors", "meddeblur.files")
    for path in (package / "pacs").glob("*.py"):
        assert all(name.startswith(allowed) for name in imported(path)), (path.name, imported(path))


def test_method_psf_puts_its_restoration_record_into_the_derived_instance(tmp_path) -> None:
    import json
    from io import BytesIO

    import pydicom

    from meddeblur.runs.workers import ModelSpec
    from meddeblur.pacs.node import Node

    stored = []
    node = Node(ModelSpec(None, device="cpu", method="psf").load(), tmp_path / "state.sqlite", Filters(), stored.append)
    assert node.handle(pydicom.dcmread(BytesIO(as_bytes(make_instance("x", samples=3, rows=96, cols=128))))) == "done"
    record = json.loads(stored[0].private_block(0x0011, "meddeblur")[0x01].value)
    assert record["parameters"]["restored_with"] and {"result", "reason"} <= set(record["restoration"])
    node.close()


def test_the_listener_refuses_a_peer_it_was_not_told_about(tmp_path) -> None:
    import threading
    from types import SimpleNamespace

    from meddeblur.pacs.scp import Spool, _handler

    spool, wake = Spool(tmp_path / "spool"), threading.Event()

    def event(address: str):
        return SimpleNamespace(assoc=SimpleNamespace(requestor=SimpleNamespace(address=address)),
                               encoded_dataset=lambda: b"DICM", request=SimpleNamespace(AffectedSOPInstanceUID="1.2.3"))

    handler = _handler(spool, {"10.0.0.7"}, wake)
    assert handler(event("10.0.0.9")) == 0x0124 and not spool.pending()
    assert handler(event("10.0.0.7")) == 0 and handler(event("127.0.0.1")) == 0 and len(spool.pending()) == 2


#: What a derived instance must change: its identity, its pixels, what says how it was made and what it came from.
_CHANGED = {"SOPInstanceUID", "SeriesInstanceUID", "ImageType", "PixelData", "DerivationDescription", "SeriesDescription",
            "InstanceCreationDate", "InstanceCreationTime", "SourceImageSequence", "ReferencedImageSequence",
            "ContributingEquipmentSequence"}


def test_every_attribute_of_a_dermoscopic_source_survives_but_those_a_derived_instance_must_change(tiny_weights, tmp_path) -> None:
    from io import BytesIO

    import pydicom
    from pydicom.tag import Tag

    from meddeblur.runs.workers import ModelSpec
    from meddeblur.pacs.node import Node

    source = make_instance("derm", sop_class="1.2.840.10008.5.1.4.1.1.77.1.7", samples=3, rows=64, cols=80, seed=2)
    # Attributes this pydicom's dictionary does not know (as it knows none of the Dermoscopic Image module's): their
    # tags, VRs and values must come through all the same.
    source.add_new(0x00229991, "CS", "POLARIZED")
    source.add_new(0x00229992, "DS", "10.0")
    source.add_new(0x00229993, "SQ", [pydicom.Dataset()])
    source[0x00229993].value[0].add_new(0x00080100, "SH", "CONTACT")
    received = pydicom.dcmread(BytesIO(as_bytes(source)))
    stored = []
    node = Node(ModelSpec(str(tiny_weights), device="cpu").load(), tmp_path / "state.sqlite", Filters(), stored.append)
    assert node.handle(received) == "done"
    node.close()
    derived = pydicom.dcmread(BytesIO(as_bytes(stored[0])))
    kept = [element for element in received if element.keyword not in _CHANGED]
    assert len(kept) >= 25 and Tag(0x00229991) in [element.tag for element in kept]
    for element in kept:
        assert element.tag in derived, element.name
        assert (derived[element.tag].VR, derived[element.tag].value) == (element.VR, element.value), element.name
