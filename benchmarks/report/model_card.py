"""Render MODEL_CARD.md, the shipped model_card.json and the figures of README.md and docs/*.md from the committed results.

    python -m benchmarks.report.model_card            # rewrite what changed
    python -m benchmarks.report.model_card --check    # exit 1 if any of them differs from what the results give

Every number in the card comes from a results file (quality_{full,half,soft,seed}.json, flops.json, budget.json,
default_training_stages.json, train_speed.json; for the kernel-conditioned model psf_training_stages.json, psf_speed.json,
calibration.json, via :mod:`benchmarks.report.psf_card`) or from the shipped weights themselves; README.md and docs/*.md carry
theirs in figure blocks (``<!-- figures:NAME -->…<!-- /figures -->``) that :mod:`benchmarks.report.figures` renders from the same files.
So documents and results cannot drift apart unnoticed: the test suite runs ``--check``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from meddeblur import __version__
from meddeblur.losses import DeblurLoss, LossWeights
from meddeblur.models import DEFAULT_WEIGHTS, ModelConfig, load_model, weights_id

from benchmarks import pnp
from benchmarks.common import INPUT_ROW, MODEL_ROW, RESULTS, RL_ROW, ROOT, UNBLURRED, WIENER_ROW
from benchmarks.report import crops_figure, figures, psf_card

CARD = ROOT / "MODEL_CARD.md"
CARD_JSON = DEFAULT_WEIGHTS.parent / "model_card.json"
STAGE_STOP_DB = 0.05  # staged training stops once a stage adds less than this on the validation mix
PROTOCOLS = {  # results file suffix: what the protocol is
    "full": "the 56 ISIC test images at stored resolution (up to 1024 px), as `meddeblur deblur photo.jpg` sees them",
    "half": "the test images area-down-scaled ×2 first (a lower-resolution camera or an exported copy)",
    "soft": "the test images at half size, softened by a Gaussian σ 0.7–1.0 (a softer camera): the softened image is the target",
    "seed": "the test images area-resized to 256×256, like the reference",
}
LIMITS = [
    "Not a diagnostic device: outputs are computer-processed images; read them beside the original, never instead of it.",
    "Trained only on dermoscopic photographs (the ISIC train split: 390 images, mostly 1024×768, at native to ¼ scale); other "
    "modalities (radiographs, histology, fundus, DICOM monochrome) were never seen.",
    "Trained only on synthetic degradations (the `real` mix: Gaussian σ ≤ 3, defocus radius ≤ 4, motion and shake ≤ 15 px, "
    "resampling ≤ 4×, noise σ ≤ 0.012, JPEG quality ≥ 70); stronger or other real blur (rolling shutter, lens aberrations, heavy "
    "compression) may be left or made worse.",
    "Scores are on 56 held-out images of one public collection; they do not show performance on a clinic's own images.",
    "It can invent or sharpen texture that is not in the scene; borders, pigment networks and vessels must be checked against the input.",
]


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _flops_row(flops: dict, config: ModelConfig) -> dict:
    """flops.json's row of the network ``config``."""
    for row in flops["rows"]:
        if ModelConfig.from_dict(row["config"]) == config:
            return row
    raise SystemExit(f"benchmarks/results/flops.json has no row for {config}; run python -m benchmarks.flops")


def _paired(flops: dict, config: ModelConfig) -> dict:
    """flops.json's alternating-pass timing of the shipped network against the former one."""
    paired = flops.get("paired")
    if paired is None or ModelConfig.from_dict(paired["shipped_config"]) != config:
        raise SystemExit("benchmarks/results/flops.json has no alternating-pass timing of the shipped network; run python -m benchmarks.flops")
    return paired


