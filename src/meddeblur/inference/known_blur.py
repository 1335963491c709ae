"""Restoring a known blur: the kernel-conditioned network or a classical deconvolution, told one PSF.

:class:`KnownBlur` is a tile function (:data:`meddeblur.inference.tiling.TileFn`): called on (N, 3, h, w) tiles, it
restores each with the same PSF, so whole images, tiles, folders and the server all run through the one
inference path of :mod:`meddeblur.inference.batch`. :meth:`meddeblur.Deblurrer.with_psf` builds it.

Methods: ``network`` (a ``psf-nafnet``: an exact Wiener data step and a learned prior,
:mod:`meddeblur.models.psf_nafnet`), ``wiener`` and ``rl`` (:mod:`meddeblur.evaluation.classical`, with the
parameters the quality benchmark chose most often on validation images: NSR 0.01, 30 Richardson–Lucy iterations).
A delta PSF (nothing to undo) returns its input unchanged, bit for bit, whatever the method.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from meddeblur.errors import InvalidOption
from meddeblur.psf.canvas import kernel_canvas
from meddeblur.psf.kernel import PSF

__all__ = ["METHODS", "DEFAULT_NSR", "DEFAULT_ITERATIONS", "KnownBlur"]

#: What restores a known blur: the kernel-conditioned network, or a classical deconvolution.
METHODS = ("network", "wiener", "rl")
DEFAULT_NSR = 0.01  # the Wiener NSR quality.py chose for gauss, defocus, shake and resampling at full resolution
DEFAULT_ITERATIONS = 30  # between the 10 (resampling) and 40 (optical blur) Richardson–Lucy iterations chosen there


class KnownBlur:
    """(N, 3, h, w) tiles in [0, 1] → (N, 3, h, w) restored with ``psf`` by ``method`` (see the module docstring).

    ``network`` is required for ``method="network"`` (a ``psf-nafnet`` module in eval mode) and ignored otherwise.
    """

    def __init__(self, psf: PSF, method: str = "network", network: nn.Module | None = None, nsr: float = DEFAULT_NSR,
                 iterations: int = DEFAULT_ITERATIONS) -> None:
        if method not in METHODS:
            raise InvalidOption(f"method={method!r}: choose one of {', '.join(METHODS)}", value=method, option="method")
        if method == "network" and network is None:
            raise InvalidOption("method='network' needs a kernel-conditioned network", value=method, option="method")
        if not (np.isfinite(nsr) and nsr > 0):
            raise InvalidOption(f"nsr={nsr}: must be a positive number, e.g. {DEFAULT_NSR}", value=nsr, option="nsr")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise InvalidOption(f"iterations={iterations}: must be a positive integer, e.g. {DEFAULT_ITERATIONS}", value=iterations,
                                option="iterations")
        self.psf, self.method, self.network, self.nsr, self.iterations = psf, method, network, nsr, iterations

    def parameters(self) -> dict[str, Any]:
        """What shapes the pixels besides the model, for provenance."""
        settings: dict[str, Any] = {"method": self.method, "psf": self.psf.describe()}
        if self.method == "wiener":
            settings["nsr"] = self.nsr
        elif self.method == "rl":
            settings["iterations"] = self.iterations
        if self.psf.is_delta:
            settings["unchanged"] = "the PSF is a delta: nothing to undo, the image is returned as it is"
        return settings

    @torch.no_grad()
    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        if self.psf.is_delta:
            return tiles
        n, _, h, w = tiles.shape
        self.psf.check_fits(h, w, where="tile")
        if self.method == "network":
            device = next(self.network.parameters()).device
            canvas = kernel_canvas(self.psf.kernel, h, w).to(device)[None, None].expand(n, 1, h, w)
            return self.network(torch.cat([tiles.to(device, torch.float32), canvas], dim=1))
        from meddeblur.evaluation.classical import richardson_lucy, wiener  # numpy/scipy: imported when asked for

        restored = []
        for tile in tiles.detach().cpu().float().numpy().transpose(0, 2, 3, 1):
            image = np.clip(tile, 0.0, 1.0)
            out = wiener(image, self.psf.kernel, self.nsr) if self.method == "wiener" else richardson_lucy(image, self.psf.kernel, self.iterations)
            restored.append(out.transpose(2, 0, 1))
        return torch.from_numpy(np.stack(restored)).to(tiles.device)
