"""Slanted-edge spatial frequency response (ISO 12233): find straight edges, fit them, measure their MTF.

Per edge, as ISO 12233 describes it: the edge is located row by row (centroid of the Hamming-windowed
derivative) and fitted with a straight line, sub-pixel; every pixel near it is projected onto the edge's
normal and averaged in bins of 1/4 px (the 4× oversampled edge-spread function, ESF); its derivative is
the line-spread function (LSF), which is Hamming-windowed, Fourier-transformed and normalised at 0 (the
MTF), then divided by the derivative's own response. Edges may be near-vertical
or near-horizontal, dark-to-bright either way, tilted 1–40° (2–10° is best) off the axis.

The edges are found, not given: strong gradients are grouped by direction (→, ↓, ←, ↑) and the largest
connected group of each direction is one candidate, so a tilted square (the calibration target) gives its
four sides and a single edge gives one. The values are the image's own: for a PSF that deblurs the stored
pixels no linearisation is applied.

>>> from meddeblur.psf.target import edge_chart
>>> edge = measure_edges(edge_chart(128, 128, kind="edge"))[0]
>>> edge.orientation, round(edge.tilt, 1), edge.mtf50 is None   # an unblurred chart: MTF 1 up to Nyquist
('vertical', 5.0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from meddeblur.errors import InvalidOption, UserError
from meddeblur.psf.edge_geometry import (
    MIN_CONTRAST,
    Candidate,
    check_roi,
    find_candidates,
    fit_line,
    hamming,
    in_frame,
    row_centroids,
)
from meddeblur.psf.mtf import NYQUIST, mtf50

# No SFR library is used: the slanted-edge packages on PyPI are single-author scripts (quickMTF: a 2023 GUI fork, no tests, imports matplotlib on import; "mtf" is another thing), so the ISO 12233 steps are written here with numpy/scipy.

__all__ = ["OVERSAMPLING", "EdgeError", "EdgeSFR", "luminance", "measure_edges", "frequencies"]

OVERSAMPLING = 4  # ESF bins per pixel (ISO 12233)
_BIN = 1.0 / OVERSAMPLING
FREQ_STEP = 0.0025  # cycles/pixel between MTF samples
MIN_TILT, MAX_TILT = 1.0, 40.0  # degrees off the axis; at 0° the bins get no phases, at 45° only a few
MIN_LENGTH = 24  # px along the edge
_MAX_BEND = 0.5  # RMS px of the row centroids off the fitted line
_HALF_WIDTH = (16, 64)  # px of ESF on each side: wider windows bias wide blurs less, the clamp keeps ROIs small
_CLIPPED = 0.01  # share of ESF pixels at 0 or at full scale that means the photo clipped the edge
_PHASE_GAPS = 0.05  # share of empty 1/4-px bins tolerated (filled by interpolation)
_HINT = "photograph the printed calibration target (a tilted black square on white) so that its sides are in the picture"


class EdgeError(UserError):
    """An image (or region) without a usable slanted edge; the message says why and what to do."""


@dataclass(frozen=True, eq=False)
class EdgeSFR:
    """One measured edge. Coordinates are the image's (x right, y down); frequencies in cycles/pixel.

    ``orientation``: "vertical" or "horizontal" (the axis the edge runs near); ``tilt``: degrees off it;
    ``normal``: unit (dx, dy) across the edge, dark to bright, the direction its MTF describes (its
    ``normal_angle``: degrees counter-clockwise on screen, as :func:`meddeblur.psf.mtf.directional_mtf`);
    ``roi``: (x0, y0, x1, y1) of the pixels used; ``length``: px along the edge; ``levels``: (dark, bright)
    plateaus; ``rise``: 10–90 % edge width in px; ``esf_x``/``esf``/``lsf``: the oversampled profiles;
    ``freqs`` (0 to Nyquist), ``mtf`` (normalised at 0), ``otf`` (real part with the LSF centred: the MTF with
    the sign of a symmetric blur's transfer function, e.g. a defocus disk's negative lobes); ``mtf50``;
    ``noise``: the standard deviation of ``otf`` that the ESF's own noise explains (from its flat sides).
    """

    orientation: str
    tilt: float
    normal: tuple[float, float]
    roi: tuple[int, int, int, int]
    length: float
    levels: tuple[float, float]
    rise: float
    half_width: float
    esf_x: np.ndarray
    esf: np.ndarray
    lsf: np.ndarray
    freqs: np.ndarray
    mtf: np.ndarray
    otf: np.ndarray
    mtf50: float | None
    noise: float

    @property
    def normal_angle(self) -> float:
        return math.degrees(math.atan2(-self.normal[1], self.normal[0]))

    def summary(self) -> dict:
        """What a calibration file records of this edge (rounded)."""
        return {
            "orientation": self.orientation,
            "tilt_deg": round(self.tilt, 3),
            "normal_angle_deg": round(self.normal_angle, 3),
            "roi": list(self.roi),
            "length_px": round(self.length, 1),
            "levels": [round(v, 4) for v in self.levels],
            "rise_10_90_px": round(self.rise, 3),
            "esf_half_width_px": round(self.half_width, 2),
            "mtf50_cycles_per_pixel": None if self.mtf50 is None else round(self.mtf50, 5),
        }


def frequencies() -> np.ndarray:
    """The frequencies (cycles/pixel) every :class:`EdgeSFR` is sampled at: 0 to Nyquist.

    Not beyond: on a pixel grid the edge's response past Nyquist is the kernel's periodic spectrum coming back, not
    the blur's.
    """
    return np.arange(round(NYQUIST / FREQ_STEP) + 1) * FREQ_STEP


def luminance(image: np.ndarray) -> np.ndarray:
    """(H, W) float64 luma (Rec. 709 weights) of an (H, W, 3) or (H, W) float image in [0, 1]."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    if arr.ndim != 2 or min(arr.shape) < 16:
        raise InvalidOption(
            f"image: expected an (H, W, 3) or (H, W) image of at least 16×16 px, got shape {np.shape(image)}", option="image"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise InvalidOption(f"image: expected float values in [0, 1], got dtype {arr.dtype}", option="image")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
        raise InvalidOption("image: values must be finite and in [0, 1]", option="image")
    return arr


def _measure(grey: np.ndarray, cand: Candidate, strong: np.ndarray) -> EdgeSFR:
    """The SFR of one candidate edge (EdgeError when it is not usable)."""
    # Pixels near any other strong gradient (the square's other sides, other edges) are left out.
    margin = cand.width + 2.0
    others = ndimage.distance_transform_edt(~(strong & ~cand.mask))
    frame, usable = in_frame(grey, cand.vertical), in_frame(others >= margin, cand.vertical)
    window = max(8.0, 2 * cand.width + 4)
    slope, intercept = cand.slope, cand.intercept
    for _ in range(2):  # ISO 12233: locate, fit, relocate around the fitted line, refit
        rows, cols = row_centroids(frame, usable, cand, slope, intercept, window)
        if len(rows) == 0:
            raise EdgeError(f"no clean edge found (strong gradients crowd every straight run: texture, not a step); {_HINT}")
        if len(rows) < MIN_LENGTH:
            raise EdgeError(
                f"the edge is too short: {len(rows)} px of it have plain surround (at least {MIN_LENGTH} needed); "
                f"{_HINT}, away from the border and other edges"
            )
        slope, intercept, bend = fit_line(rows, cols)
    tilt = math.degrees(math.atan(slope))
    span = float(rows[-1] - rows[0] + 1)
    if abs(tilt) < MIN_TILT:
        raise EdgeError(
            f"the edge is too close to {'vertical' if cand.vertical else 'horizontal'} ({abs(tilt):.2f}° off it); tilt it 2–10°"
        )
    if abs(tilt) > MAX_TILT:
        raise EdgeError(f"the edge is too close to 45° ({abs(tilt):.1f}° off the axis); tilt it 2–10° off vertical or horizontal")
    if span * abs(slope) < 1.0:
        raise EdgeError(
            f"the edge is too short for its tilt ({span:.0f} px at {abs(tilt):.1f}° crosses less than one pixel); "
            "photograph more of it or tilt it more"
        )
    if bend > _MAX_BEND:
        raise EdgeError(
            f"the edge is not straight (it wanders {bend:.2f} px RMS off a line); photograph the target flat, "
            "in the middle of the field"
        )
    cos = math.cos(math.atan(slope))
    reach = _HALF_WIDTH[1]
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    rr, cc = np.mgrid[r0:r1, 0 : frame.shape[1]]
    distance = (cc - (slope * rr + intercept)) * cos * cand.polarity
    take = (np.abs(distance) < reach) & usable[r0:r1]
    d, values = distance[take], frame[r0:r1][take]
    bins = np.floor(d / _BIN).astype(int) + reach * OVERSAMPLING  # bin k covers [k, k + 1) / 4 px from -reach
    count = np.bincount(bins, minlength=2 * reach * OVERSAMPLING)
    total = np.bincount(bins, weights=values, minlength=2 * reach * OVERSAMPLING)
    # Half-width actually covered: out from the edge while each pixel-wide block keeps half the typical sample count.
    blocks = count.reshape(-1, OVERSAMPLING).sum(axis=1)
    full = blocks >= 0.5 * np.median(blocks[reach - 4 : reach + 4])
    right = np.argmin(np.append(full[reach:], False))
    left = np.argmin(np.append(full[:reach][::-1], False))
    centres = (np.arange(len(count)) + 0.5) * _BIN - reach
    filled = count > 0
    esf = np.interp(centres, centres[filled], total[filled] / np.maximum(count[filled], 1))
    surround = min(left, right)
    if surround < 6:
        raise EdgeError(
            f"the edge has too little flat surround ({surround} px on one side); keep plain target around it, "
            "away from the border and other edges"
        )
    # The ESF's own 10–90 % width sets the final half-width (16–64 px): a Hamming window much wider than the blur.
    inner = np.abs(centres) < surround
    low, high = esf[inner][: OVERSAMPLING * 2].mean(), esf[inner][-OVERSAMPLING * 2 :].mean()
    rise = _rise(centres[inner], esf[inner], low, high)
    half = float(min(float(surround), max(float(_HALF_WIDTH[0]), min(float(_HALF_WIDTH[1]), 8 * rise + 8))))
    keep = np.abs(centres) < half
    centres, esf, filled = centres[keep], esf[keep], filled[keep]
    if (~filled).mean() > _PHASE_GAPS:
        raise EdgeError(
            f"the edge's pixels leave {100 * (~filled).mean():.0f} % of the 1/4-px bins empty (a tilt near a "
            f"simple fraction: {abs(tilt):.1f}°); tilt it 2–10°"
        )
    band = np.abs(d) < half
    used = values[band]
    if np.mean((used <= 0.5 / 255) | (used >= 1 - 0.5 / 255)) > _CLIPPED:
        raise EdgeError("the edge is clipped (its dark or bright side is at 0 or full scale); lower the exposure or the lighting")
    low, high = esf[: OVERSAMPLING * 2].mean(), esf[-OVERSAMPLING * 2 :].mean()
    if not high - low >= MIN_CONTRAST:
        raise EdgeError(
            f"no step edge: its two sides differ by {max(high - low, 0.0):.3f} (at least {MIN_CONTRAST} needed); {_HINT}"
        )
    rise = _rise(centres, esf, low, high)
    lsf = np.gradient(esf, _BIN)
    freqs, otf = _transfer(centres, lsf, half)
    mtf = np.abs(otf)
    # Noise of the OTF: bin noise σ (first differences on the flat sides) through the derivative and the window's Σw².
    flat = np.abs(centres) > half / 2
    sigma = float(np.std(np.diff(esf[flat & (centres < 0)])) + np.std(np.diff(esf[flat & (centres > 0)]))) / (2 * math.sqrt(2))
    noise = sigma * math.sqrt((0.54**2 + 0.46**2 / 2) * len(centres) / 2) / (high - low)
    normal = (
        (cand.polarity * cos, -cand.polarity * cos * slope)
        if cand.vertical
        else (-cand.polarity * cos * slope, cand.polarity * cos)
    )
    rr_used, cc_used = rr[take][band], cc[take][band]
    xs, ys = (cc_used, rr_used) if cand.vertical else (rr_used, cc_used)
    roi = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return EdgeSFR(
        "vertical" if cand.vertical else "horizontal",
        tilt,
        (float(normal[0]), float(normal[1])),
        roi,
        span / cos,
        (float(low), float(high)),
        rise,
        half,
        centres,
        esf,
        lsf,
        freqs,
        mtf,
        otf.real,
        mtf50(freqs, mtf),
        noise,
    )


def _rise(x: np.ndarray, esf: np.ndarray, low: float, high: float) -> float:
    """10–90 % width (px) of a rising ESF, from the crossings nearest the middle."""
    level = (esf - low) / (high - low) if high > low else np.zeros_like(esf)
    mid = len(x) // 2
    below = np.nonzero(level[:mid] < 0.1)[0]
    above = np.nonzero(level[mid:] > 0.9)[0]
    x10 = x[below[-1]] if len(below) else x[0]
    x90 = x[mid + above[0]] if len(above) else x[-1]
    return float(max(x90 - x10, _BIN))


def _transfer(x: np.ndarray, lsf: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray]:
    """(freqs, OTF): the Hamming-windowed LSF's exact Fourier transform about its centroid, normalised and corrected."""
    centre = float((x * lsf).sum() / lsf.sum())
    windowed = lsf * hamming(x - centre, half)
    centre = float((x * windowed).sum() / windowed.sum())
    freqs = frequencies()
    otf = np.exp(-2j * np.pi * np.outer(freqs, x - centre)) @ windowed
    otf = otf / otf[0].real
    # ISO 12233 divides out the central difference's response, sin(2πfΔ) / 2πfΔ. Not the 1/4-px bins' sinc(fΔ): on
    # generated edges that moved MTF50 0.2–0.6 % further from the kernel's own (benchmarks/calibration.py's charts).
    return freqs, otf / np.sinc(2 * freqs * _BIN)


def measure_edges(image: np.ndarray, roi: tuple[int, int, int, int] | None = None) -> list[EdgeSFR]:
    """Every usable slanted edge of ``image`` ((H, W, 3) or (H, W) float in [0, 1]), longest first.

    ``roi`` = (x0, y0, x1, y1) limits the search to that region (the result's coordinates stay the image's).
    Raises :class:`EdgeError` naming why when no edge is usable (none, too short, too close to 0° or
    45°, clipped, low contrast, curved), and InvalidOption for a bad image array or ``roi``.
    """
    grey = luminance(image)
    x0 = y0 = 0
    if roi is not None:
        x0, y0, x1, y1 = check_roi(roi, grey.shape)
        grey = grey[y0:y1, x0:x1]
    candidates, strong = find_candidates(grey)
    if not candidates:
        raise EdgeError(f"no edge found (the image is flat); {_HINT}")
    longest = candidates[0].rows[1] - candidates[0].rows[0] + 1
    candidates = [c for c in candidates if c.rows[1] - c.rows[0] + 1 >= MIN_LENGTH]
    if not candidates:
        raise EdgeError(
            f"no edge long enough found (the longest run of strong gradient is {longest} px, at least {MIN_LENGTH} "
            f"needed); {_HINT}"
        )
    edges, first_error = [], None
    for cand in candidates:
        if cand.bend > 4 * _MAX_BEND:
            first_error = first_error or EdgeError(
                f"no straight edge found (the longest is curved: {cand.bend:.1f} px RMS off a line); {_HINT}"
            )
            continue
        try:
            edge = _measure(grey, cand, strong)
        except EdgeError as error:
            first_error = first_error or error
            continue
        if roi is not None:
            edge = _shifted(edge, x0, y0)
        edges.append(edge)
    if not edges:
        assert first_error is not None
        raise first_error
    return edges


def _shifted(edge: EdgeSFR, dx: int, dy: int) -> EdgeSFR:
    x0, y0, x1, y1 = edge.roi
    return replace(edge, roi=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))
