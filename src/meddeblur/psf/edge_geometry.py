"""The slanted-edge geometry of :mod:`meddeblur.psf.edge`: where the edges are, and the straight lines they follow.

Strong gradients are grouped by direction (→, ↓, ←, ↑), the largest connected group of each direction is one
candidate edge, and its row-by-row centroids are fitted with a line. Separate from the ESF/MTF computation in
:mod:`~meddeblur.psf.edge`, which measures each candidate along the line found here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from meddeblur.errors import InvalidOption

__all__ = ["MIN_CONTRAST", "Candidate", "check_roi", "find_candidates", "fit_line", "hamming", "in_frame", "row_centroids"]

MIN_CONTRAST = 0.05  # plateau difference, in [0, 1] values
_STRONG = 0.25  # a gradient this share of the image's largest belongs to an edge


@dataclass(frozen=True)
class Candidate:
    vertical: bool  # near-vertical: measured across x; else the frame is transposed
    polarity: int  # +1: values rise along +x (vertical) / +y (horizontal)
    slope: float  # c = slope · r + intercept in the frame (r along the edge, c across)
    intercept: float
    rows: tuple[int, int]  # first and last frame row of the component
    width: float  # mean strong-gradient pixels per row: a first guess of the blur's width
    bend: float  # RMS px of the component's row centroids off the line
    mask: np.ndarray  # the component's pixels (image frame)


def in_frame(array: np.ndarray, vertical: bool) -> np.ndarray:
    return array if vertical else array.T


def find_candidates(grey: np.ndarray) -> tuple[list[Candidate], np.ndarray]:
    """The largest strong-gradient component of each direction (longest first), and every strong pixel."""
    smooth = ndimage.gaussian_filter(grey, 1.0)
    gx, gy = ndimage.sobel(smooth, axis=1) / 8.0, ndimage.sobel(smooth, axis=0) / 8.0
    magnitude = np.hypot(gx, gy)
    if not magnitude.max() > MIN_CONTRAST / 20:
        return [], np.zeros(grey.shape, bool)
    strong = magnitude >= _STRONG * magnitude.max()
    quadrant = np.round(np.degrees(np.arctan2(gy, gx)) / 90.0).astype(int) % 4  # 0 →, 1 ↓, 2 ←, 3 ↑
    found = []
    for q in range(4):
        labels, count = ndimage.label(strong & (quadrant == q), structure=np.ones((3, 3)))
        if count == 0:
            continue
        weights = ndimage.sum(magnitude, labels, index=np.arange(1, count + 1))
        mask = labels == 1 + int(np.argmax(weights))
        vertical = q in (0, 2)
        m = in_frame(np.where(mask, magnitude, 0.0), vertical)
        rows = np.nonzero(m.any(axis=1))[0]
        w = m[rows]
        cols = (w * np.arange(m.shape[1])).sum(axis=1) / w.sum(axis=1)
        slope, intercept, bend = fit_line(rows, cols)
        found.append(
            Candidate(
                vertical,
                1 if q in (0, 1) else -1,
                slope,
                intercept,
                (int(rows[0]), int(rows[-1])),
                float((m[rows] > 0).sum(axis=1).mean()),
                bend,
                mask,
            )
        )
    return sorted(found, key=lambda c: c.rows[0] - c.rows[1]), strong


def fit_line(rows: np.ndarray, cols: np.ndarray) -> tuple[float, float, float]:
    """Least-squares c = slope·r + intercept, refitted without points 3 RMS off; (slope, intercept, RMS)."""
    if len(rows) < 2:
        return 0.0, float(cols[0]) if len(cols) else 0.0, math.inf
    keep = np.ones(len(rows), bool)
    for _ in range(2):
        slope, intercept = np.polyfit(rows[keep], cols[keep], 1)
        residual = cols - (slope * rows + intercept)
        rms = float(np.sqrt(np.mean(residual[keep] ** 2)))
        keep = np.abs(residual) <= max(3 * rms, 0.05)
        if keep.sum() < 2:
            break
    return float(slope), float(intercept), rms


def hamming(offset: np.ndarray, half_width: float) -> np.ndarray:
    return np.where(np.abs(offset) <= half_width, 0.54 + 0.46 * np.cos(np.pi * offset / half_width), 0.0)


def row_centroids(
    frame: np.ndarray, usable: np.ndarray, cand: Candidate, slope: float, intercept: float, window: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame row: the centroid of the windowed derivative across the edge, near c = slope·r + intercept."""
    rows, cols = [], []
    width = frame.shape[1]
    for r in range(cand.rows[0] + 2, cand.rows[1] - 1):
        centre = slope * r + intercept
        lo, hi = math.floor(centre - window), math.ceil(centre + window) + 1
        if lo < 1 or hi > width - 1 or not usable[r, lo:hi].all():
            continue
        x = np.arange(lo, hi)
        weighted = (frame[r, lo + 1 : hi + 1] - frame[r, lo - 1 : hi - 1]) * 0.5 * cand.polarity * hamming(x - centre, window)
        total = weighted.sum()
        if total > 0:
            rows.append(r)
            cols.append(float((x * weighted).sum() / total))
    return np.array(rows), np.array(cols)


def check_roi(roi: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    try:
        x0, y0, x1, y1 = (int(v) for v in roi)
    except (TypeError, ValueError):
        raise InvalidOption(f"roi={roi!r}: give four integers x0,y0,x1,y1", value=roi, option="roi") from None
    height, width = shape
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height) or min(x1 - x0, y1 - y0) < 16:
        raise InvalidOption(
            f"roi={x0},{y0},{x1},{y1}: must lie inside the {width}×{height} image, at least 16 px each way "
            "(x0,y0 top left; x1,y1 bottom right, exclusive)",
            value=roi,
            option="roi",
        )
    return x0, y0, x1, y1
