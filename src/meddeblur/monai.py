"""MONAI transforms: :class:`Deblur` (array) and :class:`Deblurd` (dictionary), for a ``monai.transforms.Compose``.

Install with ``pip install 'meddeblur[monai]'``. A MONAI pipeline holds channel-first images: ``(C, H, W)`` torch tensors,
:class:`monai.data.MetaTensor` or numpy arrays, C in 1/3/4 (grey, RGB, RGB + alpha). Each transform returns the type,
dtype, shape and device it was given; a MetaTensor keeps its metadata (affine, file name, applied operations) and gains
the key ``"meddeblur"``: the same provenance record meddeblur writes into its output files (tool, version, model id,
"computer-processed (deblurred); not for diagnosis alone"). A plain tensor or array in a dictionary gets that record in
``data[f"{key}_meta_dict"]`` instead.

Values: numpy uint8 and uint16 are scaled by their own range; floats must lie in ``value_range`` (default ``(0, 1)``;
``LoadImage`` of an 8-bit PNG or JPEG gives floats in 0..255, so pass ``value_range=(0, 255)`` or scale first). Nothing
is clipped to fit: a value outside the range is a ``ValueError``. Integer tensors are refused, by the rule
:class:`meddeblur.Deblurrer` applies (:func:`meddeblur.inference.image_rules.check_tensor`): convert them to float.
MONAI's image readers store 2-D images as (C, W, H); the network was trained with flips and 90° rotations, so either
order works.

>>> import torch
>>> from monai.transforms import Compose
>>> from meddeblur.monai import Deblur
>>> out = Compose([Deblur()])(torch.full((3, 32, 48), 0.5))
>>> tuple(out.shape), out.dtype
((3, 32, 48), torch.float32)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddeblur.errors import InvalidOption, require

require("monai", "meddeblur.monai")

from monai.config import KeysCollection  # noqa: E402  (after the one-line MissingExtra check)
from monai.data import MetaTensor  # noqa: E402
from monai.transforms import MapTransform, Transform  # noqa: E402
from monai.utils import TransformBackends, convert_to_dst_type  # noqa: E402

from meddeblur.inference.deblurrer import Deblurrer  # noqa: E402
from meddeblur.inference.image_rules import check_tensor  # noqa: E402
from meddeblur.io.pixels import INTEGER_RANGES  # noqa: E402

__all__ = ["Deblur", "Deblurd", "PROVENANCE_KEY"]

#: The metadata key that carries meddeblur's provenance record.
PROVENANCE_KEY = "meddeblur"
_ACCEPTED = "numpy uint8 or uint16 (scaled by their range), or float in value_range (numpy or torch)"

Image = np.ndarray | torch.Tensor


def _describe(img: object) -> str:
    if isinstance(img, (np.ndarray, torch.Tensor)):
        return f"{type(img).__name__} {str(img.dtype).replace('torch.', '')} {tuple(img.shape)}"
    return type(img).__name__


class Deblur(Transform):
    """Deblur one channel-first image ``(C, H, W)`` (C in 1/3/4) with a meddeblur model.

    ``model``, ``engine``, ``device``, ``tile``, ``overlap``: as :meth:`meddeblur.Deblurrer.load` (None: the shipped
    model); or pass an already loaded ``deblurrer``. ``value_range``: the (low, high) that float images are given in.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]  # noqa: RUF012  (MONAI's Transform declares it a list)

    def __init__(
        self,
        model: str | Path | None = None,
        engine: str = "torch",
        device: str = "auto",
        tile: int = 1024,
        overlap: int = 128,
        value_range: Sequence[float] = (0.0, 1.0),
        deblurrer: Deblurrer | None = None,
    ) -> None:
        low, high = (float(v) for v in value_range)
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise InvalidOption(
                f"value_range={tuple(value_range)}: give (low, high) with high > low, e.g. (0, 255)",
                value=value_range,
                option="value_range",
            )
        self.value_range = (low, high)
        self.deblurrer = deblurrer if deblurrer is not None else Deblurrer.load(model, engine, device, tile, overlap)

    @property
    def provenance(self) -> dict:
        """The record stored under ``"meddeblur"`` in the metadata of every image this transform returns."""
        return dict(self.deblurrer.provenance)

    def __call__(self, img: Image) -> Image:
        """``img``: (C, H, W) numpy array, torch tensor or MetaTensor → the same type, dtype, shape and device, deblurred."""
        if not isinstance(img, (np.ndarray, torch.Tensor)):
            raise ValueError(f"img: a channel-first numpy array or torch tensor is needed; got {_describe(img)}")
        if img.ndim != 3 or img.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"img: a 2-D channel-first image (C, H, W) with C in 1/3/4 is needed; got {_describe(img)} "
                "(a 3-D volume: deblur its slices one by one)"
            )
        data = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        if isinstance(img, torch.Tensor):
            low, high = self.value_range
            check_tensor(data, "img", _ACCEPTED, "[0, 1]" if (low, high) == (0.0, 1.0) else f"value_range=({low:g}, {high:g})")
        scale = INTEGER_RANGES.get(img.dtype) if isinstance(img, np.ndarray) else None
        if scale is not None:
            values = data.to(torch.float32) / scale
        elif data.is_floating_point():
            values = self._normalised(data, img)
        else:
            raise ValueError(
                f"img: dtype {str(img.dtype).replace('torch.', '')} is not supported; got {_describe(img)}. Accepted: {_ACCEPTED}"
            )
        restored = self.deblurrer(values)
        if scale is not None:
            out = torch.round(restored.clamp(0, 1) * scale).to(data.dtype)
        else:
            low, high = self.value_range
            out = (
                (restored.to(torch.float64) * (high - low) + low).to(data.dtype)
                if (low, high) != (0.0, 1.0)
                else restored.to(data.dtype)
            )
        result, *_ = convert_to_dst_type(out, img, dtype=img.dtype)  # numpy stays numpy; a MetaTensor keeps (a copy of) its meta
        if isinstance(result, MetaTensor):
            result.meta[PROVENANCE_KEY] = self.provenance
        return result

    def _normalised(self, data: torch.Tensor, img: Image) -> torch.Tensor:
        low, high = self.value_range
        finite = bool(torch.isfinite(data).all())
        found_low, found_high = (float(data.min()), float(data.max())) if finite else (0.0, 0.0)
        if not finite or found_low < low or found_high > high:
            found = "NaN or infinity" if not finite else f"{found_low:g}..{found_high:g}"
            raise ValueError(
                f"img: float values must lie in value_range={self.value_range} (found {found}); got {_describe(img)}. "
                "Pass the range the images are in (value_range=(0, 255) after LoadImage of 8-bit files) or scale them first"
            )
        return (
            data.to(torch.float32)
            if (low, high) == (0.0, 1.0)
            else ((data.to(torch.float64) - low) / (high - low)).to(torch.float32)
        )


