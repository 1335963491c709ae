"""Planning a folder run: which inputs there are, where each output goes, and which are already done.

Nothing here deblurs or decodes pixels; :mod:`meddeblur.runs.jobs` does, on the :class:`Task` list made here.

* Inputs: files as named (decoded by content whatever their suffix), and the image files of folders (``.png .jpg .jpeg
  .tif .tiff .bmp .dcm``, hidden names left out), their sub-folders too with ``recursive``; every other file in a folder is
  reported as not an image, and a sub-folder not entered is reported too, so nothing is passed over unsaid.
* Outputs: ``out / <path below the input folder>`` (the input tree mirrored), same name, suffix changed by ``fmt``.
  Every file the run writes — outputs, BMP sidecars, change maps, PSF figures, the run log — is planned and checked
  together before anything is written (:func:`~meddeblur.io.ownership.check_planned`): never an input, never two
  files on one path, never a folder in the way, and an existing file only if meddeblur wrote it as the same kind of
  file (a PSF figure never replaces a deblurred image) or ``overwrite``.
* Resume: an input is skipped as done (unless ``redo``) only when that is proven: its output exists, carries a
  provenance record of the same model, engine and pixel-shaping parameters (the whole ``parameters`` dict, whatever
  its keys) *and of the very input file now at its path* (its SHA-256 digest: a replaced input, or an output copied
  from another one's, does not pass), and decodes whole (an output cut short does not pass); so must its change map
  (``NAME.change.png``) and PSF figure (``NAME.psf.png``) when asked for. An output carrying the run's recipe
  (:mod:`~meddeblur.runs.recipe`) is proven made with its model and options without making the record, which
  would load the model. An input that is itself a meddeblur output
  is skipped unless ``allow_outputs``.
* An input that cannot even be opened (a FIFO or device, a broken link, no permission) is refused here, before
  anything is written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from meddeblur.errors import InvalidOption, NotFound, UserError
from meddeblur.files import check_creatable_folder, remove_stale_temporaries, resolved_path, source_stamp
from meddeblur.inference.change_map import CHANGE_MAP_OPERATION, change_map_path
from meddeblur.io.decode import read_image
from meddeblur.io.formats import IMAGE_EXTENSIONS, OUTPUT_SUFFIXES, SUFFIX_FORMATS
from meddeblur.io.ownership import check_planned, read_provenance
from meddeblur.io.provenance import sidecar_path
from meddeblur.runs.explain import PSF_PLOT_OPERATION, psf_plot_path
from meddeblur.runs.log import check_run_log
from meddeblur.runs.recipe import RECIPE_KEY

__all__ = ["STATUSES", "Task", "Outcome", "Plan", "list_inputs", "plan_run", "matches", "target_record"]

#: What became of an input: an output written, nothing to do (done already, or itself an output), or refused (unreadable).
STATUSES = ("written", "skipped", "refused")
#: Record keys a resumed run must find equal in an existing output (``parameters``: the whole dict).
RESUME_KEYS = ("model_id", "engine", "parameters", "jpeg_quality")


@dataclass(frozen=True)
class Task:
    """One input to deblur into ``output``; ``note`` says why an existing output there is replaced."""

    input: Path
    output: Path
    note: str | None = None


@dataclass
class Outcome:
    """What became of one input: one line of the run log (``status`` one of :data:`STATUSES`).

    ``change``: the change figures (:class:`~meddeblur.inference.change_map.ChangeFigures` as a dict) of a written
    output; ``change_map``: the heat map written beside it, if asked for; ``restoration``: what was done with the
    image when its PSF was estimated (:meth:`~meddeblur.inference.deblurrer.Deblurrer.restore_rgb`), else None;
    ``source``: the input as it was read (:func:`~meddeblur.files.source_stamp`: size, time, SHA-256) and
    ``output_sha256`` the digest of the output file, for a written or done output.
    """

    input: str
    status: str
    output: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    change: dict[str, float] | None = None
    change_map: str | None = None
    restoration: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    output_sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    """A planned run: ``tasks`` to do, ``skipped`` and ``refused`` inputs (with their reasons), what is no input."""

    tasks: list[Task]
    skipped: list[Outcome] = field(default_factory=list)
    refused: list[Outcome] = field(default_factory=list)  # inputs that cannot even be opened (a FIFO, no permission, ...)
    not_images: list[Path] = field(default_factory=list)
    folders_not_entered: list[Path] = field(default_factory=list)
    #: The record outputs were compared with (made, or read from an output its recipe proved the run's own: the same
    #: model_id, engine and parameters); None when no output existed.
    record: dict[str, Any] | None = None

    @property
    def inputs(self) -> int:
        return len(self.tasks) + len(self.skipped) + len(self.refused)


def _walk(
    root: Path,
    folder: Path,
    recursive: bool,
    skip: Path | None,
    found: list[tuple[Path, Path]],
    not_images: list[Path],
    not_entered: list[Path],
) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except PermissionError:
        raise UserError(f"{folder}: permission denied listing the folder; make it readable") from None
    except OSError as exc:
        raise UserError(f"{folder}: cannot list the folder ({exc.strerror or exc}); check it") from None
    for entry in entries:
        if entry.name.startswith("."):  # hidden, which includes meddeblur's own ".name.tmp-*" files in progress
            continue
        path = Path(entry.path)
        try:
            is_folder = entry.is_dir()  # follows links: a link to a folder is a folder (entered only if not a link, below)
        except OSError:  # a symbolic link loop: listed, so that reading it says so
            is_folder = False
        if is_folder:
            if skip is not None and resolved_path(path) == skip:
                continue  # the run's own output folder inside the input tree
            if recursive and not entry.is_symlink():
                _walk(root, path, recursive, skip, found, not_images, not_entered)
            else:
                not_entered.append(path)
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            found.append((path, path.relative_to(root)))
        else:
            not_images.append(path)


def list_inputs(
    inputs: list[str | Path], recursive: bool = False, skip: str | Path | None = None
) -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Expand files and folders: ((file, its path below the folder named), ...), files that are not images, folders not entered.

    A file named twice (a folder and one of its files, say) is listed once. ``skip`` (the output folder) is never
    entered. A named path that does not exist is a :class:`~meddeblur.errors.NotFound`; anything else named like an
    image is listed (a broken link, a FIFO, ...) so that it is refused by name when read, not silently left out.
    """
    if not inputs:
        raise InvalidOption("inputs: give at least one image file or folder", value=inputs, option="inputs")
    skip_at = resolved_path(Path(skip)) if skip is not None else None
    found: list[tuple[Path, Path]] = []
    not_images: list[Path] = []
    not_entered: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            _walk(item, item, recursive, skip_at, found, not_images, not_entered)
        elif os.path.lexists(item):
            found.append((item, Path(item.name)))
        else:
            raise NotFound(f"{item}: no such file or folder; check the path", value=item)
    unique: dict[Path, tuple[Path, Path]] = {}
    for path, relative in found:
        unique.setdefault(resolved_path(path), (path, relative))
    return list(unique.values()), not_images, not_entered


