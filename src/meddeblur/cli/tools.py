"""The ``meddeblur`` commands around deblurring: ``export``, ``info``, ``assess``, ``synth`` and ``calibrate``.

As in :mod:`meddeblur.cli.commands`: each turns parsed flags into calls of the public Python API and imports its own
modules, and every file a command writes is planned and checked before the first is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from meddeblur.errors import UserError, require

__all__ = ["export", "info", "assess", "synth", "calibrate"]


def export(args: argparse.Namespace) -> int:
    for module in ("onnx", "onnxscript"):  # before the overwrite check, which reads an existing .onnx with onnx
        require(module, "meddeblur export")
    from meddeblur.files import remove_stale_temporaries
    from meddeblur.inference.onnx_engine import export_onnx
    from meddeblur.io.ownership import check_replaceable

    check_replaceable(args.onnx, args.overwrite, "--onnx file")
    remove_stale_temporaries(Path(args.onnx).parent)
    meta = export_onnx(args.model, args.onnx, opset=args.opset)
    print(
        f"{args.onnx}: model {meta['meddeblur_weights_id']} ({meta['meddeblur_source']}), opset {args.opset}, "
        f"dynamic batch/height/width (multiples of {meta['meddeblur_size_multiple']})"
    )
    return 0


def info(args: argparse.Namespace) -> int:
    import json

    from meddeblur.io.ownership import read_provenance
    from meddeblur.io.provenance import summary

    records: dict[str, dict[str, Any] | None] = {}
    for name in args.files:
        if name.lower().endswith(".onnx"):
            from meddeblur.inference.onnx_engine import OnnxModel

            onnx = OnnxModel(name)
            records[name] = {
                "tool": "meddeblur",
                "version": onnx.metadata["meddeblur_version"],
                "operation": "export",
                "model_id": onnx.weights_id,
                "model": onnx.describe(),
                "engine": "onnx",
                "parameters": {"size_multiple": onnx.size_multiple},
                "note": "ONNX export of a meddeblur model",
            }
        else:
            records[name] = read_provenance(name)
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
    else:
        from meddeblur.io.provenance import restoration_lines, source_line

        for name, record in records.items():
            print(f"{name}: {summary(record) if record else 'no meddeblur provenance (not written by meddeblur, or stripped)'}")
            made_from = source_line((record or {}).get("source"))
            made_from = made_from and made_from + (f"; made {(record or {})['time']}" if (record or {}).get("time") else "")
            for line in ([made_from] if made_from else []) + restoration_lines((record or {}).get("restoration")):
                print(f"  {line}")
    return 0 if all(records.values()) else 1


def assess(args: argparse.Namespace) -> int:
    from meddeblur.evaluation.assess import FLAG_ATTENTION, assess_files, check_csv_target, write_csv
    from meddeblur.inference.batch import collect_inputs

    if args.recursive:  # the folder walk of deblur --recursive (hidden names left out, links to folders not followed)
        from meddeblur.runs.plan import list_inputs

        files = collect_inputs([file for file, _ in list_inputs(args.inputs, recursive=True)[0]])
    else:
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
    print(
        f"{len(rows)} image(s): {flagged} need attention (blur score > {args.threshold:g})"
        + (f"; table: {args.csv}" if args.csv else "")
    )
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
        for target in (
            out / "blurred" / f"{pair.name}.png",
            out / "sharp" / f"{pair.name}.png",
            out / "kernels" / f"{pair.name}.npy",
        ):
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
        given = [
            flag
            for flag, value in (
                ("-o", args.out),
                ("--plot", args.plot),
                ("--anisotropic", args.anisotropic),
                ("--roi", args.roi),
                ("EDGE_IMAGE", args.image),
            )
            if value
        ]
        if given:
            raise UserError(
                f"--target {args.target}: writes the printable target only; drop {given[0]} (measure a photo of it "
                "in a second run: meddeblur calibrate PHOTO -o device.psf.json)"
            )
        if Path(args.target).suffix.lower() != ".png":
            raise UserError(f"--target {args.target}: the target is written as PNG; name it e.g. target.png")
        return [(Path(args.target), "--target file")]
    if args.dpi is not None:
        raise UserError(f"--dpi {args.dpi}: only sets the resolution of --target; drop it or add --target target.png")
    if args.image is None:
        raise UserError(
            "give a photo of a slanted edge to measure (meddeblur calibrate PHOTO -o device.psf.json), or --target "
            "target.png to write the target to print and photograph"
        )
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
    from meddeblur.io.ownership import check_planned

    outputs = _calibration_outputs(args)
    # Every file planned together before the measurement: a --plot that cannot be written stops the run before -o is.
    kinds = {
        "-o file": ("the calibrated PSF", "calibrate"),
        "--plot file": ("the calibration figure", "calibration figure"),
        "--target file": ("the printable target", "calibration target"),
    }
    check_planned(
        [(path, kinds[flag][0], flag, kinds[flag][1]) for path, flag in outputs],
        [] if args.image is None else [Path(args.image)],
        args.overwrite,
    )
    for path, _ in outputs:
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
    print(
        f"{args.out}: {found['model']} PSF, {kw}×{kh} px; MTF50 "
        + ("above Nyquist (a sharp device)" if measured is None else f"{measured:.4f} cycles/pixel")
        + f", from {len(found['edges'])} edge(s): {edges}"
        + (f"; figure: {args.plot}" if args.plot else "")
    )
    return 0
