"""Request parameters (path, query, header) and their validation by the core's checkers.

A checker of the core raising InvalidInput (a ValueError) inside a pydantic
validator becomes a 422 naming the parameter, with the core's own message.
Query parameters a route does not declare are refused rather than ignored, so a
misspelled filter cannot silently return everything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Header, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import AfterValidator

from llmsession.ids import SessionId, TenantId, check_label
from llmsession.store.models import MAX_IDEMPOTENCY_KEY, check_idempotency_key
from llmsession.timestamps import Timestamp

__all__ = [
    "IdempotencyKeyHeader",
    "KeyIdPath",
    "OptionalLabelQuery",
    "OptionalTimeQuery",
    "SessionIdPath",
    "TenantIdPath",
    "parse_time",
    "query_guard",
]

MAX_KEY_ID_LENGTH = 64


def _session_id(value: str) -> str:
    SessionId.parse(value)
    return value


def _tenant_id(value: str) -> str:
    return TenantId(value).value


def _key_id(value: str) -> str:
    # Key ids are hex; anything else cannot exist and must not reach a database
    # (PostgreSQL refuses NUL characters in text, for one).
    if not (1 <= len(value) <= MAX_KEY_ID_LENGTH and value.isascii() and value.isalnum()):
        raise ValueError(
            f"key id {value[:80]!r} is malformed: 1 to {MAX_KEY_ID_LENGTH} letters and digits"
        )
    return value


def _idempotency_key(value: str | None) -> str | None:
    return None if value is None else check_idempotency_key(value)


def _time(value: str | None) -> str | None:
    if value is not None:
        Timestamp.parse(value)
    return value


def _label(value: str | None) -> str | None:
    return None if value is None else check_label("filter", value)


SessionIdPath = Annotated[
    str,
    Path(
        description="A session id (UUID)",
        json_schema_extra={"format": "uuid"},
        examples=["019abc12-3456-7def-8123-456789abcdef"],
    ),
    AfterValidator(_session_id),
]
TenantIdPath = Annotated[
    str,
    Path(description="A tenant id", examples=["acme"]),
    AfterValidator(_tenant_id),
]
KeyIdPath = Annotated[
    str,
    Path(description="An API key id (the part between the underscores of the key)"),
    AfterValidator(_key_id),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY,
        description="1 to 255 printable characters; a retried round with the same key "
        "is recorded once",
    ),
    AfterValidator(_idempotency_key),
]
OptionalTimeQuery = Annotated[
    str | None,
    Query(
        description="ISO 8601 with an offset, e.g. 2026-01-31T12:00:00Z",
        json_schema_extra={"format": "date-time"},
    ),
    AfterValidator(_time),
]
OptionalLabelQuery = Annotated[str | None, Query(), AfterValidator(_label)]


def parse_time(value: str | None) -> Timestamp | None:
    """The Timestamp of an already validated OptionalTimeQuery."""
    return None if value is None else Timestamp.parse(value)


def _query_names(dependant: Dependant) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def query_guard() -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing query parameters the matched route does not declare (422).

    Each app gets its own guard, whose cache of allowed names is keyed by route.
    """
    allowed_by_route: dict[tuple[str, tuple[str, ...]], frozenset[str]] = {}

    async def reject_unknown_query(request: Request) -> None:
        if not request.scope.get("query_string"):
            return
        route = request.scope.get("route")
        if not isinstance(route, APIRoute):
            return
        key = (route.path, tuple(sorted(route.methods or ())))
        allowed = allowed_by_route.get(key)
        if allowed is None:
            allowed = frozenset(_query_names(route.dependant))
            allowed_by_route[key] = allowed
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            shown = ", ".join(sorted(allowed)) or "none"
            raise RequestValidationError(
                [
                    {
                        "type": "unknown_parameter",
                        "loc": ("query", name),
                        "msg": f"unknown query parameter; this route accepts: {shown}",
                    }
                    for name in unknown
                ]
            )

    return reject_unknown_query
