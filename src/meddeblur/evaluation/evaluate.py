"""Evaluation: input (blurred vs sharp) and model PSNR/SSIM per image, as CSV, JSON, Markdown and a figure."""

from __future__ import annotations

import csv
import io as _stdio
import json
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from meddeblur.data.pairs import (
    SPLIT_FILE,
    check_pairs,
    load_pairs,
    pair_samples,
    read_split,
    select,
)
from meddeblur.degradation.spec import parse_spec
from meddeblur.errors import InvalidOption, UserError
from meddeblur.files import atomic_write, check_creatable_folder
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.metrics import PSNR_CAP, psnr_ssim_numpy
from meddeblur.plots import plot_comparison

METRIC_FIELDS = ("input_psnr", "input_ssim", "model_psnr", "model_ssim")


@dataclass
class EvalOptions:
    """What ``meddeblur evaluate`` needs; None means "take it from the run folder"."""

    model: str | None = None  # run folder or .safetensors; None: the shipped model
    blurred_dir: str | None = None
    sharp_dir: str | None = None
    degrade: str | None = None
    split: str = "test"
    skip_bad: bool = False
    out: str | None = None
    size: int | None = None
    native: bool = False
    device: str = "cpu"
    figure_rows: int = 8

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 16:
            raise InvalidOption(f"size={self.size}: must be at least 16 pixels", value=self.size, option="size")
        if self.split not in ("test", "val", "train", "all"):
            raise InvalidOption(f"split={self.split}: choose test, val, train or all", value=self.split, option="split")


def run_folder_of(weights: Path) -> Path | None:
    """The run folder a weights file belongs to, if it was written by ``train``."""
    return weights.parent if (weights.parent / "run.json").is_file() else None


def _run_options(run: Path) -> dict:
    """The options ``train`` stored in ``run/run.json``."""
    path = run / "run.json"
    try:
        options = json.loads(path.read_text(encoding="utf-8"))["options"]
        if not isinstance(options, dict):
            raise TypeError("options is not a mapping")
        return options
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"{path}: unreadable run options ({type(exc).__name__}); restore the file, "
            "or pass the weights from outside the run folder with `data` and split=all"
        ) from None


def _check_out(out: Path, data_dirs: list[Path]) -> None:
    """Fail before any work if the report folder cannot be made or would land among the data."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: `out` is a file; pass a folder for the report")
    if not out.exists() and os.path.lexists(out):
        raise UserError(f"{out}: `out` is a broken symbolic link; pass a folder for the report")
    try:
        resolved = out.resolve()
        data = {d.resolve() for d in data_dirs}
    except (OSError, RuntimeError):  # a symbolic link loop (RuntimeError before Python 3.13)
        raise UserError(f"{out}: `out` is a symbolic link loop; pass a folder for the report") from None
    if resolved in data:
        # comparison.png would become one more image of the data set (or replace one).
        raise UserError(f"{out}: `out` is a data folder; pass another folder for the report")
    check_creatable_folder(out, "`out`")


def _printable(name: str) -> str:
    """A file name as valid UTF-8 text: bytes that were not UTF-8 are shown as \\udcXX escapes."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def _markdown(report: dict) -> str:
    rows = report["summary"]
    lines = [
        f"# Evaluation: {report['split']} split, {report['images']} images",
        "",
        f"Model `{report['model']}` (id {report['model_id']}, {report['arch']} width {report['width']}); "
        f"protocol: {report['protocol']}. PSNR/SSIM as tf.image.psnr / tf.image.ssim (max_val 1), mean ± std over images.",
        "",
        "| | PSNR (dB) | SSIM |",
        "|---|---|---|",
        f"| input (blurred vs sharp) | {rows['input_psnr']['mean']:.2f} ± {rows['input_psnr']['std']:.2f} | {rows['input_ssim']['mean']:.4f} ± {rows['input_ssim']['std']:.4f} |",
        f"| model (deblurred vs sharp) | {rows['model_psnr']['mean']:.2f} ± {rows['model_psnr']['std']:.2f} | {rows['model_ssim']['mean']:.4f} ± {rows['model_ssim']['std']:.4f} |",
        "",
        f"Gain: {rows['model_psnr']['mean'] - rows['input_psnr']['mean']:+.2f} dB PSNR, "
        f"{rows['model_ssim']['mean'] - rows['input_ssim']['mean']:+.4f} SSIM.",
        "",
    ]
    return "\n".join(lines)


