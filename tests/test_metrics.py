"""PSNR/SSIM must equal TensorFlow's, checked against scikit-image's equivalent settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from meddeblur.metrics import PSNR, SSIM, gaussian_kernel1d, psnr, psnr_ssim_numpy, ssim


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, channel_axis=-1, data_range=1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )


def _to_torch(*imgs: np.ndarray) -> torch.Tensor:
    """Stack HxWxC images into an (N, C, H, W) float64 tensor."""
    return torch.from_numpy(np.stack([im.transpose(2, 0, 1) for im in imgs]).copy())


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1234)
    out = []
    # Independent noise, mild noise, non-square, and a structured (gradient + edges) pair.
    a = rng.random((32, 32, 3))
    out.append((a, rng.random((32, 32, 3))))
    out.append((a, np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1)))
    b = rng.random((37, 53, 3))
    out.append((b, np.clip(b * 0.8 + 0.1, 0, 1)))
    yy, xx = np.mgrid[0:40, 0:29] / 40.0
    s = np.stack([xx, yy, (xx + yy > 0.6).astype(float)], axis=-1)
    blurred = correlate(s, np.ones((3, 3, 1)) / 9.0, mode="nearest")
    out.append((s, blurred))
    return out


@pytest.mark.parametrize("idx", range(4))
def test_ssim_matches_skimage(idx: int) -> None:
    a, b = _pairs()[idx]
    got = ssim(_to_torch(a), _to_torch(b))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(_sk_ssim(a, b), abs=1e-4)


def test_ssim_float32_close_to_float64() -> None:
    a, b = _pairs()[1]
    got = ssim(_to_torch(a).float(), _to_torch(b).float())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_sk_ssim(a, b), abs=1e-4)


def test_ssim_equals_valid_window_definition() -> None:
    """Independent check of TF's definition: explicit 2-D window, VALID positions only."""
    rng = np.random.default_rng(7)
    a, b = rng.random((20, 23, 2)), rng.random((20, 23, 2))
    g = gaussian_kernel1d(11, 1.5, dtype=torch.float64).numpy()
    win = np.outer(g, g)
    c1, c2 = 0.01**2, 0.03**2
    per_channel = []
    for c in range(2):
        vals = []
        for i in range(20 - 10):
            for j in range(23 - 10):
                pa, pb = a[i:i + 11, j:j + 11, c], b[i:i + 11, j:j + 11, c]
                mx, my = (win * pa).sum(), (win * pb).sum()
                vx = (win * pa * pa).sum() - mx**2
                vy = (win * pb * pb).sum() - my**2
                cxy = (win * pa * pb).sum() - mx * my
                vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        per_channel.append(np.mean(vals))
    assert ssim(_to_torch(a), _to_torch(b)).item() == pytest.approx(np.mean(per_channel), abs=1e-10)


def test_batch_is_per_image() -> None:
    rng = np.random.default_rng(3)
    imgs_a = [rng.random((24, 30, 3)) for _ in range(4)]
    imgs_b = [np.clip(x + 0.1 * i * rng.standard_normal(x.shape), 0, 1) for i, x in enumerate(imgs_a, 1)]
    s = ssim(_to_torch(*imgs_a), _to_torch(*imgs_b))
    p = psnr(_to_torch(*imgs_a), _to_torch(*imgs_b))
    assert s.shape == p.shape == (4,)
    for k in range(4):
        assert s[k].item() == pytest.approx(_sk_ssim(imgs_a[k], imgs_b[k]), abs=1e-4)
        ref = peak_signal_noise_ratio(imgs_b[k], imgs_a[k], data_range=1)
        assert p[k].item() == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("idx", range(4))
def test_psnr_matches_skimage(idx: int) -> None:
    a, b = _pairs()[idx]
    got = psnr(_to_torch(a).float(), _to_torch(b).float())
    assert got.dtype == torch.float64
    # float32 inputs of float64 data differ by rounding only; compare on the same float32 values.
    a32, b32 = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    assert got.item() == pytest.approx(peak_signal_noise_ratio(a32, b32, data_range=1), abs=1e-6)


def test_psnr_ssim_numpy() -> None:
    a, b = _pairs()[2]
    p, s = psnr_ssim_numpy(a, b)
    assert p == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1), abs=1e-6)
    assert s == pytest.approx(_sk_ssim(a, b), abs=1e-4)
    p2, s2 = psnr_ssim_numpy(a[..., 0], b[..., 0])
    assert math.isfinite(p2) and 0 < s2 <= 1


def test_identical_images() -> None:
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()
    assert psnr_ssim_numpy(np.zeros((12, 12, 3)), np.zeros((12, 12, 3))) == (math.inf, 1.0)


def test_ssim_gradient_flows() -> None:
    torch.manual_seed(0)
    pred = torch.rand(2, 3, 32, 32, requires_grad=True)
    target = torch.rand(2, 3, 32, 32)
    ssim(pred, target).sum().backward()
    assert pred.grad is not None
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_modules_match_functions() -> None:
    x, y = torch.rand(2, 3, 16, 20), torch.rand(2, 3, 16, 20)
    assert torch.equal(SSIM()(x, y), ssim(x, y))
    assert torch.equal(PSNR()(x, y), psnr(x, y))


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 10, 32), torch.rand(1, 3, 10, 32))
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
    with pytest.raises(ValueError, match="N, C, H, W"):
        psnr(torch.rand(16, 16), torch.rand(16, 16))


