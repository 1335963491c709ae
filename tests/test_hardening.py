"""Issue 12: no silent corruption, no lost metadata, no leftovers, no overwritten files that are not ours.

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
from meddeblur.inference.batch import deblur_files
from meddeblur.io.decode import orient, read_image
from meddeblur.io.encode import write_image
from meddeblur.io.ownership import read_provenance
from meddeblur.io.provenance import add_png_chunk

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
