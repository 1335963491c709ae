"""``meddeblur demo``: the main job end to end on generated (synthetic) images, offline."""

from __future__ import annotations

from pathlib import Path

from meddeblur.errors import UserError
from meddeblur.infer import deblur_array
from meddeblur.io import atomic_write, write_image
from meddeblur.metrics import psnr_ssim_numpy
from meddeblur.models import load_model
from meddeblur.plots import plot_comparison
from meddeblur.synthetic import synthetic_pair, write_synthetic_pairs
from meddeblur.train import TrainOptions, train


def run_demo(out: str | Path = "meddeblur-demo", epochs: int = 60, seed: int = 0) -> dict:
    """Train a tiny model on synthetic pairs, deblur a new synthetic sample, write a figure and a table.

    No trained model ships in this version, so the demo trains one in about a
    minute on the CPU; it shows the pipeline, not the quality a real model reaches.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: demo output is a file; pass a folder with -o")
    if (out / "run" / "last.pt").exists():
        raise UserError(f"{out}: already holds a demo; pass another folder with -o or remove it")
    data = write_synthetic_pairs(out / "synthetic-data", n=24, height=64, width=64, seed=seed)
    run = train(TrainOptions(blurred_dir=str(data / "blurred"), sharp_dir=str(data / "sharp"), out=str(out / "run"),
                             width=8, size=64, epochs=epochs, batch=4, lr=1e-3, seed=seed, device="cpu"))
    model, _, weights = load_model(run)
    blurred, sharp = synthetic_pair(256, 256, seed=seed + 10_000, sigma=1.5)
    restored = deblur_array(model, blurred)
    in_psnr, in_ssim = psnr_ssim_numpy(blurred, sharp)
    out_psnr, out_ssim = psnr_ssim_numpy(restored, sharp)
    metrics = {"input_psnr": in_psnr, "input_ssim": in_ssim, "model_psnr": out_psnr, "model_ssim": out_ssim}
    for name, image in (("blurred", blurred), ("deblurred", restored), ("sharp", sharp)):
        write_image(out / f"sample_{name}.png", image)
    figure = plot_comparison([("synthetic sample", blurred, restored, sharp, metrics)], out / "side_by_side.png")
    table = ("| synthetic sample (256×256, Gaussian σ=1.5) | PSNR (dB) | SSIM |\n|---|---|---|\n"
             f"| blurred input | {in_psnr:.2f} | {in_ssim:.4f} |\n| deblurred (demo model) | {out_psnr:.2f} | {out_ssim:.4f} |\n")
    with atomic_write(out / "metrics.md", "w") as fh:
        fh.write(table)
    return {"figure": figure, "table": out / "metrics.md", "weights": weights, "metrics": metrics, "markdown": table}
