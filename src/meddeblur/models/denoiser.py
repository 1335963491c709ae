"""The learned prior of the plug-and-play restorer: a Gaussian denoiser told the noise level (DRUNet / FFDNet style).

``(N, 3, H, W)`` noisy images and their noise standard deviation ``σ`` (in [0, 1] units: a number, ``(N,)`` or an
``(N, 1, H, W)`` map) → ``(N, 3, H, W)`` denoised. A denoiser learns image statistics only: it is trained on sharp
photographs with added noise, never shown a blur, so it serves any kernel and any PSF a clinic calibrates; the
physics (:class:`meddeblur.physics.DataStep`) does the deblurring around it (:mod:`meddeblur.restore.pnp`).

Design, for the CPU budget of eight calls per image:

* **half resolution inside** (FFDNet): the image is pixel-unshuffled 2× (3 → 12 channels) with the σ map
  appended, so every convolution runs on a quarter of the pixels; the tail shuffles back. A 3×3 convolution at
  width ``c`` on the half-size grid costs what one at width ``c / 2`` costs at full size;
* **a residual U-Net** (DRUNet's ResUNet, USRNet's prior): plain 3×3 convolutions and ReLU (fast, oneDNN-friendly
  on CPUs), 2×2 strided convolutions down and transposed ones up, additive skips;
* **no biases** (DRUNet): a bias-free network scales with its input's contrast and generalises across noise
  levels it was not trained at;
* **the identity at start**: the tail is zero-initialised and the output is ``input + tail``; the noise map is
  an input, so σ = 0 can learn to change (almost) nothing.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from meddeblur.errors import CorruptFile, NotFound
from meddeblur.files import atomic_write
from meddeblur.shipped import DENOISER_WEIGHTS  # re-exported

__all__ = ["Denoiser", "DEFAULT_WIDTHS", "DEFAULT_BLOCKS", "SIGMA_MAX", "DENOISER_WEIGHTS", "save_denoiser", "load_denoiser"]

#: Channels per level (half, quarter, eighth resolution).
DEFAULT_WIDTHS = (32, 64, 128)
#: Residual blocks per level, on each side of the U.
DEFAULT_BLOCKS = 1
#: The largest noise level the denoiser is trained for (50 / 255); larger σ are clamped to it.
SIGMA_MAX = 50.0 / 255.0
_UNSHUFFLE = 2


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


def _stage(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(_ResBlock(channels) for _ in range(blocks)))


class Denoiser(nn.Module):
    """(N, C, H, W) image and σ → (N, C, H, W) denoised; H, W multiples of :attr:`size_multiple` (see the module docstring)."""

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS, blocks: int = DEFAULT_BLOCKS, channels: int = 3) -> None:
        super().__init__()
        if len(widths) < 1 or any(w < 1 for w in widths) or blocks < 0:
            raise ValueError(f"widths must be positive and blocks ≥ 0, got widths={widths}, blocks={blocks}")
        u2 = _UNSHUFFLE**2
        self.channels, self.widths, self.blocks = channels, tuple(widths), blocks
        self.head = nn.Conv2d(channels * u2 + 1, widths[0], 3, padding=1, bias=False)
        self.encoders = nn.ModuleList(_stage(w, blocks) for w in widths[:-1])
        self.downs = nn.ModuleList(nn.Conv2d(a, b, 2, stride=2, bias=False) for a, b in itertools.pairwise(widths))
        self.body = _stage(widths[-1], blocks)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(b, a, 2, stride=2, bias=False) for a, b in itertools.pairwise(widths))
        self.decoders = nn.ModuleList(_stage(w, blocks) for w in widths[:-1])
        self.tail = nn.Conv2d(widths[0], channels * u2, 3, padding=1, bias=False)
        nn.init.zeros_(self.tail.weight)

    @property
    def size_multiple(self) -> int:
        return _UNSHUFFLE * 2 ** (len(self.widths) - 1)

    def forward(self, images: Tensor, sigma: float | Tensor) -> Tensor:
        n, c, h, w = images.shape
        if c != self.channels or h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"expected (N, {self.channels}, H, W) with H, W multiples of {self.size_multiple}, got {tuple(images.shape)}"
            )
        s = torch.as_tensor(sigma, dtype=images.dtype, device=images.device)
        s = s.reshape(-1, 1, 1, 1) if s.dim() <= 1 else s
        s = s.clamp(0.0, SIGMA_MAX)
        hh, ww = h // _UNSHUFFLE, w // _UNSHUFFLE
        level = F.avg_pool2d(s, _UNSHUFFLE) if s.shape[-2:] == (h, w) else s.expand(n, 1, hh, ww)
        x = self.head(torch.cat([F.pixel_unshuffle(images, _UNSHUFFLE), level.expand(n, 1, hh, ww)], dim=1))
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.body(x)
        for up, decoder, skip in zip(reversed(self.ups), reversed(self.decoders), reversed(skips)):
            x = decoder(up(x) + skip)
        return images + F.pixel_shuffle(self.tail(x), _UNSHUFFLE)


_META_KEY = "meddeblur_denoiser"


def save_denoiser(model: Denoiser, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``path`` (.safetensors, its shape in the metadata) and a ``.json`` beside it, atomically."""
    path = Path(path)
    shape = {"widths": list(model.widths), "blocks": model.blocks, "channels": model.channels}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_write(path) as fh:
        fh.write(save(state, metadata={_META_KEY: json.dumps(shape)}))
    with atomic_write(path.with_suffix(".json"), "w") as fh:
        json.dump({"denoiser": shape, **(extra or {})}, fh, indent=2)
    return path


def load_denoiser(path: str | Path | None = None, device: str | torch.device = "cpu") -> Denoiser:
    """The denoiser in ``path`` (None: the shipped one), in eval mode; a :class:`~meddeblur.errors.UserError` when unreadable."""
    path = DENOISER_WEIGHTS if path is None else Path(path)
    if not path.is_file():
        raise NotFound(
            f"{path}: no denoiser weights there; reinstall meddeblur or pass a .safetensors written by train_denoiser", value=path
        )
    try:
        with safe_open(str(path), framework="pt") as fh:
            shape = json.loads((fh.metadata() or {})[_META_KEY])
        model = Denoiser(tuple(shape["widths"]), int(shape["blocks"]), int(shape.get("channels", 3)))
        model.load_state_dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise CorruptFile(
            f"{path}: not a meddeblur denoiser ({detail}); pass the .safetensors train_denoiser wrote", value=path
        ) from None
    return model.to(device).eval()
