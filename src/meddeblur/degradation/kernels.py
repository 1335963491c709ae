"""Blur kernels (point-spread functions) for synthetic degradations.

Each is a float32 (k, k) tensor, k odd, non-negative, summing to 1, centred on the middle
pixel, meant for true convolution (see :func:`meddeblur.physics.blur`). Angles are in
degrees, counter-clockwise as the image is displayed (rows grow downwards).
"""

from __future__ import annotations

import cmath
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_SAMPLES_PER_PX = 32  # points per pixel of path length when splatting motion and shake paths


def _odd_size(size: int | None, radius: int) -> int:
    if size is None:
        return 2 * radius + 1
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer, got {size}")
    return int(size)


def _cos_sin(angle: float) -> tuple[float, float]:
    """cos/sin of an angle in degrees, exact at multiples of 90 so that 90 degrees is a transpose."""
    rad = math.radians(angle % 360.0)
    c, s = math.cos(rad), math.sin(rad)
    return (0.0 if abs(c) < 1e-12 else c), (0.0 if abs(s) < 1e-12 else s)


def _normalised(kernel: np.ndarray) -> Tensor:
    total = kernel.sum()
    if not total > 0:
        raise ValueError("kernel has no weight inside its size; use a larger size")
    return torch.from_numpy((kernel / total).astype(np.float32))


def _splat(x: np.ndarray, y: np.ndarray, size: int) -> Tensor:
    """Equal-weight points (column, row offsets from the centre) splatted bilinearly, (size, size).

    Hand-written: cv2/skimage only draw lines with integer or 1/2^k endpoints; bilinear
    splatting keeps sub-pixel positions and moves the kernel's centroid exactly with the points.
    """
    r = size // 2
    x, y = x + r, y + r
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros(size * size)
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        xi, yi = x0 + dx, y0 + dy
        ok = (w > 0) & (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size)
        out += np.bincount(yi[ok] * size + xi[ok], weights=w[ok], minlength=size * size)
    return _normalised(out.reshape(size, size))


def gaussian_kernel(sigma: float, sigma_y: float | None = None, angle: float = 0.0, size: int | None = None) -> Tensor:
    """Sampled Gaussian, (k, k); anisotropic when ``sigma_y`` is given.

    ``sigma`` lies along the x axis rotated by ``angle`` degrees, ``sigma_y`` across it.
    Default k = 2 * ceil(3 * max sigma) + 1.
    """
    sy = sigma if sigma_y is None else sigma_y
    if not (sigma > 0 and sy > 0):
        raise ValueError(f"Gaussian sigmas must be > 0, got {sigma}, {sy}")
    size = _odd_size(size, math.ceil(3 * max(sigma, sy)))
    r = size // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    c, s = _cos_sin(angle)
    u = xx * c - yy * s  # along the rotated x axis, whose screen direction is (cos, -sin)
    v = xx * s + yy * c
    return _normalised(np.exp(-0.5 * ((u / sigma) ** 2 + (v / sy) ** 2)))


