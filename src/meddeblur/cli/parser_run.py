"""The flags of the commands that run a model over data: ``train``, ``evaluate`` and ``deblur``.

Split from :mod:`meddeblur.cli.parser`, which builds the whole parser from these builders and the other commands' flags:
these three hold most of the flags and their help text. Like the parser, nothing here imports more than the standard
library and the restoration registry.
"""

from __future__ import annotations

import argparse
from typing import Any

from meddeblur.restore import registry

__all__ = ["add_deblur", "add_evaluate", "add_train"]


def _counts(text: str) -> tuple[int, ...]:
    """'0,1,2,4' → (0, 1, 2, 4); argparse turns the ValueError into a one-line usage error."""
    return tuple(int(part) for part in text.split(","))


_counts.__name__ = "block counts"  # what argparse names in "invalid block counts value: '1,a'"


def _add_data_args(parser: argparse.ArgumentParser, required_hint: str) -> None:
    parser.add_argument("--data", help=f"folder holding blurred/ and sharp/ {required_hint}")
    parser.add_argument("--blurred", help="folder of blurred images (with --sharp)")
    parser.add_argument(
        "--sharp",
        help="folder of sharp images: with --blurred for pairs, or alone (the blurred inputs are "
        "synthesised from them with --degrade, for train the recipe's 'real' mix)",
    )


def add_train(commands: argparse._SubParsersAction[Any], architectures: tuple[str, ...], recipe: dict[str, Any]) -> None:
    """The ``train`` command; ``architectures`` and ``recipe`` (the default recipe's values) go into its choices and help."""
    train = commands.add_parser(
        "train",
        help="train a model on sharp images or blurred/sharp pairs",
        description="Train with the shipped model's recipe (NAFNet, random-scale native crops with the 'real' "
        "degradation mix, AdamW + cosine over the budget, EMA), or --recipe reference for the exact "
        "reference Attention U-Net. Options given explicitly override the recipe's. "
        "Data-parallel on several GPUs or processes: torchrun --nproc_per_node N -m meddeblur train ...",
    )
    _add_data_args(train, "(not needed with --resume)")
    train.add_argument(
        "--recipe",
        choices=("default", "reference"),
        help="default: how the shipped model is trained (MODEL_CARD.md); reference: the reference system's exact settings",
    )
    train.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from these weights: 'default' (the shipped model), a .safetensors file or "
        "a run folder; architecture and width come from them (fine-tuning)",
    )
    train.add_argument(
        "--degrade",
        metavar="SPEC",
        help="train from sharp images only, degraded on the fly: 'real' (the default "
        "recipe's), 'mixed', 'gauss:sigma=0.5..2.5', 'motion:length=11+noise:sigma=0..0.01', … (see docs/training.md)",
    )
    train.add_argument("--out", help="run folder to create (default runs/<time>)")
    train.add_argument(
        "--arch", choices=architectures, help="network (default: the recipe's, nafnet; attention-unet is the reference)"
    )
    train.add_argument("--width", type=int, help="base channels (default 64 for attention-unet*, 16 for nafnet; 64 = reference)")
    for name, where in (("enc", "on the way down"), ("dec", "on the way up")):
        train.add_argument(
            f"--{name}-blocks",
            type=_counts,
            metavar="N,N,…",
            help=f"nafnet: blocks per level {where}, full resolution first (default "
            f"recipe {','.join(map(str, recipe[f'{name}_blocks']))}); with --init, more blocks than "
            "the weights have grow the network, the new blocks starting as the identity",
        )
    train.add_argument(
        "--middle-blocks",
        type=int,
        metavar="N",
        help=f"nafnet: blocks at the lowest resolution (default recipe {recipe['middle_blocks']})",
    )
    size = train.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, help="resize pairs to SIZE×SIZE (the reference recipe: 256)")
    size.add_argument(
        "--crop",
        type=int,
        help=f"random CROP×CROP crops at native resolution instead of resizing (default recipe: {recipe['crop']}, 128 with --init)",
    )
    for name, what in (
        ("soften", "blurred with a Gaussian σ 0.3–1.0 (a softer camera)"),
        ("compress", "JPEG-compressed (quality 75–95)"),
    ):
        train.add_argument(
            f"--{name}",
            type=float,
            metavar="P",
            help=f"sharp-only crops: share of sources {what} before degrading; "
            f"that image is then the target (default recipe: {recipe[name]:g})",
        )
    train.add_argument(
        "--perturb-psf",
        type=float,
        metavar="P",
        help="psf-nafnet: share of training crops told a slightly wrong PSF "
        f"(zoomed 0.8–1.25×), so that an imprecise PSF softens rather than rings (default recipe: {recipe['perturb_psf']:g})",
    )
    train.add_argument(
        "--estimated-psf",
        type=float,
        metavar="P",
        help="psf-nafnet: share of training crops told the PSF the shipped "
        "blur estimator finds in them (crops >= 128 px), so that estimation errors are part of what it learns (default 0)",
    )
    train.add_argument("--epochs", type=int, help="maximum epochs (reference recipe: 100)")
    train.add_argument(
        "--max-minutes",
        type=float,
        help="wall-clock budget in training minutes; the default recipe's cosine "
        "schedule anneals over it (default 60 unless --steps is given)",
    )
    train.add_argument("--steps", type=int, help="default recipe: optimizer steps to anneal over (instead of --max-minutes)")
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, all cores)")
    train.add_argument(
        "--val-every",
        dest="epoch_steps",
        type=int,
        metavar="STEPS",
        help="validate and checkpoint every STEPS steps (default recipe: 200; reference: once per pass over the data)",
    )
    train.add_argument(
        "--batch", type=int, help="global batch size, split evenly over torchrun processes (default 16; reference 8)"
    )
    train.add_argument(
        "--lr", type=float, help="peak learning rate (default recipe 2e-3 AdamW, 5e-4 with --init; reference 1e-4 Adam)"
    )
    train.add_argument("--seed", type=int, help="seed for split, init and augmentation (default 42)")
    train.add_argument(
        "--perceptual",
        action="store_true",
        default=None,
        help="add the VGG19 perceptual term, weights from the PyTorch hub cache file",
    )
    train.add_argument("--vgg19-weights", help="torchvision vgg19 state dict (.pth/.safetensors); implies --perceptual")
    train.add_argument("--w-ssim", type=float, help="weight of (1 − SSIM) (default recipe 0.15, 0 with --init; reference 0.85)")
    train.add_argument("--w-l1", type=float, help="weight of L1 (default recipe 0.85, 1 with --init; reference 0.15)")
    train.add_argument("--w-mse", type=float, help="weight of the mean squared error (default recipe 0; reference 0)")
    train.add_argument(
        "--w-psnr",
        type=float,
        help="weight of minus the mean per-image PSNR in dB, NAFNet's loss (default recipe 0; reference 0)",
    )
    train.add_argument("--w-perceptual", type=float, help="weight of the VGG19 term (default 1e-6)")
    train.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 10)")
    train.add_argument("--lr-patience", type=int, help="epochs without improvement before LR × 0.5 (default 5)")
    train.add_argument("--device", help="auto, cpu, cuda or mps (default auto)")
    train.add_argument(
        "--skip-bad",
        action="store_true",
        default=None,
        help="leave out unreadable or mismatched images (listed in the log) instead of stopping",
    )
    train.add_argument(
        "--no-amp",
        dest="amp",
        action="store_false",
        default=None,
        help="CUDA: train in float32 instead of mixed precision (bf16, or fp16 with loss scaling); "
        "mixed precision is the default on CUDA and never used on the CPU",
    )
    train.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        default=None,
        help="CUDA: keep the NCHW memory layout instead of channels_last (the CUDA default; ignored on the CPU)",
    )
    train.add_argument("--resume", metavar="RUN", help="continue RUN exactly where it stopped (--epochs may raise the limit)")


