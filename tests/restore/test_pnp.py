"""The plug-and-play restorer: its loop, schedule and refusals on toy problems; the shipped denoiser on real photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import meddeblur
from meddeblur.errors import CorruptFile, InvalidOption, NotFound
from meddeblur.models.denoiser import DENOISER_WEIGHTS, Denoiser, load_denoiser, save_denoiser
from meddeblur.physics import convolve, otf
from meddeblur.restore.pnp import PnPSettings, hqs, plug_and_play, schedule


def test_hqs_with_an_exact_data_fit_converges_to_the_true_image() -> None:
    # Noiseless circulant toy problem, a kernel whose OTF never vanishes, and no prior (the identity "denoiser"): HQS is
    # then the proximal-point iteration of ‖k ⊛ x − y‖², whose only fixed point is the true image.
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 3, 12, 10, generator=generator, dtype=torch.float64)
    kernel = np.array([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]])
    transfer = otf(kernel, (12, 10))
    observed = convolve(truth, transfer)
    iterations = 60
    sigmas, alphas = torch.full((2, iterations), 0.01, dtype=torch.float64), torch.full((2, iterations), 0.05, dtype=torch.float64)
    restored = hqs(observed, transfer, lambda x, sigma: x, sigmas, alphas)
    assert float((restored - truth).abs().max()) < 1e-6
    few = hqs(observed, transfer, lambda x, sigma: x, sigmas[:, :2], alphas[:, :2])
    assert float((few - truth).abs().max()) > 1e-3  # it is the iterations that converge, not one step


def test_each_iteration_denoises_at_a_falling_level_and_the_data_step_has_the_last_word() -> None:
    seen: list[float] = []

    def spy(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(float(sigma[0]))
        return torch.zeros_like(x)

    observed = torch.rand(1, 3, 20, 24, dtype=torch.float64)
    transfer = otf(np.ones((3, 3)), (20, 24))
    sigmas, alphas = schedule(torch.zeros(1, dtype=torch.float64), PnPSettings(iterations=5))
    out = hqs(observed, transfer, spy, sigmas, alphas)
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)
    # The prior said "zero" every time: the output is the data step's answer to it, argmin ‖k ⊛ x − y‖² + α‖x‖².
    spectrum = torch.fft.rfft2(observed) * transfer.conj() / (transfer.abs() ** 2 + alphas[0, -1])
    assert torch.allclose(out, torch.fft.irfft2(spectrum, s=(20, 24)))
    restored = plug_and_play(observed.float(), np.ones((3, 3)), spy, PnPSettings(iterations=5))
    assert restored.shape == observed.shape and len(seen) == 10


def test_the_schedule_falls_to_the_noise_level_with_a_floor() -> None:
    settings = PnPSettings(iterations=8, sigma_start=49 / 255, noise_floor=1 / 255, weight=0.23)
    sigmas, alphas = schedule(torch.tensor([0.0, 5 / 255]), settings)
    assert sigmas[:, 0] == pytest.approx(49 / 255) and sigmas[0, -1] == pytest.approx(1 / 255) and sigmas[1, -1] == pytest.approx(5 / 255)
    assert torch.all(sigmas[:, 1:] < sigmas[:, :-1]) and torch.all(alphas[:, 1:] > alphas[:, :-1])
    assert alphas[:, -1] == pytest.approx(0.23)  # the last data step: weight · σₙ² / σₙ²


@pytest.mark.parametrize("bad", [{"iterations": 0}, {"iterations": 2.5}, {"noise_floor": 0.0}, {"weight": float("nan")}, {"sigma_start": -1}])
def test_bad_settings_are_refused(bad: dict) -> None:
    with pytest.raises(InvalidOption):
        PnPSettings(**bad)


def test_the_denoiser_starts_as_the_identity_and_round_trips_through_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Denoiser((8, 16), 1).eval()
    x = torch.rand(2, 3, 16, 24)
    assert torch.equal(model(x, 0.1), x)
    torch.nn.init.normal_(model.tail.weight, std=0.1)
    path = save_denoiser(model, tmp_path / "d.safetensors")
    assert torch.equal(load_denoiser(path)(x, 0.05), model(x, 0.05))
    assert not torch.equal(model(x, 0.05), model(x, 0.15))  # it reads the noise level
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.rand(1, 3, 18, 24), 0.1)
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    with pytest.raises(CorruptFile):
        load_denoiser(tmp_path / "junk.safetensors")
    with pytest.raises(NotFound):
        load_denoiser(tmp_path / "missing.safetensors")


def test_a_delta_psf_gives_the_input_back_bit_for_bit() -> None:
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    assert np.array_equal(meddeblur.Deblurrer.load()(image, psf="none", method="pnp"), image)


def test_the_shipped_denoiser_is_small_and_removes_noise() -> None:
    assert DENOISER_WEIGHTS.stat().st_size <= 20e6
    from meddeblur.data.synthetic import synthetic_dermoscopy

    sharp = torch.from_numpy(synthetic_dermoscopy(64, 64, seed=1).transpose(2, 0, 1))[None]
    noisy = sharp + 15 / 255 * torch.randn(sharp.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        denoised = load_denoiser()(noisy, 15 / 255)
    assert float(((denoised - sharp) ** 2).mean()) < 0.25 * float(((noisy - sharp) ** 2).mean())


def test_pnp_is_tiled_with_the_same_result_inside_and_its_record_names_the_denoiser() -> None:
    from meddeblur.data.synthetic import synthetic_dermoscopy
    from meddeblur.metrics import psnr_ssim_numpy

    image = synthetic_dermoscopy(96, 112, seed=2).astype(np.float32)
    whole = meddeblur.Deblurrer.load(tile=0).with_psf("gauss:sigma=1.2", method="pnp")
    tiled = meddeblur.Deblurrer.load(tile=64, overlap=16).with_psf("gauss:sigma=1.2", method="pnp")
    restored = tiled(image)
    assert restored.shape == image.shape and psnr_ssim_numpy(restored, whole(image))[0] > 35  # tiles differ only near their seams
    record = whole.provenance
    assert record["parameters"]["method"] == "pnp" and record["parameters"]["iterations"] == 8
    from meddeblur.models import weights_id

    assert record["model_id"] == weights_id(DENOISER_WEIGHTS)
    assert whole.with_psf("gauss:sigma=1.2", method="pnp", iterations=4).provenance["parameters"]["iterations"] == 4
    with pytest.raises(InvalidOption, match="iterations"):
        whole.with_psf("gauss:sigma=1.2", method="pnp", iterations=0)
    with pytest.raises(InvalidOption, match="method='pnp'"):
        whole.with_psf("gauss:sigma=1.2", method="pnp", nsr=0.1)


def test_cli_folder_run_with_workers_restores_with_a_calibrated_psf_file(run_cli, tmp_path: Path) -> None:
    from PIL import Image

    from meddeblur.io.ownership import read_provenance
    from meddeblur.psf import load_psf

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray((np.random.default_rng(i).random((40, 48, 3)) * 255).astype(np.uint8)).save(photos / f"p{i}.png")
    calibrated = load_psf("gauss:sigma=1.2").save_json(tmp_path / "device.psf.json")
    done = run_cli("deblur", photos, "-o", tmp_path / "out", "--psf", calibrated, "--method", "pnp", "--workers", "2", timeout=300)
    assert done.returncode == 0, done.stderr
    for i in range(2):
        record = read_provenance(tmp_path / "out" / f"p{i}.png")
        assert record["parameters"]["method"] == "pnp" and record["parameters"]["psf"]["digest"] == load_psf(calibrated).digest
