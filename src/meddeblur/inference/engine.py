"""What folder runs, the DICOM node and the server need from a loaded model: the :class:`Engine` protocol, and the one
refusal every path gives for a PSF on the ONNX engine.

A :class:`~meddeblur.inference.deblurrer.Deblurrer` is an engine; :func:`meddeblur.runs.files.deblur_files` wraps a
bare network into one. What an engine can do is said by attributes every engine has — ``psf`` (a known PSF bound to
it) and ``estimates_psf`` — never probed for with ``hasattr``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from meddeblur.errors import InvalidOption

if TYPE_CHECKING:
    import numpy as np
    import torch

    from meddeblur.psf.kernel import PSF

__all__ = ["Engine", "ONNX_HAS_NO_DATA_STEP", "psf_on_onnx"]

#: Why the ONNX engine restores no known or estimated blur.
ONNX_HAS_NO_DATA_STEP = "the ONNX engine cannot restore with a PSF (the exported graph has no FFT data step)"


@runtime_checkable
class Engine(Protocol):
    """A model loaded once, restoring (H, W, 3) float images in [0, 1] as it was configured: blind, with a known PSF,
    or estimating each image's PSF; ``provenance`` is the record its outputs carry."""

    provenance: dict[str, Any]
    tile: int
    overlap: int
    size_multiple: int
    device: torch.device

    @property
    def psf(self) -> PSF | None: ...

    @property
    def estimates_psf(self) -> bool: ...

    def restore_rgb(self, rgb: np.ndarray, before_tile: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """(restored image, what was done: the ``restoration`` record of an estimated PSF, else ``{}``)."""
        ...

    def __call__(self, image: Any) -> Any:
        """A batch (N, 3, H, W) float tensor restored at once (images of one size, below the tile size)."""
        ...


def psf_on_onnx(option: str, value: object, fix: str = "use engine='torch'") -> InvalidOption:
    """The refusal of a PSF (given, or estimated with method psf) on the ONNX engine, for ``option=value``."""
    return InvalidOption(f"{option}={value}: {ONNX_HAS_NO_DATA_STEP}; {fix}", value=value, option=option)