def target_record(record: dict[str, Any], output: Path, jpeg_quality: int) -> dict[str, Any]:
    """The provenance record written into ``output`` (before its change figures): ``record`` plus the JPEG quality for a JPEG."""
    quality = _quality_written(output, jpeg_quality)
    return dict(record) if quality is None else {**record, "jpeg_quality": quality}


def _quality_written(output: Path, jpeg_quality: int) -> int | None:
    """The JPEG quality ``output``'s record names: ``jpeg_quality`` for a JPEG, none for other formats."""
    return jpeg_quality if SUFFIX_FORMATS.get(output.suffix.lower()) == "JPEG" else None


def matches(found: dict[str, Any] | None, expected: dict[str, Any]) -> bool:
    """True if the record ``found`` in an existing output says it was made as ``expected`` would make it (:data:`RESUME_KEYS`)."""
    return found is not None and found.get("operation") == "deblur" and all(found.get(k) == expected.get(k) for k in RESUME_KEYS)


def _provenance(path: Path) -> dict[str, Any] | None:
    try:
        return read_provenance(path)
    except Exception:  # unreadable or not an image: not an output of ours (decoding it says why, if it is an input)
        return None


def _target(relative: Path, out: Path, fmt: str | None) -> Path:
    name = relative.stem + OUTPUT_SUFFIXES[fmt] if fmt else relative.name
    return out / relative.parent / name


def _check_out(out: Path, fmt: str | None) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: output folder is a file; pass a folder to -o")
    if not out.exists() and os.path.lexists(out):
        raise UserError(f"{out}: output folder is a broken symbolic link; pass a folder to -o")
    check_creatable_folder(out, "`out`")
    if fmt is not None and fmt not in OUTPUT_SUFFIXES:
        raise InvalidOption(f"format={fmt}: choose one of {', '.join(OUTPUT_SUFFIXES)}", value=fmt, option="format")


