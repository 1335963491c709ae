"""How torch's CPU threads wait: seconds per image with OpenMP's spinning (ACTIVE) and sleeping (PASSIVE) waits,
on a quiet machine and beside another busy process — the case of a clinic's server, a DICOM node beside its archive,
or a folder run beside anything else.

Between parallel regions an OpenMP thread either spins (it keeps its core, ready at once) or sleeps. On a machine with
as many busy threads as cores a spinning thread burns the core its sibling needs, and every parallel region waits
for a thread the kernel has descheduled: the network runs several times slower. Sleeping threads give the
core back but wake late, which costs most where parallel regions are short (small images). This script measures both
sides, so that docs/python.md can say when to set ``OMP_WAIT_POLICY=PASSIVE``; meddeblur keeps torch's default. Each row runs in a fresh process (the variable is read
once, when torch's OpenMP runtime loads): the shipped model on a random 1024×768 and a 256×256 image through
:class:`meddeblur.Deblurrer`, as ``meddeblur deblur`` does, after a warm-up; "busy" adds one process spinning on one
core for the duration.

    python -m benchmarks.thread_wait            # writes benchmarks/results/thread_wait.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import RESULTS, command, machine_line, write_result

NAME = "thread_wait"
POLICIES = ("ACTIVE", "PASSIVE")
SIZES = ((1024, 768), (256, 256))  # width, height: a photograph, and a tile-sized image (short parallel regions)

_CHILD = """
import json, sys, time
import numpy as np
from meddeblur import Deblurrer
deblurrer = Deblurrer.load(None, "torch", "cpu")
image = np.random.default_rng(0).random((int(sys.argv[3]), int(sys.argv[2]), 3), dtype=np.float32)
deblurrer(image)
times = []
for _ in range(int(sys.argv[1])):
    tic = time.perf_counter()
    deblurrer(image)
    times.append(time.perf_counter() - tic)
print(json.dumps(times))
"""

_SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def timed(policy: str, repeats: int, busy: bool, size: tuple[int, int]) -> list[float]:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    spinner = subprocess.Popen([sys.executable, "-c", _SPIN]) if busy else None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(repeats), str(size[0]), str(size[1])],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows: dict[str, Any] = {}
    load_before = os.getloadavg()
    for width, height in SIZES:
        for busy in (False, True):
            for policy in POLICIES:
                times = timed(policy, args.repeats, busy, (width, height))
                label = f"{width}×{height}, {'beside a busy process' if busy else 'quiet'}, {policy}"
                rows[label] = {"median_s": statistics.median(times), "min_s": min(times), "times": times}
                print(f"{label}: {rows[label]['median_s']:.3f} s", flush=True)
    result = {
        "command": command(NAME, argv),
        "machine": machine_line(),
        "date": time.strftime("%Y-%m-%d"),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "repeats": args.repeats,
        "rows": rows,
    }
    lines = [
        "# How torch's threads wait: OMP_WAIT_POLICY",
        "",
        f"`{result['command']}` on {result['machine']}; load average {list(map(round, load_before, [2] * 3))} before.",
        "",
        "The shipped model, one image through `Deblurrer` (whole image), torch's default threads; median of "
        f"{args.repeats} timed passes after a warm-up, each setting in a fresh process. *Busy*: one other process spinning "
        "on one core meanwhile.",
        "",
        "| image | machine | ACTIVE (spin) s | PASSIVE (sleep) s | PASSIVE / ACTIVE |",
        "|---|---|---:|---:|---:|",
    ]
    for width, height in SIZES:
        for state in ("quiet", "beside a busy process"):
            key = f"{width}×{height}, {state}"
            active, passive = rows[f"{key}, ACTIVE"]["median_s"], rows[f"{key}, PASSIVE"]["median_s"]
            lines.append(f"| {width}×{height} | {state} | {active:.3f} | {passive:.3f} | {passive / active:.2f} |")
    write_result(NAME, result, "\n".join(lines) + "\n", out=RESULTS)


if __name__ == "__main__":
    main()
