"""The ``meddeblur`` argument parser: every command and flag, with its help text.

Nothing here imports more than the standard library, so ``meddeblur --help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from meddeblur import __version__
from meddeblur.restore import registry

__all__ = ["ARCHITECTURES", "Parser", "build_parser", "command_flags", "in_flags"]

# Imports of the handlers' modules (torch, OpenCV, FastAPI, ...) happen inside the handlers, so that --help and
# --version answer at once. The few constants the parser needs are repeated here; tests/cli/test_cli_errors.py checks
# that they equal meddeblur.models.ARCHITECTURES and NAFNET_DEFAULTS and meddeblur.evaluation.assess's.
ARCHITECTURES = ("attention-unet", "attention-unet-residual", "nafnet", "psf-nafnet")
# Values of meddeblur.training.recipes.RECIPES["default"] shown in the help (not imported: it loads torch).
_RECIPE: dict[str, Any] = {"enc_blocks": (0, 1, 2, 4), "middle_blocks": 4, "dec_blocks": (1, 2, 2, 1), "soften": 0.55, "compress": 0.2, "crop": 64, "perturb_psf": 0.3}
_ASSESS_SIDE = 768  # meddeblur.evaluation.assess.ANALYSIS_SIDE
_ASSESS_THRESHOLD = 0.4  # meddeblur.evaluation.assess.DEFAULT_THRESHOLD


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _counts(text: str) -> tuple[int, ...]:
    """'0,1,2,4' → (0, 1, 2, 4); argparse turns the ValueError into a one-line usage error."""
    return tuple(int(part) for part in text.split(","))


_counts.__name__ = "block counts"  # what argparse names in "invalid block counts value: '1,a'"


def _region(text: str) -> tuple[int, ...]:
    """'10,20,300,400' → (10, 20, 300, 400): calibrate's --roi."""
    values = tuple(int(part) for part in text.split(","))
    if len(values) != 4:
        raise ValueError(text)
    return values


_region.__name__ = "X0,Y0,X1,Y1"


