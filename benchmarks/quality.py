"""Quality benchmark on the ISIC dermoscopy images: input, classical baselines and models, per blur family.

A script, not a test. Two protocols:
  seed   — images resized to 256×256 first (like the reference), then degraded;
  native — degraded at stored resolution (up to 1024 px).
Every degraded image is quantised to 8 bits (part of every meddeblur degradation). Test images come from a
fixed seeded 70/20/10 split of the 557 images (benchmarks/isic_split.json); each classical method's
parameters are chosen per family on validation images, never on test.

    python benchmarks/quality.py --protocol seed
    python benchmarks/quality.py --protocol native --model runs/mixed   # add a model row (run folder or weights)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from meddeblur.classical import METHODS, restore, tune
from meddeblur.data import fixed_degradation, split_names, write_split
from meddeblur.degrade import parse_spec
from meddeblur.device import describe_machine
from meddeblur.infer import deblur_array
from meddeblur.io import list_images, read_rgb, resize_area
from meddeblur.metrics import psnr_ssim_numpy
from meddeblur.models import load_model, size_multiple, weights_id

HERE = Path(__file__).resolve().parent
DEFAULT_ISIC = Path(os.environ.get("MEDDEBLUR_ISIC_DIR", HERE.parents[1] / "shared" / "data" / "isic-dermoscopy"))
SPLIT = HERE / "isic_split.json"
FAMILIES = {  # the benchmark's fixed parameters (motion angle and shake path still vary per image, seeded)
    "gauss σ=1.2": "gauss:sigma=1.2",
    "gauss σ=2.0": "gauss:sigma=2.0",
    "defocus r=3": "defocus:radius=3",
    "motion L=11": "motion:length=11",
    "shake 11": "shake:extent=11",
    "down×2-up": "down:scale=2",
    "down×4-up": "down:scale=4",
    "mixed": "mixed",
    "sharp (none)": "none",  # an un-blurred input: a model must give it back unharmed; not part of the mean
}
UNBLURRED = "sharp (none)"


def load_split(images: list[Path]) -> dict[str, list[str]]:
    """The committed split, or a new one (seed 42) written to benchmarks/ when none exists."""
    names = [p.stem for p in images]
    if SPLIT.is_file():
        split = json.loads(SPLIT.read_text())
        if sorted(split["train"] + split["val"] + split["test"]) != sorted(names):
            sys.exit(f"{SPLIT}: does not list exactly the images in the data folder; delete it to make a new split")
        return split
    split = split_names(names, seed=42)
    write_split(SPLIT, split, 42)
    return split


def prepare(path: Path, protocol: str, spec, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blurred, sharp, kernel) for one image and one family, identical on every run."""
    sharp = read_rgb(path)
    if protocol == "seed":
        sharp = resize_area(sharp, (256, 256))
    made, done = fixed_degradation(torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1))), spec, name)
    return made.numpy().transpose(1, 2, 0), sharp, done.kernel


