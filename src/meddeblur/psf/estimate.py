"""Estimate the blur of an image from the image itself: a parametric PSF, its confidence, and a map over tiles.

The estimator (:class:`~meddeblur.psf.estimator_net.BlurEstimatorNet`, weights shipped in the package) reads a
tile's log power spectrum (:mod:`meddeblur.psf.spectrum`) and names a family — none, gauss (anisotropic allowed),
defocus or motion — with its parameters. Blurs outside those families are learned as the family that explains them
best in the mean: camera shake and resampling as the Gaussian with the kernel's second moments
(:func:`gaussian_of_moments`). ``confidence`` is the probability the network gives the family it names. A motion
blur's length is then measured in the image's spectrum (:mod:`meddeblur.psf.motion_length`): the network's
length regresses towards the middle of its training range, the fit does not.

Per tile: :func:`estimate_psf_map` estimates each ``cell``-px cell, then smooths the map — each cell takes the
family most of its 3×3 neighbourhood names (weighted by confidence) and the median parameters of those neighbours —
so a slowly varying defocus is followed and one odd cell (a flat patch of skin) does not stand alone.

>>> import numpy as np
>>> from meddeblur.psf.estimate import gaussian_of_moments
>>> from meddeblur.psf import load_psf
>>> [round(v, 1) for v in gaussian_of_moments(load_psf("gauss:sigma=2,sigma_y=1,angle=30").kernel)]
[2.0, 1.0, 30.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddeblur.errors import InvalidOption, NotFound
from meddeblur.psf.estimator_net import FAMILIES, LAYOUT, BlurEstimatorNet
from meddeblur.psf.kernel import PSF, psf_from_spec
from meddeblur.psf.motion_length import motion_length
from meddeblur.psf.spectrum import MIN_SIDE, WINDOW, grey_of, log_power_spectrum
from meddeblur.shipped import ESTIMATOR_WEIGHTS  # re-exported

__all__ = [
    "ESTIMATOR_WEIGHTS",
    "CELL",
    "BlurEstimate",
    "PsfMap",
    "BlurEstimator",
    "gaussian_of_moments",
    "label_of",
    "estimate_psf",
    "estimate_psf_map",
]

#: Side of the cells of a PSF map, px: the crop size the estimator was trained on.
CELL = 256
_ISOTROPIC = 1.15  # σ ratio below which an estimated Gaussian is reported as isotropic
_LIMITS = {"sigma": (0.3, 8.0), "radius": (0.5, 12.0), "length": (1.0, 41.0)}


def gaussian_of_moments(kernel: np.ndarray) -> tuple[float, float, float]:
    """(σ along the major axis, σ across it, its angle in degrees) of the Gaussian with ``kernel``'s second moments.

    Angle counter-clockwise as displayed, in [0, 180), the convention of ``gauss:sigma=..,sigma_y=..,angle=..``.
    """
    k = np.asarray(kernel, dtype=np.float64)
    k = k / k.sum()
    kh, kw = k.shape
    y, x = np.mgrid[-(kh // 2) : kh - kh // 2, -(kw // 2) : kw - kw // 2].astype(np.float64)
    mx, my = (k * x).sum(), (k * y).sum()
    cxx, cyy, cxy = (k * (x - mx) ** 2).sum(), (k * (y - my) ** 2).sum(), (k * (x - mx) * (y - my)).sum()
    values, vectors = np.linalg.eigh(np.array([[cxx, cxy], [cxy, cyy]]))
    major = vectors[:, 1]
    angle = math.degrees(math.atan2(-major[1], major[0])) % 180.0
    return math.sqrt(max(values[1], 1e-6)), math.sqrt(max(values[0], 1e-6)), round(angle, 6) % 180.0


def _angle_pair(angle: float) -> tuple[float, float]:
    return math.cos(math.radians(2 * angle)), math.sin(math.radians(2 * angle))


def label_of(family: str, params: dict[str, Any], kernel: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Training target of one degradation: (family index, parameter vector, per-parameter weights), both (OUTPUTS - 4,).

    ``family``/``params``/``kernel`` as :class:`meddeblur.degradation.pipeline.Degradation` records them. Blurs outside
    :data:`~meddeblur.psf.estimator_net.FAMILIES` (shake, down, resample) become the Gaussian of their moments.
    Angle weights fall to zero as a blur becomes isotropic (its angle then means nothing).
    """
    values, weights = np.zeros(8, np.float32), np.zeros(8, np.float32)
    if family == "none":
        return 0, values, weights
    if family == "defocus":
        values[4], weights[4] = math.log(params["radius"]), 1.0
        return 2, values, weights
    if family == "motion":
        length = float(params["length"])
        values[5:8] = (math.log(length), *_angle_pair(params["angle"]))
        weights[5:8] = (1.0, *(2 * [min(1.0, (length - 1.0) / 4.0)]))
        return 3, values, weights
    if family == "gauss":
        sigmas = (params["sigma"], params.get("sigma_y", params["sigma"]))
        major, minor = max(sigmas), min(sigmas)
        angle = float(params.get("angle", 0.0)) + (0.0 if params["sigma"] >= sigmas[1] else 90.0)
    else:
        major, minor, angle = gaussian_of_moments(kernel)
    values[0:4] = (math.log(major), math.log(minor), *_angle_pair(angle))
    weights[0:4] = (1.0, 1.0, *(2 * [1.0 - minor / major]))
    return 1, values, weights


