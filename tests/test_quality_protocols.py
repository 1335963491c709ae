"""benchmarks.quality protocols (full, half, seed, soft) on tiny generated images, and its classical cache."""

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meddeblur.degradation.spec import parse_spec
from meddeblur.evaluation.classical import tune
from meddeblur.models import ModelConfig, build_model, save_weights
from meddeblur.restore.classical import richardson_lucy, richardson_lucy_path


def _quality():
    return importlib.import_module("benchmarks.quality")


@pytest.fixture(scope="module")
def tiny_isic(tmp_path_factory) -> Path:
    """20 smooth random 64×96 JPEGs in DIR/images: a 14/4/2 split."""
    root = tmp_path_factory.mktemp("isic")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        coarse = rng.random((8, 12, 3))
        img = np.kron(coarse, np.ones((8, 8, 1)))  # blocks: edges for the blurs to soften
        Image.fromarray((img * 255).astype(np.uint8)).save(root / "images" / f"img_{i:02d}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    save_weights(build_model(ModelConfig(width=4)), ModelConfig(width=4), run / "best.safetensors")
    return run


def _main(quality, tiny_isic, tmp_path, *args):
    out = tmp_path / "results"
    argv = ["--isic", str(tiny_isic), "--split", str(tmp_path / "split.json"), "--out", str(out), *args]
    assert quality.main(argv) == 0
    return out


def test_protocol_rows(tiny_isic, tiny_run, tmp_path):
    quality = _quality()
    for protocol, families, methods in [("full", ["gauss σ=1.6", "none"], ["wiener", "rl"]),
                                        ("half", ["shake 9", "none"], ["wiener", "rl"]),
                                        ("soft", ["defocus r=2.5", "none"], ["wiener", "rl"]),
                                        ("seed", ["gauss σ=1.2", "sharp (none)"], ["wiener", "unsharp_mask"])]:
        out = _main(quality, tiny_isic, tmp_path, "--protocol", protocol, "--model", str(tiny_run),
                    "--families", *families, "--methods", *methods)
        result = json.loads((out / f"quality_{protocol}.json").read_text())
        labels = [quality.METHODS[m].label for m in methods]
        assert list(result["rows"]) == ["input", *labels, "model: tiny"], protocol
        assert result["test_images"] == 2 and list(result["families"]) == families
        none = families[-1]
        # an un-blurred input equals an 8-bit target (full, soft: ∞ dB, the worst family then skips `none`); resized ones are float
        assert result["rows"]["input"]["families"][none]["psnr"] == (np.inf if protocol != "seed" else pytest.approx(58, abs=3))
        for label in (*labels, "model: tiny"):
            row = result["rows"][label]
            assert set(row["families"]) == set(families)
            # the mean leaves `none` out; gain and worst family are against the input row
            assert row["mean_psnr"] == pytest.approx(row["families"][families[0]]["psnr"])
            assert row["gain_psnr"] == pytest.approx(row["mean_psnr"] - result["rows"]["input"]["mean_psnr"])
            source = result["rows"]["input"]["families"]
            gains = {f: row["families"][f]["psnr"] - source[f]["psnr"] for f in families if np.isfinite(source[f]["psnr"])}
            assert row["worst_family_gain"]["psnr"] == pytest.approx(min(gains.values()))
        wiener = result["rows"]["Wiener (true kernel)"]["families"][families[0]]["psnr"]
        assert wiener > result["rows"]["input"]["families"][families[0]]["psnr"], protocol
        text = (out / f"quality_{protocol}.md").read_text()
        assert f"| {none} |" in text and "| gain |" in text and "worst family vs input" in text
        model_id = result["rows"]["model: tiny"]["model"]["id"]
        assert f"| model: tiny (id {model_id}) |" in text


def test_native_is_the_full_protocol_and_sizes_differ_by_protocol(tiny_isic, tmp_path):
    quality = _quality()
    out = _main(quality, tiny_isic, tmp_path, "--protocol", "native", "--families", "none", "--methods", "wiener")
    assert json.loads((out / "quality_full.json").read_text())["protocol"] == "full"
    path = sorted((tiny_isic / "images").iterdir())[0]
    full, half, seed, soft = (quality.target_image(path, p) for p in ("full", "half", "seed", "soft"))
    assert full.shape == (64, 96, 3) and half.shape == soft.shape == (32, 48, 3) and seed.shape == (256, 256, 3)
    assert np.array_equal(soft, np.round(soft * 255) / 255)  # re-quantised to 8 bits
    assert 0.001 < np.abs(soft - half).mean() and np.array_equal(soft, quality.target_image(path, "soft"))
    sigmas = [quality.soft_sigma(f"name{i}") for i in range(50)]
    assert all(0.7 <= s <= 1.0 for s in sigmas) and len(set(sigmas)) == 50 and quality.soft_sigma("name0") == sigmas[0]


def test_second_run_reuses_the_cached_classical_rows(tiny_isic, tiny_run, tmp_path):
    quality = _quality()
    args = ("--protocol", "half", "--families", "gauss σ=1.6", "none", "--model", str(tiny_run))
    out = _main(quality, tiny_isic, tmp_path, *args)
    first = json.loads((out / "quality_half.json").read_text())
    assert first["classical_cache"]["computed"] == 2 * 2 * 2 and first["classical_cache"]["reused"] == 0  # images × families × methods
    cache_file = out / quality.CACHE_NAME
    cache = json.loads(cache_file.read_text())
    entry = cache["entries"]["half | gauss σ=1.6 | rl"]
    first_test = json.loads((tmp_path / "split.json").read_text())["test"]
    assert entry["tuning_key"]["spec"] == "gauss:sigma=1.6" and set(entry["images"]) == set(first_test)
    assert entry["params"]["iterations"] in (0, 5, 10, 20, 30, 40)

    _main(quality, tiny_isic, tmp_path, *args)
    second = json.loads((out / "quality_half.json").read_text())
    assert second["classical_cache"] == {**first["classical_cache"], "computed": 0, "reused": 8}
    for label in ("input", "Wiener (true kernel)", "Richardson-Lucy (true kernel)"):
        assert second["rows"][label] == first["rows"][label]
    assert json.loads(cache_file.read_text()) == cache

    # An image whose degraded input changed (here: a stale digest) is recomputed, and only that one.
    name = first_test[0]
    cache["entries"]["half | gauss σ=1.6 | wiener"]["images"][name][0] = "0" * 16
    cache_file.write_text(json.dumps(cache))
    _main(quality, tiny_isic, tmp_path, *args)
    third = json.loads((out / "quality_half.json").read_text())
    assert third["classical_cache"]["computed"] == 1 and third["classical_cache"]["reused"] == 7
    assert third["rows"]["Wiener (true kernel)"]["families"] == first["rows"]["Wiener (true kernel)"]["families"]


def test_every_protocol_family_spec_parses():
    quality = _quality()
    for table in (quality.FAMILIES, quality.SEED_FAMILIES):
        for spec in table.values():
            parse_spec(spec)  # raises on an unknown family or key
    assert set(quality.PROTOCOLS) == {"seed", "full", "half", "soft"} and quality.ALIASES == {"native": "full"}


def test_model_default_means_the_shipped_weights():
    quality = _quality()
    assert quality.model_label("default") == (None, "default")
    assert quality.model_label(str(quality.DEFAULT_WEIGHTS))[1] == "default"
    assert quality.model_label("runs/mixed") == ("runs/mixed", "mixed")


def test_richardson_lucy_path_equals_separate_runs_and_tune_uses_it():
    rng = np.random.default_rng(1)
    image = rng.random((20, 24, 3)).astype(np.float32)
    kernel = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float64)
    path = richardson_lucy_path(image, kernel, (0, 3, 7))
    assert set(path) == {0, 3, 7}
    for n in (0, 3, 7):
        assert np.array_equal(path[n], richardson_lucy(image, kernel, n))
    sharp = rng.random((20, 24, 3)).astype(np.float32)
    grid = tuple({"iterations": n} for n in (0, 3, 7))
    params, score = tune("rl", [(image, sharp, kernel)], grid)
    assert params in grid and np.isfinite(score)