def run(protocol: str, isic: Path, models: list[str], methods: list[str], families: dict[str, str],
        limit: int | None, val_limit: int) -> dict:
    images = {p.stem: p for p in list_images(isic / "images")}
    split = load_split(list(images.values()))
    test_names = split["test"][:limit] if limit else split["test"]
    val_names = split["val"][:val_limit]
    loaded = []
    for model in models:
        network, config, weights = load_model(model, "cpu")
        label = Path(model).name if Path(model).is_dir() else Path(model).stem
        loaded.append((f"model: {label}", network, size_multiple(config), {"path": str(weights), "id": weights_id(weights), "arch": config.arch, "width": config.width}))
    rows: dict[str, dict] = {"input": {"families": {}, "seconds": 0.0}}
    for name in methods:
        rows[METHODS[name].label] = {"families": {}, "seconds": 0.0, "params": {}}
    for label, _, _, info in loaded:
        rows[label] = {"families": {}, "seconds": 0.0, "model": info}
    megapixels = 0.0
    for family, spec_text in families.items():
        spec = parse_spec(spec_text)
        started = time.perf_counter()
        val = [prepare(images[n], protocol, spec, n) for n in val_names]
        for name in methods:
            params, val_psnr = tune(name, val)
            rows[METHODS[name].label]["params"][family] = {**params, "val_psnr": round(val_psnr, 3)}
        scores: dict[str, list[tuple[float, float]]] = {label: [] for label in rows}
        for n in test_names:
            blurred, sharp, kernel = prepare(images[n], protocol, spec, n)
            megapixels += sharp.shape[0] * sharp.shape[1] / 1e6
            scores["input"].append(psnr_ssim_numpy(blurred, sharp))
            for name in methods:
                t0 = time.perf_counter()
                restored = restore(name, blurred, kernel, **{k: v for k, v in rows[METHODS[name].label]["params"][family].items() if k != "val_psnr"})
                rows[METHODS[name].label]["seconds"] += time.perf_counter() - t0
                scores[METHODS[name].label].append(psnr_ssim_numpy(restored, sharp))
            for label, network, multiple, _ in loaded:
                t0 = time.perf_counter()
                restored = deblur_array(network, blurred, multiple=multiple)
                rows[label]["seconds"] += time.perf_counter() - t0
                scores[label].append(psnr_ssim_numpy(restored, sharp))
        for label, values in scores.items():
            rows[label]["families"][family] = {"psnr": statistics.fmean(v[0] for v in values), "ssim": statistics.fmean(v[1] for v in values)}
        print(f"[{protocol}] {family}: " + ", ".join(f"{k} {v['families'][family]['psnr']:.2f}" for k, v in rows.items())
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    for row in rows.values():
        row["s_per_megapixel"] = row.pop("seconds") / megapixels if megapixels else 0.0
        blurred_families = [f for name, f in row["families"].items() if name != UNBLURRED] or list(row["families"].values())
        row["mean_psnr"] = statistics.fmean(f["psnr"] for f in blurred_families)
        row["mean_ssim"] = statistics.fmean(f["ssim"] for f in blurred_families)
    return {"protocol": protocol, "test_images": len(test_names), "val_images_for_tuning": len(val_names),
            "families": families, "split": str(SPLIT.relative_to(HERE.parent)), "rows": rows}


def markdown(result: dict, command: str, machine: str) -> str:
    families = list(result["families"])
    head = "| method | " + " | ".join(families) + " | mean of blurs | s / MP |"
    lines = [f"# Quality benchmark — {result['protocol']} protocol", "",
             f"{result['test_images']} ISIC test images ({result['split']}); classical parameters tuned per family on "
             f"{result['val_images_for_tuning']} validation images. Cells: PSNR (dB) / SSIM, TF-exact metrics, degraded inputs "
             f"quantised to 8 bits. s / MP: seconds per megapixel per image on {machine}.", "",
             f"Command: `{command}`", "", head, "|" + "---|" * (len(families) + 3)]
    for label, row in result["rows"].items():
        cells = [f"{row['families'][f]['psnr']:.2f} / {row['families'][f]['ssim']:.4f}" for f in families]
        speed = "—" if label == "input" else f"{row['s_per_megapixel']:.3f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['mean_psnr']:.2f} / {row['mean_ssim']:.4f} | {speed} |")
    tuned = [(label, row["params"]) for label, row in result["rows"].items() if "params" in row]
    if tuned:
        lines += ["", "Parameters chosen on validation:", ""]
        for label, params in tuned:
            lines.append(f"- {label}: " + "; ".join(f"{f}: " + ", ".join(f"{k}={v}" for k, v in p.items() if k != "val_psnr")
                                                   for f, p in params.items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=("seed", "native", "both"), default="both")
    parser.add_argument("--model", nargs="*", default=[], help="run folders or .safetensors weights to add as rows")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    parser.add_argument("--limit", type=int, help="use only the first N test images")
    parser.add_argument("--val-limit", type=int, default=8, help="validation images used for tuning (default 8)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if not (args.isic / "images").is_dir():
        sys.exit(f"{args.isic}: ISIC images not found; pass --isic DIR or set MEDDEBLUR_ISIC_DIR")
    described = describe_machine()
    machine = f"{described['cpu']}, {described['cores']} cores, torch {described['torch']}"
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for protocol in (("seed", "native") if args.protocol == "both" else (args.protocol,)):
        result = run(protocol, args.isic, args.model, args.methods, {f: FAMILIES[f] for f in args.families}, args.limit, args.val_limit)
        result.update(command=command, machine=machine)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"quality_{protocol}.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / f"quality_{protocol}.md").write_text(markdown(result, command, machine))
        print(markdown(result, command, machine))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
