"""``meddeblur deblur``: any size in, same size out, same name, format, channels and bit depth."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import meddeblur.models
from meddeblur.cli import main
from meddeblur.errors import UserError
from meddeblur.inference.batch import deblur_array, deblur_tensor
from meddeblur.runs.files import deblur_files
from meddeblur.io.decode import read_image
from meddeblur.models import SIZE_MULTIPLE

ODD_SIZES = [(77, 101), (33, 17), (17, 33), (16, 16), (31, 47)]  # (height, width)


class Identity(nn.Module):
    """A "network" returning its input: whatever comes out of deblurring must be the input again."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return x


def _ints(shape: tuple[int, ...], dtype, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, size=shape).astype(dtype)


def _write(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as OpenCV stores it (BGR[A] channel order) or, for grey+alpha, with Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 2:
        Image.fromarray(array, mode="LA").save(path)
    else:
        assert cv2.imwrite(str(path), array), path
    return path


def _pixels(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, path
    return array


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


# --------------------------------------------------------------------------- through the real command


def test_cli_deblurs_a_folder_keeping_size_name_and_format(tmp_path: Path, tiny_weights: Path, run_cli) -> None:
    folder = tmp_path / "in"
    inputs = {
        "wide.png": _write(folder / "wide.png", _ints((77, 101, 3), np.uint8, 1)),
        "tall.png": _write(folder / "tall.png", _ints((33, 17, 3), np.uint8, 2)),
        "photo.jpg": _write(folder / "photo.jpg", _ints((40, 24, 3), np.uint8, 3)),
        "scan.tif": _write(folder / "scan.tif", _ints((21, 35, 3), np.uint16, 4)),
    }
    before = {name: _digest(path) for name, path in inputs.items()}
    out = tmp_path / "out"

    proc = run_cli("deblur", folder, "-o", out, "--model", tiny_weights, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"4 input(s): 4 written to {out}" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(inputs)
    for name, source in inputs.items():
        want, got = _pixels(source), _pixels(out / name)
        assert got.shape == want.shape and got.dtype == want.dtype, name
        assert Image.open(out / name).format == Image.open(source).format
        assert _digest(source) == before[name], f"input {name} was modified"


def test_cli_format_option_changes_the_suffix(tmp_path: Path, tiny_weights: Path, run_cli) -> None:
    source = _write(tmp_path / "in" / "lesion.jpg", _ints((33, 17, 3), np.uint8))

    proc = run_cli("deblur", source, "-o", tmp_path / "out", "--model", tiny_weights, "--format", "png", cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["lesion.png"]
    with Image.open(tmp_path / "out" / "lesion.png") as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (17, 33))


# --------------------------------------------------------------------------- formats, channels, bit depth

# (file name, array as OpenCV stores it, bit depth, grayscale, has alpha)
KINDS = {
    "rgb8-png": ("a.png", lambda s: _ints((s[0], s[1], 3), np.uint8), 8, False, False),
    "rgb16-png": ("a.png", lambda s: _ints((s[0], s[1], 3), np.uint16), 16, False, False),
    "gray8-png": ("a.png", lambda s: _ints(s, np.uint8), 8, True, False),
    "gray16-png": ("a.png", lambda s: _ints(s, np.uint16), 16, True, False),
    "rgba8-png": ("a.png", lambda s: _ints((s[0], s[1], 4), np.uint8), 8, False, True),
    "rgba16-png": ("a.png", lambda s: _ints((s[0], s[1], 4), np.uint16), 16, False, True),
    "gray-alpha8-png": ("a.png", lambda s: _ints((s[0], s[1], 2), np.uint8), 8, True, True),
    "rgb8-tiff": ("a.tif", lambda s: _ints((s[0], s[1], 3), np.uint8), 8, False, False),
    "rgb16-tiff": ("a.tiff", lambda s: _ints((s[0], s[1], 3), np.uint16), 16, False, False),
    "gray16-tiff": ("a.tif", lambda s: _ints(s, np.uint16), 16, True, False),
    "rgb8-bmp": ("a.bmp", lambda s: _ints((s[0], s[1], 3), np.uint8), 8, False, False),
}


@pytest.mark.parametrize("size", [(77, 101), (17, 33)], ids=["101x77", "33x17"])
@pytest.mark.parametrize("kind", KINDS)
def test_lossless_formats_round_trip_exactly_through_an_identity_model(kind: str, size, tmp_path: Path) -> None:
    """With an identity network the output file must hold exactly the input pixels: same size,
    channels, channel order, bit depth and alpha; any pad/crop, colour or quantisation slip shows."""
    name, make, bit_depth, grayscale, has_alpha = KINDS[kind]
    source = _write(tmp_path / "in" / name, make(size))
    loaded = read_image(source)
    assert (loaded.bit_depth, loaded.grayscale, loaded.alpha is not None) == (bit_depth, grayscale, has_alpha)
    digest = _digest(source)

    written = deblur_files(Identity(), [source], tmp_path / "out")

    assert written == [tmp_path / "out" / name]
    assert Image.open(written[0]).format == Image.open(source).format
    result = read_image(written[0])
    assert (result.bit_depth, result.grayscale, result.alpha is not None) == (bit_depth, grayscale, has_alpha)
    want, got = _pixels(source), _pixels(written[0])
    assert got.dtype == (np.uint16 if bit_depth == 16 else np.uint8)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert _digest(source) == digest
    assert _no_temp_files(tmp_path)


def test_real_model_output_lands_in_the_file(tmp_path: Path, tiny_model) -> None:
    """16-bit RGB with alpha at an odd size: the file holds the network's output, in RGB order, alpha untouched."""
    bgra = _ints((33, 17, 4), np.uint16, seed=5)
    source = _write(tmp_path / "in" / "x.png", bgra)

    (target,) = deblur_files(tiny_model, [source], tmp_path / "out")

    expected = deblur_array(tiny_model, read_image(source).rgb)
    got = _pixels(target)
    assert got.dtype == np.uint16 and got.shape == bgra.shape
    rgb = cv2.cvtColor(got[:, :, :3], cv2.COLOR_BGR2RGB).astype(np.float64) / 65535
    np.testing.assert_allclose(rgb, expected, atol=0.6 / 65535)
    np.testing.assert_array_equal(got[:, :, 3], bgra[:, :, 3])


@pytest.mark.parametrize("name", ["photo.jpg", "photo.jpeg", "PHOTO.JPG"])
def test_jpeg_in_jpeg_out(name: str, tmp_path: Path, tiny_model) -> None:
    source = _write(tmp_path / "in" / name, _ints((31, 47, 3), np.uint8))

    (target,) = deblur_files(tiny_model, [source], tmp_path / "out", jpeg_quality=90)

    assert target.name == name
    with Image.open(target) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (47, 31))


def test_jpeg_quality_is_used(tmp_path: Path) -> None:
    source = _write(tmp_path / "in" / "noise.jpg", _ints((64, 64, 3), np.uint8))
    low = deblur_files(Identity(), [source], tmp_path / "low", jpeg_quality=10)[0]
    high = deblur_files(Identity(), [source], tmp_path / "high", jpeg_quality=100)[0]
    assert low.stat().st_size < high.stat().st_size


@pytest.mark.parametrize("fmt, suffix, pil_format", [("png", ".png", "PNG"), ("tiff", ".tif", "TIFF"),
                                                     ("jpeg", ".jpg", "JPEG"), ("bmp", ".bmp", "BMP")])
def test_format_option_sets_suffix_and_encoding(fmt: str, suffix: str, pil_format: str, tmp_path: Path) -> None:
    source = _write(tmp_path / "in" / "scan.png", _ints((17, 33, 3), np.uint16))

    (target,) = deblur_files(Identity(), [source], tmp_path / "out", fmt=fmt)

    assert target == tmp_path / "out" / f"scan{suffix}"
    assert Image.open(target).format == pil_format
    # 16 bits survive where the format can hold them; JPEG and BMP are 8-bit.
    assert read_image(target).bit_depth == (16 if fmt in ("png", "tiff") else 8)


# --------------------------------------------------------------------------- several files, one model


def test_folder_is_done_in_one_invocation_with_the_model_loaded_once(tmp_path: Path, tiny_weights: Path, monkeypatch, capsys) -> None:
    folder = tmp_path / "in"
    for i, (h, w) in enumerate(ODD_SIZES):
        _write(folder / f"img{i}.png", _ints((h, w, 3), np.uint8, seed=i))
    (folder / "notes.txt").write_text("not an image, not picked up from a folder\n")
    extra = _write(tmp_path / "single.bmp", _ints((20, 18, 3), np.uint8))
    calls = []
    real_load = meddeblur.models.load_model

    def counting_load(*args, **kwargs):
        calls.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(meddeblur.models, "load_model", counting_load)

    rc = main(["deblur", str(folder), str(extra), "-o", str(tmp_path / "out"), "--model", str(tiny_weights), "--device", "cpu"])

    assert rc == 0
    assert len(calls) == 1
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    # BMP has no metadata field: its provenance goes into a sidecar (meddeblur.io.provenance).
    assert names == sorted([f"img{i}.png" for i in range(len(ODD_SIZES))] + ["single.bmp", "single.bmp.json"])
    for i, (h, w) in enumerate(ODD_SIZES):
        assert _pixels(tmp_path / "out" / f"img{i}.png").shape == (h, w, 3)
    text = capsys.readouterr().out
    assert f"{len(ODD_SIZES) + 1} input(s): {len(ODD_SIZES) + 1} written" in text
    assert f"not images, left alone: {folder / 'notes.txt'}" in text  # named, not passed over in silence


def test_a_bad_file_stops_the_run_there_leaving_whole_outputs_before_it(tmp_path: Path) -> None:
    """Each input is decoded once: the run stops at the first that cannot be read, and names it."""
    folder = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png", "d.png"):
        _write(folder / name, _ints((20, 20, 3), np.uint8))
    bad = folder / "c.png"
    bad.write_bytes(bad.read_bytes()[:60])

    with pytest.raises(UserError, match="c.png.*skip_bad=True"):
        deblur_files(Identity(), [folder], tmp_path / "out")

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    for name in ("a.png", "b.png"):
        np.testing.assert_array_equal(_pixels(tmp_path / "out" / name), _pixels(folder / name))


def test_same_output_name_from_two_folders_is_refused(tmp_path: Path) -> None:
    one = _write(tmp_path / "one" / "x.png", _ints((20, 20, 3), np.uint8))
    two = _write(tmp_path / "two" / "x.png", _ints((20, 20, 3), np.uint8, seed=1))
    with pytest.raises(UserError, match="separate folders"):
        deblur_files(Identity(), [one, two], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_output_folder_may_already_hold_results(tmp_path: Path) -> None:
    """The overwrite rule: meddeblur's own earlier output is replaced; another file only with overwrite=True."""
    source = _write(tmp_path / "in" / "x.png", _ints((20, 20, 3), np.uint8))
    deblur_files(Identity(), [source], tmp_path / "out")
    deblur_files(Identity(), [source], tmp_path / "out")  # an earlier result (it carries provenance) is replaced
    np.testing.assert_array_equal(_pixels(tmp_path / "out" / "x.png"), _pixels(source))
    (tmp_path / "out" / "x.png").write_bytes(b"someone else's file")
    with pytest.raises(UserError, match="not written by meddeblur.*overwrite=True"):
        deblur_files(Identity(), [source], tmp_path / "out")
    assert (tmp_path / "out" / "x.png").read_bytes() == b"someone else's file"
    deblur_files(Identity(), [source], tmp_path / "out", overwrite=True)
    np.testing.assert_array_equal(_pixels(tmp_path / "out" / "x.png"), _pixels(source))


# --------------------------------------------------------------------------- tensors and padding


@pytest.mark.parametrize("size", ODD_SIZES)
def test_deblur_tensor_keeps_shape_and_range(size, tiny_model) -> None:
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    output = deblur_tensor(tiny_model, images)
    assert output.shape == images.shape
    assert output.dtype == torch.float32
    assert float(output.min()) >= 0.0 and float(output.max()) <= 1.0
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("size", ODD_SIZES)
def test_reflection_padding_is_cropped_back_exactly(size) -> None:
    rgb = np.random.default_rng(1).random((*size, 3), dtype=np.float32)
    model = Identity()

    restored = deblur_array(model, rgb)

    np.testing.assert_array_equal(restored, rgb)
    assert restored.dtype == np.float32 and restored.shape == rgb.shape
    # The network only ever sees sides that are multiples of SIZE_MULTIPLE, padded by less than one multiple.
    ((_, _, h, w),) = model.seen
    assert h % SIZE_MULTIPLE == 0 and w % SIZE_MULTIPLE == 0
    assert 0 <= h - size[0] < SIZE_MULTIPLE and 0 <= w - size[1] < SIZE_MULTIPLE


def test_padding_reflects_and_is_split_between_both_sides() -> None:
    images = torch.rand(1, 3, 17, 33, generator=torch.Generator().manual_seed(2))
    captured = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            captured.append(x.clone())
            return torch.zeros_like(x)

    deblur_tensor(Probe(), images)

    (padded,) = captured
    assert padded.shape == (1, 3, 32, 48)
    expected = F.pad(images, (7, 8, 7, 8), mode="reflect")
    torch.testing.assert_close(padded, expected, rtol=0, atol=0)


def test_a_file_named_twice_is_deblurred_once(tmp_path: Path) -> None:
    source = _write(tmp_path / "in" / "x.png", _ints((20, 20, 3), np.uint8))
    written = deblur_files(Identity(), [tmp_path / "in", source, tmp_path / "in" / ".." / "in" / "x.png"], tmp_path / "out")
    assert written == [tmp_path / "out" / "x.png"]


def test_large_images_are_tiled_and_match_whole_processing(tiny_model, tmp_path):
    """--tile bounds memory on big images; on one small enough to run whole, tiled ≈ whole (< 1/255)."""
    import numpy as np

    from meddeblur.data.synthetic import synthetic_dermoscopy
    from meddeblur.inference.batch import deblur_array

    image = synthetic_dermoscopy(330, 310, seed=5)
    whole = deblur_array(tiny_model, image)
    tiled = deblur_array(tiny_model, image, tile=256, overlap=96)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() < 1 / 255
    seams = deblur_array(tiny_model, image, tile=256, overlap=0)
    assert np.abs(seams - whole).max() > np.abs(tiled - whole).max()  # the overlap is what removes the seams
