"""Request parameters (path, query, header) and their validation by the core's checkers.

A checker of the core raising InvalidInput (a ValueError) inside a pydantic
validator becomes a 422 naming the parameter, with the core's own message.
Query parameters a route does not declare are refused rather than ignored, so a
misspelled filter cannot silently return everything. The ``parse_*`` functions
do the same checks by hand for the hot route that skips FastAPI's parameter
machinery (see :mod:`llmsession.server.rounds`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.responses import Response

from llmsession.errors import InvalidInput
from llmsession.ids import SessionId, TenantId, check_label
from llmsession.keys import MAX_KEY_ID_LENGTH, check_key_id
from llmsession.server.schemas import TENANT_ID_PATTERN
from llmsession.store.models import GroupKey, check_group_by, check_idempotency_key
from llmsession.timestamps import Timestamp

__all__ = [
    "GroupByQuery",
    "KeyIdPath",
    "ModelQuery",
    "OptionalTimeQuery",
    "ProviderQuery",
    "SessionIdPath",
    "StrictQueryRoute",
    "TenantIdPath",
    "TimeQuery",
    "content_type_error",
    "parse_group_by",
    "parse_idempotency_key",
    "parse_json_body",
    "parse_session_id",
    "parse_time",
]

KEY_ID_PATTERN = f"^[A-Za-z0-9]{{1,{MAX_KEY_ID_LENGTH}}}$"

M = TypeVar("M", bound=BaseModel)


def _session_id(value: str) -> str:
    SessionId.parse(value)
    return value


def _tenant_id(value: str) -> str:
    return TenantId(value).value


def _time(value: str | None) -> str | None:
    if value is not None:
        Timestamp.parse(value)
    return value


def _provider(value: str | None) -> str | None:
    return None if value is None else check_label("provider_id", value)


def _model(value: str | None) -> str | None:
    return None if value is None else check_label("model", value)


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
    Path(
        description="A tenant id",
        examples=["acme"],
        json_schema_extra={"pattern": TENANT_ID_PATTERN},
    ),
    AfterValidator(_tenant_id),
]
KeyIdPath = Annotated[
    str,
    Path(
        description="An API key id (the part between the underscores of the key)",
        json_schema_extra={"pattern": KEY_ID_PATTERN},
    ),
    AfterValidator(check_key_id),
]
GroupByQuery = Annotated[
    list[str] | None,
    Query(
        description="provider, model or provider,model; also repeatable "
        "(group_by=provider&group_by=model)"
    ),
]
OptionalTimeQuery = Annotated[
    str | None,
    Query(
        description="ISO 8601 with an offset, e.g. 2026-01-31T12:00:00Z",
        json_schema_extra={"format": "date-time"},
    ),
    AfterValidator(_time),
]
TimeQuery = Annotated[
    str,
    Query(
        description="ISO 8601 with an offset, e.g. 2026-01-31T12:00:00Z",
        json_schema_extra={"format": "date-time"},
    ),
    AfterValidator(_time),
]
ProviderQuery = Annotated[
    str | None, Query(description="Only sessions of this provider"), AfterValidator(_provider)
]
ModelQuery = Annotated[
    str | None, Query(description="Only sessions of this model"), AfterValidator(_model)
]


def parse_time(value: str | None) -> Timestamp | None:
    """The Timestamp of an already validated OptionalTimeQuery."""
    return None if value is None else Timestamp.parse(value)


def _query_names(dependant: Dependant) -> set[str]:
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


class StrictQueryRoute(APIRoute):
    """An APIRoute that refuses query parameters it does not declare (422).

    Done in the route handler rather than as a dependency: a dependency runs
    through FastAPI's solver on every request, which costs more than the check.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        allowed = frozenset(_query_names(self.dependant))
        accepted = ", ".join(sorted(allowed)) or "none"

        async def checked(request: Request) -> Response:
            if request.scope["query_string"]:
                unknown = sorted(set(request.query_params) - allowed)
                if unknown:
                    raise RequestValidationError(
                        [
                            {
                                "type": "unknown_parameter",
                                "loc": ("query", name),
                                "msg": f"unknown query parameter; this route accepts: {accepted}",
                            }
                            for name in unknown
                        ]
                    )
            return await handler(request)

        return checked


def _invalid(loc: tuple[str, ...], error: Exception) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": str(error)}])


def parse_session_id(text: str) -> SessionId:
    """The session id of a path; a 422 naming the path parameter if malformed."""
    try:
        return SessionId.parse(text)
    except InvalidInput as error:
        raise _invalid(("path", "session_id"), error) from None


def parse_group_by(values: Sequence[str] | None) -> list[GroupKey]:
    """The names of repeated and comma-separated ``group_by`` query parameters, each
    once, in order; a 422 naming the parameter for a name the totals do not group by."""
    keys: list[str] = []
    for value in values or ():
        for key in value.split(","):
            if key not in keys:
                keys.append(key)
    try:
        return list(check_group_by(keys))
    except InvalidInput as error:
        raise _invalid(("query", "group_by"), error) from None


def parse_idempotency_key(headers: Headers) -> str | None:
    """The Idempotency-Key header's value, if any; a 422 naming the header if malformed
    or given more than once (which of two keys a retry meant cannot be told)."""
    values = headers.getlist("idempotency-key")
    if not values:
        return None
    if len(values) > 1:
        raise _invalid(
            ("header", "Idempotency-Key"),
            InvalidInput(f"the request has {len(values)} Idempotency-Key headers; send one"),
        )
    try:
        return check_idempotency_key(values[0])
    except InvalidInput as error:
        raise _invalid(("header", "Idempotency-Key"), error) from None


def content_type_error(content_type: str | None) -> dict[str, Any] | None:
    """The validation error of a body not labelled JSON (``application/json`` or
    ``application/*+json``, as FastAPI reads bodies); None for a JSON label."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return None
    got = "no Content-Type" if content_type is None else f"got {content_type[:80]!r}"
    return {
        "type": "content_type",
        "loc": ("header", "Content-Type"),
        "msg": f"the body must be JSON, sent as Content-Type: application/json ({got})",
    }


async def parse_json_body(model: type[M], request: Request) -> M:
    """The request body validated by ``model``; a 422 naming each bad field otherwise.

    Like FastAPI's own body handling: the body must be labelled JSON
    (``application/json`` or ``application/*+json``).
    """
    body = await request.body()
    if not body:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "a JSON object body is required"}]
        )
    not_json = content_type_error(request.headers.get("content-type"))
    if not_json is not None:
        raise RequestValidationError([not_json])
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError(
            [
                {**detail, "loc": ("body", *detail["loc"])}
                for detail in error.errors(include_url=False, include_input=False)
            ]
        ) from None
