"""Classical deconvolution as restoration methods: Wiener and Richardson–Lucy told the PSF.

Tile functions around :mod:`meddeblur.restore.classical`'s numpy functions, with the parameters the quality
benchmark chose most often on validation images: NSR 0.01 (gauss, defocus, shake and resampling at full resolution)
and 30 Richardson–Lucy iterations (between the 10 chosen for resampling and the 40 for optical blur).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from meddeblur.errors import InvalidOption
from meddeblur.psf.kernel import PSF
from meddeblur.restore.base import KnownBlur, Resources
from meddeblur.restore.classical import richardson_lucy, wiener

__all__ = ["DEFAULT_NSR", "DEFAULT_ITERATIONS", "Wiener", "RichardsonLucy", "build_wiener", "build_rl"]

DEFAULT_NSR = 0.01
DEFAULT_ITERATIONS = 30


class _Numpy(KnownBlur):
    def deconvolve(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def restore(self, tiles: Tensor) -> Tensor:
        restored = [
            self.deconvolve(np.clip(tile, 0.0, 1.0)).transpose(2, 0, 1)
            for tile in tiles.detach().cpu().float().numpy().transpose(0, 2, 3, 1)
        ]
        return torch.from_numpy(np.stack(restored)).to(tiles.device)


class Wiener(_Numpy):
    """Wiener deconvolution with noise-to-signal ratio ``nsr``."""

    method = "wiener"

    def __init__(self, psf: PSF, nsr: float = DEFAULT_NSR) -> None:
        if isinstance(nsr, bool) or not isinstance(nsr, (int, float)) or not (np.isfinite(nsr) and nsr > 0):
            raise InvalidOption(f"nsr={nsr}: must be a positive number, e.g. {DEFAULT_NSR}", value=nsr, option="nsr")
        super().__init__(psf)
        self.nsr = float(nsr)

    def settings(self) -> dict[str, Any]:
        return {"nsr": self.nsr}

    def deconvolve(self, image: np.ndarray) -> np.ndarray:
        return wiener(image, self.psf.kernel, self.nsr)


class RichardsonLucy(_Numpy):
    """Richardson–Lucy deconvolution, ``iterations`` multiplicative updates."""

    method = "rl"

    def __init__(self, psf: PSF, iterations: int = DEFAULT_ITERATIONS) -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise InvalidOption(
                f"iterations={iterations}: must be a positive integer, e.g. {DEFAULT_ITERATIONS}",
                value=iterations,
                option="iterations",
            )
        super().__init__(psf)
        self.iterations = iterations

    def settings(self) -> dict[str, Any]:
        return {"iterations": self.iterations}

    def deconvolve(self, image: np.ndarray) -> np.ndarray:
        return richardson_lucy(image, self.psf.kernel, self.iterations)


def build_wiener(psf: PSF, resources: Resources, nsr: float = DEFAULT_NSR) -> Wiener:
    return Wiener(psf, nsr)


def build_rl(psf: PSF, resources: Resources, iterations: int = DEFAULT_ITERATIONS) -> RichardsonLucy:
    return RichardsonLucy(psf, iterations)
