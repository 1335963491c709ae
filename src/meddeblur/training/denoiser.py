"""Training the plug-and-play prior (:class:`meddeblur.models.denoiser.Denoiser`) on sharp photographs with added noise.

No blur is simulated: a Gaussian denoiser learns image statistics only, which is why one prior serves every kernel.
Each sample is a ``crop``-px window of a sharp training image, taken at a down-scale drawn log-uniformly from
``scales`` (area-resampled, so fine and coarse structure both appear at the denoiser's pixel scale), flipped and
rotated; then

* with probability ``jpeg`` it is JPEG-compressed at quality 60–95 (real photographs are JPEGs, and the restorer's
  inputs carry compression error the prior must treat as noise), and
* white Gaussian noise of σ is added, σ drawn from [0, 50]/255: half of the samples uniformly, half as
  ``50/255 · u³`` (a plug-and-play run spends most of its iterations at small σ, where an error costs most).

The denoiser is told ``sqrt(σ² + e²)`` with ``e`` the JPEG error's RMS, and learns to return the sharp crop: L1, or
with ``loss="relative"`` each sample's L1 divided by ``σ + 2/255``. A plain L1 is ruled by the noisiest samples (the
error a denoiser leaves grows with σ), yet a plug-and-play restorer of 8-bit photographs ends its run at σ of about one
level, where the denoiser must change almost nothing; the relative loss weighs every noise level alike (a second
training stage uses it, from the first stage's weights).
Learning rate: Adam, cosine decay from ``lr`` over the time budget (``max_minutes``), after a short warm-up.
Validation: fixed crops of the validation images at σ = 5, 15, 25, 50 /255 (DPIR's table), PSNR per level; the
weights with the best mean are kept.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from meddeblur.models.denoiser import Denoiser, load_denoiser, save_denoiser

__all__ = ["DenoiserOptions", "VALIDATION_SIGMAS", "load_images", "Crops", "denoiser_scores", "train_denoiser"]

#: Noise levels (in 8-bit levels) of the validation table.
VALIDATION_SIGMAS = (5, 15, 25, 50)
_JPEG_QUALITY = (60, 95)


@dataclass(frozen=True)
class DenoiserOptions:
    crop: int = 96
    batch: int = 16
    scales: tuple[float, float] = (1.0, 3.0)
    jpeg: float = 0.25
    loss: str = "l1"
    lr: float = 1e-3
    max_minutes: float = 30.0
    max_steps: int = 1_000_000
    warmup: int = 100
    seed: int = 0
    val_crops: int = 48
    val_sigmas: tuple[int, ...] = VALIDATION_SIGMAS
    log_every: int = 100
    init: Path | None = None


def load_images(paths: list[Path]) -> list[np.ndarray]:
    """The images as uint8 (H, W, 3) arrays (kept in memory: ~0.8 MB per 1024×768 photograph)."""
    images = []
    for path in paths:
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB")))
    return images


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


class Crops:
    """Draws (noisy, sharp, σ) batches from uint8 images (see the module docstring); seeded, so a rerun draws the same."""

    def __init__(self, images: list[np.ndarray], options: DenoiserOptions, seed: int) -> None:
        if not images:
            raise ValueError("no training images")
        self.images, self.options = images, options
        self.rng = np.random.default_rng(seed)

    def _window(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        crop = self.options.crop
        h, w = image.shape[:2]
        low, high = self.options.scales
        scale = float(np.exp(rng.uniform(math.log(low), math.log(high))))
        side = min(round(crop * scale), h, w)
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        window = image[top : top + side, left : left + side]
        if side != crop:
            window = cv2.resize(window, (crop, crop), interpolation=cv2.INTER_AREA if side > crop else cv2.INTER_CUBIC)
        window = np.rot90(window, int(rng.integers(4)))
        return np.ascontiguousarray(window[:, ::-1] if rng.random() < 0.5 else window)

    def sample(self, rng: np.random.Generator | None = None, sigma: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
        """One (noisy float32, sharp float32, σ told) triple; ``sigma`` fixes the Gaussian part (validation: no JPEG)."""
        rng = self.rng if rng is None else rng
        sharp8 = self._window(self.images[rng.integers(len(self.images))], rng)
        sharp = sharp8.astype(np.float32) / 255.0
        observed, jpeg_rms = sharp, 0.0
        if sigma is None and rng.random() < self.options.jpeg:
            observed = (
                _jpeg_roundtrip(sharp8, int(rng.integers(_JPEG_QUALITY[0], _JPEG_QUALITY[1] + 1))).astype(np.float32) / 255.0
            )
            jpeg_rms = float(np.sqrt(((observed - sharp) ** 2).mean()))
        if sigma is None:
            u = rng.random()
            sigma = 50.0 / 255.0 * (u if rng.random() < 0.5 else u**3)
        noisy = observed + rng.standard_normal(observed.shape).astype(np.float32) * sigma
        return noisy, sharp, float(math.sqrt(sigma**2 + jpeg_rms**2))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        triples = [self.sample() for _ in range(size)]
        noisy, sharp, sigma = zip(*triples)
        as_tensor = lambda arrays: torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        return as_tensor(noisy), as_tensor(sharp), torch.tensor(sigma, dtype=torch.float32)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -10.0 * torch.log10(((a.clamp(0, 1) - b) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-12))


@torch.no_grad()
def denoiser_scores(
    model: Denoiser,
    images: list[np.ndarray],
    count: int,
    crop: int = 96,
    seed: int = 1,
    sigmas: tuple[int, ...] = VALIDATION_SIGMAS,
) -> dict[str, float]:
    """Mean PSNR (dB) of ``count`` fixed crops of ``images`` denoised at each σ (8-bit levels): ``{"5": …, …, "mean": …}``."""
    crops = Crops(images, DenoiserOptions(crop=crop, scales=(1.0, 2.0)), seed)
    scores: dict[str, float] = {}
    for level in sigmas:
        rng = np.random.default_rng([seed, level])
        triples = [crops.sample(rng, sigma=level / 255.0) for _ in range(count)]
        noisy = torch.from_numpy(np.stack([t[0] for t in triples])).permute(0, 3, 1, 2)
        sharp = torch.from_numpy(np.stack([t[1] for t in triples])).permute(0, 3, 1, 2)
        out = torch.cat([model(noisy[i : i + 16], level / 255.0) for i in range(0, count, 16)])
        scores[str(level)] = round(float(_psnr(out, sharp).mean()), 3)
    scores["mean"] = round(float(np.mean([scores[str(s)] for s in sigmas])), 3)
    return scores


def train_denoiser(
    train: list[np.ndarray],
    val: list[np.ndarray],
    out: Path,
    options: DenoiserOptions,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train (from ``options.init`` or fresh) until the time or step budget is spent; write the best weights to ``out``."""
    if options.loss not in ("l1", "relative"):
        raise ValueError(f"loss must be 'l1' or 'relative', got {options.loss!r}")
    torch.manual_seed(options.seed)
    model = load_denoiser(options.init, device) if options.init else Denoiser().to(device)
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=options.lr)
    crops = Crops(train, options, options.seed)
    budget = options.max_minutes * 60.0
    model.eval()
    best = denoiser_scores(model, val, options.val_crops, options.crop, sigmas=options.val_sigmas)
    log(f"start: validation {best}")
    start = time.monotonic()  # the budget is for training: the first validation is not counted
    if options.init is None:
        best = {**best, "mean": -math.inf}  # a fresh network is the identity: never keep it
    history: list[dict[str, Any]] = []
    step, running = 0, 0.0
    while step < options.max_steps:
        elapsed = time.monotonic() - start
        if elapsed > budget:
            break
        progress = min(1.0, elapsed / budget)
        scale = min(1.0, (step + 1) / options.warmup) * 0.5 * (1.0 + math.cos(math.pi * progress))
        for group in optimiser.param_groups:
            group["lr"] = options.lr * max(scale, 0.02)
        model.train()
        noisy, sharp, sigma = (t.to(device) for t in crops.batch(options.batch))
        error = (model(noisy, sigma) - sharp).abs().mean(dim=(1, 2, 3))
        loss = (error / (sigma + 2.0 / 255.0)).mean() * (2.0 / 255.0) if options.loss == "relative" else error.mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        running += loss.item()
        step += 1
        if step % options.log_every == 0 or time.monotonic() - start > budget:
            model.eval()
            scores = denoiser_scores(model, val, options.val_crops, options.crop, sigmas=options.val_sigmas)
            minutes = (time.monotonic() - start) / 60.0
            history.append({"step": step, "minutes": round(minutes, 2), "loss": round(running / options.log_every, 5), **scores})
            kept = scores["mean"] > best["mean"]
            if kept:
                best = scores
                save_denoiser(
                    model,
                    out,
                    {
                        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
                        "step": step,
                        "validation": scores,
                    },
                )
            log(
                f"step {step} ({minutes:.1f} min): loss {running / options.log_every:.5f}, validation {scores}{' (kept)' if kept else ''}"
            )
            running = 0.0
    return {"steps": step, "minutes": round((time.monotonic() - start) / 60.0, 2), "validation": best, "history": history}
