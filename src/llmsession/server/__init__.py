"""The HTTP service: an ASGI app (FastAPI) over any session store.

``create_app(settings)`` builds the app; ``serve(settings)`` runs it under
uvicorn; ``python -m llmsession.server`` serves from LLMSESSION_* variables.
The contract is docs/http-api.md.
"""

from llmsession.server.app import create_app
from llmsession.server.runner import serve
from llmsession.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
