"""A run's recipe: a digest of everything the loaded model's provenance record is made from, computed without torch.

A folder run decides what is already done by comparing each output's provenance record with the one its model
would write (:mod:`meddeblur.runs.plan`). Making that record means loading the model — importing torch and
reading the weights, about 2 s, while proving 200 finished outputs done takes well under one. The record is a
function of this meddeblur version, the engine, the tiling, the method, the PSF and the bytes of the weights files
involved; their digest, written into every output beside the record, lets a rerun prove its outputs done without
loading anything. Equal recipes mean equal records; different recipes prove nothing (a PSF spelt another way), and
the run then loads the model and compares the records themselves.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from meddeblur import __version__
from meddeblur.errors import UserError
from meddeblur.io.formats import names_psf_file
from meddeblur.shipped import WEIGHTS_FOLDER, file_digest, resolve_weights

__all__ = ["recipe_of"]

#: The provenance key the recipe is written under.
RECIPE_KEY = "recipe"


def recipe_of(
    model: str | Path | None,
    engine: str,
    tile: int,
    overlap: int,
    psf: Any = None,
    method: str | None = None,
    estimator: str | Path | None = None,
) -> str | None:
    """The recipe (16 hex) of a model loaded with these :class:`~meddeblur.runs.workers.ModelSpec` fields; None
    where one of them cannot be digested without loading it (a PSF object, weights exported to ONNX on the fly, a
    file that is not there: loading says why)."""
    onnx_file = model is not None and str(model).lower().endswith(".onnx")
    if engine == "onnx" and not onnx_file:
        return None  # exported on the fly: the exported graph's bytes, hence its id, are not known before exporting
    try:
        weights = [file_digest(model if onnx_file and model is not None else resolve_weights(model))]
        told = psf is not None or method is not None
        if told:  # the PSF network, the denoiser, the estimator and the blind fallback may each name themselves
            weights += [file_digest(path) for path in sorted(WEIGHTS_FOLDER.glob("*.safetensors"))]
        if estimator is not None:
            weights.append(file_digest(estimator))
        psf_key = _psf_key(psf)
    except (OSError, UserError):  # the load that follows names the file and the fix
        return None
    if psf is not None and psf_key is None:
        return None
    text = json.dumps(
        {
            "version": __version__,
            "engine": "onnx" if onnx_file else engine,
            "tile": tile,
            "overlap": overlap,
            "method": method,
            "psf": psf_key,
            "weights": weights,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _psf_key(psf: Any) -> list[str] | None:
    """What identifies ``psf`` as :func:`~meddeblur.psf.kernel.load_psf` will read it; None for what it cannot."""
    if isinstance(psf, np.ndarray):
        return ["array", str(psf.dtype), str(psf.shape), hashlib.sha256(np.ascontiguousarray(psf).tobytes()).hexdigest()]
    if isinstance(psf, (str, Path)):
        return ["file", file_digest(psf)] if names_psf_file(psf) else ["spec", str(psf)]
    return None
