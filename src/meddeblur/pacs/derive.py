"""One received instance → its derived instance, made exactly as ``meddeblur deblur`` makes a file's.

The instance is written to a work folder as a Part 10 file and goes through the very code a folder run uses
(:func:`meddeblur.runs.jobs.deblur_tasks`: decoding, bit depth, photometric interpretation, compressed transfer
syntaxes decoded or refused, the restoration record and consistency check of an estimated PSF, the change figures,
:func:`meddeblur.io.dicom.write_dicom`'s derived instance with the provenance). So the pixels a PACS receives are
those ``meddeblur deblur`` writes for the same file, and there is one implementation to trust.

Only the identity of the result is the archive's own: its UIDs are *computed* from the source's UIDs and the
configuration (model id, method, parameters), not drawn at random. The same source deblurred twice under the same
configuration — after a crash between storing and recording, or sent again — gives the same SOP Instance UID in the
same derived series, which an archive stores once; and the node can ask the archive whether it is already there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from meddeblur.errors import CorruptImage, UserError
from meddeblur.inference.engine import Engine
from meddeblur.pacs.config import Filters
from meddeblur.runs.jobs import Settings, deblur_tasks
from meddeblur.runs.plan import Task

__all__ = ["Refused", "Derived", "settings_key", "derived_uids", "source_identity", "derive"]

log = logging.getLogger("meddeblur.pacs")


class Refused(UserError):
    """An instance the node does not deblur (a class or modality it must not touch, a meddeblur output, bad pixels)."""


@dataclass
class Derived:
    """The derived dataset, ready to store, and what was done."""

    dataset: Any
    source_uid: str
    derived_uid: str
    outcome: Any  # meddeblur.runs.plan.Outcome


def settings_key(provenance: dict[str, Any]) -> str:
    """What decides the pixels (the resume rule's keys), hashed: a new model or option makes new derived instances."""
    decisive = {k: provenance.get(k) for k in ("model_id", "model", "engine", "parameters")}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True, default=str).encode()).hexdigest()[:16]


def derived_uids(series_uid: str, instance_uid: str, key: str) -> tuple[str, str]:
    """(Series, SOP Instance) UIDs of the derived instance: ``2.25`` UIDs of name-based UUIDs (RFC 4122 version 5) of the
    source's UIDs and the settings, so that they are the same every time (pydicom's ``generate_uid(None)`` is random)."""
    import uuid

    def uid(*parts: str) -> str:
        return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(('meddeblur-pacs', *parts))).int}"

    return uid("series", series_uid, key), uid("instance", instance_uid, key)


def source_identity(dataset: Any) -> tuple[str, str, str, str, str]:
    """(Study, Series, SOP Instance, SOP Class UIDs, Modality) of a dataset, or CorruptImage if an identifying UID is missing."""
    values = [
        str(dataset.get(name, "") or "").strip()
        for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality")
    ]
    if not all(values[:4]):
        raise CorruptImage(
            "instance without Study, Series, SOP Instance or SOP Class UID; it cannot be referenced, fix it at the modality",
            value=values[2] or None,
        )
    return values[0], values[1], values[2], values[3], values[4]


def _is_ours(dataset: Any) -> bool:
    """A meddeblur output (its private block or DerivationDescription): never deblurred again."""
    from meddeblur.io.provenance import TOOL

    try:
        if dataset.private_block(0x0011, TOOL):
            return True
    except KeyError:
        pass
    return str(dataset.get("DerivationDescription", "")).startswith(TOOL)


def _part10(dataset: Any, path: Path) -> None:
    """The received dataset as a Part 10 file, its transfer syntax as received (so decoding decides, as for files)."""
    from pydicom.dataset import FileMetaDataset

    meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        from pydicom.uid import ExplicitVRLittleEndian

        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta = meta
    dataset.save_as(path, enforce_file_format=True)


def derive(dataset: Any, engine: Engine, key: str, filters: Filters, work: Path) -> Derived:
    """The derived instance of ``dataset`` (a pydicom Dataset as received), deblurred by ``engine``; Refused with why if not.

    ``key``: :func:`settings_key` of the engine's provenance; ``work``: a folder for the two files on their way.
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

    _, series_uid, instance_uid, sop_class, modality = source_identity(dataset)
    why = filters.refusal(sop_class, modality)
    if why is not None:
        raise Refused(f"{instance_uid}: {why}", value=instance_uid)
    if _is_ours(dataset):
        raise Refused(f"{instance_uid}: a meddeblur output (derived instance); not deblurred again", value=instance_uid)
    work.mkdir(parents=True, exist_ok=True)
    source_file, output_file = work / f"{instance_uid}.dcm", work / f"{instance_uid}.deblurred.dcm"
    try:
        try:
            _part10(dataset, source_file)
            # Written whole just now by this process: dated past the decoder's settle window (files.read_whole waits
            # 50 ms for a writer still at a fresh file), which no other writer here needs — a fifth of the node's time.
            past = time.time() - 1.0
            os.utime(source_file, (past, past))
        except Exception as error:  # pydicom cannot even write it back: a damaged element
            raise Refused(
                f"{instance_uid}: cannot re-encode the instance ({type(error).__name__}); it is damaged, fix it at the modality",
                value=instance_uid,
            ) from None
        outcome = next(deblur_tasks(engine, [Task(source_file, output_file)], Settings(batch=1)))
        if outcome.status != "written":  # the reason names the work file: the instance's UID says it already
            raise Refused(f"{instance_uid}: {str(outcome.reason).replace(f'{source_file}: ', '')}", value=instance_uid)
        derived = pydicom.dcmread(output_file)
    finally:
        for path in (source_file, output_file):
            path.unlink(missing_ok=True)
    new_series, new_instance = derived_uids(series_uid, instance_uid, key)
    derived.SeriesInstanceUID = new_series
    derived.SOPInstanceUID = derived.file_meta.MediaStorageSOPInstanceUID = UID(new_instance)
    # Referenced Image Sequence as well as write_dicom's Source Image Sequence: viewers show one or the other.
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = sop_class, instance_uid
    derived.ReferencedImageSequence = [*dataset.get("ReferencedImageSequence", []), reference]
    return Derived(derived, instance_uid, new_instance, outcome)


def to_bytes(dataset: Any) -> bytes:
    """A dataset as Part 10 bytes (what the spool keeps and C-STORE received)."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
