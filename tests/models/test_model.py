import math

import pytest
import torch

from meddeblur.inference.batch import deblur_tensor
from meddeblur.models import ModelConfig, build_model, count_parameters, load_model, save_weights
from meddeblur.models.attention_unet import AttentionUNet, he_normal_


def test_reference_parameter_counts():
    model = AttentionUNet(width=64)
    assert count_parameters(model) == (32_438_215, 11_776)


def test_width_is_a_parameter():
    trainable, running = count_parameters(AttentionUNet(width=32))
    assert trainable < 32_438_215 / 3 and running == 11_776 // 2


def test_keras_batchnorm_and_init_conventions():
    torch.manual_seed(0)
    model = AttentionUNet(width=16)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 and m.momentum == pytest.approx(0.01) for m in norms)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(torch.all(c.bias == 0) for c in convs)
    # He-normal: std sqrt(2 / fan_in) after truncation at ±2 std (of the untruncated normal).
    big = torch.empty(256, 512, 3, 3)
    he_normal_(big)
    expected = math.sqrt(2 / (512 * 9))
    assert big.std().item() == pytest.approx(expected, rel=0.02)
    assert big.abs().max().item() <= 2 * expected / 0.8796 + 1e-6
    head = model.head.weight
    limit = math.sqrt(6 / (head.shape[0] + head.shape[1]))
    assert head.abs().max().item() <= limit


@pytest.mark.parametrize("height,width", [(101, 77), (16, 16), (64, 48)])
def test_output_shape_equals_input_shape_at_any_size(height, width):
    model = AttentionUNet(width=4).eval()
    x = torch.rand(2, 3, height, width)
    y = deblur_tensor(model, x)
    assert y.shape == x.shape
    assert 0 <= y.min() and y.max() <= 1


def test_forward_is_sigmoid_bounded_and_differentiable():
    model = AttentionUNet(width=4)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = model(x)
    assert y.shape == x.shape and (y > 0).all() and (y < 1).all()
    y.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_weights_round_trip(tmp_path):
    config = ModelConfig(width=4)
    model = build_model(config).eval()
    path = save_weights(model, config, tmp_path / "w.safetensors")
    assert path.with_suffix(".json").is_file()
    loaded, loaded_config, _ = load_model(path)
    assert loaded_config == config
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))
    assert not list(tmp_path.glob(".*tmp*"))
