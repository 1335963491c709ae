"""The model card answered by ``GET /v1/model``: what is served, how it was trained, and its limits."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from meddeblur import __version__
from meddeblur.models import DEFAULT_WEIGHTS, ModelConfig

#: Said whatever the weights: a deblurred photograph is not a measurement.
LIMITS = (
    "Not a diagnostic device: output images are computer-processed and not for diagnosis alone. "
    "Deblurring can invent or remove fine structure (pigment network, dots, vessels); compare with "
    "the original and re-capture when a finding matters. Trained and checked on dermoscopic "
    "photographs only."
)
#: Optional curated card beside the weights (written with the shipped model, see MODEL_CARD.md).
CARD_FILE = "model_card.json"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_card(
    config: ModelConfig | None, weights_path: Path | None, model_id: str, description: str | None = None
) -> dict[str, Any]:
    """The card as a JSON-ready dict: id, version, architecture, training data, limits.

    An ONNX model (no config, no weights file: ``meddeblur export`` wrote what it needs into the graph) gets the card
    its ``description`` (the model's own summary, e.g. ``nafnet width 16``) allows, with ``"engine": "onnx"``.

    Built from the weights' config and content hash; training details come from the
    weights' ``.json`` sidecar (everything in it besides ``config``) and, when present, a
    ``model_card.json`` beside the weights, whose keys override the defaults here unless
    it names another model's ``id`` (then it describes other weights and is ignored).
    ``id`` and ``version`` always describe what is actually served.
    """
    if config is None or weights_path is None:
        return {
            "id": model_id,
            "version": __version__,
            "name": "ONNX model",
            "engine": "onnx",
            "architecture": {"name": description or "not recorded in the ONNX file"},
            "training_data": "not recorded with these weights",
            "limits": LIMITS,
        }
    card: dict[str, Any] = {
        "id": model_id,
        "version": __version__,
        "name": "meddeblur default model" if weights_path.resolve() == DEFAULT_WEIGHTS.resolve() else weights_path.stem,
        "weights": weights_path.name,
        "architecture": {"name": config.arch, **{k: v for k, v in asdict(config).items() if k != "arch" and v is not None}},
        "training_data": "not recorded with these weights",
        "limits": LIMITS,
    }
    sidecar = {k: v for k, v in (_read_json(weights_path.with_suffix(".json")) or {}).items() if k != "config"}
    nested = sidecar.pop("training", None)
    training = {**sidecar, **(nested if isinstance(nested, dict) else {})}
    if training:
        card["training"] = training
        data = training.get("training_data", training.get("data"))
        if isinstance(data, (str, dict, list)):
            card["training_data"] = data
    curated = _read_json(weights_path.parent / CARD_FILE)
    if curated and curated.get("id", curated.get("weights_id", model_id)) == model_id:
        for key, value in curated.items():
            if key in ("id", "weights_id", "version"):
                continue
            # Objects are merged one level deep, so e.g. the architecture keeps its "name".
            both = isinstance(value, dict) and isinstance(card.get(key), dict)
            card[key] = {**card[key], **value} if both else value
    return card
