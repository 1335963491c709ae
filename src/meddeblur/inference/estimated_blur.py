"""Blind deblurring by physics: estimate the PSF from the image, restore with it, check the result explains its input.

:class:`EstimatedBlur` restores one decoded image at a time and says what it did (a ``restoration`` record that goes
into the output's provenance and the run log):

1. **estimate** (:mod:`meddeblur.psf.estimate`): one PSF from the whole image's spectrum and, for images above
   1.5 cells, a smoothed map of per-cell PSFs;
2. **decide**: the estimate names no blur (family ``none``, or a delta) with confidence ≥ :data:`NONE_CONFIDENCE`
   → the image is returned as it is; any other estimate below :data:`MIN_CONFIDENCE` → the blind network instead;
3. **restore** with a known-blur method (:mod:`meddeblur.restore.registry`, the kernel-conditioned network unless told
   otherwise): with the one
   PSF when every cell's MTF50 lies within :data:`UNIFORM` of the whole image's, else cell by cell with its own PSF
   (windows ``MARGIN`` px larger than their cell, blended where they overlap);
4. **check** (:mod:`meddeblur.inference.consistency`): re-blurred with the PSF used, the output must give back its
   input within the limit; an output that does not falls back to the blind network, and the record says so.

Measured on the validation mix (``benchmarks/psf_estimation.py``, results/psf_estimation.md): samples called
un-blurred scored the same left as they are as through the blind network (so "unchanged", which also keeps sharp
inputs bit for bit); the confidence threshold moved the blurred samples' mean by at most 0.05 dB between 0 and 0.8,
so :data:`MIN_CONFIDENCE` only catches the rare very uncertain estimate; the consistency limit flags 4.3 % of good
restorations (true PSF) and 41 % of deliberately wrong ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from meddeblur.inference.consistency import LIMIT, consistency
from meddeblur.inference.tiling import blend_weights
from meddeblur.psf.estimate import CELL, BlurEstimate, BlurEstimator, PsfMap, estimate_psf_map
from meddeblur.psf.spectrum import MIN_SIDE
from meddeblur.restore import registry

__all__ = ["NONE_CONFIDENCE", "MIN_CONFIDENCE", "UNIFORM", "MARGIN", "EstimatedBlur"]

#: Confidence at or above which an estimate of "no blur" returns the image unchanged.
NONE_CONFIDENCE = 0.5
#: Confidence below which a blur estimate is not used: the blind network restores the image instead.
MIN_CONFIDENCE = 0.4
#: A PSF map is one PSF when every cell's MTF50 is within this fraction of the whole image's.
UNIFORM = 0.25
#: Extra pixels around each cell restored with its PSF, blended with the neighbours'.
MARGIN = 64
_NYQUIST = 0.5  # a delta's MTF50 (reported as None) counts as this in comparisons

# (H, W, 3) float in [0, 1], before_tile → (H, W, 3) float32: one of the Deblurrer's own restorations
# (``before_tile`` is called before each forward pass, as Deblurrer.deblur_rgb calls it).
Restore = Callable[[np.ndarray, Callable[[], None] | None], np.ndarray]


def _mtf50(estimate: BlurEstimate) -> float:
    value = estimate.psf.mtf50
    return _NYQUIST if value is None else value


def _uniform(whole: BlurEstimate, psf_map: PsfMap | None) -> bool:
    if psf_map is None:
        return True
    reference = _mtf50(whole)
    return all(abs(_mtf50(cell) - reference) <= UNIFORM * reference for cell in psf_map.estimates())


class EstimatedBlur:
    """Estimate → decide → restore → check, for one (H, W, 3) image at a time; see the module docstring.

    ``with_psf(estimate)`` restores an image with a :class:`BlurEstimate`'s PSF (the kernel-conditioned network, tiled
    as the Deblurrer tiles); ``blind`` restores it with the blind network.
    """

    def __init__(
        self, estimator: BlurEstimator, with_psf: Callable[[BlurEstimate], Restore], blind: Restore, cell: int = CELL
    ) -> None:
        self.estimator, self.with_psf, self.blind, self.cell = estimator, with_psf, blind, cell

    def parameters(self) -> dict[str, Any]:
        """The settings that shape the pixels, for provenance."""
        return {
            "method": registry.ESTIMATED,
            "estimator_id": self.estimator.weights_id,
            "cell": self.cell,
            "none_confidence": NONE_CONFIDENCE,
            "min_confidence": MIN_CONFIDENCE,
            "uniform": UNIFORM,
        }

    def restore(self, rgb: np.ndarray, before_tile: Callable[[], None] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """(H, W, 3) float in [0, 1] → (restored (H, W, 3) float32, the ``restoration`` record)."""
        h, w = rgb.shape[:2]
        if min(h, w) < MIN_SIDE:
            return self.blind(rgb, before_tile), {
                "result": "blind",
                "reason": f"the image is smaller than {MIN_SIDE} px: too small to estimate its blur",
            }
        whole = self.estimator.estimate(rgb)
        record: dict[str, Any] = {"psf": whole.describe()}
        if whole.family == "none" or whole.psf.is_delta:
            if whole.probabilities.get("none", whole.confidence) >= NONE_CONFIDENCE or whole.psf.is_delta:
                return rgb.astype(np.float32), {**record, "result": "unchanged", "reason": "no blur found"}
            return self.blind(rgb, before_tile), {**record, "result": "blind", "reason": "no blur found, with low confidence"}
        if whole.confidence < MIN_CONFIDENCE:
            return self.blind(rgb, before_tile), {
                **record,
                "result": "blind",
                "reason": f"blur estimate confidence {whole.confidence:.2f} < {MIN_CONFIDENCE}",
            }
        psf_map = estimate_psf_map(rgb, self.cell, self.estimator) if max(h, w) > 1.5 * self.cell else None
        if _uniform(whole, psf_map):
            restored = self.with_psf(whole)(rgb, before_tile)
            check = consistency(rgb, restored, whole.psf)
        else:
            assert psf_map is not None  # no map: one PSF for the whole image, restored above
            record["psf_map"] = psf_map.describe()
            restored, check = self._by_cell(rgb, psf_map, before_tile)
        record["consistency"] = check.as_dict()
        if not check.passed:
            return self.blind(rgb, before_tile), {
                **record,
                "result": "blind",
                "reason": f"the restoration does not explain its input (residual ratio {check.ratio:.2f} > {LIMIT})",
            }
        return restored, {
            **record,
            "result": "restored",
            "reason": "restored with the estimated PSF" + (" map" if "psf_map" in record else ""),
        }

    def _by_cell(self, rgb: np.ndarray, psf_map: PsfMap, before_tile: Callable[[], None] | None):
        h, w = rgb.shape[:2]
        total = np.zeros((h, w, 3), np.float64)
        weights = np.zeros((h, w, 1), np.float64)
        worst = None
        for (r0, r1), line in zip(psf_map.rows, psf_map.cells):
            for (c0, c1), estimate in zip(psf_map.cols, line):
                top, bottom, left, right = max(0, r0 - MARGIN), min(h, r1 + MARGIN), max(0, c0 - MARGIN), min(w, c1 + MARGIN)
                window = rgb[top:bottom, left:right]
                restored = (
                    window.astype(np.float32)
                    if estimate.family == "none" or estimate.psf.is_delta
                    else self.with_psf(estimate)(window, before_tile)
                )
                check = consistency(window, restored, estimate.psf)
                worst = check if worst is None or check.ratio > worst.ratio else worst
                weight = (
                    blend_weights(h, top, bottom - top, MARGIN).numpy()[:, None]
                    * blend_weights(w, left, right - left, MARGIN).numpy()[None, :]
                )
                total[top:bottom, left:right] += restored * weight[..., None]
                weights[top:bottom, left:right] += weight[..., None]
        return (total / weights).astype(np.float32), worst
