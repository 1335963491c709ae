"""Tests for meddeblur.io.decode; every image is generated in tmp_path."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from meddeblur.degradation.resampling import resize_area
from meddeblur.errors import UserError
from meddeblur.files import atomic_path, atomic_write
from meddeblur.io.decode import read_image, read_rgb
from meddeblur.io.encode import write_image
from meddeblur.io.listing import list_images


def _random(shape: tuple[int, ...], bit_depth: int, seed: int = 0) -> np.ndarray:
    """Float image whose values are exactly representable at ``bit_depth``."""
    maxval = 2**bit_depth - 1
    ints = np.random.default_rng(seed).integers(0, maxval + 1, size=shape)
    return (ints / maxval).astype(np.float32)


def _assert_single_line_error(excinfo: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert path.name in msg
    return msg


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", ["png", "tif"])
@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("kind", ["rgb", "gray", "rgba", "gray_alpha"])
def test_round_trip_exact(tmp_path: Path, fmt: str, bit_depth: int, kind: str) -> None:
    h, w = 20, 33
    grayscale = kind.startswith("gray")
    if grayscale:
        rgb = np.repeat(_random((h, w, 1), bit_depth), 3, axis=2)
    else:
        rgb = _random((h, w, 3), bit_depth)
    alpha = _random((h, w), bit_depth, seed=1) if kind in ("rgba", "gray_alpha") else None
    path = write_image(tmp_path / f"x.{fmt}", rgb, alpha=alpha, grayscale=grayscale, bit_depth=bit_depth)

    img = read_image(path)
    assert img.rgb.dtype == np.float32 and img.rgb.shape == (h, w, 3)
    assert img.bit_depth == bit_depth
    assert img.format == ("PNG" if fmt == "png" else "TIFF")
    np.testing.assert_array_equal(img.rgb, rgb)
    if alpha is None:
        assert img.alpha is None
    else:
        assert img.alpha is not None and img.alpha.dtype == np.float32
        np.testing.assert_array_equal(img.alpha, alpha)
    assert img.grayscale == grayscale  # 16-bit grey + alpha PNGs too (written without OpenCV, which has no 2-channel PNG)


@pytest.mark.parametrize(("value", "words"), [(-0.25, "must lie in [0, 1] (found -0.25..0.5)"), (1.5, "found 0.5..1.5"),
                                              (np.nan, "must be finite"), (np.inf, "must be finite")])
def test_write_refuses_floats_outside_the_unit_range_and_nan(tmp_path: Path, value: float, words: str) -> None:
    rgb = np.full((16, 16, 3), 0.5, np.float32)
    rgb[0, 0, 1] = value
    with pytest.raises(ValueError, match="^rgb: ") as refusal:
        write_image(tmp_path / "c.png", rgb)
    assert words in str(refusal.value) and "numpy float32 (16, 16, 3)" in str(refusal.value)
    with pytest.raises(ValueError, match="^alpha: "):
        write_image(tmp_path / "c.png", np.zeros((16, 16, 3)), alpha=rgb[:, :, 1])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_write_takes_integer_arrays_scaled_by_their_range(tmp_path: Path, dtype: type) -> None:
    top = np.iinfo(dtype).max
    pixels = np.random.default_rng(4).integers(0, top + 1, (18, 21, 3), dtype=dtype)
    pixels[0, :3] = [[0, 1, top], [top - 1, 2, 3], [1, 1, 1]]
    for suffix in ("png", "tif"):
        img = read_image(write_image(tmp_path / f"i.{suffix}", pixels))
        assert img.bit_depth == (16 if dtype == np.uint16 else 8)  # a uint16 array is written at 16 bits by default
        np.testing.assert_array_equal(np.round(img.rgb * top), pixels)
    grey = read_image(write_image(tmp_path / "g.png", pixels[:, :, 0]))
    assert grey.grayscale  # an (H, W) array is written grey
    np.testing.assert_array_equal(np.round(grey.rgb[:, :, 0] * top), pixels[:, :, 0])
    rgba = np.dstack([pixels, pixels[:, :, :1]])
    img = read_image(write_image(tmp_path / "a.png", rgba))  # (H, W, 4): the last channel is alpha
    np.testing.assert_array_equal(np.round(img.alpha * top), pixels[:, :, 0])


@pytest.mark.parametrize("array", [np.zeros((16, 16, 3), np.int32), np.zeros((16, 16, 3), bool), np.zeros((16, 16, 3), np.int8),
                                   np.ma.masked_array(np.zeros((16, 16, 3)), mask=False)], ids=["int32", "bool", "int8", "masked"])
def test_write_refuses_other_dtypes_and_masked_arrays(tmp_path: Path, array: np.ndarray) -> None:
    with pytest.raises(ValueError, match="^rgb: (dtype|a masked array)"):
        write_image(tmp_path / "c.png", array)


def test_write_rounds_half_to_even(tmp_path: Path) -> None:
    img = read_image(write_image(tmp_path / "c.png", np.full((16, 16, 3), 0.5, np.float32)))
    assert img.rgb[1, 1, 0] == pytest.approx(128 / 255)  # 127.5 -> 128


def test_grayscale_write_uses_channel_mean(tmp_path: Path) -> None:
    rgb = np.zeros((16, 16, 3), np.float32)
    rgb[..., 0] = 0.6
    img = read_image(write_image(tmp_path / "g.png", rgb, grayscale=True))
    assert img.grayscale
    np.testing.assert_allclose(img.rgb, 0.2, atol=0.5 / 255)


def test_jpeg_is_8bit_without_alpha_and_bmp_8bit_with_alpha(tmp_path: Path) -> None:
    rgb = _random((24, 24, 3), 8)
    alpha = _random((24, 24), 8, seed=5)
    jpg = read_image(write_image(tmp_path / "a.jpg", rgb, alpha=alpha, bit_depth=16))
    assert (jpg.format, jpg.bit_depth, jpg.alpha) == ("JPEG", 8, None)
    bmp = read_image(write_image(tmp_path / "a.bmp", rgb, alpha=alpha, bit_depth=16))
    assert (bmp.format, bmp.bit_depth) == ("BMP", 8)
    np.testing.assert_array_equal(bmp.rgb, rgb)
    np.testing.assert_array_equal(bmp.alpha, alpha)


def test_decodes_by_content_not_extension(tmp_path: Path) -> None:
    rgb = _random((16, 16, 3), 8)
    path = write_image(tmp_path / "really_png.jpg", rgb, format="PNG")
    img = read_image(path)
    assert img.format == "PNG"
    np.testing.assert_array_equal(img.rgb, rgb)


def test_explicit_format_and_unknown_suffix(tmp_path: Path) -> None:
    path = write_image(tmp_path / "noext", _random((16, 16, 3), 8), format="tif")
    assert read_image(path).format == "TIFF"
    with pytest.raises(UserError) as excinfo:
        write_image(tmp_path / "x.gif", _random((16, 16, 3), 8))
    _assert_single_line_error(excinfo, tmp_path / "x.gif")


def test_jpeg_exif_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(path, exif=exif)  # 40 wide, 20 high
    img = read_image(path)
    assert img.rgb.shape == (40, 20, 3)
    assert img.format == "JPEG"


def test_palette_png_reads_as_rgb(tmp_path: Path) -> None:
    pal = Image.new("P", (16, 16))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.putpixel((3, 3), 1)
    path = tmp_path / "pal.png"
    pal.save(path)
    img = read_image(path)
    assert not img.grayscale and img.alpha is None and img.bit_depth == 8
    np.testing.assert_array_equal(img.rgb[0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(img.rgb[3, 3], [0.0, 0.0, 1.0])


def test_bilevel_and_cmyk_modes(tmp_path: Path) -> None:
    bilevel = Image.new("1", (16, 16), 1)
    bilevel.save(tmp_path / "bw.png")
    img = read_image(tmp_path / "bw.png")
    assert img.grayscale and img.bit_depth == 8
    np.testing.assert_array_equal(img.rgb, 1.0)
    Image.new("CMYK", (16, 16), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    img = read_image(tmp_path / "cmyk.jpg")
    assert img.rgb.shape == (16, 16, 3) and not img.grayscale
    assert img.rgb.min() > 0.9  # no ink is white


def test_16bit_gray_alpha_png_is_grayscale(tmp_path: Path) -> None:
    # Neither Pillow nor OpenCV writes 16-bit grey+alpha PNGs, so assemble one by hand.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = 16, 20
    la = np.random.default_rng(0).integers(0, 65536, (h, w, 2)).astype(">u2")
    raw = b"".join(b"\x00" + la[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)  # 16-bit, colour type 4 = grey+alpha
    path = tmp_path / "la16.png"
    idat = chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b""))
    img = read_image(path)
    assert img.grayscale and img.bit_depth == 16 and img.alpha is not None
    np.testing.assert_array_equal(img.rgb[..., 1], (la[..., 0] / 65535).astype(np.float32))
    np.testing.assert_array_equal(img.alpha, (la[..., 1] / 65535).astype(np.float32))


def test_16bit_rgb_png_written_by_opencv_reads_as_rgb_order(tmp_path: Path) -> None:
    bgr = np.zeros((16, 16, 3), np.uint16)
    bgr[..., 2] = 65535  # red in OpenCV's BGR order
    path = tmp_path / "red16.png"
    cv2.imwrite(str(path), bgr)
    img = read_image(path)
    assert img.bit_depth == 16
    np.testing.assert_array_equal(img.rgb[0, 0], [1.0, 0.0, 0.0])


def test_non_ascii_path_16bit(tmp_path: Path) -> None:
    rgb = _random((16, 16, 3), 16)
    path = write_image(tmp_path / "dermoscopía_é" / "läsion.png", rgb, bit_depth=16)
    np.testing.assert_array_equal(read_rgb(path), rgb)


# --------------------------------------------------------------------------- read errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(UserError) as excinfo:
        read_image(path)
    assert "no such file" in _assert_single_line_error(excinfo, path)


def test_directory(tmp_path: Path) -> None:
    path = tmp_path / "folder.png"
    path.mkdir()
    with pytest.raises(UserError) as excinfo:
        read_image(path)
    _assert_single_line_error(excinfo, path)


@pytest.mark.parametrize("content", [b"hello, this is text\n", b""])
def test_not_an_image(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "text.png"
    path.write_bytes(content)
    with pytest.raises(UserError) as excinfo:
        read_image(path)
    assert "not a readable image" in _assert_single_line_error(excinfo, path)


@pytest.mark.parametrize(
    ("suffix", "bit_depth"), [(".png", 8), (".png", 16), (".jpg", 8), (".tif", 8), (".tif", 16), (".bmp", 8)]
)
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_truncated(tmp_path: Path, suffix: str, bit_depth: int) -> None:
    good = write_image(tmp_path / f"good{suffix}", _random((64, 64, 3), bit_depth), bit_depth=bit_depth)
    data = good.read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as excinfo:
        read_image(path)
    assert "cannot decode" in _assert_single_line_error(excinfo, path)


def test_too_small(tmp_path: Path) -> None:
    path = write_image(tmp_path / "tiny.png", _random((8, 8, 3), 8))
    with pytest.raises(UserError) as excinfo:
        read_image(path)
    msg = _assert_single_line_error(excinfo, path)
    assert "8x8" in msg and "16" in msg
    assert read_image(path, min_size=8).rgb.shape == (8, 8, 3)


def test_unsupported_format_is_not_readable(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    Image.new("RGB", (32, 32)).save(path)
    with pytest.raises(UserError):
        read_image(path)


# --------------------------------------------------------------------------- atomic output


def test_write_creates_parents_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.png"
    write_image(target, _random((16, 16, 3), 8))
    assert target.is_file()
    assert _leftovers(target.parent) == []


def test_write_failure_keeps_old_target_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(RuntimeError):
        write_image(target, _random((16, 16, 3), 8))
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_failed_rename_leaves_no_partial_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out16.png"
    real_replace = os.replace

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(UserError) as excinfo:
        write_image(target, _random((16, 16, 3), 16), bit_depth=16)
    _assert_single_line_error(excinfo, target)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_parent_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    target = blocker / "out.png"
    with pytest.raises(UserError) as excinfo:
        write_image(target, _random((16, 16, 3), 8))
    _assert_single_line_error(excinfo, target)


def test_target_is_a_folder(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.mkdir()
    with pytest.raises(UserError):
        write_image(target, _random((16, 16, 3), 8))


def test_atomic_write_text_and_failure(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.csv"
    with atomic_write(target, "w", newline="") as f:
        f.write("a,b\r\n1,2\r\n")
    assert target.read_bytes() == b"a,b\r\n1,2\r\n"

    with pytest.raises(ValueError):
        with atomic_write(target, "w") as f:
            f.write("partial")
            raise ValueError("stop")
    assert target.read_bytes() == b"a,b\r\n1,2\r\n"
    assert _leftovers(target.parent) == []


def test_atomic_write_respects_umask(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions only")
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "f.bin") as f:
            f.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o644


def test_atomic_path(tmp_path: Path) -> None:
    target = tmp_path / "weights.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp.name.startswith(".")
        np.save(tmp, np.arange(3))
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert _leftovers(tmp_path) == []

    with pytest.raises(KeyError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyError("stop")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert _leftovers(tmp_path) == []

    with pytest.raises(RuntimeError):  # nothing written: do not replace the target with nothing
        with atomic_path(tmp_path / "empty.bin"):
            pass
    assert not (tmp_path / "empty.bin").exists()


# --------------------------------------------------------------------------- list_images


def test_list_images(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.tiff", "d.bmp", "e.jpeg", "f.tif", "notes.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "sub2").mkdir()
    (tmp_path / "sub2" / "deep.png").write_bytes(b"x")
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.tiff", "d.bmp", "e.jpeg", "f.tif"]


def test_list_images_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(UserError) as excinfo:
        list_images(missing)
    assert "no such folder" in _assert_single_line_error(excinfo, missing)

    afile = tmp_path / "file.png"
    afile.write_bytes(b"x")
    with pytest.raises(UserError):
        list_images(afile)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(UserError) as excinfo:
        list_images(empty)
    assert "no images" in _assert_single_line_error(excinfo, empty)


# --------------------------------------------------------------------------- resize_area


@pytest.mark.parametrize("size", [(10, 20), (64, 48), (100, 30), (32, 40)])
def test_resize_area_shape_and_constant(size: tuple[int, int]) -> None:
    x = np.full((32, 40, 3), 0.3, np.float32)
    y = resize_area(x, size)
    assert y.shape == (*size, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y, 0.3, atol=1e-6)


def test_resize_area_single_channel_and_clip() -> None:
    x = np.zeros((16, 16, 1), np.float32)
    x[:, 8:] = 1.0
    y = resize_area(x, (40, 40))
    assert y.shape == (40, 40, 1)
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert resize_area(x[..., 0], (8, 8)).shape == (8, 8)


# --------------------------------------------------------------------------- file objects (a web handler's bytes)


class _Trickle(io.RawIOBase):
    """A raw stream that gives at most 100 bytes a read, as a socket may: the reader must go on to the end."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.data[self.at:self.at + min(len(buffer), 100)]
        buffer[:len(chunk)] = chunk
        self.at += len(chunk)
        return len(chunk)


