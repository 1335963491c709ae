"""The physics of blur: pad-taper, the OTF, circular convolution and its adjoint, the exact data step, canvases, noise.

The numpy and torch twins must agree; each operator is checked against an independent reference (``np.pad``,
``scipy.ndimage``, a dense circulant matrix), not against itself.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

import meddeblur.physics
from meddeblur.degradation.kernels import disk_kernel, gaussian_kernel, motion_kernel
from meddeblur.physics import (
    DataStep,
    canvas_otf,
    canvas_radius,
    check_kernel,
    convolve,
    convolve_np,
    correlate,
    correlate_np,
    fft_shape,
    kernel_canvas,
    margin_for,
    noise_level,
    noise_level_np,
    otf,
    otf_np,
    pad_taper,
    pad_taper_np,
)
from meddeblur.physics.boundary import mirror_index

KERNEL_SHAPES = [(3, 3), (5, 5), (4, 4), (5, 9), (2, 3), (1, 1)]  # odd, even, non-square, a delta


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _to_torch(image: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(H, W, C) numpy → (1, C, H, W) torch."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(dtype)


def _to_numpy(images: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) torch → (H, W, C) float64 numpy."""
    return images[0].double().numpy().transpose(1, 2, 0)


def _wrap_convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(H, W, C) circular convolution by scipy, the independent reference of the kernel convention."""
    return np.stack([ndi.convolve(image[..., c], kernel, mode="wrap") for c in range(image.shape[2])], axis=-1)


# --------------------------------------------------------------------------- the physics package stands alone


def test_physics_imports_nothing_else_of_meddeblur() -> None:
    package = Path(meddeblur.physics.__file__).parent
    outside = []
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            outside += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "meddeblur" and not n.startswith("meddeblur.physics")]
    assert outside == []


# --------------------------------------------------------------------------- boundary: pad-taper


@pytest.mark.parametrize("n", [1, 2, 3, 6, 7])
@pytest.mark.parametrize("before, after", [(0, 0), (2, 3), (5, 1), (16, 23), (40, 9)])
def test_mirror_index_is_numpys_reflect_padding(n: int, before: int, after: int) -> None:
    values = np.arange(n) * 10
    expected = np.full(n + before + after, values[0]) if n == 1 else np.pad(values, (before, after), mode="reflect")
    assert np.array_equal(values[mirror_index(n, before, after)], expected)


def test_margins_and_fft_shape() -> None:
    assert margin_for(1) == 16 and margin_for(5) == 16 and margin_for(7) == 21
    fh, fw = fft_shape(37, 50, (16, 21))
    assert fh >= 37 + 32 and fw >= 50 + 42
    assert (fh, fw) == (fft_shape(37, 50, 16)[0], fft_shape(50, 37, 21)[0])  # one number is both axes' margin
    with pytest.raises(ValueError, match="margin"):
        fft_shape(8, 8, (-1, 4))


@pytest.mark.parametrize("shape, margin", [((20, 30), 16), ((21, 33), 16), ((37, 50), (21, 27)), ((3, 2), 16), ((1, 5), (7, 2))])
def test_pad_taper_twins_agree(shape: tuple[int, int], margin: int | tuple[int, int]) -> None:
    image = _rng().random((*shape, 3))
    padded_np, crop_np = pad_taper_np(image, margin)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        padded, crop = pad_taper(_to_torch(image, dtype), margin)
        assert crop == crop_np and padded.dtype == dtype
        np.testing.assert_allclose(_to_numpy(padded), padded_np, atol=tol, rtol=0)


@pytest.mark.parametrize("shape, margin", [((20, 30), 16), ((37, 50), (21, 27)), ((3, 2), 16)])
def test_pad_taper_keeps_the_image_mirrors_next_to_it_and_fades_to_its_mean(shape: tuple[int, int],
                                                                            margin: int | tuple[int, int]) -> None:
    image = _rng(1).random((*shape, 3))
    my, mx = (margin, margin) if isinstance(margin, int) else margin
    padded, (rows, cols) = pad_taper_np(image, margin)
    assert padded.shape[:2] == fft_shape(*shape, margin) and (rows.start, cols.start) == (my, mx)
    np.testing.assert_allclose(padded[rows, cols], image, atol=1e-12)
    # The first third of each margin is the plain mirror (abc|ba), what the forward blur (physics.blur) sees by the border.
    near_y, near_x = my // 3, mx // 3
    mirror = np.pad(image, ((near_y, near_y), (near_x, near_x), (0, 0)), mode="reflect")
    np.testing.assert_allclose(padded[my - near_y : rows.stop + near_y, mx - near_x : cols.stop + near_x], mirror, atol=1e-12)
    # The far corner is the per-channel mean: the periodic extension wraps around smoothly.
    np.testing.assert_allclose(padded[-1, -1], image.mean(axis=(0, 1)), atol=1e-12)


def test_pad_taper_on_a_batch_fades_to_each_images_mean_and_is_differentiable() -> None:
    x = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(0), requires_grad=True)
    padded, (rows, cols) = pad_taper(x, 16)
    assert torch.allclose(padded[..., rows, cols], x, atol=1e-6)
    assert torch.allclose(padded[..., -1, -1], x.mean(dim=(-2, -1)), atol=1e-6)
    padded.sum().backward()
    assert x.grad is not None and bool((x.grad > 0).all())  # every pixel feeds the padding


def test_pad_taper_rejects_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        pad_taper_np(np.zeros((8, 8)), 4)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        pad_taper(torch.zeros(3, 8, 8), 4)


# --------------------------------------------------------------------------- operator: OTF, convolution, adjoint


@pytest.mark.parametrize("kernel_shape", KERNEL_SHAPES)
def test_otf_twins_agree(kernel_shape: tuple[int, int]) -> None:
    kernel = _rng(2).random(kernel_shape)
    want = otf_np(kernel, (24, 30))
    assert want.shape == (24, 16)
    np.testing.assert_allclose(otf(kernel, (24, 30))[0, 0].numpy(), want, atol=1e-12)
    np.testing.assert_allclose(otf(torch.from_numpy(kernel).float(), (24, 30))[0, 0].numpy(), want, atol=1e-6)
    batch = otf(torch.from_numpy(np.stack([kernel, kernel[::-1, ::-1].copy()])), (24, 30))
    assert batch.shape == (2, 1, 24, 16)
    np.testing.assert_allclose(batch[1, 0].numpy(), otf_np(kernel[::-1, ::-1], (24, 30)), atol=1e-12)


@pytest.mark.parametrize("kernel_shape", KERNEL_SHAPES)
def test_convolve_on_the_padded_plane_is_scipys_wrapped_convolution(kernel_shape: tuple[int, int]) -> None:
    image, kernel = _rng(3).random((18, 21, 2)), _rng(4).random(kernel_shape)
    got = convolve_np(image, otf_np(kernel, image.shape[:2]))
    np.testing.assert_allclose(got, _wrap_convolve(image, kernel / kernel.sum()), atol=1e-12)
    twin = convolve(_to_torch(image), otf(kernel, image.shape[:2]))
    np.testing.assert_allclose(_to_numpy(twin), got, atol=1e-12)


@pytest.mark.parametrize("kernel_shape", [(5, 9), (4, 4), (3, 3)])
def test_correlate_is_the_adjoint_of_convolve(kernel_shape: tuple[int, int]) -> None:
    x, y, kernel = _rng(5).random((16, 19, 3)), _rng(6).random((16, 19, 3)), _rng(7).random(kernel_shape)
    transfer = otf_np(kernel, x.shape[:2])
    # <A x, y> = <x, Aᵀ y>, and Aᵀ is not A for an asymmetric kernel (else the test would prove nothing).
    assert float(np.sum(convolve_np(x, transfer) * y)) == pytest.approx(float(np.sum(x * correlate_np(y, transfer))), rel=1e-12)
    assert not np.allclose(correlate_np(y, transfer), convolve_np(y, transfer))
    twin = correlate(_to_torch(y), otf(kernel, x.shape[:2]))
    np.testing.assert_allclose(_to_numpy(twin), correlate_np(y, transfer), atol=1e-12)
    twin32 = correlate(_to_torch(y, torch.float32), otf(torch.from_numpy(kernel).float(), x.shape[:2]))
    np.testing.assert_allclose(_to_numpy(twin32), correlate_np(y, transfer), atol=1e-6)


def test_check_kernel_normalises_and_rejects_what_is_no_kernel() -> None:
    assert check_kernel(np.full((2, 3), 2.0)).sum() == pytest.approx(1.0)
    for bad, message in ((np.ones(3), "2-D"), (np.zeros((0, 3)), "2-D"), (np.array([[1.0, -0.5]]), "non-negative"),
                         (np.array([[np.nan]]), "finite"), (np.zeros((2, 2)), "positive sum")):
        with pytest.raises(ValueError, match=message):
            check_kernel(bad)
    with pytest.raises(ValueError, match="larger than the plane"):
        otf_np(np.ones((9, 3)), (8, 8))
    with pytest.raises(ValueError, match="larger than the plane"):
        otf(np.ones((3, 9)), (8, 8))


# --------------------------------------------------------------------------- the exact data step


def _circulant(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The dense (H·W, H·W) matrix of circular convolution with ``kernel``, column by column (scipy, not physics)."""
    columns = []
    for j in range(shape[0] * shape[1]):
        basis = np.zeros(shape[0] * shape[1])
        basis[j] = 1.0
        columns.append(ndi.convolve(basis.reshape(shape), kernel / kernel.sum(), mode="wrap").ravel())
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("alpha", [0.3, "per image"])
def test_the_data_step_solves_the_normal_equations(alpha: float | str) -> None:
    shape, rng = (6, 7), _rng(8)
    kernels = [rng.random((3, 3)), rng.random((2, 4))]
    y, z = rng.random((2, 2, *shape)), rng.random((2, 2, *shape))
    alphas = [0.3, 0.3] if alpha == 0.3 else [0.05, 2.0]
    step = DataStep.prepare(torch.from_numpy(y), torch.cat([otf(k, shape) for k in kernels]))  # one kernel per image
    got = step(torch.from_numpy(z), 0.3 if alpha == 0.3 else torch.tensor(alphas, dtype=torch.float64)).numpy()
    for i, (kernel, a) in enumerate(zip(kernels, alphas)):
        matrix = _circulant(kernel, shape)
        normal = matrix.T @ matrix + a * np.eye(matrix.shape[0])
        for c in range(2):
            want = np.linalg.solve(normal, matrix.T @ y[i, c].ravel() + a * z[i, c].ravel())
            np.testing.assert_allclose(got[i, c].ravel(), want, atol=1e-10)


