"""What stands between the network and the application: one pure ASGI layer, outermost.

In order, for every HTTP request:

1. an over-long URL is answered 414 (before anything parses it);
2. a ``Host`` header not on the allow-list is answered 400 (DNS rebinding: a hostile page whose
   name resolves to this server's address cannot talk to it through the victim's browser);
3. a state-changing request (anything but GET, HEAD, OPTIONS) sent cross-site by a browser
   (``Sec-Fetch-Site: cross-site``/``same-site``, or an ``Origin`` that is neither this server nor
   a ``--cors-origin``) is answered 403;
4. with an API key configured, ``/v1/...`` without it is answered 401 (constant-time comparison);
   the page, ``/healthz`` and the API docs stay readable (they hold no patient data);

and every response, errors, images and ``/docs`` included, gets the security headers: a
Content-Security-Policy with ``frame-ancestors 'none'``, ``X-Frame-Options: DENY``,
``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, same-origin opener and
resource policies, and ``Cache-Control: no-store`` on everything under ``/v1/`` (deblurred images
are patient data; nothing may keep a copy).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Host names a server bound to a loopback address answers to by default.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: URLs (path + query) longer than this are answered 414; the page and API use a few dozen bytes.
MAX_URL_BYTES = 8192

#: The page and the API docs: everything from this server, inline script and style (one self-contained page), no framing.
HTML_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Everything else (JSON, images): nothing may run or load, even if a browser is talked into rendering it.
DATA_POLICY = "default-src 'none'; frame-ancestors 'none'; sandbox"
_HTML_PATHS = ("/", "/docs", "/redoc", "/docs/oauth2-redirect")
_KEYED_PREFIXES = ("/v1/",)  # what the API key protects
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def host_name(host: str) -> str:
    """The name part of a Host header value: ``[::1]:8000`` → ``::1``, ``Example.org.:80`` → ``example.org``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def default_allowed_hosts(bind: str) -> tuple[str, ...] | None:
    """Loopback names for a loopback bind address; None (any Host) otherwise, unless ``--allowed-hosts`` says."""
    return LOOPBACK_HOSTS if is_loopback(bind) else None


def is_loopback(bind: str) -> bool:
    import ipaddress

    if bind.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """The ASGI layer described in the module docstring. ``allowed_hosts`` None: any Host; ``api_key`` None: no key."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str] | None = None,
        api_key: str | None = None,
        cors_origins: Iterable[str] = (),
        max_url_bytes: int = MAX_URL_BYTES,
    ) -> None:
        self.app = app
        self.allowed = None if allowed_hosts is None else {host_name(h) for h in allowed_hosts}
        self.any_host = self.allowed is not None and "*" in self.allowed
        self.key = api_key.encode() if api_key else None
        self.cors = {o.rstrip("/").lower() for o in cors_origins}
        self.max_url = max_url_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._secured(scope, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            status, message, extra = refusal
            await _answer(send, status, message, extra)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        url = len(scope.get("raw_path") or scope["path"].encode()) + len(scope.get("query_string") or b"")
        if url > self.max_url:
            return 414, f"URL of {url:,} bytes is longer than the {self.max_url:,} this server reads", {}
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.allowed is not None and not self.any_host and host_name(host) not in self.allowed:
            return 400, "Host header not allowed here; use the server's own address (see --allowed-hosts)", {}
        if scope["method"] not in _SAFE_METHODS:
            origin = headers.get("origin")
            site = headers.get("sec-fetch-site", "").lower()
            listed = origin is not None and origin.rstrip("/").lower() in self.cors
            # The host part only: behind a TLS proxy the browser's https Origin meets a plain-http scope. A browser
            # that itself says same-origin (Sec- headers cannot be set by a page) is believed.
            own = origin is not None and origin.split("://", 1)[-1].rstrip("/").lower() == host.strip().lower()
            if origin is not None and not (listed or own or site == "same-origin"):
                return 403, "cross-origin request refused (Origin is not this server; see --cors-origin)", {}
            if site in ("cross-site", "same-site") and not listed:
                return 403, "cross-site request refused (Sec-Fetch-Site); open the page on this server itself", {}
        if self.key is not None and scope["path"].startswith(_KEYED_PREFIXES) and scope["method"] != "OPTIONS":
            given = headers.get("x-api-key", "")
            authorization = headers.get("authorization", "")
            if authorization[:7].lower() == "bearer ":
                given = authorization[7:].strip()
            if not hmac.compare_digest(given.encode(), self.key):
                return (
                    401,
                    "API key missing or wrong; send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                    {"WWW-Authenticate": 'Bearer realm="meddeblur"'},
                )
        return None

    def _secured(self, scope: Scope, send: Send) -> Send:
        html = scope["path"] in _HTML_PATHS
        data = scope["path"].startswith("/v1/")

        async def secured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = HTML_POLICY if html else DATA_POLICY
                headers["X-Frame-Options"] = "DENY"
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["Cross-Origin-Opener-Policy"] = "same-origin"
                headers["Cross-Origin-Resource-Policy"] = "same-origin"
                if data or message["status"] >= 400:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        return secured_send


async def _answer(send: Send, status: int, message: str, extra: dict[str, str]) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
