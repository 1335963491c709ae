"""Plug-and-play restoration: half-quadratic splitting between the exact data step and a learned denoiser.

Given blurred images ``y`` and their kernel ``k``, half-quadratic splitting (HQS) alternates, for ``i = 1 … n``,
starting from ``x = y``::

    z ← D(x, σᵢ)                              (a Gaussian denoiser told the noise level σᵢ: the prior)
    x ← argmin ‖k ⊛ x − y‖² + αᵢ ‖x − z‖²      (closed form in the Fourier domain: meddeblur.physics.DataStep)

as in DPIR (Zhang et al., TPAMI 2021) and USRNet, which run the two steps in the other order and so end on the
denoiser. Ending on the data step keeps what the photograph's own data say: on nearly noise-free 8-bit inputs the
last denoiser pass only smoothed away fine texture the data step had restored (measured: +0.5–0.7 dB on
validation crops, ``benchmarks/pnp.py``). The physics does the deblurring exactly, any kernel, any size;
the denoiser only knows what photographs look like (:mod:`meddeblur.models.denoiser`), so calibrated, measured and
estimated PSFs all work without retraining.

Schedule (DPIR's): σᵢ falls geometrically from ``sigma_start`` to the image's noise level ``σₙ``, and
``αᵢ = weight · σₙ² / σᵢ²`` grows with it: early iterations trust the prior (the data step alone would blow up
noise), the last ones fit the data. ``σₙ`` is the input's estimated noise level (Immerkær, on the tile) but never
below ``noise_floor`` (3 levels): the estimate reads JPEG-compressed noise far too low (compression removes the
fine-grained part it measures, and leaves correlated error that deconvolution amplifies), and an 8-bit photograph
carries at least its rounding error; a prior told "no noise" would change nothing. The floor and ``weight`` were
chosen on validation crops (``benchmarks/results/pnp.md``): lower values gain up to 0.4 dB on pure blur and lose up
to 4 dB on noisy, compressed photographs.

Boundaries: the tile is padded by :func:`meddeblur.physics.pad_taper` (mirror, fade to the mean), the iterations run
on the padded plane (the denoiser sees the mirrored margin as image), and the result is cropped back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meddeblur.errors import InvalidOption
from meddeblur.physics import DataStep, margin_for, noise_level, otf, pad_taper
from meddeblur.psf.kernel import PSF
from meddeblur.restore.base import KnownBlur, Resources

__all__ = ["PnPSettings", "schedule", "hqs", "plug_and_play", "PlugAndPlay", "build"]

Denoise = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class PnPSettings:
    """The HQS schedule (see the module docstring); values chosen on validation images (benchmarks/pnp.py)."""

    iterations: int = 8
    sigma_start: float = 49.0 / 255.0
    noise_floor: float = 3.0 / 255.0
    weight: float = 0.25

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or not 1 <= self.iterations <= 100:
            raise InvalidOption(
                f"iterations={self.iterations}: must be an integer from 1 to 100, e.g. 8",
                value=self.iterations,
                option="iterations",
            )
        for name in ("sigma_start", "noise_floor", "weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                raise InvalidOption(f"{name}={value}: must be a positive number", value=value, option=name)


def schedule(noise: Tensor, settings: PnPSettings) -> tuple[Tensor, Tensor]:
    """(N, iterations) denoiser levels σᵢ and data weights αᵢ for images of (N,) noise levels."""
    sigma_n = noise.clamp(min=settings.noise_floor)
    start = torch.maximum(torch.full_like(sigma_n, settings.sigma_start), sigma_n)
    t = torch.linspace(0.0, 1.0, settings.iterations, dtype=noise.dtype, device=noise.device)
    sigmas = torch.exp(torch.log(start)[:, None] * (1 - t) + torch.log(sigma_n)[:, None] * t)
    return sigmas, settings.weight * sigma_n[:, None] ** 2 / sigmas**2


def hqs(padded: Tensor, transfer: Tensor, denoise: Denoise, sigmas: Tensor, alphas: Tensor) -> Tensor:
    """HQS on padded (N, C, fh, fw) observations with OTFs ``transfer``: ``denoise(x, σᵢ)``, then the data step, per iteration."""
    step = DataStep.prepare(padded, transfer)
    x = padded
    for sigma, alpha in zip(sigmas.unbind(1), alphas.unbind(1)):
        x = step(denoise(x, sigma), alpha)
    return x


def _fit_denoiser(denoiser: nn.Module) -> Denoise:
    multiple = int(getattr(denoiser, "size_multiple", 1))

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % multiple, -w % multiple
        grown = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
        return denoiser(grown, sigma)[..., :h, :w]

    return denoise


def plug_and_play(blurred: Tensor, kernel: np.ndarray, denoiser: nn.Module, settings: PnPSettings = PnPSettings()) -> Tensor:
    """(N, C, H, W) images blurred by the (kh, kw) ``kernel`` → (N, C, H, W) restored (unclamped), on the denoiser's device.

    >>> import numpy as np, torch
    >>> identity = lambda x, sigma: x                  # no prior at all: the loop is then plain regularised deconvolution
    >>> y = torch.full((1, 3, 32, 32), 0.5)
    >>> bool(torch.allclose(plug_and_play(y, np.ones((3, 3)), identity), y, atol=1e-5))
    True
    """
    device = next(denoiser.parameters()).device if isinstance(denoiser, nn.Module) else blurred.device
    y = blurred.to(device, torch.float32)
    margin = margin_for(max(kernel.shape))
    padded, (rows, cols) = pad_taper(y, margin)
    transfer = otf(torch.as_tensor(np.asarray(kernel), dtype=torch.float32, device=device), (padded.shape[-2], padded.shape[-1]))
    sigmas, alphas = schedule(noise_level(y), settings)
    denoise = _fit_denoiser(denoiser) if isinstance(denoiser, nn.Module) else denoiser
    return hqs(padded, transfer, denoise, sigmas, alphas)[..., rows, cols]


class PlugAndPlay(KnownBlur):
    """(N, 3, h, w) tiles restored by :func:`plug_and_play` with ``psf`` and ``denoiser``."""

    method = "pnp"

    def __init__(self, psf: PSF, denoiser: nn.Module, settings: PnPSettings = PnPSettings()) -> None:
        super().__init__(psf)
        self.denoiser, self.settings_ = denoiser, settings

    def settings(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self.settings_).items()}

    def restore(self, tiles: Tensor) -> Tensor:
        return plug_and_play(tiles, self.psf.kernel, self.denoiser, self.settings_).to(tiles.device)


def build(psf: PSF, resources: Resources, **settings: Any) -> PlugAndPlay:
    return PlugAndPlay(psf, resources.denoiser(), PnPSettings(**settings))
