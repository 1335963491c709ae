"""Bounded fuzzing of the image reader, ``meddeblur.io.decode.read_image``, on files.

A script, not a test. Hypothesis draws structured mutations of small valid PNG,
JPEG, TIFF and BMP files made in memory (truncations, byte flips, spliced and
deleted ranges, header fields such as PNG IHDR / JPEG SOF / TIFF IFD / BMP
BITMAPINFOHEADER set to edge values with the PNG CRCs recomputed or not, and plain
random bytes) and each result is written to a file and read back in a separate
worker process. The property:

* ``read_image`` returns a valid image (float32 (H, W, 3) RGB and optional (H, W)
  alpha, finite, in [0, 1], H and W at least ``min_size``, H·W at most
  ``max_pixels``, bit depth 8 or 16, format PNG/JPEG/TIFF/BMP) or raises ``UserError``;
* and prints nothing on file descriptor 2 (C libraries included).

Anything else is a finding: another exception, a wrong result, output on fd 2, a
read taking more than ``--timeout`` seconds (the worker is killed and restarted) or
a crash of the worker. Findings are saved as reproducer files.

    python -m benchmarks.stress.fuzz_decode                                  # 5000 examples or 120 s
    python -m benchmarks.stress.fuzz_decode --examples 200 --seconds 20 --out /tmp/fuzz
    python -m benchmarks.stress.fuzz_decode --replay benchmarks/results/fuzz_findings/x.bin
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import multiprocessing
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from PIL import Image

from benchmarks.common import RESULTS, command, describe_machine, write_result

# Small enough that a header claiming it does not swap a shared machine, large enough to pass every seed.
FUZZ_MAX_PIXELS = 4_000_000
EDGE_INTS = (0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 255, 256, 4095, 4096, 65535, 65536, 100_000,
             2**31 - 1, 2**31, 2**32 - 1)


# --------------------------------------------------------------------------- seeds


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def make_seeds() -> dict[str, bytes]:
    """Small valid files covering the decoder paths read_image takes."""
    import cv2

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    gray = rgb.convert("L")
    exif = Image.Exif()
    exif[0x0112] = 6
    deep = rng.integers(0, 65536, (18, 20, 3), dtype=np.uint16)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    seeds = {
        "png_rgb": _encode(rgb, "PNG"),
        "png_rgba_interlaced": _encode(rgb.convert("RGBA"), "PNG", interlace=1),
        "png_palette_trns": _encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG", transparency=0),
        "png_gray": _encode(gray, "PNG"),
        "png_bilevel": _encode(gray.convert("1"), "PNG"),
        "png_gray16": _encode(Image.fromarray(deep[..., 0]), "PNG"),
        "png_rgb16": cv2.imencode(".png", deep)[1].tobytes(),
        "png_rgba16": cv2.imencode(".png", np.dstack([deep, deep[..., :1]]))[1].tobytes(),
        "apng": _encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "jpeg_baseline": _encode(rgb, "JPEG", quality=80),
        "jpeg_progressive_exif": _encode(rgb, "JPEG", progressive=True, exif=exif),
        "jpeg_gray": _encode(gray, "JPEG"),
        "jpeg_cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "tiff_raw": _encode(rgb, "TIFF"),
        "tiff_lzw": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff_deflate_rgba": _encode(rgb.convert("RGBA"), "TIFF", compression="tiff_adobe_deflate"),
        "tiff_packbits_gray": _encode(gray, "TIFF", compression="packbits"),
        "tiff_jpeg": _encode(rgb, "TIFF", compression="jpeg"),
        "tiff_rgb16": cv2.imencode(".tif", deep)[1].tobytes(),
        "tiff_multipage": _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "bmp_rgb": _encode(rgb, "BMP"),
        "bmp_palette": _encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "BMP"),
        "bmp_rle8": _bmp_rle8(),
    }
    return seeds


def _bmp_rle8() -> bytes:
    """A 16×16 8-bit RLE-compressed BMP (Pillow reads but does not write these)."""
    rows = b"".join(bytes([16, y * 8 % 256]) + b"\x00\x00" for y in range(16)) + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    offset = 14 + 40 + len(palette)
    header = struct.pack("<2sIHHI", b"BM", offset + len(rows), 0, 0, offset)
    info = struct.pack("<IiiHHIIiiII", 40, 16, 16, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    return header + info + palette + rows


# --------------------------------------------------------------------------- mutations


def _png_chunks(blob: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of each chunk of a PNG, as far as it parses."""
    chunks, at = [], 8
    while at + 8 <= len(blob):
        length = struct.unpack(">I", blob[at:at + 4])[0]
        chunks.append((at, blob[at + 4:at + 8], length))
        at += 12 + length
    return chunks


