"""Which loss, learning rate and crop size let the default recipe learn fastest: one run of the default recipe with other settings.

A script, not a test. The run trains exactly like ``benchmarks.experiments.train_speed``'s default row (ISIC train split,
one intra-op thread, a budget of process CPU time, from scratch) except for the loss weights (and ``--lr`` and
``--crop`` if given; ``--init default`` fine-tunes the shipped model instead), and is scored on the same two validation sets.
Each run is added to ``benchmarks/results/loss_probe.{json,md}`` under its label; run two at once on a 2-core
machine (CPU-time budgets keep them comparable):

    python -m benchmarks.experiments.loss_probe ssim=0.15,l1=0.85 --minutes 30 --lr 2e-3 &
    python -m benchmarks.experiments.loss_probe mse=1 --minutes 30 --lr 2e-3
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from meddeblur.data.pairs import read_split, select, sharp_only
from meddeblur.losses import LossWeights
from meddeblur.training.options import TrainOptions
from meddeblur.training.recipes import recipe_options

from benchmarks.common import ISIC, RESULTS, command as result_command, machine_line
from benchmarks.experiments import train_speed


def parse_loss(text: str) -> LossWeights:
    """``"ssim=0.15,l1=0.85"`` → LossWeights with those weights; SSIM, L1, MSE and PSNR not named are 0 (the
    perceptual weight keeps its default, inert without VGG19 weights, as in the recipe)."""
    terms = [term.name for term in dataclasses.fields(LossWeights)]
    given: dict[str, float] = {}
    for item in text.split(","):
        name, _, value = (part.strip() for part in item.partition("="))
        if name not in terms:
            raise ValueError(f"loss term {name!r}: choose from {', '.join(terms)}")
        given[name] = float(value)
    return LossWeights(**{"ssim": 0.0, "l1": 0.0, **given})


def probe(isic: Path, loss: LossWeights, minutes: float, work: Path, lr: float | None = None, init: str | None = None,
          crop: int | None = None) -> dict:
    """Train the default recipe with ``loss`` for ``minutes`` of CPU time and score its best weights.

    ``init``: fine-tune these weights (``"default"``: the shipped model; their own block layout) instead of starting
    from scratch; ``crop``: training crop side instead of the recipe's.
    """
    images = isic / "images"
    values = {**recipe_options("default", paired=False, fine_tune=init is not None), "max_minutes": minutes, "loss": loss}
    if init is not None:
        values.update(init=init, enc_blocks=None, middle_blocks=None, dec_blocks=None)
    if lr is not None:
        values["lr"] = lr
    if crop is not None:
        values["crop"] = crop
    options = TrainOptions(blurred_dir=None, sharp_dir=str(images), out=str(work), threads=1, budget_clock="cpu", device="cpu", **values)
    row = train_speed._train_row(str(loss), options)
    val = select(sharp_only(images), read_split(work / "split.json")["val"], "split")
    sets = train_speed.val_sets(val)
    row["val"] = train_speed.scores(work / "best.safetensors", sets)
    row["inputs"] = {name: train_speed._identity_scores(dataset) for name, dataset in sets.items()}
    row["machine"] = machine_line()
    return row


def run_label(loss: str, lr: float, crop: int | None = None, init: str | None = None) -> str:
    """A run's row label: the loss as given and every setting that differs from the recipe's from-scratch run
    (the lr always: the recipe's may change later)."""
    return f"{loss}, lr {lr:g}" + (f", crop {crop}" if crop else "") + (f", from {init}" if init else "")


def record(label: str, row: dict, command: str, results: Path = RESULTS) -> str:
    """Add ``row`` under ``label`` to loss_probe.json (locked: two probes may finish together); rewrite loss_probe.md."""
    results.mkdir(parents=True, exist_ok=True)
    folder = os.open(results, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        path = results / "loss_probe.json"
        runs = json.loads(path.read_text()) if path.is_file() else {}
        runs[label] = {**row, "command": command}
        path.write_text(json.dumps(runs, indent=2, default=str) + "\n")
        table = markdown(runs)
        (results / "loss_probe.md").write_text(table)
    finally:
        os.close(folder)  # releases the lock
    return table


def markdown(runs: dict[str, dict]) -> str:
    lines = ["# Loss probes: the default recipe with other losses, learning rates and crops, at equal CPU time", "",
             "Each row: one run of `python -m benchmarks.experiments.loss_probe` (1 thread, a budget of process CPU time, ISIC train split, "
             "the default recipe but for the loss, learning rate and crop size; from scratch unless the label says which weights it "
             "fine-tunes); its best weights scored like `train_speed.py`'s rows. "
             f"Machine: {next(reversed(runs.values()))['machine']}.", "",
             "| loss | command | steps | CPU min | val mix PSNR (input) | val mix sharp kept | val mix SSIM | val 256 mixed PSNR (input) |",
             "|---|---|---|---|---|---|---|---|"]
    for label, row in runs.items():
        mix, old = row["val"]["val mix"], row["val"]["val 256 mixed"]
        kept = f"{mix['sharp_psnr']:.2f} dB" if "sharp_psnr" in mix else "—"  # a tiny val set may draw no un-blurred sample
        lines.append(f"| {label} | `{row['command']}` | {row['steps']} | {row['cpu_minutes']:.1f} | {mix['psnr']:.2f} "
                     f"({row['inputs']['val mix']['psnr']:.2f}) | {kept} | {mix['ssim']:.4f} | "
                     f"{old['psnr']:.2f} ({row['inputs']['val 256 mixed']['psnr']:.2f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("loss", help="loss weights, e.g. ssim=0.15,l1=0.85 (terms: ssim, l1, mse, psnr; those not named are 0)")
    parser.add_argument("--minutes", type=float, default=30.0, help="CPU-minutes (default 30)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, its fine-tuning rate with --init)")
    parser.add_argument("--init", help="fine-tune these weights (default: the shipped model; or a .safetensors) instead of training from scratch")
    parser.add_argument("--crop", type=int, help="training crop side in pixels (default: the recipe's)")
    parser.add_argument("--isic", type=Path, default=ISIC)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.isic / "images").is_dir():
        sys.exit(f"{args.isic}: ISIC images not found; pass --isic DIR or set MEDDEBLUR_ISIC_DIR")
    try:
        loss = parse_loss(args.loss)
    except ValueError as error:
        sys.exit(f"loss {args.loss!r}: {error}")
    torch.set_num_threads(1)
    lr = args.lr if args.lr is not None else recipe_options("default", paired=False, fine_tune=args.init is not None)["lr"]
    label = run_label(args.loss, lr, args.crop, args.init)
    command = result_command("experiments.loss_probe", argv)
    with tempfile.TemporaryDirectory() as work:
        row = probe(args.isic, loss, args.minutes, Path(work), lr, args.init, args.crop)
    print(record(label, row, command, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
