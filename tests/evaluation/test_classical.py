"""Classical deblurring: Wiener and Richardson–Lucy (meddeblur.restore.classical) and the benchmark's baselines
(meddeblur.evaluation.classical): restoration quality, centring, borders, tuning, dispatch.

Images are SYNTHETIC (``synthetic_dermoscopy``), blurred here with
``scipy.ndimage.convolve(..., mode="mirror")`` per channel, the blur model the
functions' kernel convention follows.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import scipy.ndimage as ndi

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.evaluation.classical import METHODS, MethodInfo, restore, tune, unsharp_mask, unsupervised_wiener
from meddeblur.metrics import psnr_ssim_numpy
from meddeblur.physics import otf_np
from meddeblur.restore.classical import richardson_lucy, wiener

# --- kernels and degradations built here (independent of meddeblur.degradation.pipeline) --------------

def gaussian_kernel(sigma: float) -> np.ndarray:
    r = int(np.ceil(3 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    k = np.outer(g, g)
    return k / k.sum()


def line_kernel(length: int, size: int | None = None) -> np.ndarray:
    """Horizontal motion blur of ``length`` px in a (size, size) array, starting at column 0."""
    size = size or length
    k = np.zeros((size, size))
    k[size // 2, :length] = 1.0
    return k / k.sum()


def disk_kernel(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    k = (yy**2 + xx**2 <= radius**2).astype(np.float64)
    return k / k.sum()


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return np.stack(
        [ndi.convolve(image[..., c].astype(np.float64), kernel, mode="mirror") for c in range(image.shape[2])],
        axis=-1,
    )


def degrade(image: np.ndarray, kernel: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Blur, add Gaussian noise of std ``noise``, quantise to 8 bits (float32 in [0, 1])."""
    out = blur(image, kernel)
    if noise > 0:
        out = out + np.random.default_rng(seed).normal(0.0, noise, out.shape)
    return (np.round(np.clip(out, 0.0, 1.0) * 255) / 255).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return psnr_ssim_numpy(a, b)[0]


@pytest.fixture(scope="module")
def sharp() -> np.ndarray:
    return synthetic_dermoscopy(64, 64, seed=3)


def _check_output(out: np.ndarray, like: np.ndarray) -> None:
    assert out.shape == like.shape
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert out.min() >= 0.0 and out.max() <= 1.0


# --- Wiener ---------------------------------------------------------------------------

KERNELS = {
    "gaussian1.5": gaussian_kernel(1.5),
    "motion9": line_kernel(9),
    "motion8_in_9": line_kernel(8, 9),  # even-length blur in an odd array: asymmetric centre
    "motion8_even": line_kernel(8),  # even-sized array: centre at index 4 as ndimage.convolve
    "disk3": disk_kernel(3),
}


@pytest.mark.parametrize("name", list(KERNELS))
def test_wiener_improves_psnr_with_true_kernel(sharp: np.ndarray, name: str) -> None:
    kernel = KERNELS[name]
    blurred = degrade(sharp, kernel, noise=0.005)
    out = wiener(blurred, kernel, nsr=1e-2)
    _check_output(out, blurred)
    # A 1-px misalignment of the kernel would make the result worse than the input.
    assert psnr(out, sharp) > psnr(blurred, sharp) + 1.5


def test_wiener_centring_is_what_the_psnr_gain_depends_on(sharp: np.ndarray) -> None:
    kernel = line_kernel(8, 9)
    blurred = degrade(sharp, kernel, noise=0.005)
    good = psnr(wiener(blurred, kernel, nsr=1e-2), sharp)
    # Zero-padding a kernel symmetrically keeps its centre: same restoration.
    same = np.pad(kernel, 1)
    assert psnr(wiener(blurred, same, nsr=1e-2), sharp) == pytest.approx(good, abs=0.05)
    # Shifting it by one pixel (what a wrong ifftshift does) costs several dB: the check can fail.
    shifted = np.pad(kernel, ((1, 1), (0, 2)))
    assert psnr(wiener(blurred, shifted, nsr=1e-2), sharp) < good - 3.0


def test_wiener_keeps_mean_and_accepts_unnormalised_kernels(sharp: np.ndarray) -> None:
    kernel = gaussian_kernel(1.5)
    blurred = degrade(sharp, kernel, noise=0.005)
    out = wiener(blurred, kernel, nsr=0.1)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), blurred.mean(axis=(0, 1)), atol=2e-3)
    np.testing.assert_allclose(wiener(blurred, 5 * kernel, nsr=0.1), out, atol=1e-6)


def test_wiener_greyscale_and_float64(sharp: np.ndarray) -> None:
    kernel = gaussian_kernel(1.0)
    grey = degrade(sharp, kernel)[..., 1].astype(np.float64)
    out = wiener(grey, kernel)
    _check_output(out, grey)
    np.testing.assert_allclose(out, wiener(grey[..., None], kernel)[..., 0])


