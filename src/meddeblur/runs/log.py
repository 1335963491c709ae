"""The run log of a folder run: one JSON object per line and input, appended, whole lines only.

Planned with the outputs (:func:`check_run_log` is called before anything is written) and opened by the run
(:class:`RunLog`). An existing log must be a regular file holding such lines: anything else — another file, a
folder, a named pipe that would block the run forever — is refused, so that ``log`` never damages another file.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from meddeblur.errors import UserError

__all__ = ["LOG_FIELDS", "RunLog", "check_run_log"]

#: The fields of every run-log line, in order (``change`` and ``change_map`` are null unless an output was written;
#: ``restoration``, what was done with an image whose PSF was estimated, null for the other methods; ``source``, the
#: input as read — size, time, SHA-256 — and ``output_sha256``, the output file's digest, for written and done outputs).
LOG_FIELDS = (
    "input",
    "status",
    "output",
    "reason",
    "seconds",
    "model_id",
    "engine",
    "parameters",
    "change",
    "change_map",
    "restoration",
    "source",
    "output_sha256",
    "time",
)


class _Line(Protocol):
    """What is logged: an :class:`~meddeblur.runs.plan.Outcome` (named so, not imported: the plan checks the log)."""

    def as_dict(self) -> dict[str, Any]: ...


def _cannot(path: Path, why: str) -> UserError:
    return UserError(f"{path}: {why}; choose another `log` file", value=path)


def check_run_log(path: str | os.PathLike[str]) -> bool:
    """UserError unless ``path`` can take a run log: absent, empty, or a regular file of run-log lines.

    Returns True when its last line was cut (a copy or a disk that stopped half-way): the run's lines then start on a
    new line. Never opens a FIFO or device (which would block, or write somewhere else).
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise _cannot(path, "`log` is a broken symbolic link") from None
        return False
    except OSError as exc:
        raise _cannot(path, f"cannot open the run log ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{path}: `log` is a folder; give a file name such as run.jsonl", value=path)
    if not stat.S_ISREG(info.st_mode):
        raise _cannot(path, "`log` is not a regular file (a named pipe or device)")
    if info.st_size == 0:
        return False
    try:
        with open(path, "rb") as fh:
            first = fh.readline(1 << 16)
            fh.seek(-1, os.SEEK_END)
            cut = fh.read(1) != b"\n"
    except OSError as exc:
        raise _cannot(path, f"cannot read the run log ({exc.strerror or exc})") from None
    try:
        line = json.loads(first)
    except ValueError:
        line = None
    if not (isinstance(line, dict) and "input" in line and "status" in line):
        raise _cannot(path, "exists and is not a meddeblur run log")
    return cut


class RunLog:
    """The run log (:data:`LOG_FIELDS` per line), appended with one ``write`` per line, which keeps every line whole
    even when the run is killed. ``cut``: the log's last line was cut, and this run began on a new line. ``words``:
    how reasons name options (the CLI's flags rather than the API's parameters)."""

    def __init__(self, path: str | os.PathLike[str], record: dict[str, Any], words: Callable[[str], str] | None = None) -> None:
        self.path, self._words = Path(path), words
        self._fixed = {
            "model_id": record.get("model_id"),
            "engine": record.get("engine"),
            "parameters": record.get("parameters", {}),
        }
        self.cut = check_run_log(self.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:  # O_NONBLOCK: a FIFO swapped in since the check fails at once instead of waiting for a reader
            self._fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            raise _cannot(self.path, f"cannot open the run log ({exc.strerror or exc})") from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise _cannot(self.path, "`log` is not a regular file (a named pipe or device)")
        if self.cut:
            os.write(self._fd, b"\n")

    def write(self, outcome: _Line) -> None:
        entry = {**outcome.as_dict(), **self._fixed, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if self._words is not None and entry.get("reason"):
            entry["reason"] = self._words(entry["reason"])
        line = json.dumps({key: entry.get(key) for key in LOG_FIELDS}, ensure_ascii=False) + "\n"
        os.write(self._fd, line.encode("utf-8", "backslashreplace"))

    def close(self) -> None:
        os.close(self._fd)
