"""Whose file is this: reading a file's provenance record back, and the overwrite rule built on it.

meddeblur replaces an existing file only if it wrote it itself (an image carrying its provenance record, a BMP
sidecar, an assess CSV, a synth manifest, an ONNX export) or the user said ``overwrite``; anything else is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from meddeblur.errors import UserError
from meddeblur.files import check_name_length, check_regular_file, resolved_path
from meddeblur.io.dicom import read_dicom_provenance
from meddeblur.io.provenance import TIFF_DESCRIPTION_TAG, TOOL, parse, sidecar_path

__all__ = ["ASSESS_CSV_COLUMNS", "read_provenance", "own_operation", "is_own_file", "check_replaceable", "check_planned"]

#: The header row of a ``meddeblur assess`` CSV (written by :mod:`meddeblur.evaluation.assess`), which is how one is recognised.
ASSESS_CSV_COLUMNS = ("path", "blur_score", "flag", "width", "height", "note")


def read_provenance(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The meddeblur record stored in an image file (or its BMP sidecar), or None when it has none.

    Raises :class:`meddeblur.errors.UserError` for a file that is not a readable image.
    """
    path = check_regular_file(path)
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return read_dicom_provenance(path)
    try:
        with Image.open(path) as im:
            fmt = im.format
            if fmt == "PNG":
                return parse(im.info.get(TOOL))
            if fmt == "TIFF":
                return parse(im.tag_v2.get(TIFF_DESCRIPTION_TAG))
            if fmt in ("JPEG", "MPO"):
                return parse(im.info.get("comment"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: not a readable image ({exc.__class__.__name__}); give an image written by meddeblur") from None
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        return parse(sidecar.read_text(encoding="utf-8", errors="replace"))
    return None


def own_operation(path: str | os.PathLike[str]) -> str | None:
    """What meddeblur made the existing regular file ``path`` as — its record's ``operation`` (``"deblur"``, ``"change
    map"``, ``"psf plot"``, ``"calibrate"``, ...), ``"assess"`` for an assess CSV, ``"synth"`` for a synth manifest,
    ``"export"`` for an ONNX export — or None when meddeblur did not write it, judged by its content.

    Images (PNG, TIFF, JPEG, DICOM, BMP with its sidecar) carry a provenance record; a ``.json`` holding a record (a BMP
    sidecar, a calibrated PSF) or a synth manifest, an assess CSV (its exact header row) and an ONNX export (its
    ``meddeblur_weights_id`` metadata) are recognised too. Anything unreadable is not ours.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if not path.is_file():
            return None
        if suffix == ".json":
            with open(path, "rb") as fh:
                data = json.loads(fh.read(1 << 24).decode("utf-8", "replace"))
            if isinstance(data, dict) and data.get("tool") == TOOL:
                return str(data.get("operation", "deblur"))
            return "synth" if isinstance(data, dict) and "meddeblur" in data and "spec" in data else None
        if suffix == ".csv":
            with open(path, encoding="utf-8", errors="replace", newline="") as fh:
                return "assess" if fh.readline().rstrip("\r\n") == ",".join(ASSESS_CSV_COLUMNS) else None
        if suffix == ".onnx":
            import onnx

            model = onnx.load(os.fspath(path), load_external_data=False)
            return "export" if any(prop.key == "meddeblur_weights_id" for prop in model.metadata_props) else None
        record = read_provenance(path)
        return None if record is None else str(record.get("operation", "deblur"))
    except Exception:  # not an image, corrupt, unreadable: not something we wrote
        return None


def is_own_file(path: str | os.PathLike[str]) -> bool:
    """True if the existing regular file ``path`` is an earlier meddeblur output (:func:`own_operation`)."""
    return own_operation(path) is not None


def check_replaceable(
    path: str | os.PathLike[str], overwrite: bool, option: str = "output path", operation: str | None = None
) -> None:
    """The overwrite rule: UserError if ``path`` exists, is not meddeblur's own earlier output — of ``operation`` when
    given, so that a PSF figure never replaces a deblurred image of the same name — and ``overwrite`` is off (or if its
    name is too long to be written at all, so that a run stops before writing anything rather than part-way).

    ``option`` names what the caller calls the path in the message (a parameter, or a CLI flag).
    """
    path = Path(path)
    check_name_length(path)
    if overwrite or not os.path.lexists(path) or path.is_dir():
        return
    found = None if os.path.islink(path) else own_operation(path)
    if found is None:
        raise UserError(
            f"{path}: exists and was not written by meddeblur; move it away, choose another {option}, "
            "or pass overwrite=True to replace it",
            value=path,
        )
    if operation is not None and found != operation:
        raise UserError(
            f"{path}: exists and is meddeblur's {found} output, not a {operation} output; move it away, choose "
            f"another {option}, or pass overwrite=True to replace it",
            value=path,
        )


def check_planned(planned: list[tuple[Path, str, str, str | None]], inputs: list[Path], overwrite: bool) -> None:
    """Every file a run will write, checked together before anything is written: (path, what it is — "the output of
    in/x.png" —, the option that chose it, the ``operation`` its record will carry — None for a file without one).

    The rules are the outputs' rules for all of them: never an input (not even with ``overwrite``), never a path
    another planned file takes, never a folder (or a link loop) in the way, and an existing file only if meddeblur
    wrote it as the same kind of file (:func:`check_replaceable`) or ``overwrite``.
    """
    sources = {resolved_path(path) for path in inputs}
    taken: dict[Path, str] = {}
    for path, what, option, operation in planned:
        try:
            where = path.resolve()
        except (OSError, RuntimeError):  # RuntimeError before Python 3.13
            raise UserError(f"{path}: is a symbolic link loop; remove it or choose another {option}", value=path) from None
        if where in sources:
            raise UserError(
                f"{path}: is an input, and {what} would overwrite an input there (never done, not even with "
                f"overwrite); choose another {option}",
                value=path,
            )
        if where in taken:
            raise UserError(
                f"{path}: both {taken[where]} and {what} would be written there; deblur them into separate "
                "folders or choose other names",
                value=path,
            )
        taken[where] = what
        if path.is_dir():
            raise UserError(f"{path}: is a folder in the way of {what}; remove it or choose another {option}", value=path)
        check_replaceable(path, overwrite, option, operation)
