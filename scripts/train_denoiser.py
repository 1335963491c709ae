"""Train the plug-and-play restorer's denoiser on sharp training photographs and write its weights.

    python scripts/train_denoiser.py --out runs/denoiser/denoiser.safetensors --max-minutes 60
    python scripts/train_denoiser.py --out runs/denoiser2/denoiser.safetensors \
        --init src/meddeblur/weights/denoiser.safetensors --seed 1 --max-minutes 60    # a further stage
    python scripts/train_denoiser.py --pack data.npz --out ...                           # from scripts/gpu_train.sh's pack
    cp runs/denoiser/denoiser.* src/meddeblur/weights/                                    # to ship it

Images: the train split of ``--split`` (validation: its val split) from ``--sharp``, or the arrays of a ``--pack``.
See :mod:`meddeblur.training.denoiser`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from meddeblur.training.denoiser import VALIDATION_SIGMAS, DenoiserOptions, load_images, train_denoiser

HERE = Path(__file__).resolve().parent
DEFAULT_ISIC = Path(os.environ.get("MEDDEBLUR_ISIC_DIR", HERE.parents[1] / "shared" / "data" / "isic-dermoscopy"))


def split_images(sharp: Path, split: Path, part: str) -> list[np.ndarray]:
    """The images of one part ("train", "val", "test") of ``split``, read from ``sharp``."""
    from meddeblur.data.pairs import read_split, select, sharp_only  # not needed (nor installed) where a pack is read

    return load_images([pair.sharp for pair in select(sharp_only(sharp), read_split(split)[part], "split")])


def pack_split(sharp: Path, split: Path, out: Path, side: int = 640, val_images: int = 40) -> None:
    """Write the train images and ``val_images`` validation images, shrunk to at most ``side`` px (area) and JPEG-coded at
    quality 95 without chroma subsampling, as one .npz of byte arrays (≈ 45 MB: small enough to travel to a GPU machine)."""
    import io

    import cv2
    from PIL import Image

    arrays: dict[str, np.ndarray] = {}
    for part in ("train", "val"):
        images = split_images(sharp, split, part)
        for i, image in enumerate(images if part == "train" else images[:val_images]):
            scale = side / max(image.shape[:2])
            if scale < 1:
                image = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=95, subsampling=0)
            arrays[f"{part}_{i:04d}"] = np.frombuffer(buffer.getvalue(), dtype=np.uint8)
    np.savez(out, **arrays)


def read_pack(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train, val) images of a pack written by :func:`pack_split`."""
    import io

    from PIL import Image

    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    with np.load(path) as data:
        for key in sorted(data.files):
            parts[key.split("_")[0]].append(np.asarray(Image.open(io.BytesIO(data[key].tobytes())).convert("RGB")))
    return parts["train"], parts["val"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sharp", type=Path, default=DEFAULT_ISIC / "images")
    parser.add_argument("--split", type=Path, default=HERE.parent / "benchmarks" / "isic_split.json")
    parser.add_argument("--pack", type=Path, help="read the images from this .npz (written with --write-pack) instead of --sharp")
    parser.add_argument("--write-pack", type=Path, help="write the train images and 40 val images as an .npz (≤ 640 px, JPEG q95) and exit")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--max-minutes", type=float, default=DenoiserOptions.max_minutes)
    parser.add_argument("--max-steps", type=int, default=DenoiserOptions.max_steps)
    parser.add_argument("--batch", type=int, default=DenoiserOptions.batch)
    parser.add_argument("--crop", type=int, default=DenoiserOptions.crop)
    parser.add_argument("--lr", type=float, default=DenoiserOptions.lr)
    parser.add_argument("--loss", choices=("l1", "relative"), default=DenoiserOptions.loss, help="relative: each sample's L1 over σ + 2/255")
    parser.add_argument("--val-sigmas", default=None, help="comma-separated noise levels (8-bit levels) the kept weights are chosen on "
                        "(default 5,15,25,50)")
    parser.add_argument("--log-every", type=int, default=DenoiserOptions.log_every)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--init", type=Path, help="continue from these weights (e.g. src/meddeblur/weights/denoiser.safetensors)")
    args = parser.parse_args(argv)
    if args.write_pack:
        pack_split(args.sharp, args.split, args.write_pack)
        print(f"{args.write_pack}: {args.write_pack.stat().st_size / 1e6:.1f} MB")
        return 0
    if args.out is None or args.out.exists():
        sys.exit(f"{args.out}: give a new --out (weights are never overwritten)")
    torch.set_num_threads(args.threads)
    if args.pack:
        train, val = read_pack(args.pack)
    else:
        train, val = (split_images(args.sharp, args.split, part) for part in ("train", "val"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    options = DenoiserOptions(crop=args.crop, batch=args.batch, lr=args.lr, loss=args.loss,
                              val_sigmas=tuple(int(v) for v in args.val_sigmas.split(",")) if args.val_sigmas else VALIDATION_SIGMAS, max_minutes=args.max_minutes, max_steps=args.max_steps,
                              seed=args.seed, log_every=args.log_every, init=args.init)
    record = train_denoiser(train, val, args.out, options, log=lambda line: print(line, flush=True), device=args.device)
    args.out.with_name(args.out.stem + ".history.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record["validation"]))
    if not args.out.is_file():
        print(f"{args.out}: not written: no validation score beat the starting weights' in {record['steps']} steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