def _add_data_args(parser: argparse.ArgumentParser, required_hint: str) -> None:
    parser.add_argument("--data", help=f"folder holding blurred/ and sharp/ {required_hint}")
    parser.add_argument("--blurred", help="folder of blurred images (with --sharp)")
    parser.add_argument("--sharp", help="folder of sharp images: with --blurred for pairs, or alone (the blurred inputs are "
                        "synthesised from them with --degrade, for train the recipe's 'real' mix)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="meddeblur", description="Remove blur from medical images (dermoscopy first).")
    parser.add_argument("--version", action="version", version=f"meddeblur {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

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
                       "recipe's), 'mixed', 'gauss:sigma=0.5..2.5', 'motion:length=11+noise:sigma=0..0.01', … (see docs/training.md)")
    train.add_argument("--out", help="run folder to create (default runs/<time>)")
    train.add_argument("--arch", choices=ARCHITECTURES, help="network (default: the recipe's, nafnet; attention-unet is the reference)")
    train.add_argument("--width", type=int, help="base channels (default 64 for attention-unet*, 16 for nafnet; 64 = reference)")
    for name, where in (("enc", "on the way down"), ("dec", "on the way up")):
        train.add_argument(f"--{name}-blocks", type=_counts, metavar="N,N,…",
                           help=f"nafnet: blocks per level {where}, full resolution first (default "
                                f"recipe {','.join(map(str, _RECIPE[f'{name}_blocks']))}); with --init, more blocks than "
                                "the weights have grow the network, the new blocks starting as the identity")
    train.add_argument("--middle-blocks", type=int, metavar="N", help=f"nafnet: blocks at the lowest resolution (default recipe {_RECIPE['middle_blocks']})")
    size = train.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, help="resize pairs to SIZE×SIZE (the reference recipe: 256)")
    size.add_argument("--crop", type=int, help=f"random CROP×CROP crops at native resolution instead of resizing (default recipe: {_RECIPE['crop']}, 128 with --init)")
    for name, what in (("soften", "blurred with a Gaussian σ 0.3–1.0 (a softer camera)"), ("compress", "JPEG-compressed (quality 75–95)")):
        train.add_argument(f"--{name}", type=float, metavar="P", help=f"sharp-only crops: share of sources {what} before degrading; "
                           f"that image is then the target (default recipe: {_RECIPE[name]:g})")
    train.add_argument("--perturb-psf", type=float, metavar="P", help="psf-nafnet: share of training crops told a slightly wrong PSF "
                       f"(zoomed 0.8–1.25×), so that an imprecise PSF softens rather than rings (default recipe: {_RECIPE['perturb_psf']:g})")
    train.add_argument("--estimated-psf", type=float, metavar="P", help="psf-nafnet: share of training crops told the PSF the shipped "
                       "blur estimator finds in them (crops >= 128 px), so that estimation errors are part of what it learns (default 0)")
    train.add_argument("--epochs", type=int, help="maximum epochs (reference recipe: 100)")
    train.add_argument("--max-minutes", type=float, help="wall-clock budget in training minutes; the default recipe's cosine "
                       "schedule anneals over it (default 60 unless --steps is given)")
    train.add_argument("--steps", type=int, help="default recipe: optimizer steps to anneal over (instead of --max-minutes)")
    train.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, all cores)")
    train.add_argument("--val-every", dest="epoch_steps", type=int, metavar="STEPS",
                       help="validate and checkpoint every STEPS steps (default recipe: 200; reference: once per pass over the data)")
    train.add_argument("--batch", type=int, help="global batch size, split evenly over torchrun processes (default 16; reference 8)")
    train.add_argument("--lr", type=float, help="peak learning rate (default recipe 2e-3 AdamW, 5e-4 with --init; reference 1e-4 Adam)")
    train.add_argument("--seed", type=int, help="seed for split, init and augmentation (default 42)")
    train.add_argument("--perceptual", action="store_true", default=None,
                       help="add the VGG19 perceptual term, weights from the PyTorch hub cache file")
    train.add_argument("--vgg19-weights", help="torchvision vgg19 state dict (.pth/.safetensors); implies --perceptual")
    train.add_argument("--w-ssim", type=float, help="weight of (1 − SSIM) (default recipe 0.15, 0 with --init; reference 0.85)")
    train.add_argument("--w-l1", type=float, help="weight of L1 (default recipe 0.85, 1 with --init; reference 0.15)")
    train.add_argument("--w-mse", type=float, help="weight of the mean squared error (default recipe 0; reference 0)")
    train.add_argument("--w-psnr", type=float, help="weight of minus the mean per-image PSNR in dB, NAFNet's loss (default recipe 0; reference 0)")
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

    deblur = commands.add_parser("deblur", help="deblur image files or folders",
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
                                        "be read (the run stops at it; a rerun resumes)")
    deblur.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    deblur.add_argument("-o", "--out", required=True, help="output folder; an existing file there is replaced only if meddeblur "
                        "wrote it (or with --overwrite), an input never")
    deblur.add_argument("--overwrite", action="store_true", help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)")
    deblur.add_argument("--model", help="run folder, .safetensors weights or an .onnx file from meddeblur export (runs in ONNX Runtime) "
                        "(default: the model shipped with meddeblur, see MODEL_CARD.md)")
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
    deblur.add_argument("--psf", metavar="SPEC|FILE", help="the blur is known: restore with this PSF instead of the blind network — "
                        "a spec (gauss:sigma=1.6, defocus:radius=2.5, motion:length=9,angle=30, down:scale=2, …) or a kernel file "
                        "(.npy, grey .png, or the .json meddeblur calibrate writes); see docs/psf.md")
    deblur.add_argument("--method", choices=tuple(registry.METHODS), default=None,
                        help="; ".join(f"{m.name}: {m.summary}" for m in registry.METHODS.values())
                        + f". With --psf the default is {registry.KNOWN_BLUR_DEFAULT}, without it {registry.NETWORK}")
    deblur.add_argument("--estimator", metavar="FILE", help="with --method psf: blur-estimator weights (.safetensors) "
                        "(default: the ones shipped with meddeblur)")
    deblur.add_argument("--explain", action="store_true", help="write NAME.psf.png beside each output: the PSF it was restored "
                        "with (known or estimated; an estimate that was not used is drawn too, its title says so) beside its MTF "
                        "(the [plots] extra); needs --psf or --method psf")
    archive = deblur.add_argument_group("folders and archives")
    archive.add_argument("--recursive", action="store_true", help="also the images in sub-folders, the tree mirrored under -o")
    archive.add_argument("--skip-bad", action="store_true", help="go on past inputs that cannot be read: each is listed with its "
                         "reason and the exit code is 1")
    archive.add_argument("--redo", action="store_true", help="deblur again inputs whose output exists with the same model and options "
                         "(skipped by default)")
    archive.add_argument("--allow-outputs", action="store_true", help="deblur inputs that are meddeblur outputs themselves (skipped "
                         "by default, with a note)")
    archive.add_argument("--log", metavar="FILE", help="append a JSON line per input to FILE: input, status (written, skipped, refused), "
                         "output, reason, seconds, model_id, engine, parameters, change, change_map, restoration "
                         "(what --method psf did with the image), source (the input's size, time and SHA-256), output_sha256, time")
    archive.add_argument("--change-map", action="store_true", help="write NAME.change.png beside each output: |output - input| in "
                         "8-bit levels as a heat map with a colour bar (the figures, mean, max and share over 4 levels, always go "
                         "into the log and the output's provenance)")
    archive.add_argument("--quiet", action="store_true", help="no progress (on a terminal, bars: images done, images/s, ETA, and "
                         "the tiles of a large image; elsewhere, a line every 30 s); the summary is still printed")
    archive.add_argument("--workers", type=int, metavar="N",
                         help="processes deblurring at once, each loading the model once with cores/N threads (default 1, this "
                              "process with all cores: on 2 cores, 2 single-thread workers ran 1.02x to 1.22x its images/s (three runs) after a 2.3 s "
                              "start-up, benchmarks/results/archive.md rows 'local, 1 worker' and 'local, 2 workers'); "
                              "with --cluster ray, the number of Ray actors")
    archive.add_argument("--cluster", choices=("ray",), help="run on Ray Data (pip install 'meddeblur[ray]'): an embedded Ray on this "
                         "machine, or the cluster at --ray-address; same outputs, log and resume rule")
    archive.add_argument("--ray-address", metavar="ADDRESS", help="with --cluster ray: join this cluster: auto (the one this machine "
                         "belongs to), HOST:PORT (the head's GCS port, e.g. HEAD:6379) or ray://HOST:PORT (Ray Client, e.g. "
                         "ray://HEAD:10001); refused if nothing answers there within 15 s. Inputs and -o must be on storage "
                         "every node sees at the same path")

    pacs = commands.add_parser("pacs", help="a DICOM node: deblur what a PACS receives into derived series (the [pacs] extra)",
                               description="Deblur every new instance of the configured SOP classes into a derived instance in a new "
                                           "series (the original is never changed), exactly once across restarts and crashes: poll a "
                                           "DICOMweb archive (QIDO-RS, WADO-RS, STOW-RS) with --dicomweb, or receive C-STOREs with "
                                           "--listen and send the results on with --forward. See docs/pacs.md.",
                               epilog="exit codes: 0 stopped (Ctrl-C, SIGTERM) or --once finished; 2 a usage error, or the archive "
                                      "refused the login or could not be reached at the first poll")
    way = pacs.add_mutually_exclusive_group(required=True)
    way.add_argument("--dicomweb", metavar="URL", help="the DICOMweb root to poll and store into, e.g. http://127.0.0.1:8042/dicom-web")
    way.add_argument("--listen", metavar="AET@PORT", help="receive C-STOREs as AET on 127.0.0.1:PORT (AET@HOST:PORT to bind another "
                     "address of this machine); needs --forward")
    pacs.add_argument("--forward", metavar="AET@HOST:PORT", help="with --listen: where the derived instances are C-STOREd")
    pacs.add_argument("--once", action="store_true", help="with --dicomweb: process what is new, then exit (for cron)")
    pacs.add_argument("--poll-seconds", dest="interval", type=float, default=30, metavar="SECONDS", help="with --dicomweb: seconds between polls (default 30)")
    pacs.add_argument("--state", metavar="FILE", help="the node's records (SQLite; default ~/.local/state/meddeblur/pacs-<hash of the "
                      "archive>.sqlite); the spool of --listen lies beside it")
    pacs.add_argument("--sop-class", dest="sop_classes", action="append", metavar="UID", help="deblur instances of this SOP class; "
                      "repeatable (default: dermoscopic photography, VL photographic, secondary capture)")
    pacs.add_argument("--modality", dest="modalities", action="append", metavar="CODE", help="deblur only this modality, e.g. XC; "
                      "repeatable (default: every modality of those classes)")
    pacs.add_argument("--ae-title", default="MEDDEBLUR", help="with --listen: the calling AE title this node uses when "
                      "forwarding (default MEDDEBLUR)")
    pacs.add_argument("--allow-from", dest="allow_from", action="append", default=[], metavar="HOST",
                      help="with --listen: also accept associations from this address (default: loopback only); repeatable")
    login = pacs.add_argument_group("DICOMweb login and TLS")
    login.add_argument("--user", help="HTTP basic authentication user (with --password-file)")
    login.add_argument("--password-file", metavar="FILE", help="a file holding the password (default: $MEDDEBLUR_PACS_PASSWORD)")
    login.add_argument("--token-file", metavar="FILE", help="a file holding a bearer token (default: $MEDDEBLUR_PACS_TOKEN)")
    login.add_argument("--ca-bundle", metavar="FILE", help="check the service's TLS certificate against these CAs (PEM)")
    login.add_argument("--client-cert", metavar="FILE", help="present this TLS client certificate (PEM; with --client-key unless it holds the key)")
    login.add_argument("--client-key", metavar="FILE", help="the client certificate's private key (PEM)")
    # The deblur command's own options, the same actions: one definition, one help text, one default.
    reused = ("model", "method", "psf", "estimator", "device", "tile", "overlap")
    for action in deblur._actions:
        if action.dest in reused:
            pacs._add_action(action)

    export = commands.add_parser("export", help="export a model to ONNX (dynamic batch, height and width; the [onnx] extra)",
                                 description="Write an ONNX model with the config and model id as metadata, for deblur --onnx or any ONNX runtime.")
    export.add_argument("--model", help="run folder or .safetensors weights (default: the shipped model)")
    export.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    export.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    export.add_argument("--overwrite", action="store_true", help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)")

    info = commands.add_parser("info", help="print the provenance stored in files written by meddeblur",
                               description="Print tool, version, model id and parameters recorded in output images (PNG/TIFF/JPEG "
                                           "metadata, DICOM tags, BMP sidecar) or exported ONNX models, and for --method psf outputs "
                                           "the estimated PSF, the consistency check and the result. Exit code 1 if a file has none.")
    info.add_argument("files", nargs="+", metavar="FILE", help="image, DICOM or .onnx files")
    info.add_argument("--json", action="store_true", help="print the records as one JSON object keyed by file")

    assess = commands.add_parser("assess", help="score how blurred images are and flag the ones needing attention",
                                 description=f"No-reference blur score in [0, 1] per image (higher = blurrier), measured at a long side of "
                                             f"{_ASSESS_SIDE} px; images above the threshold are flagged 'needs attention'.")
    assess.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    assess.add_argument("--csv", metavar="FILE", help="write path, blur_score, flag, width, height, note to FILE")
    assess.add_argument("--threshold", type=float, default=_ASSESS_THRESHOLD,
                        help=f"flag images scoring above this (default {_ASSESS_THRESHOLD}, chosen on ISIC, see docs/benchmarks.md)")
    assess.add_argument("--recursive", action="store_true", help="also score the images in sub-folders of the folders given")
    assess.add_argument("--skip-bad", action="store_true", help="list unreadable files as 'unreadable' instead of stopping")
    assess.add_argument("--overwrite", action="store_true", help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)")

    synth = commands.add_parser("synth", help="write a paired data set by degrading sharp images",
                                description="Degrade sharp images into blurred/, sharp/, kernels/*.npy and manifest.json.")
    synth.add_argument("--sharp", required=True, help="folder of sharp images")
    synth.add_argument("-o", "--out", required=True, help="output folder (created; must not be the --sharp folder)")
    synth.add_argument("--degrade", required=True, metavar="SPEC", help="degradation spec, e.g. mixed or gauss:sigma=1.2")
    synth.add_argument("--seed", type=int, default=0, help="seed of the degradation draws (default 0)")
    synth.add_argument("--size", type=int, help="resize to SIZE×SIZE first (area), like the reference protocol")
    synth.add_argument("--overwrite", action="store_true", help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)")

    calibrate = commands.add_parser("calibrate", help="measure a device's PSF from a photographed slanted edge, or write the target to print",
                                    description="Measure the PSF of a camera or dermatoscope from a photo of a slanted edge (ISO 12233: "
                                                "edge fit, 4x oversampled edge-spread function, MTF) and write it as .psf.json with its "
                                                "MTF50, for deblur --psf. --target writes the printable tilted-square target instead.")
    calibrate.add_argument("image", nargs="?", metavar="EDGE_IMAGE", help="photo of the printed target (or of any straight edge tilted 2-10°)")
    calibrate.add_argument("-o", "--out", metavar="FILE", help="the PSF file to write (.json, e.g. device.psf.json)")
    calibrate.add_argument("--plot", metavar="PNG", help="also draw the PSF and the measured MTF (the [plots] extra)")
    calibrate.add_argument("--anisotropic", action="store_true", help="an elliptical PSF from the near-vertical and near-horizontal "
                           "edges (default: radially symmetric)")
    calibrate.add_argument("--roi", type=_region, metavar="X0,Y0,X1,Y1", help="look for edges only in this region (pixels; default: everywhere)")
    calibrate.add_argument("--target", metavar="PNG", help="write the printable target (a 10 mm black square tilted 5°, with instructions)")
    calibrate.add_argument("--dpi", type=int, help="resolution of --target, your printer's (default 600; 300 to 2400)")
    calibrate.add_argument("--overwrite", action="store_true", help="replace existing files that meddeblur did not write (its own earlier outputs are always replaced; inputs never)")

    demo = commands.add_parser("demo", help="deblur a generated sample with the shipped model (offline, seconds)")
    demo.add_argument("-o", "--out", default="meddeblur-demo", help="output folder (default ./meddeblur-demo)")
    demo.add_argument("--model", help="run folder or .safetensors weights (default: the shipped model)")

    serve = commands.add_parser("serve", help="web page and REST API for deblurring (FastAPI + uvicorn: the [serve] extra)",
                                description="Serve the page at / and the API at /v1/deblur, /v1/model, /healthz (docs at /docs). "
                                            "Output images are computer-processed and not for diagnosis alone.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--model", help="run folder, .safetensors weights or an .onnx file from meddeblur export "
                       "(default: the model shipped with meddeblur)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes, each loading the model once (default 1)")
    serve.add_argument("--threads", type=int, default=1, help="images deblurred at once per worker (default 1)")
    serve.add_argument("--queue", type=int, default=32, help="requests waiting per worker before answering 503 + Retry-After (default 32)")
    serve.add_argument("--max-upload-mb", type=float, default=50, help="largest upload in MiB, refused with 413 while streaming (default 50)")
    serve.add_argument("--max-pixels", type=float, default=12e6, help="largest image in pixels, checked before decoding (default 12e6, "
                       "a 4000×3000 photo; raise it together with --deadline on faster machines, see docs/guarantees.md)")
    serve.add_argument("--deadline", type=float, default=120, help="seconds to answer once an upload is in; past it (or when it "
                       "cannot be met) 503 + Retry-After (default 120)")
    serve.add_argument("--body-timeout", type=float, default=30, help="seconds to receive a whole upload, else 408 (default 30)")
    serve.add_argument("--max-uploads", type=int, default=64, help="uploads received at once per worker, else 503 (default 64)")
    serve.add_argument("--header-timeout", type=float, default=10, help="seconds for a request's headers to arrive, else 408 and the "
                       "connection closed (default 10)")
    serve.add_argument("--max-client-connections", type=int, default=32, help="connections open at once from one client address, "
                       "else 503 (default 32; raise it behind a reverse proxy, whose connections all come from one address)")
    serve.add_argument("--api-key-file", metavar="FILE", help="require this key (Authorization: Bearer KEY or X-API-Key) on /v1/; "
                       "default: $MEDDEBLUR_API_KEY if set, else no key")
    serve.add_argument("--allowed-hosts", metavar="NAMES", help="comma-separated Host names served (default: localhost, 127.0.0.1 "
                       "and ::1 when bound to loopback, any otherwise; '*' for any)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="let a web page from ORIGIN (https://host[:port]) call the API; repeatable (default: none, CORS off)")
    serve.add_argument("--estimator", metavar="FILE", help="blur-estimator weights for POST /v1/deblur?method=psf (estimate each "
                       "image's PSF, as deblur --method psf) (default: the ones shipped with meddeblur)")
    serve.add_argument("--psf", metavar="SPEC|FILE", help="the default PSF: requests that give none are restored with it (by "
                       f"{registry.KNOWN_BLUR_DEFAULT} unless they name another method) — a spec such as gauss:sigma=1.6 or a "
                       "kernel file, e.g. the device.psf.json meddeblur calibrate writes; loaded and checked once at start-up; "
                       "the page shows it (default: none, the blind network)")
    serve.add_argument("--tile", type=int, default=1024, help="tile size for large images, as in deblur (default 1024; 0 = whole)")
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
