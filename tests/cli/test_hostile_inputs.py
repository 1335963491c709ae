"""Hostile inputs through the real CLI: damaged, huge, misnamed and strange files and paths.

Every input is made here, at run time (no binary is committed). Two kinds of case:

* ``@hostile``: the command must fail as a user error: exit code 2, exactly one
  non-empty stderr line (checked at the file-descriptor level, so lines printed by C
  libraries count too) naming the offending file, no traceback, no temporary file and
  no output left behind, and the inputs (``in/``, ``data/``, ``sharp/``, walked
  without following links or opening FIFOs) unchanged byte for byte.
* ``@valid``: unusual but valid inputs (palette PNG, CMYK JPEG, unicode, spaces and
  non-UTF-8 bytes in names, links, multi-frame files...) that must simply work.

Most cases call :func:`meddeblur.cli.main` in-process, under a watchdog that ends the
session (with tracebacks) if one blocks; those marked ``own_process`` (two FIFOs, which
would hang a broken reader, the 10^10-pixel header and a non-UTF-8 name) run
``python -m meddeblur`` concurrently in subprocesses with a timeout, proving nothing
escapes the real entry point either.

Decisions these cases pin down:

* GIF (and WebP, JPEG 2000, BigTIFF, PDF, .npy...) is not decoded; the file
  is refused by content, whatever its extension, with "is a GIF image ... convert it
  to PNG or TIFF". Multi-frame PNG (APNG) and TIFF files are supported formats: their
  first frame is read.
* CMYK JPEGs are read and converted to RGB (Pillow's conversion, no ICC colour
  management); the output is an RGB JPEG.
* A sub-folder named like an image inside an input folder is skipped (listing is not
  recursive); any other non-regular entry named like an image (broken link, link
  loop, FIFO) is listed and then refused by name, so no image silently goes missing.
* Unreadable files: tests run as root, for whom mode 000 does not stop reading. The
  real kernel refusal is exercised by running the command as ``nobody`` (setpriv)
  when root, or with mode 000 when not root; ``os.open`` raising PermissionError is
  also simulated in-process, for train and deblur.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from cli_cases import one_line_error, selected_cases, temp_leftovers
from PIL import Image

from meddeblur.cli import main
from meddeblur.io.decode import read_image
from meddeblur.io.encode import write_image
from meddeblur.io.formats import LoadedImage

TINY_TRAIN = ("--recipe", "reference", "--width", "4", "--size", "16", "--epochs", "1", "--batch", "8")
NON_UTF8 = os.fsdecode(b"caf\xe9 \xff photo")  # a Latin-1 file name: not valid UTF-8


# --------------------------------------------------------------------------- crafted bytes


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, rows: bytes | None = None, bad_ihdr_crc: bool = False) -> bytes:
    """An 8-bit RGB PNG built by hand: any size in IHDR (with a valid CRC), and a small IDAT."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if bad_ihdr_crc:
        ihdr = ihdr[:-4] + bytes([ihdr[-4] ^ 0xFF]) + ihdr[-3:]
    if rows is None:
        rows = b"\x00" * (1 + 3 * min(width, 64)) * min(height, 64)
    return b"\x89PNG\r\n\x1a\n" + ihdr + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def tiff_header_bytes(width: int, height: int) -> bytes:
    """A little-endian 8-bit grey TIFF whose IFD claims ``width``×``height`` over a 16-byte strip."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8 + 2 + 12 * 9 + 4), (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, 1, value, 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 16


def rgb_array(size: tuple[int, int] = (32, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def image_bytes(fmt: str, size: tuple[int, int] = (32, 32), seed: int = 0, **options) -> bytes:
    return encode(Image.fromarray(rgb_array(size, seed)), fmt, **options)


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def good(path: Path, seed: int = 0, size: tuple[int, int] = (32, 32)) -> Path:
    """A valid 32×32 RGB PNG."""
    return put(path, image_bytes("PNG", size, seed))


def animated_gif() -> bytes:
    frames = [Image.fromarray(np.roll(rgb_array(), 5 * i, axis=0)) for i in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def symlink_loop(a: Path, b: Path) -> Path:
    """``a`` → ``b`` → ``a``."""
    a.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(b.name, a)
    os.symlink(a.name, b)
    return a


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One CLI invocation that must fail as a user error."""

    args: list
    expect: tuple[str, ...]  # substrings the single stderr line must contain
    absent: tuple[Path, ...] = ()  # outputs that must not exist afterwards
    deny: tuple[Path, ...] = ()  # paths os.open refuses with EACCES (in-process simulation)


@dataclass
class Ctx:
    root: Path
    weights: Path
    template: Path  # 5 synthetic 32×32 pairs in blurred/ and sharp/

    def data(self) -> Path:
        """A private copy of the synthetic data set, as ``root/data``."""
        return Path(shutil.copytree(self.template, self.root / "data"))

    def deblur(self, *inputs: object, out: Path | None = None) -> list:
        return ["deblur", *inputs, "-o", out or self.root / "out", "--model", self.weights]

    def train(self, data: Path, *extra: object) -> list:
        return ["train", "--data", data, "--out", self.root / "run", *TINY_TRAIN, *extra]

    def evaluate(self, data: Path, *extra: object) -> list:
        return ["evaluate", "--model", self.weights, "--data", data, "--split", "all", "--size", "16",
                "--out", self.root / "report", *extra]

    def synth(self, sharp: Path, *extra: object) -> list:
        return ["synth", "--sharp", sharp, "-o", self.root / "synth", "--degrade", "gauss:sigma=1", *extra]


HOSTILE: dict[str, Callable[[Ctx], Case]] = {}
VALID: dict[str, Callable[[Ctx], tuple[list, Callable[[], object]]]] = {}
OWN_PROCESS: set[str] = set()


def hostile(fn=None, *, own_process: bool = False):
    def register(fn):
        name = fn.__name__.removeprefix("case_")
        HOSTILE[name] = fn
        if own_process:
            OWN_PROCESS.add(name)
        return fn

    return register(fn) if fn is not None else register


def valid(fn):
    VALID[fn.__name__.removeprefix("ok_")] = fn
    return fn


# ---- deblur: damaged and misleading files


