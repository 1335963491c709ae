"""The weights format: safetensors with the :class:`~meddeblur.models.config.ModelConfig` inside (and in ``NAME.json``
beside it, for people and other tools), loading a model from a file or run folder, and lifting blind weights into
the kernel-conditioned network. Nothing here unpickles."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from meddeblur.errors import CorruptFile, InvalidOption, UnsupportedFormat
from meddeblur.files import atomic_write
from meddeblur.models.config import ModelConfig, build_model
from meddeblur.models.psf_nafnet import lift_blind_state
from meddeblur.shipped import resolve_weights


def save_weights(model: nn.Module, config: ModelConfig, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` config atomically."""
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"meddeblur_config": json.dumps(asdict(config))}
    # Serialised in memory, then written like every output: safetensors' own file writer reports a full disk
    # as a SafetensorError, which would not name the file.
    with atomic_write(path) as fh:
        fh.write(save(state, metadata=meta))
    info = {"config": asdict(config), **(extra or {})}
    with atomic_write(path.with_suffix(".json"), "w") as fh:
        json.dump(info, fh, indent=2)
    return path


def _read_config(path: Path) -> ModelConfig:
    sidecar = path.with_suffix(".json")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if "meddeblur_config" in meta:
            return ModelConfig.from_dict(json.loads(meta["meddeblur_config"]))
        if sidecar.is_file():
            return ModelConfig.from_dict(json.loads(sidecar.read_text())["config"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFile(
            f"{path}: not a meddeblur weights file ({exc}); pass a .safetensors written by meddeblur train", value=path
        ) from None
    raise CorruptFile(
        f"{path}: weights carry no model config and {sidecar.name} is missing; keep the .json written beside it", value=path
    )


def load_model(model: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig, Path]:
    """Load ``--model`` (run folder or .safetensors; ``None``: the shipped model) in eval mode: (network, config, weights path)."""
    path = resolve_weights(model)
    if path.suffix != ".safetensors":
        raise UnsupportedFormat(
            f"{path}: weights must be a .safetensors file written by meddeblur (pickled checkpoints are not loaded)", value=path
        )
    config = _read_config(path)
    network = build_model(config)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CorruptFile(f"{path}: cannot read weights ({exc}); the file is corrupt, re-export it", value=path) from None
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise CorruptFile(
            f"{path}: weights do not fit {config.arch} width {config.width} ({detail}); use the .json written with these weights",
            value=path,
        ) from None
    return network.to(device).eval(), config, path


def lift_to_psf(state: dict, config: ModelConfig) -> tuple[dict, ModelConfig]:
    """A blind ``nafnet`` (state, config) as an equivalent ``psf-nafnet`` one: the kernel-conditioned restorer
    starts out computing exactly what the blind weights do (see :mod:`meddeblur.models.psf_nafnet`)."""
    if config.arch != "nafnet":
        raise InvalidOption(
            f"a psf-nafnet can start from nafnet weights only; these are {config.arch}", value=config.arch, option="init"
        )
    return lift_blind_state(state, config.in_channels), replace(config, arch="psf-nafnet")