def _spec(family: str, params: dict[str, float]) -> str:
    if family == "gauss":
        if params["sigma"] / params["sigma_y"] < _ISOTROPIC:
            return f"gauss:sigma={math.sqrt(params['sigma'] * params['sigma_y']):.3f}"
        return f"gauss:sigma={params['sigma']:.3f},sigma_y={params['sigma_y']:.3f},angle={params['angle']:.1f}"
    if family == "defocus":
        return f"defocus:radius={params['radius']:.3f}"
    if family == "motion":
        return f"motion:length={params['length']:.2f},angle={params['angle']:.1f}"
    return "none"


def _clip(value: float, key: str) -> float:
    low, high = _LIMITS[key]
    return float(min(max(value, low), high))


def _decode_params(family: str, row: np.ndarray) -> dict[str, float]:
    if family == "gauss":
        a, b = _clip(math.exp(row[0]), "sigma"), _clip(math.exp(row[1]), "sigma")
        angle = math.degrees(math.atan2(row[3], row[2])) / 2 % 180.0
        if b > a:
            a, b, angle = b, a, (angle + 90.0) % 180.0
        return {"sigma": a, "sigma_y": b, "angle": angle}
    if family == "defocus":
        return {"radius": _clip(math.exp(row[4]), "radius")}
    if family == "motion":
        return {"length": _clip(math.exp(row[5]), "length"), "angle": math.degrees(math.atan2(row[7], row[6])) / 2 % 180.0}
    return {}


@dataclass(frozen=True)
class BlurEstimate:
    """One estimated blur: its :class:`~meddeblur.psf.PSF`, family, parameters and confidence (0–1)."""

    psf: PSF
    family: str
    params: dict[str, float]
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """What provenance records: the PSF (:meth:`PSF.describe`) plus family, confidence and the family probabilities."""
        return {
            **self.psf.describe(),
            "estimated": True,
            "family": self.family,
            "confidence": round(self.confidence, 4),
            "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
        }


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


def _measured_length(logits: np.ndarray, row: np.ndarray, tile: np.ndarray | torch.Tensor) -> np.ndarray:
    """``row`` with a motion estimate's length measured in ``tile``'s spectrum (:mod:`meddeblur.psf.motion_length`)."""
    if FAMILIES[int(logits.argmax())] != "motion":
        return row
    guess = _decode_params("motion", row)
    measured = row.copy()
    measured[5] = math.log(_clip(motion_length(tile, guess["angle"], guess["length"]), "length"))
    return measured