@hostile
def case_deblur_empty_file(c: Ctx) -> Case:
    bad = put(c.root / "in" / "empty.png", b"")
    return Case(c.deblur(bad), (str(bad), "empty file"), (c.root / "out",))


@hostile
def case_deblur_truncated_png(c: Ctx) -> Case:
    good(c.root / "in" / "a.png")
    bad = put(c.root / "in" / "b.png", half(image_bytes("PNG", seed=2)))
    good(c.root / "in" / "c.png", seed=3)
    # Each input is decoded once, in order: the run stops at the bad one; a.png before it may be written (whole).
    return Case(c.deblur(c.root / "in"), (str(bad), "truncated"), (c.root / "out" / "b.png", c.root / "out" / "c.png"))


@hostile
def case_deblur_truncated_jpeg(c: Ctx) -> Case:
    bad = put(c.root / "in" / "b.jpg", half(image_bytes("JPEG", (64, 64))))
    return Case(c.deblur(bad), (str(bad), "truncated"), (c.root / "out",))


@hostile
def case_deblur_truncated_lzw_tiff(c: Ctx) -> Case:
    # libtiff prints its own complaint on fd 2 for this one: it must not reach the user.
    bad = put(c.root / "in" / "b.tif", half(image_bytes("TIFF", (64, 64), compression="tiff_lzw")))
    return Case(c.deblur(bad), (str(bad), "truncated"), (c.root / "out",))


@hostile
def case_deblur_corrupt_deflate_tiff(c: Ctx) -> Case:
    data = bytearray(image_bytes("TIFF", (64, 64), compression="tiff_adobe_deflate"))
    for i in range(8, len(data) // 2, 7):
        data[i] ^= 0x5A
    bad = put(c.root / "in" / "b.tiff", bytes(data))
    return Case(c.deblur(bad), (str(bad), "corrupt"), (c.root / "out",))


@hostile
def case_deblur_16bit_png_bad_idat_crc(c: Ctx) -> Case:
    # Pillow ignores IDAT CRCs but OpenCV (which decodes 16-bit RGB) does not, and libpng prints on fd 2.
    import cv2

    data = bytearray(cv2.imencode(".png", np.full((32, 32, 3), 40000, np.uint16))[1].tobytes())
    at = data.index(b"IDAT")
    data[at + 4 + struct.unpack(">I", data[at - 4:at])[0]] ^= 0xFF
    bad = put(c.root / "in" / "deep.png", bytes(data))
    return Case(c.deblur(bad), (str(bad), "16-bit"), (c.root / "out",))


@hostile
def case_deblur_png_bad_ihdr_crc(c: Ctx) -> Case:
    bad = put(c.root / "in" / "crc.png", png_bytes(32, 32, bad_ihdr_crc=True))
    return Case(c.deblur(bad), (str(bad), "corrupt"), (c.root / "out",))


@hostile(own_process=True)
def case_deblur_png_bomb_header(c: Ctx) -> Case:
    bad = put(c.root / "in" / "bomb.png", png_bytes(100_000, 100_000))
    return Case(c.deblur(bad), (str(bad), "100000x100000", "downscale"), (c.root / "out",))


@hostile
def case_deblur_tiff_bomb_header(c: Ctx) -> Case:
    bad = put(c.root / "in" / "bomb.tif", tiff_header_bytes(100_000, 100_000))
    return Case(c.deblur(bad), (str(bad), "100000x100000"), (c.root / "out",))


@hostile
def case_deblur_png_0x0(c: Ctx) -> Case:
    bad = put(c.root / "in" / "zero.png", png_bytes(0, 0, rows=b""))
    return Case(c.deblur(bad), (str(bad),), (c.root / "out",))


@hostile
def case_deblur_png_1x1(c: Ctx) -> Case:
    bad = put(c.root / "in" / "one.png", image_bytes("PNG", (1, 1)))
    return Case(c.deblur(bad), (str(bad), "1x1", "16 px"), (c.root / "out",))


@hostile
def case_deblur_float_tiff(c: Ctx) -> Case:
    bad = put(c.root / "in" / "float.tif", encode(Image.fromarray(np.ones((32, 32), np.float32)), "TIFF"))
    return Case(c.deblur(bad), (str(bad), "floating-point"), (c.root / "out",))


@hostile
def case_deblur_animated_gif(c: Ctx) -> Case:
    bad = put(c.root / "in" / "anim.gif", animated_gif())
    return Case(c.deblur(bad), (str(bad), "GIF", "convert it to PNG"), (c.root / "out",))


@hostile
def case_deblur_gif_named_png_in_folder(c: Ctx) -> Case:
    good(c.root / "in" / "a.png")
    bad = put(c.root / "in" / "b.png", animated_gif())
    return Case(c.deblur(c.root / "in"), (str(bad), "GIF"), (c.root / "out" / "b.png",))


@hostile
def case_deblur_numpy_array_named_png(c: Ctx) -> Case:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((32, 32, 3), np.float32))
    bad = put(c.root / "in" / "array.png", buffer.getvalue())
    return Case(c.deblur(bad), (str(bad), "NumPy"), (c.root / "out",))


@hostile
def case_deblur_text_named_jpg_in_folder(c: Ctx) -> Case:
    good(c.root / "in" / "a.png")
    bad = put(c.root / "in" / "notes.jpg", b"Patient notes, not a picture.\n")
    return Case(c.deblur(c.root / "in"), (str(bad), "not a readable image"), (c.root / "out" / "notes.jpg",))


@hostile
def case_deblur_folder_named_png_given_as_file(c: Ctx) -> Case:
    folder = c.root / "in" / "x.png"
    folder.mkdir(parents=True)
    return Case(c.deblur(folder), (str(folder), "no images"), (c.root / "out",))


# ---- deblur: links, FIFOs, permissions


@hostile
def case_deblur_symlink_loop_given_as_input(c: Ctx) -> Case:
    loop = symlink_loop(c.root / "in" / "a.png", c.root / "in" / "b.png")
    return Case(c.deblur(loop), (str(loop), "symbolic link loop"), (c.root / "out",))


@hostile
def case_deblur_symlink_loop_inside_folder(c: Ctx) -> Case:
    good(c.root / "in" / "good.png")
    loop = symlink_loop(c.root / "in" / "loop_a.png", c.root / "in" / "loop_b.png")
    return Case(c.deblur(c.root / "in"), (str(loop), "symbolic link loop"), (c.root / "out",))


