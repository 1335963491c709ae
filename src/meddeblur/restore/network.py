"""The kernel-conditioned network as a restoration method: a ``psf-nafnet`` told the PSF as a kernel canvas.

The network (:mod:`meddeblur.models.psf_nafnet`) takes the image's channels and, after them, the kernel on an
image-sized plane with its origin at the middle (:func:`meddeblur.physics.canvas.kernel_canvas`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from meddeblur.physics.canvas import kernel_canvas
from meddeblur.psf.kernel import PSF
from meddeblur.restore.base import KnownBlur, Resources

__all__ = ["KernelConditioned", "build"]


class KernelConditioned(KnownBlur):
    """(N, 3, h, w) tiles restored by ``network`` told ``psf``."""

    method = "network"

    def __init__(self, psf: PSF, network: nn.Module) -> None:
        super().__init__(psf)
        self.network = network

    def restore(self, tiles: Tensor) -> Tensor:
        n, _, h, w = tiles.shape
        device = next(self.network.parameters()).device
        canvas = kernel_canvas(self.psf.kernel, h, w).to(device)[None, None].expand(n, 1, h, w)
        return self.network(torch.cat([tiles.to(device, torch.float32), canvas], dim=1))


def build(psf: PSF, resources: Resources) -> KernelConditioned:
    return KernelConditioned(psf, resources.psf_network())
