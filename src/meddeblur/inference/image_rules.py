"""What an image handed to the Python API must be: the rules :class:`~meddeblur.Deblurrer` and the MONAI transforms
share, and their messages (a ``ValueError`` naming what was given and what is accepted; nothing is clipped to fit).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["INTEGER_RANGES", "MIN_SIDE", "ACCEPTED", "describe_image", "refuse_image", "check_tensor", "check_float_range"]

INTEGER_RANGES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
MIN_SIDE = 16


def describe_image(image: object) -> str:
    """``numpy uint8 (40, 50, 3)``: what was given, for messages."""
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return f"{type(image).__module__.split('.')[0]} {str(image.dtype).replace('torch.', '')} {tuple(image.shape)}"
    return type(image).__name__


ACCEPTED = (
    "numpy (H, W) or (H, W, C) with C in 1/3/4, uint8, uint16 or float in [0, 1]; torch float (C, H, W) or (N, C, H, W) "
    "in [0, 1]; H, W >= 16"
)


def refuse_image(image: object, why: str) -> ValueError:
    """The refusal of ``image``, saying ``why``, what it is and what is accepted."""
    return ValueError(f"image: {why}; got {describe_image(image)}. Accepted: {ACCEPTED}")


def check_tensor(tensor: torch.Tensor, name: str = "image", accepted: str = ACCEPTED, target: str = "[0, 1]") -> None:
    """ValueError unless ``tensor`` is float and needs no gradient: the one tensor rule, :class:`~meddeblur.Deblurrer`'s
    and :mod:`meddeblur.monai`'s.

    Numpy images are what image files hold, so their uint8 and uint16 are scaled by their range; a tensor is what a model
    computes on, float in ``target``: an integer one (a uint8 batch, a label map) is refused naming the conversion. A
    tensor that requires gradients is refused rather than silently detached: restoring it here cannot be differentiated
    (tiling, padding and a PSF's data step run outside autograd), and the network itself is an ``nn.Module`` for that.
    """
    if not tensor.is_floating_point():
        top = {torch.uint8: 255, torch.uint16: 65535}.get(tensor.dtype) if target == "[0, 1]" else None
        raise ValueError(
            f"{name}: integer tensors are refused; convert it to float in {target} first ({name}.float()"
            f"{f' / {top}' if top else ', scaled'}); got {describe_image(tensor)}. Accepted: {accepted}"
        )
    if tensor.requires_grad:
        raise ValueError(
            f"{name}: requires gradients, and deblurring here is inference only (its result would be cut from the "
            f"graph); pass {name}.detach(), or for a differentiable path use the network itself: "
            "meddeblur.models.load_model() returns it as an nn.Module"
        )


def check_float_range(image: object, low: float, high: float, finite: bool) -> None:
    """ValueError unless a float image's values (``low``..``high``, all ``finite``) lie in [0, 1]: never clipped to fit."""
    if not finite:
        raise refuse_image(image, "float values must be finite and lie in [0, 1] (found NaN or infinity)")
    if low < 0.0 or high > 1.0:
        raise refuse_image(image, f"float values must lie in [0, 1] (found {low:g}..{high:g}); scale the image first")
