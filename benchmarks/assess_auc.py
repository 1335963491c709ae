"""Does ``meddeblur assess`` tell sharp dermoscopy photographs from blurred ones? ROC AUC on ISIC.

A script, not a test. Every ISIC image (at its stored resolution) is scored as it is ("sharp")
and after a Gaussian blur of σ = 1.5 px made by :func:`meddeblur.degradation.pipeline.degrade` (spec
``gauss:sigma=1.5``, which ends with 8-bit quantisation like a saved photograph). The ROC AUC is
the probability that a blurred image scores higher than a sharp one (Mann–Whitney U / n₁n₂, ties
counting one half). Also reported: the threshold with the highest balanced accuracy (how
``meddeblur.evaluation.assess.DEFAULT_THRESHOLD`` was chosen), sensitivity and specificity at the default,
the share of pairs whose blurred version scores higher than its own original, and AUCs for
σ = 1.0 and 2.0.

    python -m benchmarks.assess_auc                  # all 557 images, writes benchmarks/results/assess_auc.{json,md}
    python -m benchmarks.assess_auc --limit 20 --out /tmp/auc
    python -m benchmarks.assess_auc --from-json benchmarks/results/assess_auc.json   # re-summarise stored scores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from meddeblur.degradation.pipeline import degrade
from meddeblur.evaluation.assess import ANALYSIS_SIDE, DEFAULT_THRESHOLD, blur_score
from meddeblur.io.decode import read_image

from benchmarks.common import ISIC, RESULTS, command as result_command, describe_machine, write_result

HEADLINE_SIGMA = 1.5


def auc(sharp: list[float], blurred: list[float]) -> float:
    """P(blurred score > sharp score), ties counting one half."""
    return float(mannwhitneyu(blurred, sharp).statistic / (len(sharp) * len(blurred)))


def best_threshold(sharp: list[float], blurred: list[float]) -> tuple[float, float]:
    """(threshold, balanced accuracy) maximising (TPR + TNR) / 2; the threshold is a midpoint between scores."""
    values = np.sort(np.unique(np.concatenate([sharp, blurred])))
    candidates = (values[:-1] + values[1:]) / 2 if len(values) > 1 else values
    s, b = np.asarray(sharp), np.asarray(blurred)
    accuracy = [((b > t).mean() + (s <= t).mean()) / 2 for t in candidates]
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "min": min(values), "max": max(values)}


def score_images(folder: Path, limit: int | None, sigmas: list[float]) -> tuple[list[str], list[float], dict[float, list[float]], float]:
    """(names, sharp scores, blurred scores per σ, seconds) for the images in ``folder``."""
    torch.set_num_threads(1)  # results do not depend on it; a shared machine does
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff"))
    files = files[:limit] if limit else files
    start = time.perf_counter()
    sharp: list[float] = []
    blurred: dict[float, list[float]] = {s: [] for s in sigmas}
    for i, path in enumerate(files):
        rgb = read_image(path).rgb
        sharp.append(blur_score(rgb))
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        for sigma in sigmas:
            out, _ = degrade(x, f"gauss:sigma={sigma}", torch.Generator().manual_seed(i))
            blurred[sigma].append(blur_score(out[0].numpy().transpose(1, 2, 0)))
    return [p.name for p in files], sharp, blurred, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=ISIC / "images", help="folder of sharp images (default: the ISIC set)")
    parser.add_argument("--limit", type=int, help="first N images only (sorted by name)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1.0, HEADLINE_SIGMA, 2.0], help="blur strengths (1.5 always)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from-json", type=Path, help="summarise the per-image scores of an earlier run instead of scoring")
    args = parser.parse_args(argv)
    if args.from_json:
        earlier = json.loads(args.from_json.read_text())
        names, sharp, seconds = earlier["per_image"]["names"], earlier["per_image"]["sharp"], earlier["seconds"]
        blurred = {float(k): v for k, v in earlier["per_image"]["blurred"].items()}
        sigmas, command, folder = sorted(blurred), earlier["command"], earlier["folder"]
        machine, day = earlier["machine"], earlier["date"]
    else:
        sigmas = sorted(set(args.sigmas) | {HEADLINE_SIGMA})
        names, sharp, blurred, seconds = score_images(args.images, args.limit, sigmas)
        if not names:
            print(f"{args.images}: no images", file=sys.stderr)
            return 2
        command = result_command("assess_auc", argv)
        folder, machine, day = str(args.images), describe_machine(), date.today().isoformat()
    files = names
    head = blurred[HEADLINE_SIGMA]
    threshold, balanced = best_threshold(sharp, head)
    s, b = np.asarray(sharp), np.asarray(head)
    result = {
        "images": len(files), "folder": folder, "analysis_side": ANALYSIS_SIDE,
        "auc": {str(sigma): auc(sharp, blurred[sigma]) for sigma in sigmas},
        "headline_sigma": HEADLINE_SIGMA,
        "paired_higher": {str(sigma): float(np.mean(np.asarray(blurred[sigma]) > s)) for sigma in sigmas},
        "best_threshold": threshold, "best_balanced_accuracy": balanced,
        "default_threshold": DEFAULT_THRESHOLD,
        "at_default": {"sensitivity": float((b > DEFAULT_THRESHOLD).mean()), "specificity": float((s <= DEFAULT_THRESHOLD).mean())},
        "scores": {"sharp": stats(sharp), **{f"blurred σ={sigma}": stats(blurred[sigma]) for sigma in sigmas}},
        "seconds": seconds, "machine": machine, "date": day, "command": command,
        "per_image": {"names": names, "sharp": sharp, "blurred": {str(sigma): blurred[sigma] for sigma in sigmas}},
    }
    lines = [
        "# Blur triage: sharp ISIC images vs Gaussian-blurred copies",
        "",
        f"`{result['command']}` — {result['date']}, {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}, "
        f"{len(files)} images, {seconds:.0f} s.",
        "",
        f"Score: `meddeblur.evaluation.assess.blur_score` at a long side of {ANALYSIS_SIDE} px (higher = blurrier). Blurred copies: "
        "`degrade(images, 'gauss:sigma=σ')` at stored resolution, 8-bit quantised.",
        "",
        "| σ (px) | ROC AUC | blurred scores higher than own original |",
        "|---|---|---|",
        *[f"| {sigma} | {result['auc'][str(sigma)]:.4f} | {100 * result['paired_higher'][str(sigma)]:.1f} % |" for sigma in sigmas],
        "",
        "| set | mean | std | min | max |",
        "|---|---|---|---|---|",
        *[f"| {name} | {v['mean']:.4f} | {v['std']:.4f} | {v['min']:.4f} | {v['max']:.4f} |" for name, v in result["scores"].items()],
        "",
        f"Threshold with the best balanced accuracy at σ = {HEADLINE_SIGMA}: {threshold:.4f} ({100 * balanced:.1f} %). "
        f"Default threshold {DEFAULT_THRESHOLD}: sensitivity {100 * result['at_default']['sensitivity']:.1f} %, "
        f"specificity {100 * result['at_default']['specificity']:.1f} %.",
        "",
    ]
    write_result("assess_auc", result, "\n".join(lines), args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
