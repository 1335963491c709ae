"""Synthetic degradations: kernel shapes, resampling, noise/JPEG, specs, reproducibility (the blur itself: tests/physics)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.degradation.kernels import disk_kernel, gaussian_kernel, motion_kernel, resolution_kernel, shake_kernel
from meddeblur.degradation.pipeline import (
    Degradation,
    add_gaussian_noise,
    add_poisson_gaussian_noise,
    degradation_seed,
    degrade,
    downup,
    jpeg,
    quantize8,
)
from meddeblur.degradation.spec import DegradeSpec, parse_spec
from meddeblur.errors import UserError
from meddeblur.metrics import psnr
from meddeblur.physics import blur


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(h: int = 48, w: int = 40, seed: int = 0) -> torch.Tensor:
    """A synthetic dermoscopy-like image, (1, 3, H, W), already 8-bit."""
    return quantize8(torch.from_numpy(synthetic_dermoscopy(h, w, seed)).permute(2, 0, 1)[None])


def _support(k: torch.Tensor) -> tuple[int, int]:
    rows, cols = np.nonzero(k.numpy())
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def _all_kernels() -> list[torch.Tensor]:
    return [
        gaussian_kernel(1.2), gaussian_kernel(0.5), gaussian_kernel(3.0, 1.0, 30.0), disk_kernel(3),
        disk_kernel(1.5), motion_kernel(11, 30), motion_kernel(3), motion_kernel(21, 145.0),
        shake_kernel(11, _gen(1)), shake_kernel(5, _gen(2)), resolution_kernel(2), resolution_kernel(4, "bilinear"),
    ]


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("index", range(12))
def test_kernels_are_normalised_odd_and_non_negative(index: int) -> None:
    k = _all_kernels()[index]
    assert k.dtype == torch.float32 and k.dim() == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert (k >= 0).all()
    assert abs(k.sum().item() - 1.0) < 1e-6


@pytest.mark.parametrize("sigma", [1.2, 2.0, 3.0])
def test_gaussian_second_moment(sigma: float) -> None:
    k = gaussian_kernel(sigma).double()
    r = k.shape[0] // 2
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    assert (k.sum(0) * x**2).sum().item() == pytest.approx(sigma**2, rel=0.05)
    assert (k.sum(1) * x**2).sum().item() == pytest.approx(sigma**2, rel=0.05)


def test_anisotropic_gaussian_rotated_90_is_transposed() -> None:
    a, b = gaussian_kernel(3.0, 1.0, 0.0), gaussian_kernel(3.0, 1.0, 90.0)
    torch.testing.assert_close(b, a.T, atol=1e-7, rtol=0)
    x = torch.arange(a.shape[0], dtype=torch.float32) - a.shape[0] // 2
    assert (a.sum(0) * x**2).sum() == pytest.approx(9.0, rel=0.05)  # sigma along x at angle 0
    assert (a.sum(1) * x**2).sum() == pytest.approx(1.0, rel=0.05)


def test_disk_interior_flat_edge_antialiased_outside_zero() -> None:
    r = 3.0
    k = disk_kernel(r, size=11).numpy()
    yy, xx = np.mgrid[-5:6, -5:6]
    dist = np.hypot(yy, xx)
    interior = k[dist < r - 0.75]
    assert np.allclose(interior, interior[0])
    assert (k[dist > r + 1] == 0).all()
    edge = k[(dist > r - 0.5) & (dist < r + 0.5)]
    assert ((edge > 0) & (edge < interior[0])).any()


def test_motion_support() -> None:
    for length in (3, 11, 21):
        rows, cols = _support(motion_kernel(length, 0.0))
        assert abs(cols - length) <= 1 and 1 <= rows <= 2
        torch.testing.assert_close(motion_kernel(length, 90.0), motion_kernel(length, 0.0).T, atol=1e-7, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_shake_support_and_determinism(seed: int) -> None:
    extent = 11
    k = shake_kernel(extent, _gen(seed))
    rows, cols = _support(k)
    assert rows <= extent + 1 and cols <= extent + 1
    assert max(rows, cols) >= extent - 2
    assert torch.equal(k, shake_kernel(extent, _gen(seed)))
    assert not torch.equal(k, shake_kernel(extent, _gen(seed + 100)))


def test_resolution_kernel_is_symmetric_and_wider_for_larger_scale() -> None:
    k2, k4 = resolution_kernel(2), resolution_kernel(4)
    torch.testing.assert_close(k2, k2.T)
    torch.testing.assert_close(k2, k2.flip(0))
    assert k4.shape[0] > k2.shape[0] and k4.max() < k2.max()


# --------------------------------------------------------------------------- down-up, noise, JPEG, quantisation


@pytest.mark.parametrize("scale,up", [(2, "bicubic"), (3, "bilinear"), (4, "bicubic")])
def test_downup_shape_and_removes_high_frequencies(scale: int, up: str) -> None:
    x = torch.rand(2, 3, 47, 41, generator=_gen())
    y = downup(x, scale, up)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1

    def high(z: torch.Tensor) -> float:
        return (z[..., 1:, :] - z[..., :-1, :]).pow(2).mean().item() + (z[..., 1:] - z[..., :-1]).pow(2).mean().item()

    assert high(y) < 0.5 * high(x)


def test_gaussian_noise_std_and_device_independence() -> None:
    x = torch.full((2, 3, 64, 64), 0.5)
    y = add_gaussian_noise(x, torch.tensor([0.02, 0.05]), _gen())
    assert (y[0] - x[0]).std().item() == pytest.approx(0.02, rel=0.05)
    assert (y[1] - x[1]).std().item() == pytest.approx(0.05, rel=0.05)
    assert torch.equal(y, add_gaussian_noise(x, torch.tensor([0.02, 0.05]), _gen()))


def test_poisson_gaussian_noise_std() -> None:
    x = torch.full((1, 3, 64, 64), 0.5)
    y = add_poisson_gaussian_noise(x, peak=200.0, sigma=0.01, generator=_gen())
    assert (y - x).std().item() == pytest.approx((0.5 / 200 + 0.01**2) ** 0.5, rel=0.05)
    dark = add_poisson_gaussian_noise(torch.full_like(x, 0.1), 200.0, 0.0, _gen())
    assert (dark - 0.1).std() < (y - x).std()  # shot noise grows with brightness


def test_jpeg_changes_little_and_quantize8() -> None:
    x = _image(48, 40)
    y = jpeg(x, 95)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert psnr(y, x).item() > 30.0
    grey = jpeg(x[:, :1], torch.tensor([90]))
    assert grey.shape == (1, 1, 48, 40)
    q = quantize8(torch.rand(2, 3, 9, 9, generator=_gen()) * 1.2 - 0.1)
    assert 0 <= q.min() and q.max() <= 1
    torch.testing.assert_close(q * 255, (q * 255).round(), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- specs

VALID = [
    "gauss:sigma=1.2", "gauss:sigma=2.0", "defocus:radius=3", "motion:length=11", "shake:extent=11",
    "down:scale=2", "down:scale=4,up=bilinear", "mixed", "gauss:sigma=0.5..2.5+noise:sigma=0..0.01+jpeg:quality=85..100",
    "none", "identity", "gauss:sigma=1,sigma_y=3,angle=0..180", "defocus+pgnoise:peak=300,sigma=0.005", " Motion : length=5 ",
]
INVALID = [
    "", "blurr", "gauss:sigma=-1", "gauss:foo=1", "motion:length=abc", "down:scale=1", "jpeg",
    "gauss+noise:sigma=2..1", "down:up=nearest", "down:scale=2.5", "gauss:sigma=1,sigma=2", "gauss:", "gauss+",
    "gauss:angle=30", "mixed:sigma=1", "gauss+jpeg:quality=0", "gauss:sigma=nan", "gauss+blur",
]


@pytest.mark.parametrize("spec", VALID)
def test_valid_specs_parse_and_round_trip(spec: str) -> None:
    parsed = parse_spec(spec)
    assert isinstance(parsed, DegradeSpec)
    assert parse_spec(str(parsed)) == parsed


def test_canonical_spec_strings() -> None:
    assert str(parse_spec("gauss:sigma=2.0")) == "gauss:sigma=2"
    assert str(parse_spec("motion:length=11")) == "motion:length=11,angle=0..180"
    assert str(parse_spec("identity")) == "none"
    assert str(parse_spec("gauss+noise")) == "gauss:sigma=0.5..3+noise:sigma=0..0.01"


@pytest.mark.parametrize("spec", INVALID)
def test_invalid_specs_raise_one_line_user_errors(spec: str) -> None:
    with pytest.raises(UserError) as info:
        parse_spec(spec)
    message = str(info.value)
    assert "\n" not in message and repr(spec) in message and "gauss" in message


# --------------------------------------------------------------------------- pipeline


def test_same_seed_same_output_different_seed_different() -> None:
    x = torch.cat([_image(48, 40, s) for s in range(4)])
    a, da = degrade(x, "mixed", _gen(7))
    b, db = degrade(x, "mixed", _gen(7))
    c, dc = degrade(x, "mixed", _gen(8))
    assert torch.equal(a, b) and da == db
    assert not torch.equal(a, c) and da != dc
    assert a.shape == x.shape
    torch.testing.assert_close(a * 255, (a * 255).round(), atol=1e-4, rtol=0)
    json.dumps([d.to_json() for d in da])


@pytest.mark.parametrize("spec", ["gauss:sigma=1.2", "gauss:sigma=1..2,sigma_y=0.5..1", "defocus:radius=3",
                                  "motion:length=11", "shake:extent=11", "shake:extent=21"])
def test_recorded_kernel_reproduces_the_image(spec: str) -> None:
    x = torch.cat([_image(48, 40, 1), _image(48, 40, 2)])
    out, records = degrade(x, spec, _gen(3))
    for i, d in enumerate(records):
        assert isinstance(d, Degradation) and d.kernel.dtype == np.float32
        assert abs(float(d.kernel.sum()) - 1) < 1e-6
        again = quantize8(blur(x[i : i + 1], torch.from_numpy(d.kernel)))
        assert torch.equal(again[0], out[i])
    if spec.startswith("shake"):  # the recorded seed rebuilds the trajectory
        d = records[0]
        assert np.array_equal(shake_kernel(d.params["extent"], _gen(d.params["seed"])).numpy(), d.kernel)


def test_single_image_none_and_down() -> None:
    x = _image(45, 38)
    out, (d,) = degrade(x[0], "none", _gen())
    assert out.shape == x[0].shape and torch.equal(out, x[0]) and d.kernel.shape == (1, 1)
    out, (d,) = degrade(x, "down:scale=3,up=bilinear", _gen())
    assert torch.equal(out, quantize8(downup(x, 3, "bilinear")))
    assert d.params == {"scale": 3, "up": "bilinear"}
    assert np.array_equal(d.kernel, resolution_kernel(3, "bilinear").numpy())


def test_operators_are_applied_and_recorded() -> None:
    x = _image(32, 32).expand(2, -1, -1, -1)
    out, records = degrade(x, "none+noise:sigma=0.02+jpeg:quality=90..95", _gen())
    assert not torch.equal(out[0], out[1])  # independent noise per image
    assert records[0].params["noise.sigma"] == 0.02
    assert 90 <= records[0].params["jpeg.quality"] <= 95
    assert isinstance(records[0].params["jpeg.quality"], int)


def test_mixed_draws_every_family() -> None:
    x = torch.rand(1, 3, 24, 24, generator=_gen())
    kinds, noise, quality = set(), [], []
    g = _gen(11)
    for _ in range(60):
        _, (d,) = degrade(x, "mixed", g)
        kinds.add(d.family + ("-aniso" if "sigma_y" in d.params else ""))
        noise.append(d.params["noise.sigma"])
        quality.append(d.params["jpeg.quality"])
    assert kinds == {"gauss", "gauss-aniso", "defocus", "motion", "shake", "down"}
    assert max(noise) <= 0.01 and 85 <= min(quality) and max(quality) <= 100


def test_degradation_seed() -> None:
    s = degradation_seed(0, 1, 2)
    assert s == degradation_seed(0, 1, 2) and 0 <= s < 2**63
    assert len({s, degradation_seed(0, 2, 1), degradation_seed(1, 1, 2), degradation_seed(0, 1)}) == 4
    torch.Generator().manual_seed(s)
