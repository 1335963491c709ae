"""The kernel-conditioned restorer: the Wiener data step is exact, the lifted network starts as the blind one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meddeblur.degradation.pipeline import blur, disk_kernel, gaussian_kernel, motion_kernel
from meddeblur.metrics import psnr
from meddeblur.models import ModelConfig, build_model, lift_to_psf, load_model, save_weights, size_multiple
from meddeblur.models.wiener_step import WienerStep, noise_level, pad_taper
from meddeblur.psf.canvas import canvas_radius, kernel_canvas


def _smooth(n: int = 1, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Band-limited random images in [0.1, 0.9]: what a deconvolution can recover exactly."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return 0.1 + 0.8 * torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("kernel", [gaussian_kernel(1.5), disk_kernel(2.5), motion_kernel(7, 30)])
def test_the_canvas_otf_is_exact_convolution(kernel: torch.Tensor) -> None:
    # On a periodic image, multiplying by the canvas' OTF must equal direct circular convolution.
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    canvas = kernel_canvas(kernel, 32, 32).double()
    otf = torch.fft.rfft2(canvas.roll((-16, -16), dims=(-2, -1)))
    by_fft = torch.fft.irfft2(torch.fft.rfft2(x) * otf, s=(32, 32))
    k = kernel.double()
    r = k.shape[0] // 2
    direct = sum(k[i, j] * x.roll((i - r, j - r), dims=(-2, -1)) for i in range(k.shape[0]) for j in range(k.shape[1]))
    assert torch.allclose(by_fft, direct, atol=1e-12)


def test_the_wiener_step_inverts_a_noise_free_blur() -> None:
    sharp = _smooth(2)
    kernel = gaussian_kernel(1.6)
    blurred = blur(sharp, kernel)
    step = WienerStep()
    with torch.no_grad():
        step.log_nsr.fill_(math.log(1e-6))
        restored = step(blurred, kernel_canvas(kernel, 64, 64).expand(2, 64, 64))
    inner = (..., slice(8, -8), slice(8, -8))
    assert restored.shape == (2, 9, 64, 64)
    assert float(psnr(restored[:, :3][inner].clamp(0, 1), sharp[inner]).min()) > float(psnr(blurred[inner], sharp[inner]).max()) + 15


def test_a_delta_canvas_gives_the_input_back_at_any_strength() -> None:
    x = torch.rand(1, 3, 40, 48)
    with torch.no_grad():
        out = WienerStep()(x, kernel_canvas(np.ones((1, 1)), 40, 48)[None])
    # conj(K) Y / (|K|² + nsr) with K = 1 is Y / (1 + nsr): the strongest branch shrinks contrast, the weakest barely.
    assert torch.allclose(out[:, :3], x.mean() + (x - x.mean()) / (1 + 1e-3), atol=2e-4)


def test_pad_taper_keeps_the_image_and_fades_to_its_mean() -> None:
    x = torch.rand(2, 3, 20, 30)
    padded, (rows, cols) = pad_taper(x, 16)
    assert torch.allclose(padded[..., rows, cols], x, atol=1e-6)
    corner = padded[..., -1, -1]
    assert torch.allclose(corner, x.mean(dim=(-2, -1)), atol=1e-6)


def test_noise_level_tracks_added_noise() -> None:
    flat = torch.full((1, 3, 96, 96), 0.5)
    noisy = flat + 0.02 * torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    # Immerkær on the channel mean: the mean of 3 independent channels has σ / √3.
    assert float(noise_level(noisy)) == pytest.approx(0.02 / math.sqrt(3), rel=0.1)
    assert float(noise_level(flat)) == 0.0


def test_canvas_checks() -> None:
    canvas = kernel_canvas(motion_kernel(9, 0), 16, 20)
    assert float(canvas.sum()) == pytest.approx(1.0) and canvas_radius(canvas[None]) == 4
    with pytest.raises(ValueError, match="larger than the image"):
        kernel_canvas(gaussian_kernel(3.0), 16, 16)
    with pytest.raises(ValueError, match="odd"):
        kernel_canvas(np.ones((2, 2)), 16, 16)


def test_the_lifted_network_computes_exactly_the_blind_one(tmp_path) -> None:
    torch.manual_seed(0)
    config = ModelConfig(arch="nafnet", width=8, enc_blocks=(0, 1), middle_blocks=1, dec_blocks=(1, 0))
    blind = build_model(config).eval()
    for parameter in blind.parameters():  # make every block matter (fresh NAFNets are the identity)
        parameter.data.normal_(0, 0.1)
    state, lifted_config = lift_to_psf(blind.state_dict(), config)
    assert lifted_config.arch == "psf-nafnet" and size_multiple(lifted_config) == size_multiple(config)
    lifted = build_model(lifted_config).eval()
    lifted.load_state_dict(state)
    x = torch.rand(2, 3, 32, 32)
    canvas = kernel_canvas(gaussian_kernel(1.2), 32, 32).expand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(blind(x), lifted(torch.cat([x, canvas], dim=1)))
    path = save_weights(lifted, lifted_config, tmp_path / "psf.safetensors")
    network, loaded_config, _ = load_model(path)
    assert loaded_config == lifted_config and isinstance(network, type(lifted))
    with pytest.raises(ValueError, match="kernel canvas"):
        lifted(x)
