"""Calibration benchmark: how well ``meddeblur calibrate`` measures a device, and what its PSF is worth for restoring.

A script, not a test. Three parts (``--parts``):
  accuracy — generated slanted-edge charts (the tilted square, point-sampled: its own MTF is 1) blurred by Gaussians
             σ 0.8–3 and defocus disks r 1–4, each also through JPEG 90 and all 8-bit: MTF50 measured by calibrate vs
             the kernel's own (meddeblur.psf), target within 5 %;
  soft     — the "soft device": the scene is each half-size ISIC test image (benchmarks/quality.py's half protocol),
             the device a Gaussian of σ drawn per image in 0.7–1.0 (quality.py's soft_sigma) and JPEG 95. The PSF is
             what calibrate measures on a chart photographed through that same device; the device's image restored with
             it (--restorer) is scored against the scene: PSNR gain over the device's own image, target ≥ +2 dB. The same
             restorer with the true Gaussian is shown as the ceiling calibration can reach;
  charts   — MTF50 of the chart as the device delivers it (input), restored (with the family's true kernel and with
             the calibrated PSF) and sharp, for quality.py's blur families.
Classical restorers (wiener, rl) take their parameters from the validation split: for the soft device tuned here on
validation images with their calibrated PSFs, for the families the half protocol's (quality.py's cache, else tuned the
same way). ``network`` is the kernel-conditioned model: ``meddeblur.Deblurrer.load(--model)(image, psf=psf)``.

    python -m benchmarks.calibration                                  # all parts, wiener and rl
    python -m benchmarks.calibration --parts soft charts --restorer network --model runs/psf
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from meddeblur.data.pairs import fixed_degradation
from meddeblur.degradation.spec import parse_spec
from meddeblur.evaluation.classical import METHODS, restore, tune
from meddeblur.io.listing import list_images
from meddeblur.metrics import ReferenceScorer
from meddeblur.psf import EdgeError, calibrate, edge_chart, load_psf, measure_edges, mtf50

from benchmarks import quality  # its protocols and tuning are reused, not copied
from benchmarks.common import ISIC, RESULTS, command, machine_line, write_result

ACCURACY = {"Gaussian σ=0.8": "gauss:sigma=0.8", "Gaussian σ=1": "gauss:sigma=1", "Gaussian σ=1.5": "gauss:sigma=1.5",
            "Gaussian σ=2": "gauss:sigma=2", "Gaussian σ=3": "gauss:sigma=3", "defocus r=1": "defocus:radius=1",
            "defocus r=2": "defocus:radius=2", "defocus r=3": "defocus:radius=3", "defocus r=4": "defocus:radius=4"}
TOLERANCE = 0.05  # MTF50 within 5 %
GAIN_TARGET = 2.0  # dB over the device's own images
CHART = 320  # px: the square's sides are 192 px, room for a 64-px ESF on each side
RESTORERS = {"wiener": "Wiener", "rl": "Richardson-Lucy", "network": "network (kernel-conditioned)", "pnp": "plug-and-play"}
LEARNED = ("network", "pnp")  # restored through Deblurrer, no parameters to tune


def photograph(image: np.ndarray, device: str, name: str = "chart") -> np.ndarray:
    """``image`` (H, W, 3) through ``device`` (a --degrade spec), 8-bit; fixed per name, as quality.py's test inputs are."""
    made, _ = fixed_degradation(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), parse_spec(device), name)
    return made.numpy().transpose(1, 2, 0)


def chart_mtf50(image: np.ndarray) -> float | None | str:
    """MTF50 of a chart (mean over its edges), None above Nyquist, or why no edge could be measured."""
    try:
        edges = measure_edges(image)
    except EdgeError as error:
        return f"not measurable: {error}".split(";")[0]
    return mtf50(edges[0].freqs, np.mean([e.mtf for e in edges], axis=0))