def evaluate(options: EvalOptions) -> dict:
    """Score a model on a data split; writes per_image.csv, metrics.json, report.md, comparison.png."""
    deblurrer = Deblurrer.load(options.model, "torch", options.device, tile=0)
    config, weights = deblurrer.torch_weights()
    run = run_folder_of(weights)
    run_options = _run_options(run) if run else {}
    blurred_dir: str | None
    sharp_dir: str | None
    if options.sharp_dir:
        blurred_dir, sharp_dir, degrade = options.blurred_dir, options.sharp_dir, options.degrade
    else:
        blurred_dir, sharp_dir = run_options.get("blurred_dir"), run_options.get("sharp_dir")
        degrade = options.degrade or run_options.get("degrade")
    if not sharp_dir or not (blurred_dir or degrade):
        raise UserError(
            f"{weights}: not inside a run folder, so the data is unknown; pass blurred_dir=DIR with sharp_dir=DIR, or sharp_dir=DIR with `degrade`"
        )
    spec = parse_spec(degrade) if degrade else None
    pairs = load_pairs(blurred_dir, sharp_dir, degrade)
    if options.split == "all":
        chosen = pairs
    elif options.split in ("train", "val", "test"):
        if run is None:
            raise UserError(f"{weights}: no {SPLIT_FILE} beside these weights to define the {options.split} split; use split=all")
        chosen = select(pairs, read_split(run / SPLIT_FILE)[options.split], str(run / SPLIT_FILE))
    chosen, skipped = check_pairs(chosen, options.skip_bad)
    if not chosen:
        raise UserError(f"{sharp_dir}: no usable images left after skip_bad=True; fix the files listed by running without it")
    if options.native:
        size = None
    else:
        size = options.size or run_options.get("size") or (None if run_options.get("crop") else 256)
    protocol = f"images resized to {size}×{size} (area)" if size else "native resolution"
    if spec is not None:
        protocol += f", then degraded with '{spec}' (fixed seed)"
    out = Path(options.out) if options.out else weights.parent / f"eval-{options.split}"
    _check_out(out, [Path(d) for d in (blurred_dir, sharp_dir) if d])

    records: list[dict[str, Any]] = []
    figure_rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]] = []
    for name, blurred, sharp in tqdm(
        pair_samples(chosen, size, spec), total=len(chosen), desc="evaluating", unit="image", disable=None
    ):
        restored = deblurrer.deblur_rgb(blurred)
        in_psnr, in_ssim = psnr_ssim_numpy(blurred, sharp)
        out_psnr, out_ssim = psnr_ssim_numpy(restored, sharp)
        record = {
            "name": name,
            "input_psnr": min(in_psnr, PSNR_CAP),
            "input_ssim": in_ssim,
            "model_psnr": min(out_psnr, PSNR_CAP),
            "model_ssim": out_ssim,
        }
        records.append(record)
        if len(figure_rows) < options.figure_rows:
            figure_rows.append((_printable(name), blurred, restored, sharp, record))

    report = {
        "model": str(weights),
        "model_id": deblurrer.model_id,
        "arch": config.arch,
        "width": config.width,
        "split": options.split,
        "images": len(records),
        "protocol": protocol,
        "skipped": skipped,
        "summary": {k: _summary([r[k] for r in records]) for k in METRIC_FIELDS},
        "per_image": records,
    }
    out.mkdir(parents=True, exist_ok=True)
    buffer = _stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("name", *METRIC_FIELDS))
    writer.writeheader()
    writer.writerows({**r, "name": _printable(r["name"])} for r in records)
    with atomic_write(out / "per_image.csv", "w") as fh:
        fh.write(buffer.getvalue())
    with atomic_write(out / "metrics.json", "w") as fh:
        json.dump(report, fh, indent=2)
    with atomic_write(out / "report.md", "w") as fh:
        fh.write(_markdown(report))
    plot_comparison(figure_rows, out / "comparison.png")
    report["out"] = str(out)
    return report
