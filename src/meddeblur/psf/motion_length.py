"""Linear-motion length measured from the spectrum: fit the stripes a motion blur cuts into it.

The blur estimator names the family and the direction of a motion blur well, but its length regresses towards
the middle of the lengths it was trained on (2–15 px). A classical fit does not: a segment
of length L along d multiplies the power spectrum by about sinc²(L f·d) — dark stripes across the motion every
1/L cycles/pixel. For each candidate length the tile's log power spectrum is fitted as a smooth radial trend
(the scene: a polynomial in |f|) plus a scaled log model of the candidate kernel's own power spectrum (the
package's motion kernel, with the Hann window's leakage; a power floor stands for noise and JPEG filling the
zeros), near the motion axis only (robust to the network's direction error); the candidate leaving the least
residual wins. The search stays within :data:`SEARCH` × the network's guess: outside it the stripes of twice or
half the length fit nearly as well. The windows are :data:`FIT_WINDOW` px where the tile allows (finer stripes
resolved), else the estimator's own.

Measured on the 56 full-resolution ISIC test images (``python -m benchmarks.psf_estimation``, motion at random
angles, 8-bit): median error 0.09 / 0.06 / 0.07 px at 5 / 9 / 15 px, every image named motion within 2 px; the
network's own length: 0.40 / 0.87 / 4.14 px.

>>> import torch
>>> from meddeblur.degradation.kernels import motion_kernel
>>> from meddeblur.physics import blur
>>> scene = torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
>>> blurred = blur(scene, motion_kernel(12.0, 30.0))[0]
>>> round(motion_length(blurred, angle=30.0, guess=9.0))
12
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from meddeblur.degradation.kernels import motion_kernel
from meddeblur.psf.spectrum import WINDOW, log_power_spectrum

__all__ = ["FIT_WINDOW", "SEARCH", "STEP", "motion_length", "fit_motion_length"]

#: Welch window of the fit, px, for tiles with both sides ≥ 2 × it (smaller tiles: the estimator's 64 px).
FIT_WINDOW = 128
#: Candidate lengths span these multiples of the network's guess (within the estimator's 1–41 px).
SEARCH = (0.6, 2.5)
#: Spacing of the candidate lengths, px.
STEP = 0.25
_TREND_DEGREE = 4
_FLOOR = 1e-3  # model power floor, relative to the zero frequency
_BAND = (2.5, 0.45)  # fitted frequencies: above 2.5 bins (the scene's mean and window leak) and below 0.45 cycles/px
# Only frequencies this close to the motion axis (cycles/px): there a direction 10° off moves the stripes by under
# 1/70 cycle/px; further out by up to half their period at 15 px.
_AXIS_BAND = 0.08
_LENGTHS = (1.0, 41.0)


@lru_cache(maxsize=4)
def _frequencies(window: int) -> tuple[np.ndarray, np.ndarray]:
    """(fx, fy), each (W, W): the centred frequency grid of a ``window``-px spectrum, cycles/pixel."""
    f = np.fft.fftshift(np.fft.fftfreq(window))
    fy, fx = np.meshgrid(f, f, indexing="ij")
    return fx, fy


def _fitted(window: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the fitted frequencies (W, W), orthonormal basis of the radial trend over them (M, degree + 1))."""
    fx, fy = _frequencies(window)
    radius = np.hypot(fx, fy)
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    across = np.abs(fx * s + fy * c)  # distance from the motion axis (the y axis points down)
    mask = (radius > _BAND[0] / window) & (radius < _BAND[1]) & (across <= _AXIS_BAND)
    trend = np.stack([radius[mask] ** i for i in range(_TREND_DEGREE + 1)], axis=1)
    return mask, np.linalg.qr(trend)[0]


