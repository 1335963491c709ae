"""Where the tiles of a large image go, and which tile sizes are allowed: the geometry of
:mod:`meddeblur.inference.tiling`, without torch, so that a folder run can check its options and count tiles before
any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from meddeblur.errors import InvalidOption

__all__ = ["Tiling", "tile_starts"]


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Starts of ``tile``-long windows covering ``[0, length)``, neighbours overlapping by ≥ ``overlap``.

    ``length``, ``tile`` multiples of ``multiple`` and ``tile - overlap ≥ multiple``; every start is a
    multiple of ``multiple`` and the starts are spread evenly (no thin last tile).
    """
    if length <= tile:
        return [0]
    span, max_step = (length - tile) // multiple, (tile - overlap) // multiple  # in units of `multiple`
    count = -(-span // max_step) + 1
    return [multiple * (i * span // (count - 1)) for i in range(count)]


@dataclass(frozen=True)
class Tiling:
    """How large images are processed: in ``tile``×``tile`` windows (0: whole, never tiled) overlapping by ``overlap`` px.

    Checked once here for the CLI, the server and :class:`~meddeblur.inference.deblurrer.Deblurrer` alike.

    >>> Tiling(tile=16)
    Traceback (most recent call last):
    ...
    meddeblur.errors.InvalidOption: tile=16, overlap=128: use a tile of at least 32 px (or 0: no tiling) and an overlap from 0 to below half the tile
    """

    tile: int = 1024
    overlap: int = 128

    def __post_init__(self) -> None:
        if self.tile < 0 or (self.tile and (self.tile < 32 or not 0 <= self.overlap < self.tile // 2)):
            raise InvalidOption(
                f"tile={self.tile}, overlap={self.overlap}: use a tile of at least 32 px (or 0: no tiling) and an "
                "overlap from 0 to below half the tile",
                value=(self.tile, self.overlap),
                option="tile",
            )
