"""The work both ways in share: one received instance → at most one derived instance stored, and a record.

Order of a source instance's life, chosen so that a SIGKILL at any point neither loses nor doubles it:

1. the cache says done or skipped → nothing (a rerun does nothing);
2. the archive already holds its derived instance (same computed UID) → recorded done, nothing stored;
3. deblurred, stored, and only then recorded done. Killed between storing and recording, the next run finds it in
   the archive (2), or stores the same UID again, which the archive keeps once.

A bad instance (damaged pixels, a transfer syntax no decoder here reads, a class or modality not to touch) is
recorded as skipped with its reason and logged in one line; it never stops the node, and it is not tried again
under the same configuration. Failures of the archive itself (refused store, connection lost) are not the
instance's fault: they are raised, and the instance stays new, for the next poll or the sender's retry.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meddeblur.errors import UserError
from meddeblur.inference.engine import Engine
from meddeblur.pacs.config import Filters
from meddeblur.pacs.derive import Refused, derive, derived_uids, settings_key, source_identity
from meddeblur.pacs.state import DONE, SKIPPED, State

__all__ = ["Node", "Counts", "TRIES"]

log = logging.getLogger("meddeblur.pacs")

#: Refusals of one instance by the archive before it is recorded as skipped (see :meth:`Node.failed`).
TRIES = 3

#: store(derived dataset): put it in the archive; raises on failure (the instance then stays new).
Store = Callable[[Any], None]
#: exists(study uid, series uid, sop instance uid): True if the archive holds that instance.
Exists = Callable[[str, str, str], bool]


@dataclass
class Counts:
    """What a run did: derived instances stored, found already there, skipped, and seconds deblurring vs. the rest."""

    stored: int = 0
    found: int = 0
    skipped: int = 0
    known: int = 0
    deblur_seconds: float = 0.0
    store_seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.stored} derived instance(s) stored, {self.found} already in the archive, {self.skipped} skipped, "
            f"{self.known} seen before"
        )


class Node:
    """Deblurs what it is given into derived instances, once each; ``store`` and ``exists`` are the archive's."""

    def __init__(
        self, engine: Engine, state_path: str | Path, filters: Filters, store: Store, exists: Exists | None = None
    ) -> None:
        self.engine, self.filters, self.store, self.exists = engine, filters, store, exists
        self.key = settings_key(engine.provenance)
        self.state = State(state_path, self.key)
        self.counts = Counts()
        # Beside the state, not in /tmp: the instances on their way hold patient data; what a SIGKILL left is removed here.
        self._work = self.state.path.with_suffix(".work")
        shutil.rmtree(self._work, ignore_errors=True)
        self._failures: dict[str, int] = {}

    def is_ours(self, sop_instance_uid: str) -> bool:
        """True for a derived instance this node made: never a new source."""
        return self.state.is_derived(sop_instance_uid)

    def seen(self, sop_instance_uid: str) -> bool:
        """True if this source instance is done or skipped under this configuration (the cache; no archive question)."""
        return self.state.get(sop_instance_uid) is not None or self.is_ours(sop_instance_uid)

    def skip(self, uid: str, reason: str) -> str:
        """Record ``uid`` as skipped, with ``reason`` (one line), and log it."""
        self.state.put(uid, SKIPPED, reason=reason)
        self.counts.skipped += 1
        self.counts.reasons.append(reason)
        log.warning("skipped %s", reason)
        return SKIPPED

    def handle(self, dataset: Any) -> str:
        """Process one received dataset; returns ``done``, ``skipped`` or ``known`` (seen before: nothing done)."""
        try:
            study, series, uid, _, _ = source_identity(dataset)
        except UserError as error:
            log.warning("skipped %s", " ".join(str(error).split()))
            self.counts.skipped += 1
            self.counts.reasons.append(str(error))
            return SKIPPED  # no UID to record it under; it cannot come back as the same instance either
        if self.seen(uid):
            self.counts.known += 1
            return "known"
        new_series, new_uid = derived_uids(series, uid, self.key)
        if (
            self.exists is not None
            and self.filters.refusal(str(dataset.get("SOPClassUID", "")), str(dataset.get("Modality", ""))) is None
        ):
            started = time.perf_counter()
            there = self.exists(study, new_series, new_uid)
            self.counts.store_seconds += time.perf_counter() - started
            if there:
                self.state.put(uid, DONE, new_uid, "found in the archive")
                self.counts.found += 1
                log.info("%s: derived instance %s already in the archive; recorded", uid, new_uid)
                return DONE
        started = time.perf_counter()
        try:
            made = derive(dataset, self.engine, self.key, self.filters, self._work)
        except Refused as refused:
            return self.skip(uid, " ".join(str(refused).split()))
        except UserError as error:
            return self.skip(uid, f"{uid}: {' '.join(str(error).split())}")
        except Exception as error:  # pydicom or a decoder failing in a way of its own: the instance's fault, never the node's end
            return self.skip(uid, f"{uid}: cannot be processed ({type(error).__name__}: {' '.join(str(error).split())[:200]})")
        self.counts.deblur_seconds += time.perf_counter() - started
        started = time.perf_counter()
        self.store(made.dataset)
        self.counts.store_seconds += time.perf_counter() - started
        self.state.put(uid, DONE, made.derived_uid)
        self.counts.stored += 1
        log.info("%s: stored derived instance %s in series %s", uid, made.derived_uid, made.dataset.SeriesInstanceUID)
        return DONE

    def failed(self, uid: str, reason: str) -> bool:
        """The archive refused this one instance (not the login, not the connection): True once it has been given up.

        A refusal may be passing (a full disk, a restarting archive) or for good (a class the archive does not store):
        the instance is tried again at the next chance, and after :data:`TRIES` refusals recorded as skipped, so that
        it never holds up the others for ever.
        """
        self._failures[uid] = self._failures.get(uid, 0) + 1
        if self._failures[uid] < TRIES:
            log.warning("%s (try %d of %d; again later)", " ".join(reason.split()), self._failures[uid], TRIES)
            return False
        self.skip(uid, f"{uid}: given up after {TRIES} refusals: {' '.join(reason.split())}")
        return True

    def close(self) -> None:
        self.state.close()
        shutil.rmtree(self._work, ignore_errors=True)
