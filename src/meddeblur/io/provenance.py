"""Provenance: every output says it was computer-processed, by which tool, version, model and settings.

A record is a small JSON object (:func:`make_record`). Where it goes:

* PNG: an ``iTXt`` chunk with keyword ``meddeblur`` (plus a ``Software`` ``tEXt`` chunk), right after IHDR;
* TIFF: the ImageDescription tag (270) and the Software tag (305);
* JPEG: a comment (COM) segment after the APPn segments;
* DICOM: DerivationDescription (readable summary) and a private ``meddeblur`` block holding the JSON
  (written by :mod:`meddeblur.io.dicom`);
* BMP, which has no metadata field: a ``NAME.bmp.json`` sidecar file beside the image.

Embedding works on encoded bytes, whichever library encoded them (OpenCV writes the 16-bit
files and cannot add metadata itself). Reading a record back, and telling meddeblur's own files from others',
is :mod:`meddeblur.io.ownership`.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from meddeblur import __version__

__all__ = [
    "TOOL",
    "NOTE",
    "make_record",
    "with_losses",
    "summary",
    "source_line",
    "restoration_line",
    "restoration_lines",
    "to_json",
    "parse",
    "embed",
    "add_png_chunk",
    "png_chunk",
    "sidecar_path",
]

TOOL = "meddeblur"
#: Said in every record: a deblurred image must never pass for an original.
NOTE = "computer-processed (deblurred); not for diagnosis alone"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_DESCRIPTION_TAG, _TIFF_SOFTWARE = 270, 305  # ImageDescription, Software


def make_record(
    model_id: str | None = None, model: str | None = None, engine: str | None = None, parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The provenance of one processing run: tool, version, model id (weights hash), engine and parameters.

    What each output adds per image is its writer's: ``source`` (the input's file name — never its folders, which
    often carry a patient's name —, size, modification time and SHA-256 digest, which proves it) and ``time``.
    """
    record: dict[str, Any] = {"tool": TOOL, "version": __version__, "operation": "deblur"}
    if model_id is not None:
        record["model_id"] = model_id
    if model is not None:
        record["model"] = model
    if engine is not None:
        record["engine"] = engine
    record["parameters"] = dict(parameters or {})
    record["note"] = NOTE
    return record


def with_losses(record: dict[str, Any], losses: list[str]) -> dict[str, Any]:
    """``record`` plus what of the source this output does not keep (``not_kept``: one phrase each), e.g. an ICC
    profile of another colour space; the record itself when nothing was lost."""
    if not losses:
        return record
    return {**record, "not_kept": [*record.get("not_kept", []), *losses]}


def _psf_summary(psf: dict[str, Any]) -> str:
    """``gauss:sigma=1.6 (11×11 px, MTF50 0.117 cycles/px, digest 3a3ccb78ce51)`` from a PSF's provenance entry."""
    size = "×".join(str(side) for side in reversed(psf.get("size") or [])) or "?"
    mtf50 = psf.get("mtf50_cycles_per_pixel")
    sharpness = f"MTF50 {mtf50:.3f} cycles/px" if isinstance(mtf50, (int, float)) else "MTF50 above Nyquist"
    return f"{psf.get('source', '?')} ({size} px, {sharpness}, digest {psf.get('digest', '?')})"


