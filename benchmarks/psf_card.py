"""The model card's section on the kernel-conditioned model (psf-nafnet), rendered from the committed results.

Called by benchmarks/model_card.py; every number comes from quality_{full,half,soft,seed}.json (the row
``non-blind (true PSF): psf``), psf_training_stages.json, psf_speed.json, calibration.json or the weights themselves.
"""

from __future__ import annotations

import json
from pathlib import Path

from meddeblur.models import PSF_WEIGHTS, load_model, weights_id

PSF_ROW = "non-blind (true PSF): psf"
RL_ROW = "Richardson-Lucy (true kernel)"
BLIND_ROW = "model: default"
MARGIN_DB = 1.0  # the target: Richardson–Lucy given the same true kernel, plus this
COST_LIMIT = 1.5  # × the blind model's time per 1024×768
PROTOCOL_TITLES = {"full": "full resolution", "half": "half resolution", "soft": "softer source", "seed": "256×256"}
LIMITS = [
    "It restores the blur it is told. A PSF of the wrong family or far from the true width (beyond the ±25 % it was trained "
    "to tolerate) gives ringing or over-sharpening; without a known PSF use the blind default model.",
    "One PSF per image (or per run): blur that varies across the field (a tilted lesion partly out of focus) is restored "
    "with the one PSF given.",
    "Trained, like the default model, on synthetic degradations of the ISIC train split only.",
]


def _gain(row: dict, input_row: dict, family: str) -> float:
    return row["families"][family]["psnr"] - input_row["families"][family]["psnr"]


