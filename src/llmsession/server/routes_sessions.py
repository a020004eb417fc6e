"""The tenant's routes under /v1: sessions, rounds and stats.

Thin by design: parse and validate, call the store (which calls the core), and
render. No rule of the state machine is restated here.
"""

# No `from __future__ import annotations` here: FastAPI reads the parameter
# annotations at run time, and they name `tenant_of_request`, a local of
# session_routes that a postponed (string) annotation could not be resolved to.

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from llmsession.ids import SessionId, TenantId
from llmsession.pricing import price_rounds, priced_totals
from llmsession.server.auth import tenant_dependency
from llmsession.server.context import AppContext
from llmsession.server.params import (
    GroupByQuery,
    ModelQuery,
    OptionalTimeQuery,
    ProviderQuery,
    SessionIdPath,
    StrictQueryRoute,
    TimeQuery,
    parse_group_by,
    parse_time,
)
from llmsession.server.render import (
    render_round,
    render_session,
    render_timeseries,
    render_totals,
)
from llmsession.server.responses import error_responses
from llmsession.server.rounds import RECORD_ROUND_OPENAPI, ROUNDS_TEMPLATE, record_round_response
from llmsession.server.schemas import (
    CreateSessionIn,
    RoundPageOut,
    RoundResultOut,
    SessionOut,
    SessionPageOut,
    StateName,
    StatsOut,
    TimeSeriesOut,
)
from llmsession.states import state_named
from llmsession.store.models import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    SessionQuery,
    TimeBucketSize,
)
from llmsession.timestamps import Timestamp
from llmsession.tokens import MAX_TOKENS

__all__ = ["session_routes"]

DEFAULT_ROUNDS_PAGE_SIZE = 100


