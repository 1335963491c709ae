"""Device calibration: a :class:`~meddeblur.psf.kernel.PSF` from a photographed slanted edge.

:func:`calibrate` measures every usable edge of the photo (:mod:`meddeblur.psf.edge`; the tilted-square
target of :mod:`meddeblur.psf.target` has four), averages their transfer functions and turns them into a
kernel: the 1-D transfer function T(f) laid on a 2-D frequency grid, T(|f|) (radially symmetric, the
default) or T of an elliptical radius stretched to each direction's MTF50 (``anisotropic=True``, which needs
near-vertical and near-horizontal edges), then inverse-FFT'd, clipped at 0, cropped to the blur's support
and normalised. T keeps the sign of the measured transfer function (a defocus disk's negative lobes), so the
kernel has the blur's shape, not only its MTF. A last frequency rescale (a few per mille) makes the kernel's
own MTF50 (:attr:`PSF.mtf50`) equal the measured one, which cropping and clipping move slightly.

>>> from meddeblur.psf.target import edge_chart
>>> import numpy as np, torch
>>> from meddeblur.degradation.kernels import gaussian_kernel
>>> from meddeblur.physics import blur
>>> chart = torch.from_numpy(edge_chart(160, 160).transpose(2, 0, 1).copy())[None]
>>> photo = blur(chart, gaussian_kernel(1.5))[0].numpy().transpose(1, 2, 0)
>>> psf = calibrate(photo)
>>> round(psf.mtf50, 3), round(0.1874 / 1.5, 3)     # a Gaussian's MTF50 is 0.1874 / sigma
(0.125, 0.125)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from meddeblur import __version__
from meddeblur.errors import InvalidOption
from meddeblur.psf.edge import OVERSAMPLING, EdgeSFR, frequencies, measure_edges
from meddeblur.psf.kernel import PSF, psf_from_array
from meddeblur.psf.mtf import NYQUIST, directional_mtf, mtf50

__all__ = ["METHOD", "calibrate", "write_figure"]

METHOD = "ISO 12233 slanted edge: 4x oversampled ESF, Hamming-windowed LSF, |FFT| with the derivative's response divided out"
_SUPPORT = 0.02  # the kernel reaches as far as the LSF stays above this share of its peak
_NOISE = (0.005, 0.1)  # bounds of the level (4 σ of the measurement's noise) below which the transfer function is faded out
_FADE = 0.05  # cycles/pixel over which it fades
_CORNER = NYQUIST * math.sqrt(2)  # the 2-D grid's corners lie this far out
_MAX_RADIUS = 200  # meddeblur.psf.kernel refuses kernels wider than 401 px
_CURVE_STEP = 0.01  # cycles/pixel between the samples of the measured curve stored in the file
_MATCH = 0.002  # relative MTF50 difference left by the rescale

Profile = Callable[[np.ndarray], np.ndarray]  # transfer function of the radial frequency (cycles/pixel, 0 to _CORNER)


def _radius(edges: list[EdgeSFR]) -> int:
    """Kernel radius (px): the farthest the centred, 1-px-smoothed LSFs rise above _SUPPORT of their peak, + 1."""
    radius = 1
    for edge in edges:
        lsf = np.convolve(edge.lsf, np.ones(OVERSAMPLING) / OVERSAMPLING, mode="same")
        weight = np.clip(edge.lsf, 0, None)
        centre = float((edge.esf_x * weight).sum() / weight.sum())
        above = np.abs(edge.esf_x - centre)[lsf > _SUPPORT * lsf.max()]
        radius = max(radius, math.ceil(float(above.max())) + 1)
    return min(radius, _MAX_RADIUS)


def _mean(curves: list[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(curves), axis=0)


def _profile(freqs: np.ndarray, edges: list[EdgeSFR]) -> tuple[Profile, np.ndarray]:
    """(transfer function of the radial frequency, mean MTF) of ``edges`` measured along one direction (or all).

    Past the last frequency where the smoothed MTF stands 4 σ clear of the measurement's noise it fades to 0: the
    noise would otherwise become a pedestal of small positive values around the kernel once negatives are clipped.
    Between Nyquist and the grid's corners (0.5·√2), which an edge on a pixel grid cannot measure (its response there
    is the kernel's periodic spectrum coming back), the value at Nyquist fades to 0.
    """
    otf, mtf = _mean([e.otf for e in edges]), _mean([e.mtf for e in edges])
    noise = math.sqrt(np.mean([e.noise**2 for e in edges]) / len(edges))
    threshold = float(np.clip(4 * noise, *_NOISE))
    clear = np.nonzero(np.convolve(mtf, np.ones(5) / 5, mode="same") > threshold)[0]
    cut = freqs[clear[-1]] if len(clear) else freqs[1]
    otf = otf * (0.5 - 0.5 * np.cos(np.pi * np.clip((cut + _FADE - freqs) / _FADE, 0.0, 1.0)))
    edge_value = float(otf[-1])

    def profile(rho: np.ndarray) -> np.ndarray:
        beyond = np.clip((rho - NYQUIST) / (_CORNER - NYQUIST), 0.0, 1.0)
        return np.where(rho <= NYQUIST, np.interp(rho, freqs, otf), edge_value * (0.5 + 0.5 * np.cos(np.pi * beyond)))

    return profile, mtf


def _kernel(otf_at: Callable[[np.ndarray, np.ndarray], np.ndarray], radius: int) -> np.ndarray:
    """(2·radius + 1)² kernel whose DFT on an n×n grid (n ≥ 129) is ``otf_at(fx, fy)``, clipped at 0 and cropped."""
    n = 2 * max(64, 3 * radius) + 1
    f = np.fft.fftfreq(n)
    full = np.fft.fftshift(np.fft.ifft2(otf_at(f[None, :], f[:, None])).real)  # odd n: the origin lands on n // 2
    c = n // 2
    return np.clip(full[c - radius : c + radius + 1, c - radius : c + radius + 1], 0.0, None)


_MTF_ANGLES = np.arange(36) * 5.0  # degrees: 0, 5, …, 175


def _own_mtf50(kernel: np.ndarray, near: float, angles: np.ndarray = _MTF_ANGLES) -> float | None:
    """MTF50 of ``kernel`` averaged over ``angles`` (default radial_mtf's: :attr:`PSF.mtf50`), sampled only around ``near``."""
    freqs = np.linspace(0.8 * near, min(1.2 * near, NYQUIST), 41)
    curve = np.mean([directional_mtf(kernel, a, freqs) for a in angles], axis=0)
    if not curve[0] > 0.5 > curve[-1]:
        full = np.linspace(0.0, NYQUIST, 201)
        return mtf50(full, np.mean([directional_mtf(kernel, a, full) for a in angles], axis=0))
    return mtf50(freqs, curve)


def _isotropic(profile: Profile, target: float | None, radius: int) -> tuple[np.ndarray, dict[str, Any]]:
    def build(scale: float) -> np.ndarray:
        return _kernel(lambda fx, fy: profile(np.hypot(fx, fy) * scale), radius)

    scale = 1.0
    kernel = build(scale)
    for _ in range(4):  # own MTF50 ∝ 1 / scale: a few Newton-like steps
        if target is None:
            break
        own = _own_mtf50(kernel, target)
        if own is None or abs(own / target - 1) <= _MATCH:
            break
        scale = float(np.clip(scale * own / target, 0.9, 1.1))
        kernel = build(scale)
    return kernel, {"frequency_scale": round(scale, 5)}


def _axis(edges: list[EdgeSFR], flip_index: int) -> np.ndarray:
    """Mean unit normal of ``edges``, each turned to point along +x (index 0) or +y (index 1)."""
    vectors = [np.array(e.normal) * (1 if e.normal[flip_index] >= 0 else -1) for e in edges]
    mean = np.mean(vectors, axis=0)
    return mean / np.linalg.norm(mean)


def _elliptical(
    freqs: np.ndarray, vertical: list[EdgeSFR], horizontal: list[EdgeSFR], radius: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """An elliptical kernel: the two directions' mean shape, stretched to each direction's MTF50."""
    u = _axis(vertical, 0)
    v = np.array([-u[1], u[0]])  # perpendicular to u (the target's sides are)
    angles = [math.degrees(math.atan2(-a[1], a[0])) for a in (u, v)]
    (pu, mu), (pv, mv) = _profile(freqs, vertical), _profile(freqs, horizontal)
    su, sv = mtf50(freqs, mu), mtf50(freqs, mv)
    if su is None or sv is None:
        raise InvalidOption(
            "anisotropic=True: one direction keeps MTF above 0.5 up to Nyquist, too sharp to tell directions "
            "apart; drop anisotropic",
            value=True,
            option="anisotropic",
        )
    t = np.linspace(0.0, _CORNER / min(su, sv), 801)  # the shape on a normalised axis: T_u(t·su) and T_v(t·sv) averaged
    shape = 0.5 * (pu(t * su) + pv(t * sv))

    def build(ku: float, kv: float) -> np.ndarray:
        def otf_at(fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
            fu, fv = fx * u[0] + fy * u[1], fx * v[0] + fy * v[1]
            return np.interp(np.hypot(fu * ku / su, fv * kv / sv), t, shape, right=0.0)

        return _kernel(otf_at, radius)

    ku = kv = 1.0
    kernel = build(ku, kv)
    for _ in range(4):
        own_u, own_v = (_own_mtf50(kernel, near, np.array([a])) for near, a in ((su, angles[0]), (sv, angles[1])))
        if own_u is None or own_v is None or max(abs(own_u / su - 1), abs(own_v / sv - 1)) <= _MATCH:
            break
        ku, kv = float(np.clip(ku * own_u / su, 0.9, 1.1)), float(np.clip(kv * own_v / sv, 0.9, 1.1))
        kernel = build(ku, kv)
    return kernel, {
        "frequency_scale": [round(ku, 5), round(kv, 5)],
        "mtf50_by_direction_deg": {f"{angles[0]:.1f}": round(su, 5), f"{angles[1]:.1f}": round(sv, 5)},
    }


def calibrate(image: np.ndarray, roi: tuple[int, int, int, int] | None = None, anisotropic: bool = False) -> PSF:
    """The PSF of the device that took ``image``, a photo of a slanted edge ((H, W, 3) or (H, W) float in [0, 1]).

    ``roi`` = (x0, y0, x1, y1) limits the search for edges; ``anisotropic`` fits an elliptical PSF from the
    near-vertical and near-horizontal edges (the target's four sides) instead of a radially symmetric one.
    The PSF's ``extra`` holds the measurement: its MTF50 (``measured_mtf50_cycles_per_pixel``), the edges and the
    measured curve (0 to Nyquist). Raises :class:`~meddeblur.psf.edge.EdgeError` when no edge is usable (the
    message says why) and InvalidOption for a bad ``roi`` or an ``anisotropic`` request with edges in one direction only.
    """
    edges = measure_edges(image, roi)
    freqs = frequencies()
    vertical = [e for e in edges if e.orientation == "vertical"]
    horizontal = [e for e in edges if e.orientation == "horizontal"]
    groups = [g for g in (vertical, horizontal) if g]
    # Each direction weighs the same, however many sides of the square showed it.
    mtf = _mean([_mean([e.mtf for e in g]) for g in groups])
    measured = mtf50(freqs, mtf)
    radius = _radius(edges)
    if anisotropic:
        if len(groups) < 2:
            only = "near-vertical" if vertical else "near-horizontal"
            raise InvalidOption(
                f"anisotropic=True needs near-vertical and near-horizontal edges (the target's four sides); this photo "
                f"has only {only} ones: photograph the whole square, or drop anisotropic",
                value=True,
                option="anisotropic",
            )
        kernel, fit = _elliptical(freqs, vertical, horizontal, radius)
    else:
        weighted = [e for g in groups for e in g for _ in range(len(edges) // len(g))]  # equal weight per direction
        kernel, fit = _isotropic(_profile(freqs, weighted)[0], measured, radius)
    step = round(_CURVE_STEP / (freqs[1] - freqs[0]))
    curve: dict[str, Any] = {
        "freqs": [round(float(f), 4) for f in freqs[::step]],
        "mtf": [round(float(v), 5) for v in mtf[::step]],
    }
    if len(groups) == 2:
        curve["by_orientation"] = {
            name: [round(float(v), 5) for v in _mean([e.mtf for e in g])[::step]]
            for name, g in (("vertical", vertical), ("horizontal", horizontal))
        }
    calibration = {
        "meddeblur": __version__,
        "method": METHOD,
        "model": "elliptical" if anisotropic else "radially symmetric",
        "measured_mtf50_cycles_per_pixel": None if measured is None else round(measured, 5),
        **fit,
        "edges": [e.summary() for e in edges],
        "curve": curve,
    }
    # "tool" marks the file as meddeblur's own (meddeblur.io.ownership), so a later calibration may replace it.
    extra = {"tool": "meddeblur", "operation": "calibrate", "calibration": calibration}
    return psf_from_array(kernel, "calibration", extra=extra)


def write_figure(psf: PSF, path: str | Path) -> Path:
    """The calibration figure: the kernel beside its MTF and the slanted-edge measurement (PNG, atomically, with
    meddeblur's provenance record). ``psf`` must come from :func:`calibrate` (or a file it wrote); needs matplotlib."""
    from meddeblur.files import atomic_path
    from meddeblur.io.provenance import embed, make_record
    from meddeblur.plots import plot_psf

    calibration = psf.extra.get("calibration")
    if not isinstance(calibration, dict) or "curve" not in calibration:
        raise InvalidOption(
            f"psf={psf.source}: has no calibration measurement to draw; use a PSF made by calibrate",
            value=psf.source,
            option="psf",
        )
    curve = calibration["curve"]
    f = np.asarray(curve["freqs"], dtype=np.float64)
    curves = {"measured (slanted edge, mean)": (f, np.asarray(curve["mtf"], dtype=np.float64))}
    for name, values in (curve.get("by_orientation") or {}).items():
        curves[f"measured, {name} edges"] = (f, np.asarray(values, dtype=np.float64))
    record = make_record(parameters={"psf": psf.digest, "mtf50": None if psf.mtf50 is None else round(psf.mtf50, 4)})
    record.update(operation="calibration figure", note="MTF measured on a slanted edge")
    path = Path(path)
    with atomic_path(path) as tmp:
        plot_psf(psf.kernel, *psf.mtf(), psf.mtf50, tmp, f"calibrated PSF, {calibration.get('model', '')}", curves=curves)
        tmp.write_bytes(embed(tmp.read_bytes(), "PNG", record))
    return path
