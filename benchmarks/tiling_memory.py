"""Peak memory and time of tiled inference on a 4000×3000 image (``meddeblur.inference.tiling.deblur_tiled``).

A script, not a test. Each model runs in a fresh child process, so its peak resident set
size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is that run's alone: Python, torch,
the model, the input image, the tiling's padded copy and float32 canvases, and one tile's
activations. Random weights: memory and time do not depend on their values.

    python -m benchmarks.tiling_memory      # writes benchmarks/results/tiling_memory.{json,md}
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, command, describe_machine, write_result
from benchmarks.flops import OtherLoad, wait_for_quiet
MODELS = {"attention-unet-w64 (reference)": {"width": 64}, "nafnet (default config)": {"arch": "nafnet"}}


def child(config: dict, height: int, width: int, tile: int, overlap: int, threads: int) -> dict:
    import torch

    from meddeblur.inference.tiling import deblur_tiled, tile_starts
    from meddeblur.models import ModelConfig, build_model, count_parameters, size_multiple

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model_config = ModelConfig(**config)
    model = build_model(model_config).eval()
    multiple = size_multiple(model_config)
    image = torch.rand(1, 3, height, width)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tiles = len(tile_starts(height + (-height) % multiple, tile, overlap, multiple)) * len(tile_starts(width + (-width) % multiple, tile, overlap, multiple))
    load = OtherLoad()
    load.start()
    started = time.perf_counter()
    output = deblur_tiled(model, image, tile=tile, overlap=overlap, multiple=multiple)
    seconds = time.perf_counter() - started
    other = load.stop()
    assert output.shape == image.shape and bool(torch.isfinite(output).all())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"config": asdict(model_config), "parameters": count_parameters(model)[0], "tiles": tiles,
            "seconds": seconds, "seconds_per_tile": seconds / tiles, "peak_rss_mib": peak / 1024,
            "rss_before_tiling_mib": before / 1024, "other_cores": None if other is None else round(other, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(MODELS))
    parser.add_argument("--size", type=int, nargs=2, default=[4000, 3000], metavar=("W", "H"))
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet-below", type=float, default=0.2)
    parser.add_argument("--quiet-wait", type=float, default=600)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    width, height = args.size
    if args.child:
        print(json.dumps(child(json.loads(args.child), height, width, args.tile, args.overlap, args.threads)))
        return 0
    rows = {}
    for label in args.only or list(MODELS):
        wait_for_quiet(args.quiet_below, args.quiet_wait)
        child_command = [sys.executable, "-m", "benchmarks.tiling_memory", "--child", json.dumps(MODELS[label]), "--size", str(width),
                         str(height), "--tile", str(args.tile), "--overlap", str(args.overlap), "--threads", str(args.threads)]
        done = subprocess.run(child_command, capture_output=True, text=True, check=True, cwd=ROOT)
        rows[label] = json.loads(done.stdout.strip().splitlines()[-1])
        print(label, json.dumps(rows[label]), flush=True)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": {**describe_machine(), "torch_threads": args.threads},
              "command": command("tiling_memory", argv),
              "image": f"{width}×{height}", "tile": args.tile, "overlap": args.overlap, "rows": rows}
    m = result["machine"]
    lines = [f"# Tiled inference of a {width}×{height} image: peak memory and time", "",
             f"Date: {result['date']}. Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({args.threads} threads). "
             f"Command: `{result['command']}`", "",
             f"`deblur_tiled(tile={args.tile}, overlap={args.overlap})`, random weights, one fresh process per model. "
             "Peak RSS is the whole process (Python + torch + model + input + padded copy + float32 canvas and weights + "
             "one tile's activations); \"before\" is after building the model and the input. \"Other load\": cores used by "
             "other processes meanwhile (shared machine; 0 = undisturbed).", "",
             "| model | parameters | tiles | seconds | s / tile | peak RSS (MiB) | RSS before tiling (MiB) | other load (cores) |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['parameters']:,} | {r['tiles']} | {r['seconds']:.0f} | {r['seconds_per_tile']:.2f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['rss_before_tiling_mib']:.0f} | {r['other_cores']} |")
    write_result("tiling_memory", result, "\n".join(lines) + "\n", args.out)
    print((args.out / "tiling_memory.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