# --- borders ------------------------------------------------------------------------------

def _gradient_image(h: int = 64, w: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w] / (max(h, w) - 1)
    base = 0.4 + 0.25 * yy + 0.15 * xx
    return np.stack([base, 0.8 * base, 0.6 * base], axis=-1).astype(np.float32)


def _border_and_interior_error(out: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    err = np.abs(out.astype(np.float64) - target).mean(axis=-1)
    border = np.zeros(err.shape, bool)
    border[:3], border[-3:], border[:, :3], border[:, -3:] = True, True, True, True
    return float(err[border].mean()), float(err[8:-8, 8:-8].mean())


def _naive_circular_wiener(image: np.ndarray, kernel: np.ndarray, nsr: float) -> np.ndarray:
    """Textbook Wiener with no padding: the FFT treats the image as periodic."""
    h, w = image.shape[:2]
    otf = otf_np(kernel, (h, w))[..., None]
    spec = np.fft.rfft2(image.astype(np.float64), axes=(0, 1))
    out = np.fft.irfft2(spec * np.conj(otf) / (np.abs(otf) ** 2 + nsr), s=(h, w), axes=(0, 1))
    return np.clip(out, 0.0, 1.0)


@pytest.mark.parametrize(
    "method, params",
    [(wiener, {"nsr": 1e-3}), (wiener, {"nsr": 1e-2}), (richardson_lucy, {"iterations": 40})],
)
def test_no_border_ringing(method, params) -> None:
    target = _gradient_image()
    kernel = gaussian_kernel(1.5)
    blurred = degrade(target, kernel)
    border, interior = _border_and_interior_error(method(blurred, kernel, **params), target)
    assert border <= 2.0 * interior + 1e-3

    naive_border, naive_interior = _border_and_interior_error(
        _naive_circular_wiener(blurred, kernel, 1e-2), target
    )
    assert naive_border > 5.0 * naive_interior
    assert naive_border > 5.0 * border


def test_padding_wraps_smoothly_for_long_motion_blur() -> None:
    # A 15-px horizontal blur of a gradient: with plain mirror padding the padded image still
    # jumps where the FFT wraps it around and Wiener rings across the whole image (~29 dB);
    # fading the padding to the mean keeps it at ~37 dB (the rest is amplified 8-bit noise).
    target = _gradient_image()
    kernel = line_kernel(15)
    out = wiener(degrade(target, kernel), kernel, nsr=1e-3)
    assert psnr(out, target) > 34.0


# --- Richardson-Lucy ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gaussian1.5", "motion9", "motion8_in_9"])
def test_richardson_lucy_improves_psnr(sharp: np.ndarray, name: str) -> None:
    kernel = KERNELS[name]
    blurred = degrade(sharp, kernel)
    out = richardson_lucy(blurred, kernel, iterations=30)
    _check_output(out, blurred)
    assert psnr(out, sharp) > psnr(blurred, sharp) + 1.5


def test_richardson_lucy_zero_iterations_is_identity(sharp: np.ndarray) -> None:
    blurred = degrade(sharp, gaussian_kernel(1.5))
    np.testing.assert_allclose(richardson_lucy(blurred, gaussian_kernel(1.5), iterations=0), blurred, atol=1e-6)


# --- unsupervised Wiener ---------------------------------------------------------------------

def test_unsupervised_wiener_deterministic_and_helps(sharp: np.ndarray) -> None:
    blurred = degrade(sharp, gaussian_kernel(1.5), noise=0.005)
    first = unsupervised_wiener(blurred, psf_sigma=1.5)
    second = unsupervised_wiener(blurred, psf_sigma=1.5)
    _check_output(first, blurred)
    np.testing.assert_array_equal(first, second)
    assert psnr(first, sharp) >= psnr(blurred, sharp) - 1.0


# --- unsharp mask ---------------------------------------------------------------------------

def _laplacian_variance(image: np.ndarray) -> float:
    grey = image.astype(np.float64).mean(axis=-1)
    return float(ndi.laplace(grey, mode="reflect").var())


def test_unsharp_mask_sharpens(sharp: np.ndarray) -> None:
    blurred = degrade(sharp, gaussian_kernel(1.5))
    out = unsharp_mask(blurred, radius=2.0, amount=1.0)
    _check_output(out, blurred)
    assert _laplacian_variance(out) > 1.5 * _laplacian_variance(blurred)
    # Same as the textbook formula per channel (guards against skimage's channel_axis=-1 bug).
    img = blurred.astype(np.float64)
    smooth = np.stack([ndi.gaussian_filter(img[..., c], 2.0, mode="reflect") for c in range(3)], -1)
    np.testing.assert_allclose(out, np.clip(img + (img - smooth), 0, 1), atol=1e-5)


# --- METHODS, restore, tune ------------------------------------------------------------------

def test_methods_table() -> None:
    assert list(METHODS) == ["wiener", "rl", "unsupervised_wiener", "unsharp_mask"]
    expected_kernel = {"wiener": True, "rl": True, "unsupervised_wiener": False, "unsharp_mask": False}
    for name, info in METHODS.items():
        assert isinstance(info, MethodInfo) and info.name == name and info.label
        assert info.uses_kernel is expected_kernel[name]
        assert len(info.grid) > 0
        sig = inspect.signature(info.fn)
        for params in info.grid:
            args = (np.zeros((8, 8, 3)), np.ones((1, 1))) if info.uses_kernel else (np.zeros((8, 8, 3)),)
            sig.bind(*args, **params)  # every grid entry is a valid call
    assert [p["nsr"] for p in METHODS["wiener"].grid] == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    assert len(METHODS["unsharp_mask"].grid) == 9


def test_restore_dispatch(sharp: np.ndarray) -> None:
    kernel = gaussian_kernel(1.5)
    blurred = degrade(sharp, kernel)
    np.testing.assert_array_equal(restore("wiener", blurred, kernel, nsr=3e-3), wiener(blurred, kernel, nsr=3e-3))
    np.testing.assert_array_equal(
        restore("rl", blurred, kernel, iterations=5), richardson_lucy(blurred, kernel, 5)
    )
    # Blind methods ignore the kernel, whether given or not.
    np.testing.assert_array_equal(restore("unsharp_mask", blurred, kernel), unsharp_mask(blurred))
    np.testing.assert_array_equal(restore("unsharp_mask", blurred, None, radius=1.0), unsharp_mask(blurred, 1.0))
    for name in ("wiener", "rl"):
        with pytest.raises(ValueError, match="kernel"):
            restore(name, blurred, None)
    with pytest.raises(ValueError, match="unknown"):
        restore("nope", blurred, kernel)


def test_invalid_inputs(sharp: np.ndarray) -> None:
    with pytest.raises(ValueError):
        wiener(sharp, -gaussian_kernel(1.0))
    with pytest.raises(ValueError):
        wiener(sharp, np.ones(5))
    with pytest.raises(ValueError):
        wiener(sharp[None], gaussian_kernel(1.0))
    with pytest.raises(ValueError, match="float"):
        wiener((sharp * 255).astype(np.uint8), gaussian_kernel(1.0))
    with pytest.raises(ValueError):
        unsupervised_wiener(sharp, psf_sigma=0.0)
    with pytest.raises(ValueError):
        richardson_lucy(sharp, gaussian_kernel(1.0), iterations=-1)


def test_tune_prefers_less_regularisation_without_noise(sharp: np.ndarray) -> None:
    kernel = gaussian_kernel(1.5)
    images = [sharp, synthetic_dermoscopy(64, 64, seed=4)]
    clean = [(blur(s, kernel).astype(np.float32), s, kernel) for s in images]
    noisy = [(degrade(s, kernel, noise=0.02, seed=i), s, kernel) for i, s in enumerate(images)]
    clean_params, clean_score = tune("wiener", clean)
    noisy_params, noisy_score = tune("wiener", noisy)
    assert clean_params["nsr"] < noisy_params["nsr"]
    assert clean_score > noisy_score
    # The score is the mean PSNR of the chosen parameters, and it beats every other grid entry.
    mean = np.mean([psnr(restore("wiener", b, k, **clean_params), s) for b, s, k in clean])
    assert clean_score == pytest.approx(mean, abs=1e-9)
    for params in METHODS["wiener"].grid:
        other = np.mean([psnr(restore("wiener", b, k, **params), s) for b, s, k in clean])
        assert other <= clean_score


def test_tune_ties_go_to_first_grid_entry(monkeypatch: pytest.MonkeyPatch, sharp: np.ndarray) -> None:
    def fake(image: np.ndarray, level: int) -> np.ndarray:
        return (image * (0.5 if level == 0 else 1.0)).astype(np.float32)

    grid = ({"level": 0}, {"level": 1}, {"level": 2}, {"level": 3})
    monkeypatch.setitem(METHODS, "fake", MethodInfo("fake", fake, False, grid, "Fake"))
    blurred = degrade(sharp, gaussian_kernel(1.0))
    params, score = tune("fake", [(blurred, sharp, None)])
    assert params == {"level": 1}  # levels 1-3 tie (identity); level 0 is worse
    assert score == pytest.approx(psnr(blurred, sharp))
    params["level"] = 99  # a copy: the grid is untouched
    assert grid[1] == {"level": 1}
    with pytest.raises(ValueError):
        tune("fake", [])
    with pytest.raises(ValueError):
        tune("nope", [(blurred, sharp, None)])