def _fix_png_crc(blob: bytearray, at: int, length: int) -> None:
    end = at + 8 + length
    if end + 4 <= len(blob):
        blob[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(blob[at + 4:end])))


def _tiff_entries(blob: bytes) -> tuple[str, list[int]]:
    """Byte order and offsets of the entries of a TIFF's first IFD."""
    order = "<" if blob[:2] == b"II" else ">"
    try:
        ifd = struct.unpack(order + "I", blob[4:8])[0]
        count = struct.unpack(order + "H", blob[ifd:ifd + 2])[0]
    except struct.error:
        return order, []
    return order, [ifd + 2 + 12 * i for i in range(count) if ifd + 14 + 12 * i <= len(blob)]


def _jpeg_markers(blob: bytes) -> list[tuple[int, int]]:
    """(offset, marker) of the segments before the scan data."""
    found, at = [], 2
    while at + 4 <= len(blob) and blob[at] == 0xFF:
        marker = blob[at + 1]
        length = struct.unpack(">H", blob[at + 2:at + 4])[0]
        found.append((at, marker))
        if marker == 0xDA:
            break
        at += 2 + length
    return found


def _edge_int(data: st.DataObject, bits: int) -> int:
    value = data.draw(st.one_of(st.sampled_from(EDGE_INTS), st.integers(0, 2**bits - 1)), label="value")
    return value % (2**bits)


def mutate_header(data: st.DataObject, blob: bytearray) -> bytearray:
    """Set one header field of the file's format to an edge value."""
    if blob[:8] == b"\x89PNG\r\n\x1a\n":
        chunks = _png_chunks(blob)
        if not chunks:
            return blob
        at, kind, length = data.draw(st.sampled_from(chunks), label="chunk")
        if kind == b"IHDR" and length >= 13:
            field = data.draw(st.sampled_from(["width", "height", "depth", "color", "compress", "filter", "interlace"]))
            offsets = {"width": (8, 4), "height": (12, 4), "depth": (16, 1), "color": (17, 1), "compress": (18, 1),
                       "filter": (19, 1), "interlace": (20, 1)}
            offset, size = offsets[field]
            blob[at + offset:at + offset + size] = _edge_int(data, 8 * size).to_bytes(size, "big")
        else:
            field_at = at + 8 + _position(data, min(length, len(blob)))
            if field_at < len(blob):
                blob[field_at] = data.draw(st.integers(0, 255), label="new byte")
            if data.draw(st.booleans(), label="length"):
                blob[at:at + 4] = _edge_int(data, 32).to_bytes(4, "big")
        if data.draw(st.booleans(), label="fix crc"):
            _fix_png_crc(blob, at, length)
    elif blob[:3] == b"\xff\xd8\xff":
        markers = _jpeg_markers(blob)
        if not markers:
            return blob
        at, marker = data.draw(st.sampled_from(markers), label="segment")
        if marker in (0xC0, 0xC1, 0xC2) and at + 10 <= len(blob):
            field = data.draw(st.sampled_from([(4, 1), (5, 2), (7, 2), (9, 1), (11, 1), (12, 1)]), label="sof field")
            offset, size = field
            if at + offset + size <= len(blob):
                blob[at + offset:at + offset + size] = _edge_int(data, 8 * size).to_bytes(size, "big")
        elif data.draw(st.booleans(), label="marker or length"):
            blob[at + 1] = data.draw(st.integers(0xC0, 0xFE), label="marker")
        else:
            blob[at + 2:at + 4] = _edge_int(data, 16).to_bytes(2, "big")
    elif blob[:2] in (b"II", b"MM"):
        order, entries = _tiff_entries(bytes(blob))
        if not entries:
            return blob
        at = data.draw(st.sampled_from(entries), label="entry")
        field = data.draw(st.sampled_from(["tag", "type", "count", "value"]), label="ifd field")
        offset, size = {"tag": (0, 2), "type": (2, 2), "count": (4, 4), "value": (8, 4)}[field]
        blob[at + offset:at + offset + size] = _edge_int(data, 8 * size).to_bytes(size, "little" if order == "<" else "big")
    elif blob[:2] == b"BM" and len(blob) >= 54:
        offset, size, signed = data.draw(st.sampled_from(
            [(2, 4, False), (10, 4, False), (14, 4, False), (18, 4, True), (22, 4, True), (26, 2, False), (28, 2, False),
             (30, 4, False), (34, 4, False), (46, 4, False)]), label="bmp field")
        value = _edge_int(data, 8 * size)
        if signed and data.draw(st.booleans(), label="negative"):
            value = (-value) % (2 ** (8 * size))
        blob[offset:offset + size] = value.to_bytes(size, "little")
    return blob