def disk_kernel(radius: float, size: int | None = None) -> Tensor:
    """Defocus (pillbox) of ``radius`` px, (k, k); each pixel weighs its covered fraction (8x8 subsamples).

    Default k = 2 * ceil(radius) + 1.
    """
    if not radius > 0:
        raise ValueError(f"disk radius must be > 0, got {radius}")
    size = _odd_size(size, math.ceil(radius))
    sub = 8
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    g = (np.arange(size)[:, None] - size // 2 + offsets[None, :]).ravel()
    inside = (g[:, None] ** 2 + g[None, :] ** 2) <= radius**2
    return _normalised(inside.reshape(size, sub, size, sub).mean(axis=(1, 3)))


def motion_kernel(length: float, angle: float = 0.0, size: int | None = None) -> Tensor:
    """Linear motion blur, (k, k): a centred segment at ``angle`` degrees, anti-aliased.

    The support along the motion spans ``length`` px: the path is length - 1 px long and each
    sample's bilinear footprint adds one pixel (at angle 0 and integer length, exactly
    ``length`` columns with half-weight ends). Default k = 2 * ceil((length - 1) / 2) + 1.
    """
    if not length >= 1:
        raise ValueError(f"motion length must be >= 1, got {length}")
    path = length - 1.0
    size = _odd_size(size, math.ceil(path / 2))
    n = max(1, math.ceil(path * _SAMPLES_PER_PX))
    t = (np.arange(n) + 0.5) / n * path - path / 2
    c, s = _cos_sin(angle)
    return _splat(t * c, -t * s, size)


def _shake_path(generator: torch.Generator, steps: int = 2000, max_len: float = 60.0) -> np.ndarray:
    """Boracchi & Foi (2012) camera-shake trajectory, (steps, 2) as (x, y), constant speed.

    Velocity with a random (Gaussian) acceleration, a pull back towards the start, and rare
    impulsive jerks that roughly reverse the direction; the constants are those of their code.
    """
    u = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
    centripetal, gaussian, big_shakes = 0.7 * u[0], 10.0 * u[1], 0.2 * u[2]
    anxiety = 0.003 + 0.007 * u[4]  # the range of "exploration" values DeblurGAN draws from
    normal = torch.randn(steps - 1, 2, generator=generator, dtype=torch.float64).tolist()
    jerk = torch.rand(steps - 1, 2, generator=generator, dtype=torch.float64).tolist()
    step = max_len / (steps - 1)
    v = cmath.exp(2j * math.pi * u[3]) * anxiety
    x = 0j
    points = [x]
    # A plain loop: each step's velocity depends non-linearly on the previous one.
    for (nx, ny), (j0, j1) in zip(normal, jerk):
        dv = 2 * v * cmath.exp(1j * (math.pi + j1 - 0.5)) if j0 < big_shakes * anxiety else 0j
        v += dv + anxiety * (gaussian * complex(nx, ny) - centripetal * x) * step
        v = v / abs(v) * step
        x += v
        points.append(x)
    z = np.asarray(points)
    return np.stack([z.real, z.imag], axis=1)


def shake_kernel(extent: float, generator: torch.Generator, size: int | None = None) -> Tensor:
    """Random camera-shake kernel, (k, k), deterministic given ``generator``'s state.

    A Boracchi & Foi (2012) trajectory scaled so that its support's larger side spans ``extent``
    px (path bounding box extent - 1 px plus the bilinear footprint, as in :func:`motion_kernel`),
    splatted bilinearly, and centred on its centroid so that blurring does not shift the image.
    Default k is just large enough for the support.
    """
    if not extent >= 1:
        raise ValueError(f"shake extent must be >= 1, got {extent}")
    # Tangled paths (many loops) look unlike measured shake kernels (Levin et al. 2009): redraw
    # those whose length (60) exceeds 3x their bounding box, keeping the widest of at most 20.
    best = np.zeros((1, 2))
    for _ in range(20):
        path = _shake_path(generator)
        best = path if np.ptp(path, axis=0).max() > np.ptp(best, axis=0).max() else best
        if np.ptp(best, axis=0).max() >= 20.0:
            break
    path = best - best.min(axis=0)
    path *= (extent - 1.0) / max(float(path.max()), 1e-12)
    # Resample uniformly along the path so that splatted samples are dense (< 1/32 px apart).
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
    n = max(1, math.ceil(arc[-1] * _SAMPLES_PER_PX))
    s = (np.arange(n) + 0.5) / n * arc[-1]
    x, y = np.interp(s, arc, path[:, 0]), np.interp(s, arc, path[:, 1])
    x, y = x - x.mean(), y - y.mean()
    size = _odd_size(size, math.ceil(max(np.abs(x).max(), np.abs(y).max())))
    return _splat(x, y, size)


@functools.cache
def check_down_up_args(scale: int, up: str) -> None:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if up not in ("bicubic", "bilinear"):
        raise ValueError(f"up must be 'bicubic' or 'bilinear', got {up!r}")


def resample_down_up(x: Tensor, scale: int, up: str) -> Tensor:
    h, w = x.shape[-2:]
    low = F.interpolate(x, size=(max(1, h // scale), max(1, w // scale)), mode="area")
    return F.interpolate(low, size=(h, w), mode=up, align_corners=False)


def _resolution_kernel(scale: int, up: str) -> np.ndarray:
    # Down-up is separable, and so is its phase average: a 1-D profile's outer product.
    # The up-scaler's taps reach 2 (bicubic) or 1 (bilinear) low-res pixels past the pixel itself.
    reach = math.ceil((2.5 if up == "bicubic" else 1.5) * scale)
    centre = (math.ceil(reach / scale) + 1) * scale
    impulses = torch.zeros(scale, 1, 1, 2 * centre + scale, dtype=torch.float64)
    impulses[torch.arange(scale), 0, 0, centre + torch.arange(scale)] = 1.0
    response = resample_down_up(impulses, scale, up)[:, 0, 0]
    phases = torch.stack([response[p, centre + p - reach : centre + p + reach + 1] for p in range(scale)])
    profile = phases.mean(0).clamp(min=0).numpy()
    profile = np.trim_zeros(profile)  # symmetric, so the trim keeps it centred
    kernel = np.outer(profile, profile)
    return (kernel / kernel.sum()).astype(np.float32)


def resolution_kernel(scale: int, up: str = "bicubic") -> Tensor:
    """Approximate PSF of :func:`downup` (area down ``scale``x, then ``up``-scaling), (k, k).

    Only an approximation: down-up is not shift-invariant, so this is its impulse response
    averaged over the scale x scale sub-pixel phases; bicubic's negative lobes are clipped to 0.
    """
    check_down_up_args(scale, up)
    return torch.from_numpy(_resolution_kernel(int(scale), up).copy())
