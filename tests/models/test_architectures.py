"""Every architecture: shapes, identity at initialisation, gradient flow, weights round trip, configs, FLOPs."""

import importlib
import json
from dataclasses import asdict

import pytest
import torch
from torch import nn

from meddeblur.errors import InvalidOption, UserError
from meddeblur.inference.batch import deblur_tensor
from meddeblur.models import (
    ARCHITECTURES,
    NAFNET_DEFAULTS,
    ModelConfig,
    build_model,
    count_flops,
    grow_model,
    grown_config,
    load_model,
    save_weights,
    size_multiple,
)

# Small but structurally complete configs, one per architecture (and a 2-level NAFNet: size multiple 4).
CONFIGS = {
    "attention-unet": ModelConfig(width=4),
    "attention-unet-residual": ModelConfig(arch="attention-unet-residual", width=4),
    "nafnet": ModelConfig(arch="nafnet", width=8),
    "nafnet-2-levels": ModelConfig(arch="nafnet", width=8, enc_blocks=(1, 2), middle_blocks=1, dec_blocks=(1, 0)),
}
RESIDUAL = ["attention-unet-residual", "nafnet", "nafnet-2-levels"]


def _perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter, so zero-initialised ones cannot make a comparison trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def test_every_listed_architecture_builds_with_its_defaults():
    assert ARCHITECTURES[0] == "attention-unet" and set(ARCHITECTURES) == {"attention-unet", "attention-unet-residual", "nafnet", "psf-nafnet"}
    for arch in ARCHITECTURES:
        config = ModelConfig(arch=arch)
        config.validate()
        assert isinstance(build_model(config), nn.Module)
    assert ModelConfig().width == 64 and ModelConfig(arch="nafnet").width == 16
    assert ModelConfig(arch="nafnet").enc_blocks == NAFNET_DEFAULTS["enc_blocks"]


@pytest.mark.parametrize("name", CONFIGS)
def test_output_shape_equals_input_shape(name):
    config = CONFIGS[name]
    multiple = size_multiple(config)
    model = _perturbed(build_model(config)).eval()
    with torch.no_grad():
        for height, width in [(multiple, multiple), (2 * multiple, 3 * multiple)]:
            assert model(torch.rand(2, 3, height, width)).shape == (2, 3, height, width)
    x = torch.rand(1, 3, 101, 77)
    y = deblur_tensor(model, x, multiple=multiple)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1


def test_size_multiple_is_two_to_the_number_of_downsamplings():
    assert size_multiple(ModelConfig()) == 16 and size_multiple(ModelConfig(arch="attention-unet-residual")) == 16
    assert size_multiple(CONFIGS["nafnet-2-levels"]) == 4
    assert size_multiple(ModelConfig(arch="nafnet", enc_blocks=(1, 1, 1), dec_blocks=(1, 1, 1))) == 8


@pytest.mark.parametrize("name", RESIDUAL)
@pytest.mark.parametrize("train_mode", [False, True])
def test_untrained_residual_models_return_their_input(name, train_mode):
    torch.manual_seed(0)
    model = build_model(CONFIGS[name]).train(train_mode)
    x = torch.rand(2, 3, 48, 32)
    with torch.no_grad():
        assert (model(x) - x).abs().max().item() <= 1e-6


def _dead_conv_biases(model: nn.Module) -> set[str]:
    """Biases of convs feeding a training-mode BatchNorm: it subtracts the batch mean, so their gradient is 0 by design."""
    dead = set()
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (name, first), (_, second) in zip(children, children[1:]):
                if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d) and first.bias is not None:
                    dead.add(f"{prefix}.{name}.bias")
    return dead


