"""Classical (non-learned) deblurring baselines for the benchmark table.

Four methods with a flat, scikit-image-like API, all taking and returning (H, W, 3) float
images in ``[0, 1]`` (float32 output, same shape; (H, W) greyscale is accepted too):

* :func:`wiener` -- Wiener deconvolution with the true blur kernel;
* :func:`richardson_lucy` -- Richardson-Lucy deconvolution with the true blur kernel;
* :func:`unsupervised_wiener` -- scikit-image's self-tuning Wiener-Hunt deconvolution, given a
  generic Gaussian PSF rather than the true kernel ("blind-ish");
* :func:`unsharp_mask` -- plain sharpening, no kernel at all.

Kernel convention: a kernel is a non-negative (kh, kw) array (normalised here to sum to 1)
whose centre is the sample at index ``(kh // 2, kw // 2)``, i.e. the blur model is
``scipy.ndimage.convolve(sharp_channel, kernel)``. An even-sized kernel therefore has its
centre just below/right of the geometric middle; embed it in an odd array to choose otherwise.

Boundaries: photographs are not periodic, so a plain FFT deconvolution rings at the borders.
Every deconvolution here pads the image symmetrically, fades the outer part of the padding
to the image mean (so the padded image's periodic extension is smooth), deconvolves the
padded image and crops the result back.

:data:`METHODS` lists the methods with their parameter grids; :func:`restore` dispatches by
name and :func:`tune` picks grid parameters on validation samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.fft
import torch

from meddeblur.metrics import psnr as _psnr

__all__ = [
    "wiener",
    "richardson_lucy",
    "richardson_lucy_path",
    "unsupervised_wiener",
    "unsharp_mask",
    "MethodInfo",
    "METHODS",
    "restore",
    "tune",
]

_EPS = 1e-7  # guards Richardson-Lucy's division where the re-blurred estimate is ~0


def _as_image(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W, C) float64 copy of ``image`` and whether the input was 2-D."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise ValueError(f"expected an image shaped (H, W, C) or (H, W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        # Integer images are most likely 0..255; guessing their range silently would be worse.
        raise ValueError(f"expected a float image in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or infinite values")
    return (arr[..., None], True) if arr.ndim == 2 else (arr, False)


def _finish(x: np.ndarray, was_2d: bool) -> np.ndarray:
    out = np.clip(x, 0.0, 1.0).astype(np.float32)
    return out[..., 0] if was_2d else out


def _as_kernel(kernel: np.ndarray) -> np.ndarray:
    """The kernel as a float64 (kh, kw) array summing to 1."""
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.size == 0:
        raise ValueError(f"expected a 2-D kernel, got shape {k.shape}")
    if not np.all(np.isfinite(k)) or np.any(k < 0):
        raise ValueError("kernel must be finite and non-negative")
    total = k.sum()
    if total <= 0:
        raise ValueError("kernel must have a positive sum")
    return k / total


def _pad_amount(kernel_shape: tuple[int, int]) -> tuple[int, int]:
    """Padding per side for each axis: room for the kernel's support plus a fade band."""
    return tuple(max(16, 3 * s) for s in kernel_shape)  # type: ignore[return-value]