@hostile
def case_deblur_dangling_symlink_inside_folder(c: Ctx) -> Case:
    good(c.root / "in" / "good.png")
    link = c.root / "in" / "moved.png"
    os.symlink(c.root / "elsewhere" / "moved.png", link)
    return Case(c.deblur(c.root / "in"), (str(link), "broken symbolic link"), (c.root / "out",))


@hostile  # in-process, under the watchdog; the FIFO cases below run in their own process
def case_deblur_fifo_given_as_input(c: Ctx) -> Case:
    pipe = fifo(c.root / "in" / "x.png")
    return Case(c.deblur(pipe), (str(pipe), "FIFO"), (c.root / "out",))


@hostile(own_process=True)
def case_deblur_fifo_inside_folder(c: Ctx) -> Case:
    good(c.root / "in" / "a.png")
    pipe = fifo(c.root / "in" / "x.png")
    return Case(c.deblur(c.root / "in"), (str(pipe), "FIFO"), (c.root / "out",))


@hostile
def case_deblur_unreadable_file_simulated(c: Ctx) -> Case:
    good(c.root / "in" / "a.png")
    locked = good(c.root / "in" / "locked.png", seed=1)
    return Case(c.deblur(c.root / "in"), (str(locked), "permission denied"), (c.root / "out",), deny=(locked,))


# ---- deblur: where the output goes


@hostile
def case_deblur_output_folder_is_input_folder_via_symlink(c: Ctx) -> Case:
    image = good(c.root / "in" / "a.png")
    alias = c.root / "alias"
    os.symlink(c.root / "in", alias)
    return Case(c.deblur(image, out=alias), (str(image), "overwrite an input"))


@hostile
def case_deblur_output_file_is_symlink_to_input(c: Ctx) -> Case:
    image = good(c.root / "in" / "a.png")
    (c.root / "out").mkdir()
    os.symlink(image, c.root / "out" / "a.png")
    return Case(c.deblur(image), (str(image), "overwrite an input"))


@hostile
def case_deblur_output_parent_is_a_file(c: Ctx) -> Case:
    image = good(c.root / "in" / "a.png")
    blocker = put(c.root / "blocker", b"a file where a folder should be")
    return Case(c.deblur(image, out=blocker / "out"), (str(blocker),), (blocker.with_name("out"),))


@hostile
def case_deblur_output_name_taken_by_folder(c: Ctx) -> Case:
    good(c.root / "in" / "a.png")
    good(c.root / "in" / "b.png", seed=1)
    (c.root / "out" / "b.png").mkdir(parents=True)
    # Checked before anything is written: a.png is not written either.
    return Case(c.deblur(c.root / "in"), (str(c.root / "out" / "b.png"), "folder"), (c.root / "out" / "a.png",))


@hostile
def case_deblur_output_name_is_symlink_loop(c: Ctx) -> Case:
    image = good(c.root / "in" / "a.png")
    symlink_loop(c.root / "out" / "a.png", c.root / "out" / "z.png")
    return Case(c.deblur(image), (str(c.root / "out" / "a.png"), "symbolic link loop"))


@hostile(own_process=True)
def case_deblur_non_utf8_name_truncated(c: Ctx) -> Case:
    put(c.root / "in" / f"{NON_UTF8}.png", half(image_bytes("PNG")))
    # The name is printed with its undecodable bytes escaped; its readable part must be there.
    return Case(c.deblur(c.root / "in"), ("caf", "photo.png", "truncated"), (c.root / "out",))


# ---- train


@hostile
def case_train_mismatched_pair_sizes(c: Ctx) -> Case:
    data = c.data()
    bad = good(data / "blurred" / "synthetic_002.png", size=(48, 32))
    return Case(c.train(data), (str(bad), "32×48", "32×32"), (c.root / "run",))


@hostile(own_process=True)
def case_train_fifo_in_data(c: Ctx) -> Case:
    data = c.data()
    pipe = data / "sharp" / "synthetic_001.png"
    pipe.unlink()
    fifo(pipe)
    return Case(c.train(data), (str(pipe), "FIFO", "--skip-bad"), (c.root / "run",))


@hostile
def case_train_dangling_symlink_in_data(c: Ctx) -> Case:
    data = c.data()
    link = data / "blurred" / "synthetic_003.png"
    link.unlink()
    os.symlink("synthetic_003_old.png", link)
    return Case(c.train(data), (str(link), "broken symbolic link"), (c.root / "run",))


@hostile
def case_train_symlink_loop_in_data(c: Ctx) -> Case:
    data = c.data()
    (data / "sharp" / "synthetic_000.png").unlink()
    loop = symlink_loop(data / "sharp" / "synthetic_000.png", data / "sharp" / ".loop.png")
    return Case(c.train(data), (str(loop), "symbolic link loop"), (c.root / "run",))


@hostile
def case_train_bomb_png_in_data(c: Ctx) -> Case:
    data = c.data()
    bad = put(data / "sharp" / "synthetic_004.png", png_bytes(100_000, 100_000))
    return Case(c.train(data), (str(bad), "100000x100000"), (c.root / "run",))


@hostile
def case_train_gif_in_data_lists_every_bad_file(c: Ctx) -> Case:
    data = c.data()
    gif = put(data / "blurred" / "synthetic_000.png", animated_gif())
    empty = put(data / "sharp" / "synthetic_001.png", b"")
    return Case(c.train(data), (str(gif), "GIF", str(empty), "2 bad image(s)"), (c.root / "run",))


@hostile
def case_train_unreadable_file_simulated(c: Ctx) -> Case:
    data = c.data()
    locked = data / "sharp" / "synthetic_002.png"
    return Case(c.train(data), (str(locked), "permission denied"), (c.root / "run",), deny=(locked,))


@hostile
def case_train_blurred_folder_is_a_file(c: Ctx) -> Case:
    data = c.data()
    shutil.rmtree(data / "blurred")
    put(data / "blurred", b"not a folder")
    return Case(c.train(data), (str(data / "blurred"), "not a folder"), (c.root / "run",))


# ---- evaluate


