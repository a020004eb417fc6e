"""Operations routes, without auth: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from llmsession.server.context import AppContext
from llmsession.server.metrics import METRICS_CONTENT_TYPE
from llmsession.server.params import StrictQueryRoute
from llmsession.server.problems import problem_response
from llmsession.server.responses import error_responses
from llmsession.server.schemas import StatusOut

__all__ = ["ops_routes"]

logger = logging.getLogger("llmsession.server")


def ops_routes(context: AppContext) -> APIRouter:
    """/healthz, /readyz and /metrics of one app."""
    router = APIRouter(
        tags=["operations"],
        route_class=StrictQueryRoute,
        responses=error_responses(413),
        redirect_slashes=False,  # as the app's: see create_app
    )

    @router.get("/healthz", response_model=StatusOut, summary="200 while the process runs")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @router.get(
        "/readyz",
        response_model=StatusOut,
        responses=error_responses(503),
        summary="200 when the store answers, else 503",
    )
    async def readyz() -> JSONResponse:
        try:
            await context.store.ping()
        except Exception as error:
            # Readiness is about answering at all: any failure, typed or not, is "not ready".
            logger.warning("not ready: %s: %s", type(error).__name__, error)
            return problem_response(
                "store-unavailable", "the session store does not answer; not ready"
            )
        return JSONResponse({"status": "ready"})

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {METRICS_CONTENT_TYPE: {"schema": {"type": "string"}}}}},
        summary="Prometheus metrics (text format)",
    )
    async def metrics() -> Response:
        body = await context.metrics.render(context.open_store)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    return router