@pytest.mark.parametrize("alpha", [0.0, -1.0, torch.tensor([0.5, 0.0])])
def test_the_data_step_needs_a_positive_alpha(alpha: float | torch.Tensor) -> None:
    y = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    step = DataStep.prepare(y, otf(np.ones((3, 3)), (8, 8)))
    with pytest.raises(ValueError, match="alpha must be positive"):
        step(torch.zeros_like(y), alpha)


def test_the_data_step_checks_the_otf_fits() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        DataStep.prepare(torch.rand(1, 1, 8, 8), otf(np.ones((3, 3)), (8, 10)))


def test_a_delta_kernel_is_the_identity() -> None:
    x = torch.rand(2, 3, 9, 10, dtype=torch.float64)
    delta = otf(np.ones((1, 1)), (9, 10))
    assert torch.allclose(convolve(x, delta), x, atol=1e-12) and torch.allclose(correlate(x, delta), x, atol=1e-12)
    z = torch.rand_like(x)
    assert torch.allclose(DataStep.prepare(x, delta)(z, 0.25), (x + 0.25 * z) / 1.25, atol=1e-12)
    np.testing.assert_allclose(convolve_np(x[0].numpy().transpose(1, 2, 0), otf_np(np.ones((1, 1)), (9, 10))),
                               x[0].numpy().transpose(1, 2, 0), atol=1e-12)


