"""OpenAI's error answers: ``{"error": {"message", "type", "param", "code"}}`` with a status.

Each constructor below is one error the fake gives, worded and typed as OpenAI's
API words and types it, so a client's error handling meets what it meets in
production (the official SDK maps the status to its exception class).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ProviderError",
    "invalid_request",
    "missing_api_key",
    "not_found_route",
    "previous_response_not_found",
    "rate_limited",
    "server_error",
    "wrong_api_key",
]


@dataclass(eq=False)
class ProviderError(Exception):
    """An error answer: the HTTP status, the error object's four fields, extra headers."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict[str, str])

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid_request(
    message: str, *, param: str | None = None, code: str | None = None
) -> ProviderError:
    return ProviderError(400, message, "invalid_request_error", param, code)


def missing_api_key() -> ProviderError:
    return ProviderError(
        401,
        "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "invalid_request_error",
    )


def wrong_api_key() -> ProviderError:
    # OpenAI echoes a masked key; the fake echoes none of it.
    return ProviderError(
        401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key"
    )


def previous_response_not_found(response_id: str) -> ProviderError:
    return ProviderError(
        400,
        f"Previous response with id '{response_id}' not found.",
        "invalid_request_error",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def rate_limited(retry_after_seconds: float) -> ProviderError:
    return ProviderError(
        429,
        "Rate limit reached for requests. Please try again later.",
        "requests",
        code="rate_limit_exceeded",
        headers={
            "retry-after": str(max(0, round(retry_after_seconds))),
            "retry-after-ms": str(max(0, round(retry_after_seconds * 1000))),
        },
    )


def server_error() -> ProviderError:
    return ProviderError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
    )


def not_found_route(method: str, path: str) -> ProviderError:
    return ProviderError(404, f"Invalid URL ({method} {path})", "invalid_request_error")
