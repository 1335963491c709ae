"""``meddeblur serve``: uvicorn in front of the app, in one or several worker processes."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import Any

from meddeblur.server.connections import GuardedH11Protocol
from meddeblur.server.security import default_allowed_hosts, is_loopback
from meddeblur.server.settings import SETTINGS_ENV, ServerSettings


def uvicorn_options(settings: ServerSettings, host: str, port: int, log_level: str = "info") -> dict[str, Any]:
    """What uvicorn runs with (tests start a server with the same options)."""
    # Connections beyond limit_concurrency get uvicorn's own 503: a guard against connection floods, far above the
    # pool's queue and the upload places. h11 (the pure-Python HTTP parser) reads request heads of up to 64 KiB, so
    # that a long URL reaches the app and is answered 414 rather than with a reset connection.
    # GuardedH11Protocol is uvicorn's h11 protocol plus a request-head deadline and a cap on connections per client
    # (meddeblur.server.connections): slow-header clients would otherwise hold connections open without limit.
    return {
        "host": host,
        "port": port,
        "log_level": log_level,
        "timeout_graceful_shutdown": 10,
        "http": GuardedH11Protocol,
        "h11_max_incomplete_event_size": 64 * 1024,
        "server_header": False,
        "limit_concurrency": max(64, 4 * settings.workers * (settings.threads + settings.queue) + settings.max_uploads),
    }


def network_settings(settings: ServerSettings, host: str) -> ServerSettings:
    """Settings for binding ``host``: loopback Host names by default on loopback; warnings on stderr for a
    network-reachable server without an API key or a Host allow-list."""
    if settings.allowed_hosts is None:
        settings = replace(settings, allowed_hosts=default_allowed_hosts(host))
    if not is_loopback(host):
        if settings.api_key() is None:
            print(
                f"meddeblur serve: WARNING: listening on {host}, reachable from the network, without an API key: anyone who "
                "can reach this port can send images; give --api-key-file FILE (or $MEDDEBLUR_API_KEY) and serve over "
                "TLS behind a reverse proxy (see SECURITY.md)",
                file=sys.stderr,
                flush=True,
            )
        if settings.allowed_hosts is None:
            print(
                "meddeblur serve: note: any Host header is accepted; --allowed-hosts NAME,... guards against DNS rebinding",
                file=sys.stderr,
                flush=True,
            )
    return settings


def check_port_free(host: str, port: int) -> None:
    """Raise a one-line UserError when ``host:port`` cannot be bound (in use, or an address this machine lacks), before
    the ready line is printed; uvicorn would otherwise print the line, then fail with exit code 3."""
    import errno
    import socket

    from meddeblur.errors import UserError

    if port == 0:  # any free port
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise UserError(
            f"host={host}: not an address of this machine ({error.strerror}); use 127.0.0.1, 0.0.0.0 or one of its addresses"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port left in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise UserError(
                    f"port={port}: {host}:{port} is already in use by another program; choose another port, "
                    f"e.g. port={port + 1}, or stop that program"
                ) from None
            raise UserError(
                f"host={host}, port={port}: cannot listen there ({error.strerror}); choose another address or port"
            ) from None


def _told(psf: Any) -> str:
    """The ready line's word on the default PSF (``serve --psf``), if any."""
    if psf is None:
        return ""
    return f", default PSF {psf.source} ({psf.kernel.shape[1]}x{psf.kernel.shape[0]} px)"


def serve(settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted. The model is loaded (and a bad ``--model`` refused) before the port is bound.

    ``workers == 1`` runs the app in this process; more start uvicorn worker processes,
    each loading the model once and running ``threads`` inferences at a time.
    """
    if not 0 <= port <= 65535:
        from meddeblur.errors import UserError

        raise UserError(f"port={port}: choose 0 to 65535")
    import torch
    import uvicorn

    from meddeblur.server.app import create_app
    from meddeblur.server.engine import load_served_model

    settings = network_settings(settings, host)
    torch.set_num_threads(settings.torch_threads())
    options = uvicorn_options(settings, host, port, log_level)
    if settings.workers == 1:
        app = create_app(settings)
        check_port_free(host, port)  # after the model (a bad one is the first thing to fix), before the ready line
        print(
            f"meddeblur serve: model {app.state.model.model_id} ({app.state.model.config.arch}){_told(app.state.default_psf)} on "
            f"http://{host}:{port}/ (API docs: /docs)",
            flush=True,
        )
        uvicorn.run(app, **options)
        return
    # Fail here, once, rather than in every worker: the default PSF, the model, and whether the one restores with the other.
    from meddeblur.server.choice import load_default_psf
    from meddeblur.server.engine import Methods, check_default_psf

    default_psf = load_default_psf(settings.psf) if settings.psf is not None else None
    served = load_served_model(settings.model, settings.device, settings.tile, settings.overlap)
    if default_psf is not None:
        check_default_psf(Methods(served, settings.estimator), default_psf)
    check_port_free(host, port)
    print(
        f"meddeblur serve: model {served.model_id} ({served.provenance.get('model')}){_told(default_psf)} on http://{host}:{port}/ with "
        f"{settings.workers} worker processes (API docs: /docs)",
        flush=True,
    )
    del served
    os.environ[SETTINGS_ENV] = settings.to_env()
    # uvicorn kills a worker that does not answer its health ping in time, 5 s by default: less than a
    # fresh worker needs to import torch on a busy machine, which made it restart workers forever.
    uvicorn.run(
        "meddeblur.server.app:app_from_env", factory=True, workers=settings.workers, timeout_worker_healthcheck=300, **options
    )
