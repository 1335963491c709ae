"""Learning per CPU-hour at equal CPU time: the shipped model's former recipe against the default recipe, or (``--compare psf``)
the kernel-conditioned restorer against the blind network it is lifted from.

A script, not a test. Both train from scratch on the ISIC train split (seed-42 split, as `meddeblur train`
makes it over the whole folder) for the same budget of *process CPU time* (``budget_clock="cpu"``: all
threads counted, validation and checkpoints included), one intra-op thread each, one after the other
(or both at once with ``--jobs 2``, one core each).
CPU time, so that other jobs on the 2-core machine cannot tilt the comparison. Then the best weights of
each are scored on the same two validation sets (the 111 val images):

- ``val mix``: the default recipe's validation — native, ½ and ¼ scale crops of 256 px with the ``real``
  mix (un-blurred share included; PSNR over the degraded ones, the un-blurred ones as PSNR(out, in));
- ``val 256 mixed``: the former recipe's validation — images resized to 256×256 with ``mixed``.

``--compare psf`` fine-tunes the shipped blind weights with the default recipe's fine-tuning values (as
``meddeblur train --init default`` sets them) twice: as the ``nafnet`` they are, and lifted to a ``psf-nafnet``
(:func:`meddeblur.models.lift_to_psf`: the same output at step 0) that is told each crop's true kernel (the recipe's
``perturb_psf`` share zoomed). Both are scored on the val mix at the start and at the end, the psf-nafnet told each
sample's true kernel (as ``scripts/ship_model.py --target psf`` scores it); results go to ``train_speed_psf.{json,md}``.

    python -m benchmarks.experiments.train_speed --minutes 30                 # both recipes, then the tables
    python -m benchmarks.experiments.train_speed --minutes 30 --jobs 2        # the same, both recipes at once (half the wall time)
    python -m benchmarks.experiments.train_speed --parallel                   # samples/s: 1 vs 2 threads vs torchrun 2×1
    python -m benchmarks.experiments.train_speed --compare psf --minutes 12 --jobs 2   # psf-nafnet vs blind nafnet, both fine-tuned
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
from meddeblur.losses import LossWeights, build_loss
from meddeblur.models import DEFAULT_WEIGHTS, PSF_ARCHITECTURES, build_model, load_model, weights_id
from meddeblur.training.loop import init_weights, run_epoch, train
from meddeblur.training.options import TrainOptions
from meddeblur.training.recipes import recipe_options

from benchmarks.common import ISIC, RESULTS, command as result_command, machine_line, write_result

#: The recipe the shipped model id 5be7353d1c30 was trained with (src/meddeblur/weights/default.json before issue 11).
FORMER = {"arch": "nafnet", "size": 256, "crop": None, "degrade": "mixed", "batch": 8, "lr": 1e-3, "optimizer": "adam",
          "schedule": "plateau", "loss": LossWeights(ssim=0.15, l1=0.85), "patience": 20, "epochs": 100_000}
#: --compare psf: row label → architecture the shipped blind weights are fine-tuned as (the label's first word names its run folder).
PSF_ARMS = {"blind nafnet": "nafnet", "psf-nafnet told the kernel": "psf-nafnet"}


def recipes(minutes: float) -> dict[str, dict]:
    current = recipe_options("default", paired=False)
    return {"former (shipped 5be7353d1c30)": {**FORMER, "max_minutes": minutes},
            "default": {**current, "max_minutes": minutes}}


def psf_recipes(minutes: float) -> dict[str, dict]:
    """--compare psf: the default recipe's fine-tuning values from the shipped blind weights, once per :data:`PSF_ARMS` architecture."""
    tuning = {**recipe_options("default", paired=False, fine_tune=True), "max_minutes": minutes, "init": "default",
              "enc_blocks": None, "middle_blocks": None, "dec_blocks": None}  # the weights' own layout, as with `--init`
    return {label: {**tuning, "arch": arch} for label, arch in PSF_ARMS.items()}