@pytest.mark.parametrize(("suffix", "bit_depth", "alpha"), [(".png", 16, True), (".jpg", 8, False), (".tif", 16, False), (".bmp", 8, True)])
def test_a_binary_file_object_reads_as_its_file_does(tmp_path: Path, suffix: str, bit_depth: int, alpha: bool) -> None:
    path = write_image(tmp_path / f"img{suffix}", _random((40, 48, 4 if alpha else 3), bit_depth), bit_depth=bit_depth)
    want = read_image(path)
    with open(path, "rb") as opened:
        streams = [io.BytesIO(path.read_bytes()), opened, _Trickle(path.read_bytes()), io.BufferedReader(_Trickle(path.read_bytes()))]
        for stream in streams:
            got = read_image(stream)
            assert np.array_equal(got.rgb, want.rgb) and (got.alpha is None) == (want.alpha is None)
            assert (got.format, got.bit_depth, got.grayscale, got.icc) == (want.format, want.bit_depth, want.grayscale, want.icc)
    assert read_image(io.BytesIO(path.read_bytes())).path == Path("<BytesIO>")  # what messages call it


def test_a_file_object_is_read_from_where_it_stands(tmp_path: Path) -> None:
    path = write_image(tmp_path / "img.png", _random((20, 24, 3), 8))
    stream = io.BytesIO(b"a multipart preamble\r\n" + path.read_bytes())
    stream.seek(len(b"a multipart preamble\r\n"))
    assert np.array_equal(read_image(stream).rgb, read_image(path).rgb)