def _position(data: st.DataObject, size: int) -> int:
    """An offset in [0, size): Hypothesis' own choice (drawn to edges) a third of the time, else uniform."""
    if size <= 1:
        return 0
    if data.draw(st.integers(0, 2), label="uniform?"):
        return data.draw(st.randoms(use_true_random=False), label="rng").randrange(size)
    return data.draw(st.integers(0, size - 1), label="position")


def mutate(data: st.DataObject, blob: bytearray) -> bytearray:
    op = data.draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "header", "header", "splice"]),
                   label="op")
    if not blob and op != "insert":
        return blob
    position = _position(data, len(blob))
    if op == "truncate":
        return blob[:position]
    if op == "flip":
        blob[position] ^= data.draw(st.integers(1, 255), label="xor")
        return blob
    if op == "overwrite":
        chunk = data.draw(st.binary(min_size=1, max_size=16), label="bytes")
        blob[position:position + len(chunk)] = chunk
        return blob
    if op == "insert":
        return blob[:position] + bytearray(data.draw(st.binary(min_size=1, max_size=64), label="bytes")) + blob[position:]
    if op == "delete":
        return blob[:position] + blob[position + data.draw(st.integers(1, 64), label="length"):]
    if op == "splice":  # repeat a range: duplicated chunks, segments, strips
        end = min(len(blob), position + data.draw(st.integers(1, 256), label="length"))
        return blob[:end] + blob[position:end] + blob[end:]
    return mutate_header(data, blob)


# --------------------------------------------------------------------------- the worker


def _check(image, min_size: int, max_pixels: int) -> str | None:
    """What is wrong with a returned image, or None."""
    rgb, alpha = image.rgb, image.alpha
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.float32 or rgb.ndim != 3 or rgb.shape[2] != 3:
        return f"rgb is {type(rgb).__name__} {getattr(rgb, 'dtype', '?')} {getattr(rgb, 'shape', '?')}"
    height, width = rgb.shape[:2]
    if height < min_size or width < min_size or height * width > max_pixels:
        return f"returned a {width}x{height} image"
    if not np.isfinite(rgb).all() or rgb.min() < 0 or rgb.max() > 1:
        return "rgb values not finite or outside [0, 1]"
    if alpha is not None:
        if alpha.dtype != np.float32 or alpha.shape != (height, width):
            return f"alpha is {alpha.dtype} {alpha.shape} for a {width}x{height} image"
        if not np.isfinite(alpha).all() or alpha.min() < 0 or alpha.max() > 1:
            return "alpha values not finite or outside [0, 1]"
    if image.bit_depth not in (8, 16) or image.format not in ("PNG", "JPEG", "TIFF", "BMP"):
        return f"bit depth {image.bit_depth}, format {image.format}"
    return None


