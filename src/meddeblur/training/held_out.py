"""What a run on blurred/sharp pairs did to the pairs it never saw: its held-out test split, in one line.

The validation PSNR a run prints while training is measured on fixed crops of the validation pairs, which also chose
the best epoch: it flatters. The test pairs (10 % of the data, :func:`meddeblur.data.pairs.split_names`) were used
for neither, so the last line of a run on pairs reads "the test pairs went from X (input) to Y dB; the starting
weights gave Z" on whole images — the figure a lab can quote, and the comparison that says whether fine-tuning paid.
It goes through :class:`~meddeblur.inference.deblurrer.Deblurrer` exactly as ``meddeblur deblur`` and
``meddeblur evaluate`` do (same resizing, same TF-exact metrics). At most :data:`MAX_IMAGES` pairs are scored, so a
large data set does not add minutes to every run; ``meddeblur evaluate --model RUN`` scores all, per image.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from meddeblur.data.pairs import SPLIT_FILE, check_pairs, load_pairs, pair_samples, read_split, select
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.metrics import PSNR_CAP, psnr_ssim_numpy

__all__ = ["MAX_IMAGES", "held_out_line"]

#: Test pairs scored at the end of a run (the first, by name).
MAX_IMAGES = 50


def _mean_psnr(deblurrer: Deblurrer | None, samples: list[tuple[str, np.ndarray, np.ndarray]]) -> float:
    scores = [
        psnr_ssim_numpy(blurred if deblurrer is None else deblurrer.deblur_rgb(blurred), sharp)[0]
        for _, blurred, sharp in samples
    ]
    return statistics.fmean(min(score, PSNR_CAP) for score in scores)  # identical images: +inf, capped as evaluate caps them


def held_out_line(
    run: Path, blurred_dir: str, sharp_dir: str, weights: Path, start: str | None, size: int | None, device: str = "cpu"
) -> str:
    """The run's line on its test pairs (``run``'s split file, the pairs in ``blurred_dir``/``sharp_dir``).

    ``weights``: the run's best weights; ``start``: what training started from (a run's ``init``: "default", a weights
    file or run folder), scored beside them; None when it started from scratch. ``size``: the run's resize (None: as
    stored, whole images). A test pair that no longer decodes is left out (the run's data was checked as it started).
    """
    names = read_split(run / SPLIT_FILE)["test"]
    chosen = select(load_pairs(blurred_dir, sharp_dir, None), names, str(run / SPLIT_FILE))
    pairs, _ = check_pairs(sorted(chosen, key=lambda pair: pair.name)[:MAX_IMAGES], skip_bad=True)
    samples = list(pair_samples(pairs, size, None))
    trained = _mean_psnr(Deblurrer.load(weights, "torch", device, tile=0), samples)
    line = f"the {len(pairs)} test pairs (never trained or validated on) went from {_mean_psnr(None, samples):.2f} to {trained:.2f} dB"
    if start is not None:
        began = _mean_psnr(Deblurrer.load(None if start == "default" else start, "torch", device, tile=0), samples)
        line += f"; the starting weights ({start}) gave {began:.2f} dB"
    if len(names) > len(pairs):
        line += f" (the first {len(pairs)} of {len(names)} by name)"
    return line + "; evaluate the run for every test image's scores"
