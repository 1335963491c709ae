"""Parameters, FLOPs and CPU inference time of each architecture / config.

A script, not a test. Per row: trainable parameters, GFLOP per 256×256 image
(:func:`meddeblur.models.count_flops`: PyTorch's FlopCounterMode, FLOPs = 2 × MACs, convs
and matmuls only), and the median wall time of single-image forward passes in eval mode
under ``torch.inference_mode`` at 256×256 and 1024×768 (W×H), after one warm-up pass.

The machine is shared: before each timed series the script waits (up to ``--quiet-wait``
seconds) until other processes use less than ``--quiet-below`` cores, and it records how
many cores they used *during* the series (from /proc/stat minus this process), so a
disturbed number is visible as such.

A full run ends with the number the default model is held to (at most 2× the former network's time per
1024×768, issue 11): the shipped network (its own weights) and the former one timed in alternating
passes, since series run one after the other meet a host whose speed drifts.

    python -m benchmarks.flops                          # writes benchmarks/results/flops.{json,md}
    python -m benchmarks.flops --only nafnet-w16-lite   # one row
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from meddeblur.models import ModelConfig, build_model, count_flops, count_parameters, load_model, weights_id

from benchmarks.common import RESULTS, command, describe_machine, write_result

SIZES = {"256x256": (256, 256), "1024x768": (768, 1024)}  # label (W×H) → (H, W)

# label → config. The NAFNet rows are the candidates tried for the default (models.NAFNET_DEFAULTS is lite) and
# the network it grew into.
ROWS: dict[str, ModelConfig] = {
    "attention-unet-w64 (reference)": ModelConfig(width=64),
    "attention-unet-w32": ModelConfig(width=32),
    "attention-unet-residual-w64": ModelConfig(arch="attention-unet-residual", width=64),
    "attention-unet-residual-w32": ModelConfig(arch="attention-unet-residual", width=32),
    "nafnet-w16-full": ModelConfig(arch="nafnet", width=16, enc_blocks=(1, 1, 2, 4), middle_blocks=4, dec_blocks=(1, 1, 1, 1)),
    "nafnet-w16-lite": ModelConfig(arch="nafnet", width=16, enc_blocks=(0, 1, 2, 4), middle_blocks=4, dec_blocks=(0, 1, 1, 1)),
    # stage 3 of the default model: lite grown by one full-resolution block and one more at ½ and ¼ on the way up
    "nafnet-w16-grown": ModelConfig(arch="nafnet", width=16, enc_blocks=(0, 1, 2, 4), middle_blocks=4, dec_blocks=(1, 2, 2, 1)),
    # stage 4: grown again by one full-resolution block on the way down (not shipped: over 2× the lite time per 1024×768)
    "nafnet-w16-stage4": ModelConfig(arch="nafnet", width=16, enc_blocks=(1, 1, 2, 4), middle_blocks=4, dec_blocks=(1, 2, 2, 1)),
    # stage 6: the stage-3 network with two more blocks at 1/16 resolution (not shipped: soft sources got worse)
    "nafnet-w16-mid6": ModelConfig(arch="nafnet", width=16, enc_blocks=(0, 1, 2, 4), middle_blocks=6, dec_blocks=(1, 2, 2, 1)),
    "nafnet-w24-lite": ModelConfig(arch="nafnet", width=24, enc_blocks=(0, 1, 2, 4), middle_blocks=4, dec_blocks=(0, 1, 1, 1)),
    "nafnet-w32-lite": ModelConfig(arch="nafnet", width=32, enc_blocks=(0, 1, 1, 4), middle_blocks=2, dec_blocks=(0, 1, 1, 1)),
}
#: The network of stages 0–2 (id 5be7353d1c30), whose time per 1024×768 bounds the default model's (≤ 2×, issue 11).
FORMER = "nafnet-w16-lite"


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of all cores, busy ticks of this process); None where /proc is missing."""
    try:
        values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        own = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return None
    return sum(values) - values[3] - values[4], int(own[11]) + int(own[12])  # minus idle and iowait; utime + stime


class OtherLoad:
    """Cores used by other processes between ``start()`` and ``stop()`` (None without /proc)."""

    def start(self) -> None:
        self.ticks, self.time = _cpu_ticks(), time.perf_counter()

    def stop(self) -> float | None:
        end, elapsed = _cpu_ticks(), time.perf_counter() - self.time
        if end is None or self.ticks is None or elapsed <= 0:
            return None
        others = (end[0] - self.ticks[0]) - (end[1] - self.ticks[1])
        return max(0.0, others / os.sysconf("SC_CLK_TCK") / elapsed)


def wait_for_quiet(below: float, max_wait: float) -> float | None:
    """Sleep in 2-second probes until other processes use < ``below`` cores; the last probe's value."""
    deadline, load = time.monotonic() + max_wait, None
    probe = OtherLoad()
    while True:
        probe.start()
        time.sleep(2.0 if max_wait > 0 else 0.05)
        load = probe.stop()
        if load is None or load < below or time.monotonic() >= deadline:
            return load


def _passes(models: tuple[torch.nn.Module, ...], height: int, width: int, repeats: int,
            quiet: tuple[float, float]) -> tuple[list[list[float]], float | None]:
    """Seconds of ``repeats`` rounds of one forward pass per model (in turn), and the other load meanwhile."""
    image = torch.rand(1, 3, height, width)
    durations: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            model(image)  # warm-up: allocator, oneDNN primitives
        wait_for_quiet(*quiet)
        load = OtherLoad()
        load.start()
        for _ in range(repeats):
            for model, series in zip(models, durations, strict=True):
                started = time.perf_counter()
                model(image)
                series.append(time.perf_counter() - started)
        other = load.stop()
    return durations, None if other is None else round(other, 2)


