"""The numpy arrays and torch tensors a caller hands a :class:`~meddeblur.inference.deblurrer.Deblurrer`.

Each is checked (shape, dtype, range), brought to the (H, W, 3) float in [0, 1] the restorers take (grey as three equal
channels, alpha set aside, integers scaled by their range), and the result given back in the caller's own type, dtype,
shape and device. Separate from :mod:`~meddeblur.inference.deblurrer`, which chooses *how* an image is restored: this
is only the way in and out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from meddeblur.inference.image_rules import INTEGER_RANGES, MIN_SIDE, check_float_range, check_tensor, refuse_image

__all__ = ["restore_array", "restore_tensor"]


def restore_array(image: np.ndarray, deblur_rgb: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """A numpy ``(H, W)`` or ``(H, W, C)`` image, checked, restored by ``deblur_rgb`` and given back in its own dtype and shape."""
    if isinstance(image, np.ma.MaskedArray):
        raise refuse_image(
            image, "masked arrays are refused (the result would lose the mask); pass image.filled(value) or image.data"
        )
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise refuse_image(image, "expected (H, W) or (H, W, C) with C in 1/3/4")
    if min(image.shape[:2]) < MIN_SIDE:
        raise refuse_image(image, f"height and width must be at least {MIN_SIDE}")
    scale = INTEGER_RANGES.get(image.dtype)
    if scale is None:
        if not np.issubdtype(image.dtype, np.floating):
            raise refuse_image(image, f"dtype {image.dtype} is not supported")
        finite = bool(np.isfinite(image).all())
        check_float_range(image, float(image.min()) if finite else 0.0, float(image.max()) if finite else 0.0, finite)
        values = image.astype(np.float32)
    else:
        values = image.astype(np.float32) / scale
    planes = values[..., None] if values.ndim == 2 else values
    channels = planes.shape[2]
    colour = planes[..., :3] if channels >= 3 else np.repeat(planes[..., :1], 3, axis=2)
    restored = deblur_rgb(np.ascontiguousarray(colour))
    out = restored if channels >= 3 else restored.mean(axis=2, keepdims=True)
    if channels == 4:
        out = np.concatenate([out, planes[..., 3:]], axis=2)
    out = out.reshape(image.shape)
    if scale is not None:
        return np.round(np.clip(out, 0.0, 1.0) * scale).astype(image.dtype)
    return out.astype(image.dtype, copy=False)


def restore_tensor(
    image: torch.Tensor,
    deblur_rgb: Callable[[np.ndarray], np.ndarray],
    deblur_batch: Callable[[torch.Tensor], torch.Tensor] | None,
    tile: int,
) -> torch.Tensor:
    """A torch ``(C, H, W)`` or ``(N, C, H, W)`` image, checked, restored and given back on its own device and dtype.

    ``deblur_batch`` restores a whole (N, 3, H, W) batch at once; None, or a side above ``tile``, restores image by image
    with ``deblur_rgb``.
    """
    if image.dim() not in (3, 4) or image.shape[-3] not in (1, 3, 4):
        raise refuse_image(image, "expected a float (C, H, W) or (N, C, H, W) tensor with C in 1/3/4")
    check_tensor(image)
    if min(image.shape[-2:]) < MIN_SIDE:
        raise refuse_image(image, f"height and width must be at least {MIN_SIDE}")
    finite = bool(torch.isfinite(image).all())
    values = image.detach().nan_to_num()  # detached: reading values of a requires_grad tensor warns
    check_float_range(image, float(values.min()), float(values.max()), finite)
    batch = image if image.dim() == 4 else image[None]
    values = batch.detach().to("cpu", torch.float32)
    channels = values.shape[1]
    colour = values[:, :3] if channels >= 3 else values[:, :1].expand(-1, 3, -1, -1)
    if deblur_batch is None or (tile and max(values.shape[-2:]) > tile):
        restored = torch.stack(
            [torch.from_numpy(deblur_rgb(np.ascontiguousarray(x.permute(1, 2, 0).numpy()))).permute(2, 0, 1) for x in colour]
        )
    else:
        restored = deblur_batch(colour)
    out = restored if channels >= 3 else restored.mean(dim=1, keepdim=True)
    if channels == 4:
        out = torch.cat([out, values[:, 3:]], dim=1)
    out = out.to(image.device, image.dtype)
    return out if image.dim() == 4 else out[0]
