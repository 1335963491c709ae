"""Quality benchmark on the ISIC dermoscopy images: input, classical baselines and models, per blur family.

A script, not a test. Four protocols (the test images are the targets; each is degraded, 8-bit quantised, restored):
  full — stored resolution (up to 1024 px; ``native`` is accepted as an old name for it);
  half — area down-scaled ×2 first (and quantised to 8 bits, like any exported copy);
  seed — area-resized to 256×256 first (like the reference; its own, older family set);
  soft — as ``half``, then each image blurred with a Gaussian of σ drawn per image in 0.7..1.0 (fixed seed) and
         re-quantised to 8 bits: a softer camera. That softened image is the target and what gets degraded.
Each protocol has a ``none`` column (an un-blurred input: a model must give it back unharmed; not in the mean).
Test images come from a fixed seeded 70/20/10 split of the 557 images (benchmarks/isic_split.json); each
classical method's parameters are chosen per family on validation images, never on test.

Classical rows are costly at full resolution, so their per-image scores are kept in a cache file
(``benchmarks/results/quality_classical_cache.json``, committed) and reused: an image's cached score is used
when the SHA-256 of its degraded input, target and kernel is unchanged (so any change to the images, the
split, the protocol or the degradation code recomputes it), and the tuning when the validation inputs,
the grid and the classical methods' code (:data:`CLASSICAL_MODULES`) are unchanged. Later runs then only compute the
model rows.

    python -m benchmarks.quality --protocol full --model default     # the shipped model as a row
    python -m benchmarks.quality --protocol seed half --model runs/mixed   # a run folder or .safetensors
    python -m benchmarks.quality --protocol all --model default psf   # + the kernel-conditioned model given the true PSF
    python -m benchmarks.quality --protocol all --model psf-estimated --methods --keep --cache /tmp/c.json
        # + the PSF estimated from each image; --keep: the rows already there stay; --methods (none): no classical rows run
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import statistics
import sys
import time
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from meddeblur.data.pairs import fixed_degradation, split_names, write_split
from meddeblur.degradation.kernels import gaussian_kernel
from meddeblur.degradation.pipeline import quantize8
from meddeblur.degradation.resampling import resize_area
from meddeblur.degradation.spec import parse_spec
from meddeblur.evaluation.classical import METHODS, restore, tune
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.decode import read_rgb
from meddeblur.io.listing import list_images
from meddeblur.metrics import ReferenceScorer
from meddeblur.models import DEFAULT_WEIGHTS, PSF_ARCHITECTURES, PSF_WEIGHTS
from meddeblur.models.denoiser import DENOISER_WEIGHTS
from meddeblur.restore.pnp import PnPSettings
from meddeblur.physics import blur
from meddeblur.restore import registry

from benchmarks.common import (ESTIMATED_ROW, ISIC, RESULTS, ROOT, SPLIT, UNBLURRED, command as result_command, machine_line,
                               write_result)

CACHE_NAME = "quality_classical_cache.json"
#: The modules whose code computes the classical rows: the true-kernel restorers, the physics they stand on, and the
#: baselines' module (the self-tuning Wiener and unsharp masking, the method table). Their hash keys the cache.
CLASSICAL_MODULES = ("meddeblur.restore.classical", "meddeblur.physics.boundary", "meddeblur.physics.operator",
                     "meddeblur.evaluation.classical")
SEED_FAMILIES = {  # fixed parameters (motion angle and shake path still vary per image, seeded)
    "gauss σ=1.2": "gauss:sigma=1.2",
    "gauss σ=2.0": "gauss:sigma=2.0",
    "defocus r=3": "defocus:radius=3",
    "motion L=11": "motion:length=11",
    "shake 11": "shake:extent=11",
    "down×2-up": "down:scale=2",
    "down×4-up": "down:scale=4",
    "mixed": "mixed",
    "sharp (none)": "none",
}
FAMILIES = {  # full, half, soft: the families of issue 11's table
    "gauss σ=1.6": "gauss:sigma=1.6",
    "defocus r=2.5": "defocus:radius=2.5",
    "shake 9": "shake:extent=9",
    "down×2 → PIL bicubic": "resample:scale=2,down=box,up=bicubic,lib=pil",
    "mixed": "mixed",
    "none": "none",
}
ESTIMATED = "psf-estimated"  # --model value: the PSF estimated from each image (method "psf")
PNP = "pnp"  # --model value: the plug-and-play restorer (the shipped denoiser), told the true kernel
BORDER = 16  # px: the "inner" PSNR leaves this margin out, to tell border effects from the rest
TRUE_KERNEL = tuple(name for name, method in registry.METHODS.items() if method.function)  # the classical restorers: Wiener, RL
RL_GRID = tuple({"iterations": n} for n in (0, 5, 10, 20, 30, 40))  # full/half/soft: 0 = give the input back
PROTOCOLS = {
    "seed": {"about": "area-resized to 256×256", "families": SEED_FAMILIES, "methods": tuple(METHODS), "val": 8, "grids": {}},
    "full": {"about": "stored resolution (up to 1024 px)", "families": FAMILIES, "methods": TRUE_KERNEL,
             "val": 4, "grids": {"rl": RL_GRID}},
    "half": {"about": "area down-scaled ×2, 8-bit", "families": FAMILIES, "methods": TRUE_KERNEL, "val": 4,
             "grids": {"rl": RL_GRID}},
    "soft": {"about": "area down-scaled ×2, then softened (Gaussian σ 0.7–1.0 per image, 8-bit): the softened image is the target",
             "families": FAMILIES, "methods": TRUE_KERNEL, "val": 4, "grids": {"rl": RL_GRID}},
}
ALIASES = {"native": "full"}
SOFT_SIGMA = (0.7, 1.0)
SOFT_SEED = 1107


def load_split(images: list[Path], split_path: Path = SPLIT) -> dict[str, list[str]]:
    """The committed split, or a new one (seed 42) written to ``split_path`` when none exists."""
    names = [p.stem for p in images]
    if split_path.is_file():
        split = json.loads(split_path.read_text())
        if sorted(split["train"] + split["val"] + split["test"]) != sorted(names):
            sys.exit(f"{split_path}: does not list exactly the images in the data folder; delete it to make a new split")
        return split
    split = split_names(names, seed=42)
    write_split(split_path, split, 42)
    return split


def soft_sigma(name: str) -> float:
    """The soft protocol's source blur of image ``name``: σ in 0.7..1.0, fixed by the name."""
    u = np.random.default_rng([SOFT_SEED, zlib.crc32(os.fsencode(name))]).random()
    return float(SOFT_SIGMA[0] + (SOFT_SIGMA[1] - SOFT_SIGMA[0]) * u)