# --------------------------------------------------------------------------- canvases


@pytest.mark.parametrize("kernel", [gaussian_kernel(1.5), disk_kernel(2.5), motion_kernel(7, 30)])
def test_the_canvas_otf_is_exact_convolution(kernel: torch.Tensor) -> None:
    # On a periodic image, multiplying by the canvas' OTF must equal direct circular convolution with the kernel.
    x = torch.rand(1, 1, 32, 30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    canvas = kernel_canvas(kernel, 32, 30).double()
    by_fft = convolve(x, canvas_otf(canvas[None], (32, 30)))
    k = kernel.double()
    r = k.shape[0] // 2
    direct = sum(k[i, j] * x.roll((i - r, j - r), dims=(-2, -1)) for i in range(k.shape[0]) for j in range(k.shape[1]))
    assert torch.allclose(by_fft, direct, atol=1e-12)


def test_the_canvas_otf_on_a_larger_plane_is_the_kernels_otf() -> None:
    kernel = motion_kernel(9, 20)
    canvas = torch.stack([kernel_canvas(kernel, 20, 24), kernel_canvas(kernel, 20, 24).flip(-1, -2)])
    got = canvas_otf(canvas, (45, 50))
    assert got.shape == (2, 1, 45, 26)
    np.testing.assert_allclose(got[0, 0].numpy(), otf_np(kernel.numpy(), (45, 50)), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        canvas_otf(canvas[0], (45, 50))


def test_canvas_checks() -> None:
    canvas = kernel_canvas(motion_kernel(9, 0), 16, 20)
    assert float(canvas.sum()) == pytest.approx(1.0) and canvas_radius(canvas[None]) == 4
    assert canvas[8, 10] > 0 and canvas[8, 10 - 4] > 0 and canvas[8, 10 + 5] == 0  # origin at (H // 2, W // 2)
    assert canvas_radius(torch.stack([kernel_canvas(np.ones((1, 1)), 16, 20), canvas])) == 4  # the widest of the batch
    with pytest.raises(ValueError, match="larger than the image"):
        kernel_canvas(gaussian_kernel(3.0), 16, 16)
    with pytest.raises(ValueError, match="odd"):
        kernel_canvas(np.ones((2, 2)), 16, 16)
    with pytest.raises(ValueError, match="all zero"):
        canvas_radius(torch.zeros(1, 8, 8))


# --------------------------------------------------------------------------- noise


def test_noise_level_tracks_added_noise_and_the_twins_agree() -> None:
    flat = torch.full((1, 3, 96, 96), 0.5)
    for sigma in (0.005, 0.02):
        noisy = flat + sigma * torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        # Immerkær on the channel mean: the mean of 3 independent channels has σ / √3.
        assert float(noise_level(noisy)) == pytest.approx(sigma / math.sqrt(3), rel=0.1)
        assert noise_level_np(_to_numpy(noisy)) == pytest.approx(float(noise_level(noisy)), abs=1e-6)
        assert noise_level_np(_to_numpy(noisy).mean(axis=2)) == pytest.approx(noise_level_np(_to_numpy(noisy)), abs=1e-12)
    assert float(noise_level(flat)) == 0.0 and noise_level_np(_to_numpy(flat)) == 0.0
    batch = torch.stack([flat[0], flat[0] + 0.02 * torch.randn(3, 96, 96)])
    levels = noise_level(batch.double())
    assert levels.shape == (2,) and float(levels[0]) == 0.0
    assert float(levels[1]) == pytest.approx(noise_level_np(_to_numpy(batch[1:])), abs=1e-9)