def session_routes(context: AppContext) -> APIRouter:
    """The /v1 session routes of one app, acting for the tenant of the request's key."""
    router = APIRouter(
        prefix="/v1",
        tags=["sessions"],
        responses=error_responses(400, 401, 403, 413, 503),
        route_class=StrictQueryRoute,
        redirect_slashes=False,  # as the app's: see create_app
    )
    tenant_of_request = tenant_dependency(context)

    @router.post(
        "/sessions",
        status_code=201,
        response_model=SessionOut,
        responses=error_responses(422),
        summary="Create a session (state created)",
    )
    async def create_session(
        tenant: Annotated[TenantId, Depends(tenant_of_request)], body: CreateSessionIn
    ) -> JSONResponse:
        stored = await context.store.create(
            tenant,
            provider_id=body.provider_id,
            model=body.model,
            initial_tokens=body.initial_tokens,
            ttl_seconds=body.ttl_seconds,
        )
        location = f"/v1/sessions/{stored.record.session_id}"
        return JSONResponse(render_session(stored), 201, headers={"Location": location})

    @router.post(
        "/sessions/{session_id}/activate",
        response_model=SessionOut,
        responses=error_responses(404, 409, 422),
        summary="Activate a created session",
    )
    async def activate_session(
        tenant: Annotated[TenantId, Depends(tenant_of_request)], session_id: SessionIdPath
    ) -> JSONResponse:
        stored = await context.store.activate(tenant, SessionId.parse(session_id))
        return JSONResponse(render_session(stored))

    @router.post(
        ROUNDS_TEMPLATE.removeprefix("/v1"),
        status_code=201,
        response_model=RoundResultOut,
        responses={
            200: {
                "model": RoundResultOut,
                "description": "A replayed Idempotency-Key, counted once: the first answer, "
                "the round first recorded and the session as it was right after it",
                "headers": {
                    "Idempotent-Replayed": {
                        "description": "Always 'true' on a replay",
                        "schema": {"type": "string", "enum": ["true"]},
                    }
                },
            },
            **error_responses(404, 409, 422),
        },
        openapi_extra=RECORD_ROUND_OPENAPI,
        summary="Record one round on an active session",
    )
    async def record_round(request: Request) -> JSONResponse:
        # Hand-parsed, see llmsession.server.rounds; usually FastRounds answers first.
        return await record_round_response(context, request, request.path_params["session_id"])

    @router.post(
        "/sessions/{session_id}/close",
        response_model=SessionOut,
        responses=error_responses(404, 409, 422),
        summary="Close an active session",
    )
    async def close_session(
        tenant: Annotated[TenantId, Depends(tenant_of_request)], session_id: SessionIdPath
    ) -> JSONResponse:
        stored = await context.close_session(tenant, SessionId.parse(session_id))
        return JSONResponse(render_session(stored))

    @router.get(
        "/sessions/{session_id}",
        response_model=SessionOut,
        responses=error_responses(404, 422),
        summary="Read a session",
    )
    async def get_session(
        tenant: Annotated[TenantId, Depends(tenant_of_request)], session_id: SessionIdPath
    ) -> JSONResponse:
        stored = await context.store.get(tenant, SessionId.parse(session_id))
        return JSONResponse(render_session(stored))

    @router.get(
        "/sessions",
        response_model=SessionPageOut,
        responses=error_responses(422),
        summary="List the tenant's sessions, newest first",
    )
    async def list_sessions(
        tenant: Annotated[TenantId, Depends(tenant_of_request)],
        *,
        state: Annotated[StateName | None, Query(description="Only sessions in this state")] = None,
        provider_id: ProviderQuery = None,
        model: ModelQuery = None,
        created_after: OptionalTimeQuery = None,
        created_before: OptionalTimeQuery = None,
        limit: Annotated[
            int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Page size, 1 to {MAX_PAGE_SIZE}")
        ] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[
            str | None,
            Query(max_length=200, description="The next_cursor of the previous page"),
        ] = None,
    ) -> JSONResponse:
        query = SessionQuery(
            state=None if state is None else state_named(state),
            provider_id=provider_id,
            model=model,
            created_after=parse_time(created_after),
            created_before=parse_time(created_before),
            limit=limit,
            cursor=cursor,
        )
        page = await context.store.list_sessions(tenant, query)
        return JSONResponse(
            {"items": [render_session(s) for s in page.items], "next_cursor": page.next_cursor}
        )

    @router.get(
        "/sessions/{session_id}/rounds",
        response_model=RoundPageOut,
        responses=error_responses(404, 422),
        summary="List a session's rounds in order",
    )
    async def list_rounds(
        tenant: Annotated[TenantId, Depends(tenant_of_request)],
        session_id: SessionIdPath,
        after: Annotated[
            int,
            Query(
                ge=0,
                le=MAX_TOKENS,
                description="Only rounds with a larger seq, e.g. those recorded since round "
                "`after` was seen",
            ),
        ] = 0,
        limit: Annotated[
            int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Page size, 1 to {MAX_PAGE_SIZE}")
        ] = DEFAULT_ROUNDS_PAGE_SIZE,
        cursor: Annotated[
            str | None,
            Query(max_length=200, description="The next_cursor of the previous page"),
        ] = None,
    ) -> JSONResponse:
        sid = SessionId.parse(session_id)
        page = await context.store.list_rounds(
            tenant, sid, cursor=cursor, after_seq=after, limit=limit
        )
        rounds = page.items
        if context.prices and any(r.usage is not None for r in rounds):
            # A round's price is its session's provider and model's.
            record = (await context.store.get(tenant, sid)).record
            rounds = price_rounds(rounds, context.prices, record.provider_id, record.model)
        return JSONResponse(
            {"items": [render_round(r) for r in rounds], "next_cursor": page.next_cursor}
        )

    @router.get(
        "/stats",
        response_model=StatsOut,
        responses=error_responses(422),
        summary="The tenant's totals, optionally grouped by provider and/or model",
    )
    async def stats(
        tenant: Annotated[TenantId, Depends(tenant_of_request)],
        group_by: GroupByQuery = None,
    ) -> JSONResponse:
        keys = parse_group_by(group_by)
        groups = await priced_totals(context.store, tenant, keys, context.prices)
        return JSONResponse({"groups": [render_totals(t) for t in groups]})

    @router.get(
        "/stats/timeseries",
        response_model=TimeSeriesOut,
        responses=error_responses(422),
        summary="The tenant's rounds, tokens saved, usage and new sessions per hour or day",
        description=(
            "Whole UTC hours or days, from the bucket holding `start` to the last one "
            "starting before `end`: at most 31 days of hours or 366 days of days. Buckets in which "
            "nothing happened are left out. Read from a rollup the store keeps as it "
            "writes, so its cost follows the buckets and groups, not the rounds."
        ),
    )
    async def timeseries(
        tenant: Annotated[TenantId, Depends(tenant_of_request)],
        bucket: Annotated[TimeBucketSize, Query(description="hour or day")],
        start: TimeQuery,
        end: TimeQuery,
        group_by: GroupByQuery = None,
    ) -> JSONResponse:
        keys = parse_group_by(group_by)
        first, last = Timestamp.parse(start), Timestamp.parse(end)
        buckets = await context.store.timeseries(
            tenant, bucket=bucket, start=first, end=last, group_by=keys
        )
        return JSONResponse(render_timeseries(bucket, first, last, buckets))

    return router
