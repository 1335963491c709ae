"""Install a finished training stage as the model shipped inside the package — only if it beats the shipped one.

    python scripts/ship_model.py RUN --threads 1            # RUN: a `meddeblur train --init default ...` run folder
    python scripts/ship_model.py RUN --threads 1 --target psf   # RUN: a `--arch psf-nafnet` run: the kernel-conditioned model

With ``--target psf`` the same rule installs src/meddeblur/weights/psf.safetensors (told each validation sample's true
kernel; its first start is the blind shipped model lifted to a psf-nafnet, which computes the same) and records the
stage in benchmarks/results/psf_training_stages.{json,md} and psf_training.{csv,png}.

The candidate (RUN/best.safetensors) and the shipped weights are scored on the run's own validation set
(for the default recipe the fixed validation mix: native, ½ and ¼ scale crops, half of them from a softened
source, the ``real`` families and un-blurred images). The candidate replaces src/meddeblur/weights/default.safetensors only when its
validation loss (L1 over the whole mix, un-blurred share included) is lower and its PSNR on the degraded
samples is not; either way the stage is
recorded in benchmarks/results/default_training_stages.{json,md} with its command, minutes, steps and
scores, and the training curve of a shipped stage goes to benchmarks/results/default_training.{csv,png}.
Then run the quality benchmark on the new weights and ``python -m benchmarks.report.model_card``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from meddeblur.data.pairs import PairDataset, load_pairs, read_split, select
from meddeblur.data.sampling import ScaledCrops
from meddeblur.degradation.spec import parse_spec
from meddeblur.device import machine_line
from meddeblur.losses import LossWeights, build_loss
from meddeblur.models import DEFAULT_WEIGHTS, PSF_ARCHITECTURES, PSF_WEIGHTS, build_model, lift_to_psf, load_model, save_weights, weights_id
from meddeblur.training.loop import run_epoch
from meddeblur.training.options import TrainOptions
from meddeblur.training.runs import read_run_options

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: --target: (shipped weights, stages record, training curve) — names under benchmarks/results.
TARGETS = {"default": (DEFAULT_WEIGHTS, "default_training_stages", "default_training"),
           "psf": (PSF_WEIGHTS, "psf_training_stages", "psf_training")}
TITLES = {"default": "Default model", "psf": "Kernel-conditioned model (psf-nafnet)"}
MAX_MEGABYTES = 20
DATA = "ISIC dermoscopy, 557 CC0 images; train split of the seed-42 70/20/10 split (benchmarks/isic_split.json)"


def validation_set(run: Path, options: TrainOptions):
    """The run's fixed validation set, as its training scored it."""
    pairs = select(load_pairs(options.blurred_dir, options.sharp_dir, options.degrade), read_split(run / "split.json")["val"], str(run / "split.json"))
    spec = parse_spec(options.degrade) if options.degrade else None
    if options.scales and spec is not None:
        return ScaledCrops(pairs, options.crop * 2, (1.0, 1.0), spec, options.seed, fixed=True, psf=options.arch in PSF_ARCHITECTURES)
    return PairDataset(pairs, size=options.size, crop=options.crop, seed=options.seed, degrade=spec, fixed=True)


def score(model: torch.nn.Module, dataset) -> dict[str, float]:
    """Val loss (L1, whole mix), PSNR / SSIM of the degraded samples, PSNR(out, in) of the un-blurred ones."""
    with torch.no_grad():
        return run_epoch(model, build_loss(LossWeights(ssim=0.0, l1=1.0), use_perceptual=False), DataLoader(dataset, batch_size=4), torch.device("cpu"))


def processes_of(run: Path) -> int:
    """How many torchrun processes trained ``run`` (its train.log says so), 1 without torchrun."""
    log = (run / "train.log").read_text(encoding="utf-8", errors="replace") if (run / "train.log").is_file() else ""
    found = re.search(r"data parallel: (\d+) processes", log)
    return int(found.group(1)) if found else 1


def train_command(options: dict, processes: int = 1) -> str:
    """The `meddeblur train` command line that reproduces a run's options (the recipe's values left out)."""
    from meddeblur.training.recipes import recipe_options

    recipe = recipe_options(options.get("recipe", "reference"), paired=False, fine_tune=bool(options.get("init")))
    launcher = f"torchrun --standalone --nproc_per_node {processes} -m meddeblur train" if processes > 1 else "meddeblur train"
    parts = [f"{launcher} --sharp ISIC/images"] + ([f"--recipe {options['recipe']}"] if options.get("recipe") == "reference" else [])
    flags = {"epoch_steps": "val-every"}
    for key, value in options.items():
        if key in ("recipe", "device", "amp", "channels_last", "skip_bad", "perceptual", "vgg19_weights", "lr_patience", "lr_factor", "seed"):
            continue
        if key == "budget_clock" and value == "wall" or key == "width" and options.get("init"):  # defaults; --init sets the width
            continue
        if key == "loss":
            default = recipe["loss"].__dict__
            parts += [f"--w-{term} {weight:g}" for term, weight in value.items() if weight != default[term]]
        elif key in recipe and (tuple(value) if isinstance(value, list) else value) == recipe[key] and not (
                key.endswith("_blocks") and options.get("init")):  # with --init, blocks come from the weights unless given
            continue
        elif value is not None:
            if key == "init" and Path(str(value)).is_absolute() and Path(str(value)).is_relative_to(ROOT):
                value = Path(str(value)).relative_to(ROOT).as_posix()  # a file in the repository: as a clone names it
            shown = "" if value is True else f" {value:g}" if isinstance(value, float) else \
                f" {','.join(map(str, value))}" if isinstance(value, (list, tuple)) else f" {value}"
            parts.append(f"--{flags.get(key, key.replace('_', '-'))}{shown}")
    return " ".join(parts)


