"""Generated (blurred, sharp) pairs of synthetic dermoscopy images for the tests: no patient data, seconds to make."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.io.encode import write_image

__all__ = ["synthetic_pair", "write_synthetic_pairs", "write_sharp_images"]


def _quantize8(x: np.ndarray) -> np.ndarray:
    return (np.round(np.clip(x, 0.0, 1.0) * 255) / 255).astype(np.float32)


def synthetic_pair(
    height: int = 256,
    width: int = 256,
    seed: int = 0,
    sigma: float = 1.5,
    noise: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(blurred, sharp) SYNTHETIC images: Gaussian blur of ``sigma`` px plus optional noise (std).

    Both are quantised to 8 bits so that saving them as PNG is lossless.
    """
    sharp = synthetic_dermoscopy(height, width, seed)
    blurred = sharp
    if sigma > 0:
        blurred = cv2.GaussianBlur(sharp, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT)
    if noise > 0:
        # A separate stream so that the noise does not change the image content.
        noise_rng = np.random.default_rng([seed, 1])
        blurred = blurred + noise_rng.normal(0.0, noise, blurred.shape).astype(np.float32)
    return _quantize8(blurred), _quantize8(sharp)


def write_synthetic_pairs(
    root: str | os.PathLike[str],
    n: int = 8,
    height: int = 64,
    width: int = 64,
    seed: int = 0,
    sigma: float = 1.5,
) -> Path:
    """Write ``n`` SYNTHETIC pairs as ``root/blurred/synthetic_000.png`` and ``root/sharp/...``."""
    root = Path(root)
    for i in range(n):
        # Per-image seeds from (seed, i) so that sets written with different seeds never share images.
        image_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        blurred, sharp = synthetic_pair(height, width, seed=image_seed, sigma=sigma)
        write_image(root / "blurred" / f"synthetic_{i:03d}.png", blurred)
        write_image(root / "sharp" / f"synthetic_{i:03d}.png", sharp)
    return root


def write_sharp_images(root: str | os.PathLike[str], n: int, height: int, width: int, first_seed: int) -> Path:
    """Write ``n`` SYNTHETIC sharp images ``root/lesion_00.png``, … (seeds ``first_seed``, ``first_seed + 1``, …)."""
    root = Path(root)
    for i in range(n):
        write_image(root / f"lesion_{i:02d}.png", synthetic_dermoscopy(height, width, seed=first_seed + i))
    return root
