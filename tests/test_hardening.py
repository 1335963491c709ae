"""Issues 12 and 33: no silent corruption, no lost metadata, no leftovers, no overwritten files that are not ours.

Every input is generated here. Exactness is checked through an identity network, so any
change of a pixel value on the way in or out fails a test.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageCms, ImageOps, PngImagePlugin

from meddeblur.cli import main
from meddeblur.errors import UserError
from meddeblur.files import remove_stale_temporaries
from meddeblur.runs.files import deblur_files
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.decode import orient, read_image
from meddeblur.io.encode import write_image
from meddeblur.io.ownership import read_provenance
from meddeblur.io.provenance import add_png_chunk, make_record

RAMP = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))  # the reproduction
ALL_16BIT = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _ints(image) -> np.ndarray:
    """The stored integer values of a LoadedImage's colour channels (exact for 8 and 16 bits)."""
    top = 65535 if image.bit_depth == 16 else 255
    return np.round(image.rgb * top).astype(np.int64)


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --------------------------------------------------------------------------- 16-bit and wide TIFFs (items 1, 2, 8)


@pytest.mark.parametrize("alpha", [False, True], ids=["rgb", "rgba"])
def test_planar_16bit_tiff_decodes_at_16_bits(tmp_path, alpha):
    planes = [RAMP, RAMP[::-1], RAMP[:, ::-1]] + ([np.flipud(RAMP[:, ::-1])] if alpha else [])
    tifffile.imwrite(tmp_path / "ramp.tif", np.stack(planes), photometric="rgb", planarconfig="separate",
                     extrasamples=["unassalpha"] if alpha else None)
    image = read_image(tmp_path / "ramp.tif")
    assert image.bit_depth == 16 and not image.grayscale
    np.testing.assert_array_equal(_ints(image), np.dstack(planes[:3]))
    if alpha:
        np.testing.assert_array_equal(np.round(image.alpha * 65535), planes[3])


def test_identity_keeps_every_16bit_value_of_a_planar_tiff(tmp_path):
    """Through deblur_files and back: all 65,536 values, in each of three separately stored planes, bit for bit."""
    planes = np.stack([ALL_16BIT, ALL_16BIT.T, ALL_16BIT[::-1]])
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "all.tif", planes, photometric="rgb", planarconfig="separate")
    deblur_files(Identity(), [tmp_path / "in" / "all.tif"], tmp_path / "out")
    written = tifffile.imread(tmp_path / "out" / "all.tif")
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, np.moveaxis(planes, 0, -1))
    assert read_provenance(tmp_path / "out" / "all.tif")["tool"] == "meddeblur"


@pytest.mark.parametrize(("dtype", "photometric", "words"), [
    (np.int16, "minisblack", "signed 16-bit integer TIFF is not supported"),
    (np.int32, "minisblack", "signed 32-bit integer TIFF is not supported"),
    (np.uint32, "minisblack", "32-bit TIFF is not supported"),
    (np.float32, "minisblack", "32-bit floating-point TIFF is not supported"),
    (np.float32, "rgb", "32-bit floating-point TIFF is not supported"),
])
def test_signed_wide_and_float_tiffs_are_refused_never_clipped(tmp_path, dtype, photometric, words):
    values = (RAMP.astype(np.int64) - 30000).astype(dtype)  # negative and (for 32-bit) out-of-range values
    if photometric == "rgb":
        values = np.dstack([values] * 3)
    tifffile.imwrite(tmp_path / "wide.tif", values, photometric=photometric)
    with pytest.raises(UserError, match=words) as refusal:
        read_image(tmp_path / "wide.tif")
    assert str(tmp_path / "wide.tif") in str(refusal.value) and "\n" not in str(refusal.value)


def test_16bit_grey_alpha_tiff_round_trips_exactly(tmp_path):
    (tmp_path / "in").mkdir()
    grey_alpha = np.dstack([ALL_16BIT, ALL_16BIT[::-1]])
    tifffile.imwrite(tmp_path / "in" / "la.tif", grey_alpha, photometric="minisblack", extrasamples=["unassalpha"])
    image = read_image(tmp_path / "in" / "la.tif")
    assert image.grayscale and image.bit_depth == 16 and image.alpha is not None
    deblur_files(Identity(), [tmp_path / "in" / "la.tif"], tmp_path / "out")
    written = tifffile.imread(tmp_path / "out" / "la.tif")
    np.testing.assert_array_equal(written, grey_alpha)  # stays grey + alpha, every value kept


