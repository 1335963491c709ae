"""The plug-and-play restorer's own measurements: its schedule chosen on validation images, quality against the number
of iterations, and its denoiser's PSNR per noise level (DPIR's table).

A script, not a test. Parts (``--part``, default all):
  tune        — each (noise_floor, weight, iterations) of the grid on ``--val`` validation images (the full- and
                half-resolution protocols of ``benchmarks.quality``, centre crops of ``--crop`` px), told the true
                kernel of every blur family; the best mean is what :class:`meddeblur.restore.pnp.PnPSettings` ships with;
  iterations  — 2 / 4 / 6 / 8 iterations with the shipped settings otherwise, on the same crops, beside
                Richardson–Lucy (30 iterations) and Wiener (NSR 0.01) with the true kernel;
  denoiser    — PSNR of the shipped denoiser at σ = 5, 15, 25, 50 (8-bit levels) on ``--crops`` crops of the test images.

    python -m benchmarks.pnp                           # writes benchmarks/results/pnp.{json,md}
    python -m benchmarks.pnp --part tune --val 2 --crop 128 --out /tmp/x   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

from meddeblur.degradation.spec import parse_spec
from meddeblur.io.listing import list_images
from meddeblur.metrics import ReferenceScorer
from meddeblur.models.denoiser import DENOISER_WEIGHTS, load_denoiser
from meddeblur.restore.classical import richardson_lucy, wiener
from meddeblur.restore.pnp import PnPSettings, plug_and_play
from meddeblur.training.denoiser import denoiser_scores, load_images

from benchmarks import quality  # the protocols and their degradations
from benchmarks.common import (ISIC, PNP_ROW, PROTOCOL_TITLES, PSF_ROW, RESULTS, RL_ROW, UNBLURRED, WIENER_ROW, command as result_command,
                               machine_line, write_result)

FAMILIES = {k: v for k, v in quality.FAMILIES.items() if k not in UNBLURRED}
FLOORS = (1.0, 2.0, 3.0)  # 8-bit levels
WEIGHTS = (0.12, 0.25, 0.5)
TUNED_ITERATIONS = (8,)
ITERATIONS = (2, 4, 6, 8)
PROTOCOLS = ("full", "half")


def crops(isic: Path, names: list[str], side: int) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per blur family, (blurred, sharp, kernel) centre crops of the images ``names`` in each of :data:`PROTOCOLS`."""
    images = {p.stem: p for p in list_images(isic / "images")}
    out: dict[str, list] = {}
    for family, spec in FAMILIES.items():
        out[family] = []
        for protocol in PROTOCOLS:
            for name in names:
                blurred, sharp, kernel = quality.prepare(images[name], protocol, parse_spec(spec), name)
                h, w = sharp.shape[:2]
                top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
                window = (slice(top, top + side), slice(left, left + side))
                out[family].append((blurred[window], sharp[window], kernel))
    return out


def pnp_psnr(samples: list, denoiser: torch.nn.Module, settings: PnPSettings) -> float:
    scores = []
    for blurred, sharp, kernel in samples:
        with torch.no_grad():
            restored = plug_and_play(torch.from_numpy(np.ascontiguousarray(blurred.transpose(2, 0, 1)))[None], kernel, denoiser, settings)
        scores.append(ReferenceScorer(sharp)(restored[0].clamp(0, 1).numpy().transpose(1, 2, 0))[0])
    return statistics.fmean(scores)


def tune(samples: dict[str, list], denoiser: torch.nn.Module) -> dict:
    rows = []
    for floor in FLOORS:
        for weight in WEIGHTS:
            for count in TUNED_ITERATIONS:
                settings = PnPSettings(noise_floor=floor / 255.0, weight=weight, iterations=count)
                per_family = {family: round(pnp_psnr(s, denoiser, settings), 3) for family, s in samples.items()}
                rows.append({"noise_floor_levels": floor, "weight": weight, "iterations": count, "families": per_family,
                             "mean": round(statistics.fmean(per_family.values()), 3)})
                print(f"tune floor {floor} weight {weight} iterations {count}: {rows[-1]['mean']:.3f} {per_family}", flush=True)
    best = max(rows, key=lambda r: r["mean"])
    return {"rows": rows, "best": best}