class Deblurd(MapTransform):
    """Dictionary version of :class:`Deblur`: deblurs ``data[key]`` for each of ``keys``.

    The provenance record goes into the MetaTensor's own metadata, or, for a plain tensor or array, into
    ``data[f"{key}_{meta_key_postfix}"]``, created when absent or None (a None there says "no metadata", as a
    missing key does; anything else but a mapping is a ``ValueError``). The other arguments are :class:`Deblur`'s.
    """

    backend = Deblur.backend

    def __init__(
        self,
        keys: KeysCollection,
        model: str | Path | None = None,
        engine: str = "torch",
        device: str = "auto",
        tile: int = 1024,
        overlap: int = 128,
        value_range: Sequence[float] = (0.0, 1.0),
        deblurrer: Deblurrer | None = None,
        meta_key_postfix: str = "meta_dict",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.deblur = Deblur(model, engine, device, tile, overlap, value_range, deblurrer)
        self.meta_key_postfix = meta_key_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta_key = f"{key}_{self.meta_key_postfix}"
            meta = d.get(meta_key)
            if meta is not None and not isinstance(meta, Mapping) and not isinstance(d[key], MetaTensor):  # before the work
                raise ValueError(
                    f"data[{meta_key!r}]: the metadata of {key!r} must be a dict (or None), got {type(meta).__name__}; "
                    "rename it, or pass meta_key_postfix to use another key"
                )
            d[key] = self.deblur(d[key])
            if not isinstance(d[key], MetaTensor):
                d[meta_key] = {**(meta or {}), PROVENANCE_KEY: self.deblur.provenance}
        return d