def test_16bit_cmyk_tiff_converts_like_pillow_does_8bit_cmyk(tmp_path):
    cmyk8 = np.random.default_rng(1).integers(0, 256, (24, 40, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "cmyk16.tif", cmyk8.astype(np.uint16) * 257, photometric="separated")
    image = read_image(tmp_path / "cmyk16.tif")
    assert image.bit_depth == 16 and image.rgb.shape == (24, 40, 3)
    pillow = np.asarray(Image.fromarray(cmyk8, "CMYK").convert("RGB")).astype(np.float64)
    assert np.abs(image.rgb * 255 - pillow).max() <= 1.0


# --------------------------------------------------------------------------- metadata: orientation, ICC, tRNS (item 7)


def _stored(fmt: str, pixels: np.ndarray, orientation: int, path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    if fmt == "png16":
        ok, data = cv2.imencode(".png", (pixels.astype(np.uint16) * 257)[:, :, ::-1])
        assert ok
        raw = exif.tobytes()
        path.write_bytes(add_png_chunk(data.tobytes(), b"eXIf", raw[6:] if raw.startswith(b"Exif\x00\x00") else raw))
    elif fmt == "png":
        Image.fromarray(pixels).save(path, exif=exif)
    else:
        Image.fromarray(pixels).save(path, tiffinfo={0x0112: orientation})


@pytest.mark.parametrize("orientation", [3, 5, 6, 8])
@pytest.mark.parametrize("fmt", ["tiff", "png", "png16"])
def test_stored_orientation_is_applied_like_jpeg_exif(tmp_path, fmt, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (20, 36, 3), dtype=np.uint8)
    path = tmp_path / f"o.{'tif' if fmt == 'tiff' else 'png'}"
    _stored(fmt, pixels, orientation, path)
    image = read_image(path)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path).convert("RGB")))
    np.testing.assert_array_equal(np.round(image.rgb * 255).astype(np.uint8), expected)
    np.testing.assert_array_equal(np.round(image.rgb * 255).astype(np.uint8), orient(pixels, orientation))


@pytest.mark.parametrize(("name", "bit_depth"), [("a.png", 8), ("a16.png", 16), ("a.jpg", 8), ("a.tif", 8), ("a16.tif", 16)])
def test_icc_profile_is_copied_to_the_output(tmp_path, name, bit_depth):
    icc = _srgb_icc()
    rgb = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    write_image(tmp_path / "in" / name, rgb, bit_depth=bit_depth, icc=icc)
    assert read_image(tmp_path / "in" / name).icc == icc
    deblur_files(Identity(), [tmp_path / "in" / name], tmp_path / "out")
    out = read_image(tmp_path / "out" / name)
    assert out.icc == icc and out.bit_depth == bit_depth
    with Image.open(tmp_path / "out" / name) as written:  # what a colour-managed viewer reads
        assert written.info.get("icc_profile") == icc


@pytest.mark.parametrize("kind", ["grey8", "rgb8", "rgb16"])
def test_png_colour_key_transparency_becomes_alpha(tmp_path, kind):
    rng = np.random.default_rng(2)
    if kind == "grey8":
        pixels = rng.integers(1, 256, (20, 20), dtype=np.uint8)
        pixels[3, 4] = 0
        Image.fromarray(pixels).save(tmp_path / "k.png", transparency=0)
    elif kind == "rgb8":
        pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
        pixels[3, 4] = (1, 2, 3)
        Image.fromarray(pixels).save(tmp_path / "k.png", transparency=(1, 2, 3))
    else:
        pixels = rng.integers(0, 65536, (20, 20, 3), dtype=np.uint16)
        pixels[3, 4] = (257, 514, 771)
        ok, data = cv2.imencode(".png", pixels[:, :, ::-1])
        (tmp_path / "k.png").write_bytes(add_png_chunk(data.tobytes(), b"tRNS", struct.pack(">HHH", 257, 514, 771)))
    image = read_image(tmp_path / "k.png")
    assert image.alpha is not None and image.alpha[3, 4] == 0 and (image.alpha == 0).sum() == 1 and image.alpha.max() == 1
    write_image(tmp_path / "out.png", image.rgb, alpha=image.alpha, grayscale=image.grayscale, bit_depth=image.bit_depth)
    assert read_image(tmp_path / "out.png").alpha[3, 4] == 0  # the output keeps it as an alpha channel