def accuracy() -> dict:
    rows = []
    chart = edge_chart(CHART, CHART)
    for label, spec in ACCURACY.items():
        true = load_psf(spec).mtf50
        for jpeg in ("", "+jpeg:quality=90"):
            psf = calibrate(photograph(chart, spec + jpeg))
            measured = psf.extra["calibration"]["measured_mtf50_cycles_per_pixel"]
            error = measured / true - 1
            rows.append({"blur": label, "spec": spec + jpeg, "true_mtf50": round(true, 5), "measured_mtf50": measured,
                         "psf_mtf50": round(psf.mtf50, 5), "error_percent": round(100 * error, 2), "pass": abs(error) <= TOLERANCE,
                         "psf_size": psf.kernel.shape[0]})
            print(f"[accuracy] {label}{' + JPEG 90' if jpeg else ''}: true {true:.4f}, measured {measured:.4f} ({100 * error:+.2f} %)",
                  flush=True)
    return {"rows": rows, "passed": sum(r["pass"] for r in rows), "total": len(rows),
            "max_abs_error_percent": max(abs(r["error_percent"]) for r in rows)}


def restorers(names: list[str], model: str | None) -> dict[str, Callable[..., np.ndarray]]:
    """Name → restore(image, kernel, **params); the network ignores params."""
    out = {}
    for name in names:
        if name in LEARNED:
            from meddeblur.inference.deblurrer import Deblurrer

            deblurrer = Deblurrer.load(model if name == "network" else None, device="cpu", tile=0)
            out[name] = lambda image, kernel, _m=name, **_: np.asarray(deblurrer(np.ascontiguousarray(image, dtype=np.float32), psf=kernel,
                                                                                method=_m))
        else:
            out[name] = lambda image, kernel, _m=name, **params: restore(_m, image, kernel, **params)
    return out


def _grid(name: str) -> tuple:
    return quality.RL_GRID if name == "rl" else METHODS[name].grid


def soft_device(isic: Path, names: list[str], model: str | None, limit: int | None, val_limit: int) -> dict:
    images = {p.stem: p for p in list_images(isic / "images")}
    split = quality.load_split(list(images.values()))
    chart = edge_chart(CHART, CHART)

    def sample(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        scene = quality.target_image(images[name], "half")
        sigma = quality.soft_sigma(name)
        device = f"gauss:sigma={sigma:.4f}+jpeg:quality=95"
        psf = calibrate(photograph(chart, device))
        info = {"sigma": round(sigma, 4), "true_mtf50": round(load_psf(f"gauss:sigma={sigma:.4f}").mtf50, 5),
                "calibrated_mtf50": round(psf.mtf50, 5), "psf_size": psf.kernel.shape[0]}
        return photograph(scene, device, name), scene, psf.kernel, load_psf(f"gauss:sigma={sigma:.4f}").kernel, info

    fns = restorers(names, model)
    params: dict[str, dict] = {}
    val = [sample(n) for n in split["val"][:val_limit]]
    for name in names:
        if name not in LEARNED:
            chosen, val_psnr = tune(name, [(b, s, k) for b, s, k, _, _ in val], _grid(name))
            params[name] = {**chosen, "val_psnr": round(val_psnr, 4)}
    del val
    per_image = []
    for n in split["test"][:limit] if limit else split["test"]:
        blurred, scene, calibrated, true, info = sample(n)
        score = ReferenceScorer(scene)
        row = {"image": n, **info, "device_psnr": round(score(blurred)[0], 4)}
        for name in names:
            p = {k: v for k, v in params.get(name, {}).items() if k != "val_psnr"}
            row[f"{name}_calibrated_psnr"] = round(score(fns[name](blurred, calibrated, **p))[0], 4)
            row[f"{name}_true_psnr"] = round(score(fns[name](blurred, true, **p))[0], 4)
        per_image.append(row)
        print(f"[soft] {n}: σ {info['sigma']:.3f}, device {row['device_psnr']:.2f} dB, "
              + ", ".join(f"{name} {row[f'{name}_calibrated_psnr']:.2f} (true kernel {row[f'{name}_true_psnr']:.2f})" for name in names),
              flush=True)
    device_mean = statistics.fmean(r["device_psnr"] for r in per_image)
    summary = {"device_psnr": round(device_mean, 4)}
    for name in names:
        for kind in ("calibrated", "true"):
            mean = statistics.fmean(r[f"{name}_{kind}_psnr"] for r in per_image)
            summary[f"{name}_{kind}_psnr"] = round(mean, 4)
            summary[f"{name}_{kind}_gain"] = round(mean - device_mean, 4)
        summary[f"{name}_meets_target"] = summary[f"{name}_calibrated_gain"] >= GAIN_TARGET
    return {"test_images": len(per_image), "val_images_for_tuning": min(val_limit, len(split["val"])), "params": params,
            "summary": summary, "per_image": per_image}


@functools.lru_cache(maxsize=1)
def _half_cache() -> quality.Cache:
    return quality.Cache(RESULTS / quality.CACHE_NAME)


def family_params(name: str, family: str, spec: str, isic: Path, val_limit: int) -> dict:
    """The half protocol's parameters for ``family`` (quality.py's cache when it holds them, else tuned the same way)."""
    if name in LEARNED:
        return {}
    entry = _half_cache().data["entries"].get(f"half | {family} | {name}")
    if entry and entry.get("params") is not None:
        return dict(entry["params"])
    images = {p.stem: p for p in list_images(isic / "images")}
    val_names = quality.load_split(list(images.values()))["val"][:val_limit]
    samples = [quality.prepare(images[n], "half", parse_spec(spec), n) for n in val_names]
    return tune(name, samples, _grid(name))[0]


def charts(isic: Path, names: list[str], model: str | None, val_limit: int) -> dict:
    sharp = edge_chart(CHART, CHART)
    fns = restorers(names, model)
    rows = []
    for family, spec in quality.FAMILIES.items():
        made, done = fixed_degradation(torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1))), parse_spec(spec), "chart")
        photo = made.numpy().transpose(1, 2, 0)
        try:
            calibrated = calibrate(photo).kernel
        except EdgeError as error:
            calibrated, why = None, str(error).split(";")[0]
        row = {"family": family, "spec": spec, "input": chart_mtf50(photo), "sharp": chart_mtf50(sharp)}
        for name in names:
            p = family_params(name, family, spec, isic, val_limit)
            row[f"{name}_params"] = p
            row[f"{name}_true"] = chart_mtf50(fns[name](photo, done.kernel, **p))
            row[f"{name}_calibrated"] = chart_mtf50(fns[name](photo, calibrated, **p)) if calibrated is not None else f"no PSF: {why}"
        rows.append(row)
        print(f"[charts] {family}: " + ", ".join(f"{k} {_cell(v)}" for k, v in row.items() if k not in ("family", "spec")
                                                 and not k.endswith("_params")), flush=True)
    return {"rows": rows}


