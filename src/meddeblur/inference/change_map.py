"""What deblurring changed: per-pixel change in 8-bit levels, its summary figures, and a heat map with a colour bar.

The change of a pixel is the largest absolute difference over its colour channels between the image after and
before, expressed in 8-bit levels (a 16-bit difference of 257 is one level), so figures of 8- and 16-bit images
read alike. Integer images are compared as stored; float images in [0, 1] are scaled by 255 without rounding.

>>> import numpy as np
>>> before = np.zeros((20, 30), np.uint8)
>>> after = before.copy(); after[:, :3] = 10
>>> change = change_between(before, after)
>>> change.figures
ChangeFigures(mean=1.0, max=10.0, share_over_4=0.1)
>>> change.image().shape   # the heat map (20 x 30) plus its colour bar, on a canvas at least 128 px tall
(128, 100, 3)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meddeblur.io.formats import LoadedImage

__all__ = [
    "CHANGE_MAP_OPERATION",
    "ChangeFigures",
    "ChangeMap",
    "change_between",
    "change_of",
    "change_map_path",
    "THRESHOLD_LEVELS",
]

#: The ``operation`` of a change map's provenance record.
CHANGE_MAP_OPERATION = "change map"

#: A pixel counts as changed in :attr:`ChangeFigures.share_over_4` when it moved by more than this many 8-bit levels.
THRESHOLD_LEVELS = 4
#: The heat map's colour scale ends at the first of these (in levels) that is at least the image's largest change,
#: so that maps of similar images share a scale and stay comparable across an archive.
SCALES = (8, 16, 32, 64, 128, 255)
#: matplotlib's "inferno" at 11 evenly spaced stops (perceptually uniform, readable in grey, safe for colour-blind readers).
_INFERNO = np.array(
    [
        (0, 0, 4),
        (22, 11, 57),
        (66, 10, 104),
        (106, 23, 110),
        (147, 38, 103),
        (188, 55, 84),
        (221, 81, 58),
        (243, 120, 25),
        (252, 165, 10),
        (246, 215, 70),
        (252, 255, 164),
    ],
    np.float32,
)
_BAR_WIDTH = 70  # px of the colour-bar panel right of the map
_MIN_HEIGHT = 128  # the panel needs room for its labels
_PANEL = (32, 32, 32)
_ROWS = 256
_INTEGER_RANGES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@dataclass(frozen=True)
class ChangeFigures:
    """Mean and maximum absolute change in 8-bit levels, and the share of pixels changed by more than 4 levels."""

    mean: float
    max: float
    share_over_4: float

    def as_dict(self) -> dict[str, float]:
        """The figures as written into the provenance record and the run log (keys ``mean``, ``max``, ``share_over_4``)."""
        return asdict(self)


def _checked(image: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """(H, W[, C]) uint8, uint16 or float in [0, 1] → its colour planes (H, W, 1 or 3) and the factor to 8-bit levels."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected an (H, W) or (H, W, C) image with C in 1/3/4, got shape {np.shape(image)}")
    scale = _INTEGER_RANGES.get(array.dtype)
    if scale is None:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{name}: dtype {array.dtype} is not supported; give uint8, uint16 or float in [0, 1]")
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{name}: float values must be finite and lie in [0, 1]")
        scale = 1.0
    # Alpha is carried through unchanged by deblurring: only colour counts.
    return (array[..., :3] if array.shape[2] == 4 else array), 255.0 / scale


