"""Slanted-edge targets: the printable calibration sheet, and generated charts with an exactly known edge.

The printed target is a solid black square tilted 5° on white: each of its four sides is a slanted edge
(two near-vertical, two near-horizontal), which is what :func:`meddeblur.psf.edge.measure_edges` looks for.
Its side is 10 mm, so a ruler checks that it was printed at 100 %.

>>> chart = edge_chart(64, 64)
>>> chart.shape, round(float(chart.min()), 3), round(float(chart.max()), 3)
((64, 64, 3), 0.2, 0.8)
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from meddeblur.errors import InvalidOption

__all__ = ["TILT", "SQUARE_MM", "DPI_RANGE", "INSTRUCTIONS", "edge_chart", "target_page", "write_target"]

TILT = 5.0  # degrees: inside ISO 12233's 2–10°, far from 0° and 45°
SQUARE_MM = 10.0
_PAGE_MM = (100.0, 70.0)  # width, height: the square with 15+ mm of white around it, the instructions below
DPI_RANGE = (300, 2400)  # coarser prints show their pixels through a dermatoscope; finer ones only grow the file
_INK = 0  # solid black: a grey would be printed as a halftone dot pattern that the dermatoscope resolves

INSTRUCTIONS = (
    "meddeblur calibration target: a 10 mm black square tilted 5°.",
    "1. Print at 100 % (no 'fit to page'); the square's side must measure 10.0 mm.",
    "2. Lay the sheet flat; photograph the square through the dermatoscope at its usual",
    "   working distance and settings (contact, polarisation, zoom), in focus.",
    "3. Keep the square's sides and white paper around them inside the field; with a",
    "   small field, one corner of the square is enough. Nothing may be clipped to black",
    "   or white: lower the exposure if the paper is pure white.",
    "4. meddeblur calibrate photo.png -o device.psf.json --plot device-mtf.png",
    "5. meddeblur deblur IMAGES -o deblurred/ --psf device.psf.json  (every image of that device)",
)


def edge_chart(
    height: int = 256,
    width: int = 256,
    tilt: float = TILT,
    kind: str = "square",
    side: float | None = None,
    levels: tuple[float, float] = (0.2, 0.8),
) -> np.ndarray:
    """A generated slanted-edge chart, (height, width, 3) float32: ``kind`` "square" (a dark square tilted by
    ``tilt`` degrees, ``side`` px, default 60 % of the smaller side) or "edge" (one edge through the middle,
    dark on the left, ``tilt`` degrees off vertical).

    Point-sampled (each pixel is the step's value at its centre): the chart's own slanted-edge MTF is then 1,
    so blurring it with a kernel and measuring gives that kernel's MTF alone, with no pixel aperture in it.
    ``levels`` = (dark, bright) in [0, 1]; the default keeps both well away from clipping, as ISO 12233 advises.
    """
    if kind not in ("square", "edge"):
        raise InvalidOption(f"kind={kind!r}: must be 'square' or 'edge'", value=kind, option="kind")
    if min(height, width) < 16:
        raise InvalidOption(f"height, width = {height}, {width}: at least 16 px each", value=(height, width), option="height")
    dark, bright = levels
    if not 0 <= dark < bright <= 1:
        raise InvalidOption(f"levels={levels}: need 0 <= dark < bright <= 1", value=levels, option="levels")
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    xx -= (width - 1) / 2 + 0.3  # off the pixel grid's symmetry, so no row puts the edge exactly on a pixel centre
    yy -= (height - 1) / 2 + 0.2
    c, s = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
    u, v = xx * c - yy * s, xx * s + yy * c  # the square's axes, turned by tilt (counter-clockwise on screen)
    if kind == "edge":
        inside = u < 0
    else:
        half = (0.6 * min(height, width) if side is None else float(side)) / 2
        inside = (np.abs(u) <= half) & (np.abs(v) <= half)
    grey = np.where(inside, dark, bright).astype(np.float32)
    return np.repeat(grey[..., None], 3, axis=-1)


def _check_dpi(dpi: int) -> int:
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not DPI_RANGE[0] <= dpi <= DPI_RANGE[1]:
        raise InvalidOption(
            f"dpi={dpi!r}: must be a whole number from {DPI_RANGE[0]} to {DPI_RANGE[1]} (your printer's resolution, e.g. 600)",
            value=dpi,
            option="dpi",
        )
    return dpi


def target_page(dpi: int = 600) -> np.ndarray:
    """The printable page at ``dpi``, (H, W) uint8: the square (anti-aliased, 4×4 subsamples) and the instructions."""
    from PIL import Image, ImageDraw, ImageFont

    dpi = _check_dpi(dpi)
    px = dpi / 25.4
    width, height = (round(mm * px) for mm in _PAGE_MM)
    page = Image.new("L", (width, height), 255)
    centre = (width / 2, 22.0 * px)
    half = SQUARE_MM * px / 2
    c, s = math.cos(math.radians(TILT)), math.sin(math.radians(TILT))
    corners = [
        (centre[0] + a * c + b * s, centre[1] - a * s + b * c)
        for a, b in ((-half, -half), (half, -half), (half, half), (-half, half))
    ]
    # Drawn 4× larger on the square's bounding box only, then box-averaged: sub-pixel edges without a 16× page.
    x0, y0 = (math.floor(min(p[i] for p in corners)) - 2 for i in (0, 1))
    x1, y1 = (math.ceil(max(p[i] for p in corners)) + 2 for i in (0, 1))
    patch = Image.new("L", (4 * (x1 - x0), 4 * (y1 - y0)), 255)
    ImageDraw.Draw(patch).polygon([(4 * (x - x0), 4 * (y - y0)) for x, y in corners], fill=_INK)
    page.paste(patch.reduce(4), (x0, y0))
    draw = ImageDraw.Draw(page)
    try:
        font = ImageFont.load_default(size=100)
        longest = max(draw.textlength(line, font=font) for line in INSTRUCTIONS)
        # ≤ 2.4 mm (7 pt)
        font = ImageFont.load_default(size=max(8, min(round(2.4 * px), int(100 * (width - 12 * px) / longest))))
    except TypeError:  # Pillow < 10.1: only the small bitmap font
        font = ImageFont.load_default()
    for i, line in enumerate(INSTRUCTIONS):
        draw.text((6.0 * px, (42.0 + 2.9 * i) * px), line, fill=0, font=font)
    return np.asarray(page)


def write_target(path: str | Path, dpi: int = 600) -> Path:
    """Write the printable target as a PNG whose metadata says ``dpi`` (so it prints at its size) and carries
    meddeblur's provenance record; atomically. Returns the path."""
    from PIL import Image

    from meddeblur.files import atomic_write
    from meddeblur.io.provenance import embed, make_record

    page = target_page(dpi)
    buffer = io.BytesIO()
    Image.fromarray(page).save(buffer, format="PNG", dpi=(dpi, dpi))
    record = make_record(parameters={"dpi": dpi, "square_mm": SQUARE_MM, "tilt_deg": TILT})
    record.update(operation="calibration target", note=f"print at 100 %: the square's side is {SQUARE_MM:g} mm")
    path = Path(path)
    with atomic_write(path) as fh:
        fh.write(embed(buffer.getvalue(), "PNG", record))
    return path
