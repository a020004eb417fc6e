"""FastGateway: the gateway's routes served ahead of FastAPI and its middleware stack.

A gateway turn is the call clients make all the time, and the layers a request
goes through before its route cost a good share of the server's CPU: FastAPI's
own middleware (its error and telemetry wrappers, the exit stack, matching the
path against every route, solving the route's dependencies) and the app's (the
request metrics, the body limit), each wrapping ``send`` and ``receive``, and
each a coroutine that every resumption of the request passes through. The
gateway routes take the raw request and check each part themselves, so the app
(:class:`llmsession.server.openapi.ServiceAPI`) hands a plain gateway request (a
POST without a query string on a path in :data:`GATEWAY_PATHS`, or a POST on a
Gemini route, whose query string, ``?alt=sse`` or ``?key=``, its endpoint reads
itself) to :meth:`FastGateway.serve` first thing, which does for it in one place
what those layers did:

- the body limit (:class:`llmsession.server.body_limit.BodyLimits`): the same
  413 problem, before anything else looks at the request;
- the route's own endpoint function (for a Gemini route, with the ``target``
  path parameter cut from the path as the router's ``{target:path}`` does), its
  errors rendered with the same problem responses as the app's handlers;
- an error nothing handled (a bug) logged with its traceback and answered with
  the 500 problem when no answer was started, then raised on to the server, as
  Starlette's ServerErrorMiddleware does;
- the request metrics, labelled with the route's template (its path).

FastAPI still serves (and documents) the same routes for everything else, and
the app's lifespan, HEAD and 405 handling are FastAPI's as before.

Only a route whose endpoint takes the request alone, with no dependencies, is
served here: one that declared parameters or dependencies would need FastAPI
to resolve them, so it is left to FastAPI.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from fastapi.routing import iter_route_contexts
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmsession.server.body_limit import BodyLimits
from llmsession.server.metrics import ServerMetrics
from llmsession.server.problems import response_for, unexpected_error_response
from llmsession.server.routes_gateway import GATEWAY_PATHS
from llmsession.server.routes_gemini import GEMINI_PREFIXES

__all__ = ["FastGateway", "FastRoute"]

Endpoint = Callable[[Request], Awaitable[Response]]

# The Gemini routes' one path parameter, after their prefix: "{target:path}".
_TARGET: Final = "target"


@dataclass(frozen=True, slots=True)
class FastRoute:
    """A route served here: its endpoint, its template (the metrics' label) and, for a
    Gemini route, the prefix before its ``target`` path parameter."""

    endpoint: Endpoint
    template: str
    prefix: str | None = None


@dataclass(frozen=True, slots=True)
class _Table:
    exact: dict[str, FastRoute]
    #: The routes with a path parameter, each after its prefix.
    prefixed: tuple[tuple[str, FastRoute], ...]


class FastGateway:
    """Serves plain gateway requests with their routes' endpoints, and everything the
    app's middleware would have done for them.

    The table of endpoints is built on first use, when every route has been
    added (create_app makes this object before it includes its routers).
    """

    def __init__(self, routes: Starlette, *, metrics: ServerMetrics, limits: BodyLimits) -> None:
        self._routes = routes
        self._metrics = metrics
        self._limits = limits
        self._table: _Table | None = None

    def endpoints(self) -> dict[str, Endpoint]:
        """The route templates served here, and the endpoint function of each."""
        table = self._built()
        return {
            route.template: route.endpoint
            for route in (*table.exact.values(), *(route for _, route in table.prefixed))
        }

    def match(self, scope: Scope) -> FastRoute | None:
        """The route that serves this request here; None for a request the app serves."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        table = self._table
        if table is None:
            table = self._built()
        path: str = scope["path"]
        if not scope["query_string"]:
            route = table.exact.get(path)
            if route is not None:
                return route
        for prefix, route in table.prefixed:
            if path.startswith(prefix):
                return route
        return None

    async def serve(self, route: FastRoute, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request :meth:`match` gave ``route`` for."""
        path: str = scope["path"]
        if route.prefix is not None:
            scope["path_params"] = {_TARGET: path[len(route.prefix) :]}
        start = time.perf_counter()
        # What the metrics count when no answer is started: the client left, or a bug.
        status = 500
        answering = False
        try:
            body = await self._limits.read(scope, receive)
            if body is None:
                return  # the client went away before its body arrived: nobody to answer
            if isinstance(body, Response):
                response = body
            else:
                request = _ReadRequest(scope, receive, body)
                try:
                    response = await route.endpoint(request)
                except ClientDisconnect:
                    return
                except Exception as error:
                    response = response_for(error, request)
            status = response.status_code
            # Every response here sends its start first: once it is called, an error
            # comes after the start was sent, or from a connection that takes nothing.
            answering = True
            await response(scope, receive, send)
        except Exception as error:
            failure = unexpected_error_response("POST", path, error)
            if not answering:
                status = failure.status_code
                await failure(scope, receive, send)
            raise
        finally:
            self._metrics.observe_request(
                route.template, "POST", status, time.perf_counter() - start
            )

    def _built(self) -> _Table:
        if self._table is None:
            self._table = _plain_routes(self._routes)
        return self._table


class _ReadRequest(Request):
    """A request whose body was read already (by the body limit)."""

    def __init__(self, scope: Scope, receive: Receive, body: bytes) -> None:
        super().__init__(scope, receive)
        # Where Starlette keeps a body it has read: body(), json() and stream() give it.
        self._body = body


def _plain_routes(app: Starlette) -> _Table:
    """The POST routes served here whose endpoint takes only the request: the gateway
    paths, and the Gemini routes (a prefix, then ``{target:path}``)."""
    exact: dict[str, FastRoute] = {}
    prefixed: dict[str, tuple[str, FastRoute]] = {}
    gemini = {prefix + "{" + _TARGET + ":path}": prefix for prefix in GEMINI_PREFIXES}
    for context in iter_route_contexts(app.routes):
        path, methods = context.path, context.methods
        if (
            not methods
            or "POST" not in methods
            or (path not in GATEWAY_PATHS and path not in gemini)
        ):
            continue
        dependant: Any = getattr(context, "dependant", None)
        endpoint = context.endpoint
        if endpoint is None or not _takes_only_the_request(dependant):
            continue
        prefix = gemini.get(path)
        route = FastRoute(cast(Endpoint, endpoint), path, prefix)
        if prefix is None:
            exact.setdefault(path, route)
        else:
            prefixed.setdefault(path, (prefix, route))
    return _Table(exact, tuple(prefixed.values()))


def _takes_only_the_request(dependant: Any) -> bool:
    if dependant is None or dependant.request_param_name is None:
        return False
    declared = (
        dependant.path_params,
        dependant.query_params,
        dependant.header_params,
        dependant.cookie_params,
        dependant.body_params,
        dependant.dependencies,
    )
    others = (
        dependant.websocket_param_name,
        dependant.http_connection_param_name,
        dependant.response_param_name,
        dependant.background_tasks_param_name,
        dependant.security_scopes_param_name,
    )
    return not any(declared) and all(name is None for name in others)
