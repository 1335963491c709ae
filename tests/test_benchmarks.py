"""The benchmark scripts run end to end (tiny settings) and a trained run folder can be a row."""

import json
import shlex
from pathlib import Path

import pytest
from conftest import ISIC

from benchmarks import archive, quality, speed
from benchmarks.experiments import loss_probe, train_speed
from benchmarks.report import psf_card
from meddeblur.losses import LossWeights
from meddeblur.models import ModelConfig, build_model, save_weights
from scripts import ship_model

ROOT = Path(__file__).resolve().parents[1]


def test_quality_benchmark_with_a_model_row(isic_images, tmp_path):
    run = tmp_path / "runs" / "tiny-mixed"
    save_weights(build_model(ModelConfig(width=4)), ModelConfig(width=4), run / "best.safetensors")
    out = tmp_path / "results"
    assert quality.main(["--protocol", "seed", "--isic", str(ISIC), "--model", str(run), "--limit", "2", "--val-limit", "1",
                         "--families", "gauss σ=1.2", "mixed", "--methods", "wiener", "unsharp_mask", "--out", str(out)]) == 0
    result = json.loads((out / "quality_seed.json").read_text())
    assert list(result["rows"]) == ["input", "Wiener (true kernel)", "Unsharp mask", "model: tiny-mixed"]
    assert result["test_images"] == 2 and set(result["rows"]["input"]["families"]) == {"gauss σ=1.2", "mixed"}
    wiener = result["rows"]["Wiener (true kernel)"]
    assert wiener["families"]["gauss σ=1.2"]["psnr"] > result["rows"]["input"]["families"]["gauss σ=1.2"]["psnr"]
    assert "nsr" in wiener["params"]["gauss σ=1.2"]
    model_id = result["rows"]["model: tiny-mixed"]["model"]["id"]
    assert f"| model: tiny-mixed (id {model_id}) |" in (out / "quality_seed.md").read_text()
    assert set(result["rows"]["model: tiny-mixed"]) >= {"gain_psnr", "worst_family_gain"}
    for row in result["rows"].values():  # the worst image of each family is recorded beside the mean
        assert all(f["min_psnr"] <= f["psnr"] + 1e-9 for f in row["families"].values())


def test_quality_keep_adds_rows_and_says_which_run_made_the_kept_ones(isic_images, tmp_path):
    out = tmp_path / "results"
    for name in ("one", "two"):
        save_weights(build_model(ModelConfig(width=4)), ModelConfig(width=4), tmp_path / name / "best.safetensors")
    common = ["--protocol", "seed", "--isic", str(ISIC), "--limit", "1", "--val-limit", "1", "--families", "gauss σ=1.2", "--out", str(out)]
    first = [*common, "--model", str(tmp_path / "one"), "--methods", "wiener"]
    assert quality.main(first) == 0
    assert quality.main([*common, "--model", str(tmp_path / "two"), "--methods", "--keep"]) == 0
    result = json.loads((out / "quality_seed.json").read_text())
    assert list(result["rows"]) == ["input", "model: two", "Wiener (true kernel)", "model: one"]
    assert result["kept_rows"]["model: one"] == "python -m benchmarks.quality " + shlex.join(first)
    assert result["kept_machines"]["model: one"] == result["machine"]
    assert "row model: one kept from" in (out / "quality_seed.md").read_text()


def _method_psf_rows(kept: dict) -> dict:
    """Quality rows of one protocol where method psf beats the blind default everywhere; its un-blurred column is ``kept``."""
    def row(gauss: float, none: dict) -> dict:
        return {"families": {"gauss σ=1.6": {"psnr": gauss}, "none": none}, "mean_psnr": gauss, "gain_psnr": gauss - 30.0}

    return {"rows": {"input": row(30.0, {"psnr": float("inf")}), "model: default": row(31.0, {"psnr": 60.0, "min_psnr": 50.0}),
                     "Richardson-Lucy (true kernel)": row(31.5, {"psnr": float("inf")}),
                     "psf (estimated)": row(32.0, kept)}}


@pytest.mark.parametrize("kept, allowed", [({"psnr": float("inf"), "min_psnr": float("inf")}, True),
                                            ({"psnr": float("inf"), "min_psnr": 46.0}, True),
                                            ({"psnr": float("inf"), "min_psnr": 40.0}, False),  # one image harmed, the mean ∞
                                            ({"psnr": float("inf")}, False),  # written before the minimum was recorded
                                            ({"psnr": 50.0}, False)])  # a finite mean can hide one harmed image