def time_forward(model: torch.nn.Module, height: int, width: int, repeats: int, quiet: tuple[float, float]) -> dict:
    (durations,), other = _passes((model,), height, width, repeats, quiet)
    return {"median_s": statistics.median(durations), "min_s": min(durations), "repeats": repeats, "other_cores": other}


def measure(label: str, config: ModelConfig, sizes: list[str], repeats: int, big_repeats: int,
            quiet: tuple[float, float]) -> dict:
    torch.manual_seed(0)
    model = build_model(config).eval()
    params, _ = count_parameters(model)
    row = {"label": label, "config": json.loads(json.dumps(asdict(config))), "parameters": params,
           "gflop_256": count_flops(model, 256, 256) / 1e9}
    for size in sizes:
        height, width = SIZES[size]
        # The heavy networks at 1024×768 take seconds per pass: fewer repeats there.
        count = big_repeats if height * width > 256 * 256 and row["gflop_256"] > 50 else repeats
        row[size] = time_forward(model, height, width, count, quiet)
    return row


def paired(former: torch.nn.Module, shipped: torch.nn.Module, size: str, pairs: int, quiet: tuple[float, float]) -> dict:
    """Seconds per ``size`` image of two networks timed in alternating passes (former, shipped, former, …).

    Two series one after the other can meet different hosts: on this machine the same network took 1.56 s
    per 1024×768 in one run of this script and 1.78 s in the next while the former took 0.91 and 0.87 s.
    Alternating passes meet the same host, so the median of the per-pair ratios is what a user would see.
    """
    (former_s, shipped_s), other = _passes((former, shipped), *SIZES[size], pairs, quiet)
    return {"size": size, "pairs": pairs, "former_median_s": statistics.median(former_s), "shipped_median_s": statistics.median(shipped_s),
            "ratio": statistics.median([b / a for a, b in zip(former_s, shipped_s, strict=True)]), "other_cores": other}


def write(result: dict, out: Path) -> None:
    write_result("flops", result, markdown(result), out)


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Model size, FLOPs and CPU inference time", "",
             f"Date: {result['date']}. Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
             f"({m['torch_threads']} threads), Python {m['python']}. Command: `{result['command']}`", "",
             "GFLOP: `meddeblur.models.count_flops` (torch.utils.flop_counter.FlopCounterMode; FLOPs = 2 × MACs; "
             "convolutions and matrix products only) for one 256×256 image. Times: median wall time of one-image "
             "forward passes, eval mode, `torch.inference_mode`, after a warm-up pass. \"Other load\": cores used by "
             "other processes during the timed series (the machine is shared; 0 = undisturbed).", "",
             "| model | config | parameters | GFLOP / 256² | ms / 256² (median) | s / 1024×768 (median) | repeats | other load (cores) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        c = r["config"]
        detail = (f"w{c['width']} enc {tuple(c['enc_blocks'])} mid {c['middle_blocks']} dec {tuple(c['dec_blocks'])}"
                  if c["arch"] == "nafnet" else f"w{c['width']}")
        small, big = r.get("256x256") or {}, r.get("1024x768") or {}
        ms = f"{small['median_s'] * 1000:.0f}" if small else "–"
        seconds = f"{big['median_s']:.2f}" if big else "–"
        lines.append(f"| {r['label']} | {detail} | {r['parameters']:,} | {r['gflop_256']:.2f} | {ms} | {seconds} | "
                     f"{small.get('repeats', '–')} / {big.get('repeats', '–')} | "
                     f"{small.get('other_cores', '–')} / {big.get('other_cores', '–')} |")
    if "paired" in result:
        p = result["paired"]
        lines += ["", f"**Shipped vs former network, alternating passes** ({p['pairs']} pairs at {p['size']}, other load {p['other_cores']} cores; "
                  f"the shipped network with its own weights, `{p['shipped_id']}`): {p['shipped_median_s']:.2f} s vs {p['former_median_s']:.2f} s "
                  f"(`{p['former']}`), median ratio **{p['ratio']:.2f}×**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(ROWS), help="rows to measure (default: all)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per size (default 10)")
    parser.add_argument("--big-repeats", type=int, default=3, help="timed passes at 1024×768 for models over 50 GFLOP")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet-below", type=float, default=0.2, help="wait until other processes use fewer cores")
    parser.add_argument("--quiet-wait", type=float, default=600, help="longest wait for quiet, seconds per series")
    parser.add_argument("--pairs", type=int, default=10, help="alternating passes of the shipped and the former network after a full run (0: none)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for label in args.only or list(ROWS):
        row = measure(label, ROWS[label], args.sizes, args.repeats, args.big_repeats, (args.quiet_below, args.quiet_wait))
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": describe_machine(),
              "command": command("flops", argv), "rows": rows}
    if args.pairs > 0 and not args.only:
        torch.manual_seed(0)
        shipped, config, weights = load_model(None)
        result["paired"] = {"former": FORMER, "shipped_config": json.loads(json.dumps(asdict(config))), "shipped_id": weights_id(weights),
                            **paired(build_model(ROWS[FORMER]).eval(), shipped.eval(), "1024x768", args.pairs, (args.quiet_below, args.quiet_wait))}
    write(result, args.out)
    print((args.out / "flops.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
