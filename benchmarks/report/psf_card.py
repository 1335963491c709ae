"""The model card's section on the kernel-conditioned model (psf-nafnet), rendered from the committed results.

Called by benchmarks.report.model_card; every number comes from quality_{full,half,soft,seed}.json (the rows
``non-blind (true PSF): psf`` and ``psf (estimated)``), psf_training_stages.json, psf_speed.json, calibration.json,
psf_estimation.json or the weights themselves. :func:`section`: a known PSF; :func:`estimated_section`: method psf.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from meddeblur.models import PSF_WEIGHTS, load_model, weights_id

from benchmarks.common import ESTIMATED_ROW, MODEL_ROW as BLIND_ROW, PROTOCOL_TITLES, PSF_ROW, RL_ROW, UNBLURRED, WIENER_ROW
MARGIN_DB = 1.0  # the target: Richardson–Lucy given the same true kernel, plus this
COST_LIMIT = 1.5  # × the blind model's time per 1024×768
LIMITS = [
    "It restores the blur it is told. A PSF of the wrong family or far from the true width (beyond the ±25 % it was trained "
    "to tolerate) gives ringing or over-sharpening; without a known PSF use the blind default model.",
    "One PSF per image (or per run): blur that varies across the field (a tilted lesion partly out of focus) is restored "
    "with the one PSF given.",
    "Trained, like the default model, on synthetic degradations of the ISIC train split only.",
]


def _gain(row: dict, input_row: dict, family: str) -> float:
    return row["families"][family]["psnr"] - input_row["families"][family]["psnr"]


def family_tables(quality: dict[str, dict], labels: tuple[str, ...]) -> list[str]:
    """Per protocol, a table of the gain over the input of each row in ``labels``, per blur family."""
    lines = []
    for protocol, result in quality.items():
        rows = result["rows"]
        families = [f for f in rows["input"]["families"] if f not in UNBLURRED]
        lines += ["", f"Per family, {PROTOCOL_TITLES[protocol]} (dB over the input; `benchmarks/results/quality_{protocol}.md`):", "",
                  "| | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
        for label in labels:
            lines.append(f"| {label} | " + " | ".join(f"{_gain(rows[label], rows['input'], f):+.2f}" for f in families) + " |")
    return lines


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
            for f in result["rows"][PSF_ROW]["families"] if f in UNBLURRED]
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
        raise SystemExit(f"quality_{stale[0]}.json scores other kernel-conditioned weights; run: python -m benchmarks.quality "
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
        lines.append(f"| {PROTOCOL_TITLES[protocol]} | {rows['input']['mean_psnr']:.2f} | {rows[WIENER_ROW]['gain_psnr']:+.2f} | "
                     f"{rows[RL_ROW]['gain_psnr']:+.2f} | {rows[BLIND_ROW]['gain_psnr']:+.2f} | **{rows[PSF_ROW]['gain_psnr']:+.2f}** | "
                     f"{worst['psnr']:+.2f} ({worst['family']}) |")
    lines += family_tables(quality, (WIENER_ROW, RL_ROW, BLIND_ROW, PSF_ROW))
    estimated = training["run_options"].get("estimated_psf", 0.0)
    told = f" ({100 * estimated:.0f} % of its crops told the PSF the blur estimator finds in them, the rest their true one)" if estimated else ""
    lines += ["", "Trained in stages, the first from the blind default model lifted to a psf-nafnet (`meddeblur train --arch psf-nafnet "
              f"--init default`), each later one from the previous shipped weights. The shipped stage {training['stage']}{told}: "
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


KEPT_DB = 45.0  # an un-blurred input must come back at least this close to itself
ESTIMATED_COST_LIMIT = 2.0  # × the blind model's time per 1024×768 for method psf
SIZE_ROWS = {"gauss": ("gauss σ=1.0", "gauss σ=1.6", "gauss σ=2.5"), "defocus": ("defocus r=1.5", "defocus r=2.5", "defocus r=4"),
             "motion": ("motion L=5", "motion L=9", "motion L=15")}


def _unblurred(rows: dict) -> str:
    return next(f for f in rows["input"]["families"] if f in UNBLURRED)


def _kept_psnr(rows: dict) -> float | None:
    """Method psf's worst un-blurred image (dB against itself): ∞ when all came back unchanged, None when not recorded.

    The mean says nothing once one image is given back unchanged (it is ∞) and a finite one hides a harmed image, so
    rows without the per-image minimum (written before it was recorded) count as not measured.
    """
    return rows[ESTIMATED_ROW]["families"][_unblurred(rows)].get("min_psnr")


def _kept(psnr: float | None) -> str:
    if psnr is None:
        return "not recorded (∞ in the mean: re-run the benchmark)"
    return f"≥ {psnr:.2f} dB (worst image)" if math.isfinite(psnr) else "every image given back unchanged"


def _kept_ok(psnr: float | None) -> bool:
    return psnr is not None and psnr >= KEPT_DB


def _worst_blur(rows: dict) -> tuple[str, float]:
    """(family, gain) of method psf's worst blur family (the un-blurred one has its own ≥ 45 dB rule)."""
    gains = {f: _gain(rows[ESTIMATED_ROW], rows["input"], f) for f in rows["input"]["families"] if f not in UNBLURRED}
    worst = min(gains, key=gains.get)
    return worst, gains[worst]


