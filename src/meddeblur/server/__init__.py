"""``meddeblur serve``: a web page and a REST API for deblurring, on FastAPI + uvicorn.

``create_app`` builds the application (for tests and embedding), ``serve`` runs it.
"""

from meddeblur.server.app import create_app
from meddeblur.server.run import serve
from meddeblur.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