def test_a_file_object_is_bounded_by_the_size_limit_of_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meddeblur.errors import TooLarge
    from meddeblur.io import decode

    monkeypatch.setattr(decode, "_SLACK_BYTES", 0)  # the limit is then 8 bytes a pixel: 2048 bytes for 16x16
    data = write_image(tmp_path / "big.png", _random((64, 64, 3), 16), bit_depth=16).read_bytes()
    assert len(data) > 2048
    stream = io.BytesIO(data)
    with pytest.raises(TooLarge, match=r"^<BytesIO>: more than 2,048 bytes, more than an image within this tool's pixel limit holds"):
        read_image(stream, max_pixels=16 * 16)
    assert stream.tell() <= 2049  # refused once past the limit, not after reading everything


def test_file_objects_that_cannot_be_read_are_refused_in_one_line(tmp_path: Path) -> None:
    from meddeblur.errors import EmptyFile, InvalidOption

    path = write_image(tmp_path / "img.png", _random((20, 24, 3), 8))
    with pytest.raises(EmptyFile, match=r"^<BytesIO>: empty file \(0 bytes\)"):
        read_image(io.BytesIO())
    with open(path, encoding="latin-1") as text, pytest.raises(InvalidOption) as excinfo:
        read_image(text)
    assert "binary mode ('rb')" in _assert_single_line_error(excinfo, path)
    with open(path, "rb") as closed:
        pass
    with pytest.raises(UserError) as excinfo:
        read_image(closed)
    assert "cannot read" in _assert_single_line_error(excinfo, path)
    with open(tmp_path / "out.png", "wb") as writing, pytest.raises(UserError) as excinfo:
        read_image(writing)
    assert "open for reading" in _assert_single_line_error(excinfo, tmp_path / "out.png")
    with pytest.raises(InvalidOption, match=r"^path: expected a file path or a binary file object \(with read\(\)\), got int"):
        read_image(42)  # type: ignore[arg-type]
