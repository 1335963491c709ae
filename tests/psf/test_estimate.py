"""Estimating the PSF from the image: spectra, labels, the shipped estimator on generated blurs, PSF maps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.degradation.pipeline import quantize8
from meddeblur.errors import InvalidOption
from meddeblur.psf.estimator_net import FAMILIES, OUTPUTS, BlurEstimatorNet
from meddeblur.physics import blur
from meddeblur.psf import load_psf
from meddeblur.psf.estimate import BlurEstimator, estimate_psf, estimate_psf_map, gaussian_of_moments, label_of
from meddeblur.psf.motion_length import fit_motion_length, motion_length
from meddeblur.psf.spectrum import log_power_spectrum


def _blurred(spec: str, size: int = 384, seed: int = 3) -> np.ndarray:
    image = torch.from_numpy(synthetic_dermoscopy(size, size, seed).transpose(2, 0, 1))[None]
    kernel = load_psf(spec).kernel
    side = max(kernel.shape)
    square = np.zeros((side, side))
    square[(side - kernel.shape[0]) // 2 : (side + kernel.shape[0]) // 2, (side - kernel.shape[1]) // 2 : (side + kernel.shape[1]) // 2] = kernel
    out = quantize8(blur(image, torch.from_numpy(square).float()) if side > 1 else image)
    return out[0].numpy().transpose(1, 2, 0)


@pytest.fixture(scope="module")
def estimator() -> BlurEstimator:
    return BlurEstimator.load()


def test_spectrum_shows_a_gaussian_as_a_steeper_fall_off() -> None:
    sharp, soft = log_power_spectrum(_blurred("none")), log_power_spectrum(_blurred("gauss:sigma=2"))
    high, low = (slice(0, 8), slice(0, 8)), (slice(28, 36), slice(28, 36))  # a centred spectrum's corner and middle

    def fall_off(spectrum: np.ndarray) -> float:
        return float(spectrum[low].mean() - spectrum[high].mean())

    assert soft.shape == (64, 64)
    assert fall_off(soft) > fall_off(sharp) + 3


def test_spectrum_refuses_small_images() -> None:
    with pytest.raises(ValueError, match="128"):
        log_power_spectrum(np.zeros((100, 200)))


def test_moments_of_a_rotated_gaussian() -> None:
    major, minor, angle = gaussian_of_moments(load_psf("gauss:sigma=2.5,sigma_y=1.2,angle=120").kernel)
    assert major == pytest.approx(2.5, rel=0.03) and minor == pytest.approx(1.2, rel=0.03) and angle == pytest.approx(120, abs=1)


def test_labels_use_the_family_and_fold_other_blurs_into_a_gaussian() -> None:
    family, values, weights = label_of("motion", {"length": 9.0, "angle": 45.0}, load_psf("motion:length=9,angle=45").kernel)
    assert FAMILIES[family] == "motion" and values[5] == pytest.approx(math.log(9)) and values[7] == pytest.approx(1.0)
    assert weights[:5].sum() == 0  # only the motion parameters are trained for a motion sample
    kernel = load_psf("down:scale=2").kernel
    family, values, _ = label_of("down", {"scale": 2, "up": "bicubic"}, kernel)
    assert FAMILIES[family] == "gauss" and math.exp(values[0]) == pytest.approx(gaussian_of_moments(kernel)[0])
    assert label_of("none", {}, np.ones((1, 1)))[0] == 0


def test_network_shapes_and_refusals() -> None:
    network = BlurEstimatorNet()
    assert network(torch.zeros(2, 1, 64, 64)).shape == (2, OUTPUTS)
    with pytest.raises(ValueError, match="64"):
        network(torch.zeros(2, 1, 32, 32))


@pytest.mark.parametrize("spec, family, key, tolerance", [
    ("gauss:sigma=1.5", "gauss", "sigma", 0.25),
    ("gauss:sigma=2.5", "gauss", "sigma", 0.25),
    ("defocus:radius=3", "defocus", "radius", 0.25),
    ("motion:length=11,angle=30", "motion", "length", 1.0),  # the length measured in the spectrum, not the network's
])
def test_shipped_estimator_finds_generated_blurs(estimator: BlurEstimator, spec: str, family: str, key: str, tolerance: float) -> None:
    estimate = estimator.estimate(_blurred(spec))
    assert estimate.family == family, estimate.describe()
    truth = load_psf(spec).params[key]
    error = abs(estimate.params[key] - truth)
    assert error <= (tolerance if key == "length" else tolerance * truth), estimate.describe()
    if family == "motion":
        assert abs((estimate.params["angle"] - 30 + 90) % 180 - 90) < 15, estimate.describe()


def test_shipped_estimator_calls_a_sharp_image_sharp(estimator: BlurEstimator) -> None:
    estimate = estimator.estimate(_blurred("none"))
    assert estimate.family == "none", estimate.describe()
    assert estimate.describe()["estimated"] is True and 0 <= estimate.confidence <= 1


def test_psf_map_follows_two_blur_levels(estimator: BlurEstimator) -> None:
    left, right = _blurred("gauss:sigma=0.8", 512, 5), _blurred("gauss:sigma=2.6", 512, 5)
    image = np.concatenate([left[:, :256], right[:, 256:]], axis=1)
    psf_map = estimate_psf_map(image, 128, estimator)
    assert len(psf_map.rows) == 4 and len(psf_map.cols) == 4
    sigma = [[e.params.get("sigma", 0.0) for e in line] for line in psf_map.cells]
    assert np.mean([line[0] for line in sigma]) < np.mean([line[3] for line in sigma]) - 0.8, sigma
    assert psf_map.describe()["cells"][0][0]["family"] in FAMILIES


def test_estimation_refuses_small_images_in_one_line(estimator: BlurEstimator) -> None:
    with pytest.raises(InvalidOption, match="128"):
        estimate_psf(np.zeros((100, 300, 3), np.float32), estimator)
    with pytest.raises(InvalidOption, match="cell"):
        estimate_psf_map(np.zeros((300, 300, 3), np.float32), 64, estimator)


@pytest.mark.parametrize("length, angle", [(17.0, 60.0), (6.0, 135.0), (24.0, 0.0)])
def test_motion_length_is_measured_from_the_stripes_in_the_spectrum(length: float, angle: float) -> None:
    image = _blurred(f"motion:length={length},angle={angle}", 384, 7)
    for guess in (0.6 * length, length, 1.5 * length):  # wherever the network's guess falls within the search
        assert abs(motion_length(image, angle, guess) - length) <= 0.5
    assert abs(motion_length(image[:200, :200], angle, length) - length) <= 1.5  # a small tile: 64-px windows


def test_a_long_motion_blur_is_estimated_at_its_length(estimator: BlurEstimator) -> None:
    # Past the estimator's 15-px training range: the network alone says ~10 px here (and its direction is 6° off).
    image = _blurred("motion:length=19,angle=30", 384, 3)
    assert estimator.from_spectra(log_power_spectrum(image)[None])[0].params["length"] < 12
    estimate = estimator.estimate(image)
    assert estimate.family == "motion" and abs(estimate.params["length"] - 19) <= 1.0, estimate.describe()
    cells = estimate_psf_map(_blurred("motion:length=19,angle=30", 512, 3), 256, estimator).estimates()
    assert all(e.family == "motion" and abs(e.params["length"] - 19) <= 1.5 for e in cells), [e.params for e in cells]


def test_motion_length_fit_refuses_bad_arguments_and_keeps_a_guess_without_stripes() -> None:
    with pytest.raises(ValueError, match="positive guess"):
        fit_motion_length(np.zeros((64, 64)), 30.0, 0.0)
    with pytest.raises(ValueError, match="square"):
        fit_motion_length(np.zeros((64, 32)), 30.0, 5.0)
    assert fit_motion_length(np.zeros((64, 64)), 30.0, 7.0) == 7.0  # a flat spectrum: nothing to measure