def test_method_psf_ship_rule_judges_unblurred_inputs_by_their_worst_image(kept, allowed):
    measured = {protocol: _method_psf_rows(kept) for protocol in psf_card.PROTOCOL_TITLES}
    ok, reasons = psf_card.ship_rule(measured)
    assert ok is allowed and (not reasons) is allowed
    target = next(t for t in psf_card.estimated_targets(measured, None, None) if t[0].startswith("un-blurred"))
    assert target[2] is allowed


def test_committed_split_is_the_seeded_70_20_10_split_of_all_images(isic_images):
    from meddeblur.data.pairs import split_names

    committed = json.loads((ROOT / "benchmarks" / "isic_split.json").read_text())
    assert {k: committed[k] for k in ("train", "val", "test")} == split_names([p.stem for p in isic_images], seed=42)


def test_speed_benchmark_runs(tmp_path):
    assert speed.main(["--widths", "4", "--steps", "1", "--repeats", "1", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "speed.json").read_text())["rows"][0]["width"] == 4


def test_ship_model_records_a_torchrun_stage_with_its_launcher(tmp_path):
    (tmp_path / "train.log").write_text("meddeblur 0.1.0 (recipe default): nafnet width 16\ndata parallel: 2 processes (gloo), "
                                        "global batch 16 = 8 per process\n")
    assert ship_model.processes_of(tmp_path) == 2 and ship_model.processes_of(tmp_path / "elsewhere") == 1
    options = {"recipe": "default", "init": "default", "lr": 5e-4, "crop": 128, "max_minutes": 100.0, "threads": 1, "dec_blocks": [1, 2, 2, 1]}
    assert ship_model.train_command(options, 2).startswith("torchrun --standalone --nproc_per_node 2 -m meddeblur train --sharp ISIC/images")
    single = ship_model.train_command(options)
    assert single.startswith("meddeblur train --sharp ISIC/images") and "--dec-blocks 1,2,2,1" in single
    assert "--lr" not in single  # 5e-4 is the recipe's fine-tuning rate (--init given) ...
    assert "--lr 0.002" in ship_model.train_command({**options, "lr": 2e-3})  # ... and its from-scratch rate is not
    assert "--lr" not in ship_model.train_command({**options, "init": None, "lr": 2e-3})
    assert "--crop" not in single and "--crop 128" in ship_model.train_command({**options, "init": None})  # fine-tuning's crop, not from scratch's
    shipped = ship_model.ROOT / "src" / "meddeblur" / "weights" / "psf.safetensors"  # a weights file of the checkout: named as a clone has it
    assert "--init src/meddeblur/weights/psf.safetensors " in ship_model.train_command({**options, "init": str(shipped)}) + " "


def test_ship_model_stages_table_says_why_a_stage_was_not_shipped():
    scores = {"loss": 0.007, "psnr": 40.0, "sharp_psnr": 65.0}
    stage = {"stage": 1, "date": "2026-11-30", "command": "meddeblur train", "wall_minutes": 10.0, "cpu_minutes": 20.0, "steps": 5,
             "input": scores, "start": scores, "candidate": scores, "machine": "test", "threads": 1}
    stages = [{**stage, "shipped": True, "id": "aaa"}, {**stage, "shipped": False, "id": "bbb"},
              {**stage, "shipped": False, "id": "ccc", "not_shipped_because": "2.44× the former time"}]
    rows = [line for line in ship_model.stages_markdown(stages).splitlines() if line.startswith("| 1 |")]
    assert [row.rsplit("|", 3)[1].strip() for row in rows] == [
        "yes", "no: the validation mix did not improve", "no: 2.44× the former time"]
    assert "Machine of the stages: test, 1 intra-op" in ship_model.stages_markdown(stages)  # one host: named once
    moved = stages + [{**stage, "stage": 4, "shipped": True, "id": "ddd", "machine": "other host"}]
    assert "Machine of the stages: test (stages 1, 1, 1); other host (stage 4), 1 intra-op" in ship_model.stages_markdown(moved)