def _estimate_from_row(logits: np.ndarray, row: np.ndarray) -> BlurEstimate:
    probabilities = _softmax(logits)
    index = int(probabilities.argmax())
    family = FAMILIES[index]
    params = _decode_params(family, row)
    psf = psf_from_spec(_spec(family, params))
    named = {k: round(v, 4) for k, v in params.items()}
    return BlurEstimate(psf, family, named, float(probabilities[index]), dict(zip(FAMILIES, map(float, probabilities))))


class BlurEstimator:
    """A loaded estimator: ``estimator(spectra)`` for raw outputs, :meth:`estimate` for one :class:`BlurEstimate`."""

    def __init__(self, network: BlurEstimatorNet, weights_id: str | None = None) -> None:
        self.network, self.weights_id = network.eval(), weights_id

    @classmethod
    def load(cls, weights: str | Path | None = None) -> BlurEstimator:
        """The shipped estimator (``weights`` None) or one saved by ``scripts/train_estimator.py``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from meddeblur.shipped import weights_id

        path = Path(weights) if weights is not None else ESTIMATOR_WEIGHTS
        if not path.is_file():
            raise NotFound(
                f"{path}: no blur-estimator weights there; reinstall meddeblur or pass the file train_estimator wrote", value=path
            )
        network = BlurEstimatorNet()
        try:
            network.load_state_dict(load_file(str(path)))
        except (SafetensorError, RuntimeError, OSError) as error:
            raise InvalidOption(
                f"{path}: not blur-estimator weights ({str(error).splitlines()[0]})", value=path, option="estimator"
            ) from None
        return cls(network, weights_id(path))

    @torch.no_grad()
    def outputs(self, spectra: np.ndarray) -> np.ndarray:
        """(N, W, W) log power spectra → (N, OUTPUTS) raw network outputs."""
        # Contiguous and writeable (copied only when not): torch warns on a read-only array, e.g. one np.asarray'd.
        return self.network(torch.from_numpy(np.require(spectra, dtype=np.float32, requirements=["C", "W"]))[:, None]).numpy()

    def estimate(self, image: np.ndarray | torch.Tensor) -> BlurEstimate:
        """The blur of a whole (H, W, C) / (H, W) numpy or (C, H, W) torch image in [0, 1] (sides ≥ 128)."""
        grey = grey_of(image)  # once: the network's spectrum and a motion fit read the same grey
        out = self.outputs(log_power_spectrum(grey)[None])[0]
        logits = out[LAYOUT["logits"]]
        return _estimate_from_row(logits, _measured_length(logits, out[4:], grey))

    def from_spectra(self, spectra: np.ndarray) -> list[BlurEstimate]:
        """One estimate per (W, W) spectrum, the network's alone (motion lengths are measured only from an image)."""
        out = self.outputs(spectra)
        return [_estimate_from_row(row[LAYOUT["logits"]], row[4:]) for row in out]


def _check_image(image: np.ndarray | torch.Tensor) -> tuple[int, int]:
    shape = tuple(image.shape)
    h, w = shape[-2:] if isinstance(image, torch.Tensor) else shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InvalidOption(
            f"image: a blur estimate needs both sides >= {MIN_SIDE} px (got {w}×{h}); give the PSF with psf=... "
            "or use the blind network",
            value=shape,
            option="image",
        )
    return h, w


def estimate_psf(image: np.ndarray | torch.Tensor, estimator: BlurEstimator | None = None) -> BlurEstimate:
    """The blur of ``image`` — numpy (H, W) / (H, W, C) or torch (C, H, W), floats in [0, 1], sides ≥ 128 px.

    One estimate from the whole image's spectrum; see :func:`estimate_psf_map` for a map over tiles.
    """
    _check_image(image)
    return (estimator or BlurEstimator.load()).estimate(image)