def ship_rule(quality: dict[str, dict]) -> tuple[bool, list[str]]:
    """(whether method psf may become the default, why not): it must beat the blind default's mean on every protocol,
    keep every family at or above its input and give un-blurred inputs back at ≥ 45 dB."""
    reasons = []
    for protocol in PROTOCOL_TITLES:
        if protocol not in quality:
            reasons.append(f"{PROTOCOL_TITLES[protocol]} not measured")
            continue
        rows = quality[protocol]["rows"]
        if rows[ESTIMATED_ROW]["mean_psnr"] <= rows[BLIND_ROW]["mean_psnr"]:
            reasons.append(f"{PROTOCOL_TITLES[protocol]}: mean {rows[ESTIMATED_ROW]['gain_psnr']:+.2f} vs the default's {rows[BLIND_ROW]['gain_psnr']:+.2f} dB")
        family, gain = _worst_blur(rows)
        if gain < 0:
            reasons.append(f"{PROTOCOL_TITLES[protocol]}: {family} {gain:+.2f} dB below its input")
        kept = _kept_psnr(rows)
        if not _kept_ok(kept):
            reasons.append(f"{PROTOCOL_TITLES[protocol]}: un-blurred inputs {_kept(kept)}")
    return not reasons, reasons


def estimated_targets(quality: dict[str, dict], estimation: dict | None, speed: dict | None) -> list[tuple[str, str, bool]]:
    checks = []
    if "full" in quality:
        rows = quality["full"]["rows"]
        checks.append(("full resolution: mean gain ≥ Richardson–Lucy with the true kernel",
                       f"{rows[ESTIMATED_ROW]['gain_psnr']:+.2f} vs {rows[RL_ROW]['gain_psnr']:+.2f} dB", rows[ESTIMATED_ROW]["gain_psnr"] >= rows[RL_ROW]["gain_psnr"]))
        shake = next((f for f in rows["input"]["families"] if f.startswith("shake")), None)
        if shake:
            gain = rows[ESTIMATED_ROW]["families"][shake]["psnr"] - rows["input"]["families"][shake]["psnr"]
            checks.append(("full resolution: camera shake ≥ +2.5 dB", f"{gain:+.2f} dB", gain >= 2.5))
    if "seed" in quality:
        gain = quality["seed"]["rows"][ESTIMATED_ROW]["gain_psnr"]
        checks.append(("256×256: mean gain ≥ +3.0 dB", f"{gain:+.2f} dB", gain >= 3.0))
    worst = {p: _worst_blur(q["rows"]) for p, q in quality.items()}
    below = [f"{PROTOCOL_TITLES[p]} {family} {gain:+.2f}" for p, (family, gain) in worst.items() if gain < 0]
    checks.append(("no blur family below its input at any protocol measured",
                   "; ".join(below) or "worst: " + ", ".join(f"{PROTOCOL_TITLES[p]} {g:+.2f} ({f})" for p, (f, g) in worst.items()), not below))
    kept = {p: _kept_psnr(q["rows"]) for p, q in quality.items()}
    checks.append((f"un-blurred input kept ≥ {KEPT_DB:g} dB everywhere (every image)",
                   ", ".join(f"{PROTOCOL_TITLES[p]} {_kept(v)}" for p, v in kept.items()), all(map(_kept_ok, kept.values()))))
    missing = [PROTOCOL_TITLES[p] for p in PROTOCOL_TITLES if p not in quality]
    if missing:
        checks.append(("the rows above on every protocol", "not measured yet: " + ", ".join(missing), False))
    if estimation is not None and "estimate" in estimation:
        rows = estimation["estimate"]["rows"]
        for family, labels in SIZE_ROWS.items():
            shown = [label for label in labels if label in rows]
            motion = family == "motion"
            errors = {label: rows[label]["median_size_error"] for label in shown}
            checks.append((f"estimation: {family} size within {'2 px' if motion else '15 %'} (median over the full-resolution test images)",
                           ", ".join(f"{label} {e:.2f} px" if motion else f"{label} {100 * e:.1f} %" for label, e in errors.items())
                           + " (within: " + ", ".join(f"{100 * rows[label]['within_target']:.0f} %" for label in shown) + " of images)",
                           all(e is not None and e <= rows[label]["target"] for label, e in errors.items())))
    if estimation is not None and "guard" in estimation:
        rows = estimation["guard"]["rows"]
        checks.append(("consistency check: false alarms on good restorations of the validation mix (true PSF)",
                       f"{100 * rows['true PSF']['flagged_at_limit']:.1f} % at limit {estimation['guard']['limit']:g}; wrong PSFs caught "
                       f"{100 * rows['wrong PSF']['flagged_at_limit']:.0f} %", rows["true PSF"]["flagged_at_limit"] <= 0.05))
    if speed is not None:
        ratios = [r["ratio"] for r in speed["rows"] if r["image"] == "1024x768" and "result" in r]
        if ratios:
            checks.append((f"cost ≤ {ESTIMATED_COST_LIMIT:g}× the blind model per 1024×768", f"{min(ratios):.2f}–{max(ratios):.2f}×", max(ratios) <= ESTIMATED_COST_LIMIT))
    return checks