@dataclass(frozen=True)
class ChangeMap:
    """The change of every pixel, ``levels`` (H, W) float32 in 8-bit levels, and its :class:`ChangeFigures`."""

    levels: np.ndarray
    figures: ChangeFigures

    def scale(self) -> int:
        """The top of the colour scale in levels (:data:`SCALES`)."""
        return next((top for top in SCALES if top >= self.figures.max), SCALES[-1])

    def heat(self) -> np.ndarray:
        """(H, W, 3) uint8: the change coloured with inferno over ``0..scale()`` levels, without the colour bar."""
        return _colour(self.levels / self.scale())

    def image(self) -> np.ndarray:
        """(max(H, 128), W + bar, 3) uint8: the heat map at the top left and, right of it, its colour bar in levels.

        The bar's panel is 70 px wide, times ``H // 400`` for taller images so that its labels stay legible.
        """
        heat = self.heat()
        height, width = heat.shape[:2]
        zoom = max(1, height // 400)
        canvas = np.empty((max(height, _MIN_HEIGHT), width + _BAR_WIDTH * zoom, 3), np.uint8)
        canvas[:] = _PANEL
        canvas[:height, :width] = heat
        return _draw_bar(canvas, width, self.scale(), zoom)


def change_between(before: np.ndarray, after: np.ndarray) -> ChangeMap:
    """The :class:`ChangeMap` from ``before`` to ``after``: numpy (H, W) or (H, W, C), C in 1/3/4, of the same shape.

    uint8, uint16 or float in [0, 1] (the two may differ in dtype: each is scaled by its own range); a grey
    image may be compared with a colour one (its one channel stands for all three). Alpha is ignored.
    """
    (old, old_scale), (new, new_scale) = _checked(before, "before"), _checked(after, "after")
    if old.shape[:2] != new.shape[:2]:
        raise ValueError(f"after: shape {np.shape(after)} does not match before's {np.shape(before)}")
    levels = np.empty(old.shape[:2], np.float32)
    for top in range(0, old.shape[0], _ROWS):  # in row blocks: a 12-megapixel photo needs no gigabyte of float64
        rows = slice(top, top + _ROWS)
        difference = new[rows].astype(np.float64) * new_scale - old[rows].astype(np.float64) * old_scale
        levels[rows] = np.abs(difference).max(axis=2)
    figures = ChangeFigures(
        mean=round(float(levels.mean()), 4),
        max=round(float(levels.max()), 4),
        share_over_4=round(float((levels > THRESHOLD_LEVELS).mean()), 6),
    )
    return ChangeMap(levels, figures)


def _quantized(values: np.ndarray, bits: int) -> np.ndarray:
    """Float values in [0, 1] as an encoder of ``bits`` bits stores them: uint8 / uint16, else the levels as floats."""
    if bits in (8, 16):
        maxval, dtype = (65535, np.uint16) if bits == 16 else (255, np.uint8)
        return np.round(np.clip(values, 0.0, 1.0) * maxval).astype(dtype)
    maxval = 2**bits - 1  # e.g. a 12-bit DICOM
    return (np.round(np.clip(values, 0.0, 1.0) * maxval) / maxval).astype(np.float32)


def change_of(image: LoadedImage, restored: np.ndarray, bit_depth: int) -> ChangeMap:
    """The change from a decoded input to its deblurred ``restored`` (H, W, 3) float, as written with ``bit_depth`` bits.

    The input is compared as stored, the output as handed to the encoder: exactly the file's pixels for PNG, TIFF,
    BMP and DICOM (at its BitsStored); a JPEG adds its own compression error on top. A grey output is the mean of R, G, B.
    """
    stored = getattr(image.source, "bits_stored", None) if image.format == "DICOM" else None
    before = image.rgb[..., 0] if image.grayscale else image.rgb
    after = restored.mean(axis=2) if image.grayscale else restored
    return change_between(_quantized(before, stored or image.bit_depth), _quantized(after, stored or bit_depth))


def change_map_path(output: Path) -> Path:
    """Where the change map of ``output`` goes: ``NAME.change.png`` beside it (``out/a.jpg`` → ``out/a.change.png``)."""
    return output.with_name(f"{output.stem}.change.png")


def _colour(fraction: np.ndarray) -> np.ndarray:
    position = np.clip(fraction, 0.0, 1.0) * (len(_INFERNO) - 1)
    low = np.minimum(position.astype(np.int64), len(_INFERNO) - 2)
    weight = (position - low)[..., None].astype(np.float32)
    return np.round(_INFERNO[low] * (1 - weight) + _INFERNO[low + 1] * weight).astype(np.uint8)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def _draw_bar(canvas: np.ndarray, left: int, scale: int, zoom: int) -> np.ndarray:
    """Draw the vertical colour bar (``scale`` at the top, 0 at the bottom) with ticks and labels into the panel."""
    from PIL import Image, ImageDraw

    height = canvas.shape[0]
    top, bottom, x0, x1 = 22 * zoom, height - 10 * zoom, left + 8 * zoom, left + 24 * zoom
    fraction = np.linspace(1.0, 0.0, bottom - top)[:, None].repeat(x1 - x0, axis=1)
    canvas[top:bottom, x0:x1] = _colour(fraction)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font, ink = _font(11 * zoom), (230, 230, 230)
    draw.text((left + 4 * zoom, 4 * zoom), "levels", fill=ink, font=font)
    # The 4-level tick (the share_over_4 threshold) only where it stands clear of the 0 tick.
    ticks = sorted({0, scale // 2, scale} | ({THRESHOLD_LEVELS} if scale <= 32 else set()))
    for value in ticks:
        y = round(bottom - 1 - (bottom - 1 - top) * value / scale)
        draw.line([(x1, y), (x1 + 4 * zoom, y)], fill=ink, width=zoom)
        draw.text((x1 + 7 * zoom, y - 6 * zoom), str(value), fill=ink, font=font)
    return np.asarray(picture)
