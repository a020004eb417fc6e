"""Turning an HTTP error answer back into the error the core would have raised.

The server renders each core error as an RFC 9457 problem with a stable ``type``;
this module maps the type back, so ``except WrongStateError`` works the same
against a local store and against the HTTP API. An answer outside the documented
contract raises :class:`ApiError`; no answer at all raises
:class:`ServiceUnreachable`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, cast

import httpx

from llmsession.errors import (
    AuthenticationError,
    ConflictError,
    IdempotencyConflict,
    InvalidInput,
    LLMSessionError,
    NotFoundError,
    SessionExpiredError,
    StoreError,
    WrongStateError,
)

__all__ = ["PROBLEM_PREFIX", "ApiError", "ServiceUnreachable", "error_from_response"]

PROBLEM_PREFIX: Final = "urn:llmsession:problem:"
_BODY_SHOWN = 200


class ApiError(LLMSessionError):
    """The server answered, but not as the HTTP API documents (unknown status or body).

    Typically a proxy in between, a wrong ``base_url``, or client and server of
    incompatible versions. ``status_code`` is the HTTP status received.
    """

    def __init__(self, message: str, status_code: int) -> None:
        self.status_code = status_code
        super().__init__(message)

    def __reduce__(self) -> tuple[type[ApiError], tuple[str, int]]:
        return (type(self), (str(self), self.status_code))


class ServiceUnreachable(LLMSessionError):
    """No answer from the server: it could not be reached, or it timed out."""


# A builder returns None when the problem lacks the members its type promises.
_Builder = Callable[[str, Mapping[str, object]], LLMSessionError | None]


def _state_error(cls: type[WrongStateError]) -> _Builder:
    def build(detail: str, problem: Mapping[str, object]) -> LLMSessionError | None:
        method = problem.get("method")
        required = problem.get("required_state")
        current = problem.get("current_state")
        if isinstance(method, str) and isinstance(required, str) and isinstance(current, str):
            # The same arguments the core used, so the error equals the core's.
            return cls(method, required, current)
        return None

    return build


def _simple(cls: type[LLMSessionError]) -> _Builder:
    def build(detail: str, problem: Mapping[str, object]) -> LLMSessionError | None:
        return cls(detail)

    return build


_BY_TYPE: Final[dict[str, _Builder]] = {
    # The client sends one Authorization header; another one came from elsewhere
    # (a proxy, extra headers): the credentials, not the call, are at fault.
    "ambiguous-credentials": _simple(AuthenticationError),
    "unauthorized": _simple(AuthenticationError),
    "forbidden": _simple(AuthenticationError),
    "not-found": _simple(NotFoundError),
    "wrong-state": _state_error(WrongStateError),
    "session-expired": _state_error(SessionExpiredError),
    "idempotency-conflict": _simple(IdempotencyConflict),
    "conflict": _simple(ConflictError),
    "invalid-input": _simple(InvalidInput),
    "store-unavailable": _simple(StoreError),
}


def error_from_response(response: httpx.Response) -> LLMSessionError:
    """The error an error answer stands for: a core error, or ApiError outside the contract."""
    problem = _problem(response)
    kind = problem.get("type") if problem is not None else None
    build = (
        _BY_TYPE.get(kind.removeprefix(PROBLEM_PREFIX))
        if isinstance(kind, str) and kind.startswith(PROBLEM_PREFIX)
        else None
    )
    error = None
    if problem is not None and build is not None:
        error = build(_message(problem, response.status_code), problem)
    if problem is None or error is None:
        request = response.request
        shown = (
            f"{kind}: {_message(problem, response.status_code)}"
            if problem is not None and isinstance(kind, str)
            else _excerpt(response)
        )
        return ApiError(
            f"{request.method} {request.url.path} answered HTTP {response.status_code}, "
            f"which the llmsession API does not document ({shown})",
            response.status_code,
        )
    errors = problem.get("errors")
    if isinstance(errors, list):
        for item in cast("list[object]", errors):
            note = _describe_item(item)
            if note not in str(error):
                error.add_note(note)
    return error


def _message(problem: Mapping[str, object], status: int) -> str:
    for member in ("detail", "title"):
        text = problem.get(member)
        if isinstance(text, str) and text:
            return text
    return f"HTTP {status}"


def _problem(response: httpx.Response) -> Mapping[str, object] | None:
    try:
        data: object = response.json()
    except ValueError:
        return None
    return cast("dict[str, object]", data) if isinstance(data, dict) else None


def _describe_item(item: object) -> str:
    if isinstance(item, dict):
        entry = cast("dict[str, object]", item)
        loc = entry.get("loc")
        where = (
            ".".join(str(part) for part in cast("list[object]", loc))
            if isinstance(loc, list)
            else str(loc)
        )
        # An error of no one place (an empty loc) is its message alone.
        return f"{where}: {entry.get('msg')}" if where else str(entry.get("msg"))
    return str(item)


def _excerpt(response: httpx.Response) -> str:
    text = response.text.strip()
    if not text:
        return "(empty body)"
    return text if len(text) <= _BODY_SHOWN else text[:_BODY_SHOWN] + "..."
