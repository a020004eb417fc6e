"""FastGateway: the gateway's routes served before FastAPI's router and middleware stack.

A gateway turn is the call clients make all the time, and FastAPI's share of it
(its exception and exit-stack middleware, matching the path against every route,
solving the route's dependencies) cost about as much CPU as the turn's own work
in the gateway. The gateway routes take the raw request and check each part
themselves, so nothing FastAPI does for them is needed: this raw ASGI
middleware hands a plain gateway request (a POST without a query string, on a
path in :data:`GATEWAY_PATHS`) to the route's own endpoint function, and
renders its errors with the same problem responses as the app's handlers.
FastAPI still serves (and documents) the same routes for everything else.

Only a route whose endpoint takes the request alone, with no dependencies, is
served here: one that declared parameters or dependencies would need FastAPI
to resolve them, so it is left to FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi.routing import iter_route_contexts
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from llmsession.server.metrics import ROUTE_TEMPLATE_KEY
from llmsession.server.problems import response_for
from llmsession.server.routes_gateway import GATEWAY_PATHS

__all__ = ["FastGateway"]

_Endpoint = Callable[[Request], Awaitable[Response]]


class FastGateway:
    """Raw ASGI middleware serving plain gateway requests with their routes' endpoints.

    The table of endpoints is built on first use, when every route has been
    added (create_app adds this middleware before it includes its routers).
    """

    def __init__(self, app: ASGIApp, routes: Starlette) -> None:
        self.app = app
        self._routes = routes
        self._endpoints: dict[str, _Endpoint] | None = None

    def endpoints(self) -> dict[str, _Endpoint]:
        """The gateway paths served here, and the endpoint function of each."""
        if self._endpoints is None:
            self._endpoints = _plain_endpoints(self._routes)
        return self._endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope["query_string"]:
            endpoints = self._endpoints
            if endpoints is None:
                endpoints = self.endpoints()
            endpoint = endpoints.get(scope["path"])
            if endpoint is not None:
                scope[ROUTE_TEMPLATE_KEY] = scope["path"]
                request = Request(scope, receive)
                try:
                    response = await endpoint(request)
                except ClientDisconnect:
                    return  # gone before its body arrived: nobody to answer
                except Exception as error:
                    response = response_for(error, request)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _plain_endpoints(app: Starlette) -> dict[str, _Endpoint]:
    """The endpoint of each gateway path's POST route that takes only the request."""
    endpoints: dict[str, _Endpoint] = {}
    for context in iter_route_contexts(app.routes):
        path, methods = context.path, context.methods
        if path not in GATEWAY_PATHS or not methods or "POST" not in methods:
            continue
        dependant: Any = getattr(context, "dependant", None)
        endpoint = context.endpoint
        if endpoint is not None and _takes_only_the_request(dependant):
            endpoints.setdefault(path, cast(_Endpoint, endpoint))
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
