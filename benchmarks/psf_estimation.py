"""Blur estimation and the consistency check, measured: how well the PSF is found, and what the check tells apart.

A script, not a test. Two parts:

* ``estimate`` — full-resolution ISIC test images (benchmarks/isic_split.json), each degraded per family with the
  test degradation (seeded by the image name, 8-bit); the PSF estimated from the whole image
  (:func:`meddeblur.psf.estimate.estimate_psf`). Per family: family named right, size error (Gaussian σ and defocus
  radius relative, motion length in px), kernel error (‖k̂ − k‖ / ‖k‖ on a common canvas), MTF50 error, confidence, time.
* ``guard`` — the validation mix (the 111 val images as the training validation draws them: 256-px crops at native,
  ½ and ¼ scale, half from a softened source, the ``real`` families, un-blurred ones included). Each sample is restored
  by the kernel-conditioned network with its true PSF, with the estimated PSF, and with a deliberately wrong one (the
  Gaussian of the true kernel's moments, its σ doubled plus 1 px); the consistency residual ratio of each
  (:mod:`meddeblur.inference.consistency`) gives the false-alarm rate of the limit on good restorations and its
  detection rate on wrong ones.

    python -m benchmarks.psf_estimation                 # both parts → benchmarks/results/psf_estimation.{json,md}
    python -m benchmarks.psf_estimation --part guard --limit-images 40
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meddeblur.data.pairs import read_split, select, sharp_only
from meddeblur.data.sampling import ScaledCrops
from meddeblur.degradation.spec import parse_spec
from meddeblur.inference.consistency import LIMIT, consistency
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.listing import list_images
from meddeblur.physics import canvas_radius, kernel_canvas
from meddeblur.psf import psf_from_array, psf_from_spec
from meddeblur.psf.estimate import BlurEstimator, gaussian_of_moments

from benchmarks import quality  # its split and image preparation are reused
from benchmarks.common import ISIC, RESULTS, SPLIT, command, machine_line, write_result

FAMILIES = {
    "gauss σ=1.0": "gauss:sigma=1.0", "gauss σ=1.6": "gauss:sigma=1.6", "gauss σ=2.5": "gauss:sigma=2.5",
    "gauss 2.0×1.0": "gauss:sigma=2.0,sigma_y=1.0,angle=0..180",
    "defocus r=1.5": "defocus:radius=1.5", "defocus r=2.5": "defocus:radius=2.5", "defocus r=4": "defocus:radius=4",
    "motion L=5": "motion:length=5,angle=0..180", "motion L=9": "motion:length=9,angle=0..180", "motion L=15": "motion:length=15,angle=0..180",
    "gauss σ=1.6 + JPEG 85": "gauss:sigma=1.6+jpeg:quality=85", "shake 9": "shake:extent=9",
    "down×2 → PIL bicubic": "resample:scale=2,down=box,up=bicubic,lib=pil", "none": "none",
}
SIZE_KEY = {"gauss": "sigma", "defocus": "radius", "motion": "length"}
TARGETS = {"gauss": 0.15, "defocus": 0.15, "motion": 2.0}  # relative, relative, px
PSNR_CAP = 60.0  # dB: an un-blurred input equals its 8-bit target (∞ dB); outputs are scored up to this
CONFIDENCE_GRID = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def kernel_error(estimated: np.ndarray, true: np.ndarray) -> float:
    side = max(*estimated.shape, *true.shape)
    a, b = (kernel_canvas(k, side, side).double().numpy() for k in (estimated, true))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _true_size(family: str, params: dict) -> float | None:
    if family == "gauss":
        return max(params["sigma"], params.get("sigma_y", params["sigma"]))
    key = SIZE_KEY.get(family)
    return None if key is None else float(params[key])


def part_estimate(isic: Path, limit: int | None) -> dict:
    images = {p.stem: p for p in list_images(isic / "images")}
    split = quality.load_split(list(images.values()))
    names = split["test"][:limit] if limit else split["test"]
    estimator = BlurEstimator.load()
    rows = {}
    for label, spec_text in FAMILIES.items():
        spec = parse_spec(spec_text)
        entries = []
        for name in names:
            blurred, _, kernel = quality.prepare(images[name], "full", spec, name)
            truth_family = spec.family
            t0 = time.perf_counter()
            estimate = estimator.estimate(blurred)
            seconds = time.perf_counter() - t0
            entry = {"family_ok": estimate.family == truth_family or (truth_family in ("shake", "resample") and estimate.family == "gauss"),
                     "named": estimate.family, "confidence": estimate.confidence, "seconds": seconds}
            if truth_family != "none":
                entry["kernel_error"] = kernel_error(estimate.psf.kernel, kernel)
                true_mtf50 = psf_from_array(kernel).mtf50
                entry["mtf50_error"] = None if true_mtf50 is None or estimate.psf.mtf50 is None else abs(estimate.psf.mtf50 - true_mtf50) / true_mtf50
            if truth_family in SIZE_KEY and estimate.family == truth_family:
                params = dict(spec.params)
                true_size = _true_size(truth_family, params)
                guess = _true_size(truth_family, estimate.params)
                entry["size_error"] = abs(guess - true_size) if truth_family == "motion" else abs(guess - true_size) / true_size
            entries.append(entry)
        rows[label] = summarise_estimates(entries, spec.family)
        print(f"[estimate] {label}: {rows[label]}", flush=True)
    return {"images": len(names), "families": FAMILIES, "rows": rows}


def summarise_estimates(entries: list[dict], family: str) -> dict:
    def median(key: str) -> float | None:
        values = [e[key] for e in entries if e.get(key) is not None]
        return round(statistics.median(values), 4) if values else None

    row = {"family_named_right": round(sum(e["family_ok"] for e in entries) / len(entries), 4), "median_confidence": median("confidence"),
           "median_kernel_error": median("kernel_error"), "median_mtf50_error": median("mtf50_error"),
           "ms_per_image": round(1000 * statistics.fmean(e["seconds"] for e in entries), 1),
           "named": {n: sum(e["named"] == n for e in entries) for n in sorted({e["named"] for e in entries})}}
    sizes = [e["size_error"] for e in entries if "size_error" in e]
    if family in TARGETS:
        row["median_size_error"] = round(statistics.median(sizes), 4) if sizes else None
        row["within_target"] = round(sum(s <= TARGETS[family] for s in sizes) / len(entries), 4)  # misnamed count as misses
        row["target"] = TARGETS[family]
    return row


def _wrong_psf(kernel: np.ndarray):
    major, minor, angle = gaussian_of_moments(kernel) if kernel.size > 1 else (0.3, 0.3, 0.0)
    return psf_from_spec(f"gauss:sigma={2 * major + 1:.3f},sigma_y={2 * minor + 1:.3f},angle={angle:.1f}")


def _kernel_of(canvas: np.ndarray) -> np.ndarray:
    r = canvas_radius(torch.from_numpy(canvas)[None])
    cy, cx = canvas.shape[0] // 2, canvas.shape[1] // 2
    return canvas[cy - r : cy + r + 1, cx - r : cx + r + 1]


def _psnr(score, image: np.ndarray) -> float:
    return min(float(score(image)[0]), PSNR_CAP)


def part_guard(isic: Path, limit: int | None) -> dict:
    """Per validation-mix sample: consistency ratios (true / estimated / wrong PSF) and PSNRs of each way to restore it."""
    from meddeblur.metrics import ReferenceScorer

    split = read_split(SPLIT)
    names = split["val"][:limit] if limit else split["val"]
    pairs = select(sharp_only(isic / "images"), names, "val")
    samples = ScaledCrops(pairs, 256, (1.0, 1.0), parse_spec("real"), 0, fixed=True, psf=True)
    network = Deblurrer.load(None, device="cpu", tile=0)
    estimated = network.with_estimated_psf()
    estimator = BlurEstimator.load()  # the shipped weights, as the pipeline loads them
    entries = []
    for index in range(len(samples)):
        stacked, target = samples[index]
        blurred, sharp = stacked[:3].numpy().transpose(1, 2, 0), target.numpy().transpose(1, 2, 0)
        true = psf_from_array(_kernel_of(stacked[3].numpy()))
        score = ReferenceScorer(sharp)
        entry = {"blurred": not true.is_delta, "input": _psnr(score, blurred), "blind": _psnr(score, network(blurred))}
        if not true.is_delta:
            entry["true_ratio"] = consistency(blurred, network(blurred, psf=true), true).ratio
        guess = estimator.estimate(blurred)
        entry.update(family=guess.family, confidence=guess.confidence)
        with_guess = blurred if guess.family == "none" or guess.psf.is_delta else network(blurred, psf=guess.psf)
        entry["with_estimate"] = _psnr(score, with_guess)
        entry["estimated_ratio"] = consistency(blurred, with_guess, guess.psf).ratio
        restored, record = estimated.restore_rgb(blurred)
        entry.update(pipeline=_psnr(score, restored), result=record["result"])
        wrong = _wrong_psf(true.kernel)
        entry["wrong_ratio"] = consistency(blurred, network(blurred, psf=wrong), wrong).ratio
        entries.append(entry)
    return summarise_guard(entries, estimator.weights_id)


def summarise_guard(entries: list[dict], estimator: str) -> dict:
    table = {}
    for label, key in (("true PSF", "true_ratio"), ("estimated PSF", "estimated_ratio"), ("wrong PSF", "wrong_ratio")):
        values = np.asarray([e[key] for e in entries if key in e])
        table[label] = {"samples": int(values.size), "median_ratio": round(float(np.median(values)), 3),
                        "p95_ratio": round(float(np.percentile(values, 95)), 3), "flagged_at_limit": round(float((values > LIMIT).mean()), 4)}
    blurred = [e for e in entries if e["blurred"]]
    sharp = [e for e in entries if not e["blurred"]]

    def mean(rows: list[dict], key: str) -> float:
        return round(statistics.fmean(r[key] for r in rows), 3) if rows else float("nan")

    ways = {way: {"blurred": mean(blurred, way), "sharp": mean(sharp, way)} for way in ("input", "blind", "with_estimate", "pipeline")}
    thresholds = {}
    for t in CONFIDENCE_GRID:  # low-confidence blur estimates → the blind network; the rest as with_estimate
        chosen = [e["blind"] if e["family"] != "none" and e["confidence"] < t else e["with_estimate"] for e in blurred]
        thresholds[str(t)] = round(statistics.fmean(chosen), 3) if chosen else None
    named_none = [e for e in entries if e["family"] == "none"]
    results: dict[str, int] = {}
    for e in entries:
        results[e["result"]] = results.get(e["result"], 0) + 1
    for label, row in table.items():
        print(f"[guard] {label}: {row}", flush=True)
    return {"samples": len(entries), "estimator_id": estimator, "limit": LIMIT, "rows": table, "estimated_results": results,
            "psnr": ways, "confidence_thresholds": thresholds,
            "named_none": {"samples": len(named_none), "identity": mean(named_none, "input"), "blind": mean(named_none, "blind")},
            "entries": entries}


def _ran(part: dict) -> str:
    return f"Machine: {part['machine']}. Command: `{part['command']}`."


def markdown(result: dict) -> str:
    lines = ["# Blur estimation and the consistency check", ""]
    if "estimate" in result:
        est = result["estimate"]
        lines += [f"## Estimating the PSF ({est['images']} full-resolution ISIC test images, whole-image estimate)", "",
                  _ran(est), "",
                  "Size error: Gaussian σ (major axis) and defocus radius relative, motion length in px; *within target*: share of "
                  "images whose family was named right and whose size error is within 15 % (σ, radius) or 2 px (length). Shake and "
                  "resampling count as named right when estimated as a Gaussian (the family the estimator uses for them).", "",
                  "| blur | family named right | named | median size error | within target | median kernel error | median MTF50 error | median confidence | ms / image |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label, row in est["rows"].items():
            named = ", ".join(f"{k} {v}" for k, v in row["named"].items())
            size = "—" if row.get("median_size_error") is None else (f"{row['median_size_error']:.2f} px" if row.get("target") == 2.0
                                                                      else f"{100 * row['median_size_error']:.1f} %")
            within = "—" if "within_target" not in row else f"{100 * row['within_target']:.0f} %"
            kernel = "—" if row["median_kernel_error"] is None else f"{row['median_kernel_error']:.2f}"
            mtf = "—" if row["median_mtf50_error"] is None else f"{100 * row['median_mtf50_error']:.1f} %"
            lines.append(f"| {label} | {100 * row['family_named_right']:.0f} % | {named} | {size} | {within} | {kernel} | {mtf} | "
                         f"{row['median_confidence']:.2f} | {row['ms_per_image']:.0f} |")
        lines.append("")
    if "guard" in result:
        guard = result["guard"]
        lines += [f"## The consistency check on the validation mix ({guard['samples']} samples, limit {guard['limit']})", "",
                  _ran(guard), "",
                  "Ratio: the worst 32-px block's RMS of input − re-blurred output over the input's noise floor. *flagged*: share above "
                  "the limit — on good restorations a false alarm, on wrong ones a detection.", "",
                  "| restored with | samples | median ratio | 95th percentile | flagged at the limit |", "|---|---|---|---|---|"]
        for label, row in guard["rows"].items():
            lines.append(f"| {label} | {row['samples']} | {row['median_ratio']:.2f} | {row['p95_ratio']:.2f} | {100 * row['flagged_at_limit']:.1f} % |")
        lines += ["", "Estimated-PSF results on the mix: " + ", ".join(f"{k} {v}" for k, v in sorted(guard["estimated_results"].items())), "",
                  f"## Choosing what to do with an estimate (the same {guard['samples']} samples; PSNR in dB, capped at {PSNR_CAP:.0f})", "",
                  "| restored by | blurred samples | un-blurred samples |", "|---|---|---|"]
        names = {"input": "nothing (the input)", "blind": "the blind network", "with_estimate": "the estimated PSF (no check, no fallback)",
                 "pipeline": "method psf (estimate, decide, check)"}
        for way, row in guard["psnr"].items():
            lines.append(f"| {names[way]} | {row['blurred']:.2f} | {row['sharp']:.2f} |")
        lines += ["", "Blurred samples, when estimates below a confidence go to the blind network instead: " +
                  ", ".join(f"{t}: {v:.2f} dB" for t, v in guard["confidence_thresholds"].items()) + ".", "",
                  f"Samples the estimator called un-blurred: {guard['named_none']['samples']}; left as they are "
                  f"{guard['named_none']['identity']:.2f} dB, through the blind network {guard['named_none']['blind']:.2f} dB.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", nargs="+", choices=("estimate", "guard"), default=["estimate", "guard"])
    parser.add_argument("--isic", type=Path, default=ISIC)
    parser.add_argument("--limit-images", type=int, help="only the first N images of each part")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.isic / "images").is_dir():
        sys.exit(f"{args.isic}: ISIC images not found; pass --isic DIR or set MEDDEBLUR_ISIC_DIR")
    path = args.out / "psf_estimation.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    ran = {  # each part records where it ran: parts can run apart
           "machine": f"{machine_line()}, {torch.get_num_threads()} thread(s)",
           "command": command("psf_estimation", argv)}
    if "estimate" in args.part:
        result["estimate"] = {**part_estimate(args.isic, args.limit_images), **ran}
    if "guard" in args.part:
        result["guard"] = {**part_guard(args.isic, args.limit_images), **ran}
    result.update(ran)  # the last run's, beside each part's own
    write_result("psf_estimation", result, markdown(result), args.out, indent=1, ensure_ascii=False)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
