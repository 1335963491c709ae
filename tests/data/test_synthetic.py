"""Tests for the synthetic dermoscopy-like image generator."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic_pairs import synthetic_pair, write_synthetic_pairs

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.io.decode import read_image


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(1.0 / mse)


def _laplacian_var(x: np.ndarray) -> float:
    return float(cv2.Laplacian(x.mean(axis=2), cv2.CV_32F).var())


def test_deterministic_per_seed() -> None:
    a = synthetic_dermoscopy(64, 64, seed=3)
    np.testing.assert_array_equal(a, synthetic_dermoscopy(64, 64, seed=3))
    assert not np.array_equal(a, synthetic_dermoscopy(64, 64, seed=4))


@pytest.mark.parametrize(("h", "w"), [(256, 256), (64, 64), (48, 130), (131, 37)])
def test_shape_dtype_range(h: int, w: int) -> None:
    x = synthetic_dermoscopy(h, w, seed=1)
    assert x.shape == (h, w, 3) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert x.std() > 0.05  # not a flat image


def test_looks_like_skin_with_a_dark_lesion() -> None:
    x = synthetic_dermoscopy(128, 128, seed=0)
    corner = x[:16, 16:48].reshape(-1, 3).mean(axis=0)
    centre = x[56:72, 56:72].reshape(-1, 3).mean(axis=0)
    assert corner[0] > corner[1] > corner[2]  # skin: red > green > blue
    assert centre.mean() < corner.mean() - 0.15  # the lesion is clearly darker


def test_pair_blur_removes_detail() -> None:
    blurred, sharp = synthetic_pair(128, 96, seed=2, sigma=1.5)
    assert blurred.shape == sharp.shape == (128, 96, 3)
    assert blurred.dtype == sharp.dtype == np.float32
    np.testing.assert_array_equal(sharp, np.round(synthetic_dermoscopy(128, 96, seed=2) * 255) / 255)
    assert _laplacian_var(blurred) < 0.5 * _laplacian_var(sharp)
    psnr = _psnr(blurred, sharp)
    assert np.isfinite(psnr) and psnr < 40.0


def test_pair_is_8bit_quantised_and_noise_is_deterministic() -> None:
    blurred, sharp = synthetic_pair(64, 64, seed=5, sigma=1.0, noise=0.02)
    for x in (blurred, sharp):
        np.testing.assert_array_equal(x * 255, np.round(x * 255))
        assert x.min() >= 0.0 and x.max() <= 1.0
    again, _ = synthetic_pair(64, 64, seed=5, sigma=1.0, noise=0.02)
    np.testing.assert_array_equal(blurred, again)
    clean, _ = synthetic_pair(64, 64, seed=5, sigma=1.0)
    assert not np.array_equal(blurred, clean)


def test_sigma_zero_means_identity() -> None:
    blurred, sharp = synthetic_pair(32, 32, seed=0, sigma=0.0)
    np.testing.assert_array_equal(blurred, sharp)


def test_write_synthetic_pairs(tmp_path: Path) -> None:
    root = write_synthetic_pairs(tmp_path / "data", n=3, height=32, width=40, seed=7)
    assert root == tmp_path / "data"
    names = [f"synthetic_{i:03d}.png" for i in range(3)]
    for sub in ("blurred", "sharp"):
        assert sorted(p.name for p in (root / sub).iterdir()) == names
    img = read_image(root / "sharp" / names[1])
    assert img.rgb.shape == (32, 40, 3) and img.bit_depth == 8 and img.format == "PNG"
    blurred = read_image(root / "blurred" / names[1]).rgb
    assert _psnr(blurred, img.rgb) < 40.0
    assert not np.array_equal(read_image(root / "sharp" / names[0]).rgb, img.rgb)


def test_write_synthetic_pairs_seeds_do_not_overlap(tmp_path: Path) -> None:
    a = write_synthetic_pairs(tmp_path / "a", n=2, height=16, width=16, seed=0)
    b = write_synthetic_pairs(tmp_path / "b", n=2, height=16, width=16, seed=1)
    second_of_a = read_image(a / "sharp" / "synthetic_001.png").rgb
    first_of_b = read_image(b / "sharp" / "synthetic_000.png").rgb
    assert not np.array_equal(second_of_a, first_of_b)
