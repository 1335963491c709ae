"""What every restoration method is behind: a tile function with a provenance record.

A :class:`Restorer` is called on ``(N, 3, h, w)`` float tiles in [0, 1] and returns ``(N, 3, h, w)`` restored
ones (unclamped; the inference path clamps), so whole images, tiles, folders, workers and the server run every
method through the one inference path of :mod:`meddeblur.inference.batch`. :meth:`Restorer.parameters` is what
shapes the pixels besides the model's weights, for provenance.

:class:`KnownBlur` is the base of the methods told a PSF: a delta PSF (nothing to undo) returns its input
unchanged, bit for bit, whatever the method; a PSF larger than the tile is refused in one line.
:class:`Resources` hands a method the learned parts it needs, loaded on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from meddeblur.psf.kernel import PSF

__all__ = ["Restorer", "Resources", "KnownBlur"]


class Restorer(Protocol):
    """(N, 3, h, w) tiles → (N, 3, h, w) restored; :meth:`parameters` for provenance."""

    def __call__(self, tiles: Tensor) -> Tensor: ...

    def parameters(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Resources:
    """The learned parts a known-blur method may need, each loaded when first asked for (so Wiener never loads a network).

    ``psf_network``: the kernel-conditioned network (a ``psf-nafnet`` in eval mode); ``denoiser``: the plug-and-play prior
    (:class:`~meddeblur.models.denoiser.Denoiser` in eval mode). Each raises a :class:`~meddeblur.errors.UserError`
    when it cannot be had (an ONNX engine, a blind ``--model``, a missing file).
    """

    psf_network: Callable[[], nn.Module]
    denoiser: Callable[[], nn.Module]


class KnownBlur:
    """Base of the methods told a PSF: subclasses set :attr:`method` and implement :meth:`restore` (and :meth:`settings`)."""

    method: str = ""

    def __init__(self, psf: PSF) -> None:
        self.psf = psf

    def settings(self) -> dict[str, Any]:
        """The method's own parameters, for provenance."""
        return {}

    def parameters(self) -> dict[str, Any]:
        record: dict[str, Any] = {"method": self.method, "psf": self.psf.describe(), **self.settings()}
        if self.psf.is_delta:
            record["unchanged"] = "the PSF is a delta: nothing to undo, the image is returned as it is"
        return record

    def restore(self, tiles: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, tiles: Tensor) -> Tensor:
        if self.psf.is_delta:
            return tiles
        self.psf.check_fits(tiles.shape[-2], tiles.shape[-1], where="tile")
        return self.restore(tiles)
