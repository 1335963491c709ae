"""The trained model shipped inside the package: it loads, it deblurs, the CLI and demo use it, its card is true."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.report import model_card
from meddeblur.cli import main
from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.degradation.pipeline import degrade
from meddeblur.degradation.spec import parse_spec
from meddeblur.demo import DEMO_BLURS
from meddeblur.inference.batch import deblur_array
from meddeblur.io.decode import read_image
from meddeblur.io.encode import write_image
from meddeblur.metrics import psnr_ssim_numpy
from meddeblur.models import DEFAULT_WEIGHTS, load_model, size_multiple, weights_id

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    return load_model(None)


def _blurred_sample(spec: str, seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    sharp = synthetic_dermoscopy(size, size, seed=seed)
    made, _ = degrade(torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1)))[None], parse_spec(spec), torch.Generator().manual_seed(seed))
    return made[0].numpy().transpose(1, 2, 0), sharp


def test_shipped_weights_are_in_the_package_and_small(shipped):
    _, config, path = shipped
    assert path == DEFAULT_WEIGHTS and path.suffix == ".safetensors"
    assert path.stat().st_size <= 20e6
    assert config.arch == "nafnet"
    assert json.loads(path.with_suffix(".json").read_text())["training"]["steps"] >= 1


@pytest.mark.parametrize("spec", ["gauss:sigma=1.5", "defocus:radius=3", "motion:length=9"])
def test_shipped_model_improves_psnr_on_a_generated_blurred_sample(shipped, spec):
    model, config, _ = shipped
    gains = []
    for seed in (1, 2):
        blurred, sharp = _blurred_sample(spec, seed)
        restored = deblur_array(model, blurred, multiple=size_multiple(config))
        gains.append(psnr_ssim_numpy(restored, sharp)[0] - psnr_ssim_numpy(blurred, sharp)[0])
    assert min(gains) > 0.2, gains  # measured at shipping: +0.5 to +2.5 dB on these samples


@pytest.mark.parametrize("height, width", [(256, 256), (1040, 1200)])  # the second is tiled (default tile 1024)
def test_shipped_model_leaves_a_sharp_image_alone(shipped, height, width):
    model, config, _ = shipped
    sharp = np.round(synthetic_dermoscopy(height, width, seed=3) * 255) / 255
    restored = deblur_array(model, sharp.astype(np.float32), multiple=size_multiple(config), tile=1024, overlap=128)
    assert psnr_ssim_numpy(restored, sharp)[0] >= 45  # issue 11: an already sharp image is not "sharpened"


@pytest.mark.parametrize("size", [256, 1024])
def test_shipped_model_is_never_worse_than_its_input(shipped, size):
    model, config, _ = shipped
    for spec in ("gauss:sigma=1.6", "defocus:radius=2.5", "shake:extent=9", "resample:scale=2,down=box,up=bicubic,lib=pil"):
        blurred, sharp = _blurred_sample(spec, seed=5, size=size)
        restored = deblur_array(model, blurred, multiple=size_multiple(config))
        gain = psnr_ssim_numpy(restored, sharp)[0] - psnr_ssim_numpy(blurred, sharp)[0]
        assert gain >= -0.05, (spec, size, gain)


def test_deblur_without_model_uses_the_shipped_weights(shipped, tmp_path):
    model, config, _ = shipped
    blurred, _ = _blurred_sample("gauss:sigma=1.5", seed=4, size=96)
    write_image(tmp_path / "photo.png", blurred)
    assert main(["deblur", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out")]) == 0
    written = read_image(tmp_path / "out" / "photo.png").rgb
    expected = np.round(deblur_array(model, read_image(tmp_path / "photo.png").rgb, multiple=size_multiple(config)) * 255) / 255
    assert np.abs(written - expected).max() <= 1 / 255 + 1e-6
    assert np.abs(written - blurred).max() > 2 / 255  # the model did something: not a pass-through


def test_demo_runs_offline_with_the_shipped_model(tmp_path, monkeypatch, capsys):
    def no_network(*args, **kwargs):
        raise AssertionError("the demo tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "side_by_side.png") in printed and str(out / "metrics.md") in printed
    figure = read_image(out / "side_by_side.png")
    assert figure.rgb.shape[0] > 600 and figure.rgb.shape[1] > 600  # three rows of blurred / deblurred / sharp
    table = (out / "metrics.md").read_text()
    assert weights_id(DEFAULT_WEIGHTS) in table
    gains = {line.split("|")[1].strip(): float(line.split("|")[-2]) for line in table.splitlines()
             if line.split("|")[1:2] and line.split("|")[1].strip() in DEMO_BLURS}
    assert set(gains) == set(DEMO_BLURS) and all(g > 0 for g in gains.values()), table


def test_model_card_numbers_match_the_committed_benchmark_results():
    text, data = model_card.build()  # renders every number from benchmarks/results/*.json and the shipped weights
    assert (ROOT / "MODEL_CARD.md").read_text() == text, "MODEL_CARD.md is stale: run python -m benchmarks.report.model_card"
    assert json.loads(model_card.CARD_JSON.read_text()) == json.loads(json.dumps(data)), "model_card.json is stale"
    for protocol in ("full", "half", "soft", "seed"):
        quality = json.loads((ROOT / "benchmarks" / "results" / f"quality_{protocol}.json").read_text())
        row = quality["rows"]["model: default"]
        assert row["model"]["id"] == weights_id(DEFAULT_WEIGHTS) == data["id"]
        for family, value in row["families"].items():  # the card's table cells, read back as numbers
            assert f"{value['psnr']:.2f} / {value['ssim']:.4f}" in text
            assert data["test_psnr"][protocol][family] == round(value["psnr"], 2)
    assert text.index("## Quality at full resolution") < text.index("## Quality at 256×256")  # full resolution leads


def test_model_card_check_fails_when_a_result_changes(tmp_path, monkeypatch):
    fake = tmp_path / "results"
    fake.mkdir()
    for path in model_card.RESULTS.iterdir():
        (fake / path.name).write_bytes(path.read_bytes())
    quality = json.loads((fake / "quality_full.json").read_text())
    quality["rows"]["model: default"]["families"]["mixed"]["psnr"] += 0.5
    (fake / "quality_full.json").write_text(json.dumps(quality))
    monkeypatch.setattr(model_card, "RESULTS", fake)
    assert model_card.main(["--check"]) == 1
