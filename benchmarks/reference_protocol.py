"""The reference system's own data, rebuilt: learned-upscaler blur (ESPCN ×2) on 200 dermoscopic pairs, scored as it scored.

The reference's blurred images are the outputs of an ESPCN ×2 super-resolution network (64 → 128 px) and its sharp
ones the 128-px originals, both resized to 256×256 by ``cv2.resize`` (bilinear) in its loader; 200 pairs split
70/20/10; PSNR/SSIM TensorFlow-exact on the 20 test pairs (34.36 → 38.69 dB, SSIM 0.9685 after). Its images and its
ESPCN are not available, so this script makes the nearest thing from the ISIC photographs:

- **The ESPCN** (Shi et al. 2016: conv 5×5-64, tanh, conv 3×3-32, tanh, conv 3×3-12, pixel shuffle ×2; RGB), trained
  here with Adam (1e-3, halved at 50 % and 75 % of the steps), MSE, batch 16 on whole 64 → 128-px images, as the
  reference's data maker must have trained one. It learns from ISIC photographs that are *not* among the 200 pair
  images (so its outputs on them are those of an upscaler meeting new images, as the reference's were).
- **The sharp 128-px images**: each photograph's centred square, shrunk to 128 px by area averaging (``cv2.INTER_AREA``).
  **The 64-px inputs**: the 128-px image shrunk ×2 by PIL's bicubic (antialiased, like MATLAB's ``imresize``, the
  usual way super-resolution data are made). Both written and read as 8-bit, as image files are.
- **The pairs as the loader saw them**: the ESPCN's 128-px output and the 128-px original, each ``cv2.resize``d to
  256×256 with ``INTER_LINEAR``; PNG, so nothing else is lost.
- **The 200 images**: the ISIC test and validation splits (167; never trained on by the shipped model) and 33 of the
  training split (seed 42); the ESPCN learns from the other 357. ``meddeblur train --data PAIRS`` splits them 70/20/10
  (seed 42) itself: 140 to train, 40 to validate, 20 to test — the reference's proportions.

``make`` builds the pairs (and reports the input PSNR after the first 100 and 300 of the ESPCN's training steps: how
the upscaler's training moves the blur); ``score`` evaluates any number of models on the 20 test pairs with :func:`meddeblur.metrics.psnr_ssim_numpy`
(TF-exact), beside the reference's figures:

    python -m benchmarks.reference_protocol make --pairs runs/reference-pairs
    meddeblur train --data runs/reference-pairs --init default --steps N --out runs/ref-ours-30
    meddeblur train --data runs/reference-pairs --recipe reference --max-minutes 60 --out runs/ref-reference
    python -m benchmarks.reference_protocol score --pairs runs/reference-pairs \\
        --model "shipped (zero-shot)=default" --model "ours, 30 CPU-min=runs/ref-ours-30"

Results: benchmarks/results/reference_protocol.{json,md} (``score`` keeps what ``make`` wrote).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from meddeblur.data.pairs import split_names
from meddeblur.inference.deblurrer import Deblurrer
from meddeblur.io.decode import read_rgb
from meddeblur.metrics import psnr_ssim_numpy

from benchmarks.common import ISIC, RESULTS, SPLIT, command, machine_line, write_result

NAME = "reference_protocol"
REFERENCE = {"input_psnr": 34.36, "model_psnr": 38.69, "model_ssim": 0.9685, "pairs": 200, "test": 20}
SHARP_SIDE, LOW_SIDE, LOADER_SIDE = 128, 64, 256
PAIR_IMAGES = 200
# The protocol's upscaler: 1000 steps leave an input PSNR near the reference's 34.36 dB (3000 steps: 38.09 on the test
# pairs, nearer bicubic's 40.99 — its upscaler was no better than a briefly trained one); ``--budgets`` report others.
ESPCN_STEPS = 1000
SEED = 42


class ESPCN(nn.Module):
    """Shi et al. 2016, ×2, on RGB: two tanh feature layers and a sub-pixel convolution (12 = 3 colours × 2²)."""

    def __init__(self, scale: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 64, 5, padding=2),
            nn.Tanh(),
            nn.Conv2d(64, 32, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(32, 3 * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
        )

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        return self.body(low)


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def sharp_and_low(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 128-px sharp original (centred square, area) and its 64-px bicubic input, both uint8 (H, W, 3)."""
    rgb = to_uint8(read_rgb(path))
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    sharp = cv2.resize(rgb[top : top + side, left : left + side], (SHARP_SIDE, SHARP_SIDE), interpolation=cv2.INTER_AREA)
    low = np.asarray(Image.fromarray(sharp).resize((LOW_SIDE, LOW_SIDE), Image.Resampling.BICUBIC))
    return sharp, low