def worker(conn, folder: str, min_size: int, max_pixels: int, memory_gib: float) -> None:
    """Read each file sent, answer (outcome, detail); fd 2 goes to a file so any output on it is seen."""
    try:
        import resource

        limit = int(memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    from meddeblur.errors import UserError
    from meddeblur.io.decode import read_image

    noise = open(os.path.join(folder, "stderr.log"), "w+b")
    os.dup2(noise.fileno(), 2)
    while True:
        job = conn.recv()
        if job is None:
            return
        name, blob = job
        path = os.path.join(folder, name)
        with open(path, "wb") as fh:
            fh.write(blob)
        printed_before = os.fstat(2).st_size
        try:
            image = read_image(path, min_size=min_size, max_pixels=max_pixels)
            problem = _check(image, min_size, max_pixels)
            outcome = ("finding", f"bad result: {problem}") if problem else ("ok", f"{image.format} {image.bit_depth}-bit")
        except UserError as error:
            message = str(error)
            outcome = ("user", message) if "\n" not in message and message.startswith(path) else ("finding", f"bad UserError: {message!r}")
        except BaseException as error:  # noqa: BLE001 - that is the point
            outcome = ("finding", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=6)}")
        os.remove(path)
        printed = os.fstat(2).st_size - printed_before
        if printed and outcome[0] != "finding":
            noise.seek(printed_before)
            outcome = ("finding", f"printed on fd 2: {noise.read(printed)[:300]!r}")
        conn.send(outcome)


class Reader:
    """The worker process, restarted after a hang or a crash."""

    def __init__(self, folder: Path, min_size: int, max_pixels: int, memory_gib: float, timeout: float) -> None:
        self.args = (str(folder), min_size, max_pixels, memory_gib)
        self.timeout = timeout
        # spawn, not fork: a fresh interpreter inherits no thread pools (OpenCV, OpenMP) in an unknown state.
        self.context = multiprocessing.get_context("spawn")
        self.process = None
        self.restarts = 0

    def start(self) -> None:
        self.conn, child = self.context.Pipe()
        self.process = self.context.Process(target=worker, args=(child, *self.args), daemon=True)
        self.process.start()
        child.close()

    def read(self, name: str, blob: bytes) -> tuple[str, str]:
        if self.process is None or not self.process.is_alive():
            self.start()
        started = time.perf_counter()
        try:
            self.conn.send((name, blob))
            if self.conn.poll(self.timeout):
                return self.conn.recv()
            outcome = ("finding", f"hang: no answer after {self.timeout:.0f} s")
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.process.join(2)
            outcome = ("finding", f"crash: worker exit code {self.process.exitcode} after {time.perf_counter() - started:.1f} s")
        self.process.kill()
        self.process.join()
        self.process = None
        self.restarts += 1
        return outcome

    def stop(self) -> None:
        if self.process is not None and self.process.is_alive():
            self.conn.send(None)
            self.process.join(5)
            self.process.kill()


# --------------------------------------------------------------------------- the run


def _category(message: str, path_prefix: str) -> str:
    """A UserError message without its path and numbers, to count kinds of refusal."""
    text = message.split(": ", 1)[1] if message.startswith(path_prefix) else message
    text = text.split(";")[0]
    return re.sub(r"\d[\d,x]*", "N", text)


