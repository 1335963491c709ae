"""The consistency check: does the restored image, blurred again with the PSF that was used, give back its input?

A restoration that only undoes the stated blur explains its input: re-blurred, it differs from the input by little
more than the input's noise and 8-bit rounding. Detail the network invented, or ringing from a wrong PSF, does not
survive that test everywhere. :func:`consistency` measures the residual over the whole image (borders of the kernel's
radius left out: there the blur saw padding) and in its worst 32-px block, in 8-bit levels, beside the input's own
noise level (Immerkær's estimate). ``ratio`` is the worst block's residual over the floor
``sqrt(noise² + 1/12 + TOLERANCE²)``: the noise a restorer rightly removes, 8-bit rounding (1/12), and one level a
restorer may be off without inventing anything (without it a noise-free, flat image would flag any restorer).
:data:`LIMIT` is the ratio above which an output is not passed off as a restoration, chosen on the validation mix
(``benchmarks/psf_estimation.py`` gives its false-alarm rate).

>>> import numpy as np
>>> from meddeblur.psf import load_psf
>>> image = np.full((64, 64, 3), 0.5, np.float32)
>>> round(consistency(image, image, load_psf("gauss:sigma=1")).ratio, 3)
0.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from meddeblur.physics import blur, noise_level_np
from meddeblur.psf.kernel import PSF

__all__ = ["LIMIT", "BLOCK", "TOLERANCE", "Consistency", "consistency", "reblur"]

#: Worst-block residual ratio above which an output does not explain its input (measured: docs/psf.md).
LIMIT = 4.0
#: Side of the blocks the worst residual is taken over, px.
BLOCK = 32
#: 8-bit levels a restoration may be off, re-blurred, without it counting against it.
TOLERANCE = 1.0
_QUANTISATION = 1.0 / 12.0  # variance of 8-bit rounding, in levels²


@dataclass(frozen=True)
class Consistency:
    """Residual of input − re-blurred output (8-bit levels): RMS overall and in the worst block; input noise σ; ratio."""

    residual: float
    worst_block: float
    noise: float
    ratio: float

    @property
    def passed(self) -> bool:
        return self.ratio <= LIMIT

    def as_dict(self) -> dict[str, float | bool]:
        return {**{k: round(v, 4) for k, v in asdict(self).items()}, "limit": LIMIT, "passed": self.passed}


def reblur(image: np.ndarray, psf: PSF) -> np.ndarray:
    """(H, W, C) float image blurred with ``psf`` as the synthetic degradations blur (reflect borders), float32."""
    kh, kw = psf.kernel.shape
    side = max(kh, kw)
    square = np.zeros((side, side))
    square[(side - kh) // 2 : (side - kh) // 2 + kh, (side - kw) // 2 : (side - kw) // 2 + kw] = psf.kernel
    tensor = torch.from_numpy(np.ascontiguousarray(np.asarray(image, np.float32).transpose(2, 0, 1)))[None]
    return blur(tensor, torch.from_numpy(square).float())[0].numpy().transpose(1, 2, 0)


def consistency(blurred: np.ndarray, restored: np.ndarray, psf: PSF) -> Consistency:
    """How well ``restored`` explains ``blurred`` under ``psf``: both (H, W, C) float in [0, 1] (see the module docstring)."""
    if blurred.shape != restored.shape or blurred.ndim != 3:
        raise ValueError(f"blurred and restored must be (H, W, C) arrays of one shape, got {blurred.shape} and {restored.shape}")
    residual = (np.asarray(blurred, np.float32) - reblur(np.clip(restored, 0.0, 1.0), psf)).mean(axis=2) * 255.0
    margin = max(psf.kernel.shape) // 2
    h, w = residual.shape
    if h > 2 * margin + BLOCK and w > 2 * margin + BLOCK:
        residual = residual[margin : h - margin, margin : w - margin]
    noise = noise_level_np(np.asarray(blurred, np.float32).mean(axis=2)) * 255.0
    h, w = residual.shape
    bh, bw = max(1, h // BLOCK), max(1, w // BLOCK)
    blocks = residual[: bh * (h // bh), : bw * (w // bw)].reshape(bh, h // bh, bw, w // bw)
    worst = float(np.sqrt((blocks**2).mean(axis=(1, 3))).max())
    overall = float(np.sqrt((residual**2).mean()))
    return Consistency(overall, worst, noise, worst / float(np.sqrt(noise**2 + _QUANTISATION + TOLERANCE**2)))
