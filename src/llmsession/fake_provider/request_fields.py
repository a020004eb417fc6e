"""Reading the fields of a request body, with OpenAI's 400 answers for wrong ones."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import cast

from llmsession.fake_provider.errors import ProviderError, invalid_request
from llmsession.json_text import holds_lone_surrogate

__all__ = [
    "optional_bool",
    "optional_int",
    "optional_str",
    "parse_json_object",
    "required_str",
]


def parse_json_object(raw: bytes) -> dict[str, object]:
    """The request body as a JSON object, or a 400 saying it is not one (nesting too
    deep to read and a lone surrogate, which no answer or log line could write
    again, included)."""
    try:
        body: object = json.loads(raw)
    except (ValueError, RecursionError):
        raise invalid_request(
            "We could not parse the JSON body of your request. The OpenAI API expects a "
            "JSON payload, but what was sent was not valid JSON."
        ) from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    request = cast(dict[str, object], body)
    if holds_lone_surrogate(raw, request):
        raise invalid_request(
            "The request body holds a lone surrogate escape (\\ud800 to \\udfff "
            "without its pair), which is not valid Unicode text."
        )
    return request


def _wrong_type(name: str, expected: str, value: object) -> ProviderError:
    return invalid_request(
        f"Invalid type for '{name}': expected {expected}, but got {type(value).__name__} "
        f"{json.dumps(value)[:60]}.",
        param=name,
        code="invalid_type",
    )


def required_str(body: Mapping[str, object], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise invalid_request(
            f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter"
        )
    if not isinstance(value, str) or not value:
        raise _wrong_type(name, "a non-empty string", value)
    return value


def optional_str(body: Mapping[str, object], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _wrong_type(name, "a string", value)
    return value


def optional_bool(body: Mapping[str, object], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _wrong_type(name, "a boolean", value)
    return value


def optional_int(body: Mapping[str, object], name: str, *, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise _wrong_type(name, "an integer", value)
    if value < minimum:
        raise invalid_request(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    return value