def fuzz(examples: int, seconds: float, timeout: float, seed: int, min_size: int, max_pixels: int, memory_gib: float,
         findings_dir: Path) -> dict:
    seeds = make_seeds()
    names = sorted(seeds)
    extension = {"png": ".png", "apng": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp"}
    counts: collections.Counter = collections.Counter()
    per_seed: dict[str, collections.Counter] = {n: collections.Counter() for n in names}
    refusals: collections.Counter = collections.Counter()
    decoded: collections.Counter = collections.Counter()
    findings: dict[str, dict] = {}
    notable: dict[str, dict] = {}
    folder = Path(tempfile.mkdtemp(prefix="meddeblur-fuzz-"))
    reader = Reader(folder, min_size, max_pixels, memory_gib, timeout)
    started = time.perf_counter()
    slowest = [0.0, ""]

    def run_one(name: str, blob: bytes, origin: str) -> None:
        file_name = "input" + extension[name.split("_")[0]]
        t0 = time.perf_counter()
        outcome, detail = reader.read(file_name, blob)
        elapsed = time.perf_counter() - t0
        if elapsed > slowest[0]:
            slowest[:] = [elapsed, origin]
        counts[outcome] += 1
        per_seed[name][outcome] += 1
        if outcome == "user":
            category = _category(detail, str(folder / file_name))
            refusals[category] += 1
            if "memory" in category and category not in notable:
                # Within the pixel limit yet out of memory: some other header field drives an allocation.
                notable[category] = {"origin": origin, "detail": detail.replace(str(folder / file_name), file_name),
                                     "base64": base64.b64encode(blob).decode() if len(blob) <= 3000 else None}
        elif outcome == "ok":
            decoded[detail] += 1
        else:
            signature = detail.splitlines()[0][:160]
            if signature not in findings:
                findings_dir.mkdir(parents=True, exist_ok=True)
                reproducer = findings_dir / f"finding-{len(findings) + 1:02d}{extension[name.split('_')[0]]}"
                reproducer.write_bytes(blob)
                findings[signature] = {"count": 0, "seed_file": name, "origin": origin, "detail": detail[:2000],
                                       "reproducer": str(reproducer)}
            findings[signature]["count"] += 1

    # Every seed as it is, first: they must all decode.
    for name in names:
        run_one(name, seeds[name], "unmutated seed")
    unmutated_ok = counts["ok"] == len(names)

    state = {"done": 0, "stopped_by_time": False}

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(st.data())
    def one(data: st.DataObject) -> None:
        if time.perf_counter() - started > seconds:
            state["stopped_by_time"] = True
            return
        name = data.draw(st.sampled_from(names), label="seed")
        if data.draw(st.integers(0, 19), label="random bytes?") == 0:  # 5 %: random bytes, maybe after a real signature
            prefix = seeds[name][:data.draw(st.sampled_from([0, 2, 4, 8, 16]), label="keep")]
            blob = bytearray(prefix + data.draw(st.binary(min_size=1, max_size=512), label="random"))
            origin = f"random bytes after {len(prefix)} bytes of {name}"
        else:
            blob = bytearray(seeds[name])
            n_ops = data.draw(st.integers(1, 4), label="mutations")
            for _ in range(n_ops):
                blob = mutate(data, blob)
            origin = f"{n_ops} mutation(s) of {name}"
        state["done"] += 1
        run_one(name, bytes(blob), origin)

    try:
        one()
    finally:
        reader.stop()
        shutil.rmtree(folder, ignore_errors=True)
    elapsed = time.perf_counter() - started
    return {
        "examples": state["done"], "seeds": len(names), "seconds": round(elapsed, 1),
        "stopped_by_time": state["stopped_by_time"], "unmutated_seeds_all_ok": unmutated_ok,
        "outcomes": {k: counts.get(k, 0) for k in ("ok", "user", "finding")},
        "worker_restarts": reader.restarts, "slowest_read_s": round(slowest[0], 3), "slowest_input": slowest[1],
        "decoded_as": dict(decoded.most_common()), "refusals": dict(refusals.most_common(25)),
        "per_seed": {n: dict(c) for n, c in per_seed.items()},
        "findings": list(findings.values()), "notable": list(notable.values()),
    }


def machine() -> dict:
    import cv2
    import hypothesis
    import PIL

    return {**describe_machine(), "pillow": PIL.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
            "hypothesis": hypothesis.__version__}


def markdown(result: dict) -> str:
    o = result["outcomes"]
    lines = [
        "# Fuzzing `meddeblur.io.decode.read_image`",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores (shared), {result['machine']['platform']}; "
        f"Python {result['machine']['python']}, Pillow {result['machine']['pillow']}, OpenCV {result['machine']['opencv']}, "
        f"NumPy {result['machine']['numpy']}, Hypothesis {result['machine']['hypothesis']}",
        "",
        f"Property: each input file is read in a worker process; `read_image(path, min_size={result['min_size']}, "
        f"max_pixels={result['max_pixels']:,})` must return a valid image (float32 RGB (H, W, 3) and alpha (H, W), "
        "finite, in [0, 1], sides ≥ min_size, pixels ≤ max_pixels) or raise a one-line `UserError` naming the file, and print "
        f"nothing on fd 2. Anything else, a read over {result['timeout']:g} s (hang) or a worker crash is a finding.",
        "",
        "| examples | seconds | ok | UserError | findings | worker restarts | slowest read |",
        "|---|---|---|---|---|---|---|",
        f"| {result['examples']} (+{result['seeds']} unmutated seeds) | {result['seconds']} | {o['ok']} | {o['user']} | "
        f"{o['finding']} | {result['worker_restarts']} | {result['slowest_read_s']} s |",
        "",
        f"Stopped by: {'the time bound' if result['stopped_by_time'] else 'the example count'}. "
        f"Unmutated seeds all decode: {result['unmutated_seeds_all_ok']}.",
        "",
        "## Findings",
        "",
    ]
    if not result["findings"]:
        lines.append("None.")
    for finding in result["findings"]:
        lines += [f"- **{finding['detail'].splitlines()[0]}** ({finding['count']}×, from {finding['origin']}); "
                  f"reproducer `{finding['reproducer']}`", "", "```", finding["detail"], "```", ""]
    if result.get("notable"):
        lines += ["", "Notable refusals (a UserError, so within the property, but worth a look). The worker runs under an "
                  f"address-space limit of {result.get('memory_gib', 3):g} GiB. A PNG whose IDAT chunk claims a length "
                  "near 4 GiB makes Pillow skip the rest of it with one `fp.read(length)` (PngImagePlugin `load_end`), "
                  "which reserves that much: under the limit that is a MemoryError, which `read_image` turns into this "
                  "UserError; without a limit the reservation is never touched and the file is refused as corrupt with "
                  "about 50 MiB resident.", ""]
        for n in result["notable"]:
            lines += [f"- `{n['detail']}` (from {n['origin']}); the file, base64:", "", "```", n["base64"] or "(too long)", "```"]
    lines += ["", "## Refusals (UserError kinds, numbers as N)", "", "| count | message |", "|---|---|"]
    lines += [f"| {n} | {m} |" for m, n in result["refusals"].items()]
    lines += ["", "## Decoded", "", "| count | as |", "|---|---|"]
    lines += [f"| {n} | {m} |" for m, n in result["decoded_as"].items()]
    lines += ["", "## Per seed file", "", "| seed | ok | UserError | findings |", "|---|---|---|---|"]
    lines += [f"| {s} | {c.get('ok', 0)} | {c.get('user', 0)} | {c.get('finding', 0)} |" for s, c in result["per_seed"].items()]
    return "\n".join(lines) + "\n"


def replay(path: Path, min_size: int, max_pixels: int) -> int:
    from meddeblur.errors import UserError
    from meddeblur.io.decode import read_image

    try:
        image = read_image(path, min_size=min_size, max_pixels=max_pixels)
    except UserError as error:
        print(f"UserError: {error}")
        return 0
    problem = _check(image, min_size, max_pixels)
    print(problem or f"ok: {image.format} {image.bit_depth}-bit {image.rgb.shape}")
    return 1 if problem else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=5000, help="maximum mutated inputs (default 5000)")
    parser.add_argument("--seconds", type=float, default=120, help="time bound of the run (default 120)")
    parser.add_argument("--timeout", type=float, default=5, help="seconds one read may take before it counts as a hang")
    parser.add_argument("--seed", type=int, default=20261124, help="Hypothesis seed (default fixed, so runs repeat)")
    parser.add_argument("--min-size", type=int, default=16)
    parser.add_argument("--max-pixels", type=int, default=FUZZ_MAX_PIXELS)
    parser.add_argument("--memory-gib", type=float, default=3.0, help="address-space limit of the worker")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for fuzz_decode.{md,json} and fuzz_findings/")
    parser.add_argument("--replay", type=Path, help="read one file (a reproducer) in this process and say what happens")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay, args.min_size, args.max_pixels)
    result = fuzz(args.examples, args.seconds, args.timeout, args.seed, args.min_size, args.max_pixels, args.memory_gib,
                  args.out / "fuzz_findings")
    result.update({
        "command": command("stress.fuzz_decode", argv),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "min_size": args.min_size, "max_pixels": args.max_pixels, "timeout": args.timeout, "hypothesis_seed": args.seed,
        "memory_gib": args.memory_gib,
    })
    write_result("fuzz_decode", result, markdown(result), args.out)
    o = result["outcomes"]
    print(f"{result['examples']} examples in {result['seconds']} s: {o['ok']} ok, {o['user']} UserError, {o['finding']} findings "
          f"→ {args.out / 'fuzz_decode.md'}")
    return 1 if result["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