def val_mix(val: list, psf: bool = False) -> ScaledCrops:
    """The default recipe's validation mix of the validation pairs ``val``; ``psf``: each sample carries its true kernel."""
    return ScaledCrops(val, 256, (1.0, 1.0), parse_spec("real"), fixed=True, psf=psf)


def val_sets(val: list) -> dict[str, torch.utils.data.Dataset]:
    """The two validation sets every recipe is scored on (``val``: the validation pairs)."""
    return {"val mix": val_mix(val), "val 256 mixed": PairDataset(val, size=256, degrade=parse_spec("mixed"), fixed=True)}


def start_model(options: TrainOptions) -> torch.nn.Module:
    """The network a run with ``init`` starts from, as training builds it (a psf-nafnet: the blind weights lifted)."""
    state, config, _ = init_weights(options.init, options.arch)
    network = build_model(config)
    network.load_state_dict(state)
    return network.eval()


def scores(weights: Path | torch.nn.Module, datasets: dict[str, torch.utils.data.Dataset]) -> dict[str, dict[str, float]]:
    model = load_model(weights)[0] if isinstance(weights, (str, Path)) else weights
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


def compare(isic: Path, minutes: float, work: Path, jobs: int = 1, psf: bool = False) -> dict:
    """Both recipes (``psf``: both :data:`PSF_ARMS`) for ``minutes`` of CPU time each; ``jobs`` 2 trains them side by side (one core each)."""
    images = isic / "images"
    pairs = sharp_only(images)
    torch.set_num_threads(1)
    runs = {label: TrainOptions(blurred_dir=None, sharp_dir=str(images), out=str(work / label.split()[0]), threads=1,
                                budget_clock="cpu", device="cpu", **values) for label, values in (psf_recipes if psf else recipes)(minutes).items()}
    if jobs > 1:
        # spawn, not fork: a forked child would inherit this process's torch thread pool
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {label: pool.submit(_train_row, label, options) for label, options in runs.items()}
            rows = {label: future.result() for label, future in futures.items()}
    else:
        rows = {label: _train_row(label, options) for label, options in runs.items()}
    split = read_split(Path(next(reversed(runs.values())).out) / "split.json")  # every run's: the seed-42 split of the whole folder
    val = select(pairs, split["val"], "split")
    sets = {"val mix": val_mix(val)} if psf else val_sets(val)
    inputs = {name: _identity_scores(dataset) for name, dataset in sets.items()}
    for label, options in runs.items():
        told = {"val mix": val_mix(val, psf=True)} if options.arch in PSF_ARCHITECTURES else sets
        rows[label]["val"] = scores(Path(options.out) / "best.safetensors", told)
        if options.init:  # fine-tuning: where it started, and what each CPU-minute bought
            rows[label]["start"] = scores(start_model(options), told)
            rows[label]["gain_per_cpu_minute"] = (rows[label]["val"]["val mix"]["psnr"] - rows[label]["start"]["val mix"]["psnr"]) / rows[label]["cpu_minutes"]
    extra = {"compare": "psf", "init_id": weights_id(DEFAULT_WEIGHTS)} if psf else {}
    return {"minutes": minutes, "jobs": jobs, "rows": rows, "inputs": inputs, "val_images": len(val), "train_images": len(split["train"]), **extra}


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


def _budget(result: dict, start: str) -> str:
    return (f"Budget: {result['minutes']:g} CPU-minutes each (process CPU time, 1 thread, validation included), {start}, "
            f"ISIC train split ({result['train_images']} images); "
            f"{'trained side by side, one core each' if result.get('jobs', 1) > 1 else 'trained one after the other'}; both scored on the same {result['val_images']} val images")


