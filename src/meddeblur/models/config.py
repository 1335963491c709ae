"""Network configurations and the factory: :class:`ModelConfig`, :func:`build_model`, size multiples, and growing a
trained NAFNet into a deeper one (the new blocks start as identities)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from torch import nn

from meddeblur.errors import CorruptFile, InvalidOption, UserError
from meddeblur.models.attention_unet import AttentionUNet
from meddeblur.models.nafnet import NAFNet
from meddeblur.models.psf_nafnet import PSFNAFNet
from meddeblur.models.residual import ResidualAttentionUNet

ARCHITECTURES = ("attention-unet", "attention-unet-residual", "nafnet", "psf-nafnet")
#: Architectures that are told the blur: their input carries a kernel canvas after the image channels.
PSF_ARCHITECTURES = ("psf-nafnet",)
_NAFNETS = ("nafnet", "psf-nafnet")
#: Size multiple of the reference (four 2×2 poolings); other configs: :func:`size_multiple`.
SIZE_MULTIPLE = 16
#: Base channels when a config names none: the reference's 64, NAFNet's measured CPU default.
DEFAULT_WIDTHS = {"attention-unet": 64, "attention-unet-residual": 64, "nafnet": 16, "psf-nafnet": 16}
#: NAFNet block counts when a config names none: no blocks at full resolution, where
#: memory-bound LayerNorm/depthwise passes cost most on a CPU (benchmarks/results/flops.md).
NAFNET_DEFAULTS = {"enc_blocks": (0, 1, 2, 4), "middle_blocks": 4, "dec_blocks": (0, 1, 1, 1)}
#: The ModelConfig fields that hold NAFNet block counts.
NAFNET_FIELDS = tuple(NAFNET_DEFAULTS)
_MAX_LEVELS = 8  # 2^8 = 256: beyond that the size multiple exceeds any training crop


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network before loading its weights.

    ``width=None`` means the architecture's default (:data:`DEFAULT_WIDTHS`); the NAFNet
    fields are ``None`` for the other architectures and filled from :data:`NAFNET_DEFAULTS`
    for NAFNet, so a stored config always names every number. JSON has no tuples: lists
    are accepted and stored as tuples, so ``from_dict(json.loads(json.dumps(asdict(c)))) == c``.
    """

    arch: str = "attention-unet"
    width: int | None = None
    in_channels: int = 3
    out_channels: int = 3
    enc_blocks: tuple[int, ...] | None = None
    middle_blocks: int | None = None
    dec_blocks: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise through object.__setattr__; invalid values are left for validate().
        if self.width is None:
            object.__setattr__(self, "width", DEFAULT_WIDTHS.get(self.arch, 64) if isinstance(self.arch, str) else 64)
        for name in ("enc_blocks", "dec_blocks"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.arch in _NAFNETS:
            for name, default in NAFNET_DEFAULTS.items():
                if getattr(self, name) is None:
                    object.__setattr__(self, name, default)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Build and validate a config read from a file; ValueError when it cannot describe a network."""
        if not isinstance(data, dict):
            raise ValueError("config is not a JSON object")
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in data.items() if k in known})
        config.validate()
        return config

    def validate(self) -> None:
        """ValueError naming the first field that cannot describe a network."""
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}")
        for name in ("width", "in_channels", "out_channels"):
            value = getattr(self, name)
            if not _positive_int(value):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.arch != "attention-unet" and self.in_channels != self.out_channels:
            raise ValueError(f"{self.arch} adds its input to its output: in_channels and out_channels must be equal")
        if self.arch not in _NAFNETS:
            for name in NAFNET_FIELDS:
                if getattr(self, name) is not None:
                    raise ValueError(f"`{name}` applies to nafnet only, not {self.arch}")
            return
        for name in ("enc_blocks", "dec_blocks"):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or not 1 <= len(value) <= _MAX_LEVELS
                or not all(_positive_int(v, allow_zero=True) for v in value)
            ):
                raise ValueError(f"`{name}` must be a list of 1 to {_MAX_LEVELS} block counts (integers ≥ 0), not {value!r}")
        assert self.enc_blocks is not None and self.dec_blocks is not None  # tuples: checked above
        if len(self.enc_blocks) != len(self.dec_blocks):
            raise ValueError(
                f"`enc_blocks` and `dec_blocks` need one entry per level: {len(self.enc_blocks)} vs {len(self.dec_blocks)}"
            )
        if not _positive_int(self.middle_blocks, allow_zero=True):
            raise ValueError(f"`middle_blocks` must be an integer ≥ 0, not {self.middle_blocks!r}")


def _positive_int(value: object, allow_zero: bool = False) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= (0 if allow_zero else 1)


def size_multiple(config: ModelConfig) -> int:
    """Spatial sides the network accepts are multiples of this: 2^(number of downsamplings)."""
    if config.arch in _NAFNETS:
        assert config.enc_blocks is not None  # a NAFNet's are filled in on creation
        return 2 ** len(config.enc_blocks)
    return SIZE_MULTIPLE


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised network for ``config``."""
    if config.arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {config.arch!r}; choose one of: {', '.join(ARCHITECTURES)}")
    try:
        config.validate()
    except ValueError as exc:
        raise UserError(f"model config: {exc}") from None
    assert config.width is not None  # filled in on creation, checked by validate()
    if config.arch == "attention-unet":
        return AttentionUNet(config.width, config.in_channels, config.out_channels)
    if config.arch == "attention-unet-residual":
        return ResidualAttentionUNet(config.width, config.in_channels, config.out_channels)
    assert config.enc_blocks is not None and config.middle_blocks is not None and config.dec_blocks is not None  # NAFNets'
    if config.arch == "psf-nafnet":
        return PSFNAFNet(config.width, config.in_channels, config.enc_blocks, config.middle_blocks, config.dec_blocks)
    return NAFNet(
        config.width, config.in_channels, config.out_channels, config.enc_blocks, config.middle_blocks, config.dec_blocks
    )


def grown_config(config: ModelConfig, **blocks: Any) -> ModelConfig:
    """``config`` with the NAFNet block counts in ``blocks`` (``enc_blocks``, ``middle_blocks``, ``dec_blocks``).

    InvalidOption unless the result only adds blocks: same architecture, width and levels, at
    least as many blocks everywhere (see :func:`grow_model`).
    """
    if not blocks:
        return config
    name = next(iter(blocks))
    if config.arch not in _NAFNETS:
        raise InvalidOption(f"`{name}` applies to nafnet weights only; these are {config.arch}", value=blocks[name], option=name)
    grown = replace(config, **blocks)
    try:
        grown.validate()
    except ValueError as exc:
        raise InvalidOption(str(exc), value=blocks[name], option=name) from None
    for name in NAFNET_FIELDS:
        old, new = getattr(config, name), getattr(grown, name)
        old_counts, new_counts = (old, new) if isinstance(old, tuple) else ((old,), (new,))
        if len(old_counts) != len(new_counts) or any(n < o for o, n in zip(old_counts, new_counts)):
            raise InvalidOption(
                f"{name}={_listed(new_counts)}: the initial weights have {_listed(old_counts)}; a network can only grow "
                "(same levels, at least as many blocks each)",
                value=new,
                option=name,
            )
    return grown


def _listed(counts: tuple[int, ...]) -> str:
    return ",".join(map(str, counts))


def grow_model(state: dict, config: ModelConfig, grown: ModelConfig) -> nn.Module:
    """A network for ``grown`` (from :func:`grown_config`) holding the weights ``state`` of ``config``.

    New NAFBlocks are appended where :class:`NAFNet` puts them and keep their zero residual
    scales, so the grown network computes exactly what ``state`` did: training goes on from
    there with more capacity instead of starting over (how the shipped model grew).
    """
    network = build_model(grown)
    # Only the appended blocks may be missing; shapes that differ raise in load_state_dict itself.
    unexpected = network.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise CorruptFile(
            f"weights of {config.arch} width {config.width} do not fit the grown network: {', '.join(unexpected[:3])}"
        )
    return network


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, BatchNorm running-statistic values)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running = sum(b.numel() for name, b in model.named_buffers() if "running_" in name)
    return trainable, running
