"""Restoring a known blur: ``Deblurrer(image, psf=...)``, ``with_psf``, ``deblur --psf`` and their refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import meddeblur
from meddeblur.data.sampling import ScaledCrops, zoom_kernel
from meddeblur.degradation.spec import parse_spec
from meddeblur.errors import InvalidOption
from meddeblur.io.ownership import read_provenance
from meddeblur.models import ModelConfig, build_model, lift_to_psf, save_weights


@pytest.fixture(scope="module")
def psf_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small psf-nafnet lifted from a random blind NAFNet, saved like a trained one."""
    torch.manual_seed(0)
    config = ModelConfig(arch="nafnet", width=8, enc_blocks=(0, 1), middle_blocks=1, dec_blocks=(0, 1))
    state, lifted = lift_to_psf(build_model(config).state_dict(), config)
    network = build_model(lifted)
    network.load_state_dict(state)
    return save_weights(network, lifted, tmp_path_factory.mktemp("psf") / "psf.safetensors")


def _image(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3)).astype(np.float32)


def test_a_delta_psf_gives_the_input_back_bit_for_bit(psf_weights: Path) -> None:
    deblurrer = meddeblur.Deblurrer.load(psf_weights)
    image = (_image() * 255).astype(np.uint8)
    for method in ("network", "wiener", "rl"):
        assert np.array_equal(deblurrer(image, psf="none", method=method), image)
    assert "unchanged" in deblurrer.with_psf(np.ones((1, 1))).provenance["parameters"]


def test_the_psf_goes_into_the_provenance(psf_weights: Path) -> None:
    bound = meddeblur.Deblurrer.load(psf_weights).with_psf("defocus:radius=2")
    parameters = bound.provenance["parameters"]
    assert parameters["method"] == "network" and parameters["psf"]["source"] == "defocus:radius=2"
    assert parameters["psf"]["digest"] == meddeblur.psf.load_psf("defocus:radius=2").digest
    assert bound.model_id == meddeblur.Deblurrer.load(psf_weights).model_id and bound.psf is not None
    classical = meddeblur.Deblurrer.load().with_psf("defocus:radius=2", method="rl")
    assert classical.provenance["parameters"]["iterations"] == 30 and "model_id" not in classical.provenance


def test_every_image_type_goes_through_the_known_blur_path(psf_weights: Path) -> None:
    deblurrer = meddeblur.Deblurrer.load(psf_weights, tile=32, overlap=8)
    grey16 = (np.random.default_rng(1).random((40, 70)) * 65535).astype(np.uint16)
    assert deblurrer(grey16, psf="gauss:sigma=1").dtype == np.uint16
    tensor = torch.rand(2, 4, 40, 40)
    out = deblurrer(tensor, psf="motion:length=5,angle=10")
    assert out.shape == tensor.shape and torch.equal(out[:, 3], tensor[:, 3])  # alpha passes through
    assert meddeblur.deblur(_image(), model=psf_weights, psf=np.ones((3, 3))).shape == (48, 64, 3)


def test_classical_methods_sharpen_a_known_blur() -> None:
    from meddeblur.degradation.kernels import gaussian_kernel
    from meddeblur.metrics import psnr
    from meddeblur.physics import blur

    sharp = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0)), size=(96, 128),
                                            mode="bicubic", align_corners=False).clamp(0, 1)
    blurred = blur(sharp, gaussian_kernel(1.6)).clamp(0, 1)
    image = blurred[0].permute(1, 2, 0).numpy()
    for method in ("wiener", "rl"):
        restored = meddeblur.Deblurrer.load()(image, psf="gauss:sigma=1.6", method=method)
        gain = psnr(torch.from_numpy(restored).permute(2, 0, 1)[None], sharp) - psnr(blurred, sharp)
        assert float(gain) > 3, method


