"""The ``meddeblur`` commands: each turns parsed flags into calls of the public Python API.

Flags are checked here only where the library has no parameter for them; the library's own errors name its
parameters, and :func:`meddeblur.cli.main.main` prints them naming the flags. Each command imports its modules
(torch, OpenCV, FastAPI, ...) itself, so that one command never pays for another's.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from meddeblur.cli.tools import assess, calibrate, export, info, synth
from meddeblur.errors import InvalidOption, UserError, require
from meddeblur.restore import registry

__all__ = ["COMMANDS"]

# Options that may change when a run is resumed; everything else is fixed by run.json.
_RESUMABLE = {"epochs", "max_minutes", "steps", "device", "threads"}
_TRAIN_FLAGS = (
    "out",
    "degrade",
    "arch",
    "width",
    "size",
    "crop",
    "epochs",
    "max_minutes",
    "steps",
    "threads",
    "epoch_steps",
    "batch",
    "lr",
    "seed",
    "perceptual",
    "vgg19_weights",
    "patience",
    "lr_patience",
    "device",
    "skip_bad",
    "amp",
    "channels_last",
    "init",
    "enc_blocks",
    "middle_blocks",
    "dec_blocks",
    "soften",
    "compress",
    "perturb_psf",
    "estimated_psf",
)
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
    weights = {
        k: getattr(args, f"w_{k}") for k in (term.name for term in fields(LossWeights)) if getattr(args, f"w_{k}") is not None
    }
    if args.resume:
        fixed = sorted(set(given) - _RESUMABLE) + [f"w_{k}" for k in weights]
        fixed += [k for k in ("data", "blurred", "sharp") if getattr(args, k) is not None]
        fixed += ["recipe"] if args.recipe else []
        if fixed:
            raise UserError(
                f"--resume {args.resume}: only --epochs, --max-minutes, --steps, --threads and --device may change; "
                f"drop --{_NEGATED.get(fixed[0], fixed[0].replace('_', '-'))}"
            )
        options = read_run_options(args.resume)
        options = replace(options, out=str(args.resume), **{k: given[k] for k in _RESUMABLE & given.keys()})
        run = train(options, resume=True)
    else:
        recipe = args.recipe or "default"
        paired = not args.degrade and (
            args.blurred is not None
            or recipe == "reference"
            or (args.data is not None and (Path(args.data) / "blurred").is_dir())
        )
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
            # The weights' own layout, or no NAFNet: unless given.
            values.update(enc_blocks=None, middle_blocks=None, dec_blocks=None)
        if given.get("vgg19_weights"):
            given["perceptual"] = True
        loss = LossWeights(**{**asdict(values.pop("loss")), **weights})
        options = TrainOptions(
            blurred_dir=str(blurred) if blurred else None, sharp_dir=str(sharp), loss=loss, **{**values, **given}
        )
        run = train(options)
    if is_main():  # under torchrun every process returns here; one report is enough
        print(f"run folder: {run}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from meddeblur.data.pairs import data_dirs
    from meddeblur.device import pick_device
    from meddeblur.evaluation.evaluate import EvalOptions, evaluate

    blurred: str | None = None
    sharp: str | None = None
    if args.data or args.blurred or args.sharp:
        blurred_path, sharp_path = data_dirs(args.data, args.blurred, args.sharp, args.degrade)
        blurred, sharp = (str(blurred_path) if blurred_path else None), str(sharp_path)
    report = evaluate(
        EvalOptions(
            model=args.model,
            blurred_dir=blurred,
            sharp_dir=sharp,
            degrade=args.degrade,
            split=args.split,
            out=args.out,
            skip_bad=args.skip_bad,
            size=args.size,
            native=args.native,
            device=str(pick_device(args.device)),
        )
    )
    summary = report["summary"]
    print(
        f"{report['images']} images ({report['split']}): input {summary['input_psnr']['mean']:.2f} dB / "
        f"{summary['input_ssim']['mean']:.4f} → model {summary['model_psnr']['mean']:.2f} dB / {summary['model_ssim']['mean']:.4f}"
    )
    print(f"report: {report['out']}")
    return 0


def deblur(args: argparse.Namespace) -> int:
    from meddeblur.cli.parser import build_parser, command_flags, in_flags
    from meddeblur.io.encode import check_jpeg_quality
    from meddeblur.runs.archive import deblur_archive
    from meddeblur.runs.workers import ModelSpec

    check_jpeg_quality(args.jpeg_quality)  # before the model is loaded (Deblurrer.load checks tile and overlap first too)
    if args.ray_address is not None and args.cluster is not None:  # its form too (the library checks it after planning)
        from meddeblur.runs.ray_actors import check_ray_address

        check_ray_address(args.ray_address)
    engine = args.engine or ("onnx" if args.onnx else "torch")
    # --onnx is the command line's own way to name an ONNX model; the API has one `model` for both.
    if args.onnx is not None and engine == "torch":
        raise InvalidOption(
            f"--onnx {args.onnx}: an ONNX file runs with --engine onnx; drop --engine torch or --onnx",
            value=args.onnx,
            option="onnx",
        )
    if args.onnx is not None and args.model is not None:
        raise InvalidOption(
            f"--model {args.model} --onnx {args.onnx}: the ONNX file holds its own model; give only one of them",
            value=args.onnx,
            option="onnx",
        )
    if args.method is not None and args.psf is None and registry.get(args.method).told == {registry.Told.PSF}:
        raise InvalidOption(
            f"--method {args.method}: restores a known blur; give --psf too (or --method {registry.ESTIMATED} to estimate it)",
            value=args.method,
            option="method",
        )
    # Every process of the run (this one, --workers, Ray actors) loads the model from this spec, --psf and --method psf
    # included; the spec refuses --method psf with --psf, a PSF on the ONNX engine, and --estimator without method psf.
    spec = ModelSpec(
        args.onnx if args.onnx is not None else args.model,
        engine,
        args.device,
        args.tile,
        args.overlap,
        args.psf,
        args.method,
        args.estimator,
    )
    flags = command_flags(build_parser(), "deblur")
    try:
        report = deblur_archive(
            args.inputs,
            args.out,
            spec,
            format=args.format,
            jpeg_quality=args.jpeg_quality,
            recursive=args.recursive,
            skip_bad=args.skip_bad,
            redo=args.redo,
            allow_outputs=args.allow_outputs,
            overwrite=args.overwrite,
            change_map=args.change_map,
            explain=args.explain,
            log=args.log,
            progress=False if args.quiet else None,
            workers=args.workers,
            cluster=args.cluster,
            ray_address=args.ray_address,
            words=lambda text: in_flags(text, flags),
        )
    except BaseException as stop:  # Ctrl-C or SIGTERM: what was done so far, and how to finish (main says what stopped it)
        done = getattr(stop, "report", None)
        if done is not None and not isinstance(stop, Exception):
            print(in_flags(done.summary(args.out), flags))
            print("stopped before the end: run the same command again to resume (finished outputs are kept and skipped)")
        raise
    if len(report.outcomes) == 1 and report.outcomes[0].restoration:  # one image: what was done with it, on one line
        from meddeblur.io.provenance import restoration_line

        print(in_flags(f"{report.outcomes[0].input}: {restoration_line(report.outcomes[0].restoration)}", flags))
    print(in_flags(report.summary(args.out), flags))
    return report.exit_code


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
    settings = ServerSettings(
        model=args.model,
        device=args.device,
        max_upload_mb=args.max_upload_mb,
        max_pixels=int(args.max_pixels),
        threads=args.threads,
        queue=args.queue,
        tile=args.tile,
        overlap=args.overlap,
        jpeg_quality=args.jpeg_quality,
        workers=args.workers,
        deadline=args.deadline,
        body_timeout=args.body_timeout,
        max_uploads=args.max_uploads,
        api_key_file=args.api_key_file,
        allowed_hosts=hosts,
        cors_origins=tuple(args.cors_origin),
        header_timeout=args.header_timeout,
        max_client_connections=args.max_client_connections,
        estimator=args.estimator,
        psf=args.psf,
    )
    serve(settings, host=args.host, port=args.port)
    return 0


def _secret(path: str | None, variable: str) -> str | None:
    """A password or token from its file (first line), else from the environment: never on the command line."""
    import os

    if path is None:
        return os.environ.get(variable) or None
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()[0].strip() if Path(path).stat().st_size else ""
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; check the path") from None


def pacs(args: argparse.Namespace) -> int:
    import hashlib
    import logging
    import signal
    import threading

    from meddeblur.pacs.config import DEFAULT_SOP_CLASSES, Auth, Filters, check_url, parse_forward, parse_listen, resolve_peers
    from meddeblur.runs.workers import ModelSpec

    for module in ("pydicom", "dicomweb_client", "pynetdicom"):
        require(module, "meddeblur pacs")
    if args.listen is not None and args.forward is None:
        raise UserError(f"--listen {args.listen}: say where the derived instances go with --forward AET@HOST:PORT")
    if args.dicomweb is not None and args.forward is not None:
        raise UserError(f"--forward {args.forward}: only with --listen; --dicomweb stores the results back into the archive")
    if args.once and args.dicomweb is None:
        raise UserError("--once: only with --dicomweb (a listener runs until stopped)")
    if args.method is not None and args.psf is None and registry.get(args.method).told == {registry.Told.PSF}:
        raise InvalidOption(
            f"--method {args.method}: restores a known blur; give --psf too (or --method {registry.ESTIMATED})",
            value=args.method,
            option="method",
        )
    auth = Auth(
        args.user,
        _secret(args.password_file, "MEDDEBLUR_PACS_PASSWORD") if args.user else None,
        _secret(args.token_file, "MEDDEBLUR_PACS_TOKEN"),
        args.ca_bundle,
        args.client_cert,
        args.client_key,
    )
    url = check_url(args.dicomweb, auth) if args.dicomweb is not None else None
    listen, forward = (parse_listen(args.listen), parse_forward(args.forward)) if args.listen is not None else (None, None)
    filters = Filters(tuple(args.sop_classes or DEFAULT_SOP_CLASSES), tuple(args.modalities or ()))
    place = url or f"{listen}->{forward}"
    state = (
        Path(args.state)
        if args.state
        else (Path.home() / ".local" / "state" / "meddeblur" / f"pacs-{hashlib.sha256(place.encode()).hexdigest()[:12]}.sqlite")
    )
    logging.basicConfig(format="meddeblur pacs: %(message)s", level=logging.INFO)
    for noisy in ("pynetdicom", "urllib3", "dicomweb_client"):  # their failures reach the user as meddeblur's one line
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    spec = ModelSpec(args.model, "torch", args.device, args.tile, args.overlap, args.psf, args.method, args.estimator)
    engine = spec.load()  # the deblur command's engine: same spec, same Deblurrer
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # finish the instance at hand, then stop
    from meddeblur.pacs.node import Node

    if url is not None:
        from meddeblur.pacs.dicomweb import Archive, run_dicomweb

        archive = Archive(url, auth)
        node = Node(engine, state, filters, archive.store, archive.exists)
        try:
            counts = run_dicomweb(archive, node, filters, args.interval, args.once, stop)
        finally:
            node.close()
    else:
        from meddeblur.pacs.scp import Forwarder, run_listener

        assert listen is not None and forward is not None  # no --dicomweb: --listen and --forward were given (checked above)
        forwarder = Forwarder(forward, args.ae_title, filters.sop_classes)
        forwarder.check()
        node = Node(engine, state, filters, forwarder.store)
        try:
            run_listener(listen, node, resolve_peers(args.allow_from), state.with_suffix(".spool"), stop)
            counts = node.counts
        finally:
            forwarder.close()
            node.close()
    print(f"meddeblur pacs: {counts.line()}")
    return 0


#: Command name → handler; each returns the exit code.
COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "deblur": deblur,
    "export": export,
    "info": info,
    "assess": assess,
    "synth": synth,
    "calibrate": calibrate,
    "demo": demo,
    "serve": serve,
    "pacs": pacs,
}
