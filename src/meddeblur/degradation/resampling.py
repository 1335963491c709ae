"""Image resizing as the libraries people use do it: Pillow, OpenCV and torch, each with its own kernels.

A photograph that reaches meddeblur has often been resized on the way (a viewer's export, a web
upload, a PACS thumbnail, a notebook's ``cv2.resize``), and every library resamples differently:
Pillow and torch (``antialias=True``) widen the kernel when shrinking, OpenCV's linear/cubic/Lanczos
do not (they alias), and OpenCV's ``INTER_AREA`` is a box. Training on one library's resampling
teaches a network that one softness only, so degradations and training crops draw from all three.

Images are (H, W, C) float32 numpy arrays in [0, 1]; results are clipped to [0, 1].

>>> import numpy as np
>>> image = np.random.default_rng(0).random((32, 40, 3), dtype=np.float32)
>>> resize(image, (16, 20), "box", "pil").shape
(16, 20, 3)
>>> down_up(image, 2.0, "box", "bicubic", "pil").shape
(32, 40, 3)
"""

from __future__ import annotations

import functools
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["KERNELS", "LIBRARIES", "supported", "resize", "down_up", "down_up_kernel", "resize_area"]

KERNELS = ("box", "bilinear", "bicubic", "lanczos")
LIBRARIES = ("pil", "cv2", "torch")
_PIL = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_CV2 = {"box": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
_TORCH = {"box": "area", "bilinear": "bilinear", "bicubic": "bicubic"}  # torch has no Lanczos


def supported(kernel: str, library: str) -> bool:
    """Whether ``library`` offers ``kernel`` (torch has no Lanczos)."""
    tables: dict[str, dict[str, Any]] = {"pil": _PIL, "cv2": _CV2, "torch": _TORCH}
    return kernel in tables.get(library, {})


def _check(image: np.ndarray, size: tuple[int, int], kernel: str, library: str) -> None:
    if image.ndim != 3 or image.dtype != np.float32:
        raise ValueError(f"image must be float32 (H, W, C), got {image.dtype} {image.shape}")
    if int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"size must be positive (height, width), got {size}")
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {', '.join(LIBRARIES)}, got {library!r}")
    if not supported(kernel, library):
        raise ValueError(
            f"{library} has no {kernel!r} resampling; choose one of " + ", ".join(k for k in KERNELS if supported(k, library))
        )


def resize(image: np.ndarray, size: tuple[int, int], kernel: str = "bicubic", library: str = "pil") -> np.ndarray:
    """Resize float32 (H, W, C) ``image`` to ``size`` = (height, width) the way ``library`` does with ``kernel``.

    ``box`` is Pillow's BOX, OpenCV's INTER_AREA and torch's ``area``; torch's bilinear/bicubic
    antialias when shrinking, as Pillow's do. Returns float32 (height, width, C) clipped to [0, 1].
    """
    _check(image, size, kernel, library)
    height, width = int(size[0]), int(size[1])
    if library == "pil":
        # Pillow's float mode ('F') is single-channel; resampling is per channel anyway.
        channels = [
            np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), "F").resize((width, height), _PIL[kernel]))
            for c in range(image.shape[2])
        ]
        out = np.stack(channels, axis=-1)
    elif library == "cv2":
        out = cv2.resize(image, (width, height), interpolation=_CV2[kernel])
        out = out.reshape(height, width, image.shape[2])  # cv2 drops a single channel axis
    else:
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
        mode = _TORCH[kernel]
        extra = {} if mode == "area" else {"align_corners": False, "antialias": True}
        out = F.interpolate(x, size=(height, width), mode=mode, **extra)[0].numpy().transpose(1, 2, 0)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def down_up(image: np.ndarray, scale: float, down: str = "box", up: str = "bicubic", library: str = "pil") -> np.ndarray:
    """Shrink by ``scale`` (> 1, sides rounded, at least 1 px) with ``down``, then back to (H, W) with ``up``."""
    if not scale >= 1.0:
        raise ValueError(f"scale must be >= 1, got {scale}")
    height, width = image.shape[:2]
    low = resize(image, (max(1, round(height / scale)), max(1, round(width / scale))), down, library)
    return resize(low, (height, width), up, library)


@functools.lru_cache(maxsize=512)
def _profile(scale: float, down: str, up: str, library: str) -> tuple[float, ...]:
    period = max(1, round(scale))
    length = 16 * period + 32
    impulses = np.zeros((period, length, 1), np.float32)  # one impulse per sub-pixel phase, as image rows
    centre = length // 2
    impulses[np.arange(period), centre + np.arange(period), 0] = 1.0
    low = resize(impulses, (period, max(1, round(length / scale))), down, library)
    response = resize(low, (period, length), up, library)[..., 0].astype(np.float64)
    reach = int(np.ceil(3 * scale)) + 2
    profile = np.mean([response[p, centre + p - reach : centre + p + reach + 1] for p in range(period)], axis=0)
    profile = np.clip(profile, 0.0, None)
    profile[profile < 1e-4 * profile.max()] = 0.0
    # Every kernel here is symmetric; what is not comes from rounding the low-resolution size.
    profile = (profile + profile[::-1]) / 2
    return tuple(np.trim_zeros(profile).tolist())  # symmetric, odd length: the trim keeps it centred


def down_up_kernel(scale: float, down: str = "box", up: str = "bicubic", library: str = "pil") -> torch.Tensor:
    """Approximate PSF of :func:`down_up`, float32 (k, k) summing to 1, k odd.

    Down-up is neither shift-invariant nor (with clipping) linear: this is the separable impulse
    response averaged over sub-pixel phases with negative lobes clipped, for kernel-based baselines.
    """
    profile = np.asarray(_profile(round(float(scale), 3), down, up, library))
    kernel = np.outer(profile, profile)
    return torch.from_numpy((kernel / kernel.sum()).astype(np.float32))


def resize_area(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W[, C]) float image to ``size`` = (height, width), float32 in [0, 1].

    Uses area averaging when shrinking (no aliasing) and bicubic when enlarging.
    """
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (height, width), got {size}")
    x = np.asarray(rgb, dtype=np.float32)
    in_h, in_w = x.shape[:2]
    if (in_h, in_w) == (h, w):
        return np.clip(x, 0.0, 1.0)
    interp = cv2.INTER_AREA if h <= in_h and w <= in_w else cv2.INTER_CUBIC
    out = cv2.resize(x, (w, h), interpolation=interp)  # cv2 takes (width, height)
    if x.ndim == 3 and out.ndim == 2:  # cv2 drops a single channel axis
        out = out[:, :, None]
    # Bicubic overshoots at edges.
    return np.clip(out, 0.0, 1.0, out=out)
