"""Free-form blur kernels estimated from the image (:mod:`meddeblur.psf.freeform`): known kernels found, a parametric
start kept where it is right, hostile inputs refused.

The image is synthetic (discs and rectangles of random grey levels: edges in every direction), so the tests run
everywhere; each estimate takes a few seconds on two cores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meddeblur.degradation.kernels import gaussian_kernel, motion_kernel
from meddeblur.errors import InvalidOption
from meddeblur.physics import blur
from meddeblur.psf import PSF, psf_from_spec
from meddeblur.psf.estimate import gaussian_of_moments
from meddeblur.psf.freeform import KEEP_GAUSS, KEEP_START, estimate_kernel, keeps_start, support_of
from meddeblur.psf.freeform_kernel import centroid, kernel_distance, project, resize_kernel

SIDE = 160
BOUND = 0.6  # normalised L2 kernel error a working estimate stays below (measured 0.3–0.55 on these three)


def _shapes(n: int = SIDE, seed: int = 0, count: int = 60) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((n, n), 0.5)
    yy, xx = np.mgrid[:n, :n]
    for _ in range(count):
        value = rng.uniform(0.1, 0.9)
        if rng.random() < 0.5:
            cy, cx = rng.uniform(0, n, 2)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(4, n / 6) ** 2] = value
        else:
            y0, x0 = rng.integers(0, n, 2)
            h, w = rng.integers(5, n // 4, 2)
            image[y0 : y0 + h, x0 : x0 + w] = value
    return image


def _path_kernel(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A kernel drawn along the path (xs, ys) (px, y down), splatted bilinearly, centred on its centroid."""
    xs, ys = xs - xs.mean(), ys - ys.mean()
    n = 2 * math.ceil(max(np.abs(xs).max(), np.abs(ys).max())) + 3
    kernel, c = np.zeros((n, n)), n // 2
    for x, y in zip(xs, ys):
        i0, j0 = math.floor(y + c), math.floor(x + c)
        fi, fj = y + c - i0, x + c - j0
        kernel[i0 : i0 + 2, j0 : j0 + 2] += np.outer([1 - fi, fi], [1 - fj, fj])
    return kernel / kernel.sum()


def _arc() -> np.ndarray:
    t = np.linspace(0.2, 2.4, 400)
    return _path_kernel(5.0 * np.cos(t), 5.0 * np.sin(t))


def _hook() -> np.ndarray:
    """A shake-like path: 14 px, straight for half its length, then turning through 150°."""
    t = np.linspace(0.0, 1.0, 600)
    heading = 0.4 + 2.6 * np.maximum(t - 0.5, 0.0) * 2
    step = 14.0 / t.size
    return _path_kernel(np.cumsum(np.cos(heading)) * step, np.cumsum(np.sin(heading)) * step)


KERNELS = {"arc": _arc, "hook": _hook, "motion": lambda: motion_kernel(9, 30).double().numpy()}


def _blurred(kernel: np.ndarray, noise: float = 0.002) -> np.ndarray:
    sharp = torch.from_numpy(_shapes())[None, None]
    out = blur(sharp, torch.from_numpy(kernel))[0, 0].numpy()
    out = out + np.random.default_rng(1).normal(0.0, noise, out.shape)
    return np.round(np.clip(out, 0.0, 1.0) * 255) / 255


def _moments_gaussian(kernel: np.ndarray, isotropic: bool) -> np.ndarray:
    major, minor, angle = gaussian_of_moments(kernel)
    if isotropic:
        return gaussian_kernel(math.sqrt((major**2 + minor**2) / 2)).double().numpy()
    return gaussian_kernel(major, max(minor, 0.3), angle).double().numpy()


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_known_kernel_is_found(name: str) -> None:
    truth = KERNELS[name]()
    estimate = estimate_kernel(_blurred(truth), size=truth.shape[0] + 4 | 1)
    error = kernel_distance(estimate.kernel, truth)
    # What a broken estimator scores: a delta, and the Gaussian of the kernel's moments (anisotropic for the curved
    # paths, as the parametric estimator reports shake; isotropic for the line, which it reports as motion).
    broken = [kernel_distance(np.ones((1, 1)), truth), kernel_distance(_moments_gaussian(truth, name == "motion"), truth)]
    assert min(broken) > BOUND, broken
    assert error < BOUND, (name, error, broken)
    assert estimate.params["family"] == "freeform" and estimate.extra["chosen"] == "freeform"
    assert abs(estimate.kernel.sum() - 1.0) < 1e-9 and (estimate.kernel >= 0).all()
    assert max(abs(c) for c in centroid(estimate.kernel)) < 0.05  # centred on its centroid


