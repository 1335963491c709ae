"""The blur estimator's network: a log power spectrum in, a blur family and its parameters out.

Input ``(N, 1, W, W)`` log power spectra (:func:`meddeblur.psf.spectrum.log_power_spectrum`, W = 64). Two frequency
coordinate planes are appended inside, because a convolution alone cannot tell a low frequency from a high one, and
here where a pattern sits is what it means. Output ``(N, OUTPUTS)``, laid out as :data:`LAYOUT`:
family logits (none, gauss, defocus, motion), then per family its parameters (log σ along and across the major
axis, cos 2θ, sin 2θ; log radius; log length, cos 2θ, sin 2θ). Angles enter as 2θ: a blur at θ and at θ + 180° is
the same blur. About 0.3 M parameters: a CPU runs it on a 1024×768 image's 12 tiles in a few milliseconds.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FAMILIES", "LAYOUT", "OUTPUTS", "BlurEstimatorNet"]

#: The blur families the estimator tells apart, in logit order.
FAMILIES = ("none", "gauss", "defocus", "motion")
#: Slices of the output vector.
LAYOUT = {"logits": slice(0, 4), "gauss": slice(4, 8), "defocus": slice(8, 9), "motion": slice(9, 12)}
OUTPUTS = 12


class BlurEstimatorNet(nn.Module):
    coords: Tensor  # a buffer
    """(N, 1, W, W) log power spectra → (N, :data:`OUTPUTS`) family logits and parameters; see the module docstring."""

    def __init__(self, window: int = 64, width: int = 32) -> None:
        super().__init__()
        self.window = window
        steps = torch.arange(window, dtype=torch.float32) / window - 0.5
        self.register_buffer("coords", torch.stack(torch.meshgrid(steps, steps, indexing="ij"))[None], persistent=False)

        def stage(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1), nn.GELU(), nn.Conv2d(c_out, c_out, 3, stride=2, padding=1), nn.GELU()
            )

        self.features = nn.Sequential(
            stage(3, width), stage(width, width * 2), stage(width * 2, width * 2), stage(width * 2, width * 2)
        )
        side = window // 16
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 2 * side * side, 128), nn.GELU(), nn.Linear(128, OUTPUTS))

    def forward(self, spectra: Tensor) -> Tensor:
        if spectra.dim() != 4 or spectra.shape[1:] != (1, self.window, self.window):
            raise ValueError(f"expected (N, 1, {self.window}, {self.window}) log power spectra, got {tuple(spectra.shape)}")
        stacked = torch.cat([spectra, self.coords.expand(spectra.shape[0], -1, -1, -1)], dim=1)
        return self.head(self.features(stacked))