def iterations(samples: dict[str, list], denoiser: torch.nn.Module) -> dict:
    rows = []
    for count in ITERATIONS:
        per_family = {family: round(pnp_psnr(s, denoiser, replace(PnPSettings(), iterations=count)), 3) for family, s in samples.items()}
        rows.append({"method": f"pnp, {count} iterations", "families": per_family, "mean": round(statistics.fmean(per_family.values()), 3)})
        print(rows[-1], flush=True)
    for label, restore in (("input", lambda b, k: b), ("Wiener (NSR 0.01)", lambda b, k: wiener(b, k, 0.01)),
                           ("Richardson–Lucy (30)", lambda b, k: richardson_lucy(b, k, 30))):
        per_family = {family: round(statistics.fmean(ReferenceScorer(sharp)(restore(blurred, kernel))[0] for blurred, sharp, kernel in s), 3)
                      for family, s in samples.items()}
        rows.append({"method": label, "families": per_family, "mean": round(statistics.fmean(per_family.values()), 3)})
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", default=["tune", "iterations", "denoiser"], choices=("tune", "iterations", "denoiser"))
    parser.add_argument("--isic", type=Path, default=ISIC)
    parser.add_argument("--val", type=int, default=4, help="validation images for tune and iterations")
    parser.add_argument("--crop", type=int, default=192, help="centre crop side for tune and iterations")
    parser.add_argument("--crops", type=int, default=96, help="test crops per noise level for the denoiser table")
    parser.add_argument("--denoiser", type=Path, default=DENOISER_WEIGHTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.isic / "images").is_dir():
        sys.exit(f"{args.isic}: ISIC images not found; pass --isic DIR or set MEDDEBLUR_ISIC_DIR")
    torch.set_num_threads(args.threads)
    denoiser = load_denoiser(args.denoiser)
    split = quality.load_split(list_images(args.isic / "images"))
    path = args.out / "pnp.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update({"machine": f"{machine_line()}, {args.threads} thread(s)", "date": date.today().isoformat(),
                   "denoiser": str(args.denoiser.name), "settings": asdict(PnPSettings())})
    command = result_command("pnp", argv)
    if {"tune", "iterations"} & set(args.part):
        samples = crops(args.isic, split["val"][: args.val], args.crop)
        if "tune" in args.part:
            result["tune"] = {**tune(samples, denoiser), "command": command, "images": args.val, "crop": args.crop}
        if "iterations" in args.part:
            result["iterations"] = {**iterations(samples, denoiser), "command": command, "images": args.val, "crop": args.crop}
    if "denoiser" in args.part:
        test = load_images([p for p in list_images(args.isic / "images") if p.stem in set(split["test"])])
        result["denoiser_table"] = {"psnr": denoiser_scores(denoiser, test, args.crops, crop=128, seed=7), "crops": args.crops,
                                    "command": command}
    result["command"] = command  # the last run's, beside each part's own
    write_result("pnp", result, render(result), args.out, ensure_ascii=False)
    print(render(result))
    return 0


def render(result: dict) -> str:
    lines = ["# Plug-and-play restorer", "", f"{result['date']}, {result['machine']}; denoiser `{result['denoiser']}`; shipped settings "
             + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result["settings"].items()) + ".", ""]
    families = list(FAMILIES)
    if "tune" in result:
        t = result["tune"]
        lines += ["## Schedule chosen on validation images", "", f"`{t['command']}`: {t['images']} validation images, centre "
                  f"{t['crop']}×{t['crop']} crops in the full- and half-resolution protocols, told the true kernel. PSNR (dB).", "",
                  "| noise floor (levels) | weight λ | iterations | " + " | ".join(families) + " | mean |",
                  "|---|---|---|" + "---|" * (len(families) + 1)]
        lines += [f"| {r['noise_floor_levels']} | {r['weight']} | {r['iterations']} | " + " | ".join(f"{r['families'][f]:.2f}" for f in families)
                  + f" | {'**' if r is t['best'] or r == t['best'] else ''}{r['mean']:.2f}{'**' if r == t['best'] else ''} |" for r in t["rows"]]
        lines.append("")
    if "iterations" in result:
        t = result["iterations"]
        lines += ["## Iterations against quality", "", f"`{t['command']}`: the same crops; the shipped settings but the iteration "
                  "count; classical rows told the same true kernel with the known-blur defaults.", "",
                  "| method | " + " | ".join(families) + " | mean |", "|---|" + "---|" * (len(families) + 1)]
        lines += [f"| {r['method']} | " + " | ".join(f"{r['families'][f]:.2f}" for f in families) + f" | {r['mean']:.2f} |" for r in t["rows"]]
        lines.append("")
    if "denoiser_table" in result:
        t = result["denoiser_table"]
        levels = [k for k in t["psnr"] if k != "mean"]
        lines += ["## The denoiser alone", "", f"`{t['command']}`: {t['crops']} crops (128 px) of the test images per level, white "
                  "Gaussian noise of σ levels added, the denoiser told σ. PSNR (dB).", "",
                  "| σ (8-bit levels) | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels),
                  "| PSNR | " + " | ".join(f"{t['psnr'][k]:.2f}" for k in levels) + " |", ""]
    return "\n".join(lines)




