"""The data step of the kernel-conditioned restorer: exact FFT Wiener deconvolution at several learned strengths.

Given blurred images ``y`` and their PSF, the Wiener estimate ``X = conj(K) Y / (|K|² + nsr)`` is the exact
minimiser of ``‖k ∗ x − y‖² + nsr‖x‖²`` in the Fourier domain: no learned weights, any kernel size, and it is
where the physics of the blur enters. One regularisation strength is either too noisy (low ``nsr``: JPEG blocks
and noise blown up) or too soft (high ``nsr``); so several estimates at different strengths are handed to the
learned prior, which picks per pixel (the idea of DWDN's feature-space Wiener step and of multi-Wiener inputs).
The strengths are learned per branch as ``log nsr = a + b · log(σ̂ / 0.005)``, with ``σ̂`` the input's noise level
estimated by Immerkær's Laplacian-difference method: the "hyper-parameter net" of USRNet in its smallest form.

Boundaries are handled as in :mod:`meddeblur.evaluation.classical`: the image is mirrored outwards, the outer part
of the margin fades to the image mean so the periodic extension is smooth, and the result is cropped back.

Kernels arrive as a *canvas*: a ``(N, H, W)`` plane the size of the image holding the (normalised) kernel with its
origin at ``(H // 2, W // 2)`` (:func:`meddeblur.psf.canvas.kernel_canvas`). One tensor per image keeps batching, tiling and data loading
unchanged whatever the kernel's size.
"""

from __future__ import annotations

import math

import scipy.fft
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddeblur.psf.canvas import canvas_radius

__all__ = ["WienerStep", "pad_taper", "noise_level"]

_SIGMA_REF = 0.005  # a typical noise level of 8-bit photographs (the hyper-parameters' reference point)


def _extend(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """Mirror padding of any width: reflect as far as the image allows, then repeat the border."""
    h, w = x.shape[-2:]
    left, right, top, bottom = pad
    first = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
    x = F.pad(x, first, mode="reflect") if any(first) else x
    rest = tuple(p - f for p, f in zip(pad, first))
    return F.pad(x, rest, mode="replicate") if any(rest) else x


def _fade(n: int, before: int, after: int, device: torch.device) -> Tensor:
    # 1 inside the image and across the first third of each margin, then a raised cosine down to 0 at the far end.
    idx = torch.arange(n, dtype=torch.float32, device=device)
    dist = torch.clamp(torch.maximum(before - idx, idx - (n - after - 1)), min=0.0)
    side = torch.where(idx < before, float(before), float(after))
    start = side / 3.0
    t = torch.clamp((dist - start) / torch.clamp(side - start, min=1.0), 0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


# The torch twin of meddeblur.evaluation.classical's numpy padding: batched, on the tensors' device, differentiable.
def pad_taper(images: Tensor, margin: int) -> tuple[Tensor, tuple[slice, slice]]:
    """(N, C, H, W) → (N, C, fh, fw) mirrored by ``margin`` per side (more at the bottom/right up to a fast FFT size),
    fading to the per-image, per-channel mean; and the (rows, columns) slices that crop the image back."""
    h, w = images.shape[-2:]
    fh = scipy.fft.next_fast_len(h + 2 * margin, real=True)
    fw = scipy.fft.next_fast_len(w + 2 * margin, real=True)
    padded = _extend(images, (margin, fw - w - margin, margin, fh - h - margin))
    mean = images.mean(dim=(-2, -1), keepdim=True)
    weight = _fade(fh, margin, fh - h - margin, images.device)[:, None] * _fade(fw, margin, fw - w - margin, images.device)[None, :]
    return mean + (padded - mean) * weight, (slice(margin, margin + h), slice(margin, margin + w))


def noise_level(images: Tensor) -> Tensor:
    """(N,) noise standard deviation of (N, C, H, W) images in [0, 1] (Immerkær 1996, on the channel mean)."""
    grey = images.mean(dim=1, keepdim=True)
    mask = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=grey.dtype, device=grey.device)
    response = F.conv2d(grey, mask[None, None]).abs()
    h, w = images.shape[-2:]
    return response.sum(dim=(1, 2, 3)) * math.sqrt(math.pi / 2) / (6.0 * (h - 2) * (w - 2))


class WienerStep(nn.Module):
    """(N, C, H, W) blurred images and (N, H, W) kernel canvases → (N, branches·C, H, W) Wiener estimates.

    Branch ``i`` regularises with ``nsr_i = exp(a_i + b_i · log(σ̂ / 0.005))`` (``a`` starts at log 1e-3 … log 1e-1,
    ``b`` at 0). The zero frequency is never regularised, so the mean brightness is kept. Estimates are clamped to
    [−0.5, 1.5]: deconvolution overshoots, and the prior needs bounded inputs.
    """

    def __init__(self, branches: int = 3) -> None:
        super().__init__()
        if branches < 1:
            raise ValueError(f"branches must be at least 1, got {branches}")
        self.log_nsr = nn.Parameter(torch.linspace(math.log(1e-3), math.log(1e-1), branches) if branches > 1
                                    else torch.tensor([math.log(1e-2)]))
        self.noise_slope = nn.Parameter(torch.zeros(branches))

    @property
    def branches(self) -> int:
        return self.log_nsr.numel()

    def nsr(self, images: Tensor) -> Tensor:
        """(N, branches) regularisation strengths for these images."""
        sigma = noise_level(images.detach().float()).clamp(min=1e-4)
        return torch.exp(self.log_nsr[None, :] + self.noise_slope[None, :] * torch.log(sigma / _SIGMA_REF)[:, None])

    def forward(self, images: Tensor, canvas: Tensor) -> Tensor:
        n, c, h, w = images.shape
        if canvas.shape != (n, h, w):
            raise ValueError(f"kernel canvas must be shaped ({n}, {h}, {w}), got {tuple(canvas.shape)}")
        x = images.float()
        margin = max(16, 3 * (2 * canvas_radius(canvas) + 1))
        padded, (rows, cols) = pad_taper(x, margin)
        fh, fw = padded.shape[-2:]
        big = F.pad(canvas.float(), (0, fw - w, 0, fh - h)).roll((-(h // 2), -(w // 2)), dims=(-2, -1))
        otf = torch.fft.rfft2(big)[:, None]  # (N, 1, fh, fw // 2 + 1)
        spectrum = torch.fft.rfft2(padded)
        power = otf.real**2 + otf.imag**2
        numerator = otf.conj() * spectrum
        estimates = []
        for i, strength in enumerate(self.nsr(x).unbind(1)):
            filtered = numerator / (power + strength.view(n, 1, 1, 1))
            filtered[..., 0, 0] = spectrum[..., 0, 0]  # the kernel sums to 1: the mean passes unchanged
            estimates.append(torch.fft.irfft2(filtered, s=(fh, fw))[..., rows, cols])
        return torch.cat(estimates, dim=1).clamp(-0.5, 1.5).to(images.dtype)
