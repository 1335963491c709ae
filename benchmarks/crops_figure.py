"""100 % crops at full resolution: blurred / deblurred / sharp, one row per degradation family (``none`` included).

A script, not a test. The whole image is degraded (fixed seed) and deblurred by the shipped model exactly
as `meddeblur deblur` does (tiles of 1024 px, overlap 128); a window of ``--crop`` pixels is then shown
at 100 % (one image pixel per figure pixel), with the PSNR of the whole image in each title.

The committed figure is made from a GENERATED 1024×768 dermoscopy-like image (meddeblur.data.synthetic):
ISIC images and crops of them must not enter the repository. ``--image FILE`` renders any photograph
instead; its figure goes wherever ``--out`` says (by default ``runs/``, which git ignores).

    python benchmarks/crops_figure.py                                   # → benchmarks/results/full_resolution_crops.png
    python benchmarks/crops_figure.py --image ../shared/data/isic-dermoscopy/images/ISIC_0000000.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.degradation.pipeline import degrade
from meddeblur.degradation.spec import parse_spec
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.decode import read_rgb
from meddeblur.metrics import psnr_ssim_numpy

HERE = Path(__file__).resolve().parent
FAMILIES = {"gauss σ=1.6": "gauss:sigma=1.6", "defocus r=2.5": "defocus:radius=2.5", "shake 9": "shake:extent=9",
            "down×2 → PIL bicubic": "resample:scale=2,down=box,up=bicubic,lib=pil", "mixed": "mixed", "none (sharp input)": "none"}


def render(sharp: np.ndarray, model_arg: str | None, crop: int, out: Path, source: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    deblurrer = Deblurrer.load(model_arg, device="cpu")  # tiles of 1024 px, as `meddeblur deblur` runs
    height, width = sharp.shape[:2]
    top, left = (height - crop) // 2, (width - crop) // 2
    window = (slice(top, top + crop), slice(left, left + crop))
    dpi = 100
    figure, axes = plt.subplots(len(FAMILIES), 3, figsize=(3 * (crop + 40) / dpi, len(FAMILIES) * (crop + 50) / dpi), dpi=dpi)
    tensor = torch.from_numpy(np.ascontiguousarray(sharp.transpose(2, 0, 1)))[None]
    for row, (label, spec) in enumerate(FAMILIES.items()):
        blurred = degrade(tensor, parse_spec(spec), torch.Generator().manual_seed(row))[0][0].numpy().transpose(1, 2, 0)
        restored = deblurrer(blurred)
        p_in, p_out = psnr_ssim_numpy(blurred, sharp)[0], psnr_ssim_numpy(restored, sharp)[0]
        if np.isfinite(p_in):
            titles = (f"{label}: input {p_in:.2f} dB", f"deblurred {p_out:.2f} dB ({p_out - p_in:+.2f})")
        else:  # an un-blurred input equals the target: what counts is how little the model changed it
            titles = (f"{label}: input = sharp", f"output vs input {p_out:.2f} dB")
        for col, (image, title) in enumerate(((blurred, titles[0]), (restored, titles[1]), (sharp, "sharp"))):
            axis = axes[row, col]
            axis.imshow(np.clip(image[window], 0, 1), interpolation="nearest")
            axis.set_title(title, fontsize=7)
            axis.axis("off")
    figure.suptitle(f"100 % crops ({crop}×{crop}) of a {width}×{height} {source}\nmodel {deblurrer.model_id}; PSNR of the whole image",
                    fontsize=8)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help="a photograph to use instead of the generated image")
    parser.add_argument("--model", help="weights or run folder (default: the shipped model)")
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.image is not None:
        sharp, source = np.round(read_rgb(args.image) * 255) / 255, args.image.name
        out = args.out or HERE.parent / "runs" / f"crops_{args.image.stem}.png"
    else:
        sharp, source = np.round(synthetic_dermoscopy(768, 1024, seed=7) * 255) / 255, "GENERATED dermoscopy-like image"
        out = args.out or HERE / "results" / "full_resolution_crops.png"
    if min(sharp.shape[:2]) < args.crop:
        sys.exit(f"{args.image}: smaller than --crop {args.crop}")
    print(render(sharp.astype(np.float32), args.model, args.crop, out, source))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