def _pad_taper(image: np.ndarray, pad: tuple[int, int]) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Symmetric padding whose outer part fades to the per-channel mean, and the crop back.

    The first third of the padding is a pure mirror image (what the kernel sees next to the
    border); over the rest a raised cosine blends to the mean, so the padded image wraps
    around smoothly. Sizes are rounded up to fast FFT lengths (the extra goes bottom/right).
    """
    h, w = image.shape[:2]
    py, px = pad
    fh = scipy.fft.next_fast_len(h + 2 * py, real=True)
    fw = scipy.fft.next_fast_len(w + 2 * px, real=True)
    widths = ((py, fh - h - py), (px, fw - w - px), (0, 0))
    padded = np.pad(image, widths, mode="symmetric")
    mean = image.mean(axis=(0, 1))

    def window(n: int, before: int, after: int) -> np.ndarray:
        # Distance outside the image (0 inside), mapped to a weight falling 1 -> 0 across
        # the outer two thirds of each side's padding.
        idx = np.arange(n, dtype=np.float64)
        dist = np.maximum(before - idx, idx - (before + (n - before - after) - 1))
        dist = np.maximum(dist, 0.0)
        side = np.where(idx < before, before, after).astype(np.float64)
        start = side / 3.0
        t = np.clip((dist - start) / np.maximum(side - start, 1.0), 0.0, 1.0)
        return 0.5 * (1.0 + np.cos(np.pi * t))

    wy = window(fh, *widths[0])
    wx = window(fw, *widths[1])
    weight = (wy[:, None] * wx[None, :])[..., None]
    padded = mean + (padded - mean) * weight
    return padded, (slice(py, py + h), slice(px, px + w))


def _otf(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """rfft2 of ``kernel`` embedded in an array of ``shape`` with its centre moved to (0, 0).

    The kernel's centre (index kh // 2, kw // 2) is placed at (H // 2, W // 2), which
    ifftshift moves to the origin for even and odd H, W alike.
    """
    kh, kw = kernel.shape
    big = np.zeros(shape, dtype=np.float64)
    y0, x0 = shape[0] // 2 - kh // 2, shape[1] // 2 - kw // 2
    big[y0 : y0 + kh, x0 : x0 + kw] = kernel
    return scipy.fft.rfft2(np.fft.ifftshift(big))


def _fft2(x: np.ndarray) -> np.ndarray:
    return scipy.fft.rfft2(x, axes=(0, 1), workers=-1)


def _ifft2(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return scipy.fft.irfft2(x, s=shape, axes=(0, 1), workers=-1)


def wiener(image: np.ndarray, kernel: np.ndarray, nsr: float = 1e-2) -> np.ndarray:
    """Wiener deconvolution with the true blur kernel.

    ``X = conj(K) Y / (|K|^2 + nsr)`` in the frequency domain, per channel, on a padded
    copy of the image (see the module docstring), then cropped back. The zero frequency
    is not regularised (gain 1), so the mean brightness is kept for any ``nsr``.

    Args:
        image: (H, W, C) or (H, W) blurred image in ``[0, 1]``.
        kernel: (kh, kw) non-negative blur kernel, centre at ``(kh // 2, kw // 2)``.
        nsr: noise-to-signal power ratio (regularisation), > 0 in practice.

    Returns:
        Restored image, float32 in ``[0, 1]``, same shape as ``image``.
    """
    # Own implementation: skimage.restoration.wiener is circular (borders ring), uses a
    # Laplacian regulariser rather than a constant NSR, and centres even kernels differently.
    img, was_2d = _as_image(image)
    k = _as_kernel(kernel)
    if nsr < 0:
        raise ValueError(f"nsr must be non-negative, got {nsr}")
    padded, crop = _pad_taper(img, _pad_amount(k.shape))
    shape = padded.shape[:2]
    otf = _otf(k, shape)[..., None]
    filt = np.conj(otf) / (np.abs(otf) ** 2 + nsr)
    # The normalised kernel passes the mean unchanged (K(0) = 1), so the DC term is left
    # unregularised: otherwise a constant NSR would darken the whole image by 1 / (1 + nsr).
    filt[0, 0] = 1.0
    restored = _ifft2(_fft2(padded) * filt, shape)
    return _finish(restored[crop], was_2d)


def richardson_lucy(image: np.ndarray, kernel: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Richardson-Lucy deconvolution with the true blur kernel.

    Multiplicative updates ``x <- x * (K^T (y / (K x)))`` started from the blurred image, on
    a padded copy (see the module docstring), with FFT convolutions, then cropped back.

    Args:
        image: (H, W, C) or (H, W) blurred image in ``[0, 1]``.
        kernel: (kh, kw) non-negative blur kernel, centre at ``(kh // 2, kw // 2)``.
        iterations: number of RL updates (more = sharper and noisier).

    Returns:
        Restored image, float32 in ``[0, 1]``, same shape as ``image``.
    """
    if iterations < 0:
        raise ValueError(f"iterations must be non-negative, got {iterations}")
    return next(iter(richardson_lucy_path(image, kernel, (iterations,)).values()))


def richardson_lucy_path(image: np.ndarray, kernel: np.ndarray, checkpoints: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Richardson-Lucy results after each iteration count in ``checkpoints``, from one run.

    ``richardson_lucy_path(y, k, (5, 20))[20]`` equals ``richardson_lucy(y, k, 20)`` bit for bit
    (the same updates in the same order), at the cost of the largest count only; :func:`tune`
    uses it to try every iteration count of the grid at once.
    """
    # Own loop: skimage's richardson_lucy zero-pads each convolution (dark, ringing borders)
    # and recomputes the kernel FFT every iteration; here the padded image and OTF are reused.
    wanted = sorted({int(c) for c in checkpoints})
    if not wanted or wanted[0] < 0:
        raise ValueError(f"checkpoints must be non-negative iteration counts, got {checkpoints}")
    img, was_2d = _as_image(image)
    k = _as_kernel(kernel)
    padded, crop = _pad_taper(np.clip(img, 0.0, None), _pad_amount(k.shape))
    shape = padded.shape[:2]
    # float32 halves the time of the FFTs; RL's multiplicative updates are well conditioned.
    padded = padded.astype(np.float32)
    otf = _otf(k, shape)[..., None].astype(np.complex64)
    otf_adj = np.conj(otf)
    estimate = np.maximum(padded, _EPS)
    out: dict[int, np.ndarray] = {}
    for done in range(wanted[-1] + 1):
        if done in wanted:
            out[done] = _finish(estimate[crop], was_2d)
        if done == wanted[-1]:
            break
        reblurred = _ifft2(_fft2(estimate) * otf, shape)
        ratio = padded / np.maximum(reblurred, _EPS)
        estimate = estimate * _ifft2(_fft2(ratio) * otf_adj, shape)
        estimate = np.maximum(estimate, 0.0)  # FFT round-off can dip just below zero
    return out


def _gaussian_psf(sigma: float) -> np.ndarray:
    """Normalised 2-D Gaussian of std ``sigma`` on an odd grid of side 2 * ceil(3 sigma) + 1."""
    r = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    k = np.outer(g, g)
    return k / k.sum()


def unsupervised_wiener(image: np.ndarray, psf_sigma: float = 1.5, seed: int = 0) -> np.ndarray:
    """Self-tuning Wiener-Hunt deconvolution with a generic Gaussian PSF (not the true kernel).

    Wraps :func:`skimage.restoration.unsupervised_wiener`, a Gibbs sampler that estimates the
    noise and prior precisions itself, per channel on a padded copy of the image (see the
    module docstring). The sampler's random generator is seeded with ``seed``, so the output
    is deterministic. It runs 30 to 200 sampling iterations (each a few FFTs of the padded
    image), so it is the slowest method here: about 5.5 s per megapixel (RGB, 2-core CPU).
    Overestimating ``psf_sigma`` makes it amplify noise badly, so tune it on validation data.

    Args:
        image: (H, W, C) or (H, W) blurred image in ``[0, 1]``.
        psf_sigma: std in pixels of the assumed Gaussian PSF (tuned on validation data).
        seed: seed of the sampler's random generator.

    Returns:
        Restored image, float32 in ``[0, 1]``, same shape as ``image``.
    """
    # scikit-image is imported here: it is only an optional ([test]) dependency of the package.
    import skimage.restoration

    if psf_sigma <= 0:
        raise ValueError(f"psf_sigma must be positive, got {psf_sigma}")
    img, was_2d = _as_image(image)
    psf = _gaussian_psf(psf_sigma)
    padded, crop = _pad_taper(img, _pad_amount(psf.shape))
    out = np.empty_like(padded)
    for c in range(padded.shape[2]):
        # One generator per channel seeded from (seed, c): channels stay independent and the
        # result does not depend on how many channels were processed before.
        rng = np.random.default_rng([seed, c])
        out[..., c], _ = skimage.restoration.unsupervised_wiener(
            padded[..., c], psf, clip=False, rng=rng
        )
    return _finish(out[crop], was_2d)


def unsharp_mask(image: np.ndarray, radius: float = 1.5, amount: float = 1.0) -> np.ndarray:
    """Unsharp masking: ``image + amount * (image - gaussian(image, radius))``, clipped.

    Wraps :func:`skimage.filters.unsharp_mask` (Gaussian std ``radius`` px, reflect borders).

    Returns:
        Sharpened image, float32 in ``[0, 1]``, same shape as ``image``.
    """
    import skimage.filters  # optional dependency, as in unsupervised_wiener

    img, was_2d = _as_image(image)
    # Per channel, not channel_axis=-1: skimage <= 0.26 returns garbage for a negative
    # channel_axis (scikit-image issue #7264).
    out = np.stack(
        [skimage.filters.unsharp_mask(img[..., c], radius=radius, amount=amount, preserve_range=True)
         for c in range(img.shape[2])],
        axis=-1,
    )
    return _finish(out, was_2d)


@dataclass(frozen=True)
class MethodInfo:
    """One classical method: its function, whether it needs the true kernel, its grid.

    ``fn`` is called as ``fn(image, kernel, **params)`` when ``uses_kernel`` and as
    ``fn(image, **params)`` otherwise; ``grid`` holds the candidate ``params`` dicts in the
    order :func:`tune` tries them; ``label`` is the name to print in tables.
    """

    name: str
    fn: Callable[..., np.ndarray]
    uses_kernel: bool
    grid: tuple[dict[str, Any], ...]
    label: str


METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo(
            name="wiener",
            fn=wiener,
            uses_kernel=True,
            grid=tuple({"nsr": v} for v in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
            label="Wiener (true kernel)",
        ),
        MethodInfo(
            name="richardson_lucy",
            fn=richardson_lucy,
            uses_kernel=True,
            grid=tuple({"iterations": v} for v in (5, 10, 20, 40, 80)),
            label="Richardson-Lucy (true kernel)",
        ),
        MethodInfo(
            name="unsupervised_wiener",
            fn=unsupervised_wiener,
            uses_kernel=False,
            grid=tuple({"psf_sigma": v} for v in (0.75, 1.0, 1.5, 2.0, 3.0)),
            label="Unsupervised Wiener (Gaussian PSF)",
        ),
        MethodInfo(
            name="unsharp_mask",
            fn=unsharp_mask,
            uses_kernel=False,
            grid=tuple(
                {"radius": r, "amount": a} for r in (1.0, 2.0, 3.0) for a in (0.5, 1.0, 2.0)
            ),
            label="Unsharp mask",
        ),
    )
}


def _method(method: str) -> MethodInfo:
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(
            f"unknown classical method {method!r}; choose from {', '.join(METHODS)}"
        ) from None


def restore(method: str, image: np.ndarray, kernel: np.ndarray | None, **params: Any) -> np.ndarray:
    """Run the classical method ``method`` (a key of :data:`METHODS`) on ``image``.

    ``kernel`` is the true blur kernel for methods that use one and is ignored by the
    others. Raises ValueError for an unknown method or a kernel method given ``kernel=None``.
    """
    info = _method(method)
    if not info.uses_kernel:
        return info.fn(image, **params)
    if kernel is None:
        raise ValueError(f"method {method!r} needs the true blur kernel, got kernel=None")
    return info.fn(image, kernel, **params)


def _psnr_db(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR of one pair with :func:`meddeblur.metrics.psnr` (TF-exact, float64)."""
    a = np.asarray(pred, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"restored and sharp shapes differ: {a.shape} vs {b.shape}")
    a = a.reshape(1, 1, *a.shape) if a.ndim == 2 else a.transpose(2, 0, 1)[None]
    b = b.reshape(1, 1, *b.shape) if b.ndim == 2 else b.transpose(2, 0, 1)[None]
    return float(_psnr(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)))[0])


