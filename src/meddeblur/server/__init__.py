"""``meddeblur serve``: a web page and a REST API for deblurring, on FastAPI + uvicorn.

``create_app`` builds the application (for tests and embedding), ``serve`` runs it.
"""

from meddeblur.errors import require

for _module in ("fastapi", "uvicorn", "fastapi_offline"):  # the [serve] extra: one line naming it, not an ImportError
    require(_module, "meddeblur serve")

from meddeblur.server.app import create_app  # noqa: E402
from meddeblur.server.run import serve  # noqa: E402
from meddeblur.server.settings import ServerSettings  # noqa: E402

__all__ = ["ServerSettings", "create_app", "serve"]
