"""``meddeblur serve``: uvicorn in front of the app, in one or several worker processes."""

from __future__ import annotations

import os

from meddeblur.server.settings import SETTINGS_ENV, ServerSettings


def serve(settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve until interrupted. The model is loaded (and a bad ``--model`` refused) before the port is bound.

    ``workers == 1`` runs the app in this process; more start uvicorn worker processes,
    each loading the model once and running ``threads`` inferences at a time.
    """
    import torch
    import uvicorn

    from meddeblur.server.app import create_app
    from meddeblur.server.engine import load_served_model

    settings.validate()
    if not 0 <= port <= 65535:
        from meddeblur.errors import UserError

        raise UserError(f"--port {port}: choose 0 to 65535")
    torch.set_num_threads(settings.torch_threads())
    # Connections beyond this get uvicorn's own 503: a guard against connection floods, far above the pool's queue.
    options = {"host": host, "port": port, "log_level": log_level, "timeout_graceful_shutdown": 10,
               "limit_concurrency": max(64, 4 * settings.workers * (settings.threads + settings.queue))}
    if settings.workers == 1:
        app = create_app(settings)
        print(f"meddeblur serve: model {app.state.model.model_id} ({app.state.model.config.arch}) on http://{host}:{port}/ "
              f"(API docs: /docs)", flush=True)
        uvicorn.run(app, **options)
        return
    served = load_served_model(settings.model, settings.device)  # fail here, once, rather than in every worker
    print(f"meddeblur serve: model {served.model_id} ({served.config.arch}) on http://{host}:{port}/ with "
          f"{settings.workers} worker processes (API docs: /docs)", flush=True)
    del served
    os.environ[SETTINGS_ENV] = settings.to_env()
    # uvicorn kills a worker that does not answer its health ping in time, 5 s by default: less than a
    # fresh worker needs to import torch on a busy machine, which made it restart workers forever.
    uvicorn.run("meddeblur.server.app:app_from_env", factory=True, workers=settings.workers, timeout_worker_healthcheck=300, **options)
