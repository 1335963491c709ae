"""Pixel arrays as the public functions take them: numpy uint8, uint16 or float in [0, 1], as float in [0, 1].

:func:`unit_float` is the one rule :func:`meddeblur.write_image`, :func:`meddeblur.blur_score`, :func:`meddeblur.psnr`
and :func:`meddeblur.ssim` apply to a numpy image: unsigned 8- and 16-bit integers are scaled by their range (255,
65535), floats must already lie in [0, 1] and be finite, and anything else (other integer types, booleans, masked
arrays, NaN) is refused with a ``ValueError`` naming the parameter, never clipped or converted silently.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["INTEGER_RANGES", "ACCEPTED", "describe", "refuse", "unit_float"]

#: The integer dtypes images come in, and the value that means full intensity.
INTEGER_RANGES = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
#: What the message of a refusal lists as accepted.
ACCEPTED = "numpy (H, W) or (H, W, C) with C in 1/3/4, uint8, uint16 or float in [0, 1]"


def describe(value: object) -> str:
    """``numpy uint8 (32, 32, 3)``, ``torch float32 (1, 3, 32, 32)``, or the type's name."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        module = type(value).__module__.split(".")[0]
        kind = "numpy masked" if isinstance(value, np.ma.MaskedArray) else module
        return f"{kind} {str(value.dtype).replace('torch.', '')} {tuple(value.shape)}"
    return type(value).__name__


def refuse(name: str, value: object, why: str, accepted: str = ACCEPTED) -> ValueError:
    """The ``ValueError`` for a refused array: ``NAME: WHY; got numpy uint8 (…). Accepted: …``."""
    return ValueError(f"{name}: {why}; got {describe(value)}. Accepted: {accepted}")


def unit_float(value: Any, name: str, accepted: str = ACCEPTED, top: float = 1.0) -> np.ndarray:
    """``value`` as a float32 (or float64, if it is) array in [0, ``top``]: integers scaled, floats checked; see the module docstring.

    The shape is not checked here (each caller has its own); 0-size arrays pass.
    """
    if isinstance(value, np.ma.MaskedArray):
        raise refuse(name, value, "a masked array's mask would be lost; pass value.filled(...) or value.data", accepted)
    array = np.asarray(value)
    scale = INTEGER_RANGES.get(array.dtype)
    if scale is not None:
        return array.astype(np.float32) / np.float32(scale / top)
    if not np.issubdtype(array.dtype, np.floating):
        raise refuse(name, value, f"dtype {array.dtype} is not supported", accepted)
    if array.size:
        if not np.isfinite(array).all():
            raise refuse(name, value, "float values must be finite (found NaN or infinity)", accepted)
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > top:
            raise refuse(
                name, value, f"float values must lie in [0, {top:g}] (found {low:g}..{high:g}); scale the image first", accepted
            )
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float32)
