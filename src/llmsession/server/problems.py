"""Errors as RFC 9457 problem details (``application/problem+json``).

Every llmsession error class maps to one HTTP status and one stable ``type`` URN
(the table in docs/http-api.md); clients match on the type, never on the text.
Anything unexpected becomes a 500 problem that tells nothing about the inside.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
from llmsession.gateway.forwarding import AnswerGone, HistoryTooLarge, WrongEndpoint
from llmsession.gateway.routing import ModelMismatch
from llmsession.gateway.transport import ProviderError, ProviderTimeout
from llmsession.server.params import content_type_error

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_TYPES",
    "Problem",
    "install_problem_handlers",
    "not_served",
    "problem_response",
    "response_for",
    "unexpected_error_response",
]

logger = logging.getLogger("llmsession.server")

PROBLEM_CONTENT_TYPE = "application/problem+json"

_URN = "urn:llmsession:problem:"

#: Every problem type the service answers with: short name -> (status, title).
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "ambiguous-credentials": (400, "Ambiguous credentials"),
    "unauthorized": (401, "Unauthorized"),
    "forbidden": (403, "Forbidden"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "too-large": (413, "Content too large"),
    "wrong-state": (409, "Wrong session state"),
    "session-expired": (409, "Session expired"),
    "idempotency-conflict": (409, "Idempotency key conflict"),
    "conflict": (409, "Conflict"),
    "invalid-input": (422, "Invalid input"),
    "internal": (500, "Internal server error"),
    "gateway-not-configured": (501, "No provider configured"),
    "provider-unavailable": (502, "Provider unavailable"),
    "store-unavailable": (503, "Store unavailable"),
    "provider-timeout": (504, "Provider timeout"),
}


class Problem(Exception):
    """An error the server itself raises (forbidden, unauthorized...), rendered as a problem."""

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        if kind not in PROBLEM_TYPES:
            raise ValueError(f"unknown problem type {kind!r}")
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = extra


def problem_response(
    kind: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The problem+json response of type ``kind`` (a key of PROBLEM_TYPES)."""
    status, title = PROBLEM_TYPES[kind]
    body: dict[str, Any] = {
        "type": _URN + kind,
        "title": title,
        "status": status,
        "detail": detail,
        # The official openai SDK puts only a body's "message" in its exception's
        # text: without it, a gateway refusal read "Error code: 409" and no more.
        "message": detail,
    }
    body.update(extra)
    return JSONResponse(body, status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


#: Provider paths that no route serves but a provider's SDK calls, and what each is;
#: their 404 says so instead of "no route".
_NOT_SERVED_PATHS: Final = {
    "/v1/messages/count_tokens": "Anthropic's token counting (/v1/messages/count_tokens)",
}


def not_served(what: str) -> Problem:
    """The 404 for a provider call the gateway does not serve, saying what to do instead
    (a 404, which the SDKs do not retry)."""
    return Problem(
        "not-found",
        f"llmsession does not serve {what}: it forwards only conversation turns "
        "(docs/gateway.md, Endpoints); call the provider directly, with a key of your own",
    )


# The official openai and anthropic SDKs retry a 409 twice unless told not to; these
# conflicts are the same however often the request is sent (a retry of a
# ConcurrentUpdateError may pass, so a plain conflict keeps the SDK's choice).
_FINAL: Final = {"x-should-retry": "false"}


def problem_for(error: LLMSessionError) -> Problem:
    """The problem an llmsession error stands for (most specific class first)."""
    if isinstance(error, AuthenticationError):
        return Problem("unauthorized", str(error), headers={"WWW-Authenticate": "Bearer"})
    if isinstance(error, NotFoundError):
        return Problem("not-found", str(error))
    if isinstance(error, WrongStateError):
        kind = "session-expired" if isinstance(error, SessionExpiredError) else "wrong-state"
        return Problem(
            kind,
            str(error),
            headers=_FINAL,
            method=error.method,
            required_state=error.required,
            current_state=error.actual,
        )
    if isinstance(error, ProviderError):
        kind = "provider-timeout" if isinstance(error, ProviderTimeout) else "provider-unavailable"
        return Problem(kind, str(error), provider_id=error.provider_id)
    if isinstance(error, HistoryTooLarge):
        return Problem("too-large", str(error))
    if isinstance(error, IdempotencyConflict):
        return Problem("idempotency-conflict", str(error), headers=_FINAL)
    if isinstance(error, ModelMismatch | WrongEndpoint | AnswerGone):
        return Problem("conflict", str(error), headers=_FINAL)
    if isinstance(error, ConflictError):
        return Problem("conflict", str(error))
    if isinstance(error, InvalidInput):
        return Problem("invalid-input", str(error), errors=[{"loc": [], "msg": str(error)}])
    if isinstance(error, StoreError):
        # The driver's message may name hosts or users: log it, do not send it.
        logger.error("store unavailable: %s", error)
        return Problem(
            "store-unavailable",
            "the session store cannot be reached or failed; try again later",
            headers={"Retry-After": "1"},
        )
    # ConsumedSessionError and the like mean a bug in the server, not bad input.
    logger.error("unexpected llmsession error", exc_info=error)
    return Problem("internal", "the server failed to handle this request; the error was logged")


def validation_problem(errors: Sequence[Any]) -> Problem:
    """A 422 problem from pydantic/FastAPI validation errors, naming each bad location."""
    items: list[dict[str, Any]] = []
    for error in errors:
        loc = [part if isinstance(part, int | str) else str(part) for part in error.get("loc", ())]
        msg = str(error.get("msg", "invalid value"))
        # Errors raised by the core's checkers arrive as "Value error, <the core's text>".
        msg = msg.removeprefix("Value error, ")
        context: object = error.get("ctx")
        if error.get("type") == "json_invalid":
            reason = (
                cast("Mapping[str, object]", context).get("error", "")
                if isinstance(context, Mapping)
                else ""
            )
            if reason and str(reason) not in msg:
                msg = f"{msg}: {reason}"
            msg += "; the body must be a JSON object"
        items.append({"loc": loc, "msg": msg})
    shown = "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in items[:5]
    )
    if len(items) > 5:
        shown += f"; and {len(items) - 5} more"
    return Problem("invalid-input", shown or "invalid request", errors=items)


