"""The HTTP service: an ASGI app (FastAPI) over any session store.

``create_app(settings)`` builds the app; ``serve(settings)`` runs it under
uvicorn; ``python -m llmsession.server`` serves from LLMSESSION_* variables.
The contract is docs/http-api.md.
"""

from typing import TYPE_CHECKING

from llmsession.server.settings import ServerSettings

if TYPE_CHECKING:
    from llmsession.server.app import create_app
    from llmsession.server.runner import serve
else:
    # create_app and serve load FastAPI and uvicorn (half a second); the CLI needs
    # ServerSettings and the renderers for every command, those two only to serve.

    def __getattr__(name: str) -> object:
        if name == "create_app":
            from llmsession.server.app import create_app as value
        elif name == "serve":
            from llmsession.server.runner import serve as value
        else:
            raise AttributeError(f"module 'llmsession.server' has no attribute {name!r}")
        globals()[name] = value
        return value


__all__ = ["ServerSettings", "create_app", "serve"]
