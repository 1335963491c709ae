"""Image quality metrics that reproduce TensorFlow's ``tf.image.psnr`` and ``tf.image.ssim``.

Both take a pair of images of one kind:

* torch tensors (N, C, H, W) → one value per image, shape (N,), so callers choose how to reduce over the
  batch; (C, H, W) → a 0-d tensor. uint8 and uint16 tensors are scaled by their range to ``[0, max_val]``.
* numpy arrays (H, W) or (H, W, C) → a float. uint8 and uint16 are scaled by their range; floats must be finite
  and lie in ``[0, max_val]``, else ``ValueError`` (:func:`meddeblur.io.pixels.unit_float`).

``max_val`` left out (None) means "the data lie in [0, 1]", and float tensors are checked for it (NaN passes, to
reach whatever watches the result; a tolerance of :data:`TOLERANCE` absorbs float rounding): images in 0..255 with
the default would otherwise give a confident, wrong number (−8 dB for a good pair), not an error. A ``max_val`` given
explicitly is the caller's statement of the range, and float tensors are then used as they are: the loss
(:mod:`meddeblur.losses`) scores raw network outputs that stray outside [0, 1] while training, and must see them so.

So an integer image gives the same PSNR and SSIM as the same image as floats in [0, 1]. Bad parameters
(``max_val``, ``filter_size``, ``sigma``, ``k1``, ``k2``) raise a ``ValueError`` naming the parameter.

SSIM follows ``tf.image.ssim`` exactly: a normalised 11x11 Gaussian window (sigma 1.5),
VALID filtering (no padding), biased (population) variances, the SSIM map averaged over
spatial positions per channel and then over channels. This equals scikit-image's
``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``
because scikit-image crops ``(win_size - 1) // 2`` pixels from each border before averaging,
which leaves exactly the positions where the window fits inside the image.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddeblur.io.pixels import INTEGER_RANGES, describe, unit_float

__all__ = ["psnr", "ssim", "psnr_ssim_numpy", "ReferenceScorer", "gaussian_kernel1d", "PSNR", "SSIM", "TOLERANCE", "PSNR_CAP"]

#: PSNR of identical images is +inf (as in TensorFlow); reports cap it so means stay finite.
PSNR_CAP = 100.0

#: How far outside [0, 1] a float tensor may stray with ``max_val`` left out: float32 rounding of a blur or a resize.
TOLERANCE = 1e-6


_TENSOR_RANGES = {torch.uint8: 255.0, torch.uint16: 65535.0}
_ACCEPTED = (
    "two numpy (H, W) or (H, W, C) uint8, uint16 or float arrays in [0, max_val], or two torch (N, C, H, W) "
    "or (C, H, W) tensors (float, uint8 or uint16)"
)


def _positive(name: str, value: object, integer: bool = False) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite number > 0 (a whole one with ``integer``)."""
    ok = (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
        and value > 0
        and (not integer or float(value).is_integer())
    )
    if not ok:
        kind = "a whole number" if integer else "a finite number"
        raise ValueError(f"{name}={value!r}: must be {kind} greater than 0")


def _tensor(x: Tensor, name: str, max_val: float, checked: bool = False) -> Tensor:
    """A float tensor as it is; uint8/uint16 scaled by their range to [0, max_val] (float64); anything else refused.

    ``checked``: ``max_val`` was left out, so a float tensor must lie in [0, 1] (module docstring).
    """
    if x.is_floating_point():
        if checked and x.numel():
            low, high = (float(v) for v in torch.aminmax(x.detach()))  # NaN gives NaN, which no comparison refuses
            if low < -TOLERANCE or high > 1.0 + TOLERANCE:
                raise ValueError(
                    f"{name}: float values must lie in [0, 1] (found {low:g}..{high:g}) unless max_val says their range; "
                    f"pass max_val=255.0 for 0..255 data, or scale them; got {describe(x)}"
                )
        return x
    scale = _TENSOR_RANGES.get(x.dtype)
    if scale is None:
        raise ValueError(
            f"{name}: dtype {str(x.dtype).replace('torch.', '')} is not supported; got {describe(x)}. Accepted: {_ACCEPTED}"
        )
    return x.to(torch.float64) * (max_val / scale)


