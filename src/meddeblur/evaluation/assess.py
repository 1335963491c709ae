"""Blur triage: a no-reference blur score per image, and which images need attention.

The score. The luminance (Rec. 601 weights) is resized so that its longer side is
:data:`ANALYSIS_SIDE` pixels (area averaging down, bicubic up), so that the pixel count of the
file does not decide the score: it measures the blur visible when the image is viewed at that
size. On it, with ``∇`` the Sobel gradient (normalised to unit gain) and ``Δ`` the 4-neighbour
Laplacian, averaged over all pixels::

    blur_score = E|∇Y|² / (E|∇Y|² + E(ΔY)²)      in [0, 1], higher = blurrier

``E(ΔY)² / E|∇Y|²`` is, for a band-limited image, the gradient-weighted mean squared spatial
frequency of its detail: blur removes high frequencies first and lowers it, whatever the image's
contrast or how much of it is textured (both scale the two energies alike). An image with no
detail at all scores 1. Limits: noise and JPEG artefacts add high frequencies and make a blurred
image look sharper; a sharp image of smooth content (no fine texture) scores blurrier than one
rich in fine texture.

The threshold. :data:`DEFAULT_THRESHOLD` is the score that best separates (highest balanced
accuracy: 0.415, rounded to 0.4) the 557 ISIC dermoscopy photographs from their Gaussian σ = 1.5
blurred versions in ``benchmarks/assess_auc.py``: ROC AUC 0.999, sensitivity 98.7 % and specificity
98.2 % at 0.4 (``benchmarks/results/assess_auc.md``). Images above it are flagged ``needs attention``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from meddeblur.degradation.resampling import resize_area
from meddeblur.errors import UserError
from meddeblur.files import atomic_write
from meddeblur.io.decode import read_image
from meddeblur.io.ownership import ASSESS_CSV_COLUMNS
from meddeblur.io.pixels import refuse, unit_float

__all__ = [
    "ANALYSIS_SIDE",
    "DEFAULT_THRESHOLD",
    "FLAG_ATTENTION",
    "FLAG_OK",
    "FLAG_UNREADABLE",
    "Assessment",
    "blur_score",
    "assess_files",
    "check_csv_target",
    "write_csv",
]

ANALYSIS_SIDE = 768
#: Chosen on the ISIC benchmark (benchmarks/results/assess_auc.md): the best balanced-accuracy threshold, rounded.
DEFAULT_THRESHOLD = 0.4
FLAG_ATTENTION, FLAG_OK, FLAG_UNREADABLE = "needs attention", "ok", "unreadable"
CSV_COLUMNS = ASSESS_CSV_COLUMNS
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


_ACCEPTED = (
    "numpy (H, W) or (H, W, C) with C in 1/3/4 (alpha is ignored), uint8, uint16 or float in [0, 1]; "
    "torch (C, H, W) or (N, C, H, W), same dtypes"
)


def blur_score(image: Any, side: int = ANALYSIS_SIDE) -> Any:
    """Blur score of an image: 0 sharp … 1 featureless (see module docstring); a float, or an (N,) float64 tensor for (N, C, H, W).

    ``image``: numpy (H, W) or (H, W, C) with C in 1, 3 or 4 (alpha is ignored), uint8 or uint16 (scaled by their
    range) or float in [0, 1]; or a torch (C, H, W) or (N, C, H, W) tensor of those. Anything else (floats
    outside [0, 1], NaN, other dtypes, masked arrays) raises ``ValueError``, as does a ``side`` (the analysis size
    in pixels, see module docstring) below 16.
    """
    if isinstance(side, (bool, np.bool_)) or not isinstance(side, (int, np.integer)) or side < 16:
        raise ValueError(f"side={side!r}: must be a whole number of pixels, at least 16 (default {ANALYSIS_SIDE})")
    if type(image).__module__.split(".")[0] == "torch":
        import torch

        if image.dim() == 4:
            return torch.tensor([_score(_hwc(x), "image", side) for x in image], dtype=torch.float64)
        if image.dim() != 3:
            raise refuse("image", image, "expected a (C, H, W) or (N, C, H, W) tensor", _ACCEPTED)
        return _score(_hwc(image), "image", side)
    return _score(image, "image", side)


def _hwc(tensor: Any) -> np.ndarray:
    """A (C, H, W) tensor as a numpy (H, W, C) array of the same dtype."""
    return tensor.detach().cpu().permute(1, 2, 0).numpy()


def _score(image: Any, name: str, side: int) -> float:
    x = unit_float(image, name, _ACCEPTED)
    if not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 3, 4))) or 0 in x.shape:
        raise refuse(name, image, "expected (H, W) or (H, W, C) with C in 1/3/4", _ACCEPTED)
    x = x.astype(np.float32, copy=False)
    y = x[:, :, :3] @ _LUMA if x.ndim == 3 and x.shape[2] >= 3 else (x[:, :, 0] if x.ndim == 3 else x)
    if float(y.max() - y.min()) < 1e-6:  # no detail at all (resampling would leave only rounding noise)
        return 1.0
    height, width = y.shape
    scale = side / max(height, width)
    y = np.ascontiguousarray(resize_area(y, (max(1, round(height * scale)), max(1, round(width * scale)))))
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    laplacian = cv2.Laplacian(y, cv2.CV_32F, ksize=1)
    gradient_energy = float(np.mean(gx.astype(np.float64) ** 2 + gy.astype(np.float64) ** 2))
    laplacian_energy = float(np.mean(laplacian.astype(np.float64) ** 2))
    total = gradient_energy + laplacian_energy
    return gradient_energy / total if total > 1e-20 else 1.0


@dataclass
class Assessment:
    """One row of the triage."""

    path: Path
    blur_score: float | None  # None: the file could not be read
    flag: str  # FLAG_ATTENTION, FLAG_OK or FLAG_UNREADABLE
    width: int | None = None
    height: int | None = None
    note: str = ""


def assess_files(files: list[Path], threshold: float = DEFAULT_THRESHOLD, skip_bad: bool = False) -> list[Assessment]:
    """Score every file (already expanded, see :func:`meddeblur.inference.batch.collect_inputs`), with a progress bar.

    A file that cannot be read raises its :class:`UserError`, unless ``skip_bad``: then it
    gets a row flagged ``unreadable`` whose note is the error.
    """
    if not (np.isfinite(threshold) and 0 < threshold < 1):
        raise UserError(f"threshold={threshold}: choose a blur score between 0 and 1 (default {DEFAULT_THRESHOLD})")
    rows = []
    for path in tqdm(files, desc="assessing", unit="image", disable=None if len(files) > 1 else True):
        try:
            image = read_image(path)
        except UserError as error:
            if not skip_bad:
                raise UserError(f"{error} (or pass skip_bad=True to list it as unreadable)") from None
            rows.append(Assessment(path, None, FLAG_UNREADABLE, note=str(error)))
            continue
        score = blur_score(image.rgb)
        height, width = image.rgb.shape[:2]
        rows.append(Assessment(path, score, FLAG_ATTENTION if score > threshold else FLAG_OK, width, height))
    return rows


def _text(value: str) -> str:
    # Undecodable bytes of a file name (surrogate escapes) are written as \udcXX, not an encoding error.
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def check_csv_target(path: str | os.PathLike[str], inputs: Sequence[Path] = ()) -> Path:
    """UserError if the CSV would land on a folder or on one of ``inputs``; checked before any scoring."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"csv={path}: is a folder; give a file name such as blur.csv")
    if path.exists() and path.resolve() in {p.resolve() for p in inputs}:
        raise UserError(f"csv={path}: would overwrite an input image; choose another file name")
    return path


def write_csv(rows: list[Assessment], path: str | os.PathLike[str], inputs: Sequence[Path] = ()) -> Path:
    """Write the triage as CSV (:data:`CSV_COLUMNS`) atomically; never over one of ``inputs``."""
    path = check_csv_target(path, inputs)
    with atomic_write(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            score = "" if row.blur_score is None else f"{row.blur_score:.6f}"
            writer.writerow([_text(os.fspath(row.path)), score, row.flag, row.width or "", row.height or "", _text(row.note)])
    return path