def targets(measured: dict[str, dict], speed: dict | None, calibration: dict | None) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for the plug-and-play restorer's targets."""
    checks = []
    for protocol, result in measured.items():
        rows = result["rows"]
        blurs = [f for f in result["families"] if f not in UNBLURRED]
        leads = {f: rows[PNP_ROW]["families"][f]["psnr"] - rows[RL_ROW]["families"][f]["psnr"] for f in blurs}
        worst = min(leads, key=leads.get)
        mean = rows[PNP_ROW]["mean_psnr"] - rows[RL_ROW]["mean_psnr"]
        checks.append((f"{PROTOCOL_TITLES[protocol]}: every blur family ≥ Richardson–Lucy + 1 dB", f"worst {worst} {leads[worst]:+.2f} dB", leads[worst] >= 1.0))
        checks.append((f"{PROTOCOL_TITLES[protocol]}: mean ≥ Richardson–Lucy + 1 dB", f"{mean:+.2f} dB", mean >= 1.0))
        inner = [(f, rows[PNP_ROW]["families"][f]) for f in blurs if "psnr_inner" in rows[PNP_ROW]["families"][f]]
        if protocol == "full" and inner:
            source = rows["input"]["families"]
            gaps = {f: abs((v["psnr"] - source[f]["psnr"]) - (v["psnr_inner"] - source[f]["psnr_inner"])) for f, v in inner}
            far = max(gaps, key=gaps.get)
            checks.append(("full resolution: whole-image gain within 0.3 dB of the gain 16 px inside, per family",
                           f"largest difference {gaps[far]:.2f} dB ({far})", gaps[far] <= 0.3))
    if calibration and "pnp_calibrated_gain" in calibration.get("soft", {}).get("summary", {}):
        gain = calibration["soft"]["summary"]["pnp_calibrated_gain"]
        checks.append(("calibrated soft device ≥ +2 dB", f"{gain:+.2f} dB", gain >= 2.0))
    if speed:
        shipped = f", {PnPSettings().iterations} iterations"
        rows = [r for r in speed["rows"] if r["image"] == "1024x768" and r["model"].startswith("pnp") and r["model"].endswith(shipped)]
        if rows:
            ratio = max(r["ratio"] for r in rows)
            checks.append(("cost ≤ 3× the blind network per 1024×768", f"{ratio:.2f}× (slowest PSF)", ratio <= 3.0))
    return checks