def add_evaluate(commands: argparse._SubParsersAction[Any]) -> None:
    """The ``evaluate`` command."""
    evaluate = commands.add_parser(
        "evaluate",
        help="score a model against sharp references",
        description="PSNR/SSIM of the blurred input and of the model, per image and on average.",
    )
    evaluate.add_argument(
        "--model",
        help="run folder or .safetensors weights (default: the shipped model, see MODEL_CARD.md; "
        "its data is unknown, so give --data, --blurred/--sharp or --sharp with --degrade, and --split all)",
    )
    _add_data_args(evaluate, "(default: the run's data)")
    evaluate.add_argument("--degrade", metavar="SPEC", help="evaluate on sharp images degraded with SPEC (fixed seed)")
    evaluate.add_argument(
        "--split", default="test", choices=("test", "val", "train", "all"), help="default test (the run's split.json)"
    )
    evaluate.add_argument("--out", help="report folder (default next to the weights: eval-<split>/)")
    evaluate.add_argument("--size", type=int, help="resize to SIZE×SIZE (default: as trained)")
    evaluate.add_argument("--native", action="store_true", help="evaluate at stored resolution")
    evaluate.add_argument("--skip-bad", action="store_true", help="leave out unreadable or mismatched images instead of stopping")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")


def add_deblur(commands: argparse._SubParsersAction[Any]) -> argparse.ArgumentParser:
    """The ``deblur`` command; returned, for ``pacs`` to reuse its options."""
    deblur = commands.add_parser(
        "deblur",
        help="deblur image files or folders",
        description="Deblur images of any size; outputs keep name, format, channels and bit depth. A rerun "
        "skips inputs whose output is already there, made with the same model and options, so a "
        "stopped run (Ctrl-C, SIGTERM, even SIGKILL) is finished by running it again. "
        "Methods: by default the blind network restores each image; --method psf estimates "
        "each image's blur (PSF) from the image, restores with it and checks that the result "
        "explains the input (a sharp image is left unchanged; a doubtful estimate or result "
        "falls back to the blind network, and the output's provenance says which); --psf "
        "restores a known blur (--method: " + ", ".join(registry.names(registry.Told.PSF)) + ").",
        epilog="exit codes: 0 every input was written or skipped; 1 some inputs were refused (with --skip-bad; "
        "each is listed with its reason); 2 a usage error, or without --skip-bad an input that cannot "
        "be read (the run stops at it; a rerun resumes)",
    )
    deblur.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    deblur.add_argument(
        "-o",
        "--out",
        required=True,
        help="output folder; an existing file there is replaced only if meddeblur wrote it (or with --overwrite), an input never",
    )
    deblur.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)",
    )
    deblur.add_argument(
        "--model",
        help="run folder, .safetensors weights or an .onnx file from meddeblur export (runs in ONNX Runtime) "
        "(default: the model shipped with meddeblur, see MODEL_CARD.md)",
    )
    deblur.add_argument("--format", choices=("png", "jpeg", "tiff", "bmp"), help="output format (default: the input's)")
    deblur.add_argument(
        "--tile",
        type=int,
        default=1024,
        help="images with a side above TILE are processed in overlapping TILE×TILE tiles, "
        "bounding memory (default 1024; 0 = always whole)",
    )
    deblur.add_argument("--overlap", type=int, default=128, help="tile overlap in pixels, blended smoothly (default 128)")
    deblur.add_argument("--jpeg-quality", type=int, default=95, help="JPEG output quality (default 95)")
    deblur.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    deblur.add_argument(
        "--engine",
        choices=("torch", "onnx"),
        help="torch (default) or onnx: ONNX Runtime on the CPU, same tiling; exports --model on the fly unless --onnx",
    )
    deblur.add_argument("--onnx", metavar="FILE", help="run this file written by meddeblur export (implies --engine onnx)")
    deblur.add_argument(
        "--psf",
        metavar="SPEC|FILE",
        help="the blur is known: restore with this PSF instead of the blind network — "
        "a spec (gauss:sigma=1.6, defocus:radius=2.5, motion:length=9,angle=30, down:scale=2, …) or a kernel file "
        "(.npy, grey .png, or the .json meddeblur calibrate writes); see docs/psf.md",
    )
    deblur.add_argument(
        "--method",
        choices=tuple(registry.METHODS),
        default=None,
        help="; ".join(f"{m.name}: {m.summary}" for m in registry.METHODS.values())
        + f". With --psf the default is {registry.KNOWN_BLUR_DEFAULT}, without it {registry.NETWORK}",
    )
    deblur.add_argument(
        "--estimator",
        metavar="FILE",
        help="with --method psf: blur-estimator weights (.safetensors) (default: the ones shipped with meddeblur)",
    )
    deblur.add_argument(
        "--explain",
        action="store_true",
        help="write NAME.psf.png beside each output: the PSF it was restored "
        "with (known or estimated; an estimate that was not used is drawn too, its title says so) beside its MTF "
        "(the [plots] extra); needs --psf or --method psf",
    )
    archive = deblur.add_argument_group("folders and archives")
    archive.add_argument("--recursive", action="store_true", help="also the images in sub-folders, the tree mirrored under -o")
    archive.add_argument(
        "--skip-bad",
        action="store_true",
        help="go on past inputs that cannot be read: each is listed with its reason and the exit code is 1",
    )
    archive.add_argument(
        "--redo",
        action="store_true",
        help="deblur again inputs whose output exists with the same model and options (skipped by default)",
    )
    archive.add_argument(
        "--allow-outputs",
        action="store_true",
        help="deblur inputs that are meddeblur outputs themselves (skipped by default, with a note)",
    )
    archive.add_argument(
        "--log",
        metavar="FILE",
        help="append a JSON line per input to FILE: input, status (written, skipped, refused), "
        "output, reason, seconds, model_id, engine, parameters, change, change_map, restoration "
        "(what --method psf did with the image), source (the input's size, time and SHA-256), output_sha256, time",
    )
    archive.add_argument(
        "--change-map",
        action="store_true",
        help="write NAME.change.png beside each output: |output - input| in "
        "8-bit levels as a heat map with a colour bar (the figures, mean, max and share over 4 levels, always go "
        "into the log and the output's provenance)",
    )
    archive.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (on a terminal, bars: images done, images/s, ETA, and "
        "the tiles of a large image; elsewhere, a line every 30 s); the summary is still printed",
    )
    archive.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes deblurring at once, each loading the model once with cores/N threads (default 1, this "
        "process with all cores: on 2 cores, 2 single-thread workers ran 1.22x its images/s, their 2.3 s start-up "
        "included, benchmarks/results/archive.md rows 'local, 1 worker' and 'local, 2 workers'); "
        "with --cluster ray, the number of Ray actors",
    )
    archive.add_argument(
        "--cluster",
        choices=("ray",),
        help="run on Ray Data (pip install 'meddeblur[ray]'): an embedded Ray on this "
        "machine, or the cluster at --ray-address; same outputs, log and resume rule",
    )
    archive.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="with --cluster ray: join this cluster: auto (the one this machine "
        "belongs to), HOST:PORT (the head's GCS port, e.g. HEAD:6379) or ray://HOST:PORT (Ray Client, e.g. "
        "ray://HEAD:10001); refused if nothing answers there within 15 s. Inputs and -o must be on storage "
        "every node sees at the same path",
    )
    return deblur
