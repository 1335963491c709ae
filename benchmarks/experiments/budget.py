"""Equal-CPU-budget comparison of architectures on the ISIC train split (mixed degradations), scored on val.

A script, not a test. Every model trains with the same recipe (batch 8, 256×256 area-resized images, fresh
`mixed` degradations each epoch, loss 0.85·(1−SSIM) + 0.15·L1) for the same budget of *process CPU time*
on one intra-op thread. CPU time rather than wall time, so that another job on the 2-core machine cannot
tilt the comparison; with one thread on an otherwise idle core the two are the same. Evaluation does not
count against the budget. Every ``--eval-every`` minutes the model is scored on the first ``--val-limit``
validation images (fixed degradations, seed as in `meddeblur train`); at the end on the whole val split.

    python -m benchmarks.experiments.budget --minutes 20            # all four candidates, one after another
    python -m benchmarks.experiments.budget --minutes 20 --only nafnet-w16   # one candidate (results are merged)
    python -m benchmarks.experiments.budget --replot                          # redraw budget.png from budget.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from meddeblur.data.pairs import PairDataset, input_scores, select, sharp_only
from meddeblur.degradation.spec import parse_spec
from meddeblur.losses import LossWeights, build_loss
from meddeblur.models import ModelConfig, build_model, count_flops, count_parameters
from meddeblur.training.loop import run_epoch

from benchmarks.common import ISIC, RESULTS, ROOT, SPLIT, command, machine_line, write_result



@dataclass(frozen=True)
class Candidate:
    label: str
    config: ModelConfig
    lr: float
    why_lr: str


CANDIDATES = (
    Candidate("reference-w64", ModelConfig("attention-unet", 64), 1e-4, "the reference's Adam lr"),
    Candidate("reference-w32", ModelConfig("attention-unet", 32), 1e-4, "the reference's Adam lr"),
    Candidate("residual-w64", ModelConfig("attention-unet-residual", 64), 1e-4, "the reference's Adam lr"),
    Candidate("nafnet-w16", ModelConfig("nafnet", 16), 1e-3, "NAFNet's published lr; in a 2-epoch probe it reached a lower val loss than 2e-4"),
)


def evaluate_psnr(model: torch.nn.Module, loss_fn, dataset: PairDataset) -> dict[str, float]:
    """Mean val loss / PSNR / SSIM (outputs clamped to [0, 1]) over ``dataset``."""
    with torch.no_grad():
        return run_epoch(model, loss_fn, DataLoader(dataset, batch_size=8), torch.device("cpu"))


def train_candidate(candidate: Candidate, train_set: PairDataset, val_quick: PairDataset, val_full: PairDataset,
                    minutes: float, eval_every: float, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build_model(candidate.config)
    loss_fn = build_loss(LossWeights(), use_perceptual=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=candidate.lr, eps=1e-7)
    budget, next_eval = minutes * 60, eval_every * 60
    cpu_used, wall_used, steps, seen, epoch = 0.0, 0.0, 0, 0, 0
    curve = [{"cpu_minutes": 0.0, "wall_minutes": 0.0, "steps": 0, "images": 0, **evaluate_psnr(model, loss_fn, val_quick)}]
    print(f"{candidate.label}: start val PSNR {curve[0]['psnr']:.2f}", flush=True)
    while cpu_used < budget:
        epoch += 1
        train_set.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        for blurred, sharp in loader:
            model.train()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            loss, _ = loss_fn(model(blurred), sharp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Loading and degrading the batch happened inside the loader's iteration; it is cheap next to a step
            # and identical for all candidates, so only the step itself is timed.
            cpu_used += time.process_time() - cpu0
            wall_used += time.perf_counter() - wall0
            steps, seen = steps + 1, seen + blurred.shape[0]
            if cpu_used >= next_eval or cpu_used >= budget:
                scores = evaluate_psnr(model, loss_fn, val_quick)
                curve.append({"cpu_minutes": cpu_used / 60, "wall_minutes": wall_used / 60, "steps": steps, "images": seen, **scores})
                print(f"{candidate.label}: {cpu_used / 60:.1f} CPU min, {steps} steps, val PSNR {scores['psnr']:.2f}", flush=True)
                next_eval += eval_every * 60
            if cpu_used >= budget:
                break
    final = evaluate_psnr(model, loss_fn, val_full)
    trainable, _ = count_parameters(model)
    return {"label": candidate.label, "config": candidate.config.__dict__, "lr": candidate.lr, "why_lr": candidate.why_lr,
            "parameters": trainable, "gflop_256": count_flops(model) / 1e9,
            "steps": steps, "images_seen": seen, "epochs_started": epoch, "curve": curve, "final_val": final}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    line = results["input_quick"]["psnr"]
    for axis, title in zip(axes, ("all candidates", "close-up around the input")):
        for label, row in results["candidates"].items():
            axis.plot([p["cpu_minutes"] for p in row["curve"]], [p["psnr"] for p in row["curve"]], "o-", markersize=3, label=label)
        axis.axhline(line, color="gray", linestyle="--", label="degraded input")
        axis.set_xlabel("training CPU minutes (1 thread)")
        axis.set_ylabel(f"val PSNR (dB), first {results['val_quick_images']} val images")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[1].set_ylim(line - 1.5, line + 1.5)
    axes[0].legend(fontsize=8)
    figure.suptitle("Equal CPU budget, ISIC train split, mixed degradations")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def markdown(results: dict) -> str:
    lines = ["# Equal-CPU-budget comparison", "",
             f"{results['minutes']:g} CPU minutes of training per model on one thread ({results['machine']}); "
             f"ISIC train split ({results['train_images']} images, {results['split']}), 256×256, batch 8, fresh `mixed` "
             f"degradations each epoch, loss 0.85·(1−SSIM)+0.15·L1. Scored on the whole val split ({results['val_images']} images, "
             f"fixed degradations); outputs clamped to [0, 1]. Curves: `budget.png` (first {results['val_quick_images']} val images).", "",
             f"Command: `{results['command']}`", "",
             "| model | params | GFLOP / 256² | Adam lr | steps in budget | val PSNR (dB) | gain over input | val SSIM |",
             "|---|---|---|---|---|---|---|---|",
             f"| degraded input | — | — | — | — | {results['input_full']['psnr']:.2f} | — | {results['input_full']['ssim']:.4f} |"]
    for label, row in results["candidates"].items():
        gain = row["final_val"]["psnr"] - results["input_full"]["psnr"]
        lines.append(f"| {label} | {row['parameters'] / 1e6:.2f} M | {row['gflop_256']:.2f} | {row['lr']:g} | {row['steps']} | "
                     f"{row['final_val']['psnr']:.2f} | {gain:+.2f} | {row['final_val']['ssim']:.4f} |")
    lines += ["", "Learning rates: " + "; ".join(f"{label}: {row['why_lr']}" for label, row in results["candidates"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20, help="training CPU minutes per model (default 20)")
    parser.add_argument("--eval-every", type=float, default=2.5, help="CPU minutes between curve points (default 2.5)")
    parser.add_argument("--val-limit", type=int, default=24, help="val images per curve point (default 24)")
    parser.add_argument("--only", nargs="*", choices=[c.label for c in CANDIDATES], help="run only these candidates")
    parser.add_argument("--isic", type=Path, default=ISIC)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--replot", action="store_true", help="only redraw budget.png (and budget.md) from budget.json")
    args = parser.parse_args(argv)
    if args.replot:
        results = json.loads((args.out / "budget.json").read_text())
        plot(results, args.out / "budget.png")
        (args.out / "budget.md").write_text(markdown(results))
        return 0
    if not (args.isic / "images").is_dir():
        sys.exit(f"{args.isic}: ISIC images not found; pass --isic DIR or set MEDDEBLUR_ISIC_DIR")
    torch.set_num_threads(1)
    split = json.loads(SPLIT.read_text())
    pairs = sharp_only(args.isic / "images")
    spec = parse_spec("mixed")
    train_set = PairDataset(select(pairs, split["train"], str(SPLIT)), size=256, augment=True, seed=args.seed, degrade=spec)
    val_pairs = select(pairs, split["val"], str(SPLIT))
    val_full = PairDataset(val_pairs, size=256, seed=args.seed, degrade=spec, fixed=True)
    val_quick = PairDataset(val_pairs[: args.val_limit], size=256, seed=args.seed, degrade=spec, fixed=True)
    results_path = args.out / "budget.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() and args.only else {"candidates": {}}
    results.update(minutes=args.minutes, machine=machine_line(),
                   train_images=len(train_set), val_images=len(val_full), val_quick_images=len(val_quick),
                   split=str(SPLIT.relative_to(ROOT)), input_full=input_scores(val_full), input_quick=input_scores(val_quick),
                   command=command("experiments.budget", argv))
    args.out.mkdir(parents=True, exist_ok=True)
    for candidate in CANDIDATES:
        if args.only and candidate.label not in args.only:
            continue
        results["candidates"][candidate.label] = train_candidate(candidate, train_set, val_quick, val_full, args.minutes, args.eval_every, args.seed)
        results["candidates"] = {c.label: results["candidates"][c.label] for c in CANDIDATES if c.label in results["candidates"]}
        write_result("budget", results, markdown(results), args.out)  # after each model: a crash keeps the finished ones
        plot(results, args.out / "budget.png")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
