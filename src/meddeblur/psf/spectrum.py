"""What the blur estimator looks at: a tile's averaged power spectrum, on a log scale.

Blurring multiplies an image's spectrum by the kernel's |OTF|²: a Gaussian bends its fall-off down, a defocus disk
cuts rings of zeros into it, linear motion a stripe pattern across the motion. Averaging the power of many
Hann-windowed ``WINDOW``-px patches (Welch's method) keeps that multiplicative pattern while the scene's own,
random, detail averages out; the phase — where things are — is dropped, and with it the scene's layout.

>>> import numpy as np
>>> log_power_spectrum(np.random.default_rng(0).random((128, 128))).shape
(64, 64)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["WINDOW", "MIN_SIDE", "MAX_PATCHES", "log_power_spectrum", "grey_of"]

#: Side of the Welch windows, px: the spectrum's resolution is 1 / WINDOW cycles/pixel (motion up to ~30 px is seen).
WINDOW = 64
#: The smallest tile a spectrum is taken of: 9 half-overlapping windows (fewer leave the scene's detail in it).
MIN_SIDE = 2 * WINDOW
#: Above this many windows the stride doubles: the average barely changes and a 4000×3000 photo stays fast.
MAX_PATCHES = 400
_FLOOR = 1e-12  # power below this (a flat patch) is treated as this: log of zero is undefined


def grey_of(image: np.ndarray | Tensor) -> Tensor:
    """(H, W) float32 mean of the channels of an (H, W), (H, W, C) numpy or (C, H, W) torch image."""
    if isinstance(image, Tensor):
        values = image.detach().cpu().float()
        return values.mean(dim=0) if values.dim() == 3 else values
    # Writeable: torch warns on (and may write through) a read-only array, such as a decoded image's np.asarray
    # view; np.require copies only then, and leaves a writeable float32 array shared as before.
    values = torch.from_numpy(np.require(image, dtype=np.float32, requirements="W"))
    return values.mean(dim=2) if values.dim() == 3 else values


def log_power_spectrum(image: np.ndarray | Tensor, window: int = WINDOW) -> np.ndarray:
    """(window, window) float32 log power spectrum of ``image``'s grey, zero frequency in the middle, mean 0.

    ``image``: (H, W) / (H, W, C) numpy or (C, H, W) torch, values in [0, 1], both sides ≥ 2·``window``. Patches of
    ``window`` px at a stride of ``window // 2`` (doubled until at most :data:`MAX_PATCHES`) have their mean removed and a 2-D Hann window applied; their
    power spectra are averaged, logged and shifted by their mean (the tile's contrast says nothing about blur).
    """
    grey = grey_of(image)
    if grey.dim() != 2 or min(grey.shape) < 2 * window:
        raise ValueError(f"a power spectrum needs a 2-D image with both sides >= {2 * window}, got {tuple(grey.shape)}")
    stride = window // 2
    while (grey.shape[0] // stride) * (grey.shape[1] // stride) > MAX_PATCHES:  # more windows only cost time
        stride *= 2
    patches = grey.unfold(0, window, stride).unfold(1, window, stride).reshape(-1, window, window)
    patches = patches - patches.mean(dim=(1, 2), keepdim=True)
    hann = torch.hann_window(window, periodic=False, dtype=torch.float32)
    power = torch.fft.fft2(patches * (hann[:, None] * hann[None, :])).abs().square().mean(dim=0)
    logged = torch.fft.fftshift(power.clamp(min=_FLOOR).log())
    return (logged - logged.mean()).float().numpy()
