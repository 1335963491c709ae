"""Connection limits uvicorn does not have: a deadline for request headers, and open connections per client address.

uvicorn closes an idle keep-alive connection, but a connection that sends its request head slowly (one header line
every few seconds: "slowloris") is kept open for as long as the client likes, and counts against
``limit_concurrency`` all along, so a few hundred of them make every good request a 503. :class:`GuardedH11Protocol`
(uvicorn's h11 protocol plus two rules) is what ``meddeblur serve`` runs:

* the whole request head (request line and headers) must arrive within ``header_timeout`` seconds of the connection
  opening, or of the previous answer on a kept-alive connection; otherwise the connection is answered 408 and closed.
  A request whose head is in (its body being received, or being processed) is not affected: the body has its own
  timeout (``--body-timeout``);
* at most ``max_per_client`` connections are open at once from one client address; one more is answered 503 and
  closed before it counts against anything.

Both are set per worker process by :func:`configure` (``create_app`` calls it with the server's settings).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections import Counter
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ConnectionLimits", "configure", "GuardedH11Protocol"]


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0  # seconds for a whole request head
    max_per_client: int = 32  # connections open at once from one client address


_limits = ConnectionLimits()
#: Open connections per client address, per running server (a test process may run several, one after another).
_open: weakref.WeakKeyDictionary[object, Counter[str]] = weakref.WeakKeyDictionary()


def configure(limits: ConnectionLimits) -> None:
    """The limits every connection accepted from now on in this process gets."""
    global _limits
    _limits = limits


def _refusal(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, written before (or instead of) any request being parsed."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the header deadline and the per-client cap of the module docstring."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # uvicorn's own signature
        super().connection_made(transport)
        self._limits = _limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._counted: str | None = None
        host = self.client[0] if self.client else None
        if host is not None:
            counts = _open.setdefault(self.server_state, Counter())
            if counts[host] >= self._limits.max_per_client:
                transport.write(
                    _refusal(
                        503,
                        "Service Unavailable",
                        f"too many connections from {host} at once (more than "
                        f"{self._limits.max_per_client}); close some, or reuse one",
                    )
                )
                transport.close()
                return
            counts[host] += 1
            self._counted = host
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self._limits.header_timeout, self._head_deadline)

    def _head_deadline(self) -> None:
        self._head_timer = None
        waiting_for_head = self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
        if waiting_for_head and not self.transport.is_closing():
            self.transport.write(
                _refusal(
                    408,
                    "Request Timeout",
                    f"request headers not received within {self._limits.header_timeout:g} s; send them at once",
                )
            )
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head on this kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None
        host = getattr(self, "_counted", None)
        if host is not None:
            counts = _open.get(self.server_state)
            if counts is not None:
                counts[host] -= 1
                if counts[host] <= 0:
                    del counts[host]
            self._counted = None
        super().connection_lost(exc)