def test_reference_scorer_equals_the_tf_exact_torch_metrics():
    # psnr_ssim_numpy and the benchmarks score with scipy; psnr()/ssim() (torch, float64) are the TF-exact definition.
    from meddeblur.metrics import ReferenceScorer, psnr_ssim_numpy

    rng = np.random.default_rng(2)
    target = rng.random((40, 53, 3)).astype(np.float32)
    score = ReferenceScorer(target)
    as_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x.astype(np.float64).transpose(2, 0, 1)))[None]  # noqa: E731
    for pred in (np.clip(target + 0.05 * rng.standard_normal(target.shape), 0, 1), rng.random(target.shape), target):
        pred = pred.astype(np.float32)
        want = float(psnr(as_tensor(pred), as_tensor(target))[0]), float(ssim(as_tensor(pred), as_tensor(target))[0])
        for got in (score(pred), psnr_ssim_numpy(pred, target)):
            assert got[0] == pytest.approx(want[0], rel=1e-12, abs=0) and got[1] == pytest.approx(want[1], rel=1e-12, abs=1e-15)
    grey = target[..., 0]
    assert psnr_ssim_numpy(grey, grey)[1] == 1.0  # (H, W) images too


# --------------------------------------------------------------------------- numpy and integer images, bad parameters


def _image_pair(dtype, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(seed)
    a = rng.integers(0, top + 1, (30, 34, 3)).astype(dtype)
    b = np.clip(a.astype(np.int64) + rng.integers(-top // 50, top // 50 + 1, a.shape), 0, top).astype(dtype)
    return a, b


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_images_score_as_the_same_images_in_floats(dtype) -> None:
    a, b = _image_pair(dtype)
    top = np.iinfo(dtype).max
    fa, fb = a / top, b / top  # float64 in [0, 1]
    want_psnr, want_ssim = float(psnr(_to_torch(fa), _to_torch(fb))[0]), float(ssim(_to_torch(fa), _to_torch(fb))[0])
    assert 30 < want_psnr < 60
    as_tensor = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]  # noqa: E731
    for got_psnr, got_ssim in ((psnr(a, b), ssim(a, b)), (psnr(fa, fb), ssim(fa, fb)),
                               (float(psnr(as_tensor(a), as_tensor(b))[0]), float(ssim(as_tensor(a), as_tensor(b))[0]))):
        assert got_psnr == pytest.approx(want_psnr, abs=1e-9) and got_ssim == pytest.approx(want_ssim, abs=1e-9)
    assert psnr(a, b, max_val=255.0) == pytest.approx(want_psnr, abs=1e-9)  # integers are scaled to max_val: same answer
    assert isinstance(psnr(a, b), float) and isinstance(ssim(a[..., 0], b[..., 0]), float)  # numpy in, float out


def test_a_single_chw_tensor_gives_a_0d_tensor() -> None:
    x, y = torch.rand(3, 20, 20), torch.rand(3, 20, 20)
    assert psnr(x, y).shape == () and ssim(x, y).shape == ()
    assert float(ssim(x, y)) == pytest.approx(float(ssim(x[None], y[None])[0]))


@pytest.mark.parametrize(("call", "words"), [
    (lambda x, y: ssim(x, y, sigma=0), "sigma=0: must be a finite number greater than 0"),
    (lambda x, y: ssim(x, y, sigma=float("nan")), "sigma=nan"),
    (lambda x, y: ssim(x, y, filter_size=0), "filter_size=0: must be a whole number greater than 0"),
    (lambda x, y: ssim(x, y, filter_size=2.5), "filter_size=2.5"),
    (lambda x, y: ssim(x, y, k2=-0.03), "k2=-0.03"),
    (lambda x, y: psnr(x, y, max_val=0), "max_val=0: must be a finite number greater than 0"),
    (lambda x, y: ssim(x, y, max_val=True), "max_val=True"),
    (lambda x, y: psnr(x.numpy(), y), "Accepted: two numpy"),
    (lambda x, y: psnr(x.int(), y.int()), "pred: dtype int32 is not supported"),
    (lambda x, y: psnr(x[0].permute(1, 2, 0).numpy() * 255, y[0].permute(1, 2, 0).numpy()), "pred: float values must lie in [0, 1]"),
    (lambda x, y: ssim(np.full((16, 16), np.nan), np.zeros((16, 16))), "pred: float values must be finite"),
    (lambda x, y: psnr(np.zeros((16, 16), np.int16), np.zeros((16, 16), np.int16)), "pred: dtype int16 is not supported"),
])
def test_bad_parameters_and_images_are_a_value_error_naming_them(call, words) -> None:
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError) as refusal:
        call(x, y)
    assert words in str(refusal.value)


def test_blur_score_takes_integers_tensors_and_alpha_and_refuses_the_rest() -> None:
    from meddeblur.evaluation.assess import blur_score

    a, _ = _image_pair(np.uint8)
    a = np.ascontiguousarray(np.repeat(np.repeat(a, 4, axis=0), 4, axis=1))  # some structure at the analysis size
    want = blur_score(a / 255.0)
    assert 0 < want < 1
    assert blur_score(a) == pytest.approx(want, abs=1e-6)
    assert blur_score((a.astype(np.uint16) * 257)) == pytest.approx(want, abs=1e-6)
    assert blur_score(np.dstack([a, np.full(a.shape[:2], 7, np.uint8)])) == pytest.approx(want, abs=1e-6)  # alpha ignored
    tensor = torch.from_numpy(a.transpose(2, 0, 1).copy())
    assert blur_score(tensor) == pytest.approx(want, abs=1e-6)
    batch = blur_score(torch.stack([tensor, tensor]).float() / 255)
    assert batch.shape == (2,) and batch[1].item() == pytest.approx(want, abs=1e-6)
    for image, words in ((a * 1.0, "float values must lie in [0, 1] (found 0..255)"), (np.full((32, 32), np.nan), "must be finite"),
                         (np.zeros((32, 32, 2)), "expected (H, W) or (H, W, C) with C in 1/3/4")):
        with pytest.raises(ValueError, match="^image: ") as refusal:
            blur_score(image)
        assert words in str(refusal.value)
    for side in (0, -5, 8.0, True):
        with pytest.raises(ValueError, match=f"^side={side!r}: must be a whole number of pixels, at least 16"):
            blur_score(a, side=side)


def test_the_fast_scorer_takes_and_refuses_what_psnr_does() -> None:
    a, b = _image_pair(np.uint8)
    assert psnr_ssim_numpy(a, b) == pytest.approx((psnr(a, b), ssim(a, b)), abs=1e-9)
    with pytest.raises(ValueError, match=r"^pred: float values must lie in \[0, 1\]"):
        psnr_ssim_numpy(a * 1.0, b / 255)
    with pytest.raises(ValueError, match="^target: float values must be finite"):
        psnr_ssim_numpy(a / 255, np.full(a.shape, np.nan))


def test_float_tensors_outside_0_1_are_refused_unless_max_val_gives_their_range() -> None:
    # The hostile-user case: a good pair in 0..255 scored with the default max_val read as -8 dB, silently.
    rng = torch.Generator().manual_seed(0)
    sharp = torch.rand(1, 3, 24, 24, generator=rng)
    noisy = (sharp + 0.01 * torch.randn(sharp.shape, generator=rng)).clamp(0, 1)
    for metric in (psnr, ssim, PSNR(), SSIM()):
        with pytest.raises(ValueError, match=r"^pred: float values must lie in \[0, 1\] \(found [\d.]+\.\.[\d.]+\) unless max_val") as refusal:
            metric(noisy * 255, sharp * 255)
        assert "pass max_val=255.0" in str(refusal.value) and "\n" not in str(refusal.value)
        with pytest.raises(ValueError, match=r"^target: float values must lie in \[0, 1\] \(found -0\.4\d*\.\."):
            metric(noisy, sharp - 0.5)
    assert float(psnr(noisy * 255, sharp * 255, max_val=255.0)[0]) == pytest.approx(float(psnr(noisy, sharp)[0]), abs=1e-4)
    assert float(ssim(noisy * 255, sharp * 255, max_val=255.0)[0]) == pytest.approx(float(ssim(noisy, sharp)[0]), abs=1e-4)
    assert float(PSNR(max_val=255.0)(noisy * 255, sharp * 255)[0]) == pytest.approx(float(psnr(noisy, sharp)[0]), abs=1e-4)


def test_float_rounding_and_nan_pass_the_range_check() -> None:
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 1.0 + 1e-7, -1e-7  # a blur's or a resize's float rounding
    assert torch.isfinite(psnr(x, x.clamp(0, 1))).all()
    assert torch.isnan(psnr(torch.full_like(x, float("nan")), x)).all()  # the NaN reaches whoever watches the value
    with pytest.raises(ValueError, match=r"found .*\.\.1\.001"):
        psnr(x.clamp(0, 1) * 1.001, x)
    with pytest.raises(ValueError, match=r"float values must lie in \[0, 1\] \(found 0\.\.inf\)"):
        ssim(torch.where(x > 0.5, float("inf"), 0.0), x)


def test_an_explicit_max_val_scores_raw_network_outputs_as_they_are() -> None:
    # The training loss scores outputs that stray outside [0, 1] before they are clamped.
    from meddeblur.losses import DeblurLoss, LossWeights

    target = torch.rand(1, 3, 16, 16)
    pred = (target * 1.2 - 0.1).requires_grad_()
    assert float(ssim(pred.detach(), target, max_val=1.0)[0]) < 1.0
    total, terms = DeblurLoss(LossWeights(ssim=0.85, l1=0.15, perceptual=0.0))(pred, target)
    total.backward()
    assert math.isfinite(terms["ssim"]) and pred.grad is not None
