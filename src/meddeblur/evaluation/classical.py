"""Classical (non-learned) deblurring baselines for the benchmark table.

Four methods with a flat, scikit-image-like API, all taking and returning (H, W, 3) float
images in ``[0, 1]`` (float32 output, same shape; (H, W) greyscale is accepted too):

* :func:`~meddeblur.restore.classical.wiener` -- Wiener deconvolution with the true blur kernel;
* :func:`~meddeblur.restore.classical.richardson_lucy` -- Richardson-Lucy deconvolution with the true blur kernel;
* :func:`unsupervised_wiener` -- scikit-image's self-tuning Wiener-Hunt deconvolution, given a
  generic Gaussian PSF rather than the true kernel ("blind-ish");
* :func:`unsharp_mask` -- plain sharpening, no kernel at all.

The two true-kernel restorers are :mod:`meddeblur.restore.classical` (where the kernel convention
is described): they restore, and the ``--psf`` path uses them; this module only lists them. The
self-tuning Wiener deconvolves, too, on the image pad-tapered by :func:`meddeblur.physics.pad_taper_np`,
with margins for its Gaussian's support.

:data:`METHODS` lists the methods with their parameter grids; :func:`restore` dispatches by
name and :func:`tune` picks grid parameters on validation samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from meddeblur.metrics import psnr as _psnr
from meddeblur.physics import margin_for, pad_taper_np
from meddeblur.restore import registry
from meddeblur.restore.classical import as_image, finish, richardson_lucy, richardson_lucy_path

__all__ = [
    "unsupervised_wiener",
    "unsharp_mask",
    "MethodInfo",
    "METHODS",
    "restore",
    "tune",
]


def _gaussian_psf(sigma: float) -> np.ndarray:
    """Normalised 2-D Gaussian of std ``sigma`` on an odd grid of side 2 * ceil(3 sigma) + 1."""
    r = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    k = np.outer(g, g)
    return k / k.sum()


def unsupervised_wiener(image: np.ndarray, psf_sigma: float = 1.5, seed: int = 0) -> np.ndarray:
    """Self-tuning Wiener-Hunt deconvolution with a generic Gaussian PSF (not the true kernel).

    Wraps :func:`skimage.restoration.unsupervised_wiener`, a Gibbs sampler that estimates the
    noise and prior precisions itself, per channel on a padded copy of the image (see the
    module docstring). The sampler's random generator is seeded with ``seed``, so the output
    is deterministic. It runs 30 to 200 sampling iterations (each a few FFTs of the padded
    image), so it is the slowest method here: about 5.5 s per megapixel (RGB, 2-core CPU).
    Overestimating ``psf_sigma`` makes it amplify noise badly, so tune it on validation data.

    Args:
        image: (H, W, C) or (H, W) blurred image in ``[0, 1]``.
        psf_sigma: std in pixels of the assumed Gaussian PSF (tuned on validation data).
        seed: seed of the sampler's random generator.

    Returns:
        Restored image, float32 in ``[0, 1]``, same shape as ``image``.
    """
    # scikit-image is imported here: it is only an optional ([test]) dependency of the package.
    import skimage.restoration

    if psf_sigma <= 0:
        raise ValueError(f"psf_sigma must be positive, got {psf_sigma}")
    img, was_2d = as_image(image)
    psf = _gaussian_psf(psf_sigma)
    padded, crop = pad_taper_np(img, (margin_for(psf.shape[0]), margin_for(psf.shape[1])))
    out = np.empty_like(padded)
    for c in range(padded.shape[2]):
        # One generator per channel seeded from (seed, c): channels stay independent and the
        # result does not depend on how many channels were processed before.
        rng = np.random.default_rng([seed, c])
        out[..., c], _ = skimage.restoration.unsupervised_wiener(padded[..., c], psf, clip=False, rng=rng)
    return finish(out[crop], was_2d)


def unsharp_mask(image: np.ndarray, radius: float = 1.5, amount: float = 1.0) -> np.ndarray:
    """Unsharp masking: ``image + amount * (image - gaussian(image, radius))``, clipped.

    Wraps :func:`skimage.filters.unsharp_mask` (Gaussian std ``radius`` px, reflect borders).

    Returns:
        Sharpened image, float32 in ``[0, 1]``, same shape as ``image``.
    """
    import skimage.filters  # optional dependency, as in unsupervised_wiener

    img, was_2d = as_image(image)
    # Per channel, not channel_axis=-1: skimage <= 0.26 returns garbage for a negative
    # channel_axis (scikit-image issue #7264).
    out = np.stack(
        [
            skimage.filters.unsharp_mask(img[..., c], radius=radius, amount=amount, preserve_range=True)
            for c in range(img.shape[2])
        ],
        axis=-1,
    )
    return finish(out, was_2d)


@dataclass(frozen=True)
class MethodInfo:
    """One classical method: its function, whether it needs the true kernel, its grid.

    ``fn`` is called as ``fn(image, kernel, **params)`` when ``uses_kernel`` and as
    ``fn(image, **params)`` otherwise; ``grid`` holds the candidate ``params`` dicts in the
    order :func:`tune` tries them; ``label`` is the name to print in tables.
    """

    name: str
    fn: Callable[..., np.ndarray]
    uses_kernel: bool
    grid: tuple[dict[str, Any], ...]
    label: str


# The true-kernel restorers come from the registry (their names, functions and grids), the baselines are this module's own.
METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        *(
            MethodInfo(
                name=m.name, fn=registry.resolve(m.function), uses_kernel=True, grid=m.grid, label=f"{m.label} (true kernel)"
            )
            for m in registry.METHODS.values()
            if m.function
        ),
        MethodInfo(
            name="unsupervised_wiener",
            fn=unsupervised_wiener,
            uses_kernel=False,
            grid=tuple({"psf_sigma": v} for v in (0.75, 1.0, 1.5, 2.0, 3.0)),
            label="Unsupervised Wiener (Gaussian PSF)",
        ),
        MethodInfo(
            name="unsharp_mask",
            fn=unsharp_mask,
            uses_kernel=False,
            grid=tuple({"radius": r, "amount": a} for r in (1.0, 2.0, 3.0) for a in (0.5, 1.0, 2.0)),
            label="Unsharp mask",
        ),
    )
}


def _method(method: str) -> MethodInfo:
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown classical method {method!r}; choose from {', '.join(METHODS)}") from None


def restore(method: str, image: np.ndarray, kernel: np.ndarray | None, **params: Any) -> np.ndarray:
    """Run the classical method ``method`` (a key of :data:`METHODS`) on ``image``.

    ``kernel`` is the true blur kernel for methods that use one and is ignored by the
    others. Raises ValueError for an unknown method or a kernel method given ``kernel=None``.
    """
    info = _method(method)
    if not info.uses_kernel:
        return info.fn(image, **params)
    if kernel is None:
        raise ValueError(f"method {method!r} needs the true blur kernel, got kernel=None")
    return info.fn(image, kernel, **params)


def _psnr_db(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR of one pair with :func:`meddeblur.metrics.psnr` (TF-exact, float64)."""
    a = np.asarray(pred, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"restored and sharp shapes differ: {a.shape} vs {b.shape}")
    a = a.reshape(1, 1, *a.shape) if a.ndim == 2 else a.transpose(2, 0, 1)[None]
    b = b.reshape(1, 1, *b.shape) if b.ndim == 2 else b.transpose(2, 0, 1)[None]
    return float(_psnr(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(np.ascontiguousarray(b)))[0])


