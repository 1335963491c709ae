"""The forward blur in the image domain: what a blur kernel does to a sharp image.

:func:`blur` is the blur model of the synthetic degradations, of the consistency check (re-blurring a restoration)
and of the benchmarks: true convolution (not correlation, which matters for asymmetric motion and shake kernels)
of (N, C, H, W) images with an odd (k, k) kernel centred on its middle sample, the output the size of the input.

Its border is the same mirror as :mod:`meddeblur.physics.boundary`'s pad-taper (``cb|abc|ba``, reflect), without the
fade: a forward blur simulates a camera looking at a scene that goes on past the frame; pad-taper's fade exists to make
an *inverse* filter's periodic extension smooth. Small kernels
convolve directly (depthwise ``conv2d``), large ones through the FFT, where that is faster.

>>> import torch
>>> x = torch.rand(1, 3, 16, 16)
>>> bool(torch.allclose(blur(x, torch.ones(1, 1)), x))   # a delta kernel changes nothing
True
"""

from __future__ import annotations

import scipy.fft
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["blur", "check_images", "work_dtype"]

# Kernel size above which FFT convolution beats direct depthwise conv2d (measured on 256x256).
_FFT_ABOVE_CPU, _FFT_ABOVE_GPU = 7, 15


def check_images(images: Tensor) -> None:
    """ValueError unless ``images`` is a floating (N, C, H, W) tensor."""
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"expected float images shaped (N, C, H, W), got {images.dtype} {tuple(images.shape)}")


def work_dtype(images: Tensor) -> torch.dtype:
    """The dtype to compute in: the images' own when float32/64, else float32."""
    # Half precision lacks the mantissa for 8-bit rounding and FFTs of arbitrary size.
    return images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32


def blur(images: Tensor, kernel: Tensor, method: str = "auto") -> Tensor:
    """Convolve (N, C, H, W) images with a (k, k) kernel or one (N, k, k) kernel per image, k odd.

    Reflect boundaries (replicate when the image is smaller than k // 2). ``method`` is
    "direct" (depthwise conv2d), "fft" (torch.fft), or "auto": FFT for k > 7 on the CPU, k > 15
    elsewhere. Linear, no clamping, no normalisation of the kernel; the result has the images' dtype.
    """
    check_images(images)
    n, c, h, w = images.shape
    if kernel.dim() == 2:
        kernel = kernel[None]
    k = kernel.shape[-1]
    if kernel.dim() != 3 or kernel.shape[0] not in (1, n) or kernel.shape[1] != k or k % 2 == 0:
        raise ValueError(f"kernel must be (k, k) or ({n}, k, k) with k odd, got {tuple(kernel.shape)}")
    if method not in ("auto", "direct", "fft"):
        raise ValueError(f"method must be 'auto', 'direct' or 'fft', got {method!r}")
    dtype = work_dtype(images)
    x = images.to(dtype)
    kernel = kernel.to(x.device, dtype)
    p = k // 2
    if p:
        x = F.pad(x, (p, p, p, p), mode="reflect" if p < h and p < w else "replicate")
    if method == "fft" or (method == "auto" and k > (_FFT_ABOVE_CPU if x.device.type == "cpu" else _FFT_ABOVE_GPU)):
        out = _conv_fft(x, kernel, h, w)
    else:
        weight = kernel.flip(-1, -2)[:, None]  # conv2d correlates; the flip makes it a convolution
        if weight.shape[0] == 1:
            out = F.conv2d(x, weight.expand(c, 1, k, k), groups=c)
        else:
            out = F.conv2d(x.reshape(1, n * c, h + 2 * p, w + 2 * p), weight.repeat_interleave(c, 0), groups=n * c)
            out = out.reshape(n, c, h, w)
    return out.to(images.dtype)


def _conv_fft(padded: Tensor, kernel: Tensor, h: int, w: int) -> Tensor:
    """Circular convolution of the padded images; the crop keeps only the wrap-free part."""
    # Not operator.otf: that one normalises the kernel, and blur is linear in an unnormalised kernel too.
    k = kernel.shape[-1]
    p = k // 2
    fh = scipy.fft.next_fast_len(padded.shape[-2], real=True)
    fw = scipy.fft.next_fast_len(padded.shape[-1], real=True)
    # Kernel centre moved to the origin, so that output pixel i sums inputs i - p .. i + p.
    kpad = F.pad(kernel, (0, fw - k, 0, fh - k)).roll((-p, -p), dims=(-2, -1))
    spectrum = torch.fft.rfft2(padded, s=(fh, fw)) * torch.fft.rfft2(kpad)[:, None]
    return torch.fft.irfft2(spectrum, s=(fh, fw))[..., p : p + h, p : p + w]
