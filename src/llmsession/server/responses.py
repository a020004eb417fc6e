"""The error responses each route documents in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from llmsession.server.problems import PROBLEM_CONTENT_TYPE
from llmsession.server.schemas import ProblemOut

__all__ = ["error_responses"]

_DESCRIPTIONS = {
    400: "More than one Authorization header",
    401: "No key, an unknown key or a revoked key (with WWW-Authenticate: Bearer)",
    403: "A key not allowed on this route",
    404: "No such session (or another tenant's), tenant or key",
    405: "Method not allowed",
    409: "The session's state does not allow this, or a conflicting request",
    413: "The request body is over 64 KiB",
    422: "Invalid input: see `errors`",
    500: "A server bug (never caused by input)",
    501: "No provider is configured: this server runs the session ledger only",
    502: "The provider could not be reached, broke the connection, or answered 5xx",
    503: "The session store cannot be reached",
    504: "The provider did not answer within its timeout_seconds",
}

_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    503: {
        "Retry-After": {
            "description": "Seconds to wait before retrying",
            "schema": {"type": "string"},
        }
    },
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these statuses, each an application/problem+json body."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "model": ProblemOut,
            "description": _DESCRIPTIONS[status],
            "content": {PROBLEM_CONTENT_TYPE: {}},
        }
        if status in _HEADERS:
            response["headers"] = _HEADERS[status]
        responses[status] = response
    return responses