def _models(lengths: np.ndarray, angle: float, window: int, mask: np.ndarray) -> np.ndarray:
    """(N, M) log power spectra of the motion kernels of ``lengths`` as the Welch spectrum sees them (centred, the
    Hann window's leakage, a power floor), at the ``mask``ed frequencies."""
    padded = np.zeros((len(lengths), window, window), np.float32)
    for i, length in enumerate(lengths):
        kernel = motion_kernel(float(length), angle).numpy()
        h, w = kernel.shape
        padded[i, :h, :w] = kernel
        padded[i] = np.roll(padded[i], (-(h // 2), -(w // 2)), axis=(0, 1))
    power = np.abs(np.fft.fft2(padded)) ** 2
    for axis in (1, 2):  # a Hann window spreads each frequency over its neighbours as 1 : 4 : 1
        power = (np.roll(power, 1, axis) + 4 * power + np.roll(power, -1, axis)) / 6
    return np.log(np.fft.fftshift(power, axes=(1, 2))[:, mask] + _FLOOR).astype(np.float64)


def _explained(
    lengths: np.ndarray, angle: float, window: int, mask: np.ndarray, basis: np.ndarray, observed: np.ndarray
) -> np.ndarray:
    """Per candidate length, the share of ``observed`` (trend removed) its model explains; −inf where it fits inverted."""
    models = _models(lengths, angle, window, mask)
    models -= (models @ basis) @ basis.T
    along = models @ observed
    energy = np.maximum((models * models).sum(axis=1), 1e-12)
    return np.where(along > 0, along * along / energy, -np.inf)  # residual = ‖observed‖² − explained


def fit_motion_length(spectrum: np.ndarray, angle: float, guess: float) -> float:
    """The motion length (px) whose kernel best explains ``spectrum`` (W, W), from :func:`log_power_spectrum`.

    ``angle``: the motion's direction in degrees (the convention of ``motion:length=..,angle=..``); ``guess``: the
    network's length, px, centring the search (:data:`SEARCH`). Returns ``guess`` when no candidate fits with a
    positive scale (no stripes in the spectrum).
    """
    window = spectrum.shape[0]
    if spectrum.shape != (window, window) or not (math.isfinite(guess) and guess > 0) or not math.isfinite(angle):
        raise ValueError(f"need a square spectrum, a finite angle and a positive guess, got {spectrum.shape}, {angle}, {guess}")
    mask, basis = _fitted(window, angle)
    low, high = max(_LENGTHS[0] + STEP, SEARCH[0] * guess), min(_LENGTHS[1], SEARCH[1] * guess)
    observed = spectrum.astype(np.float64)[mask]
    observed -= basis @ (basis.T @ observed)  # what the scene's smooth trend leaves
    # Coarse to fine: whole pixels over the search, then STEP around the best (the fit varies slowly with the length)
    coarse = np.arange(low, max(high, low) + 1e-9, 1.0)
    explained = _explained(coarse, angle, window, mask, basis, observed)
    if not np.isfinite(explained.max()):
        return float(guess)
    best = float(coarse[int(explained.argmax())])
    fine = np.arange(max(low, best - 1.0), min(max(high, low), best + 1.0) + 1e-9, STEP)
    explained = _explained(fine, angle, window, mask, basis, observed)
    return float(fine[int(explained.argmax())]) if np.isfinite(explained.max()) else best


def motion_length(image: np.ndarray | torch.Tensor, angle: float, guess: float) -> float:
    """The motion length (px) of a tile: ``image`` (H, W) / (H, W, C) numpy or (C, H, W) torch in [0, 1], sides ≥ 128.

    Its log power spectrum in :data:`FIT_WINDOW`-px windows where both sides allow (≥ 256 px), else 64-px ones,
    fitted by :func:`fit_motion_length` around the network's ``guess`` at ``angle``.
    """
    shape = tuple(image.shape)
    sides = shape[-2:] if isinstance(image, torch.Tensor) else shape[:2]
    window = FIT_WINDOW if min(sides) >= 2 * FIT_WINDOW else WINDOW
    return fit_motion_length(log_power_spectrum(image, window), angle, guess)
