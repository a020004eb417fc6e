"""The gateway's Gemini routes: Google's URL shapes, so the google-genai SDK works unchanged.

``POST /v1beta/models/{model}:generateContent`` and
``POST /v1beta/models/{model}:streamGenerateContent?alt=sse`` (``/v1/...`` too: the
SDK's default version is ``v1``), where ``{model}`` is ``<provider_id>/<model>`` as
on the OpenAI routes (the SDK sends ``model="gemini/gemini-2.5-flash"`` as
``models/gemini/gemini-2.5-flash``). The tenant's key comes as ``x-goog-api-key``,
``?key=`` or ``Authorization: Bearer``. Thin: the turn is the gateway's.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response

from llmsession.gateway.forwarding import SESSION_HEADER
from llmsession.server.auth import google_api_key, require_tenant
from llmsession.server.context import AppContext
from llmsession.server.problems import Problem, not_served
from llmsession.server.responses import error_responses
from llmsession.server.routes_gateway import forward_turn

__all__ = ["GEMINI_PREFIXES", "gemini_routes"]

#: The path prefixes of the Gemini routes, one per API version a client may name.
GEMINI_PREFIXES: Final = ("/v1beta/models/", "/v1/models/")
_ENDPOINT: Final = "gemini/generateContent"

_OPENAPI: Final[dict[str, Any]] = {
    "parameters": [
        {
            "name": "target",
            "in": "path",
            "required": True,
            "description": "`<provider_id>/<model>:generateContent` or "
            "`<provider_id>/<model>:streamGenerateContent` (with `?alt=sse`)",
            "schema": {"type": "string"},
        },
        {
            "name": SESSION_HEADER,
            "in": "header",
            "required": False,
            "description": "The session this request continues; without it, the request "
            "starts a session (its id comes back in the same header)",
            "schema": {"type": "string", "format": "uuid"},
        },
        {
            "name": "x-goog-api-key",
            "in": "header",
            "required": False,
            "description": "The tenant's API key, as the google-genai SDK sends it (or "
            "`?key=`, or `Authorization: Bearer`; exactly one of them)",
            "schema": {"type": "string"},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    "security": [{"TenantKey": []}],
}


def gemini_routes(context: AppContext) -> APIRouter:
    """The Gemini routes of one app, acting for the tenant of the request's key."""
    router = APIRouter(
        tags=["gateway"],
        responses={
            200: {
                "description": "Gemini's answer: a GenerateContentResponse, or with "
                ":streamGenerateContent?alt=sse an event stream of them",
                "content": {"application/json": {}, "text/event-stream": {}},
            },
            **error_responses(400, 401, 403, 404, 409, 413, 422, 501, 502, 503, 504),
        },
    )

    async def generate(request: Request) -> Response:
        """Gemini generateContent with only the new contents; the session adds its history."""
        query = request.query_params
        if "key" in query:
            # The access log writes the URL with its query: a key given as ?key= must not
            # reach it, whatever the answer (uvicorn logs from this same scope when the
            # answer starts).
            kept = [(n, v) for n, v in query.multi_items() if n != "key"]
            request.scope["query_string"] = urlencode(kept).encode()
        target: str = request.path_params["target"]
        if target.endswith(":countTokens"):
            # Else a 422 about the URL, as for any method but generateContent's two.
            raise not_served("Gemini's token counting (models/{model}:countTokens)")
        key = google_api_key(request.headers, query)
        tenant = await require_tenant(context, key)
        if target.endswith(":streamGenerateContent") and query.get("alt") != "sse":
            raise Problem(
                "invalid-input",
                "llmsession streams Gemini answers as server-sent events only: call "
                ":streamGenerateContent?alt=sse (the google-genai SDK does)",
            )
        return await forward_turn(context, request, _ENDPOINT, tenant, path_model=target)

    for prefix in GEMINI_PREFIXES:
        router.add_api_route(
            prefix + "{target:path}",
            generate,
            methods=["POST"],
            name="gemini_generate_content" + ("_v1" if prefix == "/v1/models/" else ""),
            summary="Gemini generateContent / streamGenerateContent, through a session",
            response_class=Response,
            include_in_schema=prefix.startswith("/v1beta"),
            openapi_extra=_OPENAPI,
        )
    return router
