"""What every wire format module shares: JSON bodies, answers, stream outcomes.

A wire module is sans-IO (as h11 is for HTTP/1.1): it turns a client's request
body plus the stored history into the upstream body, and the provider's body or
stream into bytes for the client plus one normalized :class:`Usage`. It never
touches a socket, a store or a clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias, cast

import orjson

from llmsession.errors import InvalidInput
from llmsession.json_text import holds_lone_surrogate
from llmsession.usage import Usage

__all__ = [
    "Answer",
    "GatewayInputError",
    "JSONFloat",
    "JSONObject",
    "StreamOutcome",
    "StreamTranslator",
    "checked_usage",
    "dump_json",
    "flag_field",
    "holds_float",
    "json_objects",
    "load_dumped",
    "load_event",
    "load_json",
    "load_json_object",
    "load_request",
    "model_field",
    "object_field",
    "read_answer",
]

JSONObject: TypeAlias = dict[str, Any]


class GatewayInputError(InvalidInput):
    """A gateway request body that the provider's wire format does not allow."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What one complete upstream answer adds to a session.

    ``items`` are the history entries the answer adds (the assistant message, or
    the Responses API's output items); ``usage`` is None when the provider sent
    none; ``response_id`` is the provider's id of a stored response, if any.
    """

    items: tuple[JSONObject, ...]
    usage: Usage | None
    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class StreamOutcome:
    """How a stream ended: the answer it carried, and whether it ended properly.

    A stream that did not reach its end marker (``[DONE]``, ``response.completed``)
    is ``completed=False``: its answer is not added to the history, and its usage
    is whatever the provider did send.
    """

    answer: Answer
    completed: bool
    #: The provider's own error, when the stream ended with one.
    error: JSONObject | None = None
    #: The stream's closing events, held back by ``feed``: the forwarding layer
    #: commits the round first, so a client that saw the end can rely on it.
    tail: bytes = b""


class StreamTranslator(Protocol):
    """Feed upstream bytes as they arrive; forward what ``feed`` returns at once."""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The bytes to send the client now, one SSE event each (closing events held back)."""
        ...

    def close(self) -> StreamOutcome:
        """The upstream stream ended (or was cut): what it carried."""
        ...


def checked_usage(
    *,
    input_tokens: object,
    output_tokens: object,
    cached_input_tokens: object = 0,
    cache_write_tokens: object = 0,
    reasoning_tokens: object = 0,
    raw: Mapping[str, Any],
) -> Usage | None:
    """A Usage of these counts, or None if any is missing or not a token count."""
    try:
        return Usage(
            input_tokens=cast(int, input_tokens),
            cached_input_tokens=cast(int, cached_input_tokens),
            cache_write_tokens=cast(int, cache_write_tokens),
            output_tokens=cast(int, output_tokens),
            reasoning_tokens=cast(int, reasoning_tokens),
            raw=dict(raw),
        )
    except InvalidInput:
        return None


def model_field(request: Mapping[str, Any]) -> str:
    """The request's ``model``: a non-empty string, or GatewayInputError."""
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayInputError("'model' must be a non-empty string, e.g. 'openai/gpt-4o-mini'")
    return model


def flag_field(request: Mapping[str, Any], name: str, default: bool) -> bool:
    """The request's boolean ``name`` (absent or null: ``default``), or GatewayInputError."""
    value = request.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise GatewayInputError(f"'{name}' must be true or false, got {value!r}")
    return value


class JSONFloat(float):
    """A float that :func:`dump_json` must leave to the standard library to write.

    orjson writes every other float as ``repr`` does (and so as ``json.dumps``),
    but NaN and the infinities as ``null`` and floats under 1e-4 in another
    spelling (``1e-7`` for ``1e-07``, or without an exponent); it refuses float
    subclasses, so :func:`load_json` makes these ones of this class and
    :func:`dump_json` falls back to ``json.dumps`` for a value holding one.
    """

    __slots__ = ()


def _parse_float(text: str) -> float:
    value = float(text)
    # NaN fails both comparisons; 0.0 and -0.0 are written alike by both libraries.
    if value == 0.0 or 1e-4 <= abs(value) < math.inf:
        return value
    return JSONFloat(value)


def _parse_constant(name: str) -> float:
    # NaN, Infinity, -Infinity: float() reads each of them.
    return JSONFloat(name)


# json.loads's own decoder but for the floats that orjson would write differently.
# (A float literal is rare in what the gateway reads, so the hook costs next to nothing.)
_decode: Final = json.JSONDecoder(parse_float=_parse_float, parse_constant=_parse_constant).decode


def load_json(text: str | bytes) -> Any:
    """``json.loads(text)``, every value alike, so what :func:`dump_json` writes of it is
    what ``json.dumps`` would (see :class:`JSONFloat`)."""
    if isinstance(text, str):
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _decode(text)
    # As json.loads decodes bytes (UTF-8, -16 or -32; a UTF-8 BOM is skipped).
    return _decode(text.decode(json.detect_encoding(text), "surrogatepass"))


def load_event(text: str | bytes) -> Any:
    """An event's JSON read fast, for the strings in it: orjson, which reads an
    integer beyond 64 bits as a float; :func:`load_json` reads what orjson refuses.

    Only for what a translator takes strings and small counters from (an answer's
    text); numbers kept verbatim (a usage object) are read again with
    :func:`load_json`.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return load_json(text)


def load_dumped(text: str) -> Any:
    """JSON that :func:`dump_json` wrote (a stored turn's items), read so that
    dump_json writes it back byte for byte; other JSON as :func:`load_json` reads it.

    A session's history is read again on every turn, and orjson reads it some
    three times faster than json. Where what orjson read does not write back the
    same (an integer beyond 64 bits, a float dump_json left to json, text that
    dump_json did not write), :func:`load_json` reads it instead.
    """
    try:
        value = orjson.loads(text)
        # (Nesting orjson reads but will not write, deeper than 254, is a TypeError.)
        if orjson.dumps(value, option=_ORJSON_OPTIONS) == text.encode():
            return value
    except (orjson.JSONDecodeError, TypeError):
        pass
    return load_json(text)


def holds_float(value: object) -> bool:
    """Whether ``value`` holds a float anywhere: where what :func:`load_event` read may
    differ from what :func:`load_json` would (an integer beyond 64 bits, a float
    that dump_json leaves to json)."""
    if type(value) is float:
        return True
    if type(value) is dict:
        return any(holds_float(item) for item in cast(dict[str, object], value).values())
    if type(value) is list or type(value) is tuple:
        return any(holds_float(item) for item in cast(Sequence[object], value))
    return False


def load_json_object(body: bytes, what: str) -> JSONObject:
    """``body`` parsed as one JSON object, or GatewayInputError naming ``what``."""
    try:
        value: object = load_json(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise GatewayInputError(f"{what} must be a JSON object: {error}") from None
    if not isinstance(value, dict):
        raise GatewayInputError(f"{what} must be a JSON object, got {type(value).__name__}")
    return cast(JSONObject, value)


def load_request(body: bytes) -> JSONObject:
    """A client's request body: one JSON object, or GatewayInputError.

    Besides what :func:`load_json_object` refuses, this refuses what ``json`` reads but
    no request could carry on: nesting too deep to be read (a RecursionError), and a
    lone surrogate escape (``"\\ud800"`` without its pair), which is no Unicode text,
    so that :func:`dump_json` cannot write the upstream body or the stored items.
    Only a body that holds a surrogate escape (or is not UTF-8) is written out to
    check it.
    """
    try:
        request = load_json_object(body, "the request body")
    except RecursionError:
        raise GatewayInputError(
            "the request body is nested too deeply to be read; send less deeply nested JSON"
        ) from None
    try:
        lone = holds_lone_surrogate(body, request)
    except RecursionError:
        raise GatewayInputError(
            "the request body is nested too deeply to be written again; send less "
            "deeply nested JSON"
        ) from None
    if lone:
        raise GatewayInputError(
            "the request body holds a lone surrogate escape (\\ud800 to \\udfff "
            "without its pair), which is no Unicode text: escape a character beyond "
            "U+FFFF as a surrogate pair, or send it as UTF-8"
        )
    return request


#: What a wire format keeps of a complete answer: its history items and its usage object.
KeptAnswer: TypeAlias = tuple[tuple[JSONObject, ...], JSONObject | None]


def read_answer(
    body: bytes,
    keep: Callable[[JSONObject], KeptAnswer],
    normalize: Callable[[JSONObject], Usage | None],
) -> Answer:
    """A complete (non-streamed) upstream answer: ``keep`` takes what the history keeps
    and the usage object from the parsed body, ``normalize`` reads that usage.

    Read fast with orjson; what is kept is read again exactly (with json) should it
    hold a number orjson may have read otherwise. A body that is no JSON object is
    GatewayInputError.
    """
    try:
        response = load_event(body)
    except ValueError:
        response = None
    if type(response) is dict:
        items, usage = keep(cast(JSONObject, response))
        if not holds_float(usage) and not holds_float(items):
            return Answer(items=items, usage=None if usage is None else normalize(usage))
    items, usage = keep(load_json_object(body, "the provider's answer"))
    return Answer(items=items, usage=None if usage is None else normalize(usage))


def object_field(value: Mapping[str, Any], name: str) -> JSONObject | None:
    """``value[name]`` if it is a JSON object, else None."""
    field = value.get(name)
    return cast(JSONObject, field) if isinstance(field, dict) else None


def json_objects(value: object) -> list[JSONObject]:
    """The JSON objects in a list (other entries skipped); [] for anything else."""
    if not isinstance(value, list):
        return []
    return [cast(JSONObject, item) for item in cast(list[object], value) if isinstance(item, dict)]


# Subclasses of str, int, dict and list, dataclasses and datetimes are refused as
# json.dumps refuses them or writes them in its own way: the fallback decides.
_ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def dump_json(value: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """Compact JSON, as the upstream body or a stored item.

    The bytes of ``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``
    encoded as UTF-8, written by orjson (the upstream body of a long session is
    the largest JSON the gateway writes, once per turn, and orjson writes it some
    thirty times faster). What orjson refuses, json writes (or refuses) as before:
    integers beyond 64 bits, keys that are not strings, lone surrogates, nesting
    deeper than 254, a :class:`JSONFloat`, a subclass of a JSON type.
    """
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