@pytest.mark.parametrize("name,steps", [("attention-unet", 0), ("attention-unet-residual", 1), ("nafnet", 2)])
def test_gradients_reach_every_parameter(name, steps):
    """Zero-initialised outputs delay learning by design: the zero head/ending conv blocks every other
    gradient until its first update; NAFNet's zero beta/gamma add one more step for the block internals."""
    torch.manual_seed(0)
    model = build_model(CONFIGS[name]).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    blurred, sharp = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    dead = _dead_conv_biases(model)
    for step in range(steps + 1):
        optimizer.zero_grad()
        nn.functional.l1_loss(model(blurred), sharp).backward()
        if step == 0 and name in RESIDUAL:
            learning = {n for n, p in model.named_parameters() if p.grad.abs().max() > 0} - dead
            assert learning == {n for n in learning if n.startswith(("head.", "ending."))} and learning
        if step < steps:
            optimizer.step()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name
        if parameter_name not in dead:
            assert parameter.grad.abs().max() > 0, f"{parameter_name} gets no gradient after {steps} step(s)"
    zero_scales = [p for n, p in model.named_parameters() if n.endswith(("beta", "gamma"))]
    assert all(p.grad.abs().max() > 0 for p in zero_scales)
    if name == "attention-unet":
        assert dead  # the check above is not vacuous: the reference has BN-fed conv biases


@pytest.mark.parametrize("config", [
    ModelConfig(width=4),
    ModelConfig(arch="attention-unet-residual", width=8),
    ModelConfig(arch="nafnet", width=4, enc_blocks=(1, 0, 2), middle_blocks=0, dec_blocks=(0, 1, 1)),
], ids=lambda c: c.arch)
def test_weights_round_trip_with_non_default_config(config, tmp_path):
    model = _perturbed(build_model(config)).eval()
    path = save_weights(model, config, tmp_path / "w.safetensors")
    assert json.loads(path.with_suffix(".json").read_text())["config"] == json.loads(json.dumps(asdict(config)))
    loaded, loaded_config, _ = load_model(path)
    assert loaded_config == config
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_config_json_round_trip_turns_lists_back_into_tuples():
    config = ModelConfig(arch="nafnet", width=12, enc_blocks=(2, 1), middle_blocks=3, dec_blocks=(1, 1))
    data = json.loads(json.dumps(asdict(config)))
    assert data["enc_blocks"] == [2, 1]
    again = ModelConfig.from_dict(data)
    assert again == config and isinstance(again.enc_blocks, tuple) and hash(again) == hash(config)


def test_configs_written_before_the_new_fields_still_load():
    assert ModelConfig.from_dict({"arch": "attention-unet", "width": 8, "in_channels": 3, "out_channels": 3}) == ModelConfig(width=8)
    assert ModelConfig.from_dict({"arch": "nafnet"}) == ModelConfig(arch="nafnet")


@pytest.mark.parametrize("data", [
    {"arch": "unet"},
    {"arch": ["nafnet"]},
    {"width": 0},
    {"width": True},
    {"arch": "nafnet", "width": "16"},
    {"arch": "attention-unet-residual", "in_channels": 1},
    {"arch": "nafnet", "out_channels": 1},
    {"arch": "attention-unet", "enc_blocks": [1, 1]},
    {"arch": "attention-unet-residual", "middle_blocks": 2},
    {"arch": "nafnet", "enc_blocks": [1, 2], "dec_blocks": [1]},
    {"arch": "nafnet", "enc_blocks": [], "dec_blocks": []},
    {"arch": "nafnet", "enc_blocks": [1, -1], "dec_blocks": [1, 1]},
    {"arch": "nafnet", "enc_blocks": [1, 1.5], "dec_blocks": [1, 1]},
    {"arch": "nafnet", "enc_blocks": [1, True], "dec_blocks": [1, 1]},
    {"arch": "nafnet", "enc_blocks": "11", "dec_blocks": "11"},
    {"arch": "nafnet", "enc_blocks": {"a": 1}},
    {"arch": "nafnet", "enc_blocks": [1] * 9, "dec_blocks": [1] * 9},
    {"arch": "nafnet", "middle_blocks": -1},
    {"arch": "nafnet", "middle_blocks": "2"},
    [1, 2],
])
def test_from_dict_rejects_configs_that_describe_no_network(data):
    with pytest.raises(ValueError):
        ModelConfig.from_dict(data)


