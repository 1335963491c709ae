"""What the benchmark scripts share: where results go, where the ISIC images are, the machine a result names, the
command it records, one writer of ``results/NAME.{json,md}``, and the names of the quality tables' rows and protocols.

Every results JSON keeps at least ``command`` (:func:`command`: ``python -m benchmarks.NAME ARGS``) and ``machine``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from meddeblur.files import atomic_write

__all__ = ["HERE", "ROOT", "RESULTS", "SPLIT", "ISIC", "machine_line", "describe_machine", "command", "write_result",
           "MODEL_ROW", "INPUT_ROW", "WIENER_ROW", "RL_ROW", "ESTIMATED_ROW", "PSF_ROW", "PNP_ROW", "UNBLURRED", "PROTOCOL_TITLES"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the repository
RESULTS = HERE / "results"
SPLIT = HERE / "isic_split.json"  # the seed-42 70/20/10 split of the ISIC images
#: The ISIC photographs: ``$MEDDEBLUR_ISIC_DIR``, else ``../shared/data/isic-dermoscopy`` beside the repository (read in place).
ISIC = Path(os.environ.get("MEDDEBLUR_ISIC_DIR", ROOT.parent / "shared" / "data" / "isic-dermoscopy"))

#: The rows of a quality table (benchmarks/results/quality_*.json) that other scripts read.
MODEL_ROW = "model: default"
INPUT_ROW = "input"
WIENER_ROW = "Wiener (true kernel)"
RL_ROW = "Richardson-Lucy (true kernel)"
ESTIMATED_ROW = "psf (estimated)"  # the shipped model told the PSF estimated from each image (method psf)
PSF_ROW = "non-blind (true PSF): psf"  # the kernel-conditioned network told the true PSF
PNP_ROW = "non-blind (true PSF): pnp"  # the plug-and-play restorer told the true PSF
UNBLURRED = ("none", "sharp (none)")  # the un-blurred family in the current and in the seed protocol: in no mean
PROTOCOL_TITLES = {"full": "full resolution", "half": "half resolution", "soft": "softer source", "seed": "256×256"}


def machine_line() -> str:
    """``"AMD EPYC, 2 cores, torch 2.13.0+cpu"``: :func:`meddeblur.device.machine_line` (torch is imported on the first call,
    not with this module: the stress tools' worker processes import it without torch)."""
    from meddeblur.device import machine_line as line

    return line()


def describe_machine() -> dict:
    """:func:`meddeblur.device.describe_machine`: the CPU, its cores, torch's version and threads (a dict)."""
    from meddeblur.device import describe_machine as describe

    return describe()


def command(module: str, argv: list[str] | None = None) -> str:
    """The command a result records: ``python -m benchmarks.MODULE ARGS`` (``argv``, else this process's arguments)."""
    given = sys.argv[1:] if argv is None else argv
    return " ".join([f"python -m benchmarks.{module}", *(shlex.quote(str(arg)) for arg in given)])


def write_result(name: str, result: dict, markdown: str, out: Path = RESULTS, **dump: Any) -> Path:
    """Write ``out/NAME.json`` (``json.dumps(result, **dump)``, default indent 2) and ``out/NAME.md``, each atomically.

    Returns the JSON's path. ``result`` must name its ``command`` and ``machine``.
    """
    missing = [key for key in ("command", "machine") if key not in result]
    if missing:
        raise ValueError(f"{name}: a result names its {' and '.join(missing)}")
    dump.setdefault("indent", 2)
    path = Path(out) / f"{name}.json"
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(result, **dump) + "\n")
    with atomic_write(Path(out) / f"{name}.md", "w") as fh:
        fh.write(markdown)
    return path
