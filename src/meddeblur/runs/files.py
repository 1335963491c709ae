"""Deblurring files with a model loaded once by the caller: :func:`deblur_files`, the simple call without resuming,
logs or workers (those are :func:`~meddeblur.runs.archive.deblur_archive`'s). It plans and writes exactly as a folder
run does: the same names, formats, provenance and refusals.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meddeblur.inference.batch import deblur_array, deblur_tensor
from meddeblur.inference.engine import Engine
from meddeblur.inference.tiling import TileFn
from meddeblur.io.encode import check_jpeg_quality
from meddeblur.io.provenance import make_record
from meddeblur.models import SIZE_MULTIPLE
from meddeblur.runs.execute import InProcess, execute
from meddeblur.runs.jobs import Settings
from meddeblur.runs.plan import plan_run

__all__ = ["deblur_files"]


class _Network:
    """A bare network (or any :data:`TileFn`) as an :class:`~meddeblur.inference.engine.Engine`: blind, fixed settings."""

    psf = None
    estimates_psf = False

    def __init__(
        self,
        model: nn.Module | TileFn,
        device: str | torch.device,
        tile: int,
        overlap: int,
        multiple: int,
        provenance: dict[str, Any],
    ) -> None:
        self.model, self.device, self.provenance = model, torch.device(device), provenance
        self.tile, self.overlap, self.size_multiple = tile, overlap, multiple

    def restore_rgb(self, rgb: np.ndarray, before_tile: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        return deblur_array(
            self.model,
            rgb,
            self.device,
            tile=self.tile,
            overlap=self.overlap,
            multiple=self.size_multiple,
            before_tile=before_tile,
        ), {}

    def __call__(self, image: torch.Tensor) -> torch.Tensor:  # the name Engine's: a batch (N, 3, H, W)
        return deblur_tensor(self.model, image.to(self.device), self.size_multiple).cpu()


def deblur_files(
    model: nn.Module | TileFn | Any,
    inputs: list[str | Path],
    outdir: str | Path,
    fmt: str | None = None,
    device: str | torch.device = "cpu",
    jpeg_quality: int = 95,
    tile: int = 0,
    overlap: int = 128,
    multiple: int = SIZE_MULTIPLE,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Deblur every input into ``outdir``; the model is loaded once by the caller (tiling: see :func:`deblur_array`).

    ``model``: a network (or any :data:`TileFn`), run with ``device``, ``tile``, ``overlap`` and ``multiple``; or an
    :class:`~meddeblur.inference.engine.Engine` with its own, such as a
    :class:`~meddeblur.inference.deblurrer.Deblurrer` bound to a known or an estimated PSF (whose per-image ``restoration`` record then goes into each output's provenance).

    Keeps grayscale, alpha and 8/16-bit depth (where the output format allows it); 16-bit
    pixels go through the network as float32 without passing through 8 bits. A DICOM input
    gives a derived DICOM (unless ``fmt``). Every output carries ``provenance`` (default: tool
    and version only, see :mod:`meddeblur.io.provenance`) plus its change figures, and the input's ICC
    profile. An existing file is replaced only if meddeblur wrote it (its provenance says so) or with
    ``overwrite``; temporary files a killed earlier run left are removed. Each input is decoded once; the
    first that cannot be read stops the run with its :class:`~meddeblur.errors.UserError` (outputs written
    before it are whole). Folder runs that resume, log and go on past bad files: :func:`meddeblur.runs.archive.deblur_archive`.
    """
    check_jpeg_quality(jpeg_quality)
    record = provenance if provenance is not None else (model.provenance if isinstance(model, Engine) else make_record())
    plan = plan_run(inputs, outdir, record, fmt, jpeg_quality, overwrite=overwrite, resume=False, allow_outputs=True)
    settings = Settings(jpeg_quality=jpeg_quality)
    engine = model if isinstance(model, Engine) else _Network(model, device, tile, overlap, multiple, record)
    return execute(plan, InProcess(engine, settings), record, progress=None if len(plan.tasks) > 1 else False).written
