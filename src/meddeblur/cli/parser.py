"""The ``meddeblur`` argument parser: every command and flag, with its help text.

Nothing here imports more than the standard library, so ``meddeblur --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from meddeblur import __version__
from meddeblur.cli.parser_run import add_deblur, add_evaluate, add_train
from meddeblur.restore import registry

__all__ = ["ARCHITECTURES", "Parser", "build_parser", "command_flags", "in_flags"]

# Imports of the handlers' modules (torch, OpenCV, FastAPI, ...) happen inside the handlers, so that --help and
# --version answer at once. The few constants the parser needs are repeated here; tests/cli/test_cli_errors.py checks
# that they equal meddeblur.models.ARCHITECTURES and NAFNET_DEFAULTS and meddeblur.evaluation.assess's.
ARCHITECTURES = ("attention-unet", "attention-unet-residual", "nafnet", "psf-nafnet")
# Values of meddeblur.training.recipes.RECIPES["default"] shown in the help (not imported: it loads torch).
_RECIPE: dict[str, Any] = {
    "enc_blocks": (0, 1, 2, 4),
    "middle_blocks": 4,
    "dec_blocks": (1, 2, 2, 1),
    "soften": 0.55,
    "compress": 0.2,
    "crop": 64,
    "perturb_psf": 0.3,
}
_ASSESS_SIDE = 768  # meddeblur.evaluation.assess.ANALYSIS_SIDE
_ASSESS_THRESHOLD = 0.4  # meddeblur.evaluation.assess.DEFAULT_THRESHOLD


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _region(text: str) -> tuple[int, ...]:
    """'10,20,300,400' → (10, 20, 300, 400): calibrate's --roi."""
    values = tuple(int(part) for part in text.split(","))
    if len(values) != 4:
        raise ValueError(text)
    return values


_region.__name__ = "X0,Y0,X1,Y1"