def card_section(quality_results: dict[str, dict], results: Path) -> list[str]:
    """The model card's lines for the plug-and-play restorer; none before it is shipped and benchmarked."""
    measured = {p: q for p, q in quality_results.items() if PNP_ROW in q["rows"] and PSF_ROW in q["rows"]}
    if not DENOISER_WEIGHTS.is_file() or not measured or not (results / "pnp.json").is_file():
        return []
    from meddeblur.models import weights_id

    model_id = weights_id(DENOISER_WEIGHTS)
    stale = [p for p, q in measured.items() if q["rows"][PNP_ROW]["model"]["id"] != model_id]
    if stale:
        raise SystemExit(f"quality_{stale[0]}.json scores another denoiser; run: python -m benchmarks.quality --protocol all --model pnp "
                         "--methods --keep")
    denoiser = load_denoiser()
    info = json.loads(DENOISER_WEIGHTS.with_suffix(".json").read_text())
    own = json.loads((results / "pnp.json").read_text())
    load = lambda name: json.loads((results / name).read_text()) if (results / name).is_file() else None  # noqa: E731
    speed, calibration, stages = load("pnp_speed.json"), load("calibration.json"), load("denoiser_stages.json")
    settings = own["settings"]
    lines = ["", "## The plug-and-play restorer (a known blur: `--psf … --method pnp`)", "", "| | |", "|---|---|",
             f"| denoiser id | `{model_id}` |",
             f"| file | `src/meddeblur/weights/{DENOISER_WEIGHTS.name}` ({DENOISER_WEIGHTS.stat().st_size / 1e6:.1f} MB) |",
             f"| architecture | {settings['iterations']} half-quadratic-splitting iterations: the denoiser, then the exact FFT data step "
             f"with the given PSF; denoiser: a bias-free residual U-Net at half resolution (pixel-unshuffle 2×), widths "
             f"{'-'.join(map(str, denoiser.widths))}, {denoiser.blocks} residual block(s) per level and side, told the noise level |",
             f"| parameters | {sum(p.numel() for p in denoiser.parameters()):,} |",
             f"| schedule | denoiser σ from {settings['sigma_start'] * 255:.0f} levels down to the image's noise (floor "
             f"{settings['noise_floor'] * 255:.2g} levels), data weight α = {settings['weight']:g} · σₙ² / σᵢ² |", "",
             "Told the true kernel, like every row here (mean gain over the input across the blur families, dB):", "",
             "| protocol | Wiener | Richardson–Lucy | kernel-conditioned network | plug-and-play | plug-and-play − RL | worst family vs input |",
             "|---|---|---|---|---|---|---|"]
    for protocol, result in measured.items():
        rows = result["rows"]
        worst = rows[PNP_ROW]["worst_family_gain"]
        lines.append(f"| {PROTOCOL_TITLES[protocol]} | {rows[WIENER_ROW]['gain_psnr']:+.2f} | {rows[RL_ROW]['gain_psnr']:+.2f} | "
                     f"{rows[PSF_ROW]['gain_psnr']:+.2f} | **{rows[PNP_ROW]['gain_psnr']:+.2f}** | "
                     f"{rows[PNP_ROW]['mean_psnr'] - rows[RL_ROW]['mean_psnr']:+.2f} | {worst['psnr']:+.2f} ({worst['family']}) |")
    lines += ["", "Per family, plug-and-play minus Richardson–Lucy (dB):", ""]
    for protocol, result in measured.items():
        rows = result["rows"]
        lines.append(f"- {PROTOCOL_TITLES[protocol]}: " + ", ".join(
            f"{f} {rows[PNP_ROW]['families'][f]['psnr'] - rows[RL_ROW]['families'][f]['psnr']:+.2f}"
            for f in result["families"] if f not in UNBLURRED))
    if "denoiser_table" in own:
        table = own["denoiser_table"]["psnr"]
        lines += ["", "The denoiser alone, on crops of the test images with white noise added (PSNR, dB): "
                  + ", ".join(f"σ {k}: {v:.2f}" for k, v in table.items() if k != "mean") + " (`benchmarks/results/pnp.md`)."]
    if stages:
        lines += ["", "Trained on sharp crops of the training images with added noise only (never a blur), in stages from the previous "
                  "stage's weights:", "", "| stage | command | minutes | steps | validation PSNR (dB) by σ |", "|---|---|---|---|---|"]
        lines += [f"| {i}{' (shipped)' if i == stages['shipped_stage'] else ''} | `{st['command']}` | {st['minutes']:.0f} | {st['steps']} | "
                  + ", ".join(f"{k}: {v}" for k, v in st["validation"].items()) + " |" for i, st in enumerate(stages["stages"], 1)]
        lines += [f"\nStage {i} was not shipped: {why}." for i, why in stages.get("not_shipped", {}).items()]
    if speed:
        blind = next(r for r in speed["rows"] if r["model"].startswith("blind"))
        lines += ["", f"Time per 1024×768 image (`{speed['command']}`, {speed['machine']}, median of {speed['repeats']}): blind network "
                  f"{blind['median_s']:.2f} s; " + "; ".join(f"{r['model']} told `{r['psf']}` {r['median_s']:.2f} s ({r['ratio']:.2f}×)"
                                                         for r in speed["rows"] if r["model"].startswith("pnp")) + "."]
    if calibration and "pnp_calibrated_gain" in calibration.get("soft", {}).get("summary", {}):
        summary = calibration["soft"]["summary"]
        lines += ["", f"Calibrated soft device (`benchmarks/results/calibration.md`): {summary['pnp_calibrated_gain']:+.2f} dB with the "
                  f"calibrated PSF (kernel-conditioned network {summary['network_calibrated_gain']:+.2f}, Richardson–Lucy "
                  f"{summary['rl_calibrated_gain']:+.2f})."]
    lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {value} | {'yes' if met else '**no**'} |" for name, value, met in targets(measured, speed, calibration)]
    lines += ["", f"Denoiser weights: {info.get('step', '?')} steps in their last stage."]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
