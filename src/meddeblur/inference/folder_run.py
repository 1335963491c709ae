"""Running a planned folder: progress bars, the JSONL run log, the stop-or-go-on rule, and the report at the end.

Where the work happens is an *executor*: :class:`InProcess` (the model loaded here), the local worker processes of
:mod:`meddeblur.inference.workers` or Ray actors (:mod:`meddeblur.inference.ray_run`). Each yields one
:class:`~meddeblur.inference.archive.Outcome` per task; this module records them the same way for all.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from meddeblur.errors import UserError
from meddeblur.inference.archive import Outcome, Plan, Task
from meddeblur.inference.jobs import Settings, deblur_tasks

__all__ = ["Executor", "InProcess", "RunLog", "Report", "execute", "LOG_FIELDS"]

#: The fields of every run-log line, in order (``change`` and ``change_map`` are null unless an output was written;
#: ``restoration``, what was done with an image whose PSF was estimated, null for the other methods).
LOG_FIELDS = ("input", "status", "output", "reason", "seconds", "model_id", "engine", "parameters", "change", "change_map",
              "restoration", "time")
#: Tile progress: on_tile(slot, task, tiles done, tiles in all); ``slot`` tells concurrent workers apart.
TileProgress = Callable[[int, Task, int, int], None]


class Executor(Protocol):
    """Where tasks are deblurred: ``run`` yields an outcome per task (in any order); ``close`` stops and frees it."""

    def run(self, tasks: list[Task], on_tile: TileProgress) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


class InProcess:
    """Deblur in this process with a loaded ``engine`` (a :class:`~meddeblur.inference.deblurrer.Deblurrer` or alike)."""

    def __init__(self, engine: Any, settings: Settings) -> None:
        self.engine, self.settings = engine, settings

    def run(self, tasks: list[Task], on_tile: TileProgress) -> Iterator[Outcome]:
        return deblur_tasks(self.engine, tasks, self.settings, lambda task, done, total: on_tile(0, task, done, total))

    def close(self) -> None:
        pass


class RunLog:
    """The run log: one JSON object per line and input (:data:`LOG_FIELDS`), appended, one ``write`` per line.

    Appending with a single write keeps every line whole even when the run is killed; a file that already holds
    something other than such lines is refused, so that ``log`` never damages another file.
    """

    def __init__(self, path: str | os.PathLike[str], record: dict[str, Any]) -> None:
        self.path = Path(path)
        self._fixed = {"model_id": record.get("model_id"), "engine": record.get("engine"), "parameters": record.get("parameters", {})}
        self._check()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as exc:
            raise UserError(f"{self.path}: cannot open the run log ({exc.strerror or exc}); choose another `log` file") from None

    def _check(self) -> None:
        if self.path.is_dir():
            raise UserError(f"{self.path}: `log` is a folder; give a file name such as run.jsonl")
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb") as fh:
            first = fh.readline(1 << 16)
        try:
            line = json.loads(first)
        except ValueError:
            line = None
        if not (isinstance(line, dict) and "input" in line and "status" in line):
            raise UserError(f"{self.path}: exists and is not a meddeblur run log; choose another `log` file")

    def write(self, outcome: Outcome) -> None:
        entry = {**outcome.as_dict(), **self._fixed, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        line = json.dumps({key: entry.get(key) for key in LOG_FIELDS}, ensure_ascii=False) + "\n"
        os.write(self._fd, line.encode("utf-8", "backslashreplace"))

    def close(self) -> None:
        os.close(self._fd)


@dataclass
class Report:
    """What a run did: an :class:`Outcome` per input (in the order they finished) and what was found but is no input."""

    outcomes: list[Outcome] = field(default_factory=list)
    not_images: list[Path] = field(default_factory=list)
    folders_not_entered: list[Path] = field(default_factory=list)
    log: Path | None = None

    def with_status(self, status: str) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status == status]

    @property
    def written(self) -> list[Path]:
        """The outputs written, in the order they were."""
        return [Path(outcome.output) for outcome in self.with_status("written") if outcome.output]

    @property
    def exit_code(self) -> int:
        """0 when every input was written or skipped, 1 when some were refused (and the run went on past them)."""
        return 1 if self.with_status("refused") else 0

    def summary(self, out: str | os.PathLike[str], most: int = 20) -> str:
        """Lines for a person: counts per status, each refused input with its reason, each image the blind network
        restored instead of an estimated PSF (with why), what was not an input."""
        written, skipped, refused = (self.with_status(status) for status in ("written", "skipped", "refused"))
        done = sum(1 for outcome in skipped if outcome.output)  # the others are meddeblur outputs themselves
        why = ", ".join(part for part in (f"{done} already done" if done else "",
                                          f"{len(skipped) - done} meddeblur output(s)" if len(skipped) > done else "") if part)
        lines = [f"{len(self.outcomes)} input(s): {len(written)} written to {out}, {len(skipped)} skipped"
                 + (f" ({why})" if why else "") + f", {len(refused)} refused"]
        lines += [f"refused: {outcome.reason}" for outcome in refused]
        fallbacks = [outcome for outcome in written if (outcome.restoration or {}).get("result") == "blind"]
        lines += [f"{outcome.input}: fell back to the blind network: {outcome.restoration['reason']}" for outcome in fallbacks[:most]]
        if len(fallbacks) > most:
            lines.append(f"and {len(fallbacks) - most} more image(s) restored by the blind network (see the log)")
        for label, paths in (("not images, left alone", self.not_images),
                             ("folders not entered (pass recursive=True; links to folders are never followed)", self.folders_not_entered)):
            if paths:
                more = f" and {len(paths) - most} more" if len(paths) > most else ""
                lines.append(f"{label}: {', '.join(map(str, paths[:most]))}{more}")
        if self.log is not None:
            lines.append(f"log: {self.log}")
        return "\n".join(lines)


class _Bars:
    """A bar over images (done/total, images/s, ETA) and, while a tiled image is deblurred, one over its tiles per worker."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        from tqdm import tqdm

        self._tqdm, self._enabled = tqdm, (None if enabled is None else not enabled)
        self.images = tqdm(total=total, desc="deblurring", unit="image", disable=self._enabled, file=sys.stderr, dynamic_ncols=True)
        self.tiles: dict[int, Any] = {}
        self.refused = 0

    def tile(self, slot: int, task: Task, done: int, total: int) -> None:
        if self.images.disable or total <= 1:
            return
        bar = self.tiles.get(slot)
        if bar is None or bar.total != total or done == 0:
            if bar is not None:
                bar.close()
            bar = self.tiles[slot] = self._tqdm(total=total, desc=f"  {task.input.name}", unit="tile", leave=False,
                                                position=1 + slot, file=sys.stderr, dynamic_ncols=True)
        bar.n = done
        bar.refresh()

    def image(self, outcome: Outcome) -> None:
        self.images.update(1)
        if outcome.status == "refused":
            self.refused += 1
            self.images.set_postfix(refused=self.refused)

    def close(self) -> None:
        for bar in self.tiles.values():
            bar.close()
        self.images.close()