def psf_markdown(result: dict) -> list[str]:
    """The lines of the ``--compare psf`` table: start and end on the val mix, gain per CPU-minute."""
    rows = result["rows"]
    options = next(iter(rows.values()))["options"]
    loss = ", ".join(f"{term}={weight:g}" for term, weight in options["loss"].items() if weight and (term != "perceptual" or options["perceptual"]))
    lines = [_budget(result, f"both from the shipped blind weights `{result['init_id']}` with the default recipe's fine-tuning values "
                     f"(`--init default`: loss {loss}, AdamW lr {options['lr']:g}, {options['crop']}-px crops, batch {options['batch']}, "
                     f"cosine over the budget); the psf-nafnet is those weights lifted (the same output at step 0), told each training crop's "
                     f"true kernel ({options['perturb_psf']:.0%} of them zoomed 0.8–1.25×)") + ", the psf-nafnet told each sample's true kernel.", "",
             f"| model | steps | samples | samples / CPU-s | CPU min | val mix PSNR start (input {result['inputs']['val mix']['psnr']:.2f}) | "
             "val mix PSNR end | gain | gain / CPU-min | sharp kept start → end |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        start, end = row["start"]["val mix"], row["val"]["val mix"]
        kept = f"{start['sharp_psnr']:.2f} → {end['sharp_psnr']:.2f} dB" if "sharp_psnr" in end else "—"
        lines.append(f"| {label} | {row['steps']} | {row['samples']} | {row['samples_per_cpu_second']:.2f} | {row['cpu_minutes']:.1f} | "
                     f"{start['psnr']:.2f} | {end['psnr']:.2f} | {end['psnr'] - start['psnr']:+.2f} | {row['gain_per_cpu_minute']:+.4f} | {kept} |")
    blind, told = rows.values()
    lines += ["", f"psf-nafnet − blind nafnet on the val mix at the end: **{told['val']['val mix']['psnr'] - blind['val']['val mix']['psnr']:+.2f} dB** "
              f"(at the start {told['start']['val mix']['psnr'] - blind['start']['val mix']['psnr']:+.2f} dB)."]
    return lines


def markdown(result: dict) -> str:
    psf = result.get("compare") == "psf"
    title = "kernel-conditioned restorer vs blind network" if psf else "former recipe vs default recipe"
    lines = [f"# Training speed: {title} at equal CPU time", "",
             f"Machine: {result['machine']}. Command: `{result['command']}`.", ""]
    if psf:
        lines += psf_markdown(result)
    elif "rows" in result:
        inputs = result["inputs"]
        lines += [_budget(result, "from scratch") + ".", "",
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
    parser.add_argument("--compare", choices=("recipes", "psf"), default="recipes",
                        help="recipes: former vs default from scratch; psf: the shipped blind weights fine-tuned as a nafnet vs lifted to a "
                             "psf-nafnet told the kernel (benchmarks/results/train_speed_psf.*)")
    parser.add_argument("--parallel", action="store_true", help="only measure 1 vs 2 threads vs torchrun 2×1 (wall clock)")
    parser.add_argument("--parallel-steps", type=int, default=40)
    parser.add_argument("--isic", type=Path, default=ISIC)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.isic / "images").is_dir():
        sys.exit(f"{args.isic}: ISIC images not found; pass --isic DIR or set MEDDEBLUR_ISIC_DIR")
    if args.parallel and args.compare == "psf":
        parser.error("--parallel measures the default recipe only; drop --compare psf")
    name = "train_speed_psf" if args.compare == "psf" else "train_speed"
    path = args.out / f"{name}.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update(machine=machine_line())
    command = result_command("experiments.train_speed", argv)
    with tempfile.TemporaryDirectory() as work:
        if args.parallel:
            result["parallel"] = parallel(args.isic, args.parallel_steps, Path(work))
            result["parallel_command"] = command
            result.setdefault("command", command)
        else:
            result.update(compare(args.isic, args.minutes, Path(work), args.jobs, psf=args.compare == "psf"), command=command)
    write_result(name, result, markdown(result), args.out, default=str)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
