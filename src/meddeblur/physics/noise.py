"""The noise level of an image: Immerkær's (1996) Laplacian-difference estimate, numpy and torch.

The 3×3 mask ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]]`` cancels smooth image content to second order; the mean
absolute response, scaled by ``sqrt(π / 2) / 6``, estimates the standard deviation of white Gaussian noise.
Taken on the channel mean. Textured images read a little high: an upper bound, which is the safe side for a
restorer's regularisation.

>>> import numpy as np
>>> round(noise_level_np(np.full((32, 32, 3), 0.5)), 6)
0.0
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["noise_level", "noise_level_np"]

_MASK = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_SCALE = math.sqrt(math.pi / 2) / 6.0


def noise_level(images: Tensor) -> Tensor:
    """(N,) noise standard deviation of (N, C, H, W) images in [0, 1] (H, W ≥ 3)."""
    grey = images.mean(dim=1, keepdim=True)
    mask = torch.as_tensor(_MASK, dtype=grey.dtype, device=grey.device)
    h, w = images.shape[-2:]
    return F.conv2d(grey, mask[None, None]).abs().sum(dim=(1, 2, 3)) * _SCALE / ((h - 2) * (w - 2))


def noise_level_np(image: np.ndarray) -> float:
    """Noise standard deviation of an (H, W) or (H, W, C) image in [0, 1] (H, W ≥ 3)."""
    grey = np.asarray(image, dtype=np.float64)
    grey = grey.mean(axis=2) if grey.ndim == 3 else grey
    h, w = grey.shape
    # The 3×3 "valid" correlation as nine shifted slices: scipy.signal would cost every command ~0.7 s of import.
    response = sum(_MASK[i, j] * grey[i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3))
    return float(np.abs(response).sum() * _SCALE / ((h - 2) * (w - 2)))
