"""Learning per CPU-hour: the shipped model's former recipe against the current default recipe, at equal CPU time.

A script, not a test. Both train from scratch on the ISIC train split (seed-42 split, as `meddeblur train`
makes it over the whole folder) for the same budget of *process CPU time* (``budget_clock="cpu"``: all
threads counted, validation and checkpoints included), one intra-op thread each, one after the other
(or both at once with ``--jobs 2``, one core each).
CPU time, so that other jobs on the 2-core machine cannot tilt the comparison. Then the best weights of
each are scored on the same two validation sets (the 111 val images):

- ``val mix``: the default recipe's validation — native, ½ and ¼ scale crops of 256 px with the ``real``
  mix (un-blurred share included; PSNR over the degraded ones, the un-blurred ones as PSNR(out, in));
- ``val 256 mixed``: the former recipe's validation — images resized to 256×256 with ``mixed``.

    python benchmarks/train_speed.py --minutes 30                 # both recipes, then the tables
    python benchmarks/train_speed.py --minutes 30 --jobs 2        # the same, both recipes at once (half the wall time)
    python benchmarks/train_speed.py --parallel                   # samples/s: 1 vs 2 threads vs torchrun 2×1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from meddeblur.data.pairs import PairDataset, read_split, select, sharp_only
from meddeblur.data.sampling import ScaledCrops
from meddeblur.degradation.spec import parse_spec
from meddeblur.device import machine_line
from meddeblur.losses import LossWeights, build_loss
from meddeblur.models import load_model
from meddeblur.training.loop import run_epoch, train
from meddeblur.training.options import TrainOptions
from meddeblur.training.recipes import recipe_options

HERE = Path(__file__).resolve().parent
DEFAULT_ISIC = Path(os.environ.get("MEDDEBLUR_ISIC_DIR", HERE.parents[1] / "shared" / "data" / "isic-dermoscopy"))
RESULTS = HERE / "results"
#: The recipe the shipped model id 5be7353d1c30 was trained with (src/meddeblur/weights/default.json before issue 11).
FORMER = {"arch": "nafnet", "size": 256, "crop": None, "degrade": "mixed", "batch": 8, "lr": 1e-3, "optimizer": "adam",
          "schedule": "plateau", "loss": LossWeights(ssim=0.15, l1=0.85), "patience": 20, "epochs": 100_000}


def recipes(minutes: float) -> dict[str, dict]:
    current = recipe_options("default", paired=False)
    return {"former (shipped 5be7353d1c30)": {**FORMER, "max_minutes": minutes},
            "default": {**current, "max_minutes": minutes}}


def val_sets(val: list) -> dict[str, torch.utils.data.Dataset]:
    """The two validation sets every recipe is scored on (``val``: the validation pairs)."""
    return {"val mix": ScaledCrops(val, 256, (1.0, 1.0), parse_spec("real"), fixed=True),
            "val 256 mixed": PairDataset(val, size=256, degrade=parse_spec("mixed"), fixed=True)}


def scores(weights: Path, datasets: dict[str, torch.utils.data.Dataset]) -> dict[str, dict[str, float]]:
    model, _, _ = load_model(weights)
    loss_fn = build_loss(LossWeights(ssim=0.0, l1=1.0), use_perceptual=False)
    out = {}
    with torch.no_grad():
        for name, dataset in datasets.items():
            out[name] = run_epoch(model, loss_fn, DataLoader(dataset, batch_size=4), torch.device("cpu"))
    return out


def _train_row(label: str, options: TrainOptions) -> dict:
    """Train one recipe (1 thread, CPU-time budget) and describe the run; module level so a worker process can run it."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    train(options)
    history = _history(Path(options.out))
    cpu = sum(float(r["cpu_seconds"]) for r in history)
    steps = int(history[-1]["steps"])
    print(f"{label}: {steps} steps in {cpu / 60:.1f} CPU min", flush=True)
    return {"options": {k: v for k, v in asdict(options).items() if k not in ("out", "sharp_dir", "blurred_dir")},
            "cpu_minutes": cpu / 60, "wall_minutes": (time.perf_counter() - started) / 60, "steps": steps,
            "samples": steps * options.batch, "samples_per_cpu_second": steps * options.batch / cpu,
            "pixels_per_cpu_second": steps * options.batch * (options.crop or options.size) ** 2 / cpu,
            "epochs": len(history)}


def compare(isic: Path, minutes: float, work: Path, jobs: int = 1) -> dict:
    """Both recipes for ``minutes`` of CPU time each; ``jobs`` 2 trains them side by side (one core each)."""
    images = isic / "images"
    pairs = sharp_only(images)
    torch.set_num_threads(1)
    runs = {label: TrainOptions(blurred_dir=None, sharp_dir=str(images), out=str(work / label.split()[0]), threads=1,
                                budget_clock="cpu", device="cpu", **values) for label, values in recipes(minutes).items()}
    if jobs > 1:
        # spawn, not fork: a forked child would inherit this process's torch thread pool
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {label: pool.submit(_train_row, label, options) for label, options in runs.items()}
            rows = {label: future.result() for label, future in futures.items()}
    else:
        rows = {label: _train_row(label, options) for label, options in runs.items()}
    val = select(pairs, read_split(work / "default" / "split.json")["val"], "split")
    sets = val_sets(val)
    inputs = {name: _identity_scores(dataset) for name, dataset in sets.items()}
    for label in rows:
        rows[label]["val"] = scores(work / label.split()[0] / "best.safetensors", sets)
    return {"minutes": minutes, "jobs": jobs, "rows": rows, "inputs": inputs, "val_images": len(val),
            "train_images": len(read_split(work / "default" / "split.json")["train"])}


