"""Hostile PSF and spec inputs: numbers float() reads too loosely, tiny widths, and kernel files whose size or
header promises more than a kernel can be. Each must fail in one line naming the option or file (exit 2 through
the CLI, no traceback), cost milliseconds and kilobytes before it fails, and print no warning."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_cases import one_line_error
from PIL import Image

from meddeblur.cli.main import main
from meddeblur.degradation.pipeline import degrade
from meddeblur.degradation.spec import parse_number, parse_spec
from meddeblur.errors import CorruptFile, InvalidOption, UnsupportedFormat, UserError
from meddeblur.psf import PSF_FORMAT, load_psf
from meddeblur.psf import spectrum

# --------------------------------------------------------------------------- the number grammar

# Each is read by Python's float() (the first ones as a different number than it looks) and must be refused.
LOOSE = ["1_6", "1_0.5", " 1.6", "1.6\t", "inf", "-Infinity", "nan", "1e400", "1e-400", "１６", "١٫٦", "1.6.1", "0x10",
         "1e", ".", "--1", "1.6e3.5"]


@pytest.mark.parametrize("text", LOOSE)
def test_parse_number_refuses_what_float_reads_loosely(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_number(text)
    assert repr(text) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("text, value", [("1.6", 1.6), (".5", 0.5), ("5.", 5.0), ("-30", -30.0), ("+2", 2.0), ("2e-3", 0.002),
                                         ("1E+2", 100.0), ("0e-999", 0.0), ("007", 7.0)])
def test_parse_number_reads_the_grammar(text: str, value: float) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["1_6", "inf", "nan", "1e400", "１６", "1e-400"])
def test_psf_and_degrade_specs_refuse_loose_numbers_naming_the_value(text: str) -> None:
    with pytest.raises(InvalidOption) as caught:
        load_psf(f"gauss:sigma={text}")
    assert caught.value.option == "psf" and repr(text) in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserError) as caught:
        parse_spec(f"gauss:sigma=0.5..{text}+noise:sigma=0")
    assert repr(text) in str(caught.value) and "\n" not in str(caught.value)


def test_an_angle_that_underflows_to_zero_is_refused_not_read_as_zero() -> None:
    with pytest.raises(InvalidOption, match="too close to zero"):
        load_psf("motion:length=9,angle=1e-400")


def test_exponents_and_spaces_around_separators_read_as_written() -> None:
    assert load_psf("gauss:sigma=1.6e+0").params["sigma"] == 1.6  # '+' before a digit is a sign, not an operator
    assert parse_spec("gauss: sigma = 0.5 .. 2e0 + noise:sigma=1e-3") == parse_spec("gauss:sigma=0.5..2+noise:sigma=0.001")
    with pytest.raises(UserError, match="ambiguous"):  # 0..0.5 or 0.0..5: neither is guessed
        parse_spec("gauss:sigma=0...5")


# --------------------------------------------------------------------------- tiny widths


@pytest.mark.parametrize("spec", ["gauss:sigma=1e-300", "gauss:sigma=1e-9", "defocus:radius=1e-9", "defocus:radius=0.05",
                                  "gauss:sigma=2,sigma_y=1e-9"])
def test_tiny_widths_are_refused_with_the_valid_range_and_no_warning(spec: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InvalidOption, match=r">= 0\.1 and <= .*use none") as caught:
            load_psf(spec)
        with pytest.raises(UserError, match=r">= 0\.1"):
            degrade(torch.rand(1, 3, 16, 16), spec, torch.Generator().manual_seed(0))
    assert "\n" not in str(caught.value)


def test_the_narrowest_widths_accepted_are_deltas() -> None:
    assert load_psf("gauss:sigma=0.1").is_delta and load_psf("defocus:radius=0.1").is_delta


# --------------------------------------------------------------------------- .npy files


def _npy_header(path: Path, shape: tuple[int, ...], descr: str = "<f8", size: int | None = None) -> Path:
    """An .npy file with a real header declaring ``shape`` and ``size`` bytes in all (sparse: nothing written)."""
    with path.open("wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": descr, "fortran_order": False, "shape": shape})
        fh.write(b"\0" * 16)
        if size is not None:
            fh.truncate(size)
    return path


def _refused_cheaply(path: Path, error: type[UserError], needle: str) -> str:
    """load_psf(path) raises ``error`` matching ``needle`` in one line naming the file, within 1 s and 20 MB."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(error, match=needle) as caught:
            load_psf(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert time.perf_counter() - started < 1.0 and peak < 20e6, (time.perf_counter() - started, peak)
    return message


def test_an_npy_header_declaring_a_huge_array_is_refused_before_reading(tmp_path) -> None:
    _refused_cheaply(_npy_header(tmp_path / "huge.npy", (100000, 100000)), InvalidOption, "100000×100000 px, more than 401")
    _refused_cheaply(_npy_header(tmp_path / "wide.npy", (3, 1000)), InvalidOption, "1000×3 px")
    _refused_cheaply(_npy_header(tmp_path / "cube.npy", (3, 3, 3)), InvalidOption, "2-D")


def test_a_sparse_gigabyte_npy_is_refused_by_its_size(tmp_path) -> None:
    message = _refused_cheaply(_npy_header(tmp_path / "sparse.npy", (20000, 20000), "<f4", size=1_600_000_128), InvalidOption,
                               "1600.0 MB, more than a kernel")
    assert "crop the kernel" in message
    # A small header does not excuse the bulk behind it: numpy would read 72 bytes and ignore the rest.
    _refused_cheaply(_npy_header(tmp_path / "tail.npy", (3, 3), size=1_600_000_128), InvalidOption, "MB, more than a kernel")


def test_npy_dtypes_that_are_not_numbers_are_refused_from_the_header(tmp_path) -> None:
    _refused_cheaply(_npy_header(tmp_path / "text.npy", (3, 3), "<U1000000"), InvalidOption, "not a number type")
    np.save(tmp_path / "pickle.npy", np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    _refused_cheaply(tmp_path / "pickle.npy", UnsupportedFormat, "pickle")
    _refused_cheaply(_npy_header(tmp_path / "short.npy", (5, 5)), CorruptFile, "shorter than its header")


def test_a_kernel_of_huge_finite_values_is_normalised_without_overflow() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        uniform = load_psf(np.full((3, 3), 1e308))
        assert np.allclose(uniform.kernel, 1 / 9) and uniform.kernel.shape == (3, 3)
        mixed = load_psf(np.array([[0.0, 1e308, 0.0], [1e308, 1.7e308, 1e308], [0.0, 1e308, 0.0]]))
        assert mixed.kernel.sum() == pytest.approx(1.0) and mixed.kernel[1, 1] == pytest.approx(1.7 / 5.7)
        for bad in (np.full((3, 3), np.inf), np.array([[np.longdouble("1e400")]]) if np.finfo(np.longdouble).max > 1e400 else None):
            if bad is not None:
                with pytest.raises(InvalidOption, match="NaN or infinite"):
                    load_psf(bad)


def test_an_npy_of_huge_values_round_trips(tmp_path) -> None:
    np.save(tmp_path / "huge-values.npy", np.full((3, 3), 1e308))
    assert np.allclose(load_psf(tmp_path / "huge-values.npy").kernel, 1 / 9)


# --------------------------------------------------------------------------- .png files


def _grey_png(width: int, height: int) -> bytes:
    """An 8-bit grey all-black PNG of any size: 10000×10000 compresses to ~100 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\0" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def test_a_small_png_that_decodes_huge_is_refused_before_decoding(tmp_path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_grey_png(10000, 10000))
    assert path.stat().st_size < 200_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would be a second line
        _refused_cheaply(path, InvalidOption, "10000×10000 px, more than 401")


def test_only_png_is_read_as_a_png_kernel(tmp_path) -> None:
    path = tmp_path / "really-a-tiff.png"
    Image.fromarray(np.full((5, 5), 9, np.uint8)).save(path, format="TIFF")
    _refused_cheaply(path, CorruptFile, "cannot read the PSF image")


# --------------------------------------------------------------------------- .json files


def _psf_json(path: Path, **record: object) -> Path:
    path.write_text(json.dumps({"format": PSF_FORMAT, "version": 1, "kernel": [[0, 1, 0], [1, 4, 1], [0, 1, 0]], **record}))
    return path


@pytest.mark.parametrize("params", [[1, 2], "gauss", 3, {"sigma": [1, 2]}, {"nested": {"a": 1}}])
def test_json_params_that_are_not_an_object_of_values_are_refused(tmp_path, params: object) -> None:
    _refused_cheaply(_psf_json(tmp_path / "p.json", params=params), CorruptFile, '"params" must be an object')


@pytest.mark.parametrize("kernel, needle", [
    ([["0", "1_6", "0"]], "only numbers"), ([[True, False]], "only numbers"), ([[1, 2], [3]], "same"), ([], "list of rows"),
    ({"a": 1}, "list of rows"), ([1, 2, 3], "list of rows"), ([[10**400]], "beyond the float range"), ([[]], "non-zero length"),
])
def test_json_kernels_of_the_wrong_shape_or_type_are_refused(tmp_path, kernel: object, needle: str) -> None:
    _refused_cheaply(_psf_json(tmp_path / "k.json", kernel=kernel), CorruptFile, needle)


def test_a_deeply_nested_json_is_refused_without_recursing(tmp_path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"format": "%s", "kernel": %s1%s}' % (PSF_FORMAT, "[" * 100_000, "]" * 100_000))
    _refused_cheaply(deep, CorruptFile, "nested 100001 levels deep")
    # Brackets inside strings are text, not nesting: a valid file with them still loads.
    quoted = _psf_json(tmp_path / "quoted.json", note="[" * 1000 + '\\"{')
    assert load_psf(quoted).extra["note"].startswith("[[[")


def test_json_size_and_encoding_are_checked(tmp_path) -> None:
    big = _psf_json(tmp_path / "big.json")
    with big.open("ab") as fh:
        fh.truncate(20 * 2**20)
    _refused_cheaply(big, InvalidOption, "MB, more than a kernel")
    (tmp_path / "latin.json").write_bytes(b'{"format": "caf\xe9"}')
    _refused_cheaply(tmp_path / "latin.json", CorruptFile, "not UTF-8")
    big_side = _psf_json(tmp_path / "side.json", kernel=[[0] * 500])
    _refused_cheaply(big_side, InvalidOption, "500×1 px")


def test_a_valid_json_psf_still_loads_with_its_params(tmp_path) -> None:
    psf = load_psf(_psf_json(tmp_path / "ok.json", params={"family": "measured", "sigma": 1.5, "note": None}))
    assert psf.params == {"family": "measured", "sigma": 1.5, "note": None} and psf.kernel.sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- read-only arrays into torch


def test_read_only_arrays_reach_torch_writeable(monkeypatch) -> None:
    """torch warns once per process on a read-only array (so a warnings filter can miss it): check the arrays instead."""
    from meddeblur.psf.estimate import BlurEstimator

    given: list[bool] = []
    real = torch.from_numpy

    def spy(array: np.ndarray) -> torch.Tensor:
        given.append(bool(array.flags.writeable))
        return real(array)

    monkeypatch.setattr(torch, "from_numpy", spy)
    image = np.random.default_rng(0).random((128, 128, 3)).astype(np.float32)
    image.flags.writeable = False
    spectra = np.stack([spectrum.log_power_spectrum(image)])
    spectra.flags.writeable = False
    BlurEstimator.load().outputs(spectra)
    assert given == [True, True] and not image.flags.writeable


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("name", ["sigma=1_6", "radius=1e-9", "sigma=1e-300", "huge.npy", "params.json", "deep.json", "bomb.png"])
def test_cli_refuses_hostile_psfs_in_one_line(tmp_path, photo, capsys, name: str) -> None:
    files = {"huge.npy": lambda p: _npy_header(p, (100000, 100000)), "params.json": lambda p: _psf_json(p, params=[1, 2]),
             "deep.json": lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "bomb.png": lambda p: p.write_bytes(_grey_png(10000, 10000))}
    if name in files:
        files[name](tmp_path / name)
        psf, needle = str(tmp_path / name), str(tmp_path / name)
    else:
        psf = ("gauss:" if name.startswith("sigma") else "defocus:") + name
        needle = name.partition("=")[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rc = main(["deblur", str(photo), "-o", str(tmp_path / "out"), "--psf", psf, "--method", "wiener"])
    captured = capsys.readouterr()
    line, report = one_line_error(rc, captured.out, captured.err)
    assert needle in line and ("--psf" in line or name in files), report  # a file's own error names the file
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("spec", ["gauss:sigma=1_6", "defocus:radius=1e-9"])
def test_cli_synth_refuses_loose_and_tiny_numbers_in_one_line(tmp_path, photo, capsys, spec: str) -> None:
    rc = main(["synth", "--sharp", str(photo.parent), "-o", str(tmp_path / "pairs"), "--degrade", spec])
    captured = capsys.readouterr()
    line, report = one_line_error(rc, captured.out, captured.err)
    assert spec.partition("=")[2] in line, report


def test_cli_method_psf_prints_no_warning(tmp_path, run_cli) -> None:
    """A fresh process: torch's non-writable warning fires once per process, so in-process it may already be spent."""
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(photo)
    done = run_cli("deblur", photo, "-o", tmp_path / "out", "--method", "psf")
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "not writable" not in done.stderr, done.stderr