def to_json(record: dict[str, Any]) -> str:
    """Compact, ASCII-only JSON (TIFF ASCII tags and DICOM LT take no other characters)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def summary(record: dict[str, Any]) -> str:
    """One readable line, e.g. ``meddeblur 0.1.0 deblur, model 1a2b3c4d5e6f (nafnet width 16), engine torch, tile 1024``."""
    text = f"{record.get('tool', TOOL)} {record.get('version', '?')} {record.get('operation', 'deblur')}"
    if record.get("model_id"):
        text += f", model {record['model_id']}" + (f" ({record['model']})" if record.get("model") else "")
    if record.get("engine"):
        text += f", engine {record['engine']}"
    for key, value in (record.get("parameters") or {}).items():
        text += f", {key} {_psf_summary(value) if key == 'psf' and isinstance(value, dict) else value}"
    text += f"; {record.get('note', NOTE)}"
    return text + (f"; not kept: {'; '.join(map(str, record['not_kept']))}" if record.get("not_kept") else "")


def source_line(source: dict[str, Any] | None) -> str | None:
    """The input an output was made from, in one line (its ``source`` record), e.g.
    ``made from: x.png, 48,213 bytes, modified 2026-12-07T18:11:47.123456789Z, sha256 3a3ccb78…``; None without one."""
    if not isinstance(source, dict):
        return None
    size = source.get("size")
    return (
        f"made from: {source.get('name', '?')}, "
        + (f"{size:,} bytes" if isinstance(size, int) else "? bytes")
        + f", modified {source.get('mtime', '?')}, sha256 {source.get('sha256', '?')}"
    )


def _estimate(psf: dict[str, Any]) -> str:
    confidence = psf.get("confidence")
    return f"estimated PSF {psf.get('source', '?')}" + (
        f" (confidence {confidence:.2f})" if isinstance(confidence, (int, float)) else ""
    )


def restoration_line(restoration: dict[str, Any]) -> str:
    """What ``method="psf"`` did with one image, in one line (its ``restoration`` record), e.g.
    ``estimated PSF gauss:sigma=1.2 (confidence 0.93): restored with it``."""
    psf, result = restoration.get("psf"), restoration.get("result")
    said = _estimate(psf) if psf else "no PSF estimated"
    if result == "restored":
        return said + (": restored with it, cell by cell (a PSF map)" if "psf_map" in restoration else ": restored with it")
    if result == "unchanged":
        return f"{said}: left unchanged ({restoration.get('reason', 'no blur found')})"
    return f"{said}: {'not used, ' if psf else ''}restored by the blind network"


def restoration_lines(restoration: dict[str, Any] | None) -> list[str]:
    """A ``restoration`` record (``method="psf"``) as a few readable lines: the estimated PSF with its MTF50 and
    confidence, the PSF map, the consistency check against its limit, the result and why; [] for None."""
    if not restoration:
        return []
    lines = []
    psf = restoration.get("psf")
    if psf:
        confidence = psf.get("confidence")
        lines.append(
            f"estimated PSF: {_psf_summary(psf)}, family {psf.get('family', '?')}, confidence "
            + (f"{confidence:.2f}" if isinstance(confidence, (int, float)) else "?")
        )
    cells = (restoration.get("psf_map") or {}).get("cells")
    if cells:
        families: dict[str, int] = {}
        for cell in (cell for line in cells for cell in line):
            families[cell.get("family", "?")] = families.get(cell.get("family", "?"), 0) + 1
        lines.append(f"PSF map: {len(cells)}×{len(cells[0])} cells (" + ", ".join(f"{k} {v}" for k, v in families.items()) + ")")
    check = restoration.get("consistency")
    if check:

        def number(key: str) -> str:
            value = check.get(key)
            return f"{value:.2f}" if isinstance(value, (int, float)) else "?"

        lines.append(
            f"consistency: residual ratio {number('ratio')} (limit {check.get('limit')}): "
            f"{'passed' if check.get('passed') else 'failed'}; worst block {number('worst_block')} levels, "
            f"overall {number('residual')}, input noise {number('noise')}"
        )
    lines.append(f"result: {restoration.get('result', '?')}: {restoration.get('reason', 'no reason recorded')}")
    return lines


# --------------------------------------------------------------------------- embedding in encoded bytes


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def add_png_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """``data`` (a PNG stream) with one more chunk right after IHDR (where iCCP and text may go)."""
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG stream starting with IHDR")
    after_ihdr = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    return data[:after_ihdr] + png_chunk(kind, body) + data[after_ihdr:]


def _embed_png(data: bytes, record: dict[str, Any]) -> bytes:
    # iTXt: keyword, NUL, compression flag 0, method 0, empty language tag and translated keyword.
    data = add_png_chunk(data, b"tEXt", b"Software\x00" + f"{TOOL} {record.get('version', __version__)}".encode())
    return add_png_chunk(data, b"iTXt", TOOL.encode() + b"\x00\x00\x00\x00\x00" + to_json(record).encode())


def _embed_tiff(data: bytes, record: dict[str, Any]) -> bytes:
    """Append a copy of the first IFD with ImageDescription and Software set, and point the header at it.

    Every other entry (and the strips they point to) is kept byte for byte; the old IFD is left
    unreferenced. Classic TIFF only (BigTIFF is neither read nor written here).
    """
    order = data[:4]
    if order not in (b"II*\x00", b"MM\x00*"):
        raise ValueError("not a classic TIFF stream")
    e = "<" if order.startswith(b"II") else ">"
    (first,) = struct.unpack(e + "I", data[4:8])
    (count,) = struct.unpack(e + "H", data[first : first + 2])
    entries = {
        struct.unpack(e + "H", data[first + 2 + 12 * i : first + 4 + 12 * i])[0]: data[first + 2 + 12 * i : first + 14 + 12 * i]
        for i in range(count)
    }
    next_ifd = data[first + 2 + 12 * count : first + 6 + 12 * count]
    texts = {TIFF_DESCRIPTION_TAG: to_json(record), _TIFF_SOFTWARE: f"{TOOL} {record.get('version', __version__)}"}
    out = bytearray(data)
    if len(out) % 2:
        out += b"\x00"  # an IFD starts on a word boundary
    start = len(out)
    tags = sorted(set(entries) | set(texts))
    values = bytearray()
    values_at = start + 2 + 12 * len(tags) + 4
    ifd = bytearray(struct.pack(e + "H", len(tags)))
    for tag in tags:
        if tag not in texts:
            ifd += entries[tag]
            continue
        raw = texts[tag].encode("ascii") + b"\x00"
        if len(raw) <= 4:
            ifd += struct.pack(e + "HHI", tag, 2, len(raw)) + raw.ljust(4, b"\x00")
        else:
            ifd += struct.pack(e + "HHII", tag, 2, len(raw), values_at + len(values))
            values += raw + (b"\x00" if len(raw) % 2 else b"")
    out += ifd + next_ifd + values
    out[4:8] = struct.pack(e + "I", start)
    return bytes(out)


def _embed_jpeg(data: bytes, record: dict[str, Any]) -> bytes:
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG stream")
    at = 2
    # After the APPn segments (JFIF wants APP0 first, EXIF APP1 next), before the tables.
    while data[at] == 0xFF and 0xE0 <= data[at + 1] <= 0xEF:
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    comment = to_json(record).encode()
    return data[:at] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[at:]


_EMBEDDERS = {"PNG": _embed_png, "TIFF": _embed_tiff, "JPEG": _embed_jpeg}


def embed(data: bytes, fmt: str, record: dict[str, Any]) -> bytes:
    """``data`` (an encoded PNG, TIFF or JPEG) with ``record`` written into its metadata; other formats unchanged."""
    embedder = _EMBEDDERS.get(fmt)
    return embedder(data, record) if embedder else data


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the provenance of a format without metadata (BMP) goes: ``NAME.bmp.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


# --------------------------------------------------------------------------- reading back


def parse(text: str | bytes | None) -> dict[str, Any] | None:
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("tool") == TOOL else None