def _identity_scores(dataset) -> dict[str, float]:
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    loss_fn = build_loss(LossWeights(ssim=0.0, l1=1.0), use_perceptual=False)
    with torch.no_grad():
        return run_epoch(Identity(), loss_fn, DataLoader(dataset, batch_size=4), torch.device("cpu"))


def _history(run: Path) -> list[dict]:
    import csv

    with open(run / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def parallel(isic: Path, steps: int, work: Path) -> dict:
    """Wall-clock samples/s of the default recipe: 1 thread, 2 threads, torchrun with 2 processes × 1 thread."""
    base = [sys.executable, "-m", "meddeblur", "train", "--sharp", str(isic / "images"), "--steps", str(steps), "--device", "cpu"]
    setups = {"1 process × 1 thread": ([*base, "--threads", "1"], {}),
              "1 process × 2 threads": ([*base, "--threads", "2"], {}),
              "torchrun 2 processes × 1 thread": ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                                   "-m", "meddeblur", "train", "--sharp", str(isic / "images"), "--steps", str(steps),
                                                   "--device", "cpu", "--threads", "1"], {"OMP_NUM_THREADS": "1"})}
    out = {}
    for label, (command, env) in setups.items():
        run = work / label.replace(" ", "_")
        subprocess.run([*command, "--out", str(run)], check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        history = _history(run)
        seconds = sum(float(r["seconds"]) for r in history)
        batch = json.loads((run / "run.json").read_text())["options"]["batch"]
        out[label] = {"steps": int(history[-1]["steps"]), "wall_seconds": seconds, "samples_per_second": int(history[-1]["steps"]) * batch / seconds}
        print(f"{label}: {out[label]['samples_per_second']:.1f} samples/s", flush=True)
    return out


def markdown(result: dict) -> str:
    lines = ["# Training speed: former recipe vs default recipe at equal CPU time", "",
             f"Machine: {result['machine']}. Command: `{result['command']}`.", ""]
    if "rows" in result:
        inputs = result["inputs"]
        lines += [f"Budget: {result['minutes']:g} CPU-minutes each (process CPU time, 1 thread, validation included), from scratch, "
                  f"ISIC train split ({result['train_images']} images); "
                  f"{'trained side by side, one core each' if result.get('jobs', 1) > 1 else 'trained one after the other'}; both scored on the same {result['val_images']} val images.", "",
                  "| recipe | steps | samples | samples / CPU-s | Mpixel / CPU-s | val mix PSNR (input {:.2f}) | val mix sharp kept | "
                  "val 256 mixed PSNR (input {:.2f}) |".format(inputs["val mix"]["psnr"], inputs["val 256 mixed"]["psnr"]),
                  "|---|---|---|---|---|---|---|---|"]
        for label, row in result["rows"].items():
            mix, old = row["val"]["val mix"], row["val"]["val 256 mixed"]
            kept = f"{mix['sharp_psnr']:.2f} dB" if "sharp_psnr" in mix else "—"  # a tiny val set may draw no un-blurred sample
            lines.append(f"| {label} | {row['steps']} | {row['samples']} | {row['samples_per_cpu_second']:.2f} | "
                         f"{row['pixels_per_cpu_second'] / 1e6:.3f} | {mix['psnr']:.2f} | {kept} | {old['psnr']:.2f} |")
        former, current = result["rows"].values()
        gain = current["val"]["val mix"]["psnr"] - former["val"]["val mix"]["psnr"]
        lines += ["", f"Default recipe − former recipe on the val mix: **{gain:+.2f} dB** (target ≥ +1 dB)."]
    if "parallel" in result:
        lines += ["", "## Using both cores (default recipe, wall clock incl. one validation round, otherwise idle machine)", "", "| setup | steps | samples / s |", "|---|---|---|"]
        for label, row in result["parallel"].items():
            lines.append(f"| {label} | {row['steps']} | {row['samples_per_second']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="CPU-minutes per recipe (default 30)")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=1,
                        help="2: train both recipes at once, one core each (CPU-time budgets, so the comparison stays fair)")
    parser.add_argument("--parallel", action="store_true", help="only measure 1 vs 2 threads vs torchrun 2×1 (wall clock)")
    parser.add_argument("--parallel-steps", type=int, default=40)
    parser.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.isic / "images").is_dir():
        sys.exit(f"{args.isic}: ISIC images not found; pass --isic DIR or set MEDDEBLUR_ISIC_DIR")
    path = args.out / "train_speed.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update(machine=machine_line())
    command = "python benchmarks/train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as work:
        if args.parallel:
            result["parallel"] = parallel(args.isic, args.parallel_steps, Path(work))
            result["parallel_command"] = command
        else:
            result.update(compare(args.isic, args.minutes, Path(work), args.jobs), command=command)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "train_speed.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