@hostile
def case_evaluate_truncated_sharp_image(c: Ctx) -> Case:
    data = c.data()
    bad = data / "sharp" / "synthetic_001.png"
    bad.write_bytes(half(bad.read_bytes()))
    return Case(c.evaluate(data), (str(bad), "truncated", "--skip-bad"), (c.root / "report",))


@hostile
def case_evaluate_mismatched_pair_sizes(c: Ctx) -> Case:
    data = c.data()
    bad = good(data / "blurred" / "synthetic_000.png", size=(64, 64))
    return Case(c.evaluate(data), (str(bad), "64×64"), (c.root / "report",))


@hostile
def case_evaluate_huge_tiff_header(c: Ctx) -> Case:
    data = c.data()
    (data / "sharp" / "synthetic_002.png").unlink()
    bad = put(data / "sharp" / "synthetic_002.tif", tiff_header_bytes(100_000, 100_000))
    return Case(c.evaluate(data), (str(bad), "100000x100000"), (c.root / "report",))


@hostile
def case_evaluate_report_into_data_folder(c: Ctx) -> Case:
    data = c.data()
    return Case([*c.evaluate(data)[:-2], "--out", data / "sharp"], (str(data / "sharp"), "--out"))


@hostile
def case_evaluate_report_parent_is_a_file(c: Ctx) -> Case:
    blocker = put(c.root / "blocker", b"x")
    return Case([*c.evaluate(c.data())[:-2], "--out", blocker / "report"], (str(blocker),))


@hostile
def case_evaluate_run_json_garbage(c: Ctx) -> Case:
    run = c.root / "run"
    run.mkdir()
    weights = Path(shutil.copy(c.weights, run / "best.safetensors"))
    shutil.copy(c.weights.with_suffix(".json"), run / "best.json")
    (run / "run.json").write_bytes(b"\x00\xff not json")
    return Case(["evaluate", "--model", weights, "--data", c.data(), "--split", "all"], (str(run / "run.json"),),
                (run / "eval-all",))


# ---- synth


@hostile
def case_synth_truncated_jpeg(c: Ctx) -> Case:
    good(c.root / "sharp" / "a.png")
    bad = put(c.root / "sharp" / "b.jpg", half(image_bytes("JPEG", (64, 64))))
    return Case(c.synth(c.root / "sharp"), (str(bad), "truncated"), (c.root / "synth",))


@hostile
def case_synth_output_is_input_via_symlink(c: Ctx) -> Case:
    good(c.root / "sharp" / "a.png")
    os.symlink(c.root / "sharp", c.root / "synth")
    return Case(c.synth(c.root / "sharp"), (str(c.root / "synth"), "input folder"))


@hostile
def case_synth_output_subfolder_is_a_file(c: Ctx) -> Case:
    good(c.root / "sharp" / "a.png")
    blocker = put(c.root / "synth" / "sharp", b"x")
    return Case(c.synth(c.root / "sharp"), (str(blocker),), (c.root / "synth" / "blurred",))


@hostile
def case_synth_dangling_symlink(c: Ctx) -> Case:
    good(c.root / "sharp" / "a.png")
    link = c.root / "sharp" / "b.png"
    os.symlink("gone.png", link)
    return Case(c.synth(c.root / "sharp"), (str(link), "broken symbolic link"), (c.root / "synth",))


# --------------------------------------------------------------------------- valid inputs that must work
# Each sets up its inputs and returns (CLI arguments, check of the outputs); the command must exit 0,
# print nothing on stderr and leave its inputs byte-identical.


def _check_output(path: Path, shape: tuple[int, int], fmt: str, **expected) -> LoadedImage:
    image = read_image(path)
    assert image.rgb.shape[:2] == shape and image.format == fmt
    assert np.isfinite(image.rgb).all()
    for key, value in expected.items():
        actual = image.alpha is not None if key == "alpha" else getattr(image, key)
        assert actual == value, (key, actual, value)
    return image


@valid
def ok_unusual_but_valid_formats(c: Ctx):
    """Palette PNG (with and without transparency), CMYK JPEG, APNG and multi-page TIFF, in one run."""
    folder = c.root / "in"
    palette = Image.fromarray(rgb_array((40, 24))).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    put(folder / "pal.png", encode(palette, "PNG"))
    put(folder / "pal_trns.png", encode(palette, "PNG", transparency=0))
    put(folder / "cmyk.jpg", encode(Image.fromarray(rgb_array()).convert("CMYK"), "JPEG"))
    frames = [Image.fromarray(np.full((32, 48, 3), 60 * i, np.uint8)) for i in range(3)]
    put(folder / "apng.png", encode(frames[0], "PNG", save_all=True, append_images=frames[1:]))
    pages = [Image.fromarray(rgb_array((32, 40), seed=i)) for i in range(2)]
    put(folder / "pages.tif", encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))

    def check() -> None:
        out = c.root / "out"
        _check_output(out / "pal.png", (40, 24), "PNG", grayscale=False, bit_depth=8, alpha=False)
        _check_output(out / "pal_trns.png", (40, 24), "PNG", grayscale=False, alpha=True)
        _check_output(out / "cmyk.jpg", (32, 32), "JPEG", grayscale=False)
        with Image.open(out / "cmyk.jpg") as written:
            assert written.mode == "RGB"  # decision: CMYK is converted, the output is an RGB JPEG
        _check_output(out / "apng.png", (32, 48), "PNG")  # first frame
        _check_output(out / "pages.tif", (32, 40), "TIFF")  # first page

    return c.deblur(folder), check


@valid
def ok_unicode_and_spaces_in_paths(c: Ctx):
    folder = c.root / "in" / "données à flouter ✓"
    good(folder / "ça va – lésion 01.png")
    out = c.root / "sortie ünï 出力"
    return c.deblur(folder, out=out), lambda: _check_output(out / "ça va – lésion 01.png", (32, 32), "PNG")


@valid
def ok_non_utf8_file_name(c: Ctx):
    good(c.root / "in" / f"{NON_UTF8}.png")

    def check() -> None:
        assert os.listdir(os.fsencode(c.root / "out")) == [b"caf\xe9 \xff photo.png"]
        _check_output(c.root / "out" / f"{NON_UTF8}.png", (32, 32), "PNG")

    return c.deblur(c.root / "in"), check


