"""The kernel-conditioned model shipped inside the package: it loads, restores a known blur better than the blind
model does, and gives a sharp image (delta PSF) back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import meddeblur
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.degradation.pipeline import degrade
from meddeblur.metrics import psnr_ssim_numpy
from meddeblur.models import PSF_WEIGHTS, load_model


@pytest.fixture(scope="module")
def deblurrer() -> meddeblur.Deblurrer:
    return meddeblur.Deblurrer.load()


def test_shipped_psf_weights_are_in_the_package_and_small() -> None:
    _, config, path = load_model(PSF_WEIGHTS)
    assert config.arch == "psf-nafnet" and path.stat().st_size <= 20e6
    assert json.loads(path.with_suffix(".json").read_text())["training"]["steps"] >= 1


@pytest.mark.parametrize("spec", ["gauss:sigma=1.6", "defocus:radius=2.5", "motion:length=9,angle=30"])
def test_told_the_true_psf_it_restores_more_than_the_blind_model(deblurrer: meddeblur.Deblurrer, spec: str) -> None:
    gains = []
    for seed in (1, 2):
        sharp = synthetic_dermoscopy(128, 128, seed=seed)
        made, (record,) = degrade(torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1))), spec + "+jpeg:quality=95",
                                  torch.Generator().manual_seed(seed))
        blurred = made.numpy().transpose(1, 2, 0)
        told = psnr_ssim_numpy(deblurrer(blurred, psf=record.kernel), sharp)[0]
        blind = psnr_ssim_numpy(deblurrer(blurred), sharp)[0]
        gains.append(told - blind)
    assert min(gains) > 0.0, gains


def test_a_sharp_image_told_a_delta_comes_back_unchanged(deblurrer: meddeblur.Deblurrer) -> None:
    image = (synthetic_dermoscopy(96, 96, seed=3) * 255).round().astype(np.uint8)
    assert np.array_equal(deblurrer(image, psf="none"), image)
