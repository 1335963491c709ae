"""Train the blur estimator on synthetic blur of the sharp training images and write its weights.

    python scripts/train_estimator.py --out runs/estimator/estimator.safetensors --max-minutes 30
    python scripts/train_estimator.py --out runs/estimator2/estimator.safetensors --init src/meddeblur/weights/estimator.safetensors \
        --seed 1 --max-minutes 40                       # a further stage on a fresh draw
    cp runs/estimator/estimator.* src/meddeblur/weights/       # to ship it (then: benchmarks/psf_estimation.py)

Samples: ``CELL``-px crops of the train split's images (``--split``), the ``real`` degradation mix; validation from the
val split. See :mod:`meddeblur.training.estimator`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from meddeblur.training.estimator import EstimatorOptions, train_estimator

HERE = Path(__file__).resolve().parent
DEFAULT_ISIC = Path(os.environ.get("MEDDEBLUR_ISIC_DIR", HERE.parents[1] / "shared" / "data" / "isic-dermoscopy"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sharp", type=Path, default=DEFAULT_ISIC / "images")
    parser.add_argument("--split", type=Path, default=HERE.parent / "benchmarks" / "isic_split.json")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=EstimatorOptions.samples)
    parser.add_argument("--val-samples", type=int, default=EstimatorOptions.val_samples)
    parser.add_argument("--epochs", type=int, default=EstimatorOptions.epochs)
    parser.add_argument("--max-minutes", type=float, default=EstimatorOptions.max_minutes)
    parser.add_argument("--lr", type=float, default=EstimatorOptions.lr, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--workers", type=int, default=EstimatorOptions.workers)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, help="continue from these weights (e.g. the shipped src/meddeblur/weights/estimator.safetensors)")
    parser.add_argument("--samples-cache", type=Path, help="keep the drawn samples in this file (not committed) for a rerun of the same draw")
    args = parser.parse_args(argv)
    if args.out.exists():
        sys.exit(f"{args.out}: exists; choose a new --out (weights are never overwritten)")
    torch.set_num_threads(args.threads)
    options = EstimatorOptions(samples=args.samples, val_samples=args.val_samples, epochs=args.epochs, max_minutes=args.max_minutes, lr=args.lr,
                               seed=args.seed, workers=args.workers, init=args.init, samples_cache=args.samples_cache)
    record = train_estimator(args.sharp, args.split, args.out, options, log=lambda line: print(line, flush=True))
    print(record["validation"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
