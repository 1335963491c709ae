"""The PSF object: parsing, files, refusals, normalisation, MTF50 and drawing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from meddeblur.errors import CorruptFile, InvalidOption, NotFound, UnsupportedFormat
from meddeblur.psf import PSF_FORMAT, load_psf, mtf50, psf_from_array, radial_mtf


@pytest.mark.parametrize("sigma", [0.8, 1.2, 2.0, 3.0])
def test_gaussian_mtf50_matches_its_formula(sigma: float) -> None:
    # MTF(f) = exp(-2 π² σ² f²) = 0.5  ⇔  f = sqrt(ln 2 / 2) / (π σ)
    expected = math.sqrt(math.log(2) / 2) / (math.pi * sigma)
    assert load_psf(f"gauss:sigma={sigma}").mtf50 == pytest.approx(expected, rel=0.01)


def test_specs_build_normalised_odd_kernels_with_their_parameters() -> None:
    for spec in ("gauss:sigma=1.6", "gauss:sigma=2,sigma_y=0.8,angle=30", "defocus:radius=2.5", "motion:length=9,angle=45",
                 "down:scale=2", "resample:scale=2,down=box,up=bicubic,lib=pil"):
        psf = load_psf(spec)
        kh, kw = psf.kernel.shape
        assert kh % 2 == 1 and kw % 2 == 1, spec
        assert psf.kernel.min() >= 0 and psf.kernel.sum() == pytest.approx(1.0), spec
        assert psf.params["family"] == spec.split(":")[0], spec
    assert load_psf("defocus:radius=2.5").params["radius"] == 2.5
    assert load_psf("none").is_delta and load_psf("none").mtf50 is None
    assert not load_psf("gauss:sigma=1").is_delta


def test_a_motion_psf_is_anisotropic() -> None:
    kernel = load_psf("motion:length=11,angle=0").kernel
    assert kernel.shape[1] > kernel.shape[0]


@pytest.mark.parametrize("spec, needle", [
    ("gauss:sigma=1..2", "one value"), ("real", "not a single blur"), ("mixed", "not a single blur"),
    ("gauss:sigma=1+jpeg:quality=90", "no operators"), ("blob:size=3", "unknown family"), ("gauss:sigma=-1", "out of range"),
    ("shake:extent=9", "not a single blur"),
])
def test_bad_specs_are_refused_in_one_line(spec: str, needle: str) -> None:
    with pytest.raises(InvalidOption, match=needle) as caught:
        load_psf(spec)
    assert "\n" not in str(caught.value) and caught.value.option == "psf"


@pytest.mark.parametrize("array, needle", [
    (np.array([0.2, 0.6, 0.2]), "2-D"), (np.zeros((3, 3)), "all zero"), (np.array([[0.5, -0.1], [0.3, 0.3]]), "negative"),
    (np.array([[np.nan, 1.0], [1.0, 1.0]]), "NaN"), (np.ones((3, 3), bool), "dtype"), (np.ones((0, 3)), "2-D"),
    (np.ma.masked_array(np.ones((3, 3)), mask=np.eye(3)), "masked"),
])
def test_bad_kernels_are_refused(array: np.ndarray, needle: str) -> None:
    with pytest.raises(InvalidOption, match=needle):
        load_psf(array)


def test_arrays_are_normalised_and_their_origin_centred() -> None:
    psf = psf_from_array(np.array([[0.0, 2.0], [2.0, 4.0]]))  # even sides: origin (1, 1) by the kh // 2 convention
    assert psf.kernel.sum() == pytest.approx(1.0)
    assert psf.kernel.shape == (3, 3) and psf.kernel[1, 1] == pytest.approx(0.5)
    shifted = psf_from_array(np.array([[1.0, 1.0, 0.0]]), origin=(0, 0))
    assert shifted.kernel.shape == (1, 3) and shifted.kernel[0, 1] == pytest.approx(0.5) and shifted.kernel[0, 2] == pytest.approx(0.5)


def test_a_kernel_larger_than_the_image_is_refused() -> None:
    with pytest.raises(InvalidOption, match="larger than the image"):
        load_psf("gauss:sigma=3", shape=(12, 40))
    load_psf("gauss:sigma=3", shape=(19, 19))


def test_files_npy_png_and_json_round_trip(tmp_path) -> None:
    reference = load_psf("defocus:radius=2")
    np.save(tmp_path / "k.npy", reference.kernel * 7)
    assert np.allclose(load_psf(tmp_path / "k.npy").kernel, reference.kernel)
    grey = np.round(reference.kernel / reference.kernel.max() * 65535).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "k.png")
    assert np.allclose(load_psf(str(tmp_path / "k.png")).kernel, reference.kernel, atol=1e-5)
    reference.save_json(tmp_path / "k.json", extra={"device": "test"})
    record = json.loads((tmp_path / "k.json").read_text())
    assert record["format"] == PSF_FORMAT and record["mtf50_cycles_per_pixel"] == pytest.approx(reference.mtf50)
    again = load_psf(tmp_path / "k.json")
    assert np.array_equal(again.kernel, reference.kernel) and again.extra["device"] == "test" and again.digest == reference.digest


def test_bad_files_are_refused_naming_them(tmp_path) -> None:
    with pytest.raises(NotFound, match="no such PSF file"):
        load_psf(tmp_path / "missing.npy")
    (tmp_path / "bad.json").write_text('{"kernel": [[1]]}')
    with pytest.raises(CorruptFile, match="bad.json"):
        load_psf(tmp_path / "bad.json")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(UnsupportedFormat, match="greyscale"):
        load_psf(tmp_path / "rgb.png")
    (tmp_path / "k.txt").write_text("1")
    with pytest.raises(UnsupportedFormat, match=r"\.npy, \.png or \.json"):
        load_psf(tmp_path / "k.txt")


def test_mtf50_interpolates_and_reports_none_above_nyquist() -> None:
    freqs = np.array([0.0, 0.1, 0.2])
    assert mtf50(freqs, np.array([1.0, 0.7, 0.3])) == pytest.approx(0.15)
    assert mtf50(*radial_mtf(np.ones((1, 1)))) is None
    # A wider kernel is softer.
    assert load_psf("defocus:radius=3").mtf50 < load_psf("defocus:radius=1.5").mtf50


def test_describe_names_the_psf_for_provenance() -> None:
    described = load_psf("gauss:sigma=1.6").describe()
    assert described["source"] == "gauss:sigma=1.6" and described["size"] == [11, 11]
    assert described["mtf50_cycles_per_pixel"] == pytest.approx(0.1172, abs=1e-3) and len(described["digest"]) == 12
    assert load_psf("gauss:sigma=1.7").digest != load_psf("gauss:sigma=1.6").digest


def test_the_psf_draws_itself(tmp_path) -> None:
    path = load_psf("motion:length=9,angle=30").draw(tmp_path / "psf.png")
    with Image.open(path) as figure:
        assert figure.format == "PNG" and figure.width > 300