@dataclass(frozen=True)
class PsfMap:
    """Smoothed per-cell estimates: ``cells[i][j]`` covers rows ``rows[i]`` and columns ``cols[j]`` (start, stop)."""

    rows: list[tuple[int, int]]
    cols: list[tuple[int, int]]
    cells: list[list[BlurEstimate]]

    def estimates(self) -> list[BlurEstimate]:
        return [cell for line in self.cells for cell in line]

    def describe(self) -> dict[str, Any]:
        """Compact provenance form: the cell grid and each cell's family, MTF50 and confidence."""
        return {
            "cell_rows": [list(r) for r in self.rows],
            "cell_cols": [list(c) for c in self.cols],
            "cells": [
                [
                    {
                        "family": e.family,
                        "params": e.params,
                        "mtf50_cycles_per_pixel": e.psf.describe()["mtf50_cycles_per_pixel"],
                        "confidence": round(e.confidence, 3),
                    }
                    for e in line
                ]
                for line in self.cells
            ],
        }


def _spans(length: int, cell: int) -> list[tuple[int, int]]:
    """As few ``cell``-px spans as cover ``[0, length)``, spread evenly (neighbours overlap rather than leave a thin last one)."""
    size = min(cell, length)
    count = -(-length // size)
    return [(start, start + size) for start in (round(i * (length - size) / max(count - 1, 1)) for i in range(count))]


def _smoothed(grid: list[list[tuple[np.ndarray, np.ndarray]]]) -> list[list[BlurEstimate]]:
    ny, nx = len(grid), len(grid[0])
    out = []
    for i in range(ny):
        line = []
        for j in range(nx):
            near = [grid[a][b] for a in range(max(0, i - 1), min(ny, i + 2)) for b in range(max(0, j - 1), min(nx, j + 2))]
            votes = np.zeros(len(FAMILIES))
            for logits, _ in near:
                votes += _softmax(logits)
            family = int(votes.argmax())
            chosen = [row for logits, row in near if int(logits.argmax()) == family] or [row for _, row in near]
            logits = np.log(np.maximum(votes / votes.sum(), 1e-9))
            row = np.median(np.stack(chosen), axis=0)
            if family in (1, 3):  # angles: the median of (cos 2θ, sin 2θ) pairs, renormalised
                a = slice(2, 4) if family == 1 else slice(6, 8)
                row[a] = row[a] / max(float(np.hypot(*row[a])), 1e-9)
            line.append(_estimate_from_row(logits, row))
        out.append(line)
    return out


def estimate_psf_map(image: np.ndarray | torch.Tensor, cell: int = CELL, estimator: BlurEstimator | None = None) -> PsfMap:
    """Per-cell blur estimates of ``image`` (as :func:`estimate_psf`), smoothed over 3×3 neighbourhoods.

    Cells are ``cell`` px (≥ 128), spread evenly over the image (the last ones overlap rather than being thin).
    """
    if cell < MIN_SIDE:
        raise InvalidOption(f"cell={cell}: a cell must be at least {MIN_SIDE} px", value=cell, option="cell")
    h, w = _check_image(image)
    estimator = estimator or BlurEstimator.load()
    rows, cols = _spans(h, cell), _spans(w, cell)
    grey = grey_of(image)  # once: each cell's spectrum and its motion fit read the same grey
    crops = [grey[r0:r1, c0:c1] for r0, r1 in rows for c0, c1 in cols]
    outputs = estimator.outputs(np.stack([log_power_spectrum(crop, WINDOW) for crop in crops]))
    pairs = [(out[LAYOUT["logits"]], _measured_length(out[LAYOUT["logits"]], out[4:], crop)) for out, crop in zip(outputs, crops)]
    grid = [pairs[i * len(cols) : (i + 1) * len(cols)] for i in range(len(rows))]
    return PsfMap(rows, cols, _smoothed(grid))
