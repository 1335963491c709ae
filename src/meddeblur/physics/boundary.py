"""Boundaries for FFT deconvolution: mirror the image outwards, fade the margin to the mean, crop back.

Photographs are not periodic, so an FFT deconvolution rings at the borders unless the image is first extended.
One rule, used by every deconvolution, the plug-and-play restorer and the kernel-conditioned network alike:
the image is mirrored ``margin`` pixels outwards (whole-sample reflection, ``abc|ba``, as ``np.pad(mode="reflect")``
and :func:`meddeblur.physics.blur`'s own border, repeated for margins wider than the image), the outer two thirds of each margin fade by a raised cosine to the per-channel mean (so the
periodic extension is smooth), and the sides grow bottom/right to fast FFT lengths. :func:`pad_taper_np` (numpy,
(H, W, C)) and :func:`pad_taper` (torch, (N, C, H, W), differentiable, on the tensor's device) are twins: both
take their indices and weights from the same numpy functions, so they agree to float32 round-off.

>>> import numpy as np
>>> padded, (rows, cols) = pad_taper_np(np.arange(12.0).reshape(3, 4, 1), 16)
>>> padded.shape[:2], float(abs(padded[rows, cols, 0] - np.arange(12.0).reshape(3, 4)).max())
((36, 36), 0.0)
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import torch
from torch import Tensor

__all__ = ["Margin", "MIN_MARGIN", "margin_for", "fft_shape", "mirror_index", "fade", "pad_taper_np", "pad_taper"]

#: The narrowest margin: even a 1-px kernel's deconvolution sees a smooth wrap-around.
MIN_MARGIN = 16


def margin_for(kernel_side: int) -> int:
    """Margin per side for a kernel of this (largest) side: its support three times over, at least :data:`MIN_MARGIN`."""
    return max(MIN_MARGIN, 3 * int(kernel_side))


Margin = int | tuple[int, int]


def _margins(margin: Margin) -> tuple[int, int]:
    rows, cols = (margin, margin) if isinstance(margin, int) else margin
    if rows < 0 or cols < 0:
        raise ValueError(f"margin must be ≥ 0, got {margin}")
    return int(rows), int(cols)


def fft_shape(height: int, width: int, margin: Margin) -> tuple[int, int]:
    """The padded (rows, columns): the image plus ``margin`` per side (one number, or (rows, columns)), rounded up to
    fast real-FFT lengths."""
    my, mx = _margins(margin)
    return (scipy.fft.next_fast_len(height + 2 * my, real=True), scipy.fft.next_fast_len(width + 2 * mx, real=True))


def mirror_index(n: int, before: int, after: int) -> np.ndarray:
    """Indices into ``range(n)`` of ``n`` samples extended by ``before``/``after`` whole-sample mirrors (``abc|ba``).

    Periodic with period ``2 (n - 1)``, so any margin works, even one wider than the image.
    """
    positions = np.arange(-before, n + after)
    if n == 1:
        return np.zeros_like(positions)
    folded = np.mod(positions, 2 * (n - 1))
    return np.where(folded < n, folded, 2 * (n - 1) - folded)


def fade(n: int, before: int, after: int) -> np.ndarray:
    """(n,) float64 weights: 1 inside and across the first third of each margin, then a raised cosine down to 0."""
    idx = np.arange(n, dtype=np.float64)
    dist = np.maximum(np.maximum(before - idx, idx - (n - after - 1)), 0.0)
    side = np.where(idx < before, before, after).astype(np.float64)
    start = side / 3.0
    t = np.clip((dist - start) / np.maximum(side - start, 1.0), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def _plan(height: int, width: int, margin: Margin) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[slice, slice]]:
    my, mx = _margins(margin)
    fh, fw = fft_shape(height, width, margin)
    rows, cols = mirror_index(height, my, fh - height - my), mirror_index(width, mx, fw - width - mx)
    weight = fade(fh, my, fh - height - my)[:, None] * fade(fw, mx, fw - width - mx)[None, :]
    return rows, cols, weight, (slice(my, my + height), slice(mx, mx + width))


def pad_taper_np(image: np.ndarray, margin: Margin) -> tuple[np.ndarray, tuple[slice, slice]]:
    """(H, W, C) → (fh, fw, C) padded float64 image (see the module docstring) and the (rows, columns) crop back."""
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {image.shape}")
    rows, cols, weight, crop = _plan(image.shape[0], image.shape[1], margin)
    image = np.asarray(image, dtype=np.float64)
    mean = image.mean(axis=(0, 1))
    return mean + (image[rows][:, cols] - mean) * weight[..., None], crop


def pad_taper(images: Tensor, margin: Margin) -> tuple[Tensor, tuple[slice, slice]]:
    """(N, C, H, W) → (N, C, fh, fw) padded (see the module docstring), fading to each image's channel means; and the
    (rows, columns) slices that crop the image back. Differentiable, on the tensor's device and dtype."""
    if images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
    rows, cols, weight, crop = _plan(images.shape[-2], images.shape[-1], margin)
    device = images.device
    padded = images.index_select(-2, torch.from_numpy(rows).to(device)).index_select(-1, torch.from_numpy(cols).to(device))
    mean = images.mean(dim=(-2, -1), keepdim=True)
    return mean + (padded - mean) * torch.from_numpy(weight).to(device, images.dtype), crop
