"""Floating-point operations of one forward pass, counted by PyTorch's own counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: nn.Module, height: int = 256, width: int = 256, channels: int = 3) -> int:
    """FLOPs of ``model`` on one (1, channels, height, width) image, in eval mode.

    Uses :class:`torch.utils.flop_counter.FlopCounterMode`, which counts FLOPs = 2 × MACs
    (a multiply-add is two operations) for convolutions and matrix products only;
    elementwise ops, normalisation, pooling, interpolation, PixelShuffle and activations are
    not counted (for these networks they are a few per cent of the work, but memory-bound,
    so they cost more wall time on a CPU than their FLOPs suggest). Grouped/depthwise
    convolutions are counted with their true (divided by groups) cost. The model's
    training/eval mode is restored afterwards; BatchNorm statistics are not touched.
    """
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None else torch.float32
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(torch.zeros(1, channels, height, width, device=device, dtype=dtype))
        return counter.get_total_flops()
    finally:
        model.train(was_training)
