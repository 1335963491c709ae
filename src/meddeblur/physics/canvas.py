"""Kernel canvases: a PSF as an image-sized plane, the form in which a kernel-conditioned network is told it.

A canvas is a float32 ``(H, W)`` plane, zero except for the normalised kernel, whose origin sits at
``(H // 2, W // 2)``. One image-sized tensor per image keeps batching, tiling and data loading the same
whatever the kernel's size. A canvas is itself a kernel in :mod:`meddeblur.physics.operator`'s convention (origin
at ``(kh // 2, kw // 2)``), so :func:`canvas_otf` is that module's :func:`~meddeblur.physics.operator.otf`, and
:class:`meddeblur.models.wiener_step.WienerStep` deconvolves with it.

>>> import numpy as np
>>> canvas = kernel_canvas(np.ones((3, 3)), 8, 8)
>>> float(canvas.sum()), canvas_radius(canvas[None])
(1.0, 1)
>>> canvas_otf(canvas[None], (16, 16)).shape   # (N, 1, fh, fw // 2 + 1)
torch.Size([1, 1, 16, 9])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from meddeblur.physics.operator import otf

__all__ = ["kernel_canvas", "canvas_radius", "canvas_otf"]


def kernel_canvas(kernel: np.ndarray | Tensor, height: int, width: int) -> Tensor:
    """(height, width) float32 plane with the (kh, kw) odd-sided ``kernel`` centred at (height // 2, width // 2).

    ValueError when the kernel does not fit.
    """
    k = torch.as_tensor(np.asarray(kernel, dtype=np.float32) if isinstance(kernel, np.ndarray) else kernel, dtype=torch.float32)
    kh, kw = k.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel sides must be odd, got {kh}×{kw}")
    if kh > height or kw > width:
        raise ValueError(f"kernel ({kw}×{kh}) is larger than the image ({width}×{height})")
    canvas = torch.zeros(height, width)
    top, left = height // 2 - kh // 2, width // 2 - kw // 2
    canvas[top : top + kh, left : left + kw] = k / k.sum()
    return canvas


def canvas_radius(canvas: Tensor) -> int:
    """The largest distance (rows or columns) of a non-zero canvas sample from the origin, over the batch."""
    h, w = canvas.shape[-2:]
    rows = torch.nonzero(canvas.reshape(-1, h, w).amax(dim=(0, 2)) > 0).flatten()
    cols = torch.nonzero(canvas.reshape(-1, h, w).amax(dim=(0, 1)) > 0).flatten()
    if len(rows) == 0:
        raise ValueError("a kernel canvas is all zero")
    return int(max((rows - h // 2).abs().max(), (cols - w // 2).abs().max()))


def canvas_otf(canvas: Tensor, shape: tuple[int, int]) -> Tensor:
    """(N, 1, fh, fw // 2 + 1) OTFs of (N, H, W) canvases on a (fh, fw) plane (the padded image's, fh ≥ H, fw ≥ W).

    The canvas' origin (H // 2, W // 2) goes to the plane's (0, 0), as :func:`~meddeblur.physics.operator.otf` does
    for any kernel; the canvas keeps its dtype and device.
    """
    if canvas.dim() != 3:
        raise ValueError(f"expected (N, H, W) kernel canvases, got shape {tuple(canvas.shape)}")
    return otf(canvas, shape)