@pytest.mark.parametrize("where", ["before_idat", "after_idat"])
def test_png_with_text_beyond_pillows_limit_is_decoded(tmp_path, where):
    pixels = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    data = buffer.getvalue()
    text = b"comment\x00\x00" + zlib.compress(b"x" * (2 * PngImagePlugin.MAX_TEXT_CHUNK))
    chunk = struct.pack(">I", len(text)) + b"zTXt" + text + struct.pack(">I", zlib.crc32(b"zTXt" + text))
    if where == "before_idat":
        data = add_png_chunk(data, b"zTXt", text)
    else:
        data = data[:-12] + chunk + data[-12:]  # just before IEND
    (tmp_path / "t.png").write_bytes(data)
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "t.png").rgb * 255), pixels)


# --------------------------------------------------------------------------- interruption and leftovers (item 6)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_temporaries_of_dead_or_long_gone_runs_are_removed(tmp_path):
    dead = tmp_path / f".a.png.tmp-{_dead_pid()}-0123456789ab.png"
    live = tmp_path / f".b.png.tmp-{os.getpid()}-0123456789ab.png"
    old_style = tmp_path / ".c.png.tmp-0123456789ab.png"
    ancient = tmp_path / f".d.png.tmp-{os.getppid()}-0123456789ab.png"
    other = tmp_path / ".e.png.tmp-notours.png"
    for path in (dead, live, old_style, ancient, other):
        path.write_bytes(b"partial")
    os.utime(ancient, (time.time() - 7200, time.time() - 7200))
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([dead, ancient])
    assert live.exists() and old_style.exists() and other.exists()


