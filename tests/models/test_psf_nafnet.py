"""The kernel-conditioned restorer: the Wiener data step is exact, the lifted network starts as the blind one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meddeblur.degradation.kernels import gaussian_kernel, motion_kernel
from meddeblur.metrics import psnr
from meddeblur.models import ModelConfig, build_model, lift_to_psf, load_model, save_weights, size_multiple
from meddeblur.models.wiener_step import WienerStep
from meddeblur.physics import blur, kernel_canvas
from meddeblur.restore.classical import wiener


def _smooth(n: int = 1, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Band-limited random images in [0.1, 0.9]: what a deconvolution can recover exactly."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return 0.1 + 0.8 * torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


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


def test_the_wiener_step_is_classical_wiener_on_the_same_pad_taper() -> None:
    # One boundary rule (meddeblur.physics.boundary): with the same strength the learned data step and the classical
    # Wiener restorer give the same image, borders included (a different padding would differ there by far more).
    x = _smooth(1, 48, seed=2)[..., :40]
    kernel = motion_kernel(7, 30)
    blurred = blur(x, kernel)
    step = WienerStep(branches=1)
    with torch.no_grad():
        step.log_nsr.fill_(math.log(1e-2))
        got = step(blurred, kernel_canvas(kernel, 48, 40)[None])[0].clamp(0, 1).numpy().transpose(1, 2, 0)
    want = wiener(blurred[0].numpy().transpose(1, 2, 0), kernel.numpy(), 1e-2)
    np.testing.assert_allclose(got, want, atol=2e-5)


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