def test_ship_model_ships_only_a_lower_l1_loss_with_no_lower_psnr_and_says_which_failed():
    start = {"loss": 0.00687, "psnr": 40.57}
    assert ship_model.why_not_shipped(start, {"loss": 0.00686, "psnr": 40.57}) is None
    assert ship_model.why_not_shipped(start, {"loss": 0.00690, "psnr": 40.65}) == \
        "its L1 loss on the validation mix did not fall (0.00687 → 0.00690)"
    assert ship_model.why_not_shipped(start, {"loss": 0.00680, "psnr": 40.50}) == "its PSNR on the degraded samples fell (40.57 → 40.50 dB)"
    assert ship_model.why_not_shipped(start, {"loss": 0.00687, "psnr": 40.50}).count("; ") == 1  # both, and an equal loss is no gain


def test_train_speed_table_states_the_gain_and_tolerates_a_val_set_without_unblurred_samples():
    row = {"steps": 10, "samples": 160, "samples_per_cpu_second": 2.0, "pixels_per_cpu_second": 3e5}
    result = {"machine": "test host", "command": "python -m benchmarks.experiments.train_speed --minutes 1 --jobs 2", "minutes": 1.0, "jobs": 2,
              "train_images": 14, "val_images": 4, "inputs": {"val mix": {"psnr": 30.0}, "val 256 mixed": {"psnr": 29.0}},
              "rows": {"former": {**row, "val": {"val mix": {"psnr": 29.5}, "val 256 mixed": {"psnr": 29.2}}},
                       "default": {**row, "val": {"val mix": {"psnr": 30.75, "sharp_psnr": 61.0}, "val 256 mixed": {"psnr": 29.1}}}}}
    table = train_speed.markdown(result)
    assert "| former | 10 | 160 | 2.00 | 0.300 | 29.50 | — | 29.20 |" in table
    assert "| default | 10 | 160 | 2.00 | 0.300 | 30.75 | 61.00 dB | 29.10 |" in table
    assert "trained side by side, one core each" in table and "**+1.25 dB** (target ≥ +1 dB)" in table


def test_train_speed_psf_fine_tunes_both_arms_alike_and_tables_start_end_and_gain_per_cpu_minute():
    from meddeblur.training.recipes import recipe_options

    blind, told = train_speed.psf_recipes(12.0).values()
    assert {k for k in blind if blind[k] != told[k]} == {"arch"} and (blind["arch"], told["arch"]) == ("nafnet", "psf-nafnet")
    tuning = recipe_options("default", paired=False, fine_tune=True)
    assert blind["init"] == "default" and blind["max_minutes"] == 12.0 and blind["dec_blocks"] is None  # the weights' own layout
    assert (blind["lr"], blind["crop"], blind["loss"]) == (tuning["lr"], tuning["crop"], tuning["loss"])
    row = {"steps": 10, "samples": 160, "samples_per_cpu_second": 2.0, "cpu_minutes": 1.0,
           "options": {"loss": {"ssim": 0.0, "l1": 1.0, "perceptual": 1e-6}, "perceptual": False, "lr": 5e-4, "crop": 128, "batch": 16, "perturb_psf": 0.3}}
    result = {"machine": "test host", "command": "python -m benchmarks.experiments.train_speed --compare psf --minutes 1", "minutes": 1.0, "jobs": 1,
              "compare": "psf", "init_id": "0eee83c95b79", "train_images": 14, "val_images": 4, "inputs": {"val mix": {"psnr": 39.0}},
              "rows": {"blind nafnet": {**row, "start": {"val mix": {"psnr": 40.0, "sharp_psnr": 70.0}},
                                        "val": {"val mix": {"psnr": 40.1, "sharp_psnr": 69.0}}, "gain_per_cpu_minute": 0.1},
                       "psf-nafnet told the kernel": {**row, "start": {"val mix": {"psnr": 40.0}}, "val": {"val mix": {"psnr": 40.5}},
                                                      "gain_per_cpu_minute": 0.5}}}
    table = train_speed.markdown(result)
    assert "| blind nafnet | 10 | 160 | 2.00 | 1.0 | 40.00 | 40.10 | +0.10 | +0.1000 | 70.00 → 69.00 dB |" in table
    assert "| psf-nafnet told the kernel | 10 | 160 | 2.00 | 1.0 | 40.00 | 40.50 | +0.50 | +0.5000 | — |" in table
    assert "**+0.40 dB** (at the start +0.00 dB)" in table and "loss l1=1, AdamW lr 0.0005, 128-px crops" in table
    assert "trained one after the other" in table and "kernel-conditioned restorer vs blind network" in table


