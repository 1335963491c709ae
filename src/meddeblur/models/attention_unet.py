"""The reference Attention U-Net, layer for layer as the TF/Keras original.

Keras conventions kept on purpose so that training dynamics match: He-normal
(truncated) init with zero bias for every conv but the head, Glorot-uniform head,
BatchNorm epsilon 1e-3 and moving-average momentum 0.99 (PyTorch momentum 0.01),
nearest-neighbour upsampling with no conv, sigmoid output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Keras' truncated normal keeps the *untruncated* std; dividing by this constant
# (std of a unit normal truncated at ±2) makes the kept samples have the requested std.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Keras ``he_normal``: truncated normal at ±2σ with std sqrt(2 / fan_in)."""
    fan_in = weight.shape[1] * weight[0, 0].numel()
    std = math.sqrt(2.0 / fan_in) / _TRUNCATED_NORMAL_STD
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def keras_conv(in_ch: int, out_ch: int, kernel_size: int) -> nn.Conv2d:
    """Conv2d with 'same' padding, He-normal weights and zero bias."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)
    he_normal_(conv.weight)
    assert conv.bias is not None
    nn.init.zeros_(conv.bias)
    return conv


def keras_batchnorm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm2d with Keras defaults (epsilon 1e-3, moving-average momentum 0.99)."""
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class ConvBlock(nn.Sequential):
    """Conv3×3 → BN → ReLU → Conv3×3 → BN → ReLU."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(
            keras_conv(in_ch, out_ch, 3),
            keras_batchnorm(out_ch),
            nn.ReLU(inplace=True),
            keras_conv(out_ch, out_ch, 3),
            keras_batchnorm(out_ch),
            nn.ReLU(inplace=True),
        )


class AttentionGate(nn.Module):
    """a = s · sigmoid(psi(relu(theta(s) + phi(u)))), theta/phi/psi 1×1 convs with bias."""

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int) -> None:
        super().__init__()
        self.theta = keras_conv(skip_ch, inter_ch, 1)
        self.phi = keras_conv(gate_ch, inter_ch, 1)
        self.psi = keras_conv(inter_ch, 1, 1)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        attention = torch.sigmoid(self.psi(F.relu(self.theta(skip) + self.phi(gate))))
        return skip * attention


class AttentionUNet(nn.Module):
    """Reference Attention U-Net: (N, 3, H, W) in [0, 1] → (N, 3, H, W) in [0, 1].

    H and W must be multiples of 16 (four 2×2 poolings); ``meddeblur.inference.batch`` pads
    arbitrary sizes by reflection and crops back. ``width=64`` is the reference:
    32,438,215 trainable parameters and 11,776 BatchNorm running-statistic values.
    """

    def __init__(self, width: int = 64, in_channels: int = 3, out_channels: int = 3) -> None:
        super().__init__()
        widths = [width, width * 2, width * 4, width * 8]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for channels in widths:
            self.encoders.append(ConvBlock(previous, channels))
            previous = channels
        self.bottleneck = ConvBlock(previous, width * 16)
        previous = width * 16
        self.gates = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for channels in reversed(widths):
            self.gates.append(AttentionGate(channels, previous, channels))
            self.decoders.append(ConvBlock(previous + channels, channels))
            previous = channels
        self.head = nn.Conv2d(previous, out_channels, 1)
        nn.init.xavier_uniform_(self.head.weight)
        assert self.head.bias is not None
        nn.init.zeros_(self.head.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) → (N, width, H, W): everything before the 1×1 head."""
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for gate, decoder, skip in zip(self.gates, self.decoders, reversed(skips)):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = decoder(torch.cat([x, gate(skip, x)], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.features(x)))
