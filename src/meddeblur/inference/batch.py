"""Deblurring arrays and tensors of any size with a network: padding to its size multiple, tiles for large images.

Files and folders: :func:`meddeblur.runs.files.deblur_files` (one call) and :mod:`meddeblur.runs` (resumable runs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from meddeblur.errors import NotFound
from meddeblur.files import check_regular_file
from meddeblur.inference.tiling import TileFn, deblur_tiled, pad_to_multiple
from meddeblur.io.listing import list_images
from meddeblur.models import SIZE_MULTIPLE


@torch.no_grad()
def deblur_tensor(
    model: nn.Module | TileFn, images: torch.Tensor, multiple: int = SIZE_MULTIPLE, amp: bool = False, channels_last: bool = False
) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] → (N, 3, H, W) float32 in [0, 1], any H, W ≥ ``multiple``.

    ``model`` is a network or any callable on (N, 3, h, w) tensors (e.g. an ONNX Runtime session
    wrapper). The network needs sides divisible by ``multiple``: pad by reflection (split
    between both sides so no border is always extrapolated), run, crop back.
    On CUDA only, ``amp`` runs under autocast (bf16 where supported, else fp16) and
    ``channels_last`` switches the input and the model (in place) to that memory
    format; elsewhere both are ignored, so CPU results never change with them.
    """
    height, width = images.shape[-2:]
    padded, (top, left) = pad_to_multiple(images, multiple)
    cuda = padded.device.type == "cuda"
    if channels_last and cuda and isinstance(model, nn.Module):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs omit Module.to(memory_format=)
        padded = padded.contiguous(memory_format=torch.channels_last)
    if amp and cuda:
        with torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16):
            output = model(padded).float()
    else:
        output = model(padded)
    return output[..., top : top + height, left : left + width].clamp(0, 1)


def deblur_array(
    model: nn.Module | TileFn,
    rgb: np.ndarray,
    device: str | torch.device = "cpu",
    tile: int = 0,
    overlap: int = 128,
    multiple: int = SIZE_MULTIPLE,
    before_tile: Callable[[], None] | None = None,
) -> np.ndarray:
    """(H, W, 3) float in [0, 1] → deblurred (H, W, 3) float32.

    With ``tile``, an image whose longer side exceeds it is processed in overlapping,
    smoothly blended tiles (:func:`meddeblur.inference.tiling.deblur_tiled`) so memory stays bounded.
    ``before_tile`` is called before each forward pass (e.g. to stop at a deadline).
    """
    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))[None].to(device)
    if tile and max(rgb.shape[:2]) > tile:
        return (
            deblur_tiled(model, tensor, tile=tile, overlap=overlap, multiple=multiple, before_tile=before_tile)[0]
            .numpy()
            .transpose(1, 2, 0)
        )
    if before_tile is not None:
        before_tile()
    return deblur_tensor(model, tensor, multiple=multiple)[0].cpu().numpy().transpose(1, 2, 0)


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Expand files and folders (their images, non-recursive) into a list of files, each once.

    Every file must be (a link to) a regular file: a broken link, link loop, FIFO or
    device fails here, naming it, before anything is opened.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(list_images(item))
        elif item.is_file():
            files.append(item)
        elif not os.path.lexists(item):
            raise NotFound(f"{item}: no such file or folder; check the path", value=item)
        else:
            files.append(item)
    for file in files:
        check_regular_file(file)
    # A file named twice (e.g. a folder and one of its files) is deblurred once.
    unique: dict[Path, Path] = {}
    for file in files:
        unique.setdefault(file.resolve(), file)
    return list(unique.values())
