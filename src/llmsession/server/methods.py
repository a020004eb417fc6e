"""Which HTTP methods a path serves: the ``Allow`` list of a 405, and HEAD wherever GET is.

FastAPI's router answers a 405 with the methods of the first route whose path
matched, so a path two routes serve (``GET`` and ``POST /v1/sessions``) named
only one of them; and its routes do not take HEAD. Both are answered here, from
one table of the app's routes: :class:`RouteMethods` says what a path serves,
:class:`HeadAsGet` serves HEAD as GET without the body. HEAD is not declared on
the routes, so the OpenAPI schema keeps one operation per declared method.
"""

from __future__ import annotations

import re

from fastapi.routing import iter_route_contexts
from starlette.applications import Starlette
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadAsGet", "RouteMethods"]

_Table = tuple[tuple[re.Pattern[str], frozenset[str]], ...]


class RouteMethods:
    """The methods each path of an app serves, from the app's routes.

    The table is built on first use, when every route has been added: create_app
    makes this object before it includes its routers.
    """

    def __init__(self, app: Starlette) -> None:
        self._app = app
        self._table: _Table | None = None

    def allowed(self, path: str) -> list[str]:
        """Every method some route serves at ``path``, HEAD wherever GET; [] for an unknown path."""
        served: set[str] = set()
        for pattern, methods in self._routes():
            if pattern.match(path):
                served |= methods
        if "GET" in served:
            served.add("HEAD")
        return sorted(served)

    def _routes(self) -> _Table:
        if self._table is None:
            self._table = tuple(
                (compile_path(context.path)[0], frozenset(context.methods))
                for context in iter_route_contexts(self._app.routes)
                if context.path is not None and context.methods
            )
        return self._table


class HeadAsGet:
    """Pure ASGI middleware serving HEAD as GET, without the body, on paths that serve GET.

    The answer has GET's status and headers (Content-Length included, as RFC 9110
    allows). A HEAD on a path without GET goes on unchanged, for the router's 404
    or 405; no HEAD answer carries a body, whichever server runs the app.
    """

    def __init__(self, app: ASGIApp, methods: RouteMethods) -> None:
        self.app = app
        self.methods = methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        if "GET" not in self.methods.allowed(scope["path"]):
            await self.app(scope, receive, send_without_body)
            return
        # A copy: the server reads its own scope's method (HEAD) to frame the answer.
        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, send_without_body)
        finally:
            # What the router noted (the route matched, its parameters) is for the
            # middleware outside as well: the request metrics label by route.
            scope.update((key, value) for key, value in as_get.items() if key != "method")