@valid
def ok_folder_entries_nested_folder_skipped_symlink_followed(c: Ctx):
    good(c.root / "in" / "a.png")
    good(c.root / "in" / "x.png" / "nested.png")  # a folder named like an image: skipped, not recursed into
    os.symlink(good(c.root / "elsewhere" / "real.png", seed=1), c.root / "in" / "link.png")

    def check() -> None:
        assert sorted(os.listdir(c.root / "out")) == ["a.png", "link.png"]
        _check_output(c.root / "out" / "link.png", (32, 32), "PNG")

    return c.deblur(c.root / "in"), check


@valid
def ok_train_skip_bad_leaves_out_hostile_files(c: Ctx):
    data = c.data()
    for i in range(5, 8):  # 3 more good pairs, so that 5 usable ones remain
        for sub, seed in (("blurred", i), ("sharp", 100 + i)):
            good(data / sub / f"synthetic_{i:03d}.png", seed=seed)
    (data / "sharp" / "synthetic_000.png").unlink()
    fifo(data / "sharp" / "synthetic_000.png")
    (data / "blurred" / "synthetic_001.png").unlink()
    os.symlink("nowhere.png", data / "blurred" / "synthetic_001.png")
    put(data / "blurred" / "synthetic_002.png", animated_gif())

    def check() -> None:
        log = (c.root / "run" / "train.log").read_text(encoding="utf-8")
        assert "3 bad image(s) left out" in log, log
        for name in ("sharp/synthetic_000.png", "blurred/synthetic_001.png", "blurred/synthetic_002.png"):
            assert name in log, name
        assert (c.root / "run" / "best.safetensors").is_file()

    return c.train(data, "--skip-bad"), check


@valid
def ok_evaluate_unicode_and_non_utf8_names(c: Ctx):
    data = c.root / "data"
    for i, name in enumerate(("é 1", NON_UTF8, "plain")):
        for sub in ("blurred", "sharp"):
            good(data / sub / f"{name}.png", seed=10 * i + (sub == "sharp"))

    def check() -> None:
        csv_text = (c.root / "report" / "per_image.csv").read_text(encoding="utf-8")
        assert "é 1" in csv_text and "caf\\udce9 \\udcff photo" in csv_text, csv_text
        assert (c.root / "report" / "comparison.png").is_file()

    return c.evaluate(data), check


@valid
def ok_synth_non_utf8_and_unicode_names(c: Ctx):
    good(c.root / "sharp" / f"{NON_UTF8}.png")
    good(c.root / "sharp" / "naïve ✓.png", seed=1)

    def check() -> None:
        for sub in ("blurred", "sharp"):
            names = sorted(os.listdir(os.fsencode(c.root / "synth" / sub)))
            assert names == sorted([b"caf\xe9 \xff photo.png", "naïve ✓.png".encode()]), names

    return c.synth(c.root / "sharp"), check


# ---- DICOM, ONNX models and assess


