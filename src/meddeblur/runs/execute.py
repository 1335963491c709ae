"""Running a planned folder: progress bars, the JSONL run log, the stop-or-go-on rule, and the report at the end.

Where the work happens is an *executor*: :class:`InProcess` (the model loaded here), the local worker processes of
:mod:`meddeblur.runs.workers` or Ray actors (:mod:`meddeblur.runs.ray_actors`). Each yields one
:class:`~meddeblur.runs.plan.Outcome` per task; this module records them the same way for all.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meddeblur.errors import UserError
from meddeblur.inference.engine import Engine
from meddeblur.runs.jobs import Settings, deblur_tasks
from meddeblur.runs.log import RunLog
from meddeblur.runs.plan import Outcome, Plan, Task

__all__ = ["Executor", "InProcess", "Report", "execute", "progress_line"]

#: Tile progress: on_tile(slot, task, tiles done, tiles in all); ``slot`` tells concurrent workers apart.
TileProgress = Callable[[int, Task, int, int], None]


class Executor(Protocol):
    """Where tasks are deblurred: ``run`` yields an outcome per task (in any order); ``close`` stops and frees it."""

    def run(self, tasks: list[Task], on_tile: TileProgress) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


class InProcess:
    """Deblur in this process with a loaded ``engine`` (a :class:`~meddeblur.inference.deblurrer.Deblurrer` or alike)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings

    def run(self, tasks: list[Task], on_tile: TileProgress) -> Iterator[Outcome]:
        return deblur_tasks(self.engine, tasks, self.settings, lambda task, done, total: on_tile(0, task, done, total))

    def close(self) -> None:
        pass


@dataclass
class Report:
    """What a run did: an :class:`Outcome` per input (in the order they finished) and what was found but is no input."""

    outcomes: list[Outcome] = field(default_factory=list)
    not_images: list[Path] = field(default_factory=list)
    folders_not_entered: list[Path] = field(default_factory=list)
    log: Path | None = None
    log_was_cut: bool = False
    planned: int | None = None  # inputs the run set out to do; more than the outcomes when it was stopped

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
        why = ", ".join(
            part
            for part in (
                f"{done} already done" if done else "",
                f"{len(skipped) - done} meddeblur output(s)" if len(skipped) > done else "",
            )
            if part
        )
        inputs = max(self.planned or 0, len(self.outcomes))
        lines = [
            f"{inputs} input(s): {len(written)} written to {out}, {len(skipped)} skipped"
            + (f" ({why})" if why else "")
            + f", {len(refused)} refused"
            + (f", {inputs - len(self.outcomes)} not reached" if inputs > len(self.outcomes) else "")
        ]
        lines += [f"refused: {outcome.reason}" for outcome in refused]
        fallbacks = [outcome for outcome in written if (outcome.restoration or {}).get("result") == "blind"]
        lines += [
            f"{outcome.input}: fell back to the blind network: {(outcome.restoration or {})['reason']}"
            for outcome in fallbacks[:most]
        ]
        if len(fallbacks) > most:
            lines.append(f"and {len(fallbacks) - most} more image(s) restored by the blind network (see the log)")
        for label, paths in (
            ("not images, left alone", self.not_images),
            ("folders not entered (pass recursive=True; links to folders are never followed)", self.folders_not_entered),
        ):
            if paths:
                more = f" and {len(paths) - most} more" if len(paths) > most else ""
                lines.append(f"{label}: {', '.join(map(str, paths[:most]))}{more}")
        if self.log is not None:
            lines.append(
                f"log: {self.log}"
                + (
                    " (its last line had been cut, by an interrupted copy or a full disk; this run's lines start on a new line)"
                    if self.log_was_cut
                    else ""
                )
            )
        return "\n".join(lines)


