"""Deblurring images of any size with a trained network."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from meddeblur.errors import InvalidOption, NotFound, UserError
from meddeblur.files import check_creatable_folder, check_regular_file, remove_stale_temporaries
from meddeblur.inference.tiling import TileFn, deblur_tiled, pad_to_multiple
from meddeblur.io.decode import read_image
from meddeblur.io.encode import check_jpeg_quality, write_image
from meddeblur.io.formats import OUTPUT_SUFFIXES, SUFFIX_FORMATS
from meddeblur.io.listing import list_images
from meddeblur.io.ownership import check_replaceable
from meddeblur.io.provenance import make_record, sidecar_path
from meddeblur.models import SIZE_MULTIPLE


@torch.no_grad()
def deblur_tensor(model: nn.Module | TileFn, images: torch.Tensor, multiple: int = SIZE_MULTIPLE,
                  amp: bool = False, channels_last: bool = False) -> torch.Tensor:
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
        model.to(memory_format=torch.channels_last)
        padded = padded.contiguous(memory_format=torch.channels_last)
    if amp and cuda:
        with torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16):
            output = model(padded).float()
    else:
        output = model(padded)
    return output[..., top:top + height, left:left + width].clamp(0, 1)


def deblur_array(model: nn.Module | TileFn, rgb: np.ndarray, device: str | torch.device = "cpu", tile: int = 0,
                 overlap: int = 128, multiple: int = SIZE_MULTIPLE, before_tile: Callable[[], None] | None = None) -> np.ndarray:
    """(H, W, 3) float in [0, 1] → deblurred (H, W, 3) float32.

    With ``tile``, an image whose longer side exceeds it is processed in overlapping,
    smoothly blended tiles (:func:`meddeblur.inference.tiling.deblur_tiled`) so memory stays bounded.
    ``before_tile`` is called before each forward pass (e.g. to stop at a deadline).
    """
    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))[None].to(device)
    if tile and max(rgb.shape[:2]) > tile:
        return deblur_tiled(model, tensor, tile=tile, overlap=overlap, multiple=multiple,
                            before_tile=before_tile)[0].numpy().transpose(1, 2, 0)
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


def _resolved(path: Path, what: str) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13)
        raise UserError(f"{path}: {what} is a symbolic link loop; remove it or choose another -o folder") from None


def plan_outputs(files: list[Path], outdir: str | Path, fmt: str | None, overwrite: bool = False) -> list[Path]:
    """Output path per input: same file name (new suffix if ``fmt``), never an input itself.

    Everything that can be checked before writing is: the folder, name clashes, outputs
    that are folders or inputs, and existing files that are not meddeblur's own earlier
    outputs (replaced only with ``overwrite``), so that a run never stops half-way for these.
    """
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(f"{outdir}: output folder is a file; pass a folder to -o")
    if not outdir.exists() and os.path.lexists(outdir):
        raise UserError(f"{outdir}: output folder is a broken symbolic link; pass a folder to -o")
    check_creatable_folder(outdir, "`out`")
    if fmt is not None and fmt not in OUTPUT_SUFFIXES:
        raise InvalidOption(f"format={fmt}: choose one of {', '.join(OUTPUT_SUFFIXES)}", value=fmt, option="format")
    outputs = [outdir / (f.stem + OUTPUT_SUFFIXES[fmt] if fmt else f.name) for f in files]
    inputs = {f.resolve() for f in files}
    for source, target in zip(files, outputs):
        if _resolved(target, "output") in inputs:
            raise UserError(f"{source}: output {target} would overwrite an input; choose another -o folder")
        if target.is_dir():
            raise UserError(f"{target}: output is an existing folder; remove it or choose another -o folder")
        check_replaceable(target, overwrite, "`out` folder")
        if target.suffix.lower() == ".bmp":
            check_replaceable(sidecar_path(target), overwrite, "`out` folder")
    seen: dict[Path, Path] = {}
    for source, target in zip(files, outputs):
        if target in seen:
            raise UserError(f"{source}: same output name as {seen[target]} ({target.name}); deblur them into separate folders")
        seen[target] = source
    return outputs


def deblur_files(model: nn.Module | TileFn, inputs: list[str | Path], outdir: str | Path, fmt: str | None = None,
                 device: str | torch.device = "cpu", jpeg_quality: int = 95, tile: int = 0, overlap: int = 128,
                 multiple: int = SIZE_MULTIPLE, provenance: dict[str, Any] | None = None, overwrite: bool = False) -> list[Path]:
    """Deblur every input into ``outdir``; the model is loaded once by the caller (tiling: see :func:`deblur_array`).

    Keeps grayscale, alpha and 8/16-bit depth (where the output format allows it); 16-bit
    pixels go through the network as float32 without passing through 8 bits. A DICOM input
    gives a derived DICOM (unless ``fmt``). Every output carries ``provenance`` (default: tool
    and version only, see :mod:`meddeblur.io.provenance`) and the input's ICC profile. An existing
    file is replaced only if meddeblur wrote it (its provenance says so) or with ``overwrite``;
    temporary files a killed earlier run left in ``outdir`` are removed.
    """
    check_jpeg_quality(jpeg_quality)
    record = provenance if provenance is not None else make_record()
    files = collect_inputs(inputs)
    outputs = plan_outputs(files, outdir, fmt, overwrite)
    remove_stale_temporaries(outdir)
    for source, target in zip(files, outputs):
        # Decode every input first: a bad file fails the run before any output is written.
        image = read_image(source)
        if SUFFIX_FORMATS.get(target.suffix.lower()) == "DICOM" and image.format != "DICOM":
            raise UserError(f"{source}: named .dcm but holds a {image.format} image (a DICOM is written only from a DICOM); rename it or pass `format`")
    written = []
    for source, target in tqdm(list(zip(files, outputs)), desc="deblurring", unit="image", disable=None if len(files) > 1 else True):
        image = read_image(source)
        restored = deblur_array(model, image.rgb, device, tile=tile, overlap=overlap, multiple=multiple)
        out_format = SUFFIX_FORMATS.get(target.suffix.lower(), image.format)
        bit_depth = image.bit_depth if out_format in ("PNG", "TIFF") else 8
        alpha = image.alpha if out_format != "JPEG" else None
        if out_format == "DICOM":
            from meddeblur.io.dicom import write_dicom

            written.append(write_dicom(target, restored, image.source, record))
            continue
        written.append(write_image(target, restored, alpha=alpha, grayscale=image.grayscale, bit_depth=bit_depth,
                                   format=out_format, jpeg_quality=jpeg_quality, provenance=record, icc=image.icc))
    return written