def as_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def train_espcn(sharp: list[np.ndarray], low: list[np.ndarray], steps: int, seed: int = SEED, on_step: Any = None) -> ESPCN:
    """Adam 1e-3 (halved at 50 % and 75 %), MSE, batch 16 of whole images with random flips; deterministic.

    ``on_step(step, net)`` is called after each step (the budgets' snapshots)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ESPCN()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, [steps // 2, 3 * steps // 4], 0.5)
    targets, inputs = as_batch(sharp), as_batch(low)
    for step in range(steps):
        pick = torch.from_numpy(rng.choice(len(sharp), 16, replace=False))
        x, y = inputs[pick], targets[pick]
        if rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if rng.random() < 0.5:
            x, y = x.flip(-2), y.flip(-2)
        loss = nn.functional.mse_loss(net(x), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if on_step is not None:
            on_step(step + 1, net)
    return net.eval()


@torch.no_grad()
def upscale(net: ESPCN, low: list[np.ndarray]) -> list[np.ndarray]:
    out = net(as_batch(low)).permute(0, 2, 3, 1).numpy()
    return [to_uint8(image) for image in out]


def loader_view(image: np.ndarray) -> np.ndarray:
    """What the reference's loader made of a 128-px image: ``cv2.resize`` to 256×256, bilinear."""
    return cv2.resize(image, (LOADER_SIDE, LOADER_SIDE), interpolation=cv2.INTER_LINEAR)