def test_gaussian_blur_is_not_made_worse_than_its_gaussian_start() -> None:
    truth = gaussian_kernel(1.5).double().numpy()
    image = _blurred(truth)
    for spec in ("gauss:sigma=1.5", "gauss:sigma=1.8"):
        start = psf_from_spec(spec)
        estimate = estimate_kernel(image, start)
        assert kernel_distance(estimate.kernel, truth) <= kernel_distance(start.kernel, truth) + 1e-9, spec
        assert estimate.extra["chosen"] in ("start", "freeform") and "distance_to_start" in estimate.extra


def test_the_start_sets_the_support() -> None:
    size, kernel = support_of(psf_from_spec("motion:length=9,angle=30"), None)
    assert size % 2 == 1 and 9 < size <= 19 and kernel is not None
    assert support_of(None, 10) == (11, None)  # odd: the middle sample is the origin


def test_a_gaussian_start_is_kept_only_when_closer_than_other_starts() -> None:
    # A Gaussian is what the parametric estimator reports for camera shake: its free-form rival is trusted sooner.
    assert KEEP_GAUSS < KEEP_START
    middle = (KEEP_GAUSS + KEEP_START) / 2
    assert keeps_start(middle, "motion") and not keeps_start(middle, "gauss") and keeps_start(KEEP_GAUSS / 2, "gauss")
    assert not keeps_start(0.1, "motion", keep_start=0.0)  # 0: always the free-form kernel


def test_projection_and_resizing_keep_a_kernel() -> None:
    raw = np.zeros((9, 9))
    raw[2:7, 5] = 1.0
    raw[0, 0], raw[8, 8], raw[4, 4] = 0.3, -2.0, 0.01  # a speck, a negative, a value below the floor
    k = project(raw)
    assert k[0, 0] == 0 and (k >= 0).all() and abs(k.sum() - 1) < 1e-12 and np.count_nonzero(k) == 5
    assert k[2:7, 4].all()  # moved by a whole sample onto the middle column
    for factor, side in ((0.5, 5), (2.0, 17)):
        resized = resize_kernel(k, factor, side)
        assert resized.shape == (side, side) and abs(resized.sum() - 1) < 1e-12
        assert max(abs(c) for c in centroid(resized)) < 0.51


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.full((96, 96, 3), 0.5), {"size": 9}, "flat"),
        (np.random.default_rng(0).random((20, 20)), {"size": 5}, "too small"),
        (np.random.default_rng(0).random((200, 200)), {"size": 75}, "too small"),
        (np.where(np.eye(96) > 0, np.nan, 0.5), {"size": 9}, "NaN"),
        (np.full((96, 96), 128, dtype=np.uint8), {"size": 9}, "float"),
        ("scan.png", {"size": 9}, "numpy"),
        (np.random.default_rng(0).random((96, 96)), {"size": 2}, "size=2"),
        (np.random.default_rng(0).random((96, 96)), {"size": 101}, "size=101"),
        (np.random.default_rng(0).random((96, 96)), {"size": True}, "size=True"),
        (np.random.default_rng(0).random((96, 96)), {"size": 9, "window": 32}, "window=32"),
        (np.random.default_rng(0).random((96, 96)), {"size": 9, "lam": float("nan")}, "lam=nan"),
        (np.random.default_rng(0).random((96, 96)), {"size": 9, "iterations": 0}, "iterations=0"),
        (np.random.default_rng(0).random((96, 96)), {"start": "gauss:sigma=2"}, "start: expected"),
    ],
)
def test_hostile_inputs_are_refused(image: object, kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidOption, match=message):
        estimate_kernel(image, **kwargs)  # type: ignore[arg-type]


def test_deterministic_and_a_psf() -> None:
    image = _blurred(KERNELS["arc"]())[:96, :96]
    first, second = (estimate_kernel(image, size=7, iterations=2) for _ in range(2))
    assert isinstance(first, PSF) and first.digest == second.digest
    assert first.extra["windows"] == [{"top": 0, "left": 0, "side": 96}] and first.describe()["size"][0] <= 7
