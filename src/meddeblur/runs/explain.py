"""What ``deblur --explain`` draws: the PSF an output was restored with, beside its MTF, as ``NAME.psf.png``.

The PSF is the known one (``--psf``) or the one estimated from the image (``--method psf``), rebuilt exactly from the
spec its ``restoration`` record names. An estimate that was not used — the image came back unchanged, or the blind
network restored it — is drawn anyway, its title saying so: it shows why. The figure is written atomically and
carries the output's provenance (``operation`` ``"psf plot"``), so a rerun knows it as meddeblur's own file.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from meddeblur.errors import InvalidOption, require
from meddeblur.files import atomic_write
from meddeblur.inference.engine import Engine
from meddeblur.io.provenance import embed

if TYPE_CHECKING:
    from meddeblur.psf.kernel import PSF

__all__ = [
    "PSF_PLOT_OPERATION",
    "psf_plot_path",
    "check_explainable",
    "explained_psf",
    "psf_figure",
    "psf_plot",
    "write_psf_plot",
]

#: The ``operation`` of a PSF figure's provenance record.
PSF_PLOT_OPERATION = "psf plot"
# pyplot keeps global state: two figures drawn at once on a server's pool threads would mix.
_DRAWING = threading.Lock()


def psf_plot_path(output: Path) -> Path:
    """Where the PSF figure of ``output`` goes: ``NAME.psf.png`` beside it (``out/a.jpg`` → ``out/a.psf.png``)."""
    return output.with_name(f"{output.stem}.psf.png")


class _SaysItsPsf(Protocol):
    """An :class:`~meddeblur.inference.engine.Engine`, or the :class:`~meddeblur.runs.workers.ModelSpec` that loads one."""

    @property
    def psf(self) -> Any: ...

    @property
    def estimates_psf(self) -> bool: ...


def check_explainable(engine: _SaysItsPsf) -> None:
    """InvalidOption unless ``engine`` (a Deblurrer, or the ModelSpec that loads one) restores with a PSF, known or
    estimated; MissingExtra without matplotlib."""
    if engine.psf is None and not engine.estimates_psf:
        raise InvalidOption(
            "explain=True: draws the PSF each image was restored with, and the blind network uses none; add "
            "method=psf (estimate it from each image) or psf=SPEC (a known one), or drop explain=True",
            value=True,
            option="explain",
        )
    require("matplotlib", "drawing the PSF (explain)")


def explained_psf(engine: Engine, restoration: dict[str, Any]) -> tuple[PSF, str] | None:
    """(the PSF to draw for one output, the figure's title), or None when there is none (an image too small to estimate)."""
    from meddeblur.psf.kernel import load_psf  # here: planning a run (psf_plot_path) needs none of the PSF code

    estimate = restoration.get("psf") if restoration else None
    if estimate:
        psf = load_psf(estimate["source"])
        result = restoration.get("result")
        confidence = estimate.get("confidence")
        # Two lines: plot_psf appends the kernel's size to the title, and the panel is narrow.
        said = f"estimated {estimate['source']}\n" + (
            f"confidence {confidence:.2f}, " if isinstance(confidence, (int, float)) else ""
        )
        if result == "restored":
            return psf, said + ("used (whole image; a PSF map)" if "psf_map" in restoration else "used")
        return psf, said + f"NOT USED ({result})"
    known = engine.psf
    return (known, f"known PSF\n{known.source}") if known is not None else None


def psf_figure(psf: PSF, title: str) -> bytes:
    """The PNG bytes of ``psf``'s kernel beside its MTF curve (:meth:`PSF.draw`), without provenance."""
    with _DRAWING, tempfile.TemporaryDirectory(prefix="meddeblur-psf-") as folder:
        return psf.draw(Path(folder) / "psf.png", title).read_bytes()


def psf_plot(engine: Engine, restoration: dict[str, Any], record: dict[str, Any]) -> bytes | None:
    """The PNG of the PSF one image was restored with (:func:`explained_psf`), ``record`` (its output's provenance)
    embedded with ``operation`` ``"psf plot"``; None when there is no PSF to draw."""
    drawn = explained_psf(engine, restoration)
    if drawn is None:
        return None
    psf, title = drawn
    return embed(psf_figure(psf, title), "PNG", {**record, "operation": PSF_PLOT_OPERATION, "drawn_psf": psf.describe()})


def write_psf_plot(output: Path, engine: Engine, restoration: dict[str, Any], record: dict[str, Any]) -> Path | None:
    """Write :func:`psf_plot` to ``NAME.psf.png`` beside ``output``, atomically; the path, or None when there was no PSF."""
    data = psf_plot(engine, restoration, record)
    if data is None:
        return None
    target = psf_plot_path(output)
    with atomic_write(target) as fh:
        fh.write(data)
    return target