class _Bars:
    """Progress on stderr. On a terminal: a bar over images (done/total, images/s, ETA) and, while a tiled image is
    deblurred, one over its tiles per worker. Elsewhere (a cron job, a script's log): one line every ``every`` seconds
    — images done/total, rate, time left — so a long run is never silent until its end."""

    def __init__(self, total: int, enabled: bool | None, every: float = 30.0) -> None:
        from tqdm import tqdm

        self._tqdm, self.total, self.every = tqdm, total, every
        disabled = (not enabled) if enabled is not None else not _is_terminal(sys.stderr)
        self.images = tqdm(total=total, desc="deblurring", unit="image", disable=disabled, file=sys.stderr, dynamic_ncols=True)
        self.tiles: dict[int, Any] = {}
        self.refused = 0
        self._lines = enabled is None and disabled and total > 0
        self._done, self._began = 0, time.monotonic()
        self._last, self._printed = self._began, False

    def tile(self, slot: int, task: Task, done: int, total: int) -> None:
        if self.images.disable or total <= 1:
            return
        bar = self.tiles.get(slot)
        if bar is None or bar.total != total or done == 0:
            if bar is not None:
                bar.close()
            bar = self.tiles[slot] = self._tqdm(
                total=total,
                desc=f"  {task.input.name}",
                unit="tile",
                leave=False,
                position=1 + slot,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        bar.n = done
        bar.refresh()

    def image(self, outcome: Outcome) -> None:
        self.images.update(1)
        self._done += 1
        if outcome.status == "refused":
            self.refused += 1
            self.images.set_postfix(refused=self.refused)
        now = time.monotonic()
        # The last line only after others: a short run stays quiet, a long one's log ends with its completion.
        if self._lines and (now - self._last >= self.every or (self._done == self.total and self._printed)):
            self._last, self._printed = now, True
            sys.stderr.write(progress_line(self._done, self.total, now - self._began, self.refused) + "\n")
            sys.stderr.flush()

    def close(self) -> None:
        for bar in self.tiles.values():
            bar.close()
        self.images.close()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed
        return False


def progress_line(done: int, total: int, seconds: float, refused: int = 0) -> str:
    """One progress line for a log: ``deblurring: 12/200 images (6 %), 0.41 images/s, about 7 min 38 s left``."""
    rate = done / seconds if seconds > 0 else 0.0
    line = f"deblurring: {done}/{total} images ({100 * done // max(total, 1)} %), {rate:.2f} images/s"
    if 0 < done < total and rate > 0:
        left = round((total - done) / rate)
        line += f", about {left // 60} min {left % 60} s left" if left >= 60 else f", about {left} s left"
    return line + (f", {refused} refused" if refused else "")


def execute(
    plan: Plan,
    executor: Executor | None,
    record: dict[str, Any],
    log: str | os.PathLike[str] | None = None,
    skip_bad: bool = False,
    progress: bool | None = None,
    progress_every: float = 30.0,
    words: Callable[[str], str] | None = None,
) -> Report:
    """Run ``plan`` on ``executor``, logging every input (skipped ones too) to ``log`` if given.

    ``record`` is the engine's provenance, as the log names model and options. ``executor`` None: the plan has no tasks.
    Without ``skip_bad`` the first refused input stops the run with its :class:`~meddeblur.errors.UserError` — before
    anything is written if it could not even be opened, else at it: the outputs finished by then are whole and a
    resumed run skips them. ``progress``: show bars (None: bars when stderr is a terminal, else a line every
    ``progress_every`` seconds; False: nothing). ``words``: how the log's reasons name options (the CLI passes its
    flags: ``--redo``, not ``redo=True``). The executor is closed on the way out, whatever happens; a run stopped by
    Ctrl-C or a signal carries the report of what it did so far as the exception's ``report`` attribute.
    """
    if executor is None and plan.tasks:
        raise ValueError(f"execute: {len(plan.tasks)} task(s) and no executor to run them")
    if plan.refused and not skip_bad:  # found while planning: the run stops before anything is written
        if executor is not None:
            executor.close()
        raise UserError(
            f"{plan.refused[0].reason} (nothing was written; pass skip_bad=True to go on past inputs that cannot be read)",
            value=plan.refused[0].input,
        )
    report = Report(
        not_images=list(plan.not_images),
        folders_not_entered=list(plan.folders_not_entered),
        log=Path(log) if log is not None else None,
        planned=plan.inputs,
    )
    run_log = RunLog(log, record, words) if log is not None else None
    report.log_was_cut = run_log is not None and run_log.cut
    bars = _Bars(len(plan.tasks), progress, progress_every)
    try:
        for outcome in [*plan.skipped, *plan.refused]:
            report.outcomes.append(outcome)
            if run_log is not None:
                run_log.write(outcome)
        for outcome in executor.run(plan.tasks, bars.tile) if executor is not None else ():
            report.outcomes.append(outcome)
            if run_log is not None:
                run_log.write(outcome)
            bars.image(outcome)
            if outcome.status == "refused" and not skip_bad:
                raise UserError(
                    f"{outcome.reason} (the run stopped here: outputs finished so far are whole and a rerun skips "
                    "them; pass skip_bad=True to go on past inputs that cannot be read)",
                    value=outcome.input,
                )
    except BaseException as stop:
        if not isinstance(stop, Exception):  # Ctrl-C, SIGTERM: what was done so far goes with it, for the summary
            stop.report = report  # type: ignore[attr-defined]
        raise
    finally:
        if executor is not None:
            executor.close()
        bars.close()
        if run_log is not None:
            run_log.close()
    return report
