"""The DICOM networking way in: a C-STORE SCP that receives, a spool that survives crashes, a C-STORE SCU that forwards.

pynetdicom does the protocol. A received instance is written to the spool (atomically: a temporary name, flushed to
disk, renamed) *before* the sender is told "success", and removed only after its derived instance is stored at the
destination and recorded. So a SIGKILL at any moment either leaves the instance with its sender (no success was
sent: it sends again) or in the spool (the restarted node processes it); and the node's computed UIDs make a repeated
store of the same result one instance at the destination.

Every transfer syntax is accepted at association time, so that a compressed instance this installation cannot decode
is refused by the same code and with the same one-line reason as a file (recorded, logged), not by a negotiation
the sender reports as a network error. Associations are accepted from loopback and from the peers named with
``allow_from`` only; the listener binds 127.0.0.1 unless another address is named.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from meddeblur.errors import UserError
from meddeblur.pacs.config import AE, is_loopback
from meddeblur.pacs.node import Node

__all__ = ["DestinationError", "Forwarder", "Spool", "run_listener"]

log = logging.getLogger("meddeblur.pacs")

_SUCCESS_OR_WARNING = {0x0000, 0xB000, 0xB006, 0xB007}  # success; coercion / elements discarded are warnings, stored
_NOT_AUTHORISED = 0x0124


class DestinationError(UserError):
    """The destination refused an association or a C-STORE, or could not be reached.

    ``instance``: True when it refused one C-STORE (that instance is retried, then given up: :meth:`Node.failed`);
    False when there is no association at all (everything waits for it).
    """

    def __init__(self, message: str, value: object = None, instance: bool = False) -> None:
        super().__init__(message, value)
        self.instance = instance


class Forwarder:
    """A C-STORE SCU to ``destination``, one association kept open and re-opened when it drops."""

    def __init__(self, destination: AE, calling: str, sop_classes: tuple[str, ...]) -> None:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE as Entity

        self.destination = destination
        self._entity = Entity(ae_title=calling)
        for sop_class in sop_classes:  # the derived instance keeps its source's class, written Explicit VR Little Endian
            self._entity.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self._association: Any = None

    def _open(self) -> Any:
        if self._association is None or not self._association.is_established:
            d = self.destination
            self._association = self._entity.associate(d.host, d.port, ae_title=d.title)
            if not self._association.is_established:
                self._association = None
                raise DestinationError(
                    f"forward={d}: no association (refused or unreachable); check that it runs, its AE "
                    "title and port, and that it accepts this node's AE title",
                    value=str(d),
                )
        return self._association

    def check(self) -> None:
        """Open the association now: a wrong destination is one line at start, not a retry loop later."""
        self._open()

    def store(self, dataset: Any) -> None:
        association = self._open()
        try:
            status = association.send_c_store(dataset)
        except (ValueError, RuntimeError, AttributeError) as error:  # no accepted context for the class, association lost
            self.close()
            raise DestinationError(
                f"forward={self.destination}: cannot C-STORE {dataset.SOPInstanceUID} ({' '.join(str(error).split())[:160]}); "
                "check that the destination accepts this SOP class",
                value=str(self.destination),
                instance=True,
            ) from None
        code = getattr(status, "Status", None)
        if code not in _SUCCESS_OR_WARNING:
            self.close()
            shown = "no answer" if code is None else f"status 0x{code:04X}"
            raise DestinationError(
                f"forward={self.destination}: C-STORE of {dataset.SOPInstanceUID} failed ({shown}); check the "
                "destination's log and that it accepts this SOP class",
                value=str(self.destination),
                instance=True,
            )

    def close(self) -> None:
        if self._association is not None and self._association.is_established:
            self._association.release()
        self._association = None


class Spool:
    """Received instances on disk, oldest first, each a whole file or none."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.part"):  # a receipt a SIGKILL interrupted: its sender got no success and sends again
            stale.unlink(missing_ok=True)

    def put(self, data: bytes, uid: str) -> Path:
        name = f"{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}"
        part, final = self.folder / f"{name}.part", self.folder / f"{name}.dcm"
        with open(part, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the sender hears "success"
        os.replace(part, final)
        return final

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))


def _handler(spool: Spool, allowed: set[str], wake: threading.Event) -> Any:
    def on_store(event: Any) -> int:
        peer = event.assoc.requestor.address
        if not (is_loopback(peer) or peer in allowed):
            log.warning("refused a C-STORE from %s: not loopback nor an allowed peer (allow_from)", peer)
            return _NOT_AUTHORISED
        data = event.encoded_dataset()  # the bytes as received, not decoded: a damaged instance is the node's to record
        spool.put(data, str(event.request.AffectedSOPInstanceUID))
        wake.set()
        return 0x0000

    return on_store


def _drain(spool: Spool, node: Node, retry: float, stop: threading.Event) -> None:
    import pydicom

    for path in spool.pending():
        if stop.is_set():
            return
        try:
            dataset = pydicom.dcmread(path)
        except Exception as error:
            log.warning("skipped %s: not a readable DICOM instance (%s); removed from the spool", path.name, type(error).__name__)
            node.counts.skipped += 1
            path.unlink(missing_ok=True)
            continue
        try:
            node.handle(dataset)
        except DestinationError as error:  # the destination's fault: kept in the spool, tried again
            if error.instance and node.failed(str(dataset.get("SOPInstanceUID", path.name)), str(error)):
                path.unlink(missing_ok=True)  # given up, recorded: the queue goes on
                continue
            if not error.instance:
                log.warning("%s; trying again in %g s", " ".join(str(error).split()), retry)
            stop.wait(retry)
            return
        path.unlink(missing_ok=True)


def run_listener(
    listen: AE, node: Node, allowed: set[str], spool_folder: Path, stop: threading.Event, retry: float = 10.0
) -> None:
    """Receive on ``listen`` and deblur what arrives (through ``node``, which forwards) until ``stop`` is set."""
    from pydicom.uid import DermoscopicPhotographyImageStorage
    from pynetdicom import AE as Entity
    from pynetdicom import ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt

    spool, wake = Spool(spool_folder), threading.Event()
    entity = Entity(ae_title=listen.title)
    entity.require_called_aet = True  # "images sent to its AE title": another title is rejected at association
    # Senders cut an instance into P-DATA fragments of the size the listener offers; pynetdicom's 16 kB default makes
    # a 0.5 MB photograph some 30 trips through Python's PDU handling. 1 MiB, as large archives offer.
    entity.maximum_pdu_size = 1 << 20
    classes = {context.abstract_syntax for context in StoragePresentationContexts if context.abstract_syntax} | {
        DermoscopicPhotographyImageStorage
    }
    for sop_class in sorted(classes):  # every storage class, so that one not to touch is recorded, not refused unseen
        entity.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    try:
        server = entity.start_server(
            (listen.host, listen.port), block=False, evt_handlers=[(evt.EVT_C_STORE, _handler(spool, allowed, wake))]
        )
    except OSError as error:
        raise DestinationError(
            f"listen={listen.title}@{listen.host}:{listen.port}: cannot listen there ({error.strerror or error}); "
            "choose a free port or an address of this machine",
            value=str(listen),
        ) from None
    assert server is not None  # block=False returns the server
    log.info("listening as %s on %s:%d", listen.title, listen.host, listen.port)
    try:
        while not stop.is_set():
            _drain(spool, node, retry, stop)
            wake.wait(1.0)
            wake.clear()
    finally:
        server.shutdown()
