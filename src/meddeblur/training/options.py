"""The options of a training run: one dataclass, validated once, shared by the CLI and Python callers.

The defaults are the reference system's (so run folders of older versions load unchanged); ``meddeblur train`` fills
them from a recipe (:mod:`meddeblur.training.recipes`). Every value is checked in ``__post_init__``, so a bad option
is an :class:`~meddeblur.errors.InvalidOption` naming the parameter before any work starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from meddeblur.errors import InvalidOption
from meddeblur.losses import LossWeights
from meddeblur.models import NAFNET_FIELDS, ModelConfig

__all__ = ["TrainOptions"]


@dataclass
class TrainOptions:
    """Every option of ``meddeblur train``; stored in the run folder and reused by ``--resume``.

    The defaults are the reference system's (so run folders of older versions load unchanged);
    ``meddeblur train`` fills them from a recipe (:mod:`meddeblur.training.recipes`).
    """

    blurred_dir: str | None
    sharp_dir: str
    out: str
    degrade: str | None = None
    arch: str = "attention-unet"
    width: int | None = None  # None: the architecture's default (64 for attention-unet*, 16 for nafnet)
    # NAFNet block counts (meddeblur.models.ModelConfig); None: the architecture's default, or with `init` the weights'
    # own. With `init`, more blocks than the weights have grow the network (meddeblur.models.grow_model).
    enc_blocks: tuple[int, ...] | None = None
    middle_blocks: int | None = None
    dec_blocks: tuple[int, ...] | None = None
    size: int | None = 256
    crop: int | None = None
    epochs: int = 100
    max_minutes: float | None = None  # training budget; with the cosine schedule also its horizon
    budget_clock: str = (
        "wall"  # what --max-minutes counts: "wall" clock or process "cpu" time (all threads; fair on a shared machine)
    )
    batch: int = 8
    lr: float = 1e-4
    seed: int = 42
    loss: LossWeights = field(default_factory=LossWeights)
    perceptual: bool = False
    vgg19_weights: str | None = None
    patience: int | None = 10  # None: no early stopping
    lr_patience: int = 5
    lr_factor: float = 0.5
    device: str = "auto"
    skip_bad: bool = False
    amp: bool = True  # CUDA only: bf16 (or fp16 + GradScaler) autocast
    channels_last: bool = True  # CUDA only
    recipe: str = "reference"
    init: str | None = None  # "default" (the shipped weights) or a .safetensors file / run folder to start from
    optimizer: str = "adam"  # "adam" (Keras epsilon) or "adamw" (betas 0.9/0.9)
    weight_decay: float = 0.0
    schedule: str = "plateau"  # "plateau" (per epoch, on val loss) or "cosine" (per step, see meddeblur.training.schedule)
    steps: int | None = None  # cosine horizon in optimizer steps (else --max-minutes)
    epoch_steps: int | None = None  # steps between validations; None: one pass over the training pairs
    warmup: int = 0
    clip: float | None = None
    ema: float | None = None
    scales: tuple[float, float] | None = None  # sharp-only data: random-scale native crops (meddeblur.data.sampling)
    soften: float = 0.0
    compress: float = 0.0
    threads: int | None = None  # torch intra-op threads (None: torch's choice)
    perturb_psf: float = 0.0  # psf-nafnet: share of training samples told a slightly wrong PSF (zoomed 0.8–1.25×)
    estimated_psf: float = 0.0  # psf-nafnet: share of training samples told the PSF the blur estimator finds in them

    def __post_init__(self) -> None:
        for name in ("width", "size", "crop", "epochs", "batch", "patience", "lr_patience", "steps", "threads", "epoch_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidOption(f"{name}={value}: must be a positive integer", value=value, option=name)
        for name in ("size", "crop"):
            if getattr(self, name) is not None and getattr(self, name) % 16:
                raise InvalidOption(
                    f"{name}={getattr(self, name)}: must be a multiple of 16 (the network pools four times)",
                    value=getattr(self, name),
                    option=name,
                )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InvalidOption(f"lr={self.lr}: must be a positive number, e.g. 1e-4", value=self.lr, option="lr")
        if self.seed < 0:
            raise InvalidOption(f"seed={self.seed}: must be 0 or a positive integer", value=self.seed, option="seed")
        if self.max_minutes is not None and not (math.isfinite(self.max_minutes) and self.max_minutes > 0):
            raise InvalidOption(
                f"max_minutes={self.max_minutes}: must be a positive number of minutes",
                value=self.max_minutes,
                option="max_minutes",
            )
        for name in ("soften", "compress", "perturb_psf", "estimated_psf"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidOption(
                    f"{name}={getattr(self, name)}: a share of the training sources, from 0 to 1",
                    value=getattr(self, name),
                    option=name,
                )
        blocks = self.blocks
        if blocks:
            name = next(iter(blocks))
            try:
                ModelConfig(arch=self.arch, width=self.width, **blocks).validate()
            except ValueError as exc:
                raise InvalidOption(str(exc), value=blocks[name], option=name) from None
        for name in (term.name for term in fields(LossWeights)):
            value = getattr(self.loss, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidOption(
                    f"w_{name}={value}: must be 0 (term off) or a positive number", value=value, option=f"w_{name}"
                )

    @property
    def blocks(self) -> dict[str, Any]:
        """The NAFNet block counts that were given (the others: the architecture's or the initial weights')."""
        return {name: getattr(self, name) for name in NAFNET_FIELDS if getattr(self, name) is not None}

    @classmethod
    def from_dict(cls, data: dict) -> TrainOptions:
        data = dict(data)
        data["loss"] = LossWeights(**data.get("loss", {}))
        for name in ("scales", "enc_blocks", "dec_blocks"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        return cls(**data)
