"""Milliseconds per image for the two inference engines: PyTorch and ONNX Runtime (CPU).

A script, not a test: run it on a quiet machine, nothing else using the cores. Each model is
exported with ``meddeblur.inference.onnx_engine.export_onnx`` and both engines deblur the same random image
through :class:`meddeblur.Deblurrer` (reflection padding to the size multiple, crop back;
whole image, no tiling, as ``deblur`` does for sides up to 1024), with the same number of threads.
Reported: the median and minimum over ``--repeats`` timed passes after one warm-up pass, and the
largest difference between the engines' outputs.

A model is a run folder or .safetensors file, ``default`` (the shipped model), or ``ARCH:WIDTH``
(random weights: the time depends on the architecture only).

    python -m benchmarks.onnx_speed                                   # writes benchmarks/results/onnx_speed.{json,md}
    python -m benchmarks.onnx_speed --models nafnet:8 --sizes 64x64 --repeats 1 --out /tmp/x   # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.inference.onnx_engine import export_onnx
from meddeblur.models import DEFAULT_WEIGHTS, ModelConfig, build_model, save_weights, weights_id

from benchmarks.common import RESULTS, command, describe_machine, write_result

DEFAULT_MODELS = ["default", "nafnet:16", "attention-unet:64"]
DEFAULT_SIZES = ["256x256", "1024x768"]  # width x height


def _weights(spec: str, folder: Path) -> Path | None:
    if spec == "default":
        return DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None
    if ":" in spec and not Path(spec).exists():
        arch, width = spec.split(":")
        config = ModelConfig(arch=arch, width=int(width))
        torch.manual_seed(0)
        network = build_model(config)
        with torch.no_grad():  # random, not the zero-initialised identity: every layer does real work
            for parameter in network.parameters():
                parameter.normal_(0, 0.02)
        return save_weights(network, config, folder / f"{arch}-{width}.safetensors")
    return Path(spec)


def _time(deblurrer: Deblurrer, rgb: np.ndarray, repeats: int) -> tuple[list[float], np.ndarray]:
    out = deblurrer(rgb)  # warm-up: allocations, ORT arena, oneDNN primitives
    durations = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = deblurrer(rgb)
        durations.append(1000 * (time.perf_counter() - started))
    return durations, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="default, ARCH:WIDTH, run folders or .safetensors")
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="WIDTHxHEIGHT (default 256x256 1024x768)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for both engines")
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            weights = _weights(spec, Path(tmp))
            if weights is None:
                print(f"{spec}: no shipped model in this installation, skipped", file=sys.stderr)
                continue
            # Whole images (tile=0): the engines are compared, not the tiling. ONNX Runtime gets torch's thread count.
            in_torch = Deblurrer.load(weights, engine="torch", device="cpu", tile=0)
            config = in_torch.config
            started = time.perf_counter()
            onnx_path = Path(tmp) / f"{weights.stem}.onnx"
            export_onnx(weights, onnx_path, opset=args.opset)
            export_s = time.perf_counter() - started
            in_onnx = Deblurrer.load(onnx_path, engine="onnx", device="cpu", tile=0)
            for width, height in sizes:
                rgb = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
                torch_ms, want = _time(in_torch, rgb, args.repeats)
                onnx_ms, got = _time(in_onnx, rgb, args.repeats)
                row = {"model": spec, "arch": config.arch, "width": config.width, "model_id": weights_id(weights),
                       "size": f"{width}x{height}", "torch_ms_median": statistics.median(torch_ms), "torch_ms_min": min(torch_ms),
                       "onnx_ms_median": statistics.median(onnx_ms), "onnx_ms_min": min(onnx_ms),
                       "max_abs_diff": float(np.abs(got - want).max()), "export_s": export_s, "repeats": args.repeats}
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {"machine": describe_machine(), "date": date.today().isoformat(), "threads": args.threads, "opset": args.opset,
              "command": command("onnx_speed", argv), "rows": rows}
    machine = result["machine"]
    lines = ["# Inference engines: PyTorch vs ONNX Runtime (CPU)", "",
             f"`{result['command']}` — {result['date']}, {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}, "
             f"{args.threads} thread(s) for both engines, opset {args.opset}, median of {args.repeats} passes after a warm-up.", "",
             "| model | image | PyTorch ms | ONNX Runtime ms | ONNX / PyTorch | max abs diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} ({r['arch']} width {r['width']}) | {r['size']} | {r['torch_ms_median']:.0f} | "
                     f"{r['onnx_ms_median']:.0f} | {r['onnx_ms_median'] / r['torch_ms_median']:.2f} | {r['max_abs_diff']:.1e} |")
    write_result("onnx_speed", result, "\n".join(lines) + "\n", args.out)
    print((args.out / "onnx_speed.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