def dicom_bytes(frames: int = 1, transfer_syntax: str | None = None) -> bytes:
    """A 32×32 8-bit MONOCHROME2 DICOM file; with ``transfer_syntax``, its pixel data a garbage encapsulated frame."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.file_meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = "P1", 32, 32, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = rgb_array((32 * frames, 32))[:, :, 0].tobytes()
    if transfer_syntax:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@hostile
def case_deblur_truncated_dicom(c: Ctx) -> Case:
    bad = put(c.root / "in" / "scan.dcm", dicom_bytes()[:-400])
    return Case(c.deblur(bad), (str(bad), "truncated or corrupt"), (c.root / "out",))


@hostile
def case_deblur_dicom_marker_then_garbage(c: Ctx) -> Case:
    bad = put(c.root / "in" / "IM0001", bytes(128) + b"DICM" + bytes(range(256)) * 2)
    return Case(c.deblur(bad), (str(bad), "DICOM"), (c.root / "out",))


@hostile
def case_deblur_compressed_dicom_not_decodable(c: Ctx) -> Case:
    # JPEG Lossless: refused as undecodable here (no pylibjpeg/gdcm), or as corrupt where a decoder exists.
    bad = put(c.root / "in" / "lossless.dcm", dicom_bytes(transfer_syntax="1.2.840.10008.1.2.4.70"))
    return Case(c.deblur(bad), (str(bad), "cannot decode"), (c.root / "out",))


@hostile
def case_deblur_multiframe_dicom_in_folder(c: Ctx) -> Case:
    good(c.root / "in" / "a.png")
    bad = put(c.root / "in" / "cine.dcm", dicom_bytes(frames=3))
    return Case(c.deblur(c.root / "in"), (str(bad), "multi-frame"), (c.root / "out" / "cine.dcm",))


@hostile
def case_deblur_onnx_file_is_garbage(c: Ctx) -> Case:
    image = good(c.root / "in" / "a.png")
    bad = put(c.root / "models" / "model.onnx", b"\x08\x07" + bytes(range(256)) * 4)
    return Case(["deblur", image, "-o", c.root / "out", "--onnx", bad], (str(bad), "ONNX"), (c.root / "out",))


@hostile
def case_deblur_onnx_file_is_an_image(c: Ctx) -> Case:
    image = good(c.root / "in" / "a.png")
    bad = good(c.root / "models" / "model.onnx", seed=1)
    return Case(["deblur", image, "-o", c.root / "out", "--onnx", bad], (str(bad), "ONNX"), (c.root / "out",))


@hostile
def case_assess_gif_named_png_in_folder(c: Ctx) -> Case:
    good(c.root / "in" / "a.png")
    bad = put(c.root / "in" / "b.png", animated_gif())
    table = c.root / "triage.csv"
    return Case(["assess", c.root / "in", "--csv", table], (str(bad), "GIF", "--skip-bad"), (table,))


@hostile
def case_assess_truncated_dicom(c: Ctx) -> Case:
    bad = put(c.root / "in" / "scan.dcm", dicom_bytes()[:-400])
    return Case(["assess", bad], (str(bad), "truncated or corrupt"))


@hostile
def case_assess_csv_is_a_folder(c: Ctx) -> Case:
    image = good(c.root / "in" / "a.png")
    (c.root / "tables").mkdir()
    return Case(["assess", image, "--csv", c.root / "tables"], (str(c.root / "tables"), "folder"))


# ---- issue 12: wide and signed samples, inconsistent headers, files that are not ours


def _tiff(path: Path, values: np.ndarray, **options) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, values, **options)
    return path


@hostile
def case_deblur_signed_int16_tiff_is_refused_not_clipped(c: Ctx) -> Case:
    bad = _tiff(c.root / "in" / "ct.tif", np.arange(-512, 512, dtype=np.int16).reshape(32, 32))
    return Case(c.deblur(bad), (str(bad), "signed 16-bit integer TIFF is not supported"), (c.root / "out",))


@hostile
def case_deblur_uint32_tiff_is_refused_not_clipped(c: Ctx) -> Case:
    bad = _tiff(c.root / "in" / "wide.tif", np.arange(1024, dtype=np.uint32).reshape(32, 32) * 100_000)
    return Case(c.deblur(bad), (str(bad), "32-bit TIFF is not supported"), (c.root / "out",))


@hostile
def case_deblur_float32_rgb_tiff_says_what_is_not_supported(c: Ctx) -> Case:
    bad = _tiff(c.root / "in" / "hdr.tif", np.random.default_rng(0).random((32, 32, 3)).astype(np.float32), photometric="rgb")
    return Case(c.deblur(bad), (str(bad), "floating-point TIFF is not supported"), (c.root / "out",))


def dicom_with(**tags: object) -> bytes:
    """:func:`dicom_bytes` with ``tags`` (names of DICOM attributes) set to other values."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes()))
    for name, value in tags.items():
        setattr(ds, name, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@hostile
def case_deblur_dicom_12_bits_stored_in_8_allocated(c: Ctx) -> Case:
    bad = put(c.root / "in" / "scan.dcm", dicom_with(BitsStored=12, HighBit=11))
    return Case(c.deblur(bad), (str(bad), "BitsStored 12 does not fit in BitsAllocated 8"), (c.root / "out",))


@hostile
def case_deblur_dicom_values_above_bits_stored_are_refused_not_masked(c: Ctx) -> Case:
    values = np.zeros((32, 32), np.uint16)
    values[5, 5] = 4096  # one bit above the 12 stored: a reader masking to 12 bits would make it 0
    bad = put(c.root / "in" / "scan.dcm", dicom_with(BitsAllocated=16, BitsStored=12, HighBit=11, PixelData=values.tobytes()))
    return Case(c.deblur(bad), (str(bad), "pixel value 4096 lies outside the 0..4095 that BitsStored 12 allows"), (c.root / "out",))


@hostile
def case_deblur_a_newline_in_the_name_of_a_corrupt_file(c: Ctx) -> Case:
    bad = put(c.root / "in" / "two\nlines.png", half(image_bytes("PNG")))
    return Case(c.deblur(bad), ("'<case folder>/in/two\\nlines.png'", "truncated"), (c.root / "out",))


@hostile
def case_train_into_a_used_run_folder_without_its_checkpoint(c: Ctx) -> Case:
    """What is left of an earlier run (its checkpoint gone) is not replaced by a new one."""
    put(c.root / "run" / "run.json", b'{"version": "0.1.0", "options": {}}')
    put(c.root / "run" / "best.safetensors", b"earlier best weights")
    return Case(c.train(c.data()), (str(c.root / "run"), "already holds a run (run.json, best.safetensors)", "--resume"))


@hostile
def case_serve_with_a_non_ascii_api_key(c: Ctx) -> Case:
    key = put(c.root / "elsewhere" / "key.txt", "schlüssel-0123456789-abcdef".encode())
    return Case(["serve", "--api-key-file", key, "--port", "0"], (str(key), "--api-key-file", "printable ASCII characters"))


@hostile
def case_deblur_into_the_inputs_folder_never_replaces_an_unrelated_file(c: Ctx) -> Case:
    """The issue's reproduction: `deblur d/x.jpg -o d --format png` with an unrelated d/x.png."""
    source = put(c.root / "in" / "x.jpg", image_bytes("JPEG"))
    unrelated = good(c.root / "in" / "x.png", seed=7)
    return Case(c.deblur(source, out=c.root / "in") + ["--format", "png"], (str(unrelated), "not written by meddeblur", "--overwrite"))


@hostile
def case_deblur_bmp_sidecar_name_taken_by_another_file(c: Ctx) -> Case:
    source = good(c.root / "in" / "a.png")
    taken = put(c.root / "elsewhere" / "a.bmp.json", b'{"mine": true}')
    return Case(c.deblur(source, out=c.root / "elsewhere") + ["--format", "bmp"], (str(taken), "not written by meddeblur"),
                (c.root / "elsewhere" / "a.bmp",))


@hostile
def case_assess_csv_over_an_unrelated_file(c: Ctx) -> Case:
    image = good(c.root / "in" / "a.png")
    notes = put(c.root / "elsewhere" / "notes.csv", b"patient,note\n1,keep me\n")
    return Case(["assess", image, "--csv", notes], (str(notes), "not written by meddeblur", "--overwrite"))


@hostile
def case_synth_over_unrelated_files(c: Ctx) -> Case:
    good(c.root / "sharp" / "a.png")
    taken = good(c.root / "elsewhere" / "pairs" / "blurred" / "a.png", seed=3)
    return Case(["synth", "--sharp", c.root / "sharp", "-o", c.root / "elsewhere" / "pairs", "--degrade", "gauss:sigma=1"],
                (str(taken), "not written by meddeblur"), (c.root / "elsewhere" / "pairs" / "manifest.json",))


@hostile
def case_export_over_an_unrelated_file(c: Ctx) -> Case:
    taken = put(c.root / "elsewhere" / "model.onnx", b"not an onnx file, and not ours")
    return Case(["export", "--model", c.weights, "--onnx", taken], (str(taken), "not written by meddeblur"))


@valid
def ok_16bit_tiffs_planar_grey_alpha_cmyk_and_a_png_with_huge_text(c: Ctx):
    from PIL import PngImagePlugin

    folder = c.root / "in"
    ramp = np.tile(np.linspace(0, 65535, 48).astype(np.uint16), (32, 1))
    _tiff(folder / "planar.tif", np.stack([ramp] * 3), photometric="rgb", planarconfig="separate")
    _tiff(folder / "la.tif", np.dstack([ramp, ramp[::-1]]), photometric="minisblack", extrasamples=["unassalpha"])
    _tiff(folder / "cmyk.tif", np.dstack([ramp] * 4), photometric="separated")
    info = PngImagePlugin.PngInfo()
    info.add_text("notes", "x" * (2 * PngImagePlugin.MAX_TEXT_CHUNK), zip=True)
    put(folder / "text.png", encode(Image.fromarray(rgb_array()), "PNG", pnginfo=info))

    def check() -> None:
        out = c.root / "out"
        _check_output(out / "planar.tif", (32, 48), "TIFF", bit_depth=16, grayscale=False, alpha=False)
        _check_output(out / "la.tif", (32, 48), "TIFF", bit_depth=16, grayscale=True, alpha=True)
        _check_output(out / "cmyk.tif", (32, 48), "TIFF", bit_depth=16, grayscale=False)
        _check_output(out / "text.png", (32, 32), "PNG", bit_depth=8)

    return c.deblur(folder), check


@valid
def ok_orientation_icc_profile_and_colour_key_are_kept(c: Ctx):
    from PIL import ImageCms

    folder = c.root / "in"
    folder.mkdir()
    Image.fromarray(rgb_array((32, 48))).save(folder / "turned.tif", tiffinfo={0x0112: 6})
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(rgb_array((32, 48), seed=1)).save(folder / "turned.png", exif=exif)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rgb_array(seed=2)).save(folder / "profiled.jpg", icc_profile=icc, quality=95)
    keyed = rgb_array(seed=3)
    keyed[0, 0] = (9, 8, 7)
    Image.fromarray(keyed).save(folder / "keyed.png", transparency=(9, 8, 7))

    def check() -> None:
        out = c.root / "out"
        _check_output(out / "turned.tif", (48, 32), "TIFF")  # upright, as viewers show the input
        _check_output(out / "turned.png", (48, 32), "PNG")
        assert _check_output(out / "profiled.jpg", (32, 32), "JPEG").icc == icc
        assert _check_output(out / "keyed.png", (32, 32), "PNG", alpha=True).alpha[0, 0] == 0

    return c.deblur(folder), check


