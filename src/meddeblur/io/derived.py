"""Writing a processed image as a derived file of its source: provenance, the source's metadata, the overwrite rule.

What :meth:`meddeblur.Deblurrer.write` does, and what ``meddeblur deblur`` does per file: the output carries the
provenance record, keeps the source's colour metadata (ICC profile of its colour space, PNG colour chunks), bit
depth (where the format holds it), grey or colour, and alpha; a DICOM source written to ``.dcm`` gives a derived
DICOM instance. An existing file is replaced only if meddeblur wrote it (or with ``overwrite``), never the source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from meddeblur.errors import UserError
from meddeblur.io.decode import read_image
from meddeblur.io.encode import write_image
from meddeblur.io.formats import SUFFIX_FORMATS, LoadedImage, resolve_format
from meddeblur.io.ownership import check_replaceable
from meddeblur.io.pixels import unit_float
from meddeblur.io.provenance import sidecar_path

__all__ = ["write_derived"]


def _as_numpy(image: Any) -> np.ndarray:
    """A numpy image, or a torch (C, H, W) / (1, C, H, W) tensor as (H, W, C) of the same dtype."""
    if type(image).__module__.split(".")[0] != "torch":
        return image
    tensor = image.detach().cpu()
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3:
        raise ValueError(f"image: a tensor to write must be (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}")
    return tensor.permute(1, 2, 0).numpy()


def write_derived(
    path: str | os.PathLike[str],
    image: Any,
    provenance: dict[str, Any],
    source: str | os.PathLike[str] | None = None,
    *,
    format: str | None = None,
    jpeg_quality: int = 95,
    overwrite: bool = False,
) -> Path:
    """Write ``image`` (numpy (H, W[, C]) uint8, uint16 or float in [0, 1], or a torch (C, H, W) tensor) to ``path``
    with ``provenance``; returns the path.

    ``source``: the file ``image`` was made from. Its metadata is then kept as the CLI keeps it: ICC profile and PNG
    colour chunks, bit depth (a float image from a 16-bit source is written at 16 bits in PNG and TIFF), grey (a
    three-channel result of a grey source is written grey, the mean of its channels) and alpha (the source's, unless
    ``image`` has its own); a DICOM source and a ``.dcm`` ``path`` give a derived DICOM. ``format`` overrides the
    suffix (png, jpeg, tiff, bmp). Raises :class:`~meddeblur.errors.UserError` if ``path`` exists and was not written
    by meddeblur (unless ``overwrite``) or is the source itself; ``ValueError`` for an array it does not take.
    """
    path = Path(path)
    array = _as_numpy(image)
    original = read_image(source) if source is not None else None
    if original is not None and os.path.lexists(path) and path.resolve() == original.path.resolve():
        raise UserError(f"{path}: is the source image itself; write the result to another file", value=path)
    if SUFFIX_FORMATS.get(path.suffix.lower()) == "DICOM" and format is None:
        return _write_dicom(path, array, provenance, original, overwrite)
    fmt = resolve_format(path, format)
    check_replaceable(path, overwrite, "path")
    if fmt.name == "BMP":
        check_replaceable(sidecar_path(path), overwrite, "path")
    options: dict[str, Any] = {}
    if original is not None:
        options = _like(array, original)
    return write_image(
        path, array, format=fmt.name, jpeg_quality=jpeg_quality, provenance=provenance, metadata_from=original, **options
    )


def _like(array: np.ndarray, original: LoadedImage) -> dict[str, Any]:
    """write_image's grayscale, alpha and bit depth for ``array`` made from ``original``."""
    channels = 1 if array.ndim == 2 else array.shape[2]
    options: dict[str, Any] = {}
    if channels == 3:
        options["grayscale"] = original.grayscale
        if original.alpha is not None and original.alpha.shape == array.shape[:2]:
            options["alpha"] = original.alpha
    if np.issubdtype(array.dtype, np.floating):
        options["bit_depth"] = original.bit_depth
    return options


def _write_dicom(
    path: Path, array: np.ndarray, provenance: dict[str, Any], original: LoadedImage | None, overwrite: bool
) -> Path:
    from meddeblur.io.dicom import write_dicom

    if original is None or original.format != "DICOM":
        raise UserError(
            f"{path}: a DICOM is written only as a derived instance of a DICOM source; pass source= the .dcm "
            "it was read from, or write another format",
            value=path,
        )
    check_replaceable(path, overwrite, "path")
    x = unit_float(array, "image")
    if x.ndim == 3 and x.shape[2] in (2, 4):
        x = x[:, :, :-1]  # DICOM outputs carry no alpha
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    rgb = np.repeat(x[:, :, None], 3, axis=2) if x.ndim == 2 else x
    return write_dicom(path, rgb, original.source, provenance)