def test_refusals_are_one_line_and_name_the_fix(psf_weights: Path, tiny_weights: Path) -> None:
    image = _image()
    with pytest.raises(InvalidOption, match="restores a known blur"):
        meddeblur.Deblurrer.load(psf_weights)(image)
    with pytest.raises(InvalidOption, match="cannot use a PSF"):
        meddeblur.Deblurrer.load(tiny_weights)(image, psf="gauss:sigma=1")
    with pytest.raises(InvalidOption, match="give `psf` too"):
        meddeblur.Deblurrer.load()(image, method="rl")
    with pytest.raises(InvalidOption, match="method="):
        meddeblur.Deblurrer.load()(image, psf="gauss:sigma=1", method="magic")
    with pytest.raises(InvalidOption, match="larger than the tile"):
        meddeblur.Deblurrer.load(psf_weights)(image[:20, :20], psf="gauss:sigma=5")


def test_zoomed_kernels_stay_normalised_and_scale_their_spread() -> None:
    kernel = meddeblur.psf.load_psf("gauss:sigma=2").kernel.astype(np.float32)

    def spread(k: np.ndarray) -> float:
        r = k.shape[0] // 2
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        return float(np.sqrt((k * (xx**2 + yy**2)).sum()))

    assert np.allclose(zoom_kernel(kernel, 1.0), kernel, atol=1e-6)
    wider = zoom_kernel(kernel, 1.25)
    assert wider.sum() == pytest.approx(1.0, abs=1e-5) and wider.shape[0] % 2 == 1
    assert spread(wider) / spread(kernel) == pytest.approx(1.25, rel=0.05)


def test_psf_training_crops_carry_their_true_kernel(tmp_path: Path) -> None:
    from meddeblur.data.pairs import sharp_only

    for i in range(2):
        Image.fromarray((_image(80, 96, i) * 255).astype(np.uint8)).save(tmp_path / f"s{i}.png")
    pairs = sharp_only(tmp_path)
    crops = ScaledCrops(pairs, 32, (1.0, 2.0), parse_spec("gauss:sigma=1.5"), seed=3, samples=4, psf=True)
    stacked, target = crops[0]
    assert stacked.shape == (4, 32, 32) and target.shape == (3, 32, 32)
    expected = meddeblur.physics.kernel_canvas(meddeblur.psf.load_psf("gauss:sigma=1.5").kernel, 32, 32)
    assert torch.allclose(stacked[3], expected, atol=1e-6)
    plain = ScaledCrops(pairs, 32, (1.0, 2.0), parse_spec("gauss:sigma=1.5"), seed=3, samples=4)
    assert torch.equal(plain[0][0], stacked[:3])
    fixed = ScaledCrops(pairs, 32, (1.0, 1.0), parse_spec("none"), fixed=True, psf=True)
    assert float(fixed[0][0][3].max()) == 1.0  # an un-blurred sample is told a delta


def test_cli_deblur_with_a_psf(run_cli, tmp_path: Path) -> None:
    Image.fromarray((_image() * 255).astype(np.uint8)).save(tmp_path / "a.png")
    done = run_cli("deblur", tmp_path / "a.png", "-o", tmp_path / "out", "--psf", "gauss:sigma=1.2", "--method", "wiener")
    assert done.returncode == 0, done.stderr
    record = read_provenance(tmp_path / "out" / "a.png")
    assert record["parameters"]["psf"]["source"] == "gauss:sigma=1.2" and record["parameters"]["method"] == "wiener"
    failed = run_cli("deblur", tmp_path / "a.png", "-o", tmp_path / "out2", "--psf", "gauss:sigma=1", "--engine", "onnx")
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "ONNX engine cannot restore with a PSF" in failed.stderr and not (tmp_path / "out2").exists()


@pytest.mark.parametrize("args, needle", [(("--method", "rl"), "give --psf too"), (("--psf", "gauss:sigma=0.5..1"), "one value")])
def test_cli_psf_refusals_in_process(capsys, tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    from meddeblur.cli import main

    Image.fromarray((_image() * 255).astype(np.uint8)).save(tmp_path / "a.png")
    assert main(["deblur", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), *args]) == 2
    error = capsys.readouterr().err
    assert needle in error and len(error.strip().splitlines()) == 1, error
