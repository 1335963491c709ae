"""The ``meddeblur`` commands: each turns parsed flags into calls of the public Python API.

Flags are checked here only where the library has no parameter for them; the library's own errors name its
parameters, and :func:`meddeblur.cli.main.main` prints them naming the flags. Each command imports its modules
(torch, OpenCV, FastAPI, ...) itself, so that one command never pays for another's.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from meddeblur.errors import InvalidOption, UserError, require
from meddeblur.restore import registry

__all__ = ["COMMANDS"]

# Options that may change when a run is resumed; everything else is fixed by run.json.
_RESUMABLE = {"epochs", "max_minutes", "steps", "device", "threads"}
_TRAIN_FLAGS = ("out", "degrade", "arch", "width", "size", "crop", "epochs", "max_minutes", "steps", "threads", "epoch_steps", "batch", "lr", "seed", "perceptual",
                "vgg19_weights", "patience", "lr_patience", "device", "skip_bad", "amp", "channels_last", "init",
                "enc_blocks", "middle_blocks", "dec_blocks", "soften", "compress", "perturb_psf", "estimated_psf")
_NEGATED = {"amp": "no-amp", "channels_last": "no-channels-last"}  # flags stored under a positive name


def train(args: argparse.Namespace) -> int:
    from dataclasses import asdict, fields, replace
    from datetime import datetime

    from meddeblur.data.pairs import data_dirs
    from meddeblur.losses import LossWeights
    from meddeblur.training.distributed import is_main
    from meddeblur.training.loop import init_weights, train
    from meddeblur.training.options import TrainOptions
    from meddeblur.training.recipes import recipe_options
    from meddeblur.training.runs import read_run_options

    given = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None}
    weights = {k: getattr(args, f"w_{k}") for k in (term.name for term in fields(LossWeights)) if getattr(args, f"w_{k}") is not None}
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
        values = recipe_options(recipe, paired, fine_tune=bool(given.get("init")))
        blurred, sharp = data_dirs(args.data, args.blurred, args.sharp, args.degrade or values["degrade"])
        if args.degrade:
            from meddeblur.degradation.spec import parse_spec

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
        if given.get("init") or given.get("arch", values["arch"]) not in ("nafnet", "psf-nafnet"):
            values.update(enc_blocks=None, middle_blocks=None, dec_blocks=None)  # the weights' own layout, or no NAFNet: unless given
        if given.get("vgg19_weights"):
            given["perceptual"] = True
        loss = LossWeights(**{**asdict(values.pop("loss")), **weights})
        options = TrainOptions(blurred_dir=str(blurred) if blurred else None, sharp_dir=str(sharp), loss=loss, **{**values, **given})
        run = train(options)
    if is_main():  # under torchrun every process returns here; one report is enough
        print(f"run folder: {run}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from meddeblur.data.pairs import data_dirs
    from meddeblur.device import pick_device
    from meddeblur.evaluation.evaluate import EvalOptions, evaluate

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


def deblur(args: argparse.Namespace) -> int:
    from meddeblur.cli.parser import build_parser, command_flags, in_flags
    from meddeblur.inference.archive_run import deblur_archive
    from meddeblur.inference.workers import ModelSpec
    from meddeblur.io.encode import check_jpeg_quality

    check_jpeg_quality(args.jpeg_quality)  # before the model is loaded (Deblurrer.load checks tile and overlap first too)
    engine = args.engine or ("onnx" if args.onnx else "torch")
    # --onnx is the command line's own way to name an ONNX model; the API has one `model` for both.
    if args.onnx is not None and engine == "torch":
        raise InvalidOption(f"--onnx {args.onnx}: an ONNX file runs with --engine onnx; drop --engine torch or --onnx", value=args.onnx, option="onnx")
    if args.onnx is not None and args.model is not None:
        raise InvalidOption(f"--model {args.model} --onnx {args.onnx}: the ONNX file holds its own model; give only one of them",
                            value=args.onnx, option="onnx")
    if args.method is not None and args.psf is None and registry.get(args.method).told == {registry.Told.PSF}:
        raise InvalidOption(f"--method {args.method}: restores a known blur; give --psf too (or --method {registry.ESTIMATED} to "
                            "estimate it)", value=args.method, option="method")
    if args.psf is not None and engine == "onnx":  # before an ONNX export that could not be used
        raise InvalidOption(f"--psf {args.psf}: the ONNX engine cannot restore with a PSF (the exported graph has no FFT data step); "
                            "use --engine torch", value=args.psf, option="psf")
    # Every process of the run (this one, --workers, Ray actors) loads the model from this spec, --psf and --method psf
    # included; the spec refuses --method psf with --psf, with the ONNX engine, and --estimator without it.
    spec = ModelSpec(args.onnx if args.onnx is not None else args.model, engine, args.device, args.tile, args.overlap, args.psf,
                     args.method, args.estimator)
    report = deblur_archive(args.inputs, args.out, spec, format=args.format, jpeg_quality=args.jpeg_quality, recursive=args.recursive,
                            skip_bad=args.skip_bad, redo=args.redo, allow_outputs=args.allow_outputs, overwrite=args.overwrite,
                            change_map=args.change_map, explain=args.explain, log=args.log, progress=False if args.quiet else None,
                            workers=args.workers, cluster=args.cluster, ray_address=args.ray_address)
    flags = command_flags(build_parser(), "deblur")
    if len(report.outcomes) == 1 and report.outcomes[0].restoration:  # one image: what was done with it, on one line
        from meddeblur.io.provenance import restoration_line

        print(in_flags(f"{report.outcomes[0].input}: {restoration_line(report.outcomes[0].restoration)}", flags))
    print(in_flags(report.summary(args.out), flags))
    return report.exit_code


def export(args: argparse.Namespace) -> int:
    for module in ("onnx", "onnxscript"):  # before the overwrite check, which reads an existing .onnx with onnx
        require(module, "meddeblur export")
    from meddeblur.files import remove_stale_temporaries
    from meddeblur.inference.onnx_engine import export_onnx
    from meddeblur.io.ownership import check_replaceable

    check_replaceable(args.onnx, args.overwrite, "--onnx file")
    remove_stale_temporaries(Path(args.onnx).parent)
    meta = export_onnx(args.model, args.onnx, opset=args.opset)
    print(f"{args.onnx}: model {meta['meddeblur_weights_id']} ({meta['meddeblur_source']}), opset {args.opset}, "
          f"dynamic batch/height/width (multiples of {meta['meddeblur_size_multiple']})")
    return 0


def info(args: argparse.Namespace) -> int:
    import json

    from meddeblur.io.ownership import read_provenance
    from meddeblur.io.provenance import summary

    records = {}
    for name in args.files:
        if name.lower().endswith(".onnx"):
            from meddeblur.inference.onnx_engine import OnnxModel

            onnx = OnnxModel(name)
            records[name] = {"tool": "meddeblur", "version": onnx.metadata["meddeblur_version"], "operation": "export",
                             "model_id": onnx.weights_id, "model": onnx.describe(), "engine": "onnx",
                             "parameters": {"size_multiple": onnx.size_multiple}, "note": "ONNX export of a meddeblur model"}
        else:
            records[name] = read_provenance(name)
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        from meddeblur.io.provenance import restoration_lines

        for name, record in records.items():
            print(f"{name}: {summary(record) if record else 'no meddeblur provenance (not written by meddeblur, or stripped)'}")
            for line in restoration_lines((record or {}).get("restoration")):
                print(f"  {line}")
    return 0 if all(records.values()) else 1


def assess(args: argparse.Namespace) -> int:
    from meddeblur.evaluation.assess import FLAG_ATTENTION, assess_files, check_csv_target, write_csv
    from meddeblur.inference.batch import collect_inputs

    files = collect_inputs(args.inputs)
    if args.csv:
        from meddeblur.files import remove_stale_temporaries
        from meddeblur.io.ownership import check_replaceable

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

    from meddeblur.data.pairs import sharp_only
    from meddeblur.files import remove_stale_temporaries
    from meddeblur.io.ownership import check_replaceable

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


def synth(args: argparse.Namespace) -> int:
    from meddeblur.synth import synthesize

    _check_synth_targets(Path(args.sharp), Path(args.out), args.overwrite)
    manifest = synthesize(args.sharp, args.out, args.degrade, seed=args.seed, size=args.size)
    print(f"{len(manifest['images'])} pairs written to {args.out} (blurred/, sharp/, kernels/, manifest.json)")
    return 0


def _calibration_outputs(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """The files calibrate will write, as (path, flag), after checking the flags fit together (one line each)."""
    if args.target is not None:
        given = [flag for flag, value in (("-o", args.out), ("--plot", args.plot), ("--anisotropic", args.anisotropic),
                                          ("--roi", args.roi), ("EDGE_IMAGE", args.image)) if value]
        if given:
            raise UserError(f"--target {args.target}: writes the printable target only; drop {given[0]} (measure a photo of it "
                            "in a second run: meddeblur calibrate PHOTO -o device.psf.json)")
        if Path(args.target).suffix.lower() != ".png":
            raise UserError(f"--target {args.target}: the target is written as PNG; name it e.g. target.png")
        return [(Path(args.target), "--target file")]
    if args.dpi is not None:
        raise UserError(f"--dpi {args.dpi}: only sets the resolution of --target; drop it or add --target target.png")
    if args.image is None:
        raise UserError("give a photo of a slanted edge to measure (meddeblur calibrate PHOTO -o device.psf.json), or --target "
                        "target.png to write the target to print and photograph")
    if args.out is None:
        raise UserError(f"{args.image}: say where to write the PSF with -o, e.g. -o device.psf.json")
    if Path(args.out).suffix.lower() != ".json":
        raise UserError(f"-o {args.out}: the PSF is written as .json (read back by deblur --psf); name it e.g. device.psf.json")
    outputs = [(Path(args.out), "-o file")]
    if args.plot is not None:
        if Path(args.plot).suffix.lower() != ".png":
            raise UserError(f"--plot {args.plot}: the figure is written as PNG; name it e.g. device-mtf.png")
        outputs.append((Path(args.plot), "--plot file"))
    source = Path(args.image).resolve()
    for path, flag in outputs:
        if path.resolve() == source:
            raise UserError(f"{flag.split()[0]} {path}: is the input photo; inputs are never replaced, choose another name")
    return outputs


def calibrate(args: argparse.Namespace) -> int:
    from meddeblur.files import remove_stale_temporaries
    from meddeblur.io.ownership import check_replaceable

    outputs = _calibration_outputs(args)
    for path, flag in outputs:
        check_replaceable(path, args.overwrite, flag)
        remove_stale_temporaries(path.parent)
    if args.target is not None:
        from meddeblur.psf.target import INSTRUCTIONS, write_target

        write_target(args.target, 600 if args.dpi is None else args.dpi)
        print(f"{args.target}: print it at 100 % ({600 if args.dpi is None else args.dpi} dpi)")
        print("\n".join(INSTRUCTIONS))
        return 0
    if args.plot is not None:
        require("matplotlib", "calibrate --plot")
    from meddeblur.io.decode import read_rgb
    from meddeblur.psf.calibration import calibrate as measure
    from meddeblur.psf.calibration import write_figure
    from meddeblur.psf.edge import EdgeError

    try:
        psf = measure(read_rgb(args.image), roi=args.roi, anisotropic=args.anisotropic)
    except EdgeError as error:
        raise EdgeError(f"{args.image}: {error}", value=args.image) from None
    psf.save_json(args.out)
    if args.plot is not None:
        write_figure(psf, args.plot)
    found = psf.extra["calibration"]
    measured = found["measured_mtf50_cycles_per_pixel"]
    edges = ", ".join(f"{e['orientation']} {abs(e['tilt_deg']):.1f}°" for e in found["edges"])
    kh, kw = psf.kernel.shape
    print(f"{args.out}: {found['model']} PSF, {kw}×{kh} px; MTF50 "
          + ("above Nyquist (a sharp device)" if measured is None else f"{measured:.4f} cycles/pixel")
          + f", from {len(found['edges'])} edge(s): {edges}" + (f"; figure: {args.plot}" if args.plot else ""))
    return 0


def demo(args: argparse.Namespace) -> int:
    from meddeblur.demo import run_demo

    result = run_demo(args.out, model=args.model)
    print(result["markdown"])
    print(f"side-by-side figure: {result['figure']}\nmetrics table: {result['table']}\nmodel: {result['weights']}")
    return 0


def serve(args: argparse.Namespace) -> int:
    from meddeblur.server import ServerSettings, serve

    if not (math.isfinite(args.max_pixels) and args.max_pixels >= 1):
        raise UserError(f"--max-pixels {args.max_pixels:g}: must be a positive number, e.g. 64e6")
    hosts = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip()) if args.allowed_hosts else None
    settings = ServerSettings(model=args.model, device=args.device, max_upload_mb=args.max_upload_mb, max_pixels=int(args.max_pixels),
                              threads=args.threads, queue=args.queue, tile=args.tile, overlap=args.overlap,
                              jpeg_quality=args.jpeg_quality, workers=args.workers, deadline=args.deadline,
                              body_timeout=args.body_timeout, max_uploads=args.max_uploads, api_key_file=args.api_key_file,
                              allowed_hosts=hosts, cors_origins=tuple(args.cors_origin), header_timeout=args.header_timeout,
                              max_client_connections=args.max_client_connections, estimator=args.estimator)
    serve(settings, host=args.host, port=args.port)
    return 0


#: Command name → handler; each returns the exit code.
COMMANDS = {"train": train, "evaluate": evaluate, "deblur": deblur, "export": export, "info": info, "assess": assess, "synth": synth, "calibrate": calibrate, "demo": demo,
            "serve": serve}
