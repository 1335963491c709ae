"""Free-form (non-parametric) blur kernels estimated from the image: coarse-to-fine MAP with an L0 gradient prior.

Camera shake blurs along a curved path that no Gaussian, disk or line describes; :func:`estimate_kernel` finds such
a kernel sample by sample. The approach is the one of Xu et al. (2013, "Unnatural L0 sparse representation") and Pan
et al. (2014/2017, L0-regularised deblurring), written here from their papers:

* **Alternate two easy problems.** Blind deconvolution ``y = k ⊛ x + n`` is ill-posed jointly, but each half is easy:
  with ``k`` fixed, a *sharp-edge* latent image ``x`` (:func:`latent_image`); with ``x`` fixed, the kernel
  (:func:`meddeblur.psf.freeform_kernel.kernel_from_gradients`). The latent is not the restored photograph: its L0
  prior on gradients, ``min ‖k ⊛ x − y‖² + λ ‖∇x‖₀``, keeps only a few strong, step-like edges and flattens
  texture and noise, which is what makes the kernel fit well posed (a blurry ``x`` would explain ``y`` with a delta
  kernel: the "no-blur" solution that plain MAP with natural-image priors falls into, Levin et al. 2009).
  ``λ`` starts large (only the strongest edges) and falls with each iteration, as Pan et al. do; its start
  (5·10⁻⁴) is far below theirs for text: a dermoscopy photograph's most informative edges are thin, low-contrast
  hairs, which a larger ``λ`` flattens away.
* **Half-quadratic splitting with FFTs.** The L0 step is solved exactly per penalty weight ``β``: an auxiliary
  gradient field ``g`` is ``∇x`` where ``|∇x|² ≥ λ/β``, else 0 (a hard threshold), and ``x`` is then the closed-form
  quadratic minimiser in the Fourier domain; ``β`` grows geometrically until ``g ≈ ∇x``. Every step is a handful of
  FFTs on the pad-tapered plane (:func:`meddeblur.physics.pad_taper_np`, the one boundary rule of the package).
* **Kernel by constrained least squares on gradients, then projected.** Non-negative, on its support, with small
  Tikhonov and smoothness terms (projected gradient steps, FFTs for the operator); then small values and weak
  components pruned, sum one, centred (:mod:`meddeblur.psf.freeform_kernel`, which says what was measured).
* **Coarse to fine.** At full resolution a 31-px kernel has 961 unknowns and many local minima; at a scale where
  it spans ~5 px it has 25 and its rough path is found easily. Scales step by √2; each passes its kernel, enlarged,
  to the next as the start.
* **Where to start.** ``start`` (a :class:`~meddeblur.psf.estimate.BlurEstimate` or a
  :class:`~meddeblur.psf.PSF`, e.g. the parametric estimate) sets the support — its kernel's side, with room to
  spare, since a shake path is longer than its second moments say — and the first scale's kernel: its family,
  size and direction, shrunk to that scale. Without ``start``, ``size`` sets the support and the first kernel is
  a delta. With neither, the parametric estimator (:func:`meddeblur.psf.estimate.estimate_psf`) gives ``start``.
* **Large images.** The kernel is a property of the whole photograph (one blur), and edges carry all the
  information, so it is estimated on one square window (``window`` px, 384 by default) — the one with the most
  gradient energy — rather than on the whole frame: a 1024×768 photograph then costs seconds. Grey only
  (:func:`meddeblur.psf.spectrum.grey_of`): the blur is the same in every channel.

* **When the parametric kernel suffices.** Gaussian, defocus and linear-motion blurs are found more precisely by
  the parametric estimator than sample by sample. When the free-form kernel lies within ``keep_start``
  (normalised L2, :func:`~meddeblur.psf.freeform_kernel.kernel_distance`) of the start, the start explains the image
  as well and is returned instead (``extra["chosen"] == "start"``); the threshold was chosen on ISIC photographs
  (``benchmarks/results/psf_freeform.md``).

Everything is deterministic (numpy FFTs, no random draws). The result is a :class:`~meddeblur.psf.PSF` whose
``params`` say ``family="freeform"`` (or the start's own, when kept), and whose ``extra`` records the window, the
scales, the settings, the distance to the start and which was chosen.

>>> import numpy as np
>>> from meddeblur.psf.freeform import estimate_kernel
>>> estimate_kernel(np.zeros((64, 64)), size=9)
Traceback (most recent call last):
...
meddeblur.errors.InvalidOption: image: no edges to estimate a blur kernel from (the 64×64 image is flat); a kernel can only be estimated from an image with some contrast
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.fft
import torch
import torch.nn.functional as F

from meddeblur.errors import InvalidOption
from meddeblur.physics import margin_for, otf_np, pad_taper_np
from meddeblur.psf.freeform_kernel import (
    centre_subpixel,
    derivative_otfs,
    kernel_distance,
    kernel_from_gradients,
    project,
    resize_kernel,
)
from meddeblur.psf.kernel import PSF, psf_from_array
from meddeblur.psf.spectrum import grey_of

if TYPE_CHECKING:
    from meddeblur.psf.estimate import BlurEstimate

__all__ = [
    "MAX_SIZE",
    "MIN_SIZE",
    "WINDOW",
    "WINDOWS",
    "KEEP_START",
    "estimate_kernel",
    "latent_image",
    "edge_windows",
    "support_of",
]

#: The largest kernel side estimated, px (the longest shake the degradations draw by default is 21 px).
MAX_SIZE = 75
#: The smallest kernel side: 3 px (a 1-px kernel has nothing to estimate).
MIN_SIZE = 3
#: Side of the square window the kernel is estimated on, px (smaller images: the whole image).
WINDOW = 384
#: How many edge-richest windows the kernel is fitted on together (two measured no better than one on ISIC).
WINDOWS = 1
#: Below this relative L2 distance between the free-form kernel and the start, the start is returned; below
#: :data:`KEEP_GAUSS` for a Gaussian start. Measured on ISIC (benchmarks/results/psf_freeform.md): a linear motion's
#: free-form kernel lies 0.63–0.67 from its (exact) motion start and restores 1–3.5 dB worse; a Gaussian's lies
#: 0.23–0.37 from its start; camera shake's 0.5–1.0 from the Gaussian of its moments, which the parametric
#: estimator reports for it, and there the free-form kernel restores better. A Gaussian start is therefore kept
#: only when closer: it may stand for a shake.
KEEP_START = 0.75
#: The :data:`KEEP_START` of a Gaussian start.
KEEP_GAUSS = 0.5
_LAM_MIN = 1e-4  # the L0 weight falls by 1.1 an iteration, to no less than this
_COARSEST = 5  # kernel side at the first scale, px
_STEP = math.sqrt(2.0)  # ratio between scales
_FLAT = 2e-3  # an image whose 99.9th-percentile gradient is below this has no edges to read a blur from
_SLACK = 1.5  # the support is this times the start kernel's side (a shake path is longer than its moments say)


def keeps_start(distance: float, family: str | None, keep_start: float = KEEP_START) -> bool:
    """Whether :func:`estimate_kernel` returns the start (of parametric ``family``) rather than a free-form kernel that
    lies ``distance`` from it (see :data:`KEEP_START`)."""
    return distance < (min(keep_start, KEEP_GAUSS) if family == "gauss" else keep_start)


def _odd(value: float, low: int = MIN_SIZE) -> int:
    n = max(low, round(value))
    return n if n % 2 else n + 1


def support_of(start: BlurEstimate | PSF | None, size: int | None) -> tuple[int, np.ndarray | None]:
    """(kernel side, start kernel or None) from ``start`` and ``size`` as :func:`estimate_kernel` takes them."""
    from meddeblur.psf.estimate import BlurEstimate

    if size is not None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
            raise InvalidOption(
                f"size={size!r}: the kernel side must be an integer from {MIN_SIZE} to {MAX_SIZE} px, e.g. 25",
                value=size,
                option="size",
            )
        size = int(size) | 1  # odd: the middle sample is the origin
    if start is None:
        return (int(size) if size is not None else 0), None
    if isinstance(start, BlurEstimate):
        psf = start.psf
    elif isinstance(start, PSF):
        psf = start
    else:
        raise InvalidOption(
            f"start: expected a BlurEstimate (estimate_psf's result), a PSF or None, got {type(start).__name__}",
            value=start,
            option="start",
        )
    kernel = psf.kernel
    if size is None:
        size = min(_odd(_SLACK * max(kernel.shape) + 2), MAX_SIZE)
    return size, kernel


def edge_windows(grey: np.ndarray, side: int, count: int = 1, guard: int = 8) -> list[tuple[int, int]]:
    """(row, column) top-left corners of up to ``count`` ``side``-px squares of ``grey`` with the most gradient
    energy, richest first, each at least half a side away from the others.

    Gradients are clipped at their 99th percentile (many edges beat one extreme line) and ignored within ``guard`` px
    of the frame: photographs often carry a black border line or a vignette's rim there, not blurred like the scene.
    """
    h, w = grey.shape
    magnitude = np.zeros((h, w))
    magnitude[:, :-1] += np.diff(grey, axis=1) ** 2
    magnitude[:-1, :] += np.diff(grey, axis=0) ** 2
    energy = np.minimum(magnitude, np.percentile(magnitude, 99.0))
    g = min(guard, max(0, (min(h, w) - side) // 2))
    if g:
        energy[:g], energy[-g:], energy[:, :g], energy[:, -g:] = 0.0, 0.0, 0.0, 0.0
    table = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    stride = max(1, side // 8)
    rows = np.unique(np.r_[np.arange(0, h - side + 1, stride), h - side])
    cols = np.unique(np.r_[np.arange(0, w - side + 1, stride), w - side])
    r, c = rows[:, None], cols[None, :]
    sums = table[r + side, c + side] - table[r, c + side] - table[r + side, c] + table[r, c]
    chosen: list[tuple[int, int]] = []
    while len(chosen) < count and np.isfinite(sums).any():
        i, j = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(sums), sums, -np.inf))), sums.shape)
        top, left = int(rows[i]), int(cols[j])
        chosen.append((top, left))
        overlap = (np.abs(rows[:, None] - top) < side // 2) & (np.abs(cols[None, :] - left) < side // 2)
        sums = np.where(overlap, np.nan, sums)
    return chosen


def latent_image(
    y_hat: np.ndarray, k_hat: np.ndarray, shape: tuple[int, int], lam: float, beta_max: float = 1e4, kappa: float = 2.0
) -> np.ndarray:
    """The sharp-edge latent image on a (fh, fw) plane: ``argmin ‖k ⊛ x − y‖² + lam ‖∇x‖₀`` by half-quadratic splitting.

    ``y_hat`` and ``k_hat`` are the rfft2 of the padded blurred plane and the kernel's OTF on it. ``β`` runs from
    ``2 lam`` to ``beta_max`` by factors of ``kappa`` (see the module docstring).
    """
    dx, dy = derivative_otfs(shape)
    data = np.conj(k_hat) * y_hat
    k_power = k_hat.real**2 + k_hat.imag**2
    d_power = dx.real**2 + dx.imag**2 + dy.real**2 + dy.imag**2
    x_hat = y_hat
    beta = 2.0 * lam
    while beta < beta_max:
        gx = scipy.fft.irfft2(x_hat * dx, s=shape, workers=-1)
        gy = scipy.fft.irfft2(x_hat * dy, s=shape, workers=-1)
        weak = gx**2 + gy**2 < lam / beta
        gx[weak], gy[weak] = 0.0, 0.0
        prior = np.conj(dx) * scipy.fft.rfft2(gx, workers=-1) + np.conj(dy) * scipy.fft.rfft2(gy, workers=-1)
        x_hat = (data + beta * prior) / (k_power + beta * d_power)
        beta *= kappa
    return scipy.fft.irfft2(x_hat, s=shape, workers=-1)


def _downscale(grey: np.ndarray, factor: float) -> np.ndarray:
    if factor >= 1.0:
        return grey
    h, w = grey.shape
    size = (max(8, round(h * factor)), max(8, round(w * factor)))
    tensor = torch.from_numpy(np.ascontiguousarray(grey))[None, None]
    return F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()


def _interior_mask(shape: tuple[int, int], crop: tuple[slice, slice], inset: int) -> np.ndarray:
    """1 on the image (less ``inset`` px per side), 0 on the pad-taper margin, a short raised-cosine ramp between."""
    masks = []
    for n, span in zip(shape, crop):
        lo, hi = span.start + inset, span.stop - inset
        ramp = max(2, inset)
        t = np.arange(n, dtype=np.float64)
        dist = np.minimum(t - lo, hi - 1 - t)
        masks.append(np.clip(0.5 * (1.0 + np.sin(np.pi * np.clip(dist / ramp, -0.5, 0.5))), 0.0, 1.0))
    return masks[0][:, None] * masks[1][None, :]


def _scale(windows: list[np.ndarray], kernel: np.ndarray, iterations: int, lam: float, gamma: float, smooth: float) -> np.ndarray:
    """``iterations`` alternations (latents, kernel) at one scale, λ falling from ``lam``; returns the kernel.

    ``windows``: equally sized grey windows, one latent image each, one kernel for all (their fits add up)."""
    size = kernel.shape[0]
    planes, crop = [], (slice(0), slice(0))
    for y in windows:
        padded, crop = pad_taper_np(y[..., None], margin_for(size))
        planes.append(padded[..., 0])
    shape = (planes[0].shape[0], planes[0].shape[1])
    spectra = [scipy.fft.rfft2(plane, workers=-1) for plane in planes]
    mask = _interior_mask(shape, crop, size // 2 + 1)
    for i in range(iterations):
        k_hat = otf_np(kernel, shape)
        pairs = [(latent_image(y_hat, k_hat, shape, lam), plane) for y_hat, plane in zip(spectra, planes)]
        # Centred (by whole samples) only after the last iteration of a scale: re-centring every time would make
        # latent and kernel chase each other by a pixel back and forth.
        kernel = project(kernel_from_gradients(pairs, mask, kernel, gamma, smooth), centre=i == iterations - 1)
        lam = max(lam / 1.1, _LAM_MIN)
    return kernel


def _check_number(name: str, value: object, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and low <= value <= high):
        raise InvalidOption(f"{name}={value!r}: must be a number from {low:g} to {high:g}", value=value, option=name)
    return float(value)


def _grey(image: np.ndarray | torch.Tensor) -> np.ndarray:
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise InvalidOption(
            f"image: expected a numpy (H, W) / (H, W, C) or torch (C, H, W) image, got {type(image).__name__}",
            value=type(image).__name__,
            option="image",
        )
    if image.ndim not in (2, 3) or (isinstance(image, np.ndarray) and not np.issubdtype(image.dtype, np.floating)):
        raise InvalidOption(
            f"image: expected a float (H, W) or (H, W, C) image in [0, 1], got {image.dtype} {tuple(image.shape)}",
            value=tuple(image.shape),
            option="image",
        )
    grey = grey_of(image).double().numpy()
    if not np.isfinite(grey).all():
        raise InvalidOption("image: contains NaN or infinite values; pass finite values in [0, 1]", value="nan", option="image")
    return grey


def estimate_kernel(
    image: np.ndarray | torch.Tensor,
    start: BlurEstimate | PSF | None = None,
    *,
    size: int | None = None,
    window: int = WINDOW,
    windows: int = WINDOWS,
    iterations: int = 10,
    lam: float = 5e-4,
    gamma: float = 1e-3,
    smooth: float = 0.1,
    keep_start: float = KEEP_START,
) -> PSF:
    """The blur kernel of ``image`` as a free-form :class:`~meddeblur.psf.PSF` (see the module docstring).

    ``image``: numpy (H, W) / (H, W, C) or torch (C, H, W), floats in [0, 1]. ``start``: the parametric estimate (a
    :class:`~meddeblur.psf.estimate.BlurEstimate` or a PSF) whose kernel sets the support and the first scale;
    ``size`` (odd px, 3–75) overrides the support; with neither, :func:`~meddeblur.psf.estimate.estimate_psf` is
    run first. ``window``: side of the edge-richest square estimated on (64–1024 px); ``windows``: how many such
    squares one kernel is fitted to (1–16; two measured no better than one on ISIC, at 1.5× the time). ``iterations`` per scale,
    ``lam`` the first L0 weight of each scale, ``gamma`` and ``smooth`` the relative weights of ‖k‖² and ‖∇k‖² in
    the kernel fit. The defaults were chosen on ISIC photographs (``benchmarks/psf_freeform.py``): a larger ``lam``
    flattens the thin hairs that carry most of a dermoscopy image's edge information; ``smooth`` = 0 lets noise
    break a shake path into dots.
    Raises :class:`~meddeblur.errors.InvalidOption` for a bad argument, an image too small for the kernel, a flat
    image or one with NaN.
    """
    from meddeblur.psf.estimate import BlurEstimate  # here: it loads the estimator network's module

    grey = _grey(image)
    side, start_kernel = support_of(start, size)
    start_psf = start.psf if isinstance(start, BlurEstimate) else start
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or not 64 <= window <= 1024:
        raise InvalidOption(
            f"window={window!r}: must be an integer from 64 to 1024 px, e.g. {WINDOW}", value=window, option="window"
        )
    if isinstance(windows, bool) or not isinstance(windows, (int, np.integer)) or not 1 <= windows <= 16:
        raise InvalidOption(
            f"windows={windows!r}: must be an integer from 1 to 16, e.g. {WINDOWS}", value=windows, option="windows"
        )
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or not 1 <= iterations <= 50:
        raise InvalidOption(
            f"iterations={iterations!r}: must be an integer from 1 to 50, e.g. 10", value=iterations, option="iterations"
        )
    lam = _check_number("lam", lam, 1e-5, 1.0)
    gamma = _check_number("gamma", gamma, 0.0, 100.0)
    smooth = _check_number("smooth", smooth, 0.0, 100.0)
    keep_start = _check_number("keep_start", keep_start, 0.0, 10.0)
    h, w = grey.shape
    need = max(64, 4 * max(side, MIN_SIZE))
    if min(h, w) < need:
        raise InvalidOption(
            f"image: {w}×{h} is too small to estimate a {max(side, MIN_SIZE)}-px kernel (both sides must be ≥ {need} px); "
            "pass a larger image or a smaller size",
            value=(h, w),
            option="image",
        )
    gx, gy = np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0))
    if max(float(np.percentile(gx, 99.9)), float(np.percentile(gy, 99.9))) < _FLAT:
        raise InvalidOption(
            f"image: no edges to estimate a blur kernel from (the {w}×{h} image is flat); "
            "a kernel can only be estimated from an image with some contrast",
            value=(h, w),
            option="image",
        )
    if side == 0:  # neither start nor size: the parametric estimate starts it
        from meddeblur.psf.estimate import estimate_psf

        start_psf = estimate_psf(image).psf
        side, start_kernel = support_of(start_psf, None)
    square = min(int(window), h, w)
    corners = edge_windows(grey, square, windows)
    crops = [grey[top : top + square, left : left + square] for top, left in corners]
    count = max(1, math.ceil(math.log(side / _COARSEST) / math.log(_STEP)) + 1) if side > _COARSEST else 1
    factors = [min(1.0, _STEP ** -(count - 1 - i)) for i in range(count)]
    sizes = [_odd(side * f) for f in factors[:-1]] + [side]
    if start_kernel is None:
        kernel = np.zeros((sizes[0], sizes[0]))
        kernel[sizes[0] // 2, sizes[0] // 2] = 1.0
    else:
        kernel = resize_kernel(start_kernel, factors[0], sizes[0])
    for i, (factor, n) in enumerate(zip(factors, sizes)):
        if i:
            kernel = resize_kernel(kernel, factor / factors[i - 1], n)
        kernel = _scale([_downscale(crop, factor) for crop in crops], kernel, iterations, lam, gamma, smooth)
    kernel = centre_subpixel(kernel)
    extra: dict[str, Any] = {
        "estimated": "freeform",
        "windows": [{"top": top, "left": left, "side": square} for top, left in corners],
        "scales": count,
        "settings": {"iterations": int(iterations), "lam": lam, "gamma": gamma, "smooth": smooth, "keep_start": keep_start},
        "chosen": "freeform",
    }
    if start_kernel is not None:
        distance = kernel_distance(kernel, start_kernel)
        extra["distance_to_start"] = round(distance, 4)
        if start_psf is not None and keeps_start(distance, start_psf.params.get("family"), keep_start):
            # The free-form kernel agrees with the start within its own estimation noise: the start explains the
            # image as well and carries none of that noise (Gaussian, defocus and linear motion are found better
            # by the parametric estimator; benchmarks/results/psf_freeform.md).
            return PSF(
                start_psf.kernel, start_psf.source, dict(start_psf.params), {**start_psf.extra, **extra, "chosen": "start"}
            )
    return psf_from_array(kernel, "freeform", params={"family": "freeform", "size": side}, extra=extra)
