"""The forward blur (meddeblur.physics.blur): a true convolution with mirror borders, direct and FFT alike."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import convolve

from meddeblur.degradation.kernels import disk_kernel, gaussian_kernel, motion_kernel, shake_kernel
from meddeblur.physics import blur


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_blur_direct_and_fft_agree() -> None:
    x = torch.rand(2, 3, 30, 37, generator=_gen())
    for k in (motion_kernel(9, 30), shake_kernel(17, _gen(3)), gaussian_kernel(4.0)):
        torch.testing.assert_close(blur(x, k, "direct"), blur(x, k, "fft"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_blur_is_a_convolution_with_mirror_boundaries(method: str) -> None:
    img = torch.rand(22, 27, generator=_gen(), dtype=torch.float64)
    kernel = torch.rand(5, 5, generator=_gen(1), dtype=torch.float64)
    kernel[0, :] = 0  # clearly asymmetric
    kernel /= kernel.sum()
    got = blur(img[None, None], kernel, method)[0, 0]
    want = convolve(img.numpy(), kernel.numpy(), mode="mirror")  # torch "reflect" is scipy "mirror"
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


def test_blur_keeps_constants_shape_dtype_and_small_images_work() -> None:
    const = torch.full((2, 3, 20, 24), 0.4)
    for k in (gaussian_kernel(1.0), motion_kernel(21, 10)):
        out = blur(const, k)
        assert out.shape == const.shape and out.dtype == const.dtype
        torch.testing.assert_close(out, const, atol=1e-6, rtol=0)
    tiny = torch.rand(1, 1, 5, 6, generator=_gen())  # smaller than the pad: replicate fallback
    assert blur(tiny, motion_kernel(15)).shape == tiny.shape


def test_blur_per_image_kernels() -> None:
    x = torch.rand(3, 3, 24, 20, generator=_gen())
    kernels = torch.stack([gaussian_kernel(1.0, size=7), disk_kernel(3), motion_kernel(7, 45)])
    for method in ("direct", "fft"):
        batch = blur(x, kernels, method)
        for i in range(3):
            torch.testing.assert_close(batch[i], blur(x[i : i + 1], kernels[i], method)[0], atol=1e-6, rtol=0)


def test_blur_computes_half_precision_in_float32_and_returns_it_as_given() -> None:
    x = torch.rand(1, 3, 16, 18, generator=_gen())
    k = gaussian_kernel(1.0)
    out = blur(x.half(), k)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), blur(x.half().float(), k), atol=1e-3, rtol=0)


def test_blur_rejects_what_it_cannot_convolve() -> None:
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="k odd"):
        blur(x, torch.ones(4, 4) / 16)
    with pytest.raises(ValueError, match="k odd"):
        blur(x, torch.ones(3, 3, 3) / 9)  # three kernels for two images
    with pytest.raises(ValueError, match="method"):
        blur(x, torch.ones(3, 3) / 9, "spectral")
    with pytest.raises(ValueError, match="float images"):
        blur(x[0], torch.ones(3, 3) / 9)
    with pytest.raises(ValueError, match="float images"):
        blur((x * 255).to(torch.uint8), torch.ones(3, 3) / 9)
