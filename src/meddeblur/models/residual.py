"""The reference Attention U-Net predicting a correction: ``output = input + head(features)``.

Same layers, names and Keras initialisation as :class:`AttentionUNet` (so state dicts
have the same keys), except the 1×1 head: zero weights and bias, and no sigmoid. An
untrained network is therefore exactly the identity, and training starts from "leave
the image as it is" instead of from a flat grey sigmoid(0) = 0.5 image.

The output is not clamped here. Training sees the raw ``input + correction`` so that the
loss keeps a gradient where a prediction overshoots [0, 1] (a clamp would zero it and the
overshoot could never be corrected); ``meddeblur.inference.batch.deblur_tensor`` and
``meddeblur.inference.tiling.deblur_tiled`` clamp to [0, 1] when producing images.
"""

from __future__ import annotations

import torch
from torch import nn

from meddeblur.models.attention_unet import AttentionUNet


class ResidualAttentionUNet(AttentionUNet):
    """(N, C, H, W) → (N, C, H, W), ``input + correction``, unclamped; H, W multiples of 16."""

    def __init__(self, width: int = 64, in_channels: int = 3, out_channels: int = 3) -> None:
        if in_channels != out_channels:
            raise ValueError("a global residual needs in_channels == out_channels")
        super().__init__(width, in_channels, out_channels)
        nn.init.zeros_(self.head.weight)  # exact identity at initialisation
        assert self.head.bias is not None
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.head(self.features(x))
