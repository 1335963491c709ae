"""Model construction and the safetensors + JSON weights format.

A weights file ``NAME.safetensors`` carries its :class:`ModelConfig` twice: in the
safetensors metadata (so the single file is enough) and in ``NAME.json`` beside it
(so people and other tools can read it). Nothing here unpickles.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from meddeblur.errors import UserError
from meddeblur.io import atomic_path, atomic_write
from meddeblur.models.attention_unet import AttentionUNet

ARCHITECTURES = ("attention-unet",)
#: Spatial sizes must be multiples of this (four 2×2 poolings).
SIZE_MULTIPLE = 16
#: Inside a run folder, the weights that ``--model RUN`` means.
BEST_WEIGHTS = "best.safetensors"


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network before loading its weights."""

    arch: str = "attention-unet"
    width: int = 64
    in_channels: int = 3
    out_channels: int = 3

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Build and validate a config read from a file; ValueError when it cannot describe a network."""
        if not isinstance(data, dict):
            raise ValueError("config is not a JSON object")
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in known})
        if config.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {config.arch!r}")
        for name in ("width", "in_channels", "out_channels"):
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        return config


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised network for ``config``."""
    if config.arch == "attention-unet":
        return AttentionUNet(config.width, config.in_channels, config.out_channels)
    raise UserError(f"unknown architecture {config.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, BatchNorm running-statistic values)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(b.numel() for name, b in model.named_buffers() if "running_" in name)
    return trainable, running


def save_weights(model: nn.Module, config: ModelConfig, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` config atomically."""
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"meddeblur_config": json.dumps(asdict(config))}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    info = {"config": asdict(config), **(extra or {})}
    with atomic_write(path.with_suffix(".json"), "w") as fh:
        json.dump(info, fh, indent=2)
    return path


def resolve_weights(model: str | Path) -> Path:
    """Map ``--model`` (a run folder or a .safetensors file) to the weights file."""
    path = Path(model)
    if path.is_dir():
        path = path / BEST_WEIGHTS
        if not path.is_file():
            raise UserError(f"{path}: run folder has no {BEST_WEIGHTS}; finish or resume training, or pass a .safetensors file")
    elif not path.exists():
        raise UserError(f"{path}: no such model; pass a run folder or a .safetensors weights file")
    return path


def weights_id(path: str | Path) -> str:
    """Short content hash identifying a weights file (first 12 hex of SHA-256)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


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
        raise UserError(f"{path}: not a meddeblur weights file ({exc}); pass a .safetensors written by meddeblur train") from None
    raise UserError(f"{path}: weights carry no model config and {sidecar.name} is missing; keep the .json written beside it")


def load_model(model: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig, Path]:
    """Load ``--model`` (run folder or .safetensors) in eval mode: (network, config, weights path)."""
    path = resolve_weights(model)
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: weights must be a .safetensors file written by meddeblur (pickled checkpoints are not loaded)")
    config = _read_config(path)
    network = build_model(config)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path}: cannot read weights ({exc}); the file is corrupt, re-export it") from None
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise UserError(f"{path}: weights do not fit {config.arch} width {config.width} ({detail}); use the .json written with these weights") from None
    return network.to(device).eval(), config, path
