"""Classical deconvolution with a known blur kernel: Wiener and Richardson–Lucy, built on :mod:`meddeblur.physics`.

Both take and return (H, W, C) float images in ``[0, 1]`` (float32 output, same shape; (H, W) greyscale is
accepted too) and a (kh, kw) non-negative kernel, normalised here to sum to 1, whose origin is the sample at
``(kh // 2, kw // 2)``: the blur model is ``scipy.ndimage.convolve(sharp_channel, kernel)``. An even-sized kernel
therefore has its origin just below/right of the geometric middle; embed it in an odd array to choose otherwise.

Boundaries: photographs are not periodic, so a plain FFT deconvolution rings at the borders. Every deconvolution
here runs on the image pad-tapered by :func:`meddeblur.physics.pad_taper_np` (mirrored outwards, the outer part of
the margin faded to the mean), with margins of three kernel supports per axis (:func:`meddeblur.physics.margin_for`),
and crops the result back. The blur and its adjoint are :func:`~meddeblur.physics.convolve_np` and
:func:`~meddeblur.physics.correlate_np` with the kernel's OTF (:func:`~meddeblur.physics.otf_np`).

The benchmarks' committed classical scores are keyed on this file and the physics it uses (``benchmarks/quality.py``):
a change that alters an output by one bit must let them be recomputed.

>>> import numpy as np
>>> image = np.full((24, 24, 3), 0.5)
>>> float(abs(wiener(image, np.ones((3, 3))) - 0.5).max()) < 1e-6     # a flat image stays flat
True
"""

from __future__ import annotations

import numpy as np

from meddeblur.physics import check_kernel, convolve_np, correlate_np, margin_for, otf_np, pad_taper_np

__all__ = ["wiener", "richardson_lucy", "richardson_lucy_path", "as_image", "finish"]

_EPS = 1e-7  # guards Richardson-Lucy's division where the re-blurred estimate is ~0


def as_image(image: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W, C) float64 copy of a float (H, W, C) or (H, W) ``image`` and whether it was 2-D; ValueError otherwise.

    The input convention of the classical restorers (and of :mod:`meddeblur.evaluation.classical`'s baselines).
    """
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


def finish(x: np.ndarray, was_2d: bool) -> np.ndarray:
    """A restored (H, W, C) array as the restorers return it: clipped to [0, 1], float32, 2-D again if it came so."""
    out = np.clip(x, 0.0, 1.0).astype(np.float32)
    return out[..., 0] if was_2d else out


def _margins(kernel: np.ndarray) -> tuple[int, int]:
    """Pad-taper margins (rows, columns): room for the kernel's support on each axis plus a fade band."""
    return margin_for(kernel.shape[0]), margin_for(kernel.shape[1])


def wiener(image: np.ndarray, kernel: np.ndarray, nsr: float = 1e-2) -> np.ndarray:
    """Wiener deconvolution with the true blur kernel.

    ``X = conj(K) Y / (|K|^2 + nsr)`` in the frequency domain, per channel, on the pad-tapered image (see the
    module docstring), then cropped back. The zero frequency is not regularised (gain 1), so the mean brightness
    is kept for any ``nsr``.

    Args:
        image: (H, W, C) or (H, W) blurred image in ``[0, 1]``.
        kernel: (kh, kw) non-negative blur kernel, origin at ``(kh // 2, kw // 2)``.
        nsr: noise-to-signal power ratio (regularisation), > 0 in practice.

    Returns:
        Restored image, float32 in ``[0, 1]``, same shape as ``image``.
    """
    # Own implementation: skimage.restoration.wiener is circular (borders ring), uses a
    # Laplacian regulariser rather than a constant NSR, and centres even kernels differently.
    img, was_2d = as_image(image)
    k = check_kernel(kernel)
    if nsr < 0:
        raise ValueError(f"nsr must be non-negative, got {nsr}")
    padded, crop = pad_taper_np(img, _margins(k))
    transfer = otf_np(k, padded.shape[:2])
    gain = np.conj(transfer) / (np.abs(transfer) ** 2 + nsr)
    # The normalised kernel passes the mean unchanged (K(0) = 1), so the DC term is left
    # unregularised: otherwise a constant NSR would darken the whole image by 1 / (1 + nsr).
    gain[0, 0] = 1.0
    # Applying the Wiener gain is a circular convolution with the filter whose OTF it is.
    return finish(convolve_np(padded, gain)[crop], was_2d)


def richardson_lucy(image: np.ndarray, kernel: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Richardson-Lucy deconvolution with the true blur kernel.

    Multiplicative updates ``x <- x * (K^T (y / (K x)))`` started from the blurred image, on the pad-tapered
    image (see the module docstring), with FFT convolutions, then cropped back.

    Args:
        image: (H, W, C) or (H, W) blurred image in ``[0, 1]``.
        kernel: (kh, kw) non-negative blur kernel, origin at ``(kh // 2, kw // 2)``.
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
    (the same updates in the same order), at the cost of the largest count only; tuning
    (:func:`meddeblur.evaluation.classical.tune`) uses it to try every iteration count of a grid at once.
    """
    # Own loop: skimage's richardson_lucy zero-pads each convolution (dark, ringing borders)
    # and recomputes the kernel FFT every iteration; here the padded image and OTF are reused.
    wanted = sorted({int(c) for c in checkpoints})
    if not wanted or wanted[0] < 0:
        raise ValueError(f"checkpoints must be non-negative iteration counts, got {checkpoints}")
    img, was_2d = as_image(image)
    k = check_kernel(kernel)
    padded, crop = pad_taper_np(np.clip(img, 0.0, None), _margins(k))
    # float32 halves the time of the FFTs; RL's multiplicative updates are well conditioned.
    padded = padded.astype(np.float32)
    transfer = otf_np(k, padded.shape[:2]).astype(np.complex64)
    estimate = np.maximum(padded, _EPS)
    out: dict[int, np.ndarray] = {}
    for done in range(wanted[-1] + 1):
        if done in wanted:
            out[done] = finish(estimate[crop], was_2d)
        if done == wanted[-1]:
            break
        ratio = padded / np.maximum(convolve_np(estimate, transfer), _EPS)
        estimate = estimate * correlate_np(ratio, transfer)
        estimate = np.maximum(estimate, 0.0)  # FFT round-off can dip just below zero
    return out
