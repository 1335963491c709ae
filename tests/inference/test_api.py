"""The public Python API: meddeblur.Deblurrer / meddeblur.deblur, its input contract, and the doctests."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import meddeblur
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.inference.batch import deblur_array


@pytest.fixture(scope="module")
def deblurrer():
    return meddeblur.Deblurrer.load(device="cpu")


@pytest.fixture(scope="module")
def rgb():
    return synthetic_dermoscopy(48, 56, seed=4)


def test_public_names_are_exported():
    assert set(meddeblur.__all__) >= {"Deblurrer", "deblur", "read_image", "write_image", "degrade", "blur_score", "psnr", "ssim"}
    for name in meddeblur.__all__:
        assert getattr(meddeblur, name) is not None
    with pytest.raises(AttributeError):
        meddeblur.no_such_name  # noqa: B018


def test_import_is_light():
    code = "import sys, meddeblur; print(meddeblur.__version__, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [meddeblur.__version__, "False"]


def test_float_rgb_is_exactly_the_network_output(deblurrer, rgb):
    expected = deblur_array(deblurrer._network, rgb, multiple=deblurrer.size_multiple)
    assert np.array_equal(deblurrer(rgb), expected)


def test_integer_images_keep_their_dtype_and_scale(deblurrer, rgb):
    for dtype, scale in ((np.uint8, 255), (np.uint16, 65535)):
        image = np.round(rgb * scale).astype(dtype)
        out = deblurrer(image)
        assert out.dtype == dtype and out.shape == image.shape
        expected = np.round(deblurrer(image.astype(np.float32) / scale) * scale)
        assert np.abs(out.astype(np.float64) - expected).max() <= 1


def test_grey_and_alpha(deblurrer, rgb):
    grey = rgb.mean(axis=2)
    out = deblurrer(grey)
    assert out.shape == grey.shape
    assert np.allclose(out, deblurrer(np.repeat(grey[..., None], 3, axis=2)).mean(axis=2), atol=1e-6)
    assert deblurrer(grey[..., None]).shape == (48, 56, 1)
    alpha = np.linspace(0, 1, 48 * 56, dtype=np.float32).reshape(48, 56, 1)
    rgba = np.concatenate([rgb, alpha], axis=2)
    out = deblurrer(rgba)
    assert np.array_equal(out[..., 3:], alpha) and np.array_equal(out[..., :3], deblurrer(rgb))


def test_torch_tensors_single_and_batched(deblurrer, rgb):
    single = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    out = deblurrer(single)
    assert isinstance(out, torch.Tensor) and out.shape == single.shape and out.dtype == torch.float32
    assert np.allclose(out.numpy().transpose(1, 2, 0), deblurrer(rgb), atol=1e-6)
    batch = torch.stack([single, single.flip(-1)]).double()
    out = deblurrer(batch)
    assert out.dtype == torch.float64 and out.shape == batch.shape
    assert torch.allclose(out[1], deblurrer(single.flip(-1)).double(), atol=1e-6)


def test_large_images_are_tiled_like_the_cli(rgb):
    tiled = meddeblur.Deblurrer.load(device="cpu", tile=32, overlap=8)
    image = synthetic_dermoscopy(70, 90, seed=1)
    expected = deblur_array(tiled._network, image, tile=32, overlap=8, multiple=tiled.size_multiple)
    assert np.array_equal(tiled(image), expected)


@pytest.mark.parametrize("image, words", [
    (np.zeros((8, 8, 3), np.float32), "at least 16"),
    (np.zeros((40, 50, 2), np.float32), "C in 1/3/4"),
    (np.full((40, 50, 3), 2.0), "[0, 1]"),
    (np.full((40, 50, 3), np.nan), "[0, 1]"),
    (np.zeros((40, 50, 3), np.int32), "dtype int32"),
    (torch.zeros(40, 50, dtype=torch.float32), "(C, H, W)"),
    (torch.zeros(3, 40, 50, dtype=torch.uint8), "float"),
    ("photo.jpg", "not a numpy array"),
])
def test_bad_images_are_a_value_error_naming_what_was_given(deblurrer, image, words):
    with pytest.raises(ValueError) as error:
        deblurrer(image)
    assert words in str(error.value) and "Accepted" in str(error.value)


def test_a_tensor_that_requires_gradients_is_refused_not_silently_detached(deblurrer):
    image = torch.full((3, 40, 48), 0.5, requires_grad=True)
    with pytest.raises(ValueError, match=r"image: requires gradients.*image.detach\(\).*load_model\(\) returns it as an nn.Module"):
        deblurrer(image)
    assert deblurrer(image.detach()).shape == (3, 40, 48)


def test_the_documented_differentiable_path_runs_as_written():
    """docs/python.md points a PyTorch user whom the Deblurrer refuses to models.load_model(): its example, as written."""
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "python.md").read_text()
    (example,) = [block for block in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "load_model" in block]
    blurred = torch.full((1, 3, 64, 64), 0.5, requires_grad=True)
    names: dict = {"blurred": blurred}
    exec(example, names)  # the documentation's own example
    assert names["restored"].shape == blurred.shape and names["restored"].requires_grad
    names["restored"].mean().backward()
    assert blurred.grad is not None and float(blurred.grad.abs().sum()) > 0
    assert 64 % meddeblur.models.size_multiple(names["config"]) == 0


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="engine"):
        meddeblur.Deblurrer.load(engine="tensorrt")
    with pytest.raises(ValueError, match="overlap"):
        meddeblur.Deblurrer.load(tile=64, overlap=40)


def _modules_with_examples() -> list[str]:
    root = Path(meddeblur.__file__).parent
    return sorted(".".join(p.relative_to(root.parent).with_suffix("").parts) for p in root.rglob("*.py") if ">>>" in p.read_text("utf-8"))


def test_every_module_with_examples_is_doctested():
    # The list below is found, not written: a new example cannot be left out of the suite.
    assert {"meddeblur.inference.deblurrer", "meddeblur.errors", "meddeblur.cli.parser"} <= set(_modules_with_examples())


@pytest.mark.parametrize("module", _modules_with_examples())
def test_doctests(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
