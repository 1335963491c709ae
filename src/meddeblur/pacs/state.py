"""The node's memory of what it has done: one SQLite row per source instance and configuration.

It is a cache, not the truth. The truth is the archive: a derived instance carries a UID computed from its source's UID
and the model and settings (:func:`meddeblur.pacs.derive.derived_uids`), so the node can always ask the archive
whether it exists, and storing it twice stores one instance. The cache spares that question for every instance
already seen, remembers the instances it skipped (with the reason, so that a bad one is tried once, not at every
poll) and the UIDs of the derived instances it made (so that they are never taken for new sources). SQLite commits
each row atomically, so a SIGKILL loses at most the row being written — and then the archive answers.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from meddeblur.errors import CorruptFile

__all__ = ["Record", "State", "DONE", "SKIPPED"]

DONE, SKIPPED = "done", "skipped"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    source_uid TEXT NOT NULL,
    settings TEXT NOT NULL,
    status TEXT NOT NULL,
    derived_uid TEXT,
    reason TEXT,
    time REAL NOT NULL,
    PRIMARY KEY (source_uid, settings)
);
CREATE INDEX IF NOT EXISTS derived ON instances (derived_uid);
"""


@dataclass(frozen=True)
class Record:
    """What became of one source instance under one configuration."""

    source_uid: str
    status: str
    derived_uid: str | None
    reason: str | None


class State:
    """The done/skipped records of one node, in the SQLite file ``path`` (created with its folder)."""

    def __init__(self, path: str | Path, settings: str) -> None:
        self.path, self.settings = Path(path), settings
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the listener's threads: sqlite3 serialises it with this lock.
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer; survives SIGKILL
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            raise CorruptFile(
                f"{self.path}: not a meddeblur pacs state file (damaged or something else); move it away, the "
                "node rebuilds what it needs from the archive",
                value=self.path,
            ) from None

    def get(self, source_uid: str) -> Record | None:
        with self._lock:
            row = self._db.execute(
                "SELECT status, derived_uid, reason FROM instances WHERE source_uid=? AND settings=?", (source_uid, self.settings)
            ).fetchone()
        return None if row is None else Record(source_uid, *row)

    def is_derived(self, uid: str) -> bool:
        """True if ``uid`` is an instance this node made (under any configuration)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM instances WHERE derived_uid=? LIMIT 1", (uid,)).fetchone() is not None

    def put(self, source_uid: str, status: str, derived_uid: str | None = None, reason: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                (source_uid, self.settings, status, derived_uid, reason, time.time()),
            )

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM instances WHERE settings=? GROUP BY status", (self.settings,))
            return dict(rows.fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()