def _planned(pairs: list[tuple[Path, Path]], change_map: bool, explain: bool) -> list[tuple[Path, str, str, str | None]]:
    """Every file the run writes per input — output, BMP sidecar, change map, PSF figure — with the kind of each."""
    planned: list[tuple[Path, str, str, str | None]] = []
    for source, target in pairs:
        planned.append((target, f"the output of {source}", "`out` folder", "deblur"))
        if target.suffix.lower() == ".bmp":
            planned.append((sidecar_path(target), f"the provenance sidecar of {source}'s output", "`out` folder", "deblur"))
        if change_map:
            planned.append((change_map_path(target), f"the change map of {source}", "`out` folder", CHANGE_MAP_OPERATION))
        if explain:
            planned.append((psf_plot_path(target), f"the PSF figure of {source}", "`out` folder", PSF_PLOT_OPERATION))
    return planned


def _check_log(log: Path, planned: list[tuple[Path, str, str, str | None]], inputs: list[Path]) -> None:
    """The run log is planned with the outputs: never an input, never where an output goes, never another file."""
    where = resolved_path(log)
    if where in {resolved_path(path) for path in inputs}:
        raise UserError(f"{log}: `log` is an input; inputs are never written to, choose another `log` file", value=log)
    clash = next((path for path, _, _, _ in planned if resolved_path(path) == where), None)
    if clash is not None:
        raise UserError(f"{log}: `log` is where this run writes {clash.name}; choose another `log` file", value=log)
    check_run_log(log)


def _proof(path: Path, operation: str, source: dict[str, Any]) -> str | None:
    """None if ``path`` is a whole file meddeblur made as ``operation`` from the input ``source``; else why not."""
    if not path.is_file():
        return "missing"
    record = _provenance(path)
    if record is None or record.get("operation", "deblur") != operation:
        return "not meddeblur's"
    if (record.get("source") or {}).get("sha256") != source["sha256"]:
        return (
            "made from another file than the input now there" if record.get("source") else "made before outputs named their input"
        )
    return None if _decodes_whole(path) else "damaged (it does not decode whole)"


def _decodes_whole(path: Path) -> bool:
    """True if the output at ``path`` is whole. A PNG's chunks are read to its end with their CRCs checked, without
    decoding the pixels (20× cheaper, and it also finds damage that still decodes); other formats are decoded."""
    try:
        with open(path, "rb") as fh:
            dicom = fh.read(132)[128:] == b"DICM"
        if dicom:
            read_image(path)
            return True
        with Image.open(path) as image:
            if image.format == "PNG":
                image.verify()
            else:
                image.load()
        return True
    except Exception:  # cut short or damaged: whatever the decoder says, it is not done
        return False


def _same_recipe(existing: dict[str, Any], recipe: str | None, target: Path, jpeg_quality: int) -> bool:
    """True if ``existing``, the record of a deblurred output at ``target``, carries the run's ``recipe`` and JPEG
    quality: made with the model and options the run uses (:mod:`~meddeblur.runs.recipe`), as :func:`matches` would say."""
    return (
        recipe is not None
        and existing.get("operation") == "deblur"
        and existing.get(RECIPE_KEY) == recipe
        and existing.get("jpeg_quality") == _quality_written(target, jpeg_quality)
    )


def _done(
    existing: dict[str, Any] | None,
    expected: dict[str, Any] | None,
    target: Path,
    source: dict[str, Any],
    change_map: bool,
    explain: bool,
) -> str | None:
    """None if the input is proven done (see the module docstring); else why it is (re)done. ``expected`` None: its
    record is already proven the run's own (:func:`_same_recipe`)."""
    if existing is None:
        return "no output yet"
    if expected is not None and not matches(existing, expected):
        return "made with another model or other options"
    files = [(target, "deblur")]
    files += [(change_map_path(target), CHANGE_MAP_OPERATION)] if change_map else []
    files += [(psf_plot_path(target), PSF_PLOT_OPERATION)] if explain and _drawn(existing) else []
    for path, operation in files:
        why = _proof(path, operation, source)
        if why is not None:
            return f"{path.name}: {why}"
    return None


