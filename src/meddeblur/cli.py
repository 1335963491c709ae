"""The ``meddeblur`` command line: train, evaluate, deblur, synth, demo, serve."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from meddeblur import __version__
from meddeblur.errors import InvalidOption, UserError, require

# Imports of the handlers' modules (torch, OpenCV, FastAPI, ...) happen inside the handlers, so that --help and
# --version answer at once. The few constants the parser needs are repeated here; tests/test_cli_errors.py checks
# that they equal meddeblur.models.ARCHITECTURES and meddeblur.assess's.
ARCHITECTURES = ("attention-unet", "attention-unet-residual", "nafnet")
_ASSESS_SIDE = 768  # meddeblur.assess.ANALYSIS_SIDE
_ASSESS_THRESHOLD = 0.4  # meddeblur.assess.DEFAULT_THRESHOLD


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _add_data_args(parser: argparse.ArgumentParser, required_hint: str) -> None:
    parser.add_argument("--data", help=f"folder holding blurred/ and sharp/ {required_hint}")
    parser.add_argument("--blurred", help="folder of blurred images (with --sharp)")
    parser.add_argument("--sharp", help="folder of sharp images (with --blurred)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="meddeblur", description="Remove blur from medical images (dermoscopy first).")
    parser.add_argument("--version", action="version", version=f"meddeblur {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a model on sharp images or blurred/sharp pairs",
                                description="Train with the shipped model's recipe (NAFNet, random-scale native crops with the 'real' "
                                            "degradation mix, AdamW + cosine over the budget, EMA), or --recipe reference for the exact "
                                            "reference Attention U-Net. Options given explicitly override the recipe's. "
                                            "Data-parallel on several GPUs or processes: torchrun --nproc_per_node N -m meddeblur train ...")
    _add_data_args(train, "(not needed with --resume)")
    train.add_argument("--recipe", choices=("default", "reference"),
                       help="default: how the shipped model is trained (MODEL_CARD.md); reference: the reference system's exact settings")
    train.add_argument("--init", metavar="WEIGHTS", help="start from these weights: 'default' (the shipped model), a .safetensors file or "
                       "a run folder; architecture and width come from them (fine-tuning)")
    train.add_argument("--degrade", metavar="SPEC", help="train from sharp images only, degraded on the fly: 'real' (the default "
                       "recipe's), 'mixed', 'gauss:sigma=0.5..2.5', 'motion:length=11+noise:sigma=0..0.01', … (see README)")
    train.add_argument("--out", help="run folder to create (default runs/<time>)")
    train.add_argument("--arch", choices=ARCHITECTURES, help="network (default: the recipe's, nafnet; attention-unet is the reference)")
    train.add_argument("--width", type=int, help="base channels (default 64 for attention-unet*, 16 for nafnet; 64 = reference)")
    size = train.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, help="resize pairs to SIZE×SIZE (the reference recipe: 256)")
    size.add_argument("--crop", type=int, help="random CROP×CROP crops at native resolution instead of resizing (default recipe: 128)")
    train.add_argument("--epochs", type=int, help="maximum epochs (reference recipe: 100)")
    train.add_argument("--max-minutes", type=float, help="wall-clock budget in training minutes; the default recipe's cosine "
                       "schedule anneals over it (default 60 unless --steps is given)")
    train.add_argument("--steps", type=int, help="default recipe: optimizer steps to anneal over (instead of --max-minutes)")
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, all cores)")
    train.add_argument("--val-every", dest="epoch_steps", type=int, metavar="STEPS",
                       help="validate and checkpoint every STEPS steps (default recipe: 200; reference: once per pass over the data)")
    train.add_argument("--batch", type=int, help="global batch size, split evenly over torchrun processes (default 16; reference 8)")
    train.add_argument("--lr", type=float, help="peak learning rate (default 1e-3 AdamW; reference 1e-4 Adam)")
    train.add_argument("--seed", type=int, help="seed for split, init and augmentation (default 42)")
    train.add_argument("--perceptual", action="store_true", default=None,
                       help="add the VGG19 perceptual term, weights from the PyTorch hub cache file")
    train.add_argument("--vgg19-weights", help="torchvision vgg19 state dict (.pth/.safetensors); implies --perceptual")
    train.add_argument("--w-ssim", type=float, help="weight of (1 − SSIM) (default 0.85)")
    train.add_argument("--w-l1", type=float, help="weight of L1 (default 0.15)")
    train.add_argument("--w-perceptual", type=float, help="weight of the VGG19 term (default 1e-6)")
    train.add_argument("--patience", type=int, help="early-stopping patience in epochs (default 10)")
    train.add_argument("--lr-patience", type=int, help="epochs without improvement before LR × 0.5 (default 5)")
    train.add_argument("--device", help="auto, cpu, cuda or mps (default auto)")
    train.add_argument("--skip-bad", action="store_true", default=None,
                       help="leave out unreadable or mismatched images (listed in the log) instead of stopping")
    train.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                       help="CUDA: train in float32 instead of mixed precision (bf16, or fp16 with loss scaling); "
                            "mixed precision is the default on CUDA and never used on the CPU")
    train.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                       help="CUDA: keep the NCHW memory layout instead of channels_last (the CUDA default; ignored on the CPU)")
    train.add_argument("--resume", metavar="RUN", help="continue RUN exactly where it stopped (--epochs may raise the limit)")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="score a model against sharp references",
                                   description="PSNR/SSIM of the blurred input and of the model, per image and on average.")
    evaluate.add_argument("--model", help="run folder or .safetensors weights (default: the shipped model, see MODEL_CARD.md; "
                          "its data is unknown, so give --data, --blurred/--sharp or --sharp with --degrade, and --split all)")
    _add_data_args(evaluate, "(default: the run's data)")
    evaluate.add_argument("--degrade", metavar="SPEC", help="evaluate on sharp images degraded with SPEC (fixed seed)")
    evaluate.add_argument("--split", default="test", choices=("test", "val", "train", "all"), help="default test (the run's split.json)")
    evaluate.add_argument("--out", help="report folder (default next to the weights: eval-<split>/)")
    evaluate.add_argument("--size", type=int, help="resize to SIZE×SIZE (default: as trained)")
    evaluate.add_argument("--native", action="store_true", help="evaluate at stored resolution")
    evaluate.add_argument("--skip-bad", action="store_true", help="leave out unreadable or mismatched images instead of stopping")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    evaluate.set_defaults(handler=_evaluate)

    deblur = commands.add_parser("deblur", help="deblur image files or folders",
                                 description="Deblur images of any size; outputs keep name, format, channels and bit depth.")
    deblur.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    deblur.add_argument("-o", "--out", required=True, help="output folder; an existing file there is replaced only if meddeblur "
                        "wrote it (or with --overwrite), an input never")
    deblur.add_argument("--overwrite", action="store_true", help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)")
    deblur.add_argument("--model", help="run folder or .safetensors weights (default: the model shipped with meddeblur, see MODEL_CARD.md)")
    deblur.add_argument("--format", choices=("png", "jpeg", "tiff", "bmp"), help="output format (default: the input's)")
    deblur.add_argument("--tile", type=int, default=1024,
                        help="images with a side above TILE are processed in overlapping TILE×TILE tiles, "
                             "bounding memory (default 1024; 0 = always whole)")
    deblur.add_argument("--overlap", type=int, default=128, help="tile overlap in pixels, blended smoothly (default 128)")
    deblur.add_argument("--jpeg-quality", type=int, default=95, help="JPEG output quality (default 95)")
    deblur.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    deblur.add_argument("--engine", choices=("torch", "onnx"),
                        help="torch (default) or onnx: ONNX Runtime on the CPU, same tiling; exports --model on the fly unless --onnx")
    deblur.add_argument("--onnx", metavar="FILE", help="run this file written by meddeblur export (implies --engine onnx)")
    deblur.set_defaults(handler=_deblur)

    export = commands.add_parser("export", help="export a model to ONNX (dynamic batch, height and width; the [onnx] extra)",
                                 description="Write an ONNX model with the config and model id as metadata, for deblur --onnx or any ONNX runtime.")
    export.add_argument("--model", help="run folder or .safetensors weights (default: the shipped model)")
    export.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    export.add_argument("--overwrite", action="store_true", help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)")
    export.set_defaults(handler=_export)

    info = commands.add_parser("info", help="print the provenance stored in files written by meddeblur",
                               description="Print tool, version, model id and parameters recorded in output images (PNG/TIFF/JPEG "
                                           "metadata, DICOM tags, BMP sidecar) or exported ONNX models. Exit code 1 if a file has none.")
    info.add_argument("files", nargs="+", metavar="FILE", help="image, DICOM or .onnx files")
    info.add_argument("--json", action="store_true", help="print the records as one JSON object keyed by file")
    info.set_defaults(handler=_info)

    assess = commands.add_parser("assess", help="score how blurred images are and flag the ones needing attention",
                                 description=f"No-reference blur score in [0, 1] per image (higher = blurrier), measured at a long side of "
                                             f"{_ASSESS_SIDE} px; images above the threshold are flagged 'needs attention'.")
    assess.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    assess.add_argument("--csv", metavar="FILE", help="write path, blur_score, flag, width, height, note to FILE")
    assess.add_argument("--threshold", type=float, default=_ASSESS_THRESHOLD,
                        help=f"flag images scoring above this (default {_ASSESS_THRESHOLD}, chosen on ISIC, see README)")
    assess.add_argument("--skip-bad", action="store_true", help="list unreadable files as 'unreadable' instead of stopping")
    assess.add_argument("--overwrite", action="store_true", help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)")
    assess.set_defaults(handler=_assess)

    synth = commands.add_parser("synth", help="write a paired data set by degrading sharp images",
                                description="Degrade sharp images into blurred/, sharp/, kernels/*.npy and manifest.json.")
    synth.add_argument("--sharp", required=True, help="folder of sharp images")
    synth.add_argument("-o", "--out", required=True, help="output folder (created; must not be the --sharp folder)")
    synth.add_argument("--degrade", required=True, metavar="SPEC", help="degradation spec, e.g. mixed or gauss:sigma=1.2")
    synth.add_argument("--seed", type=int, default=0, help="seed of the degradation draws (default 0)")
    synth.add_argument("--size", type=int, help="resize to SIZE×SIZE first (area), like the reference protocol")
    synth.add_argument("--overwrite", action="store_true", help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)")
    synth.set_defaults(handler=_synth)

    demo = commands.add_parser("demo", help="deblur a generated sample with the shipped model (offline, seconds)")
    demo.add_argument("-o", "--out", default="meddeblur-demo", help="output folder (default ./meddeblur-demo)")
    demo.add_argument("--model", help="run folder or .safetensors weights (default: the shipped model)")
    demo.set_defaults(handler=_demo)

    serve = commands.add_parser("serve", help="web page and REST API for deblurring (FastAPI + uvicorn: the [serve] extra)",
                                description="Serve the page at / and the API at /v1/deblur, /v1/model, /healthz (docs at /docs). "
                                            "Output images are computer-processed and not for diagnosis alone.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--model", help="run folder or .safetensors weights (default: the model shipped with meddeblur)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes, each loading the model once (default 1)")
    serve.add_argument("--threads", type=int, default=1, help="images deblurred at once per worker (default 1)")
    serve.add_argument("--queue", type=int, default=32, help="requests waiting per worker before answering 503 + Retry-After (default 32)")
    serve.add_argument("--max-upload-mb", type=float, default=50, help="largest upload in MiB, refused with 413 while streaming (default 50)")
    serve.add_argument("--max-pixels", type=float, default=12e6, help="largest image in pixels, checked before decoding (default 12e6, "
                       "a 4000×3000 photo: about 90 s on one core of the 2-core reference machine, see README)")
    serve.add_argument("--deadline", type=float, default=120, help="seconds to answer once an upload is in; past it (or when it "
                       "cannot be met) 503 + Retry-After (default 120)")
    serve.add_argument("--body-timeout", type=float, default=30, help="seconds to receive a whole upload, else 408 (default 30)")
    serve.add_argument("--max-uploads", type=int, default=64, help="uploads received at once per worker, else 503 (default 64)")
    serve.add_argument("--api-key-file", metavar="FILE", help="require this key (Authorization: Bearer KEY or X-API-Key) on /v1/; "
                       "default: $MEDDEBLUR_API_KEY if set, else no key")
    serve.add_argument("--allowed-hosts", metavar="NAMES", help="comma-separated Host names served (default: localhost, 127.0.0.1 "
                       "and ::1 when bound to loopback, any otherwise; '*' for any)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="let a web page from ORIGIN (https://host[:port]) call the API; repeatable (default: none, CORS off)")
    serve.add_argument("--tile", type=int, default=1024, help="tile size for large images, as in deblur (default 1024; 0 = whole)")
    serve.add_argument("--overlap", type=int, default=128, help="tile overlap in pixels (default 128)")
    serve.add_argument("--jpeg-quality", type=int, default=95, help="quality of JPEG answers (default 95)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    serve.set_defaults(handler=_serve)
    return parser


# Options that may change when a run is resumed; everything else is fixed by run.json.
_RESUMABLE = {"epochs", "max_minutes", "steps", "device", "threads"}
_TRAIN_FLAGS = ("out", "degrade", "arch", "width", "size", "crop", "epochs", "max_minutes", "steps", "threads", "epoch_steps", "batch", "lr", "seed", "perceptual",
                "vgg19_weights", "patience", "lr_patience", "device", "skip_bad", "amp", "channels_last", "init")
_NEGATED = {"amp": "no-amp", "channels_last": "no-channels-last"}  # flags stored under a positive name


def _train(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace
    from datetime import datetime

    from meddeblur.data import data_dirs
    from meddeblur.distributed import is_main
    from meddeblur.losses import LossWeights
    from meddeblur.recipes import recipe_options
    from meddeblur.train import TrainOptions, init_weights, read_run_options, train

    given = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None}
    weights = {k: getattr(args, f"w_{k}") for k in ("ssim", "l1", "perceptual") if getattr(args, f"w_{k}") is not None}
    if "max_minutes" in given and not (math.isfinite(given["max_minutes"]) and given["max_minutes"] > 0):
        raise UserError(f"--max-minutes {given['max_minutes']}: must be a positive number of minutes")
    if args.resume:
        fixed = sorted(set(given) - _RESUMABLE) + [f"w_{k}" for k in weights]
        fixed += [k for k in ("data", "blurred", "sharp") if getattr(args, k) is not None]
        fixed += ["recipe"] if args.recipe else []
        if fixed:
            raise UserError(f"--resume {args.resume}: only --epochs, --max-minutes, --steps, --threads and --device may change; "
                            f"drop --{_NEGATED.get(fixed[0], fixed[0].replace('_', '-'))}")
        options = read_run_options(args.resume)
        options = replace(options, out=str(args.resume), **{k: given[k] for k in _RESUMABLE & given.keys()})
        run = train(options, resume=True)
    else:
        recipe = args.recipe or "default"
        paired = not args.degrade and (args.blurred is not None or recipe == "reference"
                                       or (args.data is not None and (Path(args.data) / "blurred").is_dir()))
        values = recipe_options(recipe, paired)
        blurred, sharp = data_dirs(args.data, args.blurred, args.sharp, args.degrade or values["degrade"])
        if args.degrade:
            from meddeblur.degrade import parse_spec

            given["degrade"] = str(parse_spec(args.degrade))
        given.setdefault("out", str(Path("runs") / datetime.now().strftime("run-%Y%m%d-%H%M%S")))
        if "steps" in given and "max_minutes" not in given:
            values["max_minutes"] = None  # --steps alone is the horizon
        if "crop" in given:
            given["size"] = None
        elif "size" in given:  # resizing instead of the recipe's crops
            given.update(crop=None, scales=None)
        if given.get("init"):
            _, config, _ = init_weights(given["init"], given.get("arch"), given.get("width"))
            given.update(arch=config.arch, width=config.width)
        if given.get("vgg19_weights"):
            given["perceptual"] = True
        for name in ("width", "size", "crop", "epochs", "batch", "patience", "lr_patience", "steps", "threads", "epoch_steps"):
            if given.get(name) is not None and given[name] < 1:
                raise UserError(f"--{name.replace('_', '-')} {given[name]}: must be a positive integer")
        for name in ("size", "crop"):
            if given.get(name) is not None and given[name] % 16:
                raise UserError(f"--{name} {given[name]}: must be a multiple of 16 (the network pools four times)")
        if "lr" in given and not (math.isfinite(given["lr"]) and given["lr"] > 0):
            raise UserError(f"--lr {given['lr']}: must be a positive number, e.g. 1e-4")
        if given.get("seed") is not None and given["seed"] < 0:
            raise UserError(f"--seed {given['seed']}: must be 0 or a positive integer")
        for name, value in weights.items():
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"--w-{name} {value}: must be 0 (term off) or a positive number")
        loss = LossWeights(**{**asdict(values.pop("loss")), **weights})
        options = TrainOptions(blurred_dir=str(blurred) if blurred else None, sharp_dir=str(sharp), loss=loss, **{**values, **given})
        run = train(options)
    if is_main():  # under torchrun every process returns here; one report is enough
        print(f"run folder: {run}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from meddeblur.data import data_dirs
    from meddeblur.device import pick_device
    from meddeblur.evaluate import EvalOptions, evaluate

    if args.size is not None and args.size < 16:
        raise UserError(f"--size {args.size}: must be at least 16 pixels")
    blurred = sharp = None
    if args.data or args.blurred or args.sharp:
        blurred, sharp = data_dirs(args.data, args.blurred, args.sharp, args.degrade)
        blurred, sharp = (str(blurred) if blurred else None), str(sharp)
    report = evaluate(EvalOptions(model=args.model, blurred_dir=blurred, sharp_dir=sharp, degrade=args.degrade, split=args.split, out=args.out,
                                  skip_bad=args.skip_bad, size=args.size, native=args.native, device=str(pick_device(args.device))))
    summary = report["summary"]
    print(f"{report['images']} images ({report['split']}): input {summary['input_psnr']['mean']:.2f} dB / "
          f"{summary['input_ssim']['mean']:.4f} → model {summary['model_psnr']['mean']:.2f} dB / {summary['model_ssim']['mean']:.4f}")
    print(f"report: {report['out']}")
    return 0


def _deblur(args: argparse.Namespace) -> int:
    from meddeblur.deblurrer import Deblurrer
    from meddeblur.device import pick_device

    if not 1 <= args.jpeg_quality <= 100:
        raise InvalidOption(f"--jpeg-quality {args.jpeg_quality}: choose 1 to 100", value=args.jpeg_quality, option="jpeg_quality")
    if args.tile and (args.tile < 32 or not 0 <= args.overlap < args.tile // 2):
        raise InvalidOption(f"--tile {args.tile} --overlap {args.overlap}: use a tile of at least 32 px and an overlap below half the tile",
                            value=(args.tile, args.overlap), option="tile")
    engine = args.engine or ("onnx" if args.onnx else "torch")
    # ONNX Runtime runs on the CPU: "auto" means the CPU there, an explicit GPU is refused.
    device = pick_device("cpu" if engine == "onnx" and args.device == "auto" else args.device)
    if args.onnx is not None and engine == "torch":
        raise InvalidOption(f"--onnx {args.onnx}: an ONNX file runs with --engine onnx; drop --engine torch or --onnx", value=args.onnx, option="onnx")
    if engine == "onnx" and device.type != "cpu":
        raise InvalidOption(f"--device {device}: the ONNX engine runs on the CPU (onnxruntime); use --device cpu or --engine torch",
                            value=args.device, option="device")
    if args.onnx is not None and args.model is not None:
        raise InvalidOption(f"--model {args.model} --onnx {args.onnx}: the ONNX file holds its own model; give only one of them",
                            value=args.onnx, option="onnx")
    deblurrer = Deblurrer.load(args.onnx if args.onnx is not None else args.model, engine, str(device), args.tile, args.overlap)
    written = deblurrer.deblur_files(args.inputs, args.out, format=args.format, jpeg_quality=args.jpeg_quality, overwrite=args.overwrite)
    print(f"{len(written)} image(s) written to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    for module in ("onnx", "onnxscript"):  # before the overwrite check, which reads an existing .onnx with onnx
        require(module, "meddeblur export")
    from meddeblur.io import check_replaceable, remove_stale_temporaries
    from meddeblur.onnx_engine import export_onnx

    check_replaceable(args.onnx, args.overwrite, "--onnx file")
    remove_stale_temporaries(Path(args.onnx).parent)
    meta = export_onnx(args.model, args.onnx, opset=args.opset)
    print(f"{args.onnx}: model {meta['meddeblur_weights_id']} ({meta['meddeblur_source']}), opset {args.opset}, "
          f"dynamic batch/height/width (multiples of {meta['meddeblur_size_multiple']})")
    return 0


def _info(args: argparse.Namespace) -> int:
    import json

    from meddeblur.provenance import read_provenance, summary

    records = {}
    for name in args.files:
        if name.lower().endswith(".onnx"):
            from meddeblur.onnx_engine import OnnxModel

            onnx = OnnxModel(name)
            records[name] = {"tool": "meddeblur", "version": onnx.metadata["meddeblur_version"], "operation": "export",
                             "model_id": onnx.weights_id, "model": onnx.describe(), "engine": "onnx",
                             "parameters": {"size_multiple": onnx.size_multiple}, "note": "ONNX export of a meddeblur model"}
        else:
            records[name] = read_provenance(name)
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        for name, record in records.items():
            print(f"{name}: {summary(record) if record else 'no meddeblur provenance (not written by meddeblur, or stripped)'}")
    return 0 if all(records.values()) else 1


def _assess(args: argparse.Namespace) -> int:
    from meddeblur.assess import FLAG_ATTENTION, assess_files, check_csv_target, write_csv
    from meddeblur.infer import collect_inputs

    files = collect_inputs(args.inputs)
    if args.csv:
        from meddeblur.io import check_replaceable, remove_stale_temporaries

        check_csv_target(args.csv, files)
        check_replaceable(args.csv, args.overwrite, "--csv file")
        remove_stale_temporaries(Path(args.csv).parent)
    rows = assess_files(files, threshold=args.threshold, skip_bad=args.skip_bad)
    if args.csv:
        write_csv(rows, args.csv, files)
    for row in rows:
        score = "   -  " if row.blur_score is None else f"{row.blur_score:.4f}"
        print(f"{score}  {row.flag:<15}  {row.path}")
    flagged = sum(row.flag == FLAG_ATTENTION for row in rows)
    print(f"{len(rows)} image(s): {flagged} need attention (blur score > {args.threshold:g})" + (f"; table: {args.csv}" if args.csv else ""))
    return 0


def _check_synth_targets(sharp: Path, out: Path, overwrite: bool) -> None:
    """The overwrite rule for synth: files of an earlier synth run (listed in its manifest.json) may be replaced,
    any other existing file only with --overwrite. Stale temporaries of a killed run are removed."""
    import json

    from meddeblur.data import sharp_only
    from meddeblur.io import check_replaceable, remove_stale_temporaries

    if not out.is_dir():
        return
    for folder in (out, out / "blurred", out / "sharp", out / "kernels"):
        remove_stale_temporaries(folder)
    if overwrite or not sharp.is_dir():
        return  # a missing --sharp folder is reported by synthesize
    manifest = out / "manifest.json"
    check_replaceable(manifest, False, "-o folder")
    ours: set[str] = set()
    if manifest.is_file():
        entries = json.loads(manifest.read_text(encoding="utf-8", errors="replace")).get("images", [])
        ours = {str(entry.get("name")) for entry in entries if isinstance(entry, dict)}
    for pair in sharp_only(sharp):
        for target in (out / "blurred" / f"{pair.name}.png", out / "sharp" / f"{pair.name}.png", out / "kernels" / f"{pair.name}.npy"):
            if pair.name not in ours:
                check_replaceable(target, False, "-o folder")


def _synth(args: argparse.Namespace) -> int:
    from meddeblur.synth import synthesize

    if args.size is not None and args.size < 16:
        raise UserError(f"--size {args.size}: must be at least 16 pixels")
    if args.seed < 0:
        raise UserError(f"--seed {args.seed}: must be 0 or a positive integer")
    _check_synth_targets(Path(args.sharp), Path(args.out), args.overwrite)
    manifest = synthesize(args.sharp, args.out, args.degrade, seed=args.seed, size=args.size)
    print(f"{len(manifest['images'])} pairs written to {args.out} (blurred/, sharp/, kernels/, manifest.json)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from meddeblur.demo import run_demo

    result = run_demo(args.out, model=args.model)
    print(result["markdown"])
    print(f"side-by-side figure: {result['figure']}\nmetrics table: {result['table']}\nmodel: {result['weights']}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from meddeblur.server import ServerSettings, serve

    if not (math.isfinite(args.max_pixels) and args.max_pixels >= 1):
        raise UserError(f"--max-pixels {args.max_pixels:g}: must be a positive number, e.g. 64e6")
    hosts = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip()) if args.allowed_hosts else None
    settings = ServerSettings(model=args.model, device=args.device, max_upload_mb=args.max_upload_mb, max_pixels=int(args.max_pixels),
                              threads=args.threads, queue=args.queue, tile=args.tile, overlap=args.overlap,
                              jpeg_quality=args.jpeg_quality, workers=args.workers, deadline=args.deadline,
                              body_timeout=args.body_timeout, max_uploads=args.max_uploads, api_key_file=args.api_key_file,
                              allowed_hosts=hosts, cors_origins=tuple(args.cors_origin))
    serve(settings, host=args.host, port=args.port)
    return 0


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so temporary files are removed on the way out."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, _frame: object) -> None:
    raise _Terminated(signum)


#: Commands whose SIGTERM/SIGHUP become _Terminated (serve: uvicorn shuts down gracefully itself; train/evaluate: their own).
_CLEAN_STOP_COMMANDS = ("deblur", "synth", "assess", "export", "info")


def _install_stop_handlers() -> dict[int, object]:
    """Route SIGTERM and SIGHUP to :class:`_Terminated`; returns the handlers they had, for restoring."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread (e.g. main() called from a test thread)
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            previous[getattr(signal, name)] = signal.signal(getattr(signal, name), _raise_terminated)
    return previous


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meddeblur`` console script; returns the exit code."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # non-UTF-8 file names must not crash a print
            stream.reconfigure(errors="backslashreplace")
    args = _build_parser().parse_args(argv)
    previous = _install_stop_handlers() if args.command in _CLEAN_STOP_COMMANDS else {}
    try:
        return args.handler(args)
    except _Terminated as stop:
        import signal

        name = signal.Signals(stop.signum).name
        sys.stderr.write(f"meddeblur {args.command}: stopped by {name}; finished outputs are complete, nothing half-written was left\n")
        return 128 + stop.signum
    except UserError as error:
        message = " ".join(str(error).split())
        sys.stderr.write(f"meddeblur {args.command}: error: {message}\n")
        return 2
    except BrokenPipeError:  # output piped into `head` and closed: nothing left to say
        return 1
    except OSError as error:  # permissions, full disk, read-only folder: the user's environment, not a bug
        where = f"{error.filename}: " if error.filename else ""
        sys.stderr.write(f"meddeblur {args.command}: error: {where}{error.strerror or error}; check the path, its permissions and free space\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("meddeblur: interrupted\n")
        return 130
    finally:
        if previous:
            import signal

            for signum, handler in previous.items():
                signal.signal(signum, handler)
