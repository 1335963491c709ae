"""Install a finished training run as the model shipped inside the package, and commit its training curve.

    python scripts/ship_model.py RUN

Writes src/meddeblur/weights/default.safetensors (+ .json: config, the run's options, training time and
machine, validation scores), and benchmarks/results/default_training.{csv,json,png}: val PSNR against
training minutes, with the degraded input's val PSNR as the line to beat. Then run the quality benchmark
with ``--model src/meddeblur/weights/default.safetensors`` and ``python benchmarks/model_card.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path


from meddeblur.data import PairDataset, load_pairs, read_split, select
from meddeblur.degrade import parse_spec
from meddeblur.device import describe_machine
from meddeblur.evaluate import input_scores
from meddeblur.models import BEST_WEIGHTS, DEFAULT_WEIGHTS, load_model, save_weights
from meddeblur.train import read_run_options

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MAX_MEGABYTES = 20


def val_input_scores(run: Path) -> dict[str, float]:
    """PSNR / SSIM of the run's fixed val inputs against their sharp images: the level training starts from."""
    options = read_run_options(run)
    pairs = select(load_pairs(options.blurred_dir, options.sharp_dir, options.degrade), read_split(run / "split.json")["val"], str(run / "split.json"))
    dataset = PairDataset(pairs, size=options.size, crop=options.crop, seed=options.seed,
                          degrade=parse_spec(options.degrade) if options.degrade else None, fixed=True)
    return input_scores(dataset)


def plot_training(history: list[dict], input_psnr: float, threads: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes, elapsed = [], 0.0
    for row in history:
        elapsed += float(row["seconds"]) / 60
        minutes.append(elapsed)
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(minutes, [float(r["val_psnr"]) for r in history], "o-", markersize=3, label="model, val split")
    axis.axhline(input_psnr, color="gray", linestyle="--", label="degraded input")
    axis.axhline(input_psnr + 4, color="tab:red", linestyle=":", label="input + 4 dB (target)")
    axis.axvline(90, color="tab:red", linestyle=":", linewidth=0.8)
    axis.set_xlabel("training minutes (wall clock, including validation)")
    axis.set_ylabel("val PSNR (dB), mixed degradations")
    axis.set_title(f"Default model trained from scratch, {threads} thread(s) on a 2-core CPU")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="finished `meddeblur train` run folder")
    parser.add_argument("--threads", type=int, required=True, help="intra-op threads the run used (OMP_NUM_THREADS), for the record")
    args = parser.parse_args(argv)
    run = args.run
    model, config, _ = load_model(run)
    with open(run / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    best = json.loads((run / BEST_WEIGHTS).with_suffix(".json").read_text())
    inputs = val_input_scores(run)
    described = describe_machine()
    training = {
        "run_options": {k: v for k, v in json.loads((run / "run.json").read_text())["options"].items() if k not in ("out", "sharp_dir", "blurred_dir")},
        "data": "ISIC dermoscopy, 557 CC0 images; train split of the seed-42 70/20/10 split (benchmarks/isic_split.json)",
        "epochs": len(history), "best_epoch": best["epoch"],
        "wall_minutes": sum(float(r["seconds"]) for r in history) / 60,
        "cpu_minutes": sum(float(r["cpu_seconds"] or 0) for r in history) / 60,
        "threads": args.threads, "machine": f"{described['cpu']}, {described['cores']} cores, torch {described['torch']}",
        "val_psnr": best["val_psnr"], "val_ssim": best["val_ssim"], "val_input_psnr": inputs["psnr"], "val_input_ssim": inputs["ssim"],
        "shipped": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    DEFAULT_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, config, DEFAULT_WEIGHTS, extra={"training": training})
    megabytes = DEFAULT_WEIGHTS.stat().st_size / 1e6
    if megabytes > MAX_MEGABYTES:
        sys.exit(f"{DEFAULT_WEIGHTS}: {megabytes:.1f} MB exceeds the {MAX_MEGABYTES} MB limit for shipped weights")
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "history.csv", RESULTS / "default_training.csv")
    (RESULTS / "default_training.json").write_text(json.dumps({**training, "weights_mb": megabytes}, indent=2) + "\n")
    plot_training(history, inputs["psnr"], args.threads, RESULTS / "default_training.png")
    print(f"{DEFAULT_WEIGHTS} ({megabytes:.1f} MB): val PSNR {best['val_psnr']:.2f} dB vs input {inputs['psnr']:.2f} dB "
          f"after {training['wall_minutes']:.0f} min ({len(history)} epochs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