def _drawn(record: dict[str, Any]) -> bool:
    """True if an output restored as ``record`` says has a PSF figure (not so for an image too small to estimate its blur)."""
    return bool((record.get("restoration") or {}).get("psf") or (record.get("parameters") or {}).get("psf"))


def plan_run(
    inputs: list[str | Path],
    out: str | Path,
    record: dict[str, Any] | Callable[[], dict[str, Any]],
    fmt: str | None = None,
    jpeg_quality: int = 95,
    recursive: bool = False,
    change_map: bool = False,
    overwrite: bool = False,
    resume: bool = True,
    allow_outputs: bool = False,
    explain: bool = False,
    log: str | os.PathLike[str] | None = None,
    recipe: str | None = None,
) -> Plan:
    """Plan deblurring ``inputs`` into ``out`` with the provenance ``record`` the run writes (see the module docstring).

    ``record`` may be a function that makes it (by loading the model): it is then called only for an existing output
    whose ``recipe`` (:mod:`~meddeblur.runs.recipe`, the run's own, if known) does not already prove it made as
    the run would make it. :attr:`Plan.record` is the record compared with, if one was.

    ``resume``: skip an input whose output exists with a matching record (:func:`matches`), and its change map too
    when ``change_map``, its PSF figure when ``explain`` (if it was restored with a PSF); otherwise every output is
    (re)written. ``allow_outputs``: deblur inputs that are meddeblur
    outputs themselves (skipped by default). ``log``: the run log the run will append to, planned with the outputs.
    Temporary files a killed earlier run left in the output folders are removed.
    """
    out = Path(out)
    _check_out(out, fmt)
    found, not_images, not_entered = list_inputs(inputs, recursive, skip=out)
    if not found:
        what = f" (only files that are not images: {', '.join(p.name for p in not_images[:5])})" if not_images else ""
        raise NotFound(
            f"{', '.join(map(str, inputs))}: no images (png/jpg/jpeg/tif/tiff/bmp/dcm) found{what}; check the folder",
            value=inputs,
        )
    pairs = [(source, _target(relative, out, fmt)) for source, relative in found]
    planned = _planned(pairs, change_map, explain)
    check_planned(planned, [source for source, _ in pairs], overwrite)
    if log is not None:
        _check_log(Path(log), planned, [source for source, _ in pairs])
    plan = Plan(tasks=[], not_images=not_images, folders_not_entered=not_entered)
    made: dict[str, Any] | None = None  # the record, once made (a function may load the model to make it)
    proven: dict[str, Any] | None = None  # the record of a finished output whose recipe proved it the run's own
    for folder in sorted({target.parent for _, target in pairs}):
        remove_stale_temporaries(folder)
    for source, target in pairs:
        started = time.perf_counter()
        own = None if allow_outputs else _provenance(source)
        if own is not None:
            plan.skipped.append(
                Outcome(
                    str(source),
                    "skipped",
                    None,
                    f"is a meddeblur output ({own.get('operation', 'deblur')}, "
                    f"model {own.get('model_id', '?')}); pass allow_outputs=True to deblur it again",
                    time.perf_counter() - started,
                )
            )
            continue
        try:  # found before anything is written: a FIFO, a device, a broken link, no permission
            source_now = source_stamp(source)
        except UserError as error:
            plan.refused.append(
                Outcome(str(source), "refused", None, " ".join(str(error).split()), time.perf_counter() - started)
            )
            continue
        existing = _provenance(target) if os.path.lexists(target) else None
        expected = None
        if existing is not None and not _same_recipe(existing, recipe, target, jpeg_quality):
            made = made or (record() if callable(record) else record)
            expected = target_record(made, target, jpeg_quality)
        elif existing is not None:
            proven = proven or existing
        why = _done(existing, expected, target, source_now, change_map, explain)
        if resume and why is None:
            assert existing is not None
            plan.skipped.append(
                Outcome(
                    str(source),
                    "skipped",
                    str(target),
                    "already done from this very input with this model and these options (pass redo=True to deblur it again)",
                    time.perf_counter() - started,
                    existing.get("change"),
                    str(change_map_path(target)) if change_map else None,
                    existing.get("restoration"),
                    existing.get("source"),
                    source_stamp(target)["sha256"],
                )
            )
            continue
        note = f"replaced an earlier meddeblur output ({why})" if existing is not None and why is not None else None
        plan.tasks.append(Task(source, target, note))
    plan.record = made or proven
    return plan
