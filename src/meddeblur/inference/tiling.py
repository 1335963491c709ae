"""Full-resolution inference in bounded memory: overlapping tiles, Gaussian-tapered blending.

A 4000×3000 photograph through the width-64 network at once needs tens of GB of
activations; tile by tile it needs one tile's activations plus two float32 canvases on
the CPU (output 3·H·W, weights H·W: 144 MB + 48 MB at 4000×3000).

Layout: the image is reflect-padded to the network's size multiple exactly as
``meddeblur.inference.batch.deblur_tensor`` pads it, and cut into ``tile``×``tile`` windows whose
starts are multiples of that size multiple, spread evenly so that neighbours overlap by at
least ``overlap`` pixels. Aligned starts matter: a U-Net is shift-equivariant only by
multiples of its size multiple, so an unaligned tile would see a different pooling grid than
the whole-image pass and disagree with it everywhere, not just near its edges.

Blending: each output pixel is the weighted mean of the tiles covering it. A tile's weight
is 1, except within ``overlap`` pixels of a tile edge *inside* the image, where a Gaussian
taper falls smoothly to e^-18 at the edge: those pixels saw zero padding instead of their
real neighbours. Edges on the image border keep full weight (the whole-image pass sees that
border too). Weights stay > 0, so every pixel is defined; a pixel covered by one tile gets
that tile's output exactly.

Why tiled and whole-image outputs still differ: the receptive field reaches past the tile.
For the Attention U-Net it is ±94 pixels (four poolings; measured with autograd), so in the
middle of an overlap of 2·94 = 188 pixels both tiles see everything the whole pass sees.
NAFNet's channel attention also averages over its whole input, i.e. over the tile rather
than the image: a smooth, image-wide change (with tiles near the training crop size it is
closer to training conditions than whole-image statistics are). Measured with a briefly
trained width-8 Attention U-Net (60 epochs) on two 1022×767 ISIC images, tile 512, max
|tiled − whole| over all pixels: overlap 0: 129–137/255 (seams); 64: 3.3–8.5/255;
128: 0.12–0.62/255; 192: ≤ 0.03/255. Hence the default overlap 128 (below 8-bit steps).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from meddeblur.inference.tile_grid import Tiling, tile_starts  # re-exported

# Own code, not MONAI's sliding_window_inference: monai 1.6 needs torch>=2.8 (we allow >=2.2) and lacks aligned tiles and border-aware weights.

__all__ = ["Tiling", "deblur_tiled", "pad_to_multiple", "tile_starts", "blend_weights", "TileFn"]

#: What runs on one batch of padded tiles: an ``nn.Module`` or any callable (N, C, h, w) → (N, C', h, w),
#: e.g. :class:`meddeblur.inference.onnx_engine.OnnxModel`.
TileFn = Callable[[torch.Tensor], torch.Tensor]


def blend_weights(length: int, start: int, size: int, ramp: int) -> torch.Tensor:
    """(size,) float64 weights of the tile ``[start, start + size)`` of an axis ``[0, length)``.

    1, except within ``ramp`` pixels of an edge inside ``(0, length)``: there a Gaussian taper
    (σ = ramp / 6, smooth where it meets the plateau) falls to e^-18 ≈ 2e-8 at the edge pixel.
    """
    weights = torch.ones(size, dtype=torch.float64)
    if ramp <= 0:
        return weights
    taper = torch.exp(-0.5 * ((ramp - torch.arange(min(ramp, size), dtype=torch.float64)) / (ramp / 6)) ** 2)
    if start > 0:
        weights[: taper.numel()] *= taper
    if start + size < length:
        weights[size - taper.numel() :] *= taper.flip(0)
    return weights


def pad_to_multiple(images: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, C, H, W) → (padded (N, C, H', W') with H', W' the next multiples of ``multiple``, (top, left) offsets).

    Reflection padding, split between both sides so that no border is always the extrapolated one; crop the
    network's output back with ``[..., top:top + H, left:left + W]``. The one padding rule of every inference path.

    >>> padded, (top, left) = pad_to_multiple(torch.zeros(1, 3, 30, 33), 16)
    >>> tuple(padded.shape), (top, left)
    ((1, 3, 32, 48), (1, 7))
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    top, left = pad_h // 2, pad_w // 2
    if not (pad_h or pad_w):
        return images, (0, 0)
    return F.pad(images, (left, pad_w - left, top, pad_h - top), mode="reflect"), (top, left)


@torch.no_grad()
def deblur_tiled(
    model: nn.Module | TileFn,
    image: torch.Tensor,
    tile: int = 512,
    overlap: int | float = 128,
    multiple: int = 16,
    batch: int = 1,
    before_tile: Callable[[], None] | None = None,
) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] → (N, C, H, W) float32 on the CPU, clamped to [0, 1]; H, W ≥ ``multiple``.

    ``tile``: window side (rounded up to a multiple of ``multiple``); ``overlap``: pixels, or
    a fraction of ``tile`` when below 1, at most ``tile - multiple``; ``batch``: tiles per
    forward pass (faster on a GPU, costs memory). A module runs on the device of its
    parameters (the image's when it has none); any other callable gets tiles on the image's device.

    The image is first reflect-padded to a multiple of ``multiple`` exactly as
    ``meddeblur.inference.batch.deblur_tensor`` does, and every tile starts at a multiple of it: the
    network's pooling grid is then the same in every tile as in a whole-image pass (a
    U-Net is only shift-equivariant by multiples of its size multiple), and an image no
    larger than one tile is processed whole, giving ``deblur_tensor``'s result.

    ``before_tile`` is called before every forward pass; an exception it raises (say, a
    deadline passed) stops the work there.
    """
    if image.ndim != 4:
        raise ValueError(f"expected an (N, C, H, W) tensor, got shape {tuple(image.shape)}")
    tile = -(-tile // multiple) * multiple
    overlap = round(overlap * tile) if 0 < overlap < 1 else int(overlap)
    if not 0 <= overlap <= tile - multiple or batch < 1:
        raise ValueError(f"need 0 ≤ overlap ≤ tile - multiple and batch ≥ 1, got tile {tile}, overlap {overlap}, batch {batch}")
    parameters = model.parameters() if isinstance(model, nn.Module) else iter(())
    device = next((p.device for p in parameters), image.device)
    n, _, height, width = image.shape
    padded, (top, left) = pad_to_multiple(image, multiple)
    full_h, full_w = padded.shape[-2:]
    if full_h <= tile and full_w <= tile:
        if before_tile is not None:
            before_tile()
        return model(padded.to(device))[..., top : top + height, left : left + width].float().cpu().clamp_(0, 1)

    th, tw = min(tile, full_h), min(tile, full_w)
    corners = [(y, x) for y in tile_starts(full_h, th, overlap, multiple) for x in tile_starts(full_w, tw, overlap, multiple)]
    outputs = []
    for index in range(n):
        canvas: torch.Tensor | None = None  # allocated at the first result: the model decides its channels
        weights = torch.zeros(full_h, full_w)
        for first in range(0, len(corners), batch):
            group = corners[first : first + batch]
            if before_tile is not None:
                before_tile()
            tiles = torch.stack([padded[index, :, y : y + th, x : x + tw] for y, x in group]).to(device)
            result = model(tiles).float().cpu()
            if canvas is None:
                canvas = torch.zeros(1, result.shape[1], full_h, full_w)
            for (y, x), out in zip(group, result):
                window = torch.outer(blend_weights(full_h, y, th, overlap), blend_weights(full_w, x, tw, overlap)).float()
                canvas[0, :, y : y + th, x : x + tw].addcmul_(out, window)
                weights[y : y + th, x : x + tw] += window
        assert canvas is not None  # at least one tile was run
        canvas = canvas[..., top : top + height, left : left + width]
        outputs.append(canvas.div_(weights[top : top + height, left : left + width]).clamp_(0, 1))
    return torch.cat(outputs) if n > 1 else outputs[0]