def execute(plan: Plan, executor: Executor, record: dict[str, Any], log: str | os.PathLike[str] | None = None,
            skip_bad: bool = False, progress: bool | None = None) -> Report:
    """Run ``plan`` on ``executor``, logging every input (skipped ones too) to ``log`` if given.

    ``record`` is the engine's provenance, as the log names model and options.
    Without ``skip_bad`` the first refused input stops the run with its :class:`~meddeblur.errors.UserError` — before
    anything is written if it could not even be opened, else at it: the outputs finished by then are whole and a
    resumed run skips them. ``progress``: show bars (None: when stderr is a terminal). The executor is closed on the
    way out, whatever happens.
    """
    if plan.refused and not skip_bad:  # found while planning: the run stops before anything is written
        executor.close()
        raise UserError(f"{plan.refused[0].reason} (nothing was written; pass skip_bad=True to go on past inputs that cannot "
                        "be read)", value=plan.refused[0].input)
    report = Report(not_images=list(plan.not_images), folders_not_entered=list(plan.folders_not_entered),
                    log=Path(log) if log is not None else None)
    run_log = RunLog(log, record) if log is not None else None
    bars = _Bars(len(plan.tasks), progress)
    try:
        for outcome in [*plan.skipped, *plan.refused]:
            report.outcomes.append(outcome)
            if run_log is not None:
                run_log.write(outcome)
        for outcome in executor.run(plan.tasks, bars.tile):
            report.outcomes.append(outcome)
            if run_log is not None:
                run_log.write(outcome)
            bars.image(outcome)
            if outcome.status == "refused" and not skip_bad:
                raise UserError(f"{outcome.reason} (the run stopped here: outputs finished so far are whole and a rerun skips "
                                "them; pass skip_bad=True to go on past inputs that cannot be read)", value=outcome.input)
    finally:
        executor.close()
        bars.close()
        if run_log is not None:
            run_log.close()
    return report

