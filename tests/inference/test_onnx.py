"""ONNX export and the onnx engine: parity with PyTorch, same tiling, metadata, refusals."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch

from meddeblur.cli import main
from meddeblur.errors import UserError
from meddeblur.inference.batch import deblur_array
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.inference.onnx_engine import OnnxModel, export_onnx
from meddeblur.io.decode import read_image
from meddeblur.io.encode import write_image
from meddeblur.io.ownership import read_provenance
from meddeblur.models import (
    ModelConfig,
    build_model,
    load_model,
    save_weights,
    size_multiple,
    weights_id,
)

# (height, width): square, odd both ways, and wider than tall with odd height.
SIZES = [(64, 64), (37, 53), (81, 100)]
TOLERANCE = 1e-4


def _random_weights(arch: str, path: Path) -> Path:
    """A width-8 network with every parameter random: an untrained NAFNet is exactly the identity,
    against which any export (even one dropping every block) would pass."""
    config = ModelConfig(arch=arch, width=8)
    torch.manual_seed(0)
    network = build_model(config)
    with torch.no_grad():
        for parameter in network.parameters():
            torch.nn.init.normal_(parameter, std=0.05)
    return save_weights(network, config, path)


@pytest.fixture(scope="module", params=["nafnet", "attention-unet"])
def exported(request, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    weights = _random_weights(request.param, folder / "m.safetensors")
    torch.set_num_threads(1)
    export_onnx(weights, folder / "m.onnx")
    return weights, folder / "m.onnx"


def test_parity_with_pytorch_at_three_sizes_and_tiled(exported, one_thread) -> None:
    weights, onnx = exported
    network, config, _ = load_model(weights)
    runner = OnnxModel(onnx)
    multiple = size_multiple(config)
    rng = np.random.default_rng(0)
    for height, width in SIZES:
        rgb = rng.random((height, width, 3), dtype=np.float32)
        want = deblur_array(network, rgb, multiple=multiple)
        got = deblur_array(runner, rgb, multiple=multiple)
        assert got.shape == want.shape == (height, width, 3)
        assert np.abs(got - want).max() <= TOLERANCE, (height, width)
        assert np.abs(want - rgb).max() > 0.05  # the network really does something
    # Tiled: the same tiles, weights and blending drive both engines.
    rgb = rng.random((81, 100, 3), dtype=np.float32)
    want = deblur_array(network, rgb, tile=48, overlap=16, multiple=multiple)
    got = deblur_array(runner, rgb, tile=48, overlap=16, multiple=multiple)
    assert np.abs(got - want).max() <= TOLERANCE


def test_metadata_names_the_weights(exported) -> None:
    weights, onnx = exported
    runner = OnnxModel(onnx)
    config = load_model(weights)[1]
    assert runner.weights_id == weights_id(weights)
    assert runner.size_multiple == size_multiple(config)
    assert runner.describe() == f"{config.arch} width 8"
    batch = torch.rand(2, 3, 32, 48)
    assert runner(batch).shape == (2, 3, 32, 48)  # batch, height and width are all dynamic


def test_cli_deblur_with_onnx_file_and_info(exported, tmp_path: Path, capsys, one_thread) -> None:
    weights, onnx = exported
    source = write_image(tmp_path / "in" / "x.png", np.random.default_rng(1).random((30, 41, 3)), bit_depth=16)

    assert main(["deblur", str(source), "-o", str(tmp_path / "onnx"), "--onnx", str(onnx)]) == 0
    assert main(["deblur", str(source), "-o", str(tmp_path / "torch"), "--model", str(weights)]) == 0

    by_onnx, by_torch = read_image(tmp_path / "onnx" / "x.png"), read_image(tmp_path / "torch" / "x.png")
    assert by_onnx.bit_depth == 16
    assert np.abs(by_onnx.rgb - by_torch.rgb).max() <= TOLERANCE + 1 / 65535
    record = read_provenance(tmp_path / "onnx" / "x.png")
    assert record["engine"] == "onnx" and record["model_id"] == weights_id(weights)
    assert read_provenance(tmp_path / "torch" / "x.png")["model_id"] == record["model_id"]
    capsys.readouterr()
    assert main(["info", str(onnx)]) == 0
    assert weights_id(weights) in capsys.readouterr().out


def test_engine_onnx_exports_on_the_fly(tmp_path: Path, one_thread) -> None:
    weights = _random_weights("attention-unet", tmp_path / "m.safetensors")
    deblurrer = Deblurrer.load(weights, engine="onnx", device="cpu", tile=0)
    runner, multiple, record = deblurrer._network, deblurrer.size_multiple, deblurrer.provenance
    network = load_model(weights)[0]
    rgb = np.random.default_rng(2).random((20, 33, 3), dtype=np.float32)
    assert np.abs(deblur_array(runner, rgb, multiple=multiple) - deblur_array(network, rgb, multiple=multiple)).max() <= TOLERANCE
    assert (record["engine"], record["model_id"]) == ("onnx", weights_id(weights))
    assert not list(tmp_path.glob("*.onnx"))  # the temporary export is gone


def _one_line_error(capfd, *words: str) -> None:
    err = capfd.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)


def test_bad_onnx_files_and_option_clashes(exported, tmp_path: Path, capfd) -> None:
    weights, onnx = exported
    source = write_image(tmp_path / "in" / "x.png", np.zeros((20, 20, 3)))
    out = tmp_path / "out"

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    assert main(["deblur", str(source), "-o", str(out), "--onnx", str(garbage)]) == 2
    _one_line_error(capfd, str(garbage), "not a loadable ONNX model")

    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    assert main(["deblur", str(source), "-o", str(out), "--onnx", str(truncated)]) == 2
    _one_line_error(capfd, str(truncated))

    import onnx
    from onnx import TensorProto, helper

    foreign = tmp_path / "foreign.onnx"  # a valid model from elsewhere: an Identity graph without meddeblur metadata
    image = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    result = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign", [image], [result])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(foreign))
    assert main(["deblur", str(source), "-o", str(out), "--onnx", str(foreign)]) == 2
    _one_line_error(capfd, str(foreign), "meddeblur export")

    assert main(["deblur", str(source), "-o", str(out), "--onnx", str(onnx), "--engine", "torch"]) == 2
    _one_line_error(capfd, "--engine onnx")
    assert main(["deblur", str(source), "-o", str(out), "--onnx", str(onnx), "--model", str(weights)]) == 2
    _one_line_error(capfd, "only one")
    assert main(["deblur", str(source), "-o", str(out), "--onnx", str(tmp_path / "missing.onnx")]) == 2
    _one_line_error(capfd, "missing.onnx", "no such file")
    assert not out.exists()


def test_export_refuses_an_impossible_opset(tmp_path: Path, capfd) -> None:
    weights = _random_weights("nafnet", tmp_path / "m.safetensors")
    with pytest.raises(UserError, match="opset=3"):
        export_onnx(weights, tmp_path / "m.onnx", opset=3)
    assert not (tmp_path / "m.onnx").exists()


def test_speed_benchmark_smoke(tmp_path: Path, one_thread) -> None:
    """benchmarks/onnx_speed.py runs end to end (tiny model, one small size, one pass) and writes both files."""
    import json

    module = importlib.import_module("benchmarks.onnx_speed")
    assert module.main(["--models", "nafnet:8", "--sizes", "40x24", "--repeats", "1", "--threads", "1", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "onnx_speed.json").read_text())["rows"]
    assert row["size"] == "40x24" and row["max_abs_diff"] <= TOLERANCE and row["onnx_ms_median"] > 0
    assert "| nafnet:8 (nafnet width 8) | 40x24 |" in (tmp_path / "onnx_speed.md").read_text()


def test_what_needs_a_torch_model_refuses_an_onnx_one_in_one_line(exported, tmp_path) -> None:
    from meddeblur.demo import run_demo
    from meddeblur.errors import UnsupportedFormat
    from meddeblur.inference.deblurrer import Deblurrer

    weights, onnx = exported
    assert Deblurrer.load(weights, device="cpu").torch_weights()[1] == weights
    with pytest.raises(UnsupportedFormat, match="ONNX model holds no configuration"):
        Deblurrer.load(onnx).torch_weights()
    with pytest.raises(UnsupportedFormat, match="ONNX model"):
        run_demo(tmp_path / "demo", model=str(onnx))
