"""Seconds per image: the blind default model and each known-blur method told a PSF, side by side in one run.

A script, not a test: run it on a quiet machine. Both go through :class:`meddeblur.Deblurrer` exactly as
``meddeblur deblur`` does (default tiling: whole images up to 1024 px), on the same random image, with the same
threads; the kernel-conditioned model is told each PSF of ``--psfs`` (its FFT data step grows with the kernel's
support). Reported: median and minimum over ``--repeats`` timed passes after a warm-up, and the ratio to the blind
model's median — the cost target is at most 1.5× per 1024×768 image for the kernel-conditioned network, 3× for the
plug-and-play restorer (``--methods``: the known-blur methods to time; each is also timed per iteration count). ``method psf`` (the PSF estimated from the
image, restored with, checked) is timed on the same image blurred with a Gaussian σ 1.6 (one PSF), and with σ 0.8
on its left half and 2.4 on its right (restored cell by cell where the estimates disagree), and with linear motion
of 9 px (the motion length measured in every cell's spectrum: the slowest estimate); its target is 2×.

    python -m benchmarks.psf_speed                      # writes benchmarks/results/psf_speed.{json,md}
    python -m benchmarks.psf_speed --psf-model runs/psf-stage1 --sizes 256x256 --repeats 2 --out /tmp/x   # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.models import PSF_WEIGHTS
from meddeblur.restore import registry
from meddeblur.restore.pnp import PnPSettings

from benchmarks.common import RESULTS, command, machine_line, write_result

DEFAULT_SIZES = ["1024x768", "256x256"]  # width x height
DEFAULT_PSFS = ["gauss:sigma=1.6", "motion:length=21,angle=30", "defocus:radius=8"]


def timed(run, image: np.ndarray, repeats: int) -> dict[str, float]:
    run(image)  # warm-up: allocator, oneDNN primitives
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(image)
        seconds.append(time.perf_counter() - started)
    return {"median_s": statistics.median(seconds), "min_s": min(seconds)}


def _blurred(image: np.ndarray, left: str, right: str | None = None) -> np.ndarray:
    """``image`` blurred with the PSF spec ``left``, or with ``left`` on its left half and ``right`` on its right half."""
    from meddeblur.inference.consistency import reblur
    from meddeblur.psf import load_psf

    blurred = reblur(image, load_psf(left))
    if right is None:
        return blurred
    half = image.shape[1] // 2
    return np.concatenate([blurred[:, :half], reblur(image, load_psf(right))[:, half:]], axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--psf-model", default=str(PSF_WEIGHTS), help="kernel-conditioned weights (default: the shipped ones)")
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="WIDTHxHEIGHT (default 1024x768 256x256)")
    parser.add_argument("--psfs", nargs="+", default=DEFAULT_PSFS, help="PSF specs the kernel-conditioned model is told")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=[registry.NETWORK, "pnp"], choices=registry.names(registry.Told.PSF),
                        help="known-blur methods told each PSF (default: the kernel-conditioned network and plug-and-play)")
    parser.add_argument("--pnp-iterations", nargs="*", type=int, default=[2, 4, 6, 8], help="plug-and-play also timed at these "
                        "iteration counts (the first PSF only): what each iteration costs")
    parser.add_argument("--no-estimated", dest="estimated", action="store_false", help="leave out method psf")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="psf_speed", help="results file name, without .json/.md (default psf_speed)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    blind = Deblurrer.load(None, device="cpu")
    known = Deblurrer.load(args.psf_model, device="cpu")
    rows = []
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        image = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
        base = timed(blind, image, args.repeats)
        rows.append({"image": size, "model": f"blind default ({blind.model_id})", "psf": "—", **base, "ratio": 1.0})
        for spec in args.psfs:
            for method in args.methods:
                extra = [n for n in args.pnp_iterations if n != PnPSettings().iterations] if method == "pnp" and spec == args.psfs[0] else []
                runs = [{}] + [{"iterations": n} for n in extra]
                for options in runs:
                    bound = (known if method == registry.NETWORK else blind).with_psf(spec, method=method, **options)
                    result = timed(bound, image, args.repeats)
                    name = (f"psf-nafnet ({known.model_id})" if method == registry.NETWORK else f"{method} ({bound.model_id})"
                            if "model_id" in bound.provenance else method)
                    iterations = bound.provenance["parameters"].get("iterations") if method == "pnp" else None
                    rows.append({"image": size, "model": name + (f", {iterations} iterations" if iterations else ""), "psf": spec, **result,
                                 "ratio": result["median_s"] / base["median_s"]})
                    print(f"{size} {rows[-1]['model']} {spec}: {result['median_s']:.3f} s ({rows[-1]['ratio']:.2f}× blind "
                          f"{base['median_s']:.3f} s)", flush=True)
        if args.estimated:
            estimated = blind.with_estimated_psf()
            scenes = (("estimated: one blur", _blurred(image, "gauss:sigma=1.6")),
                      ("estimated: two blurs", _blurred(image, "gauss:sigma=0.8", "gauss:sigma=2.4")),
                      ("estimated: motion", _blurred(image, "motion:length=9,angle=30")))  # the length measured in every cell
            for label, scene in scenes:
                result = timed(estimated, scene, args.repeats)
                path = estimated.restore_rgb(scene)[1]
                taken = path["result"] + (", cell by cell" if "psf_map" in path else "")
                rows.append({"image": size, "model": f"method psf ({estimated.provenance['parameters']['estimator_id']})", "psf": label,
                             **result, "ratio": result["median_s"] / base["median_s"], "result": taken})
                print(f"{size} {label} ({taken}): {result['median_s']:.3f} s ({rows[-1]['ratio']:.2f}× blind)", flush=True)
    machine = f"{machine_line()}, {args.threads} thread(s)"
    result = {"command": command("psf_speed", argv), "machine": machine, "date": date.today().isoformat(), "repeats": args.repeats, "rows": rows}
    lines = ["# Known-blur restoration: time per image", "",
             f"`{result['command']}` — {result['date']}, {machine}; median (min) of {args.repeats} passes after a warm-up, "
             "through `Deblurrer` as `meddeblur deblur` runs (whole images up to 1024 px). ratio: to the blind default model's median "
             "on the same image in the same run (targets at 1024×768: ≤ 1.5× for the kernel-conditioned network, ≤ 3× for "
             "plug-and-play, ≤ 2× for method psf).", "",
             "| image | model | PSF | seconds | ratio to blind |", "|---|---|---|---|---|"]
    lines += [f"| {r['image']} | {r['model']} | `{r['psf']}`{' (' + r['result'] + ')' if 'result' in r else ''} | {r['median_s']:.3f} "
              f"({r['min_s']:.3f}) | {r['ratio']:.2f}× |" for r in rows]
    write_result(args.name, result, "\n".join(lines) + "\n", args.out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
