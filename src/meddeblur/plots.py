"""Figures: training curves and the blurred / deblurred / sharp comparison grid."""

from __future__ import annotations

from pathlib import Path

from meddeblur.errors import require
from meddeblur.files import atomic_path

require("matplotlib", "drawing figures (train's curves, evaluate's and demo's comparisons)")

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Loss, PSNR and SSIM per epoch, train and val, side by side; the val inputs' PSNR as the line to beat."""
    epochs = [row["epoch"] for row in history]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for axis, key, label in zip(axes, ("loss", "psnr", "ssim"), ("loss", "PSNR (dB)", "SSIM")):
        axis.plot(epochs, [row[f"train_{key}"] for row in history], "o-", label="train", markersize=3)
        axis.plot(epochs, [row[f"val_{key}"] for row in history], "o-", label="val", markersize=3)
        if key == "psnr" and history and history[-1].get("val_input_psnr") not in (None, ""):
            axis.axhline(float(history[-1]["val_input_psnr"]), color="gray", linestyle="--", label="val input (degraded)")
        axis.set_xlabel("epoch")
        axis.set_title(label)
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, Path(path))


def plot_comparison(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict]], path: str | Path) -> Path:
    """One row per image: blurred / deblurred / sharp with per-image PSNR and SSIM in the titles.

    ``rows``: (name, blurred, deblurred, sharp, metrics) with (H, W, 3) float images and
    metrics holding ``input_psnr``, ``input_ssim``, ``model_psnr``, ``model_ssim``.
    """
    figure, axes = plt.subplots(len(rows), 3, figsize=(10.5, 3.5 * len(rows)), squeeze=False)
    for (name, blurred, deblurred, sharp, m), axis_row in zip(rows, axes):
        titles = (
            f"{name}\nblurred: {m['input_psnr']:.2f} dB / {m['input_ssim']:.4f}",
            f"deblurred: {m['model_psnr']:.2f} dB / {m['model_ssim']:.4f}",
            "sharp (reference)",
        )
        for axis, image, title in zip(axis_row, (blurred, deblurred, sharp), titles):
            axis.imshow(np.clip(image, 0, 1))
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    return _save(figure, Path(path))


def plot_psf(
    kernel: np.ndarray,
    freqs: np.ndarray,
    mtf: np.ndarray,
    mtf50: float | None,
    path: str | Path,
    title: str = "PSF",
    curves: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """A PSF figure: the (kh, kw) kernel at 1 px per cell beside its MTF curve (cycles/pixel) with MTF50 marked.

    ``curves`` adds labelled (frequencies, MTF) lines, e.g. a slanted-edge measurement beside the kernel's own.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    kh, kw = kernel.shape
    left.imshow(
        kernel, cmap="inferno", interpolation="nearest", extent=(-(kw // 2) - 0.5, kw // 2 + 0.5, kh // 2 + 0.5, -(kh // 2) - 0.5)
    )
    left.set_title(f"{title} ({kw}×{kh} px)")
    left.set_xlabel("x (px)")
    left.set_ylabel("y (px)")
    right.plot(freqs, mtf, label="MTF (mean over directions)")
    for label, (f, v) in (curves or {}).items():
        right.plot(f, v, "--", label=label)
    right.axhline(0.5, color="gray", linewidth=0.8)
    if mtf50 is not None:
        right.axvline(mtf50, color="tab:red", linewidth=0.8)
    right.set_title("MTF50 " + (f"{mtf50:.3f} cycles/px" if mtf50 is not None else "above Nyquist"))
    right.set_xlabel("spatial frequency (cycles/pixel)")
    right.set_xlim(0, 0.5)
    right.set_ylim(0, 1.05)
    right.grid(alpha=0.3)
    right.legend(loc="upper right", fontsize=8)
    return _save(figure, Path(path))
