"""Folder runs as archives: images/s with 1 and 2 local workers and on an embedded Ray, and what a rerun costs.

A script, not a test. ~200 generated dermoscopy-like images of mixed sizes (PNG and JPEG, 96 to --max-side px) are
deblurred with the shipped model into one folder per configuration:

* local, 1 worker (this process, torch's own threads: all cores; and again with 1 thread) and 2 workers (processes
  of cores/2 threads each: what ``meddeblur deblur`` does by default for 8 or more images on 2 cores);
* Ray Data with 1 and 2 actors on an embedded local Ray (the ``ray`` extra), its start-up (``ray.init``) timed apart.

For each: the wall time, the time to the first finished image (start-up: worker processes or actors loading the
model) and the steady throughput after it, (images − 1) / (last − first finish). Every output is compared with
the 1-worker run's, pixel for pixel. Then the rerun: ``meddeblur deblur`` (a fresh process, as a user runs it) over
the finished folder, which must skip everything, against the first run's wall time.

    python -m benchmarks.archive                         # writes benchmarks/results/archive.{json,md}
    python -m benchmarks.archive --images 20 --skip-ray  # quicker
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.runs.plan import plan_run
from meddeblur.runs.execute import InProcess
from meddeblur.runs.jobs import Settings
from meddeblur.runs.workers import LocalWorkers, ModelSpec, set_threads
from meddeblur.io.decode import read_image
from meddeblur.io.encode import write_image

from benchmarks.common import RESULTS, command, machine_line, write_result



def make_images(folder: Path, count: int, max_side: int, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` images, sides drawn from 96..max_side, every third a JPEG; returns their (height, width)."""
    rng = np.random.default_rng(seed)
    sizes = []
    for index in range(count):
        height, width = (int(side) for side in rng.integers(96, max_side + 1, size=2))
        suffix = ".jpg" if index % 3 == 0 else ".png"
        write_image(folder / f"{index:04d}{suffix}", synthetic_dermoscopy(height, width, seed=index))
        sizes.append((height, width))
    return sizes


def timed_run(make_executor, folder: Path, warm_up: Path, out: Path, record: dict) -> dict:
    """Run every task of ``folder`` → ``out`` on a fresh executor: wall and images/s, and both after start-up.

    Start-up (processes or actors starting and loading the model, Ray Data planning) is the wall time of the same
    configuration on ``warm_up``'s two small images, run first on an executor of its own.
    """
    walls = []
    for source, target in ((warm_up, out.with_name(out.name + "-warm-up")), (folder, out)):
        plan = plan_run([source], target, record)
        executor = make_executor()
        started = time.perf_counter()
        try:
            outcomes = list(executor.run(plan.tasks, lambda *_: None))
        finally:
            executor.close()
        walls.append(time.perf_counter() - started)
        assert {outcome.status for outcome in outcomes} == {"written"} and len(outcomes) == len(plan.tasks)
    startup, wall = walls
    work = max(wall - startup, 1e-9)
    return {"images": len(outcomes), "wall_s": round(wall, 2), "images_per_s": round(len(outcomes) / wall, 3),
            "startup_s": round(startup, 2), "after_startup_s": round(work, 2), "images_per_s_after_startup": round(len(outcomes) / work, 3)}


