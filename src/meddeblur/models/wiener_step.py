"""The data step of the kernel-conditioned restorer: exact FFT Wiener deconvolution at several learned strengths.

Given blurred images ``y`` and their PSF, the Wiener estimate ``X = conj(K) Y / (|K|² + nsr)`` is the exact
minimiser of ``‖k ∗ x − y‖² + nsr‖x‖²`` in the Fourier domain: no learned weights, any kernel size, and it is
where the physics of the blur enters. One regularisation strength is either too noisy (low ``nsr``: JPEG blocks
and noise blown up) or too soft (high ``nsr``); so several estimates at different strengths are handed to the
learned prior, which picks per pixel (the idea of DWDN's feature-space Wiener step and of multi-Wiener inputs).
The strengths are learned per branch as ``log nsr = a + b · log(σ̂ / 0.005)``, with ``σ̂`` the input's noise level
estimated by Immerkær's Laplacian-difference method: the "hyper-parameter net" of USRNet in its smallest form.

Boundaries follow the one rule of :mod:`meddeblur.physics.boundary`: the image is mirrored outwards (whole-sample
reflection), the outer part of the margin fades to the image mean so the periodic extension is smooth, and the result is
cropped back, the same padding the classical restorers use (:mod:`meddeblur.restore.classical`).

Kernels arrive as a *canvas*: a ``(N, H, W)`` plane the size of the image holding the (normalised) kernel with its
origin at ``(H // 2, W // 2)`` (:func:`meddeblur.physics.canvas.kernel_canvas`). One tensor per image keeps batching,
tiling and data loading unchanged whatever the kernel's size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from meddeblur.physics import canvas_otf, canvas_radius, margin_for, noise_level, pad_taper

__all__ = ["WienerStep"]

_SIGMA_REF = 0.005  # a typical noise level of 8-bit photographs (the hyper-parameters' reference point)


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
        self.log_nsr = nn.Parameter(
            torch.linspace(math.log(1e-3), math.log(1e-1), branches) if branches > 1 else torch.tensor([math.log(1e-2)])
        )
        self.noise_slope = nn.Parameter(torch.zeros(branches))

    @property
    def branches(self) -> int:
        return self.log_nsr.numel()

    def nsr(self, images: Tensor) -> Tensor:
        """(N, branches) regularisation strengths for these images."""
        sigma = noise_level(images.detach().float()).clamp(min=1e-4)
        return torch.exp(self.log_nsr[None, :] + self.noise_slope[None, :] * torch.log(sigma / _SIGMA_REF)[:, None])

    def forward(self, images: Tensor, canvas: Tensor) -> Tensor:
        n, _, h, w = images.shape
        if canvas.shape != (n, h, w):
            raise ValueError(f"kernel canvas must be shaped ({n}, {h}, {w}), got {tuple(canvas.shape)}")
        x = images.float()
        # The margin covers the widest kernel of the batch, as a kernel of side 2r + 1 would need.
        padded, (rows, cols) = pad_taper(x, margin_for(2 * canvas_radius(canvas) + 1))
        fh, fw = padded.shape[-2:]
        otf = canvas_otf(canvas.float(), (fh, fw))  # (N, 1, fh, fw // 2 + 1)
        spectrum = torch.fft.rfft2(padded)
        power = otf.real**2 + otf.imag**2
        numerator = otf.conj() * spectrum
        estimates = []
        for strength in self.nsr(x).unbind(1):
            filtered = numerator / (power + strength.view(n, 1, 1, 1))
            filtered[..., 0, 0] = spectrum[..., 0, 0]  # the kernel sums to 1: the mean passes unchanged
            estimates.append(torch.fft.irfft2(filtered, s=(fh, fw))[..., rows, cols])
        return torch.cat(estimates, dim=1).clamp(-0.5, 1.5).to(images.dtype)