def _cell(value: float | None | str) -> str:
    if value is None:
        return "> 0.5"
    return value if isinstance(value, str) else f"{value:.4f}"


def markdown(result: dict) -> str:
    lines = ["# Calibration benchmark", "", f"Command: `{result['command']}` ({result['seconds'] / 60:.1f} min wall clock). "
             f"Machine: {result['machine']}.", ""]
    if "accuracy" in result:
        a = result["accuracy"]
        lines += ["## MTF50 of generated slanted edges", "",
                  f"The tilted square ({CHART}×{CHART} px, sides 192 px at 5°, point-sampled, levels 0.2/0.8) blurred by each kernel, "
                  "8-bit, with and without JPEG 90; `calibrate` on the result. true: the kernel's own MTF50 (mean over directions, "
                  f"meddeblur.psf); PSF: the MTF50 of the PSF calibrate writes. Target: within {100 * TOLERANCE:g} %: "
                  f"**{a['passed']} of {a['total']} pass**, largest error {a['max_abs_error_percent']:.2f} %.", "",
                  "| blur | JPEG | true | measured | error | PSF | PSF size | pass |", "|---|---|---|---|---|---|---|---|"]
        for r in a["rows"]:
            lines.append(f"| {r['blur']} | {'90' if 'jpeg' in r['spec'] else '—'} | {r['true_mtf50']:.4f} | {r['measured_mtf50']:.4f} | "
                         f"{r['error_percent']:+.2f} % | {r['psf_mtf50']:.4f} | {r['psf_size']}×{r['psf_size']} | {'yes' if r['pass'] else 'no'} |")
        lines.append("")
    if "soft" in result:
        s, names = result["soft"], result["restorers"]
        summary = s["summary"]
        lines += ["## Soft device: restoring with the calibrated PSF", "",
                  f"{s['test_images']} ISIC test images at half size (quality.py's half protocol) are the scene; the device blurs each "
                  "with a Gaussian of σ in 0.7–1.0 (quality.py's soft_sigma, fixed per image) and saves JPEG 95. `calibrate` measures "
                  "the device on the tilted square photographed through it; each image is restored with that PSF. PSNR (dB) against "
                  f"the scene, mean over the images; gain: over the device's own images; target ≥ +{GAIN_TARGET:g} dB. "
                  "true kernel: the same restorer given the device's exact Gaussian (what a perfect calibration would reach). "
                  f"Classical parameters tuned on {s['val_images_for_tuning']} validation images with their calibrated PSFs.", "",
                  "| restorer | device | restored (calibrated PSF) | gain | target met | restored (true kernel) | gain |",
                  "|---|---|---|---|---|---|---|"]
        for name in names:
            lines.append(f"| {RESTORERS[name]} | {summary['device_psnr']:.2f} | {summary[f'{name}_calibrated_psnr']:.2f} | "
                         f"{summary[f'{name}_calibrated_gain']:+.2f} | {'yes' if summary[f'{name}_meets_target'] else 'no'} | "
                         f"{summary[f'{name}_true_psnr']:.2f} | {summary[f'{name}_true_gain']:+.2f} |")
        if s["params"]:
            lines += ["", "Parameters chosen on validation: " + "; ".join(
                f"{RESTORERS[n]}: " + ", ".join(f"{k}={v}" for k, v in p.items() if k != "val_psnr") for n, p in s["params"].items())]
        lines += ["", "<details><summary>Per image</summary>", "",
                  "| image | σ | MTF50 true / calibrated | device | " + " | ".join(f"{RESTORERS[n]} (calibrated / true)" for n in names) + " |",
                  "|---|---|---|---|" + "---|" * len(names)]
        for r in s["per_image"]:
            lines.append(f"| {r['image']} | {r['sigma']:.3f} | {r['true_mtf50']:.4f} / {r['calibrated_mtf50']:.4f} | {r['device_psnr']:.2f} | "
                         + " | ".join(f"{r[f'{n}_calibrated_psnr']:.2f} / {r[f'{n}_true_psnr']:.2f}" for n in names) + " |")
        lines += ["", "</details>", ""]
    if "charts" in result:
        names = result["restorers"]
        lines += ["## MTF50 of slanted-edge charts per blur family", "",
                  "The tilted square degraded by each family of quality.py (its test-input seeding; `mixed` adds noise and JPEG), "
                  "then restored with the family's true kernel and with the PSF calibrate measured on the degraded chart. MTF50 in "
                  "cycles/pixel, mean over the square's four sides; > 0.5: above Nyquist (the sharp chart's MTF stays 1). Classical "
                  "parameters: the half protocol's, tuned per family on validation images.", "",
                  "| family | input | " + " | ".join(f"{RESTORERS[n]} (true kernel) | {RESTORERS[n]} (calibrated PSF)" for n in names)
                  + " | sharp |", "|---|---|" + "---|---|" * len(names) + "---|"]
        for r in result["charts"]["rows"]:
            lines.append(f"| {r['family']} | {_cell(r['input'])} | "
                         + " | ".join(f"{_cell(r[f'{n}_true'])} | {_cell(r[f'{n}_calibrated'])}" for n in names) + f" | {_cell(r['sharp'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("accuracy", "soft", "charts"), default=["accuracy", "soft", "charts"])
    parser.add_argument("--restorer", nargs="+", choices=tuple(RESTORERS), default=["wiener", "rl"])
    parser.add_argument("--model", help="for --restorer network: a psf-nafnet run folder or .safetensors (default: the shipped one)")
    parser.add_argument("--isic", type=Path, default=ISIC)
    parser.add_argument("--limit", type=int, help="use only the first N test images (soft part)")
    parser.add_argument("--val-limit", type=int, default=4, help="validation images used for tuning (default 4, as quality.py)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if {"soft", "charts"} & set(args.parts) and not (args.isic / "images").is_dir():
        sys.exit(f"{args.isic}: ISIC images not found; pass --isic DIR or set MEDDEBLUR_ISIC_DIR")
    started = time.perf_counter()
    result: dict = {"command": command("calibration", argv),
                    "machine": f"{machine_line()}, {torch.get_num_threads()} thread(s)", "restorers": args.restorer}
    if "accuracy" in args.parts:
        result["accuracy"] = accuracy()
    if "soft" in args.parts:
        result["soft"] = soft_device(args.isic, args.restorer, args.model, args.limit, args.val_limit)
    if "charts" in args.parts:
        result["charts"] = charts(args.isic, args.restorer, args.model, args.val_limit)
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_result("calibration", result, markdown(result), args.out, ensure_ascii=False)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