def estimated_section(quality: dict[str, dict], results: Path) -> list[str]:
    """The card's lines for method psf (estimate the blur, restore, check); none before it has been benchmarked."""
    quality = {p: q for p, q in quality.items() if ESTIMATED_ROW in q["rows"]}
    if not quality:
        return []
    estimation_file, speed_file = results / "psf_estimation.json", results / "psf_speed.json"
    estimation = json.loads(estimation_file.read_text()) if estimation_file.is_file() else None
    speed = json.loads(speed_file.read_text()) if speed_file.is_file() else None
    ids = {q["rows"][ESTIMATED_ROW]["model"]["estimator_id"] for q in quality.values()}
    lines = ["", "## Estimating the blur (`--method psf`)", "",
             f"The blur estimator (id `{'`, `'.join(sorted(ids))}`) names each image's blur from its power spectrum; the kernel-conditioned "
             "model restores with it; the consistency check falls back to the blind default when the output does not explain its input "
             "(docs/psf.md). Mean gain over the blur families (dB over the input) and the worst family:", "",
             "| protocol | blind default | method psf | worst blur family vs input (method psf) | un-blurred kept |", "|---|---|---|---|---|"]
    for protocol, result in quality.items():
        rows = result["rows"]
        family, gain = _worst_blur(rows)
        lines.append(f"| {PROTOCOL_TITLES[protocol]} | {rows[BLIND_ROW]['gain_psnr']:+.2f} | {rows[ESTIMATED_ROW]['gain_psnr']:+.2f} | "
                     f"{gain:+.2f} ({family}) | {_kept(_kept_psnr(rows))} |")
    lines += family_tables(quality, (BLIND_ROW, ESTIMATED_ROW))
    allowed, reasons = ship_rule(quality)
    lines += ["", "Default method: " + ("method psf beats the blind network by the ship rule." if allowed else
                                        "the blind network stays the default (method psf must beat it on every protocol's mean, keep "
                                        "every family at or above its input and un-blurred inputs at ≥ 45 dB): " + "; ".join(reasons) + "."),
              "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {'yes' if met else '**no**'} |" for name, measured, met in estimated_targets(quality, estimation, speed)]
    return lines
