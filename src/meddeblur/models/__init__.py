"""The networks meddeblur trains and runs, and their weights: configurations and the factory
(:mod:`~meddeblur.models.config`), the safetensors format (:mod:`~meddeblur.models.weights`), the shipped weights'
paths (:mod:`meddeblur.shipped`). This module only re-exports them.
"""

from __future__ import annotations

from meddeblur.models.config import (
    ARCHITECTURES,
    DEFAULT_WIDTHS,
    NAFNET_DEFAULTS,
    NAFNET_FIELDS,
    PSF_ARCHITECTURES,
    SIZE_MULTIPLE,
    ModelConfig,
    build_model,
    count_parameters,
    grow_model,
    grown_config,
    size_multiple,
)
from meddeblur.models.flops import count_flops
from meddeblur.models.weights import lift_to_psf, load_model, save_weights
from meddeblur.shipped import BEST_WEIGHTS, DEFAULT_WEIGHTS, PSF_WEIGHTS, resolve_weights, weights_id

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_WIDTHS",
    "NAFNET_DEFAULTS",
    "NAFNET_FIELDS",
    "PSF_ARCHITECTURES",
    "SIZE_MULTIPLE",
    "ModelConfig",
    "build_model",
    "count_parameters",
    "grow_model",
    "grown_config",
    "size_multiple",
    "count_flops",
    "load_model",
    "lift_to_psf",
    "save_weights",
    "BEST_WEIGHTS",
    "DEFAULT_WEIGHTS",
    "PSF_WEIGHTS",
    "resolve_weights",
    "weights_id",
]