def test_loss_probe_reads_loss_weights_and_keeps_every_run_in_one_table(tmp_path):
    assert loss_probe.parse_loss("ssim=0.15, l1=0.85") == LossWeights(ssim=0.15, l1=0.85)
    assert loss_probe.parse_loss("mse=1") == LossWeights(ssim=0.0, l1=0.0, mse=1.0)
    with pytest.raises(ValueError, match="'ms'"):
        loss_probe.parse_loss("ms=1")
    assert loss_probe.run_label("l1=1", 5e-4, init="default") == "l1=1, lr 0.0005, from default"
    assert loss_probe.run_label("l1=1", 2e-3, crop=96) == "l1=1, lr 0.002, crop 96"
    row = {"steps": 10, "cpu_minutes": 1.0, "machine": "test host", "inputs": {"val mix": {"psnr": 39.0}, "val 256 mixed": {"psnr": 33.8}},
           "val": {"val mix": {"psnr": 39.5, "ssim": 0.9, "sharp_psnr": 50.0}, "val 256 mixed": {"psnr": 34.0}}}
    loss_probe.record("mse=1", row, "cmd a", tmp_path)
    table = loss_probe.record("ssim=0.5,l1=0.5", {**row, "steps": 20, "val": {**row["val"], "val mix": {"psnr": 39.6, "ssim": 0.91}}}, "cmd b", tmp_path)
    assert set(json.loads((tmp_path / "loss_probe.json").read_text())) == {"mse=1", "ssim=0.5,l1=0.5"}
    assert "| mse=1 | `cmd a` | 10 | 1.0 | 39.50 (39.00) | 50.00 dB | 0.9000 | 34.00 (33.80) |" in table
    assert "| ssim=0.5,l1=0.5 | `cmd b` | 20 | 1.0 | 39.60 (39.00) | — | 0.9100 | 34.00 (33.80) |" in table
    assert (tmp_path / "loss_probe.md").read_text() == table and "Machine: test host." in table


def test_archive_benchmark_runs(tmp_path):
    assert archive.main(["--images", "3", "--max-side", "96", "--skip-ray", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "archive.json").read_text())
    assert set(result["rows"]) == {"local, 1 worker", "local, 1 worker, 1 thread", "local, 2 workers"}
    assert result["rows"]["local, 2 workers"]["identical_to_1_worker"] and result["rerun"]["summary"].startswith("3 input(s): 0 written")
    assert "--skip-ray" in result["command"] and "| local, 2 workers |" in (tmp_path / "archive.md").read_text()


def test_reference_protocol_keeps_the_upscaler_away_from_the_pair_images(isic_images):
    from benchmarks import reference_protocol as protocol

    pairs, espcn = protocol.choose_images(ISIC)
    assert len(pairs) == protocol.PAIR_IMAGES and len(set(pairs)) == protocol.PAIR_IMAGES
    assert not set(pairs) & set(espcn) and len(pairs) + len(espcn) == len(isic_images)
    split = json.loads(protocol.SPLIT.read_text())
    assert {p.stem for p in pairs} >= set(split["test"]) | set(split["val"])  # never seen by the shipped model either
    sharp, low = protocol.sharp_and_low(pairs[0])
    assert sharp.shape == (128, 128, 3) and low.shape == (64, 64, 3) and sharp.dtype == low.dtype == "uint8"
    assert protocol.loader_view(sharp).shape == (256, 256, 3)


def test_reference_protocol_espcn_learns_to_upscale(isic_images):
    import numpy as np

    from benchmarks import reference_protocol as protocol
    from meddeblur.metrics import psnr_ssim_numpy

    sharp, low = zip(*(protocol.sharp_and_low(path) for path in isic_images[:16]), strict=True)
    untrained = protocol.upscale(protocol.train_espcn(list(sharp), list(low), 0), list(low))
    trained = protocol.upscale(protocol.train_espcn(list(sharp), list(low), 40), list(low))
    assert trained[0].shape == (128, 128, 3)

    def score(images):
        return np.mean([psnr_ssim_numpy(u / 255.0, s / 255.0)[0] for u, s in zip(images, sharp, strict=True)])

    assert score(trained) > score(untrained) + 3.0
