"""``meddeblur demo``: the main job end to end with the shipped model on generated images, offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.degradation.pipeline import degrade
from meddeblur.degradation.spec import parse_spec
from meddeblur.files import atomic_write, check_creatable_folder
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.encode import write_image
from meddeblur.metrics import psnr_ssim_numpy
from meddeblur.plots import plot_comparison

#: Blurs shown by the demo: one of each kind the model was trained on (see MODEL_CARD.md).
DEMO_BLURS = {"Gaussian σ=1.5": "gauss:sigma=1.5", "defocus r=3": "defocus:radius=3", "motion L=9": "motion:length=9"}


def run_demo(out: str | Path = "meddeblur-demo", model: str | Path | None = None, seed: int = 0) -> dict:
    """Blur a generated dermoscopy-like image three ways, deblur it with the shipped model, write a figure and a table.

    The sample is synthetic (``meddeblur.data.synthetic``), so the demo needs no data and no network.
    Returns the paths written and the metrics per blur.
    """
    out = Path(out)
    check_creatable_folder(out, "`out`")
    deblurrer = Deblurrer.load(model, "torch", "cpu", tile=0)
    config, weights = deblurrer.torch_weights()
    sharp = synthetic_dermoscopy(256, 256, seed=seed)
    sharp_tensor = torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1)))[None]
    out.mkdir(parents=True, exist_ok=True)
    write_image(out / "sharp.png", sharp)
    rows, table = (
        [],
        [
            "| blur (256×256 generated sample) | input PSNR (dB) / SSIM | deblurred PSNR (dB) / SSIM | gain (dB) |",
            "|---|---|---|---|",
        ],
    )
    metrics: dict[str, dict[str, float]] = {}
    for index, (label, spec) in enumerate(DEMO_BLURS.items()):
        made, _ = degrade(sharp_tensor, parse_spec(spec), torch.Generator().manual_seed(seed * 100 + index))
        blurred = made[0].numpy().transpose(1, 2, 0)
        restored = deblurrer.deblur_rgb(blurred)
        (in_psnr, in_ssim), (out_psnr, out_ssim) = psnr_ssim_numpy(blurred, sharp), psnr_ssim_numpy(restored, sharp)
        metrics[label] = {"input_psnr": in_psnr, "input_ssim": in_ssim, "model_psnr": out_psnr, "model_ssim": out_ssim}
        stem = spec.split(":")[0]
        write_image(out / f"{stem}_blurred.png", blurred)
        write_image(out / f"{stem}_deblurred.png", restored)
        rows.append((label, blurred, restored, sharp, metrics[label]))
        table.append(f"| {label} | {in_psnr:.2f} / {in_ssim:.4f} | {out_psnr:.2f} / {out_ssim:.4f} | {out_psnr - in_psnr:+.2f} |")
    figure = plot_comparison(rows, out / "side_by_side.png")
    markdown = (
        "\n".join(table) + f"\n\nModel: {config.arch} width {config.width}, weights {weights.name} (id {deblurrer.model_id}).\n"
    )
    with atomic_write(out / "metrics.md", "w") as fh:
        fh.write(markdown)
    return {"figure": figure, "table": out / "metrics.md", "weights": weights, "metrics": metrics, "markdown": markdown}