def _render(problem: Problem) -> JSONResponse:
    return problem_response(problem.kind, problem.detail, headers=problem.headers, **problem.extra)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return _render(exc)


async def _on_llmsession_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LLMSessionError)
    return _render(problem_for(exc))


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: Sequence[Any] = exc.errors()
    # FastAPI hands a route a body not labelled JSON as it is, and then reports the
    # whole body as "not a dictionary": the label is what was wrong.
    if any(tuple(error.get("loc", ()))[:1] == ("body",) for error in errors):
        not_json = content_type_error(request.headers.get("content-type"))
        if not_json is not None:
            errors = [not_json]
    return _render(validation_problem(errors))


def _http_exception_handler(
    allowed_methods: Callable[[str], Sequence[str]],
) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        headers = dict(exc.headers or {})
        status = exc.status_code
        path = request.url.path
        if status == 404:
            what = _NOT_SERVED_PATHS.get(path)
            if what is not None:
                return _render(not_served(what))
            detail = f"no route {path!r}"
            trimmed = path.rstrip("/")
            if trimmed and trimmed != path and allowed_methods(trimmed):
                detail += f"; paths take no trailing slash: {trimmed!r}"
            else:
                detail += "; see /docs"
            return problem_response("not-found", detail, headers=headers)
        if status == 405:
            # The router names the methods of one route; the path may have several.
            allowed = ", ".join(allowed_methods(path)) or headers.pop("Allow", "")
            headers["Allow"] = allowed
            return problem_response(
                "method-not-allowed",
                f"{request.method} is not allowed on {path!r}; allowed: {allowed}",
                headers=headers,
            )
        if status == 413:
            return problem_response("too-large", str(exc.detail), headers=headers)
        if 400 <= status < 500:
            # 400 is a body FastAPI could not read (e.g. not UTF-8): bad input like any other.
            detail = f"{exc.detail}: send a JSON object encoded as UTF-8"
            return problem_response(
                "invalid-input", detail, headers=headers, errors=[{"loc": ["body"], "msg": detail}]
            )
        logger.error("HTTP error %s: %s", status, exc.detail)
        return problem_response("internal", "the server failed to handle this request")

    return on_http_exception


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    return unexpected_error_response(request.method, request.url.path, exc)


def unexpected_error_response(method: str, path: str, error: Exception) -> JSONResponse:
    """Log an error nothing else handled, with its traceback; the 500 problem to answer."""
    logger.error("unhandled error on %s %s", method, path, exc_info=error)
    return problem_response(
        "internal", "the server failed to handle this request; the error was logged"
    )


def response_for(error: Exception, request: Request) -> JSONResponse:
    """The problem response the app's handlers give for ``error`` (for code outside them)."""
    if isinstance(error, Problem):
        return _render(error)
    if isinstance(error, LLMSessionError):
        return _render(problem_for(error))
    if isinstance(error, RequestValidationError):
        return _render(validation_problem(error.errors()))
    return unexpected_error_response(request.method, request.url.path, error)


def install_problem_handlers(
    app: FastAPI, *, allowed_methods: Callable[[str], Sequence[str]]
) -> None:
    """Make every error of ``app`` an application/problem+json response.

    ``allowed_methods`` gives the methods a path serves (the ``Allow`` list of a 405).
    """
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(LLMSessionError, _on_llmsession_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler(allowed_methods))
    app.add_exception_handler(Exception, _on_unexpected)
