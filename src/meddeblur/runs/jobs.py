"""Deblurring planned tasks: each input decoded once, deblurred, its change measured, its output written atomically.

The same code runs in the calling process, in each local worker process and in each Ray actor, so every path gives
the same pixels. The model is an :class:`~meddeblur.inference.engine.Engine`: a
:class:`~meddeblur.inference.deblurrer.Deblurrer`, or a bare network wrapped by :func:`meddeblur.runs.files.deblur_files`;
its ``restore_rgb`` also says what was done with each image (the ``restoration`` record of an estimated PSF).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from meddeblur.errors import InvalidOption, UserError
from meddeblur.files import file_identity, source_stamp
from meddeblur.inference.change_map import CHANGE_MAP_OPERATION, change_map_path, change_of
from meddeblur.inference.engine import Engine
from meddeblur.inference.tile_grid import tile_starts
from meddeblur.io.decode import read_image
from meddeblur.io.encode import check_jpeg_quality, write_image
from meddeblur.io.formats import SUFFIX_FORMATS, LoadedImage
from meddeblur.runs.explain import write_psf_plot
from meddeblur.runs.plan import Outcome, Task, target_record

__all__ = ["GPU_BATCH", "Settings", "tile_count", "deblur_tasks"]

#: Images of one size deblurred together on a CUDA device (written for GPUs; not measured on one).
GPU_BATCH = 8
#: on_tile(task, tiles done, tiles in all): called before each forward pass over a tiled image.
TileCallback = Callable[[Task, int, int], None]


@dataclass(frozen=True)
class Settings:
    """How each input becomes an output, besides the model.

    ``batch``: images of one size deblurred in one forward pass on a GPU. ``explain``: draw the PSF each image was
    restored with to ``NAME.psf.png`` (:mod:`meddeblur.runs.explain`). What shapes the pixels besides is the
    engine's (its model, tiling and, say, a known PSF), and its ``provenance`` says so.
    """

    jpeg_quality: int = 95
    change_map: bool = False
    batch: int = 1
    explain: bool = False

    def __post_init__(self) -> None:
        check_jpeg_quality(self.jpeg_quality)
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise InvalidOption(
                f"batch={self.batch}: give a whole number of images, at least 1", value=self.batch, option="batch"
            )


def tile_count(engine: Engine, height: int, width: int) -> int:
    """How many forward passes ``engine`` makes over an image of ``height`` × ``width`` (1 unless it is tiled)."""
    tile, multiple = engine.tile, engine.size_multiple
    if not tile or max(height, width) <= tile:
        return 1
    tile = -(-tile // multiple) * multiple
    sides = [-(-side // multiple) * multiple for side in (height, width)]
    return len(tile_starts(sides[0], min(tile, sides[0]), engine.overlap, multiple)) * len(
        tile_starts(sides[1], min(tile, sides[1]), engine.overlap, multiple)
    )


def _reason(note: str | None, restoration: dict[str, Any]) -> str | None:
    """The log's reason for a written output: the task's note, and a fallback to the blind network said as such."""
    fallback = f"fell back to the blind network: {restoration['reason']}" if restoration.get("result") == "blind" else None
    return "; ".join(part for part in (note, fallback) if part) or None


def _write(
    task: Task,
    image: LoadedImage,
    source: dict[str, Any],
    restored: np.ndarray,
    restoration: dict[str, Any],
    engine: Engine,
    record: dict[str, Any],
    settings: Settings,
    started: float,
) -> Outcome:
    target = task.output
    out_format = SUFFIX_FORMATS.get(target.suffix.lower(), image.format)
    bit_depth = image.bit_depth if out_format in ("PNG", "TIFF", "DICOM") else 8
    change = change_of(image, restored, bit_depth)
    figures = change.figures.as_dict()
    # The input named (its file name only: folders often carry a patient's name), proven by its digest; and when.
    written = {
        **target_record(record, target, settings.jpeg_quality),
        "change": figures,
        "source": {"name": task.input.name, **source},
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if restoration:  # what was done with this image (an estimated PSF): provenance says it, per image
        written["restoration"] = restoration
    if out_format == "DICOM":
        from meddeblur.io.dicom import write_dicom

        write_dicom(target, restored, image.source, written)
    else:
        write_image(
            target,
            restored,
            alpha=image.alpha if out_format != "JPEG" else None,
            grayscale=image.grayscale,
            bit_depth=bit_depth,
            format=out_format,
            jpeg_quality=settings.jpeg_quality,
            provenance=written,
            metadata_from=image,
        )
    heat_map = None
    if settings.change_map:
        heat_map = write_image(
            change_map_path(target),
            change.image().astype(np.float32) / 255,
            format="PNG",
            provenance={**written, "operation": CHANGE_MAP_OPERATION},
        )
    if settings.explain:
        write_psf_plot(target, engine, restoration, written)
    return Outcome(
        str(task.input),
        "written",
        str(target),
        _reason(task.note, restoration),
        round(time.perf_counter() - started, 4),
        figures,
        None if heat_map is None else str(heat_map),
        restoration or None,
        written["source"],
        source_stamp(target)["sha256"],
    )


def _decode(task: Task) -> tuple[LoadedImage, dict[str, Any]]:
    """The input decoded, and what it was when read (:func:`~meddeblur.files.source_stamp`), which its output records."""
    before = file_identity(task.input)
    source = source_stamp(task.input)
    image = read_image(task.input)
    if file_identity(task.input) != before:
        raise UserError(
            f"{task.input}: changed while being read (another program is writing it); deblur it again once it is complete",
            value=task.input,
        )
    if SUFFIX_FORMATS.get(task.output.suffix.lower()) == "DICOM" and image.format != "DICOM":
        raise UserError(
            f"{task.input}: named .dcm but holds a {image.format} image (a DICOM is written only from a DICOM); "
            "rename it or pass `format`",
            value=task.input,
        )
    return image, source


def _deblur_group(
    engine: Engine, group: list[tuple[Task, LoadedImage, dict[str, Any], float]], settings: Settings, on_tile: TileCallback | None
) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """(Restored (H, W, 3) float32, restoration record) per image; images of one size below the tile size go through
    the network together (never with an estimated PSF: :func:`deblur_tasks` keeps those groups to one image)."""
    height, width = group[0][1].rgb.shape[:2]
    if len(group) > 1 and tile_count(engine, height, width) == 1:
        import torch

        batch = torch.from_numpy(np.stack([image.rgb.transpose(2, 0, 1) for _, image, _, _ in group]))
        return [(restored, {}) for restored in engine(batch).permute(0, 2, 3, 1).numpy()]
    restored = []
    for task, image, _, _ in group:
        total, done = tile_count(engine, *image.rgb.shape[:2]), [0]

        def before_tile(task: Task = task, total: int = total, done: list[int] = done) -> None:
            if on_tile is not None:
                on_tile(task, done[0], total)
            done[0] += 1

        restored.append(engine.restore_rgb(image.rgb, before_tile=before_tile))
    return restored


def _finish(
    engine: Engine,
    group: list[tuple[Task, LoadedImage, dict[str, Any], float]],
    record: dict[str, Any],
    settings: Settings,
    on_tile: TileCallback | None,
) -> Iterator[Outcome]:
    for (task, image, source, started), (restored, restoration) in zip(group, _deblur_group(engine, group, settings, on_tile)):
        yield _write(task, image, source, restored, restoration, engine, record, settings, started)


def deblur_tasks(
    engine: Engine, tasks: Iterable[Task], settings: Settings, on_tile: TileCallback | None = None
) -> Iterator[Outcome]:
    """Deblur each task's input into its output, yielding an :class:`Outcome` per task as it finishes.

    An input that cannot be read (a :class:`~meddeblur.errors.UserError` from decoding) gives a ``refused`` outcome
    naming why; errors writing (a full disk, say) are raised. With ``settings.batch`` > 1 on a CUDA device, decoded
    images of one size wait until ``batch`` of them go through the network in one forward pass (at most twice that
    many images wait at a time; a known PSF, ``engine.psf``, is applied image by image, and so is a PSF estimated
    from each image, ``engine.estimates_psf``: its ``restoration`` record goes into the output's provenance and the
    outcome). ``settings.explain`` also draws each image's PSF beside its output.
    """
    record = engine.provenance
    one_by_one = engine.psf is not None or engine.estimates_psf
    together = settings.batch if engine.device.type == "cuda" and not one_by_one else 1
    waiting: dict[tuple[int, ...], list[tuple[Task, LoadedImage, dict[str, Any], float]]] = {}  # by image shape, oldest first
    for task in tasks:
        started = time.perf_counter()
        try:
            image, source = _decode(task)
        except UserError as error:
            yield Outcome(str(task.input), "refused", None, " ".join(str(error).split()), round(time.perf_counter() - started, 4))
            continue
        group = waiting.setdefault(image.rgb.shape, [])
        group.append((task, image, source, started))
        if len(group) >= together:
            yield from _finish(engine, waiting.pop(image.rgb.shape), record, settings, on_tile)
        elif sum(map(len, waiting.values())) > 2 * together:  # many sizes: the oldest group goes as it is
            yield from _finish(engine, waiting.pop(next(iter(waiting))), record, settings, on_tile)
    for group in waiting.values():
        yield from _finish(engine, group, record, settings, on_tile)
