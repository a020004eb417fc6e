"""Recording a round over HTTP: the handler, and the fast path that reaches it directly.

``POST /v1/sessions/{session_id}/rounds`` is the call clients make all the time,
so it is written by hand: it takes the raw request and checks each part itself,
in the order the declarative routes do (auth, path, header, body), with the same
checkers and the same problem responses. FastAPI serves it like any route (and
documents it); :class:`FastRounds`, a raw ASGI middleware, hands the plain case
(a POST without a query string) to the same handler before FastAPI's router and
middleware stack, which otherwise cost more than the rest of the round.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from llmsession.server.auth import authorization_header, bearer_token, require_tenant
from llmsession.server.context import AppContext
from llmsession.server.metrics import ROUTE_TEMPLATE_KEY
from llmsession.server.params import parse_idempotency_key, parse_json_body, parse_session_id
from llmsession.server.problems import response_for
from llmsession.server.render import render_round, render_session
from llmsession.server.schemas import RecordRoundIn
from llmsession.store.models import MAX_IDEMPOTENCY_KEY

__all__ = ["RECORD_ROUND_OPENAPI", "ROUNDS_TEMPLATE", "FastRounds", "record_round_response"]

ROUNDS_TEMPLATE = "/v1/sessions/{session_id}/rounds"
# The same match as the router's for this template: one non-empty path segment.
_ROUNDS_PATH = re.compile(r"/v1/sessions/([^/]+)/rounds")

# What FastAPI would have generated for the route's parameters and body, had it
# not taken the raw request.
RECORD_ROUND_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "session_id",
            "in": "path",
            "required": True,
            "description": "A session id (UUID)",
            "schema": {"type": "string", "format": "uuid"},
        },
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": f"1 to {MAX_IDEMPOTENCY_KEY} printable characters, no white space "
            "at either end; a retried round with the same key is recorded once",
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RecordRoundIn"}}},
    },
    "security": [{"TenantKey": []}],
}


async def record_round_response(
    context: AppContext, request: Request, session_id: str
) -> JSONResponse:
    """Record the round a request asks for; 201, or 200 for a replayed Idempotency-Key.

    Raises the errors the problem handlers render (400, 401, 403, 404, 409, 422, 503).
    """
    tenant = await require_tenant(context, bearer_token(authorization_header(request.headers)))
    parsed_id = parse_session_id(session_id)
    idempotency_key = parse_idempotency_key(request.headers)
    body = await parse_json_body(RecordRoundIn, request)
    result = await context.store.record_round(
        tenant, parsed_id, body.delta_tokens, idempotency_key=idempotency_key
    )
    payload = {"round": render_round(result.round), "session": render_session(result.session)}
    if result.replayed:
        return JSONResponse(payload, 200, headers={"Idempotent-Replayed": "true"})
    return JSONResponse(payload, 201)


class FastRounds:
    """Raw ASGI middleware serving plain round requests with :func:`record_round_response`.

    Anything else (another path or method, a query string to refuse) goes on to
    the app, whose route for rounds calls the same handler.
    """

    def __init__(self, app: ASGIApp, context: AppContext) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope["query_string"]:
            match = _ROUNDS_PATH.fullmatch(scope["path"])
            if match is not None:
                scope[ROUTE_TEMPLATE_KEY] = ROUNDS_TEMPLATE
                request = Request(scope, receive)
                try:
                    response = await record_round_response(self.context, request, match[1])
                except ClientDisconnect:
                    return  # gone before its body arrived: nobody to answer
                except Exception as error:
                    response = response_for(error, request)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
