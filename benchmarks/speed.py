"""Training seconds per epoch and inference ms per 256×256 image, reference model at width 64 and 32.

A script, not a test. Training time is measured over a few real optimiser steps
(batch 8, 256×256, reference loss L1 + SSIM, Adam) and scaled to an epoch of the
reference data protocol: 140 train pairs (70 % of ~200) → 18 steps, plus a
validation pass over 40 pairs. Inference is the median over repeated single-image
forward passes in eval mode.

    python -m benchmarks.speed                       # writes benchmarks/results/speed.{json,md}
    python -m benchmarks.speed --widths 32 --steps 2 # quicker
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from meddeblur.losses import build_loss
from meddeblur.models import ModelConfig, build_model, count_parameters

from benchmarks.common import RESULTS, command, describe_machine, write_result

TRAIN_PAIRS, VAL_PAIRS, BATCH, SIZE = 140, 40, 8, 256


def time_training(width: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=width)).train()
    loss_fn = build_loss(use_perceptual=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
    blurred, sharp = torch.rand(BATCH, 3, SIZE, SIZE), torch.rand(BATCH, 3, SIZE, SIZE)
    durations = []
    for step in range(steps + 1):  # the first step warms up allocators and is not counted
        started = time.perf_counter()
        loss, _ = loss_fn(model(blurred), sharp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            durations.append(time.perf_counter() - started)
    model.eval()
    with torch.no_grad():
        started = time.perf_counter()
        loss_fn(model(blurred), sharp)
        val_batch = time.perf_counter() - started
    step_s = statistics.median(durations)
    epoch_s = math.ceil(TRAIN_PAIRS / BATCH) * step_s + math.ceil(VAL_PAIRS / BATCH) * val_batch
    return {"train_step_s": step_s, "val_batch_s": val_batch, "epoch_s": epoch_s, "images_per_s": BATCH / step_s, "steps_timed": steps}


def time_inference(width: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=width)).eval()
    image = torch.rand(1, 3, SIZE, SIZE)
    durations = []
    with torch.inference_mode():
        model(image)
        for _ in range(repeats):
            started = time.perf_counter()
            model(image)
            durations.append(time.perf_counter() - started)
    return {"infer_ms_median": 1000 * statistics.median(durations), "infer_ms_min": 1000 * min(durations), "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per width")
    parser.add_argument("--repeats", type=int, default=10, help="timed inference passes per width")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for width in args.widths:
        params, _ = count_parameters(build_model(ModelConfig(width=width)))
        row = {"width": width, "parameters": params, **time_training(width, args.steps), **time_inference(width, args.repeats)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"machine": describe_machine(), "command": command("speed", argv),
              "protocol": f"batch {BATCH}, {SIZE}×{SIZE}, epoch = {TRAIN_PAIRS} train + {VAL_PAIRS} val pairs", "rows": rows}
    lines = [f"# Speed of the reference Attention U-Net ({result['protocol']})", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, torch {result['machine']['torch']} "
             f"({result['machine']['torch_threads']} threads). Command: `{result['command']}`", "",
             "| width | parameters | train step (s, batch 8) | train images/s | epoch (s) | inference ms / 256×256 (median) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['width']} | {r['parameters']:,} | {r['train_step_s']:.2f} | {r['images_per_s']:.2f} | {r['epoch_s']:.0f} | {r['infer_ms_median']:.0f} |")
    write_result("speed", result, "\n".join(lines) + "\n", args.out)
    print((args.out / "speed.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