def tune(
    method: str,
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    grid: tuple[dict[str, Any], ...] | None = None,
) -> tuple[dict[str, Any], float]:
    """Choose the grid parameters of ``method`` that maximise mean PSNR over ``samples``.

    ``samples`` are (blurred, sharp, kernel) triples from the VALIDATION split -- never the
    test split, whose scores would otherwise be optimistically biased. ``kernel`` may be
    None for methods that do not use one. ``grid`` replaces the method's own grid. Deterministic;
    ties go to the first grid entry. Richardson-Lucy tries every iteration count in one run per
    sample (:func:`richardson_lucy_path`).

    Returns:
        (best params dict -- a copy, safe to modify -- and its mean PSNR in dB).
    """
    info = _method(method)
    grid = info.grid if grid is None else tuple(grid)
    if not samples:
        raise ValueError("tune needs at least one (blurred, sharp, kernel) sample")
    if not grid:
        raise ValueError("tune needs a non-empty grid")
    if info.fn is richardson_lucy and all(set(p) == {"iterations"} for p in grid):
        counts = tuple(int(p["iterations"]) for p in grid)
        per_sample = []
        for blurred, sharp, kernel in samples:
            if kernel is None:
                raise ValueError(f"method {method!r} needs the true blur kernel, got kernel=None")
            path = richardson_lucy_path(blurred, kernel, counts)
            per_sample.append({c: _psnr_db(path[c], sharp) for c in counts})
        scores = [float(np.mean([s[c] for s in per_sample])) for c in counts]
    else:
        scores = [
            float(np.mean([_psnr_db(restore(method, blurred, kernel, **params), sharp) for blurred, sharp, kernel in samples]))
            for params in grid
        ]
    best = int(np.argmax(scores))  # the first of equal maxima
    return dict(grid[best]), scores[best]