def test_build_model_turns_a_bad_config_into_a_user_error():
    with pytest.raises(UserError, match="dec_blocks"):
        build_model(ModelConfig(arch="nafnet", enc_blocks=(1, 1), dec_blocks=(1,)))
    with pytest.raises(UserError, match="unknown architecture"):
        build_model(ModelConfig(arch="bogus"))


def test_a_grown_nafnet_computes_exactly_what_it_grew_from():
    small = CONFIGS["nafnet-2-levels"]
    trained = _perturbed(build_model(small), seed=3).eval()
    grown = grown_config(small, enc_blocks=(2, 2), middle_blocks=3, dec_blocks=(1, 1))
    assert (grown.width, grown.enc_blocks, grown.middle_blocks, grown.dec_blocks) == (8, (2, 2), 3, (1, 1))
    bigger = grow_model(trained.state_dict(), small, grown).eval()
    assert sum(p.numel() for p in bigger.parameters()) > sum(p.numel() for p in trained.parameters())
    image = torch.rand(2, 3, 16, 20)
    with torch.no_grad():
        assert not torch.allclose(trained(image), image, atol=1e-3)  # a real function, not the identity
        assert torch.allclose(bigger(image), trained(image), atol=1e-6)
    # The new blocks learn: their residual scales get gradients at once.
    bigger.train()
    (bigger(image) - image.flip(-1)).abs().mean().backward()
    assert bigger.encoders[0][1].beta.grad.abs().sum() > 0 and bigger.middle[2].gamma.grad.abs().sum() > 0
    assert grown_config(small) is small


@pytest.mark.parametrize("blocks, message", [
    ({"enc_blocks": (0, 2)}, "enc_blocks=0,2: the initial weights have 1,2; a network can only grow"),
    ({"middle_blocks": 0}, "middle_blocks=0: the initial weights have 1"),
    ({"dec_blocks": (1, 0, 0)}, "`enc_blocks` and `dec_blocks` need one entry per level"),
])
def test_a_network_can_only_grow(blocks, message):
    with pytest.raises(InvalidOption, match=message) as error:
        grown_config(CONFIGS["nafnet-2-levels"], **blocks)
    assert error.value.option == next(iter(blocks))
    with pytest.raises(InvalidOption, match="`enc_blocks` applies to nafnet weights only; these are attention-unet"):
        grown_config(CONFIGS["attention-unet"], enc_blocks=(1,))


def test_flop_counter_counts_two_per_multiply_add():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, 16, 16) == 2 * (8 * 3 * 9) * 16 * 16
    depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_flops(depthwise, 16, 16, channels=8) == 2 * (8 * 9) * 16 * 16


def test_reference_flops_and_nafnet_default_budget():
    reference = build_model(ModelConfig()).train()
    assert round(count_flops(reference) / 1e9, 1) == 117.8  # the figure, FLOPs = 2 × MACs
    assert reference.training  # mode restored
    assert count_flops(build_model(ModelConfig(arch="nafnet"))) <= 12e9


def test_flops_benchmark_runs(tmp_path):
    module = importlib.import_module("benchmarks.flops")
    assert module.main(["--only", "nafnet-w16-lite", "--sizes", "256x256", "--repeats", "1", "--quiet-wait", "0", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "flops.json").read_text())["rows"][0]
    assert row["config"] == json.loads(json.dumps(asdict(ModelConfig(arch="nafnet")))) and row["256x256"]["repeats"] == 1
    assert "| nafnet-w16-lite |" in (tmp_path / "flops.md").read_text()
    small = build_model(ModelConfig(arch="nafnet", width=4, enc_blocks=(0, 1), middle_blocks=0, dec_blocks=(0, 1))).eval()
    large = build_model(ModelConfig(arch="nafnet", width=32, enc_blocks=(2, 2), middle_blocks=2, dec_blocks=(2, 2))).eval()
    timing = module.paired(small, large, "256x256", 3, (1.0, 0))  # alternating passes: the larger network is the slower one
    assert timing["pairs"] == 3 and timing["former_median_s"] < timing["shipped_median_s"] and timing["ratio"] > 1