def target_image(path: Path, protocol: str) -> np.ndarray:
    """The protocol's sharp target of one image, (H, W, 3) float32 in [0, 1]."""
    sharp = read_rgb(path)
    if protocol == "seed":
        return resize_area(sharp, (256, 256))
    if protocol == "full":
        return np.asarray(sharp, dtype=np.float32)
    half = resize_area(sharp, (sharp.shape[0] // 2, sharp.shape[1] // 2))
    if protocol == "half":  # a half-size copy is itself an 8-bit image: an un-blurred input then equals its target
        return (np.round(np.clip(half, 0.0, 1.0) * 255) / 255).astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(half.transpose(2, 0, 1)))[None]
    softened = quantize8(blur(tensor, gaussian_kernel(soft_sigma(path.stem))))
    return softened[0].numpy().transpose(1, 2, 0)


def prepare(path: Path, protocol: str, spec, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blurred, target, kernel) for one image and one family, identical on every run."""
    sharp = target_image(path, protocol)
    made, done = fixed_degradation(torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1))), spec, name)
    return made.numpy().transpose(1, 2, 0), sharp, done.kernel


def sample_digest(name: str, blurred: np.ndarray, target: np.ndarray, kernel: np.ndarray) -> str:
    """SHA-256 (first 16 hex) of what a classical method sees and is scored against."""
    digest = hashlib.sha256(name.encode())
    for array in (blurred, target, kernel):
        array = np.ascontiguousarray(array, dtype=np.float32)
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def classical_version() -> str:
    """SHA-256 (first 12 hex) over the files of :data:`CLASSICAL_MODULES`: any change to them recomputes the rows.

    Each file enters as a line ``module sha256``, so moving code between them changes the version too.
    """
    lines = []
    for name in CLASSICAL_MODULES:
        source = Path(importlib.import_module(name).__file__).read_bytes()
        lines.append(f"{name} {hashlib.sha256(source).hexdigest()}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


class Cache:
    """Per-image classical scores and per-family tuning, in one JSON file (see the module docstring).

    ``entries[protocol | family | method]`` holds the tuning key (spec, grid, :func:`classical_version`, validation
    images and the digest of their inputs), the chosen parameters, and per test image
    ``[digest, psnr, ssim, seconds, megapixels]``. ``computed`` / ``reused`` count images this run.
    """

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}
        self.data.setdefault("about", "Classical rows of benchmarks/quality.py, reused while their inputs are unchanged; "
                                      "written by that script. seconds: measured when computed.")
        self.data.setdefault("entries", {})
        self.computed = 0
        self.reused = 0

    def entry(self, protocol: str, family: str, method: str, tuning_key: dict) -> dict:
        key = f"{protocol} | {family} | {method}"
        entry = self.data["entries"].get(key)
        if entry is None or entry.get("tuning_key") != tuning_key:
            entry = self.data["entries"][key] = {"tuning_key": tuning_key, "params": None, "val_psnr": None, "images": {}}
        return entry

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        lines = ['{', f'  "about": {json.dumps(self.data["about"], ensure_ascii=False)},', '  "entries": {']
        items = sorted(self.data["entries"].items())
        for i, (key, entry) in enumerate(items):  # one line per image keeps the committed file diffable
            head = {k: v for k, v in entry.items() if k != "images"}
            body = ",\n".join(f"      {json.dumps(n)}: {json.dumps(v)}" for n, v in sorted(entry["images"].items()))
            text = json.dumps(head, ensure_ascii=False)[:-1] + ', "images": {\n' + body + "\n    }}"
            lines.append(f"    {json.dumps(key, ensure_ascii=False)}: {text}" + ("," if i < len(items) - 1 else ""))
        lines += ["  }", "}"]
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.path)


def model_label(model: str) -> tuple[str | None, str]:
    """(what load_model takes, row name) for a ``--model`` argument; ``default`` is the shipped weights."""
    if model == "default":
        return None, "default"
    if model == "psf":
        return str(PSF_WEIGHTS), "psf"
    path = Path(model)
    if path.resolve() == DEFAULT_WEIGHTS.resolve():
        return model, "default"
    return model, path.name if path.is_dir() else path.stem


def run(protocol: str, isic: Path, models: list[str], methods: list[str], families: dict[str, str],
        limit: int | None, val_limit: int, cache: Cache, split_path: Path = SPLIT) -> dict:
    images = {p.stem: p for p in list_images(isic / "images")}
    split = load_split(list(images.values()), split_path)
    test_names = split["test"][:limit] if limit else split["test"]
    val_names = split["val"][:val_limit]
    grids = PROTOCOLS[protocol]["grids"]
    version = classical_version()
    loaded = []
    for model in models:
        if model == PNP:
            deblurrer = Deblurrer.load(None, device="cpu", tile=0).with_psf("none", method=PNP)
            loaded.append((f"non-blind (true PSF): {PNP}", deblurrer, {"path": str(DENOISER_WEIGHTS), "id": deblurrer.model_id, "arch": PNP,
                                                                     "settings": asdict(PnPSettings())}))
            continue
        if model == ESTIMATED:  # blind: the PSF estimated from each image, restored by the shipped kernel-conditioned model
            deblurrer = Deblurrer.load(None, device="cpu", tile=0).with_estimated_psf()
            loaded.append((ESTIMATED_ROW, deblurrer, {"path": str(deblurrer.weights), "id": deblurrer.model_id, "arch": "psf-nafnet",
                                                        "estimator_id": deblurrer.provenance["parameters"]["estimator_id"]}))
            continue
        argument, name = model_label(model)
        deblurrer = Deblurrer.load(argument, device="cpu", tile=0)  # whole images, as the protocols were measured
        config = deblurrer.config
        # A kernel-conditioned model is told the true kernel, as the Wiener and RL rows are: the honest comparison.
        label = f"non-blind (true PSF): {name}" if config.arch in PSF_ARCHITECTURES else f"model: {name}"
        loaded.append((label, deblurrer,
                       {"path": str(deblurrer.weights), "id": deblurrer.model_id, "arch": config.arch, "width": config.width}))
    rows: dict[str, dict] = {"input": {"families": {}, "seconds": 0.0}}
    for name in methods:
        rows[METHODS[name].label] = {"families": {}, "seconds": 0.0, "params": {}}
    for label, _, info in loaded:
        rows[label] = {"families": {}, "seconds": 0.0, "model": info}
    megapixels = 0.0
    started_all = time.perf_counter()
    for family, spec_text in families.items():
        spec = parse_spec(spec_text)
        started = time.perf_counter()
        val = [prepare(images[n], protocol, spec, n) for n in val_names]
        val_digest = hashlib.sha256("".join(sample_digest(n, *v) for n, v in zip(val_names, val)).encode()).hexdigest()[:16]
        entries = {}
        for name in methods:
            grid = grids.get(name, METHODS[name].grid)
            key = {"spec": spec_text, "grid": [dict(p) for p in grid], "classical": version, "val_images": val_names, "val_digest": val_digest}
            entry = entries[name] = cache.entry(protocol, family, name, key)
            if entry["params"] is None:
                params, val_psnr = tune(name, val, grid)
                entry["params"], entry["val_psnr"] = params, round(val_psnr, 4)
            rows[METHODS[name].label]["params"][family] = {**entry["params"], "val_psnr": entry["val_psnr"]}
        del val
        scores: dict[str, list[tuple[float, float]]] = {label: [] for label in rows}
        inner: dict[str, list[float]] = {}  # PSNR BORDER px inside the frame, input and model rows
        for n in test_names:
            blurred, sharp, kernel = prepare(images[n], protocol, spec, n)
            mp = sharp.shape[0] * sharp.shape[1] / 1e6
            megapixels += mp
            digest = sample_digest(n, blurred, sharp, kernel)
            score = ReferenceScorer(sharp)
            scores["input"].append(score(blurred))
            for name in methods:
                stored = entries[name]["images"].get(n)
                if stored is None or stored[0] != digest:
                    t0 = time.perf_counter()
                    restored = restore(name, blurred, kernel, **entries[name]["params"])
                    seconds = time.perf_counter() - t0
                    psnr, ssim = score(restored)
                    stored = entries[name]["images"][n] = [digest, round(psnr, 6), round(ssim, 6), round(seconds, 4), round(mp, 6)]
                    cache.computed += 1
                else:
                    cache.reused += 1
                rows[METHODS[name].label]["seconds"] += stored[3] / stored[4] * mp
                scores[METHODS[name].label].append((stored[1], stored[2]))
            for label, deblurrer, _ in loaded:
                t0 = time.perf_counter()
                if deblurrer.estimates_psf:
                    restored, record = deblurrer.restore_rgb(blurred)
                    outcomes = rows[label].setdefault("results", {}).setdefault(family, {})
                    outcomes[record["result"]] = outcomes.get(record["result"], 0) + 1
                elif deblurrer.psf is not None:  # the plug-and-play restorer, told the true kernel
                    restored = deblurrer(blurred, psf=kernel, method=PNP)
                elif deblurrer.config.arch in PSF_ARCHITECTURES:
                    restored = deblurrer(blurred, psf=kernel)
                else:
                    restored = deblurrer(blurred)
                rows[label]["seconds"] += time.perf_counter() - t0
                scores[label].append(score(restored))
                inner.setdefault(label, []).append(inner_psnr(restored, sharp))
            inner.setdefault("input", []).append(inner_psnr(blurred, sharp))
        cache.save()
        for label, values in scores.items():
            # min_psnr: the worst image, what the un-blurred column is judged by (its mean is ∞ once one comes back unchanged)
            rows[label]["families"][family] = {"psnr": statistics.fmean(v[0] for v in values), "ssim": statistics.fmean(v[1] for v in values),
                                               "min_psnr": min(v[0] for v in values)}
            if label in inner:
                rows[label]["families"][family]["psnr_inner"] = statistics.fmean(inner[label])
        print(f"[{protocol}] {family}: " + ", ".join(f"{k} {v['families'][family]['psnr']:.2f}" for k, v in rows.items())
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    for row in rows.values():
        row["s_per_megapixel"] = row.pop("seconds") / megapixels if megapixels else 0.0
    summarise(rows)
    return {"protocol": protocol, "about": PROTOCOLS[protocol]["about"], "test_images": len(test_names),
            "val_images_for_tuning": len(val_names), "families": families,
            "split": str(split_path.relative_to(ROOT)) if split_path.is_relative_to(ROOT) else str(split_path),
            "classical_cache": {"file": cache.path.name, "computed": cache.computed, "reused": cache.reused, "classical_version": version},
            "seconds": round(time.perf_counter() - started_all, 1), "rows": rows}


def inner_psnr(restored: np.ndarray, sharp: np.ndarray) -> float:
    """PSNR (dB) with a BORDER-px frame left out: what a restorer does away from the image's edges."""
    window = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    error = np.mean((np.clip(np.asarray(restored, np.float64)[window], 0, 1) - np.asarray(sharp, np.float64)[window]) ** 2)
    return float("inf") if error == 0 else float(-10.0 * np.log10(error))


def summarise(rows: dict[str, dict]) -> None:
    """Add each row's means over the blur families, its gain over the input and its worst family.

    The worst family is over the families where the input's PSNR is finite: for ``none`` with an 8-bit
    target the input equals the target (∞ dB), and that column is read as PSNR(output, input) instead.
    """
    source = rows["input"]["families"]
    for row in rows.values():
        blurred_families = [f for name, f in row["families"].items() if name not in UNBLURRED] or list(row["families"].values())
        row["mean_psnr"] = statistics.fmean(f["psnr"] for f in blurred_families)
        row["mean_ssim"] = statistics.fmean(f["ssim"] for f in blurred_families)
    for label, row in rows.items():
        if label != "input":
            gains = {f: v["psnr"] - source[f]["psnr"] for f, v in row["families"].items() if np.isfinite(source[f]["psnr"])}
            worst = min(gains, key=gains.get) if gains else None
            row["gain_psnr"] = row["mean_psnr"] - rows["input"]["mean_psnr"]
            row["worst_family_gain"] = {"family": worst, "psnr": gains[worst] if gains else None}


def markdown(result: dict, command: str, machine: str) -> str:
    families = list(result["families"])
    head = "| method | " + " | ".join(families) + " | mean of blurs | gain | worst family vs input | s / MP |"
    cache = result.get("classical_cache", {})
    lines = [f"# Quality benchmark — {result['protocol']} protocol", "",
             f"{result['test_images']} ISIC test images ({result['split']}), {result.get('about', '')}; classical parameters "
             f"tuned per family on {result['val_images_for_tuning']} validation images. Cells: PSNR (dB) / SSIM, TF-exact metrics, "
             "degraded inputs quantised to 8 bits. mean of blurs: over every family but `none`. gain: mean of blurs minus the "
             "input's. worst family vs input: the smallest PSNR difference to the input over the families, `none` included "
             "where the input's PSNR is finite (with an 8-bit target an un-blurred input equals it: ∞ dB, and the `none` cell "
             "is then PSNR(output, input)). "
             f"s / MP: seconds per megapixel per image on {machine} (classical rows: as measured when computed, "
             f"`{cache.get('file', CACHE_NAME)}`; {cache.get('computed', 0)} classical restorations computed in this run, "
             f"{cache.get('reused', 0)} reused).", "",
             f"Command: `{command}` ({result.get('seconds', 0) / 60:.1f} min wall clock)"
             + "".join(f"; row {label} kept from `{source}`" + (f" on {result['kept_machines'][label]}" if label in result.get("kept_machines", {}) else "")
                       for label, source in result.get("kept_rows", {}).items() if label != "input"), "",
             head, "|" + "---|" * (len(families) + 5)]
    for label, row in result["rows"].items():
        cells = [f"{row['families'][f]['psnr']:.2f} / {row['families'][f]['ssim']:.4f}" for f in families]
        shown = f"{label} (id {row['model']['id']})" if "model" in row else label
        if label == "input":
            gain = worst = speed = "—"
        else:
            gain = f"{row['gain_psnr']:+.2f}"
            worst = (f"{row['worst_family_gain']['psnr']:+.2f} ({row['worst_family_gain']['family']})"
                     if row["worst_family_gain"]["family"] else "—")
            speed = f"{row['s_per_megapixel']:.3f}"
        lines.append(f"| {shown} | " + " | ".join(cells) + f" | {row['mean_psnr']:.2f} / {row['mean_ssim']:.4f} | {gain} | {worst} | {speed} |")
    inner_rows = [(label, row) for label, row in result["rows"].items() if label != "input"
                  and all("psnr_inner" in row["families"][f] for f in families)]
    source = result["rows"]["input"]["families"]
    if inner_rows and all("psnr_inner" in source[f] for f in families):
        blurs = [f for f in families if f not in UNBLURRED]
        lines += ["", f"Borders: gain over the input (dB) on the whole image / {BORDER} px inside the frame (rows that record it).", "",
                  "| method | " + " | ".join(blurs) + " |", "|---|" + "---|" * len(blurs)]
        lines += [f"| {label} | " + " | ".join(f"{row['families'][f]['psnr'] - source[f]['psnr']:+.2f} / "
                                               f"{row['families'][f]['psnr_inner'] - source[f]['psnr_inner']:+.2f}" for f in blurs) + " |"
                  for label, row in inner_rows]
    tuned = [(label, row["params"]) for label, row in result["rows"].items() if "params" in row]
    if tuned:
        lines += ["", "Parameters chosen on validation:", ""]
        for label, params in tuned:
            lines.append(f"- {label}: " + "; ".join(f"{f}: " + ", ".join(f"{k}={v}" for k, v in p.items() if k != "val_psnr")
                                                   for f, p in params.items()))
    return "\n".join(lines) + "\n"


def keep_rows(result: dict, previous_path: Path) -> None:
    """Add to ``result`` the model rows of ``previous_path`` it lacks, if that run scored the same inputs; else exit.

    Same inputs: every family's input PSNR within 1e-4 dB (the thread count moves float sums in their last digits)."""
    if not previous_path.is_file():
        return
    previous = json.loads(previous_path.read_text())
    same = (previous.get("families") == result["families"] and previous.get("test_images") == result["test_images"]
            and all(abs(previous["rows"]["input"]["families"][f]["psnr"] - v["psnr"]) < 1e-4
                    for f, v in result["rows"]["input"]["families"].items() if np.isfinite(v["psnr"])))
    if not same:
        sys.exit(f"--keep: {previous_path} scored other images or families; rerun its models too")
    kept = {label: row for label, row in previous["rows"].items() if label not in result["rows"]}
    result["rows"].update(kept)
    if kept:
        earlier, machines = previous.get("kept_rows", {}), previous.get("kept_machines", {})
        result["kept_rows"] = {label: earlier.get(label, previous.get("command", "")) for label in kept}
        result["kept_machines"] = {label: machines.get(label, previous.get("machine", "")) for label in kept}
        result["classical_cache"] = previous.get("classical_cache", result["classical_cache"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", nargs="+", default=["all"], choices=(*PROTOCOLS, *ALIASES, "all"),
                        help="full (alias native), half, seed, soft, or all (default)")
    parser.add_argument("--model", nargs="*", default=[], help="'default' (the shipped weights), 'psf' (the shipped kernel-conditioned "
                        f"weights, told the true kernel), '{PNP}' (the plug-and-play restorer, told the true kernel), "
                        f"'{ESTIMATED}' (the PSF estimated from each image), run folders or "
                        ".safetensors weights to add as rows")
    parser.add_argument("--methods", nargs="*", choices=list(METHODS), help="classical methods (default: all for seed, Wiener and RL otherwise)")
    parser.add_argument("--families", nargs="*", help="column names (default: the protocol's own; see SEED_FAMILIES / FAMILIES)")
    parser.add_argument("--isic", type=Path, default=ISIC)
    parser.add_argument("--split", type=Path, default=SPLIT, help="train/val/test split file (made with seed 42 when missing)")
    parser.add_argument("--limit", type=int, help="use only the first N test images")
    parser.add_argument("--val-limit", type=int, help="validation images used for tuning (default 8 for seed, 4 otherwise)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--cache", type=Path, help=f"classical results cache (default: OUT/{CACHE_NAME})")
    parser.add_argument("--keep", action="store_true", help="keep the rows already in OUT/quality_PROTOCOL.json that this run "
                        "does not recompute (same images, families and input scores required); with --methods and no names, "
                        "only the models are run")
    args = parser.parse_args(argv)
    if not (args.isic / "images").is_dir():
        sys.exit(f"{args.isic}: ISIC images not found; pass --isic DIR or set MEDDEBLUR_ISIC_DIR")
    protocols = list(PROTOCOLS) if "all" in args.protocol else list(dict.fromkeys(ALIASES.get(p, p) for p in args.protocol))
    machine = f"{machine_line()}, {torch.get_num_threads()} thread(s)"
    command = result_command("quality", argv)
    cache = Cache(args.cache or args.out / CACHE_NAME)
    results = {}
    for protocol in protocols:
        table = PROTOCOLS[protocol]["families"]
        unknown = [f for f in args.families or () if f not in table]
        if unknown:
            sys.exit(f"--families: {', '.join(unknown)} not in the {protocol} protocol; choose from: {', '.join(table)}")
        families = {f: table[f] for f in (args.families or table)}
        methods = args.methods if args.methods is not None else list(PROTOCOLS[protocol]["methods"])
        cache.computed = cache.reused = 0
        result = run(protocol, args.isic, args.model, methods, families, args.limit,
                     args.val_limit or PROTOCOLS[protocol]["val"], cache, args.split)
        result.update(command=command, machine=machine)
        if args.keep:
            keep_rows(result, args.out / f"quality_{protocol}.json")
        write_result(f"quality_{protocol}", result, markdown(result, command, machine), args.out, ensure_ascii=False)
        print(markdown(result, command, machine))
        results[protocol] = result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
