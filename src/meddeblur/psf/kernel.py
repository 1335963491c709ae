"""Point-spread functions (PSFs) as objects: a parametric spec or a measured kernel, validated once.

A :class:`PSF` holds a non-negative float64 ``(kh, kw)`` kernel with odd sides, summing to 1, whose
origin (zero displacement) is the middle sample ``(kh // 2, kw // 2)`` — the convention of
:func:`meddeblur.physics.blur` (true convolution) and :mod:`meddeblur.restore.classical`.
It comes from

* a spec in the ``--degrade`` language with single values: ``gauss:sigma=1.6``,
  ``gauss:sigma=2,sigma_y=1,angle=30``, ``defocus:radius=2.5``, ``motion:length=9,angle=45``,
  ``down:scale=2``, ``resample:scale=2,down=box,up=bicubic,lib=pil`` (the resampling families'
  approximate PSFs), ``none`` (a delta);
* a file: a 2-D ``.npy`` array, a grey ``.png`` (8 or 16 bit) or the ``.json`` that ``meddeblur
  calibrate`` writes (:meth:`PSF.save_json`);
* a 2-D numpy array.

Bad kernels (negative, NaN, all-zero, not 2-D, larger than the image) are refused in one line; so are files whose
size or header promises more than a kernel can be (:mod:`meddeblur.psf.kernel_files`, checked before reading).

>>> from meddeblur.psf import load_psf
>>> psf = load_psf("gauss:sigma=1.6")
>>> psf.kernel.shape, round(float(psf.kernel.sum()), 6)
((11, 11), 1.0)
>>> round(psf.mtf50, 3)          # cycles/pixel; a Gaussian's is 0.1874 / sigma
0.117
>>> load_psf("none").is_delta
True
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from meddeblur.errors import InvalidOption, NotFound, UnsupportedFormat, UserError
from meddeblur.files import atomic_write
from meddeblur.io.formats import names_psf_file
from meddeblur.psf.kernel_files import MAX_SIDE, read_json, read_npy, read_png
from meddeblur.psf.mtf import mtf50 as _mtf50
from meddeblur.psf.mtf import radial_mtf

__all__ = ["PSF", "PSF_FORMAT", "PsfLike", "load_psf", "psf_from_array", "psf_from_spec"]

#: The ``format`` key of PSF ``.json`` files.
PSF_FORMAT = "meddeblur-psf"
_PARAMETRIC = ("gauss", "defocus", "motion", "down", "resample", "none")
_DELTA_SHARE = 0.999  # a kernel with this share of its weight in one sample does nothing worth undoing

PsfLike = Union["PSF", str, Path, np.ndarray]


def _digest(kernel: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(kernel, dtype="<f8").tobytes() + repr(kernel.shape).encode()).hexdigest()[:12]


@dataclass(frozen=True, eq=False)
class PSF:
    """A validated PSF: ``kernel`` float64 (kh, kw), odd sides, ≥ 0, sum 1, origin at the middle sample.

    ``source`` is the spec string, the file it was read from, or ``"array"``; ``params`` the parametric
    values (empty for a measured kernel); ``extra`` what a measurement recorded beside it (calibration).
    Build one with :func:`load_psf`, :func:`psf_from_spec` or :func:`psf_from_array`.
    """

    kernel: np.ndarray
    source: str
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """First 12 hex of the SHA-256 of the kernel's values and shape: identifies it in provenance."""
        return _digest(self.kernel)

    @property
    def is_delta(self) -> bool:
        """True when (nearly) all the weight sits on the origin: restoring with it leaves the image as it is."""
        kh, kw = self.kernel.shape
        return bool(self.kernel[kh // 2, kw // 2] >= _DELTA_SHARE)

    def mtf(self, samples: int = 101) -> tuple[np.ndarray, np.ndarray]:
        """(frequencies in cycles/pixel from 0 to 0.5, MTF averaged over directions); see :func:`meddeblur.psf.mtf.radial_mtf`."""
        return radial_mtf(self.kernel, samples)

    @functools.cached_property
    def mtf50(self) -> float | None:
        """MTF50 in cycles/pixel (None: above Nyquist, e.g. a delta); computed once (the kernel is fixed)."""
        return _mtf50(*self.mtf())

    def describe(self) -> dict[str, Any]:
        """What provenance records of this PSF: source, parameters, size, digest and MTF50."""
        mtf50 = self.mtf50
        return {
            "source": self.source,
            "params": dict(self.params),
            "size": list(self.kernel.shape),
            "digest": self.digest,
            "mtf50_cycles_per_pixel": None if mtf50 is None else round(mtf50, 5),
        }

    def draw(self, path: str | Path, title: str | None = None) -> Path:
        """Write a PNG of the kernel beside its MTF curve with MTF50 marked (the ``plots`` extra: matplotlib)."""
        from meddeblur.plots import plot_psf

        return plot_psf(self.kernel, *self.mtf(), self.mtf50, path, title or self.source)

    def check_fits(self, height: int, width: int, where: str = "image") -> None:
        """InvalidOption when the kernel is larger than a ``height`` × ``width`` image."""
        kh, kw = self.kernel.shape
        if kh > height or kw > width:
            raise InvalidOption(
                f"psf={self.source}: the kernel ({kw}×{kh}) is larger than the {where} ({width}×{height}); "
                "use a smaller PSF or a larger image",
                value=self.source,
                option="psf",
            )

    def save_json(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write the PSF as ``.json`` atomically (read back by :func:`load_psf`); ``extra`` keys are stored beside it."""
        record = {
            "format": PSF_FORMAT,
            "version": 1,
            "source": self.source,
            "params": self.params,
            "size": list(self.kernel.shape),
            "digest": self.digest,
            "mtf50_cycles_per_pixel": self.mtf50,
            **self.extra,
            **(extra or {}),
            "kernel": self.kernel.tolist(),
        }
        path = Path(path)
        with atomic_write(path, "w") as fh:
            json.dump(record, fh, indent=1)
        return path


def _refuse(source: str, why: str, fix: str = "pass a non-negative 2-D kernel with a positive sum") -> InvalidOption:
    return InvalidOption(f"psf={source}: {why}; {fix}", value=source, option="psf")


def psf_from_array(
    array: np.ndarray,
    source: str = "array",
    origin: tuple[int, int] | None = None,
    params: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> PSF:
    """A :class:`PSF` from a 2-D array (any scale: it is normalised to sum 1).

    ``origin`` (row, column) is the sample of zero displacement; default the middle sample ``(kh // 2, kw // 2)``.
    The kernel is embedded in the smallest odd-sided array that has the origin in its middle.
    Raises :class:`~meddeblur.errors.InvalidOption` for a non-2-D, non-finite, negative or all-zero array.
    """
    k = np.asarray(array)
    if isinstance(array, np.ma.MaskedArray):
        raise _refuse(source, "a masked array is not a kernel", "pass a plain numpy array")
    if k.ndim != 2 or k.size == 0:
        raise _refuse(source, f"a PSF must be a 2-D array, got shape {k.shape}")
    if not (np.issubdtype(k.dtype, np.floating) or np.issubdtype(k.dtype, np.integer)) or k.dtype == np.bool_:
        raise _refuse(source, f"dtype {k.dtype} is not a number type")
    with np.errstate(over="ignore", invalid="ignore"):  # a longdouble beyond float64 becomes inf: refused just below
        k = k.astype(np.float64)
    if not np.isfinite(k).all():
        raise _refuse(source, "the kernel contains NaN or infinite values (or numbers beyond float64)", "pass finite values")
    if (k < 0).any():
        raise _refuse(source, f"the kernel has negative values (minimum {k.min():g})")
    peak = k.max()
    if not peak > 0:
        raise _refuse(source, "the kernel is all zero")
    with np.errstate(over="ignore"):  # an overflowing sum is handled just below
        total = k.sum()
    if not np.isfinite(total):
        # Nine 1e308s sum to inf, and k / inf would silently be all zero: scaled by the largest value first, at most
        # MAX_SIDE² values ≤ 1 cannot overflow. Only then, so that every other kernel keeps its exact values and digest.
        k = k / peak
        total = k.sum()
    kh, kw = k.shape
    oy, ox = (kh // 2, kw // 2) if origin is None else (int(origin[0]), int(origin[1]))
    if not (0 <= oy < kh and 0 <= ox < kw):
        raise _refuse(source, f"origin {origin} lies outside the {kh}×{kw} kernel", "give the origin as (row, column) inside it")
    ry, rx = max(oy, kh - 1 - oy), max(ox, kw - 1 - ox)
    if max(2 * ry + 1, 2 * rx + 1) > MAX_SIDE:
        raise _refuse(source, f"the kernel spans more than {MAX_SIDE} pixels", "crop it to the blur's support")
    out = np.zeros((2 * ry + 1, 2 * rx + 1))
    out[ry - oy : ry - oy + kh, rx - ox : rx - ox + kw] = k / total
    out = _trim(out)
    return PSF(out, source, dict(params or {}), dict(extra or {}))


def _trim(kernel: np.ndarray) -> np.ndarray:
    """Drop all-zero outer rings symmetrically (the origin stays in the middle)."""
    while kernel.shape[0] > 1 and not kernel[[0, -1], :].any():
        kernel = kernel[1:-1]
    while kernel.shape[1] > 1 and not kernel[:, [0, -1]].any():
        kernel = kernel[:, 1:-1]
    return kernel


def psf_from_spec(spec: str) -> PSF:
    """A parametric :class:`PSF` from a spec string such as ``gauss:sigma=1.6`` (see the module docstring).

    Single values only (no ranges, no ``any``) and no operators; raises :class:`~meddeblur.errors.UserError` naming the problem.
    """
    # Imported here: the degradation package pulls in torch, which file-only callers need not pay for.
    from meddeblur.degradation.pipeline import family_kernel
    from meddeblur.degradation.spec import parse_spec

    fix = "use e.g. gauss:sigma=1.6, defocus:radius=2.5, motion:length=9,angle=30, down:scale=2, or a .npy/.png/.json kernel file"
    try:
        parsed = parse_spec(spec)
    except UserError as error:
        raise InvalidOption(f"psf={spec!r}: {str(error).partition(': ')[2] or error}", value=spec, option="psf") from None
    if parsed.family not in _PARAMETRIC:
        raise _refuse(spec, f"'{parsed.family}' is not a single blur", fix)
    if parsed.ops:
        raise _refuse(spec, "a PSF has no operators (noise, jpeg)", "drop the '+…' part")
    params: dict[str, Any] = {}
    for key, value in parsed.params:
        if isinstance(value, tuple) or value == "any":
            raise _refuse(spec, f"{parsed.family}:{key} must be one value, not a range or 'any'", fix)
        params[key] = value
    kernel = family_kernel(parsed.family, params).double().numpy()
    return psf_from_array(kernel, str(parsed), params={"family": parsed.family, **params})


def _read_json(path: Path) -> PSF:
    kernel, params, record = read_json(path, PSF_FORMAT)
    known = {"format", "version", "source", "params", "size", "digest", "mtf50_cycles_per_pixel", "kernel"}
    return psf_from_array(kernel, str(path), params=params, extra={k: v for k, v in record.items() if k not in known})


def _read_file(path: Path) -> PSF:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise NotFound(f"{path}: no such PSF file; pass a spec such as gauss:sigma=1.6 or a .npy/.png/.json kernel", value=path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".npy":
        return psf_from_array(read_npy(path), str(path))
    if suffix == ".png":
        return psf_from_array(read_png(path), str(path))
    raise UnsupportedFormat(f"{path}: a PSF file must be .npy, .png or .json", value=path)


def load_psf(psf: PsfLike, shape: tuple[int, int] | None = None) -> PSF:
    """A :class:`PSF` from a spec string, a file path (.npy, .png, .json), a 2-D array or a PSF.

    A string that names an existing file, or ends in .npy/.png/.json, is read as a file; otherwise it is a spec.
    ``shape`` = (height, width) of the image it will restore: a larger kernel is refused.
    """
    if isinstance(psf, PSF):
        result = psf
    elif isinstance(psf, np.ndarray):
        result = psf_from_array(psf)
    elif isinstance(psf, (str, Path)):
        result = _read_file(Path(psf)) if names_psf_file(psf) else psf_from_spec(str(psf))
    else:
        raise InvalidOption(
            f"psf: expected a spec string, a file path, a 2-D array or a PSF, got {type(psf).__name__}", value=psf, option="psf"
        )
    if shape is not None:
        result.check_fits(*shape)
    return result
