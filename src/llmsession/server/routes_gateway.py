"""The gateway's routes: the providers' wire formats under /v1, so their official SDKs work
unchanged.

``POST /v1/chat/completions``, ``POST /v1/responses`` (OpenAI) and
``POST /v1/messages`` (Anthropic, whose key may also come as ``x-api-key``) take the provider's own
request body (only the new messages, with ``LLMSession-Id`` to continue a
session) and answer with the provider's own body or event stream. Thin: the
turn itself is :class:`llmsession.gateway.Gateway`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from llmsession.gateway.forwarding import SESSION_HEADER, Relay
from llmsession.ids import TenantId
from llmsession.server.auth import (
    api_key_or_bearer,
    authorization_header,
    bearer_token,
    require_tenant,
)
from llmsession.server.context import AppContext
from llmsession.server.params import parse_idempotency_key
from llmsession.server.problems import Problem
from llmsession.server.responses import error_responses

__all__ = ["GATEWAY_PATHS", "EventStream", "forward_turn", "gateway_routes"]

#: The gateway's paths, and the endpoint (wire format) each one speaks.
GATEWAY_PATHS: Final = {
    "/v1/chat/completions": "chat/completions",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
}

_NOT_CONFIGURED = (
    "no provider is configured on this server, so it answers only the session ledger "
    "routes; start it with `llmsession serve --config FILE` (or LLMSESSION_CONFIG) naming "
    "[providers.<provider_id>] tables (see docs/gateway.md)"
)


async def forward_turn(
    context: AppContext,
    request: Request,
    endpoint: str,
    tenant: TenantId,
    *,
    path_model: str | None = None,
) -> Response:
    """One turn of ``tenant`` on ``endpoint``, answered as the provider answered."""
    gateway = context.gateway
    if gateway is None:
        raise Problem("gateway-not-configured", _NOT_CONFIGURED)
    sessions = request.headers.getlist(SESSION_HEADER)
    if len(sessions) > 1:
        raise Problem("invalid-input", f"send one {SESSION_HEADER} header, not {len(sessions)}")
    reply = await gateway.handle(
        tenant,
        endpoint,
        await request.body(),
        session_header=sessions[0] if sessions else None,
        idempotency_key=parse_idempotency_key(request.headers),
        path_model=path_model,
        headers=request.headers,
    )
    if reply.stream is not None:
        return EventStream(reply.stream, reply.status, reply.headers)
    return Response(reply.body, reply.status, headers=reply.headers)


class EventStream(Response):
    """A streamed answer, its events sent as the relay reads them from the provider.

    Whatever ends the sending (the last event, the client gone, the task
    cancelled), the relay is closed, so an answer the client did not read to
    its end is read on and recorded by the gateway. (Starlette's
    StreamingResponse leaves its iterator to the garbage collector, and runs a
    second task per response only to notice a disconnect; a client that goes
    away needs no notice here: the answer is read to its end either way, and
    the server drops, or refuses, what is sent after.)
    """

    def __init__(self, relay: Relay, status_code: int, headers: Mapping[str, str]) -> None:
        self.relay = relay
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self.relay
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for event in relay:
                # The last event goes with the body's end: one write to the client, not two.
                over = relay.over
                await send({"type": "http.response.body", "body": event, "more_body": not over})
                if over:
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            # The client is gone (ASGI 2.4 servers say so on send): nobody to answer.
            pass
        finally:
            relay.close()


def _openapi(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [
            {
                "name": SESSION_HEADER,
                "in": "header",
                "required": False,
                "description": "The session this request continues; without it, the request "
                "starts a session (its id comes back in the same header)",
                "schema": {"type": "string", "format": "uuid"},
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "A retried request with the same key gets the first answer "
                "again, without calling the provider",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "security": [{"TenantKey": []}],
    }


def gateway_routes(context: AppContext) -> APIRouter:
    """The gateway routes of one app, acting for the tenant of the request's key."""
    router = APIRouter(
        prefix="/v1",
        tags=["gateway"],
        responses={
            200: {
                "description": "The provider's answer: a JSON body, or with `stream: true` "
                "an event stream",
                "content": {"application/json": {}, "text/event-stream": {}},
                "headers": {
                    SESSION_HEADER: {
                        "description": "The session this turn belongs to",
                        "schema": {"type": "string"},
                    }
                },
            },
            **error_responses(400, 401, 403, 404, 409, 413, 422, 501, 502, 503, 504),
        },
    )

    async def forward(request: Request, endpoint: str, *, api_key_header: bool = False) -> Response:
        token = (
            api_key_or_bearer(request.headers)
            if api_key_header
            # One Authorization header: of two, the first would pick the tenant.
            else bearer_token(authorization_header(request.headers))
        )
        tenant = await require_tenant(context, token)
        return await forward_turn(context, request, endpoint, tenant)

    @router.post(
        "/chat/completions",
        openapi_extra=_openapi("OpenAI Chat Completions, through a session"),
        response_class=Response,
    )
    async def chat_completions(request: Request) -> Response:
        """Chat Completions with only the new messages; the session adds its history."""
        return await forward(request, GATEWAY_PATHS["/v1/chat/completions"])

    @router.post(
        "/responses",
        openapi_extra=_openapi("OpenAI Responses, through a session"),
        response_class=Response,
    )
    async def create_response(request: Request) -> Response:
        """The Responses API with only the new input; the session keeps the conversation."""
        return await forward(request, GATEWAY_PATHS["/v1/responses"])

    @router.post(
        "/messages",
        openapi_extra=_openapi("Anthropic Messages, through a session"),
        response_class=Response,
    )
    async def messages(request: Request) -> Response:
        """Anthropic Messages with only the new messages; the session adds its history."""
        return await forward(request, GATEWAY_PATHS["/v1/messages"], api_key_header=True)

    return router