def _add_pacs(commands: argparse._SubParsersAction[Any], deblur: argparse.ArgumentParser) -> None:
    """The ``pacs`` command, with ``deblur``'s options for the model and the restoration."""
    pacs = commands.add_parser(
        "pacs",
        help="a DICOM node: deblur what a PACS receives into derived series (the [pacs] extra)",
        description="Deblur every new instance of the configured SOP classes into a derived instance in a new "
        "series (the original is never changed), exactly once across restarts and crashes: poll a "
        "DICOMweb archive (QIDO-RS, WADO-RS, STOW-RS) with --dicomweb, or receive C-STOREs with "
        "--listen and send the results on with --forward. See docs/pacs.md.",
        epilog="exit codes: 0 stopped (Ctrl-C, SIGTERM) or --once finished; 2 a usage error, or the archive "
        "refused the login or could not be reached at the first poll",
    )
    way = pacs.add_mutually_exclusive_group(required=True)
    way.add_argument(
        "--dicomweb", metavar="URL", help="the DICOMweb root to poll and store into, e.g. http://127.0.0.1:8042/dicom-web"
    )
    way.add_argument(
        "--listen",
        metavar="AET@PORT",
        help="receive C-STOREs as AET on 127.0.0.1:PORT (AET@HOST:PORT to bind another address of this machine); needs --forward",
    )
    pacs.add_argument("--forward", metavar="AET@HOST:PORT", help="with --listen: where the derived instances are C-STOREd")
    pacs.add_argument("--once", action="store_true", help="with --dicomweb: process what is new, then exit (for cron)")
    pacs.add_argument(
        "--poll-seconds",
        dest="interval",
        type=float,
        default=30,
        metavar="SECONDS",
        help="with --dicomweb: seconds between polls (default 30)",
    )
    pacs.add_argument(
        "--state",
        metavar="FILE",
        help="the node's records (SQLite; default ~/.local/state/meddeblur/pacs-<hash of the "
        "archive>.sqlite); the spool of --listen lies beside it",
    )
    pacs.add_argument(
        "--sop-class",
        dest="sop_classes",
        action="append",
        metavar="UID",
        help="deblur instances of this SOP class; "
        "repeatable (default: dermoscopic photography, VL photographic, secondary capture)",
    )
    pacs.add_argument(
        "--modality",
        dest="modalities",
        action="append",
        metavar="CODE",
        help="deblur only this modality, e.g. XC; repeatable (default: every modality of those classes)",
    )
    pacs.add_argument(
        "--ae-title",
        default="MEDDEBLUR",
        help="with --listen: the calling AE title this node uses when forwarding (default MEDDEBLUR)",
    )
    pacs.add_argument(
        "--allow-from",
        dest="allow_from",
        action="append",
        default=[],
        metavar="HOST",
        help="with --listen: also accept associations from this address (default: loopback only); repeatable",
    )
    login = pacs.add_argument_group("DICOMweb login and TLS")
    login.add_argument("--user", help="HTTP basic authentication user (with --password-file)")
    login.add_argument("--password-file", metavar="FILE", help="a file holding the password (default: $MEDDEBLUR_PACS_PASSWORD)")
    login.add_argument("--token-file", metavar="FILE", help="a file holding a bearer token (default: $MEDDEBLUR_PACS_TOKEN)")
    login.add_argument("--ca-bundle", metavar="FILE", help="check the service's TLS certificate against these CAs (PEM)")
    login.add_argument(
        "--client-cert",
        metavar="FILE",
        help="present this TLS client certificate (PEM; with --client-key unless it holds the key)",
    )
    login.add_argument("--client-key", metavar="FILE", help="the client certificate's private key (PEM)")
    # The deblur command's own options, the same actions: one definition, one help text, one default.
    reused = ("model", "method", "psf", "estimator", "device", "tile", "overlap")
    for action in deblur._actions:
        if action.dest in reused:
            pacs._add_action(action)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="meddeblur", description="Remove blur from medical images (dermoscopy first).")
    parser.add_argument("--version", action="version", version=f"meddeblur {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_train(commands, ARCHITECTURES, _RECIPE)
    add_evaluate(commands)
    deblur = add_deblur(commands)
    _add_pacs(commands, deblur)

    export = commands.add_parser(
        "export",
        help="export a model to ONNX (dynamic batch, height and width; the [onnx] extra)",
        description="Write an ONNX model with the config and model id as metadata, for deblur --onnx or any ONNX runtime.",
    )
    export.add_argument("--model", help="run folder or .safetensors weights (default: the shipped model)")
    export.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)",
    )

    info = commands.add_parser(
        "info",
        help="print the provenance stored in files written by meddeblur",
        description="Print tool, version, model id and parameters recorded in output images (PNG/TIFF/JPEG "
        "metadata, DICOM tags, BMP sidecar) or exported ONNX models, and for --method psf outputs "
        "the estimated PSF, the consistency check and the result. Exit code 1 if a file has none.",
    )
    info.add_argument("files", nargs="+", metavar="FILE", help="image, DICOM or .onnx files")
    info.add_argument("--json", action="store_true", help="print the records as one JSON object keyed by file")

    assess = commands.add_parser(
        "assess",
        help="score how blurred images are and flag the ones needing attention",
        description=f"No-reference blur score in [0, 1] per image (higher = blurrier), measured at a long side of "
        f"{_ASSESS_SIDE} px; images above the threshold are flagged 'needs attention'.",
    )
    assess.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    assess.add_argument("--csv", metavar="FILE", help="write path, blur_score, flag, width, height, note to FILE")
    assess.add_argument(
        "--threshold",
        type=float,
        default=_ASSESS_THRESHOLD,
        help=f"flag images scoring above this (default {_ASSESS_THRESHOLD}, chosen on ISIC, see docs/benchmarks.md)",
    )
    assess.add_argument("--recursive", action="store_true", help="also score the images in sub-folders of the folders given")
    assess.add_argument("--skip-bad", action="store_true", help="list unreadable files as 'unreadable' instead of stopping")
    assess.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)",
    )

    synth = commands.add_parser(
        "synth",
        help="write a paired data set by degrading sharp images",
        description="Degrade sharp images into blurred/, sharp/, kernels/*.npy and manifest.json.",
    )
    synth.add_argument("--sharp", required=True, help="folder of sharp images")
    synth.add_argument("-o", "--out", required=True, help="output folder (created; must not be the --sharp folder)")
    synth.add_argument("--degrade", required=True, metavar="SPEC", help="degradation spec, e.g. mixed or gauss:sigma=1.2")
    synth.add_argument("--seed", type=int, default=0, help="seed of the degradation draws (default 0)")
    synth.add_argument("--size", type=int, help="resize to SIZE×SIZE first (area), like the reference protocol")
    synth.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)",
    )

    calibrate = commands.add_parser(
        "calibrate",
        help="measure a device's PSF from a photographed slanted edge, or write the target to print",
        description="Measure the PSF of a camera or dermatoscope from a photo of a slanted edge (ISO 12233: "
        "edge fit, 4x oversampled edge-spread function, MTF) and write it as .psf.json with its "
        "MTF50, for deblur --psf. --target writes the printable tilted-square target instead.",
    )
    calibrate.add_argument(
        "image", nargs="?", metavar="EDGE_IMAGE", help="photo of the printed target (or of any straight edge tilted 2-10°)"
    )
    calibrate.add_argument("-o", "--out", metavar="FILE", help="the PSF file to write (.json, e.g. device.psf.json)")
    calibrate.add_argument("--plot", metavar="PNG", help="also draw the PSF and the measured MTF (the [plots] extra)")
    calibrate.add_argument(
        "--anisotropic",
        action="store_true",
        help="an elliptical PSF from the near-vertical and near-horizontal edges (default: radially symmetric)",
    )
    calibrate.add_argument(
        "--roi", type=_region, metavar="X0,Y0,X1,Y1", help="look for edges only in this region (pixels; default: everywhere)"
    )
    calibrate.add_argument(
        "--target", metavar="PNG", help="write the printable target (a 10 mm black square tilted 5°, with instructions)"
    )
    calibrate.add_argument("--dpi", type=int, help="resolution of --target, your printer's (default 600; 300 to 2400)")
    calibrate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)",
    )

    demo = commands.add_parser("demo", help="deblur a generated sample with the shipped model (offline, seconds)")
    demo.add_argument("-o", "--out", default="meddeblur-demo", help="output folder (default ./meddeblur-demo)")
    demo.add_argument("--model", help="run folder or .safetensors weights (default: the shipped model)")

    serve = commands.add_parser(
        "serve",
        help="web page and REST API for deblurring (FastAPI + uvicorn: the [serve] extra)",
        description="Serve the page at / and the API at /v1/deblur, /v1/model, /healthz (docs at /docs). "
        "Output images are computer-processed and not for diagnosis alone.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument(
        "--model",
        help="run folder, .safetensors weights or an .onnx file from meddeblur export "
        "(default: the model shipped with meddeblur)",
    )
    serve.add_argument("--workers", type=int, default=1, help="worker processes, each loading the model once (default 1)")
    serve.add_argument("--threads", type=int, default=1, help="images deblurred at once per worker (default 1)")
    serve.add_argument(
        "--queue", type=int, default=32, help="requests waiting per worker before answering 503 + Retry-After (default 32)"
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=50, help="largest upload in MiB, refused with 413 while streaming (default 50)"
    )
    serve.add_argument(
        "--max-pixels",
        type=float,
        default=12e6,
        help="largest image in pixels, checked before decoding (default 12e6, "
        "a 4000×3000 photo; raise it together with --deadline on faster machines, see docs/guarantees.md)",
    )
    serve.add_argument(
        "--deadline",
        type=float,
        default=120,
        help="seconds to answer once an upload is in; past it (or when it cannot be met) 503 + Retry-After (default 120)",
    )
    serve.add_argument("--body-timeout", type=float, default=30, help="seconds to receive a whole upload, else 408 (default 30)")
    serve.add_argument("--max-uploads", type=int, default=64, help="uploads received at once per worker, else 503 (default 64)")
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10,
        help="seconds for a request's headers to arrive, else 408 and the connection closed (default 10)",
    )
    serve.add_argument(
        "--max-client-connections",
        type=int,
        default=32,
        help="connections open at once from one client address, "
        "else 503 (default 32; raise it behind a reverse proxy, whose connections all come from one address)",
    )
    serve.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="require this key (Authorization: Bearer KEY or X-API-Key) on /v1/; default: $MEDDEBLUR_API_KEY if set, else no key",
    )
    serve.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        help="comma-separated Host names served (default: localhost, 127.0.0.1 "
        "and ::1 when bound to loopback, any otherwise; '*' for any)",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let a web page from ORIGIN (https://host[:port]) call the API; repeatable (default: none, CORS off)",
    )
    serve.add_argument(
        "--estimator",
        metavar="FILE",
        help="blur-estimator weights for POST /v1/deblur?method=psf (estimate each "
        "image's PSF, as deblur --method psf) (default: the ones shipped with meddeblur)",
    )
    serve.add_argument(
        "--psf",
        metavar="SPEC|FILE",
        help="the default PSF: requests that give none are restored with it (by "
        f"{registry.KNOWN_BLUR_DEFAULT} unless they name another method) — a spec such as gauss:sigma=1.6 or a "
        "kernel file, e.g. the device.psf.json meddeblur calibrate writes; loaded and checked once at start-up; "
        "the page shows it (default: none, the blind network)",
    )
    serve.add_argument(
        "--tile", type=int, default=1024, help="tile size for large images, as in deblur (default 1024; 0 = whole)"
    )
    serve.add_argument("--overlap", type=int, default=128, help="tile overlap in pixels (default 128)")
    serve.add_argument("--jpeg-quality", type=int, default=95, help="quality of JPEG answers (default 95)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    return parser


def command_flags(parser: argparse.ArgumentParser, command: str) -> dict[str, tuple[str, bool]]:
    """Parameter name → (its long flag, whether the flag takes a value) for one command of ``parser``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = {a.dest: (max(a.option_strings, key=len), a.nargs != 0) for a in sub._actions if a.option_strings}
    return {**{alias: flags[dest] for alias, dest in _PARAMETER_ALIASES.items() if dest in flags}, **flags}


#: Library parameter names whose flag is named otherwise.
_PARAMETER_ALIASES = {"blurred_dir": "blurred", "sharp_dir": "sharp", "cors_origins": "cors_origin"}


_PARAMETER = re.compile(r"(?<![\w.$/\\-])([a-z][a-z0-9_]*)=(\S*?)(?=[\s,;)]|:\s|:$|$)")
_QUOTED = re.compile(r"`([a-z][a-z0-9_]*)`")


def in_flags(message: str, flags: dict[str, tuple[str, bool]]) -> str:
    """A library message, which names parameters (``tile=8``, ```out```), as the command line says it (``--tile 8``, ``--out``).

    Only the command's own parameters are rewritten; ``name=True`` becomes the bare flag.

    >>> in_flags("tile=8, overlap=128: use a tile of at least 32 px; or pass overwrite=True; `out` is a file", {
    ...     "tile": ("--tile", True), "overlap": ("--overlap", True), "overwrite": ("--overwrite", False), "out": ("--out", True)})
    '--tile 8, --overlap 128: use a tile of at least 32 px; or pass --overwrite; --out is a file'
    """

    def flag(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if name not in flags:
            return match.group(0)
        option, takes_value = flags[name]
        if value == "True" or not takes_value:
            return option
        return f"{option} {value}" if value else option

    return _QUOTED.sub(lambda m: flags[m.group(1)][0] if m.group(1) in flags else m.group(0), _PARAMETER.sub(flag, message))