@valid
def ok_png_colour_chunks_and_a_255_byte_name_are_kept(c: Ctx):
    from PIL import PngImagePlugin

    folder = c.root / "in"
    info = PngImagePlugin.PngInfo()
    info.add(b"gAMA", struct.pack(">I", 45455))
    info.add(b"sRGB", b"\x00")
    put(folder / "gamma.png", encode(Image.fromarray(rgb_array()), "PNG", pnginfo=info))
    long_name = "l" * 251 + ".png"  # 255 bytes: the longest name a file system takes
    good(folder / long_name, seed=4)

    def check() -> None:
        out = c.root / "out"
        assert _check_output(out / "gamma.png", (32, 32), "PNG").png_colour == ((b"gAMA", struct.pack(">I", 45455)), (b"sRGB", b"\x00"))
        _check_output(out / long_name, (32, 32), "PNG")

    return c.deblur(folder), check


@valid
def ok_rerun_replaces_own_outputs_and_overwrite_replaces_others(c: Ctx):
    image = good(c.root / "in" / "a.png")
    good(c.root / "in" / "b.png", seed=1)
    out = c.root / "out"
    write_image(out / "a.png", np.zeros((32, 32, 3), np.float32), provenance={"tool": "meddeblur"})  # an earlier output
    put(out / "b.png", b"someone else's file")
    put(out / f".a.png.tmp-{_dead_pid()}-0123456789ab.png", b"left by a killed run")

    def check() -> None:
        for name in ("a.png", "b.png"):
            assert (read_image(out / name).rgb > 0).any(), name
        assert image.exists()

    return c.deblur(c.root / "in", out=out) + ["--overwrite"], check


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --------------------------------------------------------------------------- running and checking


def _fingerprint(root: Path) -> dict[str, str]:
    """Every entry under ``root``: hash of regular files, target of links, type of the rest. Never opens a FIFO."""
    found: dict[str, str] = {}
    if not os.path.lexists(root):
        return found
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            key = os.path.relpath(path, root)
            if stat.S_ISLNK(info.st_mode):
                found[key] = "link:" + os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as fh:
                    found[key] = hashlib.sha256(fh.read()).hexdigest()
            else:
                found[key] = f"mode:{stat.S_IFMT(info.st_mode)}"
    return found


INPUT_FOLDERS = ("in", "data", "sharp", "elsewhere")


def _inputs(root: Path) -> dict[str, dict[str, str]]:
    return {name: _fingerprint(root / name) for name in INPUT_FOLDERS}


def _check_failure(root: Path, case: Case, before: dict, rc: object, stdout: str, stderr: str) -> None:
    line, report = one_line_error(rc, stdout, stderr)
    # Words are looked for with the case's folder cut out, as its name may hold them too.
    words = line.replace(str(root), "<case folder>")
    for needle in case.expect:
        assert needle in (line if needle.startswith(str(root)) else words), f"{needle!r} not in the message\n{report}"
    assert not temp_leftovers(root), temp_leftovers(root)
    for path in case.absent:
        assert not os.path.lexists(path), f"{path} was created by a failed command\n{report}"
    assert _inputs(root) == before, "an input changed"


def _deny(monkeypatch: pytest.MonkeyPatch, paths: tuple[Path, ...]) -> None:
    """``os.open`` fails with EACCES for ``paths``, as it does for a mode-000 file when not root."""
    denied = {os.path.abspath(p) for p in paths}
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if os.path.abspath(os.fsdecode(path)) in denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


@pytest.fixture(autouse=True)
def watchdog():
    """An in-process case that blocks (say on a FIFO) ends the session with tracebacks instead of hanging it."""
    import faulthandler

    faulthandler.dump_traceback_later(120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory, tiny_weights, template, run_cli) -> dict:
    """Set up and run, concurrently and with a timeout, the own-process cases this session selected."""
    prepared = {}
    for name in selected_cases(request, OWN_PROCESS):
        root = tmp_path_factory.mktemp(name)
        case = HOSTILE[name](Ctx(root, tiny_weights, template))
        prepared[name] = (root, case, _inputs(root))

    def launch(name: str):
        root, case, _ = prepared[name]
        try:
            return run_cli(*case.args, cwd=root, timeout=60)
        except subprocess.TimeoutExpired as exc:  # e.g. blocked reading a FIFO
            return exc

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(prepared, pool.map(launch, prepared)))
    return {name: (*prepared[name], results[name]) for name in prepared}