def _gains(quality: dict, label: str = MODEL_ROW) -> dict[str, float]:
    """PSNR gain over the input per blur family (``none`` left out: its input PSNR is infinite)."""
    model, source = quality["rows"][label]["families"], quality["rows"][INPUT_ROW]["families"]
    return {f: model[f]["psnr"] - source[f]["psnr"] for f in model if f not in UNBLURRED}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def targets(quality: dict[str, dict], flops: dict, paired: dict, speed: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every target set for the default model.

    ``flops``: the flops.json row of the shipped network; ``paired``: its alternating-pass timing against the former one.
    """
    ratio = paired["ratio"]
    full, soft, seed = (_gains(quality[p]) for p in ("full", "soft", "seed"))
    rl_full = _mean(_gains(quality["full"], RL_ROW).values())
    rl_seed = _mean(_gains(quality["seed"], RL_ROW).values())
    sharp = {p: next(v["psnr"] for f, v in quality[p]["rows"][MODEL_ROW]["families"].items() if f in UNBLURRED) for p in PROTOCOLS}
    worst_full, worst_soft, worst_seed = (min(g, key=g.get) for g in (full, soft, seed))
    rows = list(speed["rows"].values())
    recipe_gain = rows[1]["val"]["val mix"]["psnr"] - rows[0]["val"]["val mix"]["psnr"]
    return [
        ("full resolution: no family below its input (−0.05 dB tolerance)", f"worst {full[worst_full]:+.2f} dB ({worst_full})",
         full[worst_full] >= -0.05),
        ("full resolution: mean gain over the blur families ≥ Richardson–Lucy with the true kernel",
         f"{_mean(full.values()):+.2f} dB vs RL {rl_full:+.2f} dB", _mean(full.values()) >= rl_full),
        ("soft source: no family below its input (−0.05 dB tolerance)", f"worst {soft[worst_soft]:+.2f} dB ({worst_soft})", soft[worst_soft] >= -0.05),
        ("sharp input: PSNR(output, input) ≥ 45 dB at every scale", ", ".join(f"{p} {v:.2f}" for p, v in sharp.items()) + " dB",
         min(sharp.values()) >= 45),
        ("256×256: mean gain ≥ +3.0 dB (stretch +5)", f"{_mean(seed.values()):+.2f} dB", _mean(seed.values()) >= 3),
        ("256×256: every family ≥ +1.5 dB", f"worst {seed[worst_seed]:+.2f} dB ({worst_seed})", seed[worst_seed] >= 1.5),
        ("256×256: mean above the Richardson–Lucy row's", f"{_mean(seed.values()):+.2f} dB vs RL {rl_seed:+.2f} dB", _mean(seed.values()) > rl_seed),
        ("new recipe ≥ 1 dB above the former at equal CPU time", f"{recipe_gain:+.2f} dB on the val mix after {speed['minutes']:g} CPU-minutes "
         "(`train_speed.md`)", recipe_gain >= 1),
        ("≤ 12 GFLOP per 256×256", f"{flops['gflop_256']:.2f} GFLOP", flops["gflop_256"] <= 12),
        ("≤ 2× the former model's time per 1024×768", f"{ratio:.2f}× ({paired['shipped_median_s']:.2f} s vs {paired['former_median_s']:.2f} s, "
         f"median of {paired['pairs']} alternating passes in one run of `benchmarks/flops.py`)", ratio <= 2),
    ]


def _quality_table(quality: dict, labels: tuple[str, ...]) -> list[str]:
    families = list(quality["families"])
    lines = ["| method | " + " | ".join(families) + " | mean of blurs | gain |", "|" + "---|" * (len(families) + 3)]
    for label in labels:
        row = quality["rows"][label]
        cells = [f"{row['families'][f]['psnr']:.2f} / {row['families'][f]['ssim']:.4f}" for f in families]
        gain = "—" if label == "input" else f"{_mean(_gains(quality, label).values()):+.2f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['mean_psnr']:.2f} / {row['mean_ssim']:.4f} | {gain} |")
    return lines


def build() -> tuple[str, dict]:
    """(MODEL_CARD.md text, model_card.json content)."""
    from meddeblur.degradation.spec import REAL, REAL_OPS
    from meddeblur.training.recipes import RECIPES

    network, config, weights = load_model(None)
    model_id = weights_id(weights)
    quality = {p: _load(f"quality_{p}.json") for p in PROTOCOLS}
    for protocol, result in quality.items():
        if MODEL_ROW not in result["rows"] or result["rows"][MODEL_ROW]["model"]["id"] != model_id:
            raise SystemExit(f"quality_{protocol}.json has no row for the shipped weights; run: python -m benchmarks.quality "
                             f"--protocol {protocol} --model default")
    budget, stages, speed = _load("budget.json"), _load("default_training_stages.json"), _load("train_speed.json")
    training = json.loads(weights.with_suffix(".json").read_text())["training"]
    flops_result = _load("flops.json")
    flops = _flops_row(flops_result, config)
    parameters = sum(p.numel() for p in network.parameters())
    recipe = RECIPES["default"]
    stage = training["run_options"]  # the options the shipped weights' own stage ran with
    loss = DeblurLoss(LossWeights(**stage["loss"])).formula()
    real = "; ".join(f"{name} {p:.0%}" + (" (" + ", ".join(f"{k} {v[0]:g}–{v[1]:g}" for k, v in params.items() if isinstance(v, tuple)) + ")"
                                          if any(isinstance(v, tuple) for v in params.values()) else "") for name, p, params in REAL)
    ops = ", ".join(f"{name} " + ", ".join(f"{k} {v[0]:g}–{v[1]:g}" for k, v in params.items()) for name, params in REAL_OPS)
    checks = targets(quality, flops, _paired(flops_result, config), speed)
    val = training["val_mix"]
    lines = [
        "# Model card — meddeblur default model", "",
        "<!-- Generated by `python -m benchmarks.report.model_card` from benchmarks/results/*.json; edit the script, not this file. -->", "",
        "| | |", "|---|---|",
        f"| id | `{model_id}` (first 12 hex of the SHA-256 of the weights) |",
        f"| file | `src/meddeblur/weights/{weights.name}` ({weights.stat().st_size / 1e6:.1f} MB, safetensors), installed with the package |",
        f"| meddeblur | {__version__} |",
        f"| architecture | NAFNet-style U-Net (`--arch {config.arch}`): width {config.width}, encoder blocks {list(config.enc_blocks)}, "
        f"middle {config.middle_blocks}, decoder {list(config.dec_blocks)}; LayerNorm, depthwise conv, simple gate, channel attention, "
        "zero-initialised residual scales, global residual (output = input + correction, clamped to [0, 1]) |",
        f"| parameters | {parameters:,} |",
        f"| compute | {flops['gflop_256']:.2f} GFLOP per 256×256 image (the reference Attention U-Net: 117.84) |",
        f"| CPU speed | {flops['256x256']['median_s'] * 1000:.0f} ms per 256×256, {flops['1024x768']['median_s']:.2f} s per 1024×768 "
        f"(median, {flops_machine(flops_result)}; `benchmarks/results/flops.md`) |",
        "", "## Intended use", "",
        "Removing mild to moderate blur (defocus, camera shake, motion, soft optics, resampling) from dermoscopic photographs "
        "at the resolution they were taken, so that borders, pigment networks and vessels are easier to read, offline on an "
        "ordinary CPU — and leaving an image that is already sharp alone. Large images are processed in overlapping, smoothly "
        "blended tiles (`meddeblur deblur --tile`).",
    ]
    for protocol, about in PROTOCOLS.items():
        result = quality[protocol]
        title = {"full": "Quality at full resolution", "half": "Quality at half resolution", "soft": "Quality on a softer source",
                 "seed": "Quality at 256×256 (the reference's protocol)"}[protocol]
        lines += ["", f"## {title}", "",
                  f"{about}; {result['test_images']} images, degraded with fixed seeds, 8-bit; PSNR (dB) / SSIM. Wiener and Richardson–Lucy "
                  "are given the true kernel, their parameters tuned on validation images. `none`: an un-blurred input; its cell is "
                  f"PSNR(output, input). Command: `{result['command']}` (`benchmarks/results/quality_{protocol}.md`).", ""]
        lines += _quality_table(result, (INPUT_ROW, WIENER_ROW, RL_ROW, MODEL_ROW))
        if protocol == "full":
            ids = ", ".join(i for i, _ in crops_figure.ISIC_ROWS)
            lines += ["", "![100 % crops of ISIC test photographs](docs/figures/isic_crops.png)", "",
                      f"100 % crops, blurred / deblurred / sharp, of three ISIC test photographs ({ids}; ISIC Archive, collection UDA-1, "
                      "CC0 1.0), one family each (`python -m benchmarks.report.crops_figure --isic`). Every family on one generated image: "
                      "`benchmarks/results/full_resolution_crops.png` (`python -m benchmarks.report.crops_figure`)."]
    lines += [
        "", "## Training", "",
        f"- Data: {training['data']}: 390 train images; the 111 validation images chose the weights; the 56 test images were never used.",
        f"- Recipe `default` (`meddeblur train`, src/meddeblur/training/recipes.py): {recipe['crop']}-px crops ({recipe['fine_tune']['crop']} px when "
        f"fine-tuning) of the native images at a log-uniform "
        f"down-scale {recipe['scales'][0]:g}–{recipe['scales'][1]:g}× (resampling kernel and library drawn per sample), source softened "
        f"with p = {recipe['soften']:g} and JPEG-compressed with p = {recipe['compress']:g} (the target is the softened/compressed source), "
        f"flips/rot90, then the `real` mix: {real}; each blurred image then {ops}, each with p = 0.5; 8-bit quantisation.",
        f"- This weights' stage: {stage['crop']}-px crops, loss {loss}, AdamW (β 0.9/0.9) lr {stage['lr']:g}, batch {stage['batch']}, "
        f"warm-up {stage['warmup']} steps then cosine decay over the budget, gradient clipping {stage['clip']:g}, EMA {stage['ema']:g} "
        f"of the weights (validated and shipped). The recipe's own values: from scratch loss {DeblurLoss(recipe['loss']).formula()} at lr "
        f"{recipe['lr']:g}; fine-tuning (`--init`) loss {DeblurLoss(recipe['fine_tune']['loss']).formula()} at lr "
        f"{recipe['fine_tune']['lr']:g} (`benchmarks/results/loss_probe.md`).",
        f"- Trained in stages, each continuing from the shipped weights (`--init default`) and shipped only if the validation mix "
        f"improves and the quality benchmark shows no protocol's no-harm target broken by it (each rejection's reason is in the table below) "
        f"(`benchmarks/results/default_training_stages.md`). This weights' stage: {training['steps']} steps in "
        f"{training['wall_minutes']:.0f} minutes wall clock ({training['cpu_minutes']:.0f} CPU minutes) on {training['machine']}, "
        + (f"{training['processes']} torchrun processes × " if training.get("processes", 1) > 1 else "")
        + f"{training['threads']} intra-op thread(s). Validation mix: input {val['input']['psnr']:.2f} dB → {val['start']['psnr']:.2f} dB "
        f"(the weights it started from) → {val['candidate']['psnr']:.2f} dB; un-blurred inputs kept at {val['start']['sharp_psnr']:.2f} → "
        f"{val['candidate']['sharp_psnr']:.2f} dB. Curve: `benchmarks/results/default_training.png`.", "",
        "| stage | command | minutes (wall / CPU) | steps | val mix PSNR: input → start → stage | sharp kept | shipped |", "|---|---|---|---|---|---|---|",
    ]
    for stage in stages:
        lines.append(f"| {stage['stage']} | `{stage['command']}` | {stage['wall_minutes']:.0f} / {stage['cpu_minutes']:.0f} | {stage['steps']} | "
                     f"{stage['input']['psnr']:.2f} → {stage['start']['psnr']:.2f} → {stage['candidate']['psnr']:.2f} | "
                     f"{stage['start']['sharp_psnr']:.2f} → {stage['candidate']['sharp_psnr']:.2f} dB | {'yes' if stage['shipped'] else 'no: ' + stage.get('not_shipped_because', 'the validation mix did not improve')} |")
    lines += ["", "Stage 0 (id `5be7353d1c30`) was trained from scratch with the former recipe (256×256 resize, `mixed`, Adam, plateau; "
              "44 epochs, 91 minutes). Then `python scripts/ship_model.py RUN --threads N`, the quality benchmark, and this script."]
    last_gain = stages[-1]["candidate"]["psnr"] - stages[-1]["start"]["psnr"] if stages else None
    if last_gain is not None and last_gain < STAGE_STOP_DB:
        lines += ["", f"The stages ended with stage {stages[-1]['stage']}: it added {last_gain:+.3f} dB on the validation mix, under "
                  f"{STAGE_STOP_DB:g} dB, the gain below which another stage of the same training is not worth its hours."]
    former, current = speed["rows"].values()
    lines += ["", "## Learning per CPU-hour", "",
              f"The former and the default recipe, each from scratch for {speed['minutes']:g} CPU-minutes on one thread "
              f"(`python -m benchmarks.experiments.train_speed`, `benchmarks/results/train_speed.md`): {former['samples_per_cpu_second']:.2f} vs "
              f"{current['samples_per_cpu_second']:.2f} samples per CPU-second; on the same validation mix "
              f"{former['val']['val mix']['psnr']:.2f} vs {current['val']['val mix']['psnr']:.2f} dB (input {speed['inputs']['val mix']['psnr']:.2f}), "
              f"un-blurred inputs kept at {former['val']['val mix']['sharp_psnr']:.2f} vs {current['val']['val mix']['sharp_psnr']:.2f} dB. "
              # The gap alone hides that a recipe may lead only by harming less; say where each stands against its input.
              f"Against the input: former {former['val']['val mix']['psnr'] - speed['inputs']['val mix']['psnr']:+.2f} dB, default "
              f"{current['val']['val mix']['psnr'] - speed['inputs']['val mix']['psnr']:+.2f} dB after {current['steps']} steps from scratch."]
    lines += ["", "## Why this architecture", "",
              f"Equal CPU budget ({budget['minutes']:g} CPU minutes each, one thread, same data and recipe; `benchmarks/results/budget.md`), "
              f"scored on the {budget['val_images']} validation images (input {budget['input_full']['psnr']:.2f} dB):", "",
              "| model | GFLOP / 256² | steps in budget | val PSNR (dB) |", "|---|---|---|---|"]
    for label, row in budget["candidates"].items():
        lines.append(f"| {label} | {row['gflop_256']:.2f} | {row['steps']} | {row['final_val']['psnr']:.2f} |")
    lines += ["", "The reference (sigmoid head, Keras BatchNorm momentum 0.99) is still far below its input after 20 CPU minutes; "
              "the residual variants start at the input and NAFNet makes ~15× more optimiser steps per CPU minute than the "
              "reference, so it was chosen."]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {'yes' if met else '**no**'} |" for name, measured, met in checks]
    lines += ["", "## Limits", ""] + [f"- {text}" for text in LIMITS]
    lines += psf_card.section(quality, RESULTS)  # the kernel-conditioned model, once shipped and benchmarked
    lines += psf_card.estimated_section(quality, RESULTS)  # method psf, once benchmarked
    lines += pnp.card_section(quality, RESULTS)  # the plug-and-play restorer, once shipped and benchmarked
    card = {
        "id": model_id, "version": __version__, "file": weights.name, "architecture": asdict(config),
        "parameters": parameters, "gflop_256": round(flops["gflop_256"], 3),
        "training_data": training["data"], "degradations": f"real: {real}; then {ops}",
        "training": {k: training[k] for k in ("steps", "wall_minutes", "cpu_minutes", "threads", "machine")} | {"val_mix": val},
        "test_psnr": {p: {f: round(v["psnr"], 2) for f, v in quality[p]["rows"][MODEL_ROW]["families"].items()} for p in PROTOCOLS},
        "test_input_psnr": {p: {f: round(v["psnr"], 2) for f, v in quality[p]["rows"]["input"]["families"].items()} for p in PROTOCOLS},
        "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in checks],
        "limits": LIMITS, "intended_use": "deblurring dermoscopic photographs; not for diagnosis alone",
    }
    return "\n".join(lines) + "\n", card


def flops_machine(flops: dict) -> str:
    machine = flops["machine"]
    return f"{machine['cpu']}, {machine['cores']} cores, {machine['torch_threads']} threads"


def documents() -> list[Path]:
    """The hand-written documents whose figure blocks are rendered: README.md and every page of docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def rendered() -> dict[Path, str]:
    """Every generated file and document → the text the committed results give it."""
    text, card = build()
    wanted = {CARD: text, CARD_JSON: json.dumps(card, indent=2, ensure_ascii=False) + "\n"}
    for path in documents():
        wanted[path] = figures.render(path.read_text(), RESULTS, path)
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on any difference")
    args = parser.parse_args(argv)
    stale = {path: want for path, want in rendered().items() if not path.is_file() or path.read_text() != want}
    if args.check:
        if stale:
            print("out of date with benchmarks/results: " + ", ".join(str(p.relative_to(ROOT)) for p in stale)
                  + "; run python -m benchmarks.report.model_card", file=sys.stderr)
            return 1
        return 0
    for path, want in stale.items():  # only what changed is written
        path.write_text(want)
        print(f"rendered {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
