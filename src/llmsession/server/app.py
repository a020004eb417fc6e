"""create_app: the ASGI application, with its store, sweeper and metrics tied to its lifespan."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from llmsession.clock import Clock, system_clock
from llmsession.gateway.config import GatewayConfig, load_config
from llmsession.gateway.forwarding import Gateway
from llmsession.gateway.transport import AiohttpUpstream, Upstream
from llmsession.server.body_limit import MAX_BODY_BYTES, BodyLimit, BodyLimits
from llmsession.server.context import AppContext
from llmsession.server.fast_gateway import FastGateway
from llmsession.server.methods import HeadAsGet, RouteMethods
from llmsession.server.metrics import RequestMetricsMiddleware, ServerMetrics
from llmsession.server.openapi import ServiceAPI
from llmsession.server.problems import install_problem_handlers
from llmsession.server.rounds import FastRounds
from llmsession.server.routes_admin import admin_routes
from llmsession.server.routes_gateway import GATEWAY_PATHS, gateway_routes
from llmsession.server.routes_gemini import GEMINI_PREFIXES, gemini_routes
from llmsession.server.routes_ops import ops_routes
from llmsession.server.routes_sessions import session_routes
from llmsession.server.schemas import RecordRoundIn
from llmsession.server.settings import ServerSettings
from llmsession.server.sweeper import Sweeper
from llmsession.server.ui import install_offline_docs, static_routes, ui_routes
from llmsession.store import open_store
from llmsession.store.base import SessionStore

__all__ = ["create_app"]

_DESCRIPTION = """Stateful LLM sessions with exact accounting of rounds, delta tokens and
tokens saved. Every `/v1` call carries `Authorization: Bearer <key>`: a tenant's API key
for sessions, the admin key for `/v1/admin`. Errors are `application/problem+json`.
The dashboard is at [/ui](/ui)."""


def create_app(
    settings: ServerSettings,
    *,
    store: SessionStore | None = None,
    clock: Clock = system_clock,
    fast_rounds: bool = True,
    gateway_config: GatewayConfig | None = None,
    upstream: Upstream | None = None,
) -> ServiceAPI:
    """The HTTP service as an ASGI app.

    On startup the lifespan opens the store at ``settings.store_url`` with
    ``clock`` (unless ``store`` is given, with its own clock; a given store is not
    closed by the app) and starts the sweeper; on shutdown it stops the sweeper,
    then closes the store it opened. Every time the service writes comes from
    the store's clock, never from a request.
    ``fast_rounds`` False sends round and gateway requests through FastAPI's
    router too (the same handlers; see :mod:`llmsession.server.rounds` and
    :mod:`llmsession.server.fast_gateway`).

    The gateway runs when providers are configured: ``gateway_config``, else the
    file ``settings.gateway_config`` names (read now, so a bad file fails before
    the server starts; ConfigError). ``upstream`` replaces the pooled HTTP client
    that reaches the providers (tests).
    """
    context = AppContext(settings=settings, metrics=ServerMetrics())
    if gateway_config is None and settings.gateway_config is not None:
        gateway_config = load_config(settings.gateway_config)
    if gateway_config is not None:
        context.prices = gateway_config.prices

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        opened = store is None
        active = (
            await open_store(
                settings.store_url, clock=clock, default_ttl_seconds=settings.default_ttl_seconds
            )
            if store is None
            else store
        )
        context.open_store = active
        sweeper = Sweeper(
            active,
            interval_seconds=settings.sweep_interval_seconds,
            purge_created_after_seconds=settings.purge_created_after_seconds,
        )
        context.metrics.watch_sweeper(sweeper)
        sweeper.start()
        if gateway_config is not None:
            context.gateway = Gateway(gateway_config, active, upstream or AiohttpUpstream())
        try:
            yield
        finally:
            if context.gateway is not None:
                # Streams in flight still record their rounds before the store closes.
                await context.gateway.aclose()
                context.gateway = None
            await sweeper.stop()
            context.open_store = None
            if opened:
                await active.aclose()

    app = ServiceAPI(
        extra_schemas=[RecordRoundIn],
        title="llmsession",
        version=_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
        # /docs is served with local copies of Swagger UI's assets: see install_offline_docs.
        docs_url=None,
        # No redirect to the path with or without a trailing slash: an unknown path is a
        # 404 problem, and a redirect would be built from the client's Host header.
        redirect_slashes=False,
        # Operation ids are the route functions' names: create_session, record_round...
        generate_unique_id_function=_operation_id,
        # The service exports its own Prometheus metrics; FastAPI's OpenTelemetry
        # hooks would otherwise look up the global providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    route_methods = RouteMethods(app)
    install_problem_handlers(app, allowed_methods=route_methods.allowed)
    gateway_limit = (
        MAX_BODY_BYTES
        if gateway_config is None
        else max(MAX_BODY_BYTES, gateway_config.history_limit_bytes)
    )
    limits = BodyLimits(
        path_limits=dict.fromkeys(GATEWAY_PATHS, gateway_limit),
        prefix_limits=dict.fromkeys(GEMINI_PREFIXES, gateway_limit),
    )
    # Each add_middleware wraps the ones before: the metrics time everything, the
    # body limit applies to the fast path for rounds as well.
    app.add_middleware(HeadAsGet, methods=route_methods)
    if fast_rounds:
        app.add_middleware(FastRounds, context=context)
        # Plain gateway requests skip FastAPI and the middleware here: the front does
        # the body limit and the metrics for them.
        app.front = FastGateway(app, metrics=context.metrics, limits=limits)
    app.add_middleware(BodyLimit, limits=limits)
    app.add_middleware(RequestMetricsMiddleware, metrics=context.metrics)
    app.include_router(session_routes(context))
    app.include_router(gateway_routes(context))
    app.include_router(gemini_routes(context))
    app.include_router(admin_routes(context))
    app.include_router(ops_routes(context))
    app.include_router(ui_routes(context))
    app.include_router(static_routes())
    install_offline_docs(app)
    return app


def _operation_id(route: APIRoute) -> str:
    return route.name


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmsession")
    except PackageNotFoundError:
        return "0+unknown"