_STALL_IN_WRITE = """
import os, sys, time
def stall(fd):
    print("writing", flush=True)
    time.sleep(120)
os.fsync = stall
from meddeblur.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _stalled_deblur(tmp_path: Path, weights: Path) -> subprocess.Popen:
    """`meddeblur deblur` in a child process, stopped inside the write of its output (a temporary file exists)."""
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")
    child = subprocess.Popen([sys.executable, "-c", _STALL_IN_WRITE, "deblur", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"),
                              "--model", str(weights)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.stdout.readline().strip() == "writing", child.stderr.read()
    assert [p.name for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name], "no temporary file while writing"
    return child


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_leave_no_temporary_file(tmp_path, tiny_weights, signum):
    child = _stalled_deblur(tmp_path, tiny_weights)
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signum, err
    assert err.strip().count("\n") == 0 and f"stopped by {signal.Signals(signum).name}" in err and "Traceback" not in err
    assert list((tmp_path / "out").iterdir()) == []  # neither the temporary file nor a half-written output


def test_a_sigkill_leftover_is_removed_by_the_next_run(tmp_path, tiny_weights):
    child = _stalled_deblur(tmp_path, tiny_weights)
    child.kill()
    child.communicate(timeout=60)
    leftovers = [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1  # SIGKILL cannot be caught: the temporary file stays ...
    assert main(["deblur", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", str(tiny_weights)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["in.png"]  # ... until the next run into that folder


def test_disk_full_names_the_file_and_leaves_no_orphan_sidecar(tmp_path, tiny_weights, monkeypatch, capfd):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "in.png")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    capfd.readouterr()
    assert main(["deblur", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"), "--model", str(tiny_weights), "--format", "bmp"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "out" / "in.bmp") in err and "No space left on device" in err
    assert list((tmp_path / "out").iterdir()) == []  # no image, no .bmp.json sidecar, no temporary file


def test_a_failed_sidecar_takes_its_image_back(tmp_path, monkeypatch):
    import meddeblur.io.encode as encode  # the sidecar's JSON is made where the image is written

    def broken(record):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(encode, "to_json", broken)
    with pytest.raises(UserError, match="a.bmp.json: cannot write"):
        write_image(tmp_path / "a.bmp", np.zeros((16, 16, 3), np.float32), provenance={"tool": "meddeblur"})
    assert list(tmp_path.iterdir()) == []  # an image never goes out without its provenance


# --------------------------------------------------------------------------- a hostile probe (issue 33): silent changes


def _identity_deblurrer() -> Deblurrer:
    return Deblurrer(Identity(), 16, make_record("0123456789ab", "identity", "torch", {}), torch.device("cpu"), 0, 128)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(kind, body) of every chunk of a PNG stream, read by hand."""
    chunks, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        chunks.append((data[at + 4:at + 8], data[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _with_chunks(png: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """``png`` with ``chunks`` inserted right after IHDR (8 + 25 bytes)."""
    return png[:33] + b"".join(_chunk(kind, body) for kind, body in chunks) + png[33:]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_what_a_deblurrer_returns_is_written_exactly(tmp_path, dtype):
    """write_image(path, deblurrer(uint image)) was 0/255: integers are now scaled by their range, 16 bits kept."""
    top = np.iinfo(dtype).max
    image = np.random.default_rng(5).integers(0, top + 1, (24, 40, 3), dtype=dtype)
    deblurrer = _identity_deblurrer()
    restored = deblurrer(image)
    assert restored.dtype == dtype
    written = write_image(tmp_path / "out.png", restored, provenance=deblurrer.provenance)
    back = read_image(written)
    assert back.bit_depth == (16 if dtype == np.uint16 else 8)
    np.testing.assert_array_equal(_ints(back), image)
    assert read_provenance(written)["model_id"] == "0123456789ab"


def test_deblurrer_write_keeps_the_source_files_metadata_and_the_overwrite_rule(tmp_path):
    icc = _srgb_icc()
    pixels = np.dstack([RAMP, RAMP[::-1], RAMP[:, ::-1]])
    ok, data = cv2.imencode(".png", pixels[:, :, ::-1])
    gamma = (b"gAMA", struct.pack(">I", 45455))
    (tmp_path / "in.png").write_bytes(_with_chunks(data.tobytes(), [gamma, (b"iCCP", b"p\x00\x00" + zlib.compress(icc))]))
    deblurrer = _identity_deblurrer()
    restored = deblurrer(read_image(tmp_path / "in.png").rgb)
    out = deblurrer.write(tmp_path / "out.png", restored, source=tmp_path / "in.png")
    back = read_image(out)
    assert back.bit_depth == 16 and back.icc == icc and gamma in back.png_colour
    np.testing.assert_array_equal(_ints(back), pixels)
    assert deblurrer.write(out, restored, source=tmp_path / "in.png") == out  # its own earlier output: replaced
    with pytest.raises(UserError, match="is the source image itself"):
        deblurrer.write(tmp_path / "in.png", restored, source=tmp_path / "in.png", overwrite=True)
    (tmp_path / "theirs.png").write_bytes(b"not ours")
    with pytest.raises(UserError, match="exists and was not written by meddeblur"):
        deblurrer.write(tmp_path / "theirs.png", restored)
    assert (tmp_path / "theirs.png").read_bytes() == b"not ours"


def _bmp_v5_top_down(rgba: np.ndarray) -> bytes:
    """A 32-bit top-down BMP with an alpha mask in a BITMAPV5HEADER (what image editors write), built by hand."""
    height, width = rgba.shape[:2]
    body = rgba[:, :, [2, 1, 0, 3]].tobytes()
    header = struct.pack("<IiiHHIIiiII", 124, width, -height, 1, 32, 3, len(body), 0, 0, 0, 0)
    header += struct.pack("<4I", 0xFF0000, 0xFF00, 0xFF, 0xFF000000) + b"BGRs" + bytes(36 + 12) + struct.pack("<4I", 4, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(header) + len(body), 0, 0, 14 + len(header)) + header + body


@pytest.mark.parametrize("fmt", [None, "bmp", "png"])
def test_bmp_alpha_is_kept(tmp_path, fmt):
    rgba = np.random.default_rng(6).integers(0, 256, (20, 28, 4), dtype=np.uint8)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.bmp").write_bytes(_bmp_v5_top_down(rgba))
    image = read_image(tmp_path / "in" / "a.bmp")
    assert image.alpha is not None
    (out,) = deblur_files(Identity(), [tmp_path / "in" / "a.bmp"], tmp_path / "out", fmt=fmt)
    back = read_image(out)
    np.testing.assert_array_equal(_ints(back), rgba[:, :, :3])
    assert back.alpha is not None
    np.testing.assert_array_equal(np.round(back.alpha * 255), rgba[:, :, 3])


def _fake_icc(space: bytes) -> bytes:
    """A minimal ICC header (no tags) describing ``space`` data: enough for anything that reads the header."""
    header = struct.pack(">I4sI4s4s4s12s4s", 132, b"none", 0x02100000, b"prtr", space, b"Lab ", bytes(12), b"acsp")
    return header.ljust(128, b"\x00") + struct.pack(">I", 0)


def test_a_cmyk_profile_is_not_copied_onto_the_rgb_output(tmp_path):
    cmyk = _fake_icc(b"CMYK")
    (tmp_path / "in").mkdir()
    Image.new("CMYK", (24, 24), (10, 20, 30, 40)).save(tmp_path / "in" / "c.jpg", icc_profile=cmyk)
    assert read_image(tmp_path / "in" / "c.jpg").icc == cmyk
    (out,) = deblur_files(Identity(), [tmp_path / "in" / "c.jpg"], tmp_path / "out")
    with Image.open(out) as written:
        assert written.mode == "RGB" and "icc_profile" not in written.info
    assert read_provenance(out)["not_kept"] == ["ICC profile (CMYK; the output is RGB)"]
    rgb = _srgb_icc()  # a profile of the output's colour space is still copied, and nothing is said
    Image.new("RGB", (24, 24)).save(tmp_path / "in" / "c.jpg", icc_profile=rgb)
    (out,) = deblur_files(Identity(), [tmp_path / "in" / "c.jpg"], tmp_path / "out")
    assert read_image(out).icc == rgb and "not_kept" not in read_provenance(out)


COLOUR_CHUNKS = [(b"gAMA", struct.pack(">I", 45455)), (b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)),
                 (b"sRGB", b"\x00")]


@pytest.mark.parametrize("bits", [8, 16])
def test_png_colour_chunks_are_carried_to_the_output(tmp_path, bits):
    pixels = np.random.default_rng(7).integers(0, 2 ** bits, (20, 24, 3)).astype(np.uint8 if bits == 8 else np.uint16)
    ok, data = cv2.imencode(".png", pixels[:, :, ::-1])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "c.png").write_bytes(_with_chunks(data.tobytes(), COLOUR_CHUNKS))
    (out,) = deblur_files(Identity(), [tmp_path / "in" / "c.png"], tmp_path / "out")
    written = _png_chunks(out.read_bytes())
    assert all(chunk in written for chunk in COLOUR_CHUNKS)
    assert [kind for kind, _ in written].index(b"IDAT") > max([kind for kind, _ in written].index(k) for k, _ in COLOUR_CHUNKS)
    np.testing.assert_array_equal(_ints(read_image(out)), pixels)
    (tif,) = deblur_files(Identity(), [tmp_path / "in" / "c.png"], tmp_path / "tif", fmt="tiff")  # no place for them there
    assert read_provenance(tif)["not_kept"] == ["PNG colour chunks gAMA, cHRM, sRGB (TIFF has no place for them)"]


def test_a_file_rewritten_while_being_read_is_refused_never_mixed(tmp_path):
    """Another thread rewrites the file in place, alternating two images: each read is one of them, or refused."""
    import threading

    images = [np.full((64, 64, 3), value, np.uint8) for value in (40, 200)]
    versions = []
    for pixels in images:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "BMP")  # uncompressed: a mix of the two would still decode
        versions.append(buffer.getvalue())
    path = tmp_path / "busy.bmp"
    path.write_bytes(versions[0])
    stop = threading.Event()

    def rewrite() -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            while not stop.is_set():
                for data in versions:
                    for at in range(0, len(data), 1024):
                        os.pwrite(fd, data[at:at + 1024], at)
                        time.sleep(0)
        finally:
            os.close(fd)

    writer = threading.Thread(target=rewrite)
    writer.start()
    outcomes = []
    try:
        for _ in range(40):
            try:
                rgb = np.round(read_image(path).rgb * 255).astype(np.uint8)
            except UserError as error:
                assert "changed while being read" in str(error)
                outcomes.append("refused")
            else:
                outcomes.append(next((i for i, pixels in enumerate(images) if np.array_equal(rgb, pixels)), "mixed"))
    finally:
        stop.set()
        writer.join()
    assert "mixed" not in outcomes, outcomes
    assert read_image(path).rgb.shape == (64, 64, 3)  # left alone, the same file reads again


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_16bit_tiff_with_a_rotating_orientation_is_read_upright(tmp_path, orientation):
    pixels = np.random.default_rng(orientation).integers(0, 65536, (20, 36, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "o.tif", pixels, photometric="rgb", extratags=[(274, 3, 1, orientation, False)])
    image = read_image(tmp_path / "o.tif")
    method = {5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
    # Pillow turns 8-bit planes; each 16-bit value is its high and low byte, turned alike.
    upright = [np.asarray(Image.fromarray(np.ascontiguousarray(part[:, :, c])).transpose(method[orientation])).astype(np.int64)
               for part in ((pixels >> 8).astype(np.uint8), (pixels & 255).astype(np.uint8)) for c in range(3)]
    expected = np.dstack(upright[:3]) * 256 + np.dstack(upright[3:])
    assert image.bit_depth == 16 and image.rgb.shape == (36, 20, 3)
    np.testing.assert_array_equal(_ints(image), expected)


@pytest.mark.parametrize("length", [228, 250, 255])
def test_file_names_up_to_255_bytes_are_written(tmp_path, length):
    (tmp_path / "in").mkdir()
    long_name = "é" * ((length - 4) // 2) + "x" * ((length - 4) % 2) + ".png"
    assert len(os.fsencode(long_name)) == length
    names = ["a.png", long_name, "z.png"]
    for seed, name in enumerate(names):
        Image.fromarray(np.full((16, 16, 3), seed * 40, np.uint8)).save(tmp_path / "in" / name)
    written = deblur_files(Identity(), [tmp_path / "in"], tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(names)  # the folder run did not stop part-way
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)  # no temporary file left


def test_a_bmp_whose_sidecar_name_would_be_too_long_is_refused_before_writing(tmp_path):
    (tmp_path / "in").mkdir()
    name = "s" * 250 + ".png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "in" / name)
    with pytest.raises(UserError, match=r"longer than the 255 a file system takes"):
        deblur_files(Identity(), [tmp_path / "in" / name], tmp_path / "out", fmt="bmp")  # NAME.bmp.json: 259 bytes
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_newline_in_a_file_name_is_shown_escaped_in_the_one_line_error(tmp_path, capfd):
    bad = tmp_path / "two\nlines.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    capfd.readouterr()
    assert main(["deblur", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"'{tmp_path}/two\\nlines.png'" in err, err


def test_a_1bit_tiff_is_read_exactly_as_8bit_black_and_white(tmp_path):
    bits = np.random.default_rng(8).integers(0, 2, (24, 40)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bw.tif")
    image = read_image(tmp_path / "bw.tif")
    assert image.grayscale and image.bit_depth == 8
    np.testing.assert_array_equal(image.rgb[:, :, 0], bits.astype(np.float32))


def test_pixel_limits_must_be_positive():
    with pytest.raises(ValueError, match=r"^max_pixels=-1: must be a positive whole number"):
        read_image("anything.png", max_pixels=-1)
    with pytest.raises(ValueError, match=r"^min_size=0: "):
        read_image("anything.png", min_size=0)


def test_masked_arrays_and_requires_grad_tensors_are_refused_without_a_warning():
    deblurrer = _identity_deblurrer()
    with pytest.raises(ValueError, match="masked arrays are refused"):
        deblurrer(np.ma.masked_array(np.zeros((16, 16, 3), np.float32), mask=False))
    tensor = torch.rand(1, 3, 16, 16, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="requires gradients"):  # never silently cut from the graph
            deblurrer(tensor)
        assert torch.equal(deblurrer(tensor.detach()), tensor.detach())


# --------------------------------------------------------------------------- a hostile probe (issue 33): training runs


TINY_RUN = ["--recipe", "reference", "--width", "4", "--size", "16", "--batch", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-epoch run started with a relative --data (from its own folder); copy it before changing it."""
    from synthetic_pairs import write_synthetic_pairs

    root = tmp_path_factory.mktemp("finished")
    write_synthetic_pairs(root / "data", n=5, height=32, width=32, seed=0)
    cwd = os.getcwd()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        os.chdir(root)
        assert main(["train", "--data", "data", "--out", "run", "--epochs", "2", *TINY_RUN]) == 0
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return root


def _copy_run(finished: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(finished / "run", tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("removed", [["last.pt", "last.pt.sha256"], ["last.pt", "last.pt.sha256", "history.csv", "best.safetensors"]])
def test_a_used_run_folder_is_refused_without_resume_whatever_is_left(finished_run, tmp_path, capfd, removed):
    run = _copy_run(finished_run, tmp_path)
    for name in removed:
        (run / name).unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capfd.readouterr()
    assert main(["train", "--data", str(finished_run / "data"), "--out", str(run), "--epochs", "1", *TINY_RUN]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--resume" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing of the earlier run replaced


def test_resume_refuses_best_weights_that_no_longer_match_their_checksum(finished_run, tmp_path, capfd, one_thread):
    from meddeblur.training.runs import load_checkpoint, save_checkpoint

    run = _copy_run(finished_run, tmp_path)
    state = load_checkpoint(run / "last.pt")
    state["early_stop"]["best_epoch"] = 1  # the best epoch is not the checkpoint's: resuming keeps best.safetensors as it is
    save_checkpoint(run, state)
    data = (run / "best.safetensors").read_bytes()
    (run / "best.safetensors").write_bytes(data[: len(data) // 2])
    capfd.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and f"{run / 'best.safetensors'}: does not match the sha256 in best.json" in err, err
    assert (run / "best.safetensors").read_bytes() == data[: len(data) // 2]


def test_resume_works_from_another_folder(finished_run, tmp_path, monkeypatch, one_thread):
    import json

    run = _copy_run(finished_run, tmp_path)
    stored = json.loads((run / "run.json").read_text())["options"]
    assert Path(stored["sharp_dir"]).is_absolute() and Path(stored["sharp_dir"]) == finished_run / "data" / "sharp"
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", "run", "--epochs", "3"]) == 0
    assert (run / "history.csv").read_text().count("\n") == 4  # header + 3 epochs


_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from meddeblur.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def test_training_onto_a_full_disk_is_one_line_naming_the_file(finished_run, tmp_path):
    """200 kB hold the run's small files, not the 1.7 MB checkpoint, which torch reported as a bare RuntimeError."""
    from conftest import cli_env

    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, "200000", "train", "--data", str(finished_run / "data"),
                           "--out", str(tmp_path / "run"), "--epochs", "1", *TINY_RUN],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"{tmp_path / 'run' / 'last.pt'}: cannot write" in proc.stderr, proc.stderr
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]


def test_weights_onto_a_full_disk_are_one_line_naming_the_file(tmp_path):
    from conftest import cli_env

    script = _FULL_DISK.replace("from meddeblur.cli import main\nraise SystemExit(main(sys.argv[2:]))", """
from meddeblur.errors import UserError
from meddeblur.models import ModelConfig, build_model, save_weights
try:
    save_weights(build_model(ModelConfig(width=4)), ModelConfig(width=4), sys.argv[2])
except UserError as error:
    print(error)
""")
    proc = subprocess.run([sys.executable, "-c", script, "20000", str(tmp_path / "w.safetensors")], capture_output=True, text=True,
                          env=cli_env(), timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith(f"{tmp_path / 'w.safetensors'}: cannot write (File too large)"), proc.stdout
    assert list(tmp_path.iterdir()) == []