def choose_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(the 200 pair images, the ESPCN's training images): see the module's docstring."""
    split = json.loads(SPLIT.read_text())
    files = {path.stem: path for path in sorted((folder / "images").glob("*.jpg"))}
    if len(files) < PAIR_IMAGES + 50:
        raise SystemExit(f"{folder}: {len(files)} ISIC images; the protocol needs the 557 of ../shared/data/isic-dermoscopy")
    held_out = sorted(split["test"] + split["val"])
    training = sorted(split["train"])
    extra = sorted(np.random.default_rng(SEED).permutation(training)[: PAIR_IMAGES - len(held_out)].tolist())
    pairs = [files[name] for name in held_out + extra]
    espcn = [files[name] for name in training if name not in set(extra)]
    return pairs, espcn


def input_scores(upscaled: list[np.ndarray], sharp: list[np.ndarray], names: list[str], test: set[str]) -> dict[str, float]:
    """Mean TF-exact PSNR/SSIM of the loader's views of upscaled vs sharp, on the test names and on all."""
    rows = [psnr_ssim_numpy(loader_view(u) / 255.0, loader_view(s) / 255.0) for u, s in zip(upscaled, sharp, strict=True)]
    on_test = [row for row, name in zip(rows, names, strict=True) if name in test]
    return {
        "test_psnr": float(np.mean([r[0] for r in on_test])),
        "test_ssim": float(np.mean([r[1] for r in on_test])),
        "all_psnr": float(np.mean([r[0] for r in rows])),
    }


def make(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.pairs)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: exists and is not empty; pass an empty or new folder")
    pair_files, espcn_files = choose_images(Path(args.isic))
    started = time.perf_counter()
    espcn_sharp, espcn_low = zip(*(sharp_and_low(path) for path in espcn_files), strict=True)
    pair_sharp, pair_low = zip(*(sharp_and_low(path) for path in pair_files), strict=True)
    names = [f"{path.stem}.png" for path in pair_files]
    test = set(split_names(names, SEED)["test"])
    bicubic = [np.asarray(Image.fromarray(low).resize((SHARP_SIDE,) * 2, Image.Resampling.BICUBIC)) for low in pair_low]
    budgets: dict[str, Any] = {"bicubic (no ESPCN)": input_scores(bicubic, list(pair_sharp), names, test)}
    tic = time.perf_counter()

    def snapshot(step: int, net: ESPCN) -> None:
        if step in args.budgets:
            row = input_scores(upscale(net.eval(), list(pair_low)), list(pair_sharp), names, test)
            budgets[f"ESPCN, first {step} steps"] = {**row, "seconds": time.perf_counter() - tic}
            net.train()
            print(f"ESPCN after {step} steps: input PSNR on the test pairs {row['test_psnr']:.2f} dB", flush=True)

    net = train_espcn(list(espcn_sharp), list(espcn_low), ESPCN_STEPS, on_step=snapshot)
    chosen = upscale(net, list(pair_low))
    budgets[f"ESPCN, {ESPCN_STEPS} steps (the protocol's)"] = {
        **input_scores(chosen, list(pair_sharp), names, test),
        "seconds": time.perf_counter() - tic,
    }
    for sub in ("blurred", "sharp"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name, blurred, sharp in zip(names, chosen, pair_sharp, strict=True):
        cv2.imwrite(str(out / "blurred" / name), cv2.cvtColor(loader_view(blurred), cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(out / "sharp" / name), cv2.cvtColor(loader_view(sharp), cv2.COLOR_RGB2BGR))
    return {
        "pairs": str(out),
        "images": len(names),
        "espcn_training_images": len(espcn_files),
        "espcn_steps": ESPCN_STEPS,
        "budgets": budgets,
        "make_seconds": time.perf_counter() - started,
    }


def read_pair(folder: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    return read_rgb(folder / "blurred" / name), read_rgb(folder / "sharp" / name)


def score(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.pairs)
    names = sorted(path.name for path in (folder / "sharp").glob("*.png"))
    if len(names) != PAIR_IMAGES:
        raise SystemExit(f"{folder}: {len(names)} pairs, expected {PAIR_IMAGES}; run `make` first")
    test = split_names(names, SEED)["test"]
    pairs = [read_pair(folder, name) for name in test]
    rows: dict[str, Any] = {}
    inputs = [psnr_ssim_numpy(blurred, sharp) for blurred, sharp in pairs]
    rows["input"] = {"psnr": float(np.mean([r[0] for r in inputs])), "ssim": float(np.mean([r[1] for r in inputs]))}
    for label, model in (item.split("=", 1) for item in args.model):
        deblurrer = Deblurrer.load(None if model == "default" else model, "torch", "cpu", tile=0)
        restored = [psnr_ssim_numpy(deblurrer.deblur_rgb(blurred), sharp) for blurred, sharp in pairs]
        rows[label] = {
            "model": model,
            "model_id": deblurrer.model_id,
            "psnr": float(np.mean([r[0] for r in restored])),
            "ssim": float(np.mean([r[1] for r in restored])),
            "worst_gain": float(min(r[0] - i[0] for r, i in zip(restored, inputs, strict=True))),
        }
        print(f"{label}: {rows[label]['psnr']:.2f} dB ({rows[label]['psnr'] - rows['input']['psnr']:+.2f})", flush=True)
    return {"test_pairs": len(test), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# The reference's protocol: ESPCN ×2 blur on 200 dermoscopic pairs",
        "",
        f"Command: `{result.get('score_command') or result['command']}`  ",
        f"Pairs made by: `{result.get('make_command', '?')}`  ",
        f"Machine: {result['machine']}",
        "",
    ]
    made = result.get("make")
    if made:
        lines += [
            f"{made['images']} pairs; the ESPCN learned from {made['espcn_training_images']} other ISIC photographs. Input PSNR",
            "(the loader's 256×256 views, TF-exact) by the upscaler's training budget — the protocol uses "
            f"{made['espcn_steps']} steps:",
            "",
            "| upscaler | input PSNR, 20 test pairs | input SSIM, test | input PSNR, all 200 | training s |",
            "|---|---|---|---|---|",
        ]
        for label, row in made["budgets"].items():
            seconds = f"{row['seconds']:.0f}" if "seconds" in row else "–"
            lines.append(f"| {label} | {row['test_psnr']:.2f} | {row['test_ssim']:.4f} | {row['all_psnr']:.2f} | {seconds} |")
        lines += ["", f"The reference's input: {REFERENCE['input_psnr']} dB on its 20 test pairs.", ""]
    scored = result.get("score")
    if scored:
        base = scored["rows"]["input"]["psnr"]
        lines += [
            f"On the {scored['test_pairs']} test pairs (the split `meddeblur train` makes of these 200, seed 42):",
            "",
            "| model | PSNR | gain | SSIM | worst image's gain |",
            "|---|---|---|---|---|",
            f"| reference system (its own 20 pairs, GPU, 100 epochs) | {REFERENCE['model_psnr']} | "
            f"{REFERENCE['model_psnr'] - REFERENCE['input_psnr']:+.2f} | {REFERENCE['model_ssim']} | – |",
        ]
        for label, row in scored["rows"].items():
            if label == "input":
                lines.append(f"| input | {row['psnr']:.2f} | – | {row['ssim']:.4f} | – |")
            else:
                lines.append(
                    f"| {label} | {row['psnr']:.2f} | {row['psnr'] - base:+.2f} | {row['ssim']:.4f} | {row['worst_gain']:+.2f} |"
                )
        lines.append("")
    for note in result.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    maker = sub.add_parser("make", help="train the ESPCN and write the 200 pairs")
    maker.add_argument("--pairs", required=True, help="new or empty folder for blurred/ and sharp/")
    maker.add_argument("--isic", default=str(ISIC), help="the ISIC folder (holding images/)")
    maker.add_argument(
        "--budgets",
        type=int,
        nargs="*",
        default=[100, 300],
        help="steps into the ESPCN's training at which to report the input",
    )
    scorer = sub.add_parser("score", help="score models on the 20 test pairs")
    scorer.add_argument("--pairs", required=True)
    scorer.add_argument("--model", action="append", required=True, help="LABEL=default|RUN|WEIGHTS (repeatable)")
    scorer.add_argument("--note", action="append", default=[], help="a line for the results file (repeatable)")
    scorer.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = RESULTS / f"{NAME}.json"
    result: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    result["machine"] = machine_line()
    if args.stage == "make":
        result.update(make=make(args), make_command=command(NAME, argv), command=command(NAME, argv))
        result.pop("score", None)
        out = RESULTS
    else:
        result.update(score=score(args), score_command=command(NAME, argv), command=command(NAME, argv), notes=args.note)
        out = args.out
    write_result(NAME, result, markdown(result), out=out)


if __name__ == "__main__":
    main()