def tune(
    method: str, samples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    grid: tuple[dict[str, Any], ...] | None = None,
) -> tuple[dict[str, Any], float]:
    """Choose the grid parameters of ``method`` that maximise mean PSNR over ``samples``.

    ``samples`` are (blurred, sharp, kernel) triples from the VALIDATION split -- never the
    test split, whose scores would otherwise be optimistically biased. ``kernel`` may be
    None for methods that do not use one. ``grid`` replaces the method's own grid. Deterministic;
    ties go to the first grid entry. Richardson-Lucy tries every iteration count in one run per
    sample (:func:`richardson_lucy_path`).

    Returns:
        (best params dict -- a copy, safe to modify -- and its mean PSNR in dB).
    """
    info = _method(method)
    grid = info.grid if grid is None else tuple(grid)
    if not samples:
        raise ValueError("tune needs at least one (blurred, sharp, kernel) sample")
    if not grid:
        raise ValueError("tune needs a non-empty grid")
    if method == "richardson_lucy" and all(set(p) == {"iterations"} for p in grid):
        counts = tuple(int(p["iterations"]) for p in grid)
        per_sample = []
        for blurred, sharp, kernel in samples:
            if kernel is None:
                raise ValueError("method 'richardson_lucy' needs the true blur kernel, got kernel=None")
            path = richardson_lucy_path(blurred, kernel, counts)
            per_sample.append({c: _psnr_db(path[c], sharp) for c in counts})
        scores = [float(np.mean([s[c] for s in per_sample])) for c in counts]
    else:
        scores = [float(np.mean([_psnr_db(restore(method, blurred, kernel, **params), sharp)
                                 for blurred, sharp, kernel in samples])) for params in grid]
    best = int(np.argmax(scores))  # the first of equal maxima
    return dict(grid[best]), scores[best]
