"""FastGateway: the gateway's routes served ahead of FastAPI and its middleware stack.

A gateway turn is the call clients make all the time, and the layers a request
goes through before its route cost a good share of the server's CPU: FastAPI's
own middleware (its error and telemetry wrappers, the exit stack, matching the
path against every route, solving the route's dependencies) and the app's (the
request metrics, the body limit), each wrapping ``send`` and ``receive``, and
each a coroutine that every resumption of the request passes through. The
gateway routes take the raw request and check each part themselves, so the app
(:class:`llmsession.server.openapi.ServiceAPI`) hands a plain gateway request (a
POST without a query string, on a path in :data:`GATEWAY_PATHS`) to
:meth:`FastGateway.serve` first thing, which does for it in one place what
those layers did:

- the body limit (:class:`llmsession.server.body_limit.BodyLimits`): the same
  413 problem, before anything else looks at the request;
- the route's own endpoint function, its errors rendered with the same problem
  responses as the app's handlers;
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
from typing import Any, cast

from fastapi.routing import iter_route_contexts
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llmsession.server.body_limit import BodyLimits
from llmsession.server.metrics import ServerMetrics
from llmsession.server.problems import response_for, unexpected_error_response
from llmsession.server.routes_gateway import GATEWAY_PATHS

__all__ = ["FastGateway"]

Endpoint = Callable[[Request], Awaitable[Response]]


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
        self._endpoints: dict[str, Endpoint] | None = None

    def endpoints(self) -> dict[str, Endpoint]:
        """The gateway paths served here, and the endpoint function of each."""
        if self._endpoints is None:
            self._endpoints = _plain_endpoints(self._routes)
        return self._endpoints

    def match(self, scope: Scope) -> Endpoint | None:
        """The endpoint that serves this request here; None for a request the app serves."""
        if scope["type"] == "http" and scope["method"] == "POST" and not scope["query_string"]:
            endpoints = self._endpoints
            if endpoints is None:
                endpoints = self.endpoints()
            return endpoints.get(scope["path"])
        return None

    async def serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request :meth:`match` gave ``endpoint`` for."""
        path: str = scope["path"]
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
                    response = await endpoint(request)
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
            self._metrics.observe_request(path, "POST", status, time.perf_counter() - start)


class _ReadRequest(Request):
    """A request whose body was read already (by the body limit)."""

    def __init__(self, scope: Scope, receive: Receive, body: bytes) -> None:
        super().__init__(scope, receive)
        # Where Starlette keeps a body it has read: body(), json() and stream() give it.
        self._body = body


def _plain_endpoints(app: Starlette) -> dict[str, Endpoint]:
    """The endpoint of each gateway path's POST route that takes only the request."""
    endpoints: dict[str, Endpoint] = {}
    for context in iter_route_contexts(app.routes):
        path, methods = context.path, context.methods
        if path not in GATEWAY_PATHS or not methods or "POST" not in methods:
            continue
        dependant: Any = getattr(context, "dependant", None)
        endpoint = context.endpoint
        if endpoint is not None and _takes_only_the_request(dependant):
            endpoints.setdefault(path, cast(Endpoint, endpoint))
    return endpoints


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