def plot_training(history: list[dict], threads: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes, elapsed = [], 0.0
    for row in history:
        elapsed += float(row["seconds"]) / 60
        minutes.append(elapsed)
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(minutes, [float(r["val_psnr"]) for r in history], "o-", markersize=3, label="model (degraded val samples)")
    axis.axhline(float(history[-1]["val_input_psnr"]), color="gray", linestyle="--", label="degraded input")
    axis.set_xlabel("training minutes (wall clock, including validation)")
    axis.set_ylabel("val PSNR (dB), validation mix")
    axis.set_title(f"Latest shipped stage, {threads} thread(s) on a 2-core CPU")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def why_not_shipped(start: dict[str, float], candidate: dict[str, float]) -> str | None:
    """None when ``candidate`` replaces ``start``, else which condition it failed, in words.

    The rule: a lower L1 loss over the whole validation mix (un-blurred share included) and no lower PSNR on its
    degraded samples. An identity network has a lower loss than a model that harms sharp images, but it restores nothing.
    """
    reasons = []
    if not candidate["loss"] < start["loss"]:
        reasons.append(f"its L1 loss on the validation mix did not fall ({start['loss']:.5f} → {candidate['loss']:.5f})")
    if candidate["psnr"] < start["psnr"]:
        reasons.append(f"its PSNR on the degraded samples fell ({start['psnr']:.2f} → {candidate['psnr']:.2f} dB)")
    return "; ".join(reasons) or None


class ImageChannels(torch.nn.Module):
    """The "model" that returns its input's image channels: the input's own score (a PSF model's input also holds its kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3]


def shipped_start(target: str) -> torch.nn.Module:
    """The weights a stage must beat: the shipped ones; for a first kernel-conditioned stage, the blind model lifted."""
    if target == "default" or PSF_WEIGHTS.is_file():
        return load_model(TARGETS[target][0])[0]
    blind, config, _ = load_model(None)
    state, lifted = lift_to_psf(blind.state_dict(), config)
    network = build_model(lifted)
    network.load_state_dict(state)
    return network.eval()


def stages_markdown(stages: list[dict], target: str = "default") -> str:
    lines = [f"# {TITLES[target]}: training stages", "",
             ("The first stage starts from the shipped blind model lifted to a psf-nafnet (the same output until it learns to use the "
              "PSF); each later one from the previous shipped weights. " if target == "psf" else "") +
             "Each stage continues from the previous shipped weights (`--init default`) and replaces them only when its "
             "validation-mix L1 loss is lower and its PSNR on the degraded samples is not (`python scripts/ship_model.py RUN`). Val mix: the 111 validation images at native, ½ "
             "and ¼ scale (256-px crops), the `real` families, un-blurred samples included; " + (
                 "from stage 4 on, half of them come from a softened source (σ 0.7 or 1.0, a softer camera), so rows from stage 4 on are not "
                 "comparable with earlier ones (each row's start and stage are scored on the same mix). " if target == "default" else
                 "half of them come from a softened source (σ 0.7 or 1.0, a softer camera). ") + "PSNR over the degraded samples, "
             "'sharp kept' = PSNR(output, input) over the un-blurred ones, both for the stage's weights and for the weights it started from.",
             "", "| stage | date | command | minutes (wall / CPU) | steps | val mix PSNR: input → start → stage | sharp kept: start → stage | "
             "val loss: start → stage | shipped | id |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in stages:
        lines.append(f"| {s['stage']} | {s['date']} | `{s['command']}` | {s['wall_minutes']:.0f} / {s['cpu_minutes']:.0f} | {s['steps']} | "
                     f"{s['input']['psnr']:.2f} → {s['start']['psnr']:.2f} → {s['candidate']['psnr']:.2f} | "
                     f"{s['start']['sharp_psnr']:.2f} → {s['candidate']['sharp_psnr']:.2f} | {s['start']['loss']:.5f} → {s['candidate']['loss']:.5f} | "
                     f"{'yes' if s['shipped'] else 'no: ' + s.get('not_shipped_because', 'the validation mix did not improve')} | `{s['id']}` |")
    by_machine: dict[str, list[int]] = {}  # hosts differ between sessions; name each stage's own
    for s in stages:
        by_machine.setdefault(s["machine"], []).append(s["stage"])
    if len(by_machine) > 1:
        machines = "; ".join(f"{machine} (stage{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))})"
                             for machine, numbers in by_machine.items())
    else:
        machines = next(iter(by_machine), "")
    origin = ("Stage 0 (`5be7353d1c30`, shipped 2026-11-24): trained from scratch with the former recipe (256×256 resize, "
              "`mixed`, Adam 1e-3, plateau), 44 epochs in 91 minutes; its scores are stage 1's 'start'. " if target == "default" else
              "Every sample of the validation mix is told its true kernel. ")
    return "\n".join(lines) + f"\n\n{origin}Machine of the stages: {machines}, {stages[-1]['threads'] if stages else 1} intra-op thread(s).\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="finished `meddeblur train` run folder")
    parser.add_argument("--threads", type=int, required=True, help="intra-op threads the run used, for the record")
    parser.add_argument("--target", choices=tuple(TARGETS), default="default", help="which shipped model the stage competes with")
    args = parser.parse_args(argv)
    run = args.run
    weights, stages_name, curve_name = TARGETS[args.target]
    options = read_run_options(run)
    candidate, config, candidate_path = load_model(run)
    if (config.arch in PSF_ARCHITECTURES) != (args.target == "psf"):
        sys.exit(f"{run}: a {config.arch} run cannot replace the {args.target} model; use --target {'psf' if args.target == 'default' else 'default'}")
    shipped = shipped_start(args.target)
    dataset = validation_set(run, options)
    identity = ImageChannels()
    scores = {"input": score(identity, dataset), "start": score(shipped, dataset), "candidate": score(candidate, dataset)}
    with open(run / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    stages_file = RESULTS / f"{stages_name}.json"
    stages = json.loads(stages_file.read_text()) if stages_file.is_file() else []
    rejected = why_not_shipped(scores["start"], scores["candidate"])
    improved = rejected is None
    run_options = {k: v for k, v in json.loads((run / "run.json").read_text())["options"].items() if k not in ("out", "sharp_dir", "blurred_dir")}
    processes = processes_of(run)
    stage = {"stage": len(stages) + 1, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "command": train_command(run_options, processes),
             "options": run_options, "started_from": weights_id(weights if weights.is_file() else DEFAULT_WEIGHTS), "id": weights_id(candidate_path),
             # history.csv holds rank 0's CPU time; torchrun's processes do equal work.
             "wall_minutes": sum(float(r["seconds"]) for r in history) / 60,
             "cpu_minutes": processes * sum(float(r["cpu_seconds"] or 0) for r in history) / 60, "processes": processes,
             "steps": int(history[-1]["steps"]), "epochs": len(history), "threads": args.threads,
             "machine": machine_line(), "shipped": improved, **scores}
    if rejected:
        stage["not_shipped_because"] = rejected
    stages.append(stage)
    summary = (f"stage {stage['stage']}: val mix loss {scores['start']['loss']:.5f} → {scores['candidate']['loss']:.5f}, PSNR "
               f"{scores['start']['psnr']:.2f} → {scores['candidate']['psnr']:.2f} dB (input {scores['input']['psnr']:.2f}), sharp kept "
               f"{scores['start']['sharp_psnr']:.2f} → {scores['candidate']['sharp_psnr']:.2f} dB")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if improved:
        training = {"recipe": options.recipe, "run_options": run_options, "data": DATA, "stage": stage["stage"], "val_mix": scores,
                    "wall_minutes": stage["wall_minutes"], "cpu_minutes": stage["cpu_minutes"], "steps": stage["steps"],
                    "threads": args.threads, "processes": processes, "machine": stage["machine"], "shipped": stage["date"]}
        save_weights(candidate, config, weights, extra={"training": training})
        stage["id"] = weights_id(weights)  # the shipped file's own id (its metadata differs from the run's)
    stages_file.write_text(json.dumps(stages, indent=2) + "\n")
    (RESULTS / f"{stages_name}.md").write_text(stages_markdown(stages, args.target))
    if not improved:
        print(f"{summary}: not shipped, {rejected}; the shipped model stays and the stage is recorded")
        return 1
    megabytes = weights.stat().st_size / 1e6
    if megabytes > MAX_MEGABYTES:
        sys.exit(f"{weights}: {megabytes:.1f} MB exceeds the {MAX_MEGABYTES} MB limit for shipped weights")
    shutil.copyfile(run / "history.csv", RESULTS / f"{curve_name}.csv")
    plot_training(history, args.threads, RESULTS / f"{curve_name}.png")
    print(f"{summary}: shipped as {weights} ({megabytes:.1f} MB, id {weights_id(weights)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