def targets(quality: dict[str, dict], speed: dict | None, calibration: dict | None) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the kernel-conditioned model."""
    checks = []
    for protocol in PROTOCOL_TITLES:
        if protocol not in quality:
            checks.append((f"{PROTOCOL_TITLES[protocol]}: mean over blur families ≥ RL + {MARGIN_DB:g} dB", "not measured yet", False))
    if "full" in quality:
        full = quality["full"]["rows"]
        blurs = [f for f in full["input"]["families"] if f != "none"]
        worst = min(blurs, key=lambda f: full[PSF_ROW]["families"][f]["psnr"] - full[RL_ROW]["families"][f]["psnr"])
        margin = full[PSF_ROW]["families"][worst]["psnr"] - full[RL_ROW]["families"][worst]["psnr"]
        checks.append((f"full resolution: every blur family ≥ Richardson–Lucy (true kernel) + {MARGIN_DB:g} dB",
                       f"smallest margin {margin:+.2f} dB ({worst})", margin >= MARGIN_DB))
    for protocol, result in quality.items():
        rows = result["rows"]
        margin = rows[PSF_ROW]["mean_psnr"] - rows[RL_ROW]["mean_psnr"]
        checks.append((f"{PROTOCOL_TITLES[protocol]}: mean over blur families ≥ RL + {MARGIN_DB:g} dB",
                       f"{rows[PSF_ROW]['gain_psnr']:+.2f} vs RL {rows[RL_ROW]['gain_psnr']:+.2f} dB over the input ({margin:+.2f})",
                       margin >= MARGIN_DB))
    # The un-blurred family is told a delta: its cell must equal the input's own (∞ where the target is 8-bit; in the
    # 256×256 protocol the float target makes the quantised input itself score ~59 dB).
    kept = [(result["rows"][PSF_ROW]["families"][f]["psnr"], result["rows"]["input"]["families"][f]["psnr"]) for result in quality.values()
            for f in result["rows"][PSF_ROW]["families"] if f in ("none", "sharp (none)")]
    same = all(out == given or out >= 60 for out, given in kept)
    checks.append(("a delta PSF gives the input back (≥ 60 dB, or the input's own score)",
                   "the input itself in every protocol" if same else ", ".join(f"{out:.2f} (input {given:.2f})" for out, given in kept), same))
    if speed is not None:
        ratios = [r["ratio"] for r in speed["rows"] if r["image"] == "1024x768" and r["psf"] != "—"]
        if ratios:
            checks.append((f"cost ≤ {COST_LIMIT:g}× the blind model per 1024×768", f"{min(ratios):.2f}–{max(ratios):.2f}× "
                           "(`benchmarks/results/psf_speed.md`)", max(ratios) <= COST_LIMIT))
    if calibration is not None:
        accuracy = calibration["accuracy"]
        checks.append(("calibration: MTF50 within 5 % on generated slanted edges",
                       f"{accuracy['passed']} of {accuracy['total']}, largest error {accuracy['max_abs_error_percent']:.2f} % "
                       "(`benchmarks/results/calibration.md`)", accuracy["passed"] == accuracy["total"]))
        summary = calibration["soft"]["summary"]
        for restorer in calibration["restorers"]:
            gain = summary[f"{restorer}_calibrated_gain"]
            checks.append((f"soft device restored with the calibrated PSF ({restorer}) ≥ +2 dB closer to the scene", f"{gain:+.2f} dB",
                           gain >= 2.0))
    return checks


def section(quality: dict[str, dict], results: Path) -> list[str]:
    """The card's lines for the kernel-conditioned model; none when it is not shipped or not yet benchmarked."""
    quality = {p: q for p, q in quality.items() if PSF_ROW in q["rows"]}  # the protocols it has been benchmarked on
    if not PSF_WEIGHTS.is_file() or not quality:
        return []
    network, config, weights = load_model(PSF_WEIGHTS)
    model_id = weights_id(weights)
    stale = [p for p, q in quality.items() if q["rows"][PSF_ROW]["model"]["id"] != model_id]
    if stale:
        raise SystemExit(f"quality_{stale[0]}.json scores other kernel-conditioned weights; run: python benchmarks/quality.py "
                         "--protocol all --model default psf")
    training = json.loads(weights.with_suffix(".json").read_text())["training"]
    stages = json.loads((results / "psf_training_stages.json").read_text())
    speed_file, calibration_file = results / "psf_speed.json", results / "calibration.json"
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else None
    calibration = json.loads(calibration_file.read_text()) if calibration_file.is_file() else None
    parameters = sum(p.numel() for p in network.parameters())
    val = training["val_mix"]
    lines = ["", "## The kernel-conditioned model (a known blur: `--psf`)", "",
             "| | |", "|---|---|",
             f"| id | `{model_id}` |",
             f"| file | `src/meddeblur/weights/{weights.name}` ({weights.stat().st_size / 1e6:.1f} MB) |",
             f"| architecture | `psf-nafnet`: an exact FFT Wiener data step with the given PSF at {network.wiener.branches} learned, "
             f"noise-dependent strengths, then the NAFNet prior above (width {config.width}, same blocks) guided by the estimates |",
             f"| parameters | {parameters:,} |", "",
             "Told the true kernel, as the Wiener and Richardson–Lucy rows are (mean over the blur families, gain over the input):", "",
             "| protocol | input | Wiener | Richardson–Lucy | blind default | kernel-conditioned | worst family vs input |", "|---|---|---|---|---|---|---|"]
    for protocol, result in quality.items():
        rows = result["rows"]
        worst = rows[PSF_ROW]["worst_family_gain"]
        lines.append(f"| {PROTOCOL_TITLES[protocol]} | {rows['input']['mean_psnr']:.2f} | {rows['Wiener (true kernel)']['gain_psnr']:+.2f} | "
                     f"{rows[RL_ROW]['gain_psnr']:+.2f} | {rows[BLIND_ROW]['gain_psnr']:+.2f} | **{rows[PSF_ROW]['gain_psnr']:+.2f}** | "
                     f"{worst['psnr']:+.2f} ({worst['family']}) |")
    for protocol, result in quality.items():
        rows = result["rows"]
        families = [f for f in rows["input"]["families"] if f not in ("none", "sharp (none)")]
        lines += ["", f"Per family, {PROTOCOL_TITLES[protocol]} (dB over the input; `benchmarks/results/quality_{protocol}.md`):", "",
                  "| | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
        for label in ("Wiener (true kernel)", RL_ROW, BLIND_ROW, PSF_ROW):
            lines.append(f"| {label} | " + " | ".join(f"{_gain(rows[label], rows['input'], f):+.2f}" for f in families) + " |")
    lines += ["", f"Trained from the blind default model lifted to a psf-nafnet (`meddeblur train --arch psf-nafnet --init default`): "
              f"{training['steps']} steps in {training['wall_minutes']:.0f} minutes on {training['machine']}; validation mix told its true "
              f"kernels {val['input']['psnr']:.2f} → {val['start']['psnr']:.2f} (start) → {val['candidate']['psnr']:.2f} dB, un-blurred inputs "
              f"kept at {val['candidate']['sharp_psnr']:.2f} dB (`benchmarks/results/psf_training_stages.md`, curve "
              "`benchmarks/results/psf_training.png`).", "",
              "| stage | command | minutes | steps | val mix: input → start → stage | shipped |", "|---|---|---|---|---|---|"]
    for stage in stages:
        lines.append(f"| {stage['stage']} | `{stage['command']}` | {stage['wall_minutes']:.0f} | {stage['steps']} | "
                     f"{stage['input']['psnr']:.2f} → {stage['start']['psnr']:.2f} → {stage['candidate']['psnr']:.2f} | "
                     f"{'yes' if stage['shipped'] else 'no: ' + stage.get('not_shipped_because', '')} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {'yes' if met else '**no**'} |" for name, measured, met in targets(quality, speed, calibration)]
    lines += ["", "Limits of the kernel-conditioned model:", ""] + [f"- {text}" for text in LIMITS]
    return lines
