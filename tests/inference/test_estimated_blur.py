"""Blind deblurring by estimate → restore → check: decisions, the consistency guard, PSF maps, the Python API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import meddeblur
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.degradation.pipeline import quantize8
from meddeblur.errors import InvalidOption
from meddeblur.inference.consistency import LIMIT, consistency, reblur
from meddeblur.inference.estimated_blur import EstimatedBlur
from meddeblur.physics import blur
from meddeblur.psf import load_psf
from meddeblur.psf.estimate import BlurEstimate


def _blurred(spec: str, size: int = 256, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    sharp = synthetic_dermoscopy(size, size, seed)
    kernel = load_psf(spec).kernel
    tensor = torch.from_numpy(sharp.transpose(2, 0, 1))[None]
    out = quantize8(blur(tensor, torch.from_numpy(kernel).float())) if kernel.size > 1 else quantize8(tensor)
    return out[0].numpy().transpose(1, 2, 0), sharp


class _Told:
    """An estimator that reports a fixed PSF (what a wrong estimate looks like to the rest of the pipeline)."""

    weights_id = "test"

    def __init__(self, spec: str, family: str, confidence: float = 0.9) -> None:
        psf = load_psf(spec)
        self.estimate_ = BlurEstimate(psf, family, dict(psf.params), confidence, {family: confidence})

    def estimate(self, image: np.ndarray) -> BlurEstimate:
        return self.estimate_


@pytest.fixture(scope="module")
def deblurrer() -> meddeblur.Deblurrer:
    return meddeblur.Deblurrer.load(device="cpu")


def _pipeline(deblurrer: meddeblur.Deblurrer, estimator) -> EstimatedBlur:
    bound = deblurrer.with_estimated_psf()
    return EstimatedBlur(estimator, bound._estimated.with_psf, deblurrer.deblur_rgb)


def test_reblur_and_consistency_of_an_exact_explanation() -> None:
    blurred, sharp = _blurred("gauss:sigma=1.5")
    psf = load_psf("gauss:sigma=1.5")
    np.testing.assert_allclose(reblur(sharp, psf), blur(torch.from_numpy(sharp.transpose(2, 0, 1))[None],
                                                        torch.from_numpy(psf.kernel).float())[0].numpy().transpose(1, 2, 0), atol=1e-6)
    exact = consistency(blurred, sharp, psf)
    assert exact.passed and exact.worst_block < 1.0  # only 8-bit rounding is left
    assert not consistency(blurred, np.clip(sharp + 0.1 * (np.indices(sharp.shape[:2]).sum(0) % 2)[..., None], 0, 1), psf).passed


def test_the_guard_falls_back_on_a_deliberately_wrong_psf(deblurrer: meddeblur.Deblurrer) -> None:
    blurred, _ = _blurred("gauss:sigma=1.0")
    restored, record = _pipeline(deblurrer, _Told("gauss:sigma=4", "gauss")).restore(blurred)
    assert record["result"] == "blind" and not record["consistency"]["passed"], record
    assert record["consistency"]["ratio"] > LIMIT
    np.testing.assert_array_equal(restored, deblurrer.deblur_rgb(blurred))  # the blind network's output, as the record says


def test_a_right_psf_passes_the_guard(deblurrer: meddeblur.Deblurrer) -> None:
    blurred, sharp = _blurred("gauss:sigma=1.6")
    restored, record = _pipeline(deblurrer, _Told("gauss:sigma=1.6", "gauss")).restore(blurred)
    assert record["result"] == "restored" and record["consistency"]["passed"], record
    assert np.abs(restored - sharp).mean() < np.abs(blurred - sharp).mean()


def test_no_blur_found_returns_the_image_unchanged(deblurrer: meddeblur.Deblurrer) -> None:
    blurred, _ = _blurred("none")
    restored, record = _pipeline(deblurrer, _Told("none", "none")).restore(blurred)
    assert record["result"] == "unchanged"
    np.testing.assert_array_equal(restored, blurred)


def test_low_confidence_goes_to_the_blind_network(deblurrer: meddeblur.Deblurrer) -> None:
    blurred, _ = _blurred("gauss:sigma=1.6")
    restored, record = _pipeline(deblurrer, _Told("gauss:sigma=1.6", "gauss", confidence=0.2)).restore(blurred)
    assert record["result"] == "blind" and "confidence" in record["reason"]
    np.testing.assert_array_equal(restored, deblurrer.deblur_rgb(blurred))


def test_small_images_go_to_the_blind_network_with_the_reason(deblurrer: meddeblur.Deblurrer) -> None:
    image = synthetic_dermoscopy(100, 140, 2)
    restored, record = deblurrer.with_estimated_psf().restore_rgb(image)
    assert record["result"] == "blind" and "128" in record["reason"]
    np.testing.assert_array_equal(restored, deblurrer.deblur_rgb(image))


def test_method_psf_through_the_python_api(deblurrer: meddeblur.Deblurrer) -> None:
    blurred, sharp = _blurred("gauss:sigma=2.0", 320, 4)
    image = np.round(blurred * 255).astype(np.uint8)
    out = deblurrer(image, method="psf")
    assert out.dtype == np.uint8 and out.shape == image.shape
    bound = deblurrer.with_estimated_psf()
    assert bound.estimates_psf and bound.provenance["parameters"]["method"] == "psf"
    assert bound.provenance["parameters"]["fallback_model_id"] == deblurrer.model_id
    restored, record = bound.restore_rgb(blurred)
    assert record["psf"]["estimated"] and record["result"] in ("restored", "blind", "unchanged")
    np.testing.assert_array_equal(out, np.round(np.clip(restored, 0, 1) * 255).astype(np.uint8))
    with pytest.raises(InvalidOption, match="estimates the PSF"):
        deblurrer(image, psf="gauss:sigma=1", method="psf")


def test_a_psf_map_restores_each_cell_with_its_own_psf(deblurrer: meddeblur.Deblurrer) -> None:
    from meddeblur.inference.estimated_blur import MARGIN
    from meddeblur.psf.estimate import PsfMap

    left, _ = _blurred("gauss:sigma=0.8", 512, 6)
    right, _ = _blurred("gauss:sigma=2.4", 512, 6)
    image = np.ascontiguousarray(np.concatenate([left[:, :256], right[:, 256:]], axis=1))
    soft, sharp = _Told("gauss:sigma=0.8", "gauss").estimate_, _Told("gauss:sigma=2.4", "gauss").estimate_
    psf_map = PsfMap([(0, 256), (256, 512)], [(0, 256), (256, 512)], [[soft, sharp], [soft, sharp]])
    estimated = _pipeline(deblurrer, None)
    restored, worst = estimated._by_cell(image, psf_map, None)
    # Rows MARGIN..256-MARGIN of the top cells are reached by no window of the bottom row, and columns left of 256-MARGIN
    # (right of 256+MARGIN) by no window of the other column: there the output is that one window's restoration.
    top_left = deblurrer(image[: 256 + MARGIN, : 256 + MARGIN], psf=soft.psf)
    top_right = deblurrer(image[: 256 + MARGIN, 256 - MARGIN :], psf=sharp.psf)
    rows = slice(MARGIN, 256 - MARGIN)
    np.testing.assert_allclose(restored[rows, : 256 - MARGIN], top_left[rows, : 256 - MARGIN], atol=1e-5)
    np.testing.assert_allclose(restored[rows, 256 + MARGIN :], top_right[rows, 2 * MARGIN :], atol=1e-5)
    assert np.abs(top_left[rows, : 256 - MARGIN] - deblurrer(image[: 256 + MARGIN, : 256 + MARGIN], psf=sharp.psf)[rows, : 256 - MARGIN]).max() > 0.01
    assert np.isfinite(restored).all() and worst.ratio > 0
