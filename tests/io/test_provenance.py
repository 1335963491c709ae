"""Provenance on every output file, read back by ``meddeblur info``."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from meddeblur import __version__
from meddeblur.cli import main
from meddeblur.io.decode import read_image
from meddeblur.io.encode import write_image
from meddeblur.io.ownership import read_provenance
from meddeblur.io.provenance import embed, make_record, sidecar_path, summary
from meddeblur.models import weights_id

RECORD = make_record("0123456789ab", "nafnet width 16", "torch", {"tile": 1024, "overlap": 128})


def _random(shape, bit_depth: int, seed: int = 0) -> np.ndarray:
    maxval = 255 if bit_depth == 8 else 65535
    return (np.random.default_rng(seed).integers(0, maxval + 1, size=shape) / maxval).astype(np.float32)


# (file name, bit depth, alpha)
CASES = [("a.png", 8, False), ("a.png", 16, False), ("rgba.png", 16, True), ("a.tif", 8, False), ("a.tif", 16, False),
         ("rgba.tif", 16, True), ("a.jpg", 8, False), ("a.bmp", 8, False)]


@pytest.mark.parametrize(("name", "bit_depth", "alpha"), CASES, ids=[f"{n}-{b}" for n, b, _ in CASES])
def test_record_round_trips_and_pixels_are_unchanged(name: str, bit_depth: int, alpha: bool, tmp_path: Path) -> None:
    rgb = _random((21, 34, 3), bit_depth)
    a = _random((21, 34), bit_depth, seed=1) if alpha else None
    plain = write_image(tmp_path / "plain" / name, rgb, alpha=a, bit_depth=bit_depth)
    tagged = write_image(tmp_path / "tagged" / name, rgb, alpha=a, bit_depth=bit_depth, provenance=RECORD)

    assert read_provenance(tagged) == RECORD
    assert read_provenance(plain) is None
    want, got = read_image(plain), read_image(tagged)
    np.testing.assert_array_equal(got.rgb, want.rgb)
    assert got.bit_depth == want.bit_depth and (got.alpha is None) == (want.alpha is None)
    if got.alpha is not None:
        np.testing.assert_array_equal(got.alpha, want.alpha)
    # Other readers still take the file: OpenCV (libpng/libtiff/libjpeg) decodes the same pixels.
    np.testing.assert_array_equal(cv2.imread(str(tagged), cv2.IMREAD_UNCHANGED), cv2.imread(str(plain), cv2.IMREAD_UNCHANGED))
    assert sidecar_path(tagged).exists() == name.endswith(".bmp")


def test_png_and_tiff_say_software_and_jpeg_keeps_one_comment(tmp_path: Path) -> None:
    png = write_image(tmp_path / "a.png", _random((16, 16, 3), 16), bit_depth=16, provenance=RECORD)
    tif = write_image(tmp_path / "a.tif", _random((16, 16, 3), 8), provenance=RECORD)
    with Image.open(png) as im:
        assert im.info["Software"] == f"meddeblur {__version__}"
    with Image.open(tif) as im:
        assert im.tag_v2[305] == f"meddeblur {__version__}"
        assert json.loads(im.tag_v2[270])["model_id"] == "0123456789ab"
    jpg = write_image(tmp_path / "a.jpg", _random((16, 16, 3), 8), provenance=RECORD)
    assert jpg.read_bytes().count(b"\xff\xfe") == 1


def test_big_endian_tiff_gets_its_description(tmp_path: Path) -> None:
    """A hand-made big-endian ("MM") 16×16 grey TIFF: the appended IFD must use the file's byte order."""
    entries = [(256, 3, 16), (257, 3, 16), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1), (278, 3, 16), (279, 4, 256)]
    pixels = bytes(range(256))
    ifd = struct.pack(">H", len(entries))
    for tag, kind, value in entries:
        ifd += struct.pack(">HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack(">HHII", tag, kind, 1, value)
    data = b"MM\x00*" + struct.pack(">I", 8 + 256) + pixels + ifd + struct.pack(">I", 0)
    path = tmp_path / "be.tif"
    path.write_bytes(embed(data, "TIFF", RECORD))
    assert read_provenance(path) == RECORD
    np.testing.assert_array_equal(np.asarray(Image.open(path)).ravel(), np.arange(256))


def test_summary_names_tool_version_model_and_parameters() -> None:
    line = summary(RECORD)
    assert line.startswith(f"meddeblur {__version__} deblur, model 0123456789ab (nafnet width 16), engine torch")
    assert "tile 1024" in line and "not for diagnosis alone" in line


def test_deblur_output_carries_model_id_and_info_prints_it(tmp_path: Path, tiny_weights: Path, capsys, one_thread) -> None:
    source = tmp_path / "in" / "x.png"
    source.parent.mkdir()
    assert cv2.imwrite(str(source), (_random((20, 30, 3), 8) * 255).astype(np.uint8))
    assert main(["deblur", str(source), "-o", str(tmp_path / "out"), "--model", str(tiny_weights), "--tile", "512", "--overlap", "64"]) == 0
    record = read_provenance(tmp_path / "out" / "x.png")
    assert record["model_id"] == weights_id(tiny_weights) and record["engine"] == "torch"
    assert record["parameters"] == {"tile": 512, "overlap": 64} and record["model"] == "attention-unet width 4"
    capsys.readouterr()

    assert main(["info", str(tmp_path / "out" / "x.png"), str(source)]) == 1  # the input has none
    lines = capsys.readouterr().out.splitlines()
    assert weights_id(tiny_weights) in lines[0] and lines[1].startswith("  made from: x.png, ") and "no meddeblur provenance" in lines[2]
    assert main(["info", "--json", str(tmp_path / "out" / "x.png")]) == 0
    assert json.loads(capsys.readouterr().out)[str(tmp_path / "out" / "x.png")] == record


def test_info_on_a_non_image_is_one_line(tmp_path: Path, capfd) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image\n")
    assert main(["info", str(bad)]) == 2
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and str(bad) in err and "Traceback" not in err
