"""Modulation transfer function (MTF) of a point-spread function, and its MTF50.

The MTF is the magnitude of the PSF's Fourier transform: how much contrast survives at each spatial
frequency, in cycles per pixel (0 to the Nyquist frequency 0.5). MTF50 — the frequency at which half
the contrast is left — is the single number camera labs quote for sharpness (ISO 12233).

>>> import numpy as np
>>> from meddeblur.psf.mtf import mtf50, radial_mtf
>>> delta = np.ones((1, 1))
>>> freqs, values = radial_mtf(delta)
>>> float(values.min())
1.0
>>> mtf50(freqs, values) is None           # never falls to 0.5 below Nyquist
True
"""

from __future__ import annotations

import numpy as np

__all__ = ["NYQUIST", "radial_mtf", "directional_mtf", "mtf50"]

NYQUIST = 0.5  # cycles per pixel
_ANGLES = 36  # directions averaged by radial_mtf, every 5 degrees over a half turn (|OTF| is symmetric)


def directional_mtf(kernel: np.ndarray, angle: float, freqs: np.ndarray) -> np.ndarray:
    """|OTF| of ``kernel`` (kh, kw) along the direction ``angle`` (degrees, counter-clockwise on screen) at ``freqs``.

    Evaluated as the exact discrete-time Fourier transform (no zero-padding or binning), so it is
    accurate at any frequency; cost kh·kw·len(freqs).
    """
    k = np.asarray(kernel, dtype=np.float64)
    kh, kw = k.shape
    yy, xx = np.mgrid[0:kh, 0:kw]
    # Rows grow downwards: the screen direction (cos, sin) is (x, -y) in array coordinates.
    along = (xx - kw // 2) * np.cos(np.radians(angle)) - (yy - kh // 2) * np.sin(np.radians(angle))
    phase = np.exp(-2j * np.pi * np.outer(np.asarray(freqs, dtype=np.float64), along.ravel()))
    return np.abs(phase @ k.ravel()) / k.sum()


def radial_mtf(kernel: np.ndarray, samples: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, MTF): the MTF averaged over directions, at ``samples`` frequencies from 0 to Nyquist.

    ``kernel``: (kh, kw) non-negative array (normalised here). For a radially symmetric PSF this is
    the MTF in every direction; for an anisotropic one it is the mean over directions, which is how
    a single MTF50 is reported for it.
    """
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or not k.sum() > 0:
        raise ValueError(f"kernel must be a 2-D array with a positive sum, got shape {k.shape}")
    if samples < 2:
        raise ValueError(f"samples must be at least 2, got {samples}")
    freqs = np.linspace(0.0, NYQUIST, samples)
    curves = [directional_mtf(k, angle, freqs) for angle in np.arange(_ANGLES) * 180.0 / _ANGLES]
    return freqs, np.mean(curves, axis=0)


def mtf50(freqs: np.ndarray, values: np.ndarray) -> float | None:
    """The first frequency at which ``values`` falls to 0.5 (linear interpolation), or None if it stays above.

    None means the MTF50 lies beyond the frequencies given (at or above Nyquist for :func:`radial_mtf`):
    a near-perfect PSF such as a delta.
    """
    f, v = np.asarray(freqs, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if f.shape != v.shape or f.ndim != 1 or len(f) < 2:
        raise ValueError(f"freqs and values must be 1-D of equal length >= 2, got {f.shape} and {v.shape}")
    below = np.nonzero(v <= 0.5)[0]
    if len(below) == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(f[0])
    # Between samples i-1 (above 0.5) and i (at or below).
    t = (v[i - 1] - 0.5) / (v[i - 1] - v[i])
    return float(f[i - 1] + t * (f[i] - f[i - 1]))