@pytest.mark.parametrize("name", [n for n in HOSTILE if n in OWN_PROCESS])
def test_hostile_in_own_process(name: str, outcomes: dict) -> None:
    root, case, before, proc = outcomes[name]
    assert not isinstance(proc, subprocess.TimeoutExpired), f"hung: {proc}"
    _check_failure(root, case, before, proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", [n for n in HOSTILE if n not in OWN_PROCESS])
def test_hostile(name: str, tmp_path: Path, tiny_weights: Path, template: Path, capfd, monkeypatch) -> None:
    case = HOSTILE[name](Ctx(tmp_path, tiny_weights, template))
    before = _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    if case.deny:
        _deny(monkeypatch, case.deny)
    capfd.readouterr()
    rc = main([str(a) for a in case.args])
    monkeypatch.undo()
    out, err = capfd.readouterr()
    _check_failure(tmp_path, case, before, rc, out, err)


@pytest.mark.parametrize("name", list(VALID))
def test_valid(name: str, tmp_path: Path, tiny_weights: Path, template: Path, capfd, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    args, check = VALID[name](Ctx(tmp_path, tiny_weights, template))
    before = _inputs(tmp_path)
    capfd.readouterr()
    rc = main([str(a) for a in args])
    _, err = capfd.readouterr()
    assert rc == 0 and not err.strip(), f"rc={rc}\nstderr:\n{err}"
    check()
    assert _inputs(tmp_path) == before, "an input changed"
    assert not temp_leftovers(tmp_path), temp_leftovers(tmp_path)


# --------------------------------------------------------------------------- memory, and a real permission refusal


def test_bomb_header_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 100000×100000 PNG header (30 GB decoded) is refused while the reading process stays small.

    The child reports its own peak resident memory (VmHWM, which starts afresh at exec,
    unlike ru_maxrss, which inherits the forking parent's) and runs under a 4 GiB
    address-space limit, so a decode attempt fails fast instead of swapping a shared machine.
    """
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux) to read the child's peak memory")
    bomb = put(tmp_path / "bomb.png", png_bytes(100_000, 100_000))
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
        "from meddeblur.io.decode import read_image\n"
        "from meddeblur.errors import UserError\n"
        "try:\n    read_image(sys.argv[1])\nexcept UserError as e:\n    print(e)\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr, (proc.stdout, proc.stderr)
    message, peak_kib = proc.stdout.splitlines()
    assert str(bomb) in message and "100000x100000" in message, message
    assert int(peak_kib) / 1024 < 400, f"peak RSS {int(peak_kib) / 1024:.0f} MiB: the image was decoded"


def _as_nobody() -> list[str] | None:
    """A command prefix running a child as an unprivileged user, or None where that is not possible."""
    if os.geteuid() != 0:
        return []  # mode 000 works as it is
    setpriv = shutil.which("setpriv")
    try:
        import pwd

        nobody = pwd.getpwnam("nobody")
    except (ImportError, KeyError):
        return None
    if setpriv is None:
        return None
    return [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]


def test_unreadable_file_real_permissions(tiny_weights: Path) -> None:
    """A mode-000 image and a mode-000 folder, refused by the kernel itself (the child runs as nobody when we are root)."""
    prefix = _as_nobody()
    if prefix is None:  # pragma: no cover - no setpriv/nobody on this machine
        pytest.skip("running as root without setpriv or a 'nobody' user: covered by the simulated cases only")
    root = Path(tempfile.mkdtemp(prefix="meddeblur-perm-"))  # outside pytest's 0700 root-only folders
    try:
        os.chmod(root, 0o777)
        weights = Path(shutil.copy(tiny_weights, root / "tiny.safetensors"))
        shutil.copy(tiny_weights.with_suffix(".json"), root / "tiny.json")
        good(root / "in" / "a.png")
        locked = good(root / "in" / "locked.png", seed=1)
        good(root / "closed" / "b.png")
        for path in root.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(locked, 0)
        os.chmod(root / "closed", 0)
        before = _inputs(root)
        env = {**os.environ, "HOME": str(root), "TORCH_HOME": str(root / "torch"), "MPLCONFIGDIR": str(root / "mpl"),
               "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"}
        commands = {
            "file": ([*prefix, sys.executable, "-m", "meddeblur", "deblur", str(root / "in"), "-o", str(root / "out"),
                      "--model", str(weights)], (str(locked), "permission denied")),
            "folder": ([*prefix, sys.executable, "-m", "meddeblur", "synth", "--sharp", str(root / "closed"), "-o",
                        str(root / "synth"), "--degrade", "gauss:sigma=1"], (str(root / "closed"), "permission denied")),
        }

        def run(argv: list[str]) -> subprocess.CompletedProcess:
            return subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=90,
                                  stdin=subprocess.DEVNULL)

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = dict(zip(commands, pool.map(run, [argv for argv, _ in commands.values()])))
        for what, proc in results.items():
            case = Case([], commands[what][1], (root / "out", root / "synth"))
            _check_failure(root, case, before, proc.returncode, proc.stdout, proc.stderr)
    finally:
        os.chmod(root / "closed", 0o755)
        shutil.rmtree(root, ignore_errors=True)


def test_fuzz_decode_smoke(tmp_path: Path) -> None:
    """benchmarks.stress.fuzz_decode runs (a few dozen examples) and finds nothing."""
    pytest.importorskip("hypothesis")
    import importlib
    import json

    # Imported as a module of the benchmarks package, so that its spawned worker process can import it too.
    fuzz = importlib.import_module("benchmarks.stress.fuzz_decode")
    assert fuzz.main(["--examples", "40", "--seconds", "20", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "fuzz_decode.json").read_text())
    assert result["unmutated_seeds_all_ok"] and result["outcomes"]["finding"] == 0 and result["examples"] == 40
    assert "| examples |" in (tmp_path / "fuzz_decode.md").read_text()