def _pair(pred: object, target: object, max_val: float | None) -> tuple[Tensor, Tensor, bool, bool, float]:
    """(pred, target) as float (N, C, H, W) tensors, whether they came as numpy arrays, whether as single images, max_val.

    See the module docstring for what is accepted; the max_val returned is 1.0 where it was left out.
    """
    checked = max_val is None
    max_val = 1.0 if max_val is None else max_val
    _positive("max_val", max_val)
    if isinstance(pred, Tensor) and isinstance(target, Tensor):
        if pred.dim() not in (3, 4):
            raise ValueError(f"pred: expected images shaped (N, C, H, W) or (C, H, W), got shape {tuple(pred.shape)}")
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
        a, b = _tensor(pred, "pred", max_val, checked), _tensor(target, "target", max_val, checked)
        return (a[None], b[None], False, True, max_val) if pred.dim() == 3 else (a, b, False, False, max_val)
    if not (isinstance(pred, np.ndarray) and isinstance(target, np.ndarray)):
        raise ValueError(f"pred, target: got {describe(pred)} and {describe(target)}. Accepted: {_ACCEPTED}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"pred: expected an image shaped (H, W) or (H, W, C), got shape {pred.shape}")
    planes = []
    for name, x in (("pred", pred), ("target", target)):
        values = _float64(x, name, max_val)
        chw = (values[..., None] if values.ndim == 2 else values).transpose(2, 0, 1)
        planes.append(torch.from_numpy(np.ascontiguousarray(chw))[None])
    return planes[0], planes[1], True, True, max_val


def _float64(x: object, name: str, max_val: float = 1.0) -> np.ndarray:
    """A numpy image as float64 in [0, max_val]: integers scaled by their range, floats checked (module docstring)."""
    values = unit_float(x, name, _ACCEPTED, top=float(max_val)).astype(np.float64)  # checked; masked arrays refused
    scale = INTEGER_RANGES.get(np.asarray(x).dtype)
    if scale is not None:  # from the integers themselves, as the torch path scales them
        values = np.asarray(x, dtype=np.float64) * (max_val / scale)
    return values


def _result(values: Tensor, numpy: bool, single: bool) -> Tensor | float:
    """(N,) values as the caller gave images: a float for numpy, a 0-d tensor for one (C, H, W) tensor."""
    return float(values[0]) if numpy else (values[0] if single else values)


@overload
def psnr(pred: Tensor, target: Tensor, max_val: float | None = None) -> Tensor: ...
@overload
def psnr(pred: np.ndarray, target: np.ndarray, max_val: float | None = None) -> float: ...
def psnr(pred: Tensor | np.ndarray, target: Tensor | np.ndarray, max_val: float | None = None) -> Tensor | float:
    """Peak signal-to-noise ratio per image, as ``tf.image.psnr``.

    Args:
        pred, target: two (N, C, H, W) or (C, H, W) tensors, or two numpy (H, W[, C]) images (module docstring).
        max_val: dynamic range of float images (integer images are scaled to it by their own range); None: they
            lie in [0, 1], which is checked (module docstring).

    Returns:
        (N,) float64 tensor in dB (0-d for a (C, H, W) pair, a float for numpy images); ``+inf`` where an image
        equals its target (as TF).
    """
    a, b, numpy, single, max_val = _pair(pred, target, max_val)
    # float64 so the result agrees with scikit-image to ~1e-12 rather than float32's ~1e-5 dB.
    # MPS has no float64, so PSNR is computed on the CPU there.
    device = torch.device("cpu") if a.device.type == "mps" else a.device
    diff = a.detach().to(device, torch.float64) - b.detach().to(device, torch.float64)
    mse = diff.pow(2).mean(dim=(1, 2, 3))
    # log(0) = -inf, so identical images give +inf rather than an error, matching TF.
    return _result(20.0 * math.log10(max_val) - 10.0 * torch.log10(mse), numpy, single)


def gaussian_kernel1d(size: int, sigma: float, *, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Normalised 1-D Gaussian of length ``size`` centred on the middle sample, shape (size,).

    TF builds its 2-D window as ``softmax(-(x^2 + y^2) / (2 sigma^2))``, which is exactly the
    outer product of this kernel with itself, so filtering separably gives the same window.
    """
    # Built in float64 on the CPU (not every device has float64), then cast and moved.
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(device=device, dtype=dtype or torch.get_default_dtype())


def _valid_gaussian_filter(x: Tensor, kernel: Tensor) -> Tensor:
    """Depthwise separable VALID filter: (N, C, H, W) -> (N, C, H-k+1, W-k+1)."""
    c, k = x.shape[1], kernel.numel()
    kh = kernel.view(1, 1, k, 1).expand(c, 1, k, 1)
    kw = kernel.view(1, 1, 1, k).expand(c, 1, 1, k)
    return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)


@overload
def ssim(
    pred: Tensor,
    target: Tensor,
    max_val: float | None = None,
    filter_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor: ...
@overload
def ssim(
    pred: np.ndarray,
    target: np.ndarray,
    max_val: float | None = None,
    filter_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float: ...
def ssim(
    pred: Tensor | np.ndarray,
    target: Tensor | np.ndarray,
    max_val: float | None = None,
    filter_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor | float:
    """Structural similarity per image, as ``tf.image.ssim``; differentiable.

    Args:
        pred, target: two (N, C, H, W) or (C, H, W) tensors, or two numpy (H, W[, C]) images (module docstring).
        max_val: dynamic range of float images (integer images are scaled to it by their own range); None: they
            lie in [0, 1], which is checked (module docstring).
        filter_size: side of the Gaussian window (a whole number > 0); H and W must be at least this.
        sigma: standard deviation of the Gaussian window (> 0).
        k1, k2: stabilising constants (> 0), ``C1 = (k1 * max_val)^2``, ``C2 = (k2 * max_val)^2``.

    Returns:
        (N,) tensor in the dtype of a float ``pred`` (float64 for integer tensors; 0-d for a (C, H, W) pair), or a
        float for numpy images.
    """
    for name, value in (("sigma", sigma), ("k1", k1), ("k2", k2)):
        _positive(name, value)
    _positive("filter_size", filter_size, integer=True)
    filter_size = int(filter_size)
    x, y, numpy, single, max_val = _pair(pred, target, max_val)
    h, w = x.shape[-2:]
    if h < filter_size or w < filter_size:
        raise ValueError(f"SSIM needs images at least {filter_size}x{filter_size} (the filter size), got {h}x{w}")
    dtype = x.dtype
    y = y.to(dtype)
    c = x.shape[1]
    kernel = gaussian_kernel1d(filter_size, sigma, device=x.device, dtype=dtype)

    # One filtering pass over all five statistics instead of five separate convolutions.
    stats = _valid_gaussian_filter(torch.cat([x, y, x * x, y * y, x * y], dim=1), kernel)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(c, dim=1)

    c1 = (k1 * max_val) ** 2
    c2 = (k2 * max_val) ** 2
    # Same algebraic arrangement as TF's _ssim_helper (biased variances, no compensation).
    num0 = 2.0 * mu_x * mu_y
    den0 = mu_x * mu_x + mu_y * mu_y
    luminance = (num0 + c1) / (den0 + c1)
    cs = (2.0 * e_xy - num0 + c2) / (e_xx + e_yy - den0 + c2)
    ssim_map = luminance * cs
    return _result(ssim_map.mean(dim=(2, 3)).mean(dim=1), numpy, single)


class ReferenceScorer:
    """PSNR (dB) and SSIM of images against one ``target`` (H, W, C), equal to :func:`psnr` and :func:`ssim`.

    Images as :func:`psnr` takes numpy ones: uint8 or uint16 (scaled by their range) or float in ``[0, 1]``.

    The same TF-exact float64 arithmetic, with the separable VALID Gaussian filter done by scipy and the target's
    statistics computed once: torch's float64 depthwise convolution takes ~8 s per 1024×768 pair on a 2-core CPU,
    which made scoring, not restoring, the cost of evaluating at full resolution.

    >>> target = np.full((16, 16, 3), 0.5)
    >>> score = ReferenceScorer(target)
    >>> score(target)[1], round(score(target + 0.01)[0], 2)
    (1.0, 40.0)
    """

    KERNEL = gaussian_kernel1d(11, 1.5, dtype=torch.float64).numpy()
    C1, C2 = 0.01**2, 0.03**2

    def __init__(self, target: np.ndarray) -> None:
        self.target = _float64(target, "target")
        if self.target.ndim != 3 or min(self.target.shape[:2]) < len(self.KERNEL):
            raise ValueError(f"expected an (H, W, C) target of at least 11×11 pixels, got shape {self.target.shape}")
        self.stats = [(self._valid(y), self._valid(y * y)) for y in self.target.transpose(2, 0, 1)]

    @classmethod
    def _valid(cls, x: np.ndarray) -> np.ndarray:
        r = len(cls.KERNEL) // 2  # both passes along rows (contiguous), ~2× faster than along columns
        x = scipy.ndimage.correlate1d(x, cls.KERNEL, axis=1, mode="constant")[:, r:-r]
        x = scipy.ndimage.correlate1d(np.ascontiguousarray(x.T), cls.KERNEL, axis=1, mode="constant")[:, r:-r]
        return x.T

    def __call__(self, pred: np.ndarray) -> tuple[float, float]:
        a = _float64(pred, "pred")
        if a.shape != self.target.shape:
            raise ValueError(f"pred and target shapes differ: {a.shape} vs {self.target.shape}")
        mse = np.mean((a - self.target) ** 2)
        value = float(-10.0 * np.log10(mse)) if mse > 0 else float("inf")
        per_channel = []
        for x, y, (mu_y, e_yy) in zip(a.transpose(2, 0, 1), self.target.transpose(2, 0, 1), self.stats):
            mu_x, e_xx, e_xy = self._valid(x), self._valid(x * x), self._valid(x * y)
            num0 = 2.0 * mu_x * mu_y  # TF's _ssim_helper arrangement, as ssim() above
            den0 = mu_x * mu_x + mu_y * mu_y
            ssim_map = ((num0 + self.C1) / (den0 + self.C1)) * ((2.0 * e_xy - num0 + self.C2) / (e_xx + e_yy - den0 + self.C2))
            per_channel.append(ssim_map.mean())
        return value, float(np.mean(per_channel))


def psnr_ssim_numpy(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of one image pair shaped (H, W, C) or (H, W): uint8, uint16 or float in ``[0, 1]`` (:class:`ReferenceScorer`)."""
    a, b = np.asarray(pred), np.asarray(target)
    if a.shape != b.shape:
        raise ValueError(f"pred and target shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected an image shaped (H, W, C) or (H, W), got shape {a.shape}")
    return ReferenceScorer(b)(a)


class PSNR(nn.Module):
    """Module form of :func:`psnr`: (N, C, H, W) x 2 -> (N,)."""

    def __init__(self, max_val: float | None = None) -> None:
        super().__init__()
        self.max_val = max_val

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return psnr(pred, target, self.max_val)


class SSIM(nn.Module):
    """Module form of :func:`ssim`: (N, C, H, W) x 2 -> (N,)."""

    def __init__(
        self,
        max_val: float | None = None,
        filter_size: int = 11,
        sigma: float = 1.5,
        k1: float = 0.01,
        k2: float = 0.03,
    ) -> None:
        super().__init__()
        self.max_val, self.filter_size, self.sigma, self.k1, self.k2 = (
            max_val,
            filter_size,
            sigma,
            k1,
            k2,
        )

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return ssim(pred, target, self.max_val, self.filter_size, self.sigma, self.k1, self.k2)
