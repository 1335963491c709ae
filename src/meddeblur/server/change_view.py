"""What the page's "what changed" view is drawn from: the change of every pixel, and a colour scale fitted to the image.

The CLI's change map (:mod:`meddeblur.inference.change_map`, ``?change_map=true``) ends its colour scale at the first of
8, 16, …, 255 levels that holds the image's *largest* change: a few outlying pixels set it and the rest of the map is
nearly black. The page colours the map itself instead, from the levels answered with ``?change_levels=true``, over a
scale that starts at the 99th percentile of the change rounded up to a nice number (:func:`nice_scale`; the legend says
so) and that a slider on the page changes. Levels travel as a PNG (:func:`levels_png`): one image-sized file the
browser decodes natively, exact to 1/256 of a level.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meddeblur.inference.change_map import CHANGE_MAP_OPERATION, THRESHOLD_LEVELS, ChangeMap
from meddeblur.io.encode import encode_image

__all__ = ["SCALES", "PERCENTILE", "LEVEL_STEPS", "nice_scale", "levels_png", "change_view"]

#: The colour scales the page offers, in 8-bit levels: 1-2-5 steps up to the largest possible change.
SCALES = (1, 2, 5, 10, 20, 50, 100, 200, 255)
#: The automatic scale's percentile of the change: one pixel in a hundred may lie beyond it (drawn at full colour).
PERCENTILE = 99
#: Levels are sent in steps of 1/LEVEL_STEPS (a 16-bit image's change is not whole levels).
LEVEL_STEPS = 256
# The automatic scale is never below the first nice scale above the share_over_4 threshold: a sharp image's few
# levels of noise would otherwise fill the map at full colour.
_MIN_AUTO = next(s for s in SCALES if s > THRESHOLD_LEVELS)


def nice_scale(percentile: float) -> int:
    """The first of :data:`SCALES` at or above ``percentile`` levels (and above the 4-level threshold).

    >>> nice_scale(0.3), nice_scale(7.2), nice_scale(10), nice_scale(400)
    (5, 10, 10, 255)
    """
    return next((s for s in SCALES if s >= max(percentile, _MIN_AUTO)), SCALES[-1])


def levels_png(levels: np.ndarray, record: dict[str, Any]) -> bytes:
    """(H, W) change in levels → an RGB PNG carrying ``record``: red the high and green the low byte of
    ``round(level * 256)`` (blue 0), so ``level = (R * 256 + G) / 256``; 255 levels is 65280, within 16 bits."""
    steps = np.round(np.clip(levels, 0.0, 255.0) * LEVEL_STEPS).astype(np.uint16)
    rgb = np.zeros((*steps.shape, 3), np.uint8)
    rgb[..., 0] = steps >> 8
    rgb[..., 1] = steps & 0xFF
    return encode_image(rgb, "PNG", provenance=record)


def change_view(change: ChangeMap, record: dict[str, Any]) -> dict[str, Any]:
    """``levels`` (:func:`levels_png`, with ``record`` and how to read it), ``percentile`` (the change at the
    :data:`PERCENTILE`-th percentile, levels) and ``scale`` (:func:`nice_scale` of it)."""
    percentile = float(np.percentile(change.levels, PERCENTILE))
    png = levels_png(
        change.levels,
        {
            **record,
            "operation": CHANGE_MAP_OPERATION,
            "change": change.figures.as_dict(),
            "encoding": f"change in 8-bit levels = (R * 256 + G) / {LEVEL_STEPS}",
        },
    )
    return {"levels": png, "percentile": round(percentile, 3), "scale": nice_scale(percentile)}
