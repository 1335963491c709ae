"""The weights files meddeblur uses: those shipped inside the package (MODEL_CARD.md) and what ``model`` names.

Free of torch on purpose: planning a folder run names and digests these files (a rerun proves its outputs done
from their digests, :meth:`~meddeblur.runs.workers.ModelSpec.recipe`) without paying the second torch's
import costs. :mod:`meddeblur.models` loads them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from meddeblur.errors import NotFound

__all__ = [
    "WEIGHTS_FOLDER",
    "DEFAULT_WEIGHTS",
    "PSF_WEIGHTS",
    "DENOISER_WEIGHTS",
    "ESTIMATOR_WEIGHTS",
    "BEST_WEIGHTS",
    "resolve_weights",
    "file_digest",
    "weights_id",
]

#: Where the shipped weights live (each ``NAME.safetensors`` with its ``NAME.json``).
WEIGHTS_FOLDER = Path(__file__).resolve().parent / "weights"
#: The trained blind model; used when no ``model`` is given.
DEFAULT_WEIGHTS = WEIGHTS_FOLDER / "default.safetensors"
#: The kernel-conditioned restorer (psf-nafnet), used when a PSF is given and no ``model``.
PSF_WEIGHTS = WEIGHTS_FOLDER / "psf.safetensors"
#: The plug-and-play restorer's denoiser.
DENOISER_WEIGHTS = WEIGHTS_FOLDER / "denoiser.safetensors"
#: The blur estimator of method ``psf``.
ESTIMATOR_WEIGHTS = WEIGHTS_FOLDER / "estimator.safetensors"
#: Inside a run folder, the weights that ``model=RUN`` means.
BEST_WEIGHTS = "best.safetensors"


def resolve_weights(model: str | Path | None = None) -> Path:
    """Map ``model`` (a run folder or a .safetensors file; ``None``: the shipped model) to the weights file."""
    if model is None:
        if not DEFAULT_WEIGHTS.is_file():
            raise NotFound(
                f"{DEFAULT_WEIGHTS}: the shipped model is missing from this installation; reinstall meddeblur or pass `model`",
                value=DEFAULT_WEIGHTS,
            )
        return DEFAULT_WEIGHTS
    path = Path(model)
    if path.is_dir():
        path = path / BEST_WEIGHTS
        if not path.is_file():
            raise NotFound(
                f"{path}: run folder has no {BEST_WEIGHTS}; finish or resume training, or pass a .safetensors file", value=path
            )
    elif not path.exists():
        raise NotFound(f"{path}: no such model; pass a run folder or a .safetensors weights file", value=path)
    return path


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_id(path: str | Path) -> str:
    """Short content hash identifying a weights file (first 12 hex of SHA-256)."""
    return file_digest(path)[:12]