def identical(reference: Path, other: Path) -> bool:
    names = sorted(p.name for p in reference.iterdir())
    return names == sorted(p.name for p in other.iterdir()) and all(
        np.array_equal(read_image(reference / name).rgb, read_image(other / name).rgb) for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--skip-ray", action="store_true", help="leave out the Ray rows (without the ray extra they are left out anyway)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for archive.json and archive.md")
    parser.add_argument("--note", default="", help="a line about the machine's state (say, a training job running beside)")
    args = parser.parse_args(argv)
    spec = ModelSpec(device="cpu")
    engine = spec.load()
    record, settings = engine.provenance, Settings()
    load_before = os.getloadavg()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="meddeblur-archive-") as scratch:
        root = Path(scratch)
        sizes = make_images(root / "in", args.images, args.max_side)
        warm_up = root / "warm-up"
        for index in range(2):
            write_image(warm_up / f"{index}.png", synthetic_dermoscopy(96, 96, seed=10_000 + index))
        rows["local, 1 worker"] = timed_run(lambda: InProcess(engine, settings), root / "in", warm_up, root / "local-1", record)
        threads = torch.get_num_threads()
        set_threads(1)
        rows["local, 1 worker, 1 thread"] = timed_run(lambda: InProcess(engine, settings), root / "in", warm_up, root / "local-1t", record)
        set_threads(threads)
        rows["local, 1 worker, 1 thread"]["identical_to_1_worker"] = identical(root / "local-1", root / "local-1t")
        rows["local, 2 workers"] = timed_run(lambda: LocalWorkers(spec, settings, 2), root / "in", warm_up, root / "local-2", record)
        rows["local, 2 workers"]["identical_to_1_worker"] = identical(root / "local-1", root / "local-2")
        ray_started = None
        if not args.skip_ray:
            try:
                import ray
            except ImportError:
                ray = None
            if ray is not None:
                from meddeblur.runs.ray_actors import RayActors
                from meddeblur.runs.workers import cores

                began = time.perf_counter()
                ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False, configure_logging=False)
                ray_started = round(time.perf_counter() - began, 2)
                for actors in (1, 2):
                    name = f"Ray, {actors} actor{'s' if actors > 1 else ''}"
                    rows[name] = timed_run(lambda actors=actors: RayActors(spec, settings, actors), root / "in", warm_up,
                                           root / f"ray-{actors}", record)
                    rows[name]["identical_to_1_worker"] = identical(root / "local-1", root / f"ray-{actors}")
                ray.shutdown()
        began = time.perf_counter()
        rerun = subprocess.run([sys.executable, "-m", "meddeblur", "deblur", str(root / "in"), "-o", str(root / "local-1"), "--quiet",
                                "--device", "cpu"], capture_output=True, text=True, check=True)
        rerun_s = time.perf_counter() - began
        assert f"{args.images} skipped" in rerun.stdout, rerun.stdout
    pixels = [h * w for h, w in sizes]
    result = {"command": command("archive", argv), "machine": machine_line(), "note": args.note,
              "load_average_before": [round(v, 2) for v in load_before], "load_average_after": [round(v, 2) for v in os.getloadavg()],
              "images": args.images, "megapixels": round(sum(pixels) / 1e6, 2), "sides": [96, args.max_side],
              "model": record.get("model_id"), "rows": rows, "ray_init_s": ray_started,
              "rerun": {"wall_s": round(rerun_s, 2), "share_of_first_run": round(rerun_s / rows["local, 1 worker"]["wall_s"], 4),
                        "summary": rerun.stdout.strip().splitlines()[0]}}
    write_result("archive", result, markdown(result), Path(args.out))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    rows = result["rows"]
    local = {1: rows["local, 1 worker"], 2: rows["local, 2 workers"]}
    lines = [f"# Folder runs: workers, Ray and reruns ({result['images']} images)", "",
             f"`{result['command']}` on {result['machine']}; load average {result['load_average_before']} before, "
             f"{result['load_average_after']} after." + (f" {result['note']}" if result["note"] else ""), "",
             f"{result['images']} generated images, sides {result['sides'][0]}–{result['sides'][1]} px ({result['megapixels']} megapixels "
             f"in all, PNG and JPEG), the shipped model {result['model']} on the CPU.", "",
             "| run | wall s | images/s | start-up s | after start-up s | images/s after start-up | pixels as 1 worker |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, row in rows.items():
        same = row.get("identical_to_1_worker")
        lines.append(f"| {name} | {row['wall_s']} | {row['images_per_s']} | {row['startup_s']} | {row['after_startup_s']} | "
                     f"{row['images_per_s_after_startup']} | {'—' if same is None else ('identical' if same else 'DIFFERENT')} |")
    lines += ["", "Start-up: the same configuration's wall time on two 96×96 images, run first on its own (worker processes or "
              "actors starting and loading the model); after start-up = wall − start-up."]
    if result["ray_init_s"] is not None:
        lines += ["", f"Embedded Ray start-up (`ray.init`, not in the rows): {result['ray_init_s']} s."]
        for workers in (1, 2):
            ray_row = rows.get(f"Ray, {workers} actor{'s' if workers > 1 else ''}")
            if ray_row:
                base = local[workers]["after_startup_s"]
                ratio = f"{ray_row['after_startup_s'] / base - 1:+.1%}" if base > 0 else "n/a (the local run was all start-up)"
                lines.append(f"- {workers} worker(s): Ray's wall time after start-up {ratio} against local "
                             f"(with start-up {ray_row['wall_s'] / local[workers]['wall_s'] - 1:+.1%}).")
    rerun = result["rerun"]
    lines += ["", f"Rerun over the finished folder (`meddeblur deblur` in a fresh process, everything skipped): {rerun['wall_s']} s, "
              f"{rerun['share_of_first_run']:.1%} of the 1-worker run's wall time. It said: \"{rerun['summary']}\".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
