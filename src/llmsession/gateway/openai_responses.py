"""OpenAI Responses API, sans-IO: ``POST /v1/responses`` through a session.

Two modes, chosen per request by the forwarding layer:

- **provider state** (``previous_response_id``): OpenAI keeps each stored
  response with its whole context, so only the client's new ``input`` goes
  upstream, chained to the session's last response id. Nothing is replayed,
  and OpenAI bills the context as cached input where its cache holds it.
- **replay**: the stored history (every earlier input item and output item)
  followed by the new input, as for Chat Completions. Used when the session
  has no stored response yet, when the client sets ``store: false``, and as
  the fallback when the provider answers that the previous response is gone
  (:func:`previous_response_missing`).

``prompt_cache_key`` is the session id unless the client set one. The history
entries of an answer are its ``output`` items, and a string ``input`` is kept
as the one user message item it stands for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import orjson

from llmsession.gateway.sse import SSEDecoder, SSEEvent, encode_event
from llmsession.gateway.wire import (
    Answer,
    GatewayInputError,
    JSONObject,
    StreamOutcome,
    checked_usage,
    dump_json,
    flag_field,
    json_objects,
    load_json,
    load_json_object,
    load_request,
    model_field,
    object_field,
)
from llmsession.usage import Usage

__all__ = [
    "ResponsesRequest",
    "ResponsesStream",
    "parse_responses_request",
    "parse_responses_response",
    "previous_response_missing",
    "responses_stream_error_event",
    "responses_upstream_body",
    "responses_usage",
]

#: The events that end a response; ``response.incomplete`` (say, at
#: ``max_output_tokens``) is a proper end with a partial answer.
_FINAL_EVENTS: Final = frozenset({"response.completed", "response.incomplete"})
_FAILED_EVENTS: Final = frozenset({"response.failed", "error"})
# What orjson reads is Any; compared with this, it stays so (see openai_chat).
_DICT: Final[Any] = dict


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A client's Responses API request, checked as far as the gateway relies on it."""

    body: JSONObject
    model: str
    #: The new input as history items (a string input becomes one user message).
    input_items: tuple[JSONObject, ...]
    stream: bool
    #: False when the client set ``store: false``: then no provider state can be used.
    store: bool


def parse_responses_request(body: bytes) -> ResponsesRequest:
    """Check a client's body; GatewayInputError names the field that is wrong."""
    request = load_request(body)
    model = model_field(request)
    if request.get("previous_response_id") is not None:
        raise GatewayInputError(
            "'previous_response_id' is kept by llmsession: send only the new input, with "
            "the LLMSession-Id header of the session to continue"
        )
    if request.get("conversation") is not None:
        raise GatewayInputError(
            "'conversation' is not supported through llmsession: its session keeps the "
            "conversation (LLMSession-Id)"
        )
    raw_input = request.get("input", [])
    if isinstance(raw_input, str):
        items: tuple[JSONObject, ...] = ({"type": "message", "role": "user", "content": raw_input},)
    elif isinstance(raw_input, list):
        entries = cast(list[object], raw_input)
        for index, item in enumerate(entries):
            if not isinstance(item, dict):
                raise GatewayInputError(f"'input[{index}]' must be an input item object")
        items = tuple(cast(list[JSONObject], entries))
    else:
        raise GatewayInputError("'input' must be a string or a list of input items")
    return ResponsesRequest(
        body=request,
        model=model,
        input_items=items,
        stream=flag_field(request, "stream", False),
        store=flag_field(request, "store", True),
    )


def responses_upstream_body(
    request: ResponsesRequest,
    history: Sequence[JSONObject],
    *,
    model: str,
    cache_key: str,
    previous_response_id: str | None,
) -> bytes:
    """The body sent upstream: chained to ``previous_response_id``, or replaying ``history``."""
    body = dict(request.body)
    body["model"] = model
    body.setdefault("prompt_cache_key", cache_key)
    if previous_response_id is not None:
        body["previous_response_id"] = previous_response_id
    else:
        items = [*history, *request.input_items]
        if not items:
            raise GatewayInputError("'input' must not be empty when a session has no history")
        body["input"] = items
    return dump_json(body)


def responses_usage(usage: Mapping[str, Any]) -> Usage | None:
    """The Responses API's usage normalized; ``input_tokens`` includes the cached part."""
    details = object_field(usage, "input_tokens_details") or {}
    output = object_field(usage, "output_tokens_details") or {}
    return checked_usage(
        input_tokens=usage.get("input_tokens"),
        cached_input_tokens=details.get("cached_tokens") or 0,
        output_tokens=usage.get("output_tokens"),
        reasoning_tokens=output.get("reasoning_tokens") or 0,
        raw=usage,
    )


def parse_responses_response(body: bytes) -> Answer:
    """A complete (non-streamed) upstream response object."""
    return _answer(load_json_object(body, "the provider's answer"))


def _answer(response: Mapping[str, Any]) -> Answer:
    usage = object_field(response, "usage")
    response_id = response.get("id")
    return Answer(
        items=tuple(json_objects(response.get("output"))),
        usage=None if usage is None else responses_usage(usage),
        response_id=response_id if isinstance(response_id, str) else None,
    )


def previous_response_missing(status: int, body: bytes) -> bool:
    """Whether an upstream error says the chained response is gone (replay instead)."""
    if status not in (400, 404):
        return False
    try:
        answer = load_json_object(body, "the provider's error")
    except GatewayInputError:
        return False
    error = object_field(answer, "error") or {}
    return error.get("code") == "previous_response_not_found"


class ResponsesStream:
    """Passes a Responses API stream through, reading usage and the answer on the side."""

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._final: Answer | None = None
        self._partial_usage: Usage | None = None
        self._items: dict[int, JSONObject] = {}
        self._response_id: str | None = None
        self._error: JSONObject | None = None
        self._tail: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Decode ``chunk``; every event is forwarded as it came.

        The closing event (``response.completed`` or ``response.incomplete``) and
        anything after it are held back for :meth:`close`.
        """
        forward: list[bytes] = []
        for event in self._decoder.feed(chunk):
            self._read(event)
            (self._tail if self._final is not None else forward).append(event.raw)
        return forward

    def close(self) -> StreamOutcome:
        """The upstream stream ended: what it carried, and whether it reached its end."""
        for event in self._decoder.close():
            self._read(event)
            self._tail.append(event.raw)
        if self._final is not None:
            return StreamOutcome(
                answer=self._final, completed=self._error is None, tail=b"".join(self._tail)
            )
        items = tuple(self._items[i] for i in sorted(self._items))
        answer = Answer(items=items, usage=self._partial_usage, response_id=self._response_id)
        return StreamOutcome(
            answer=answer, completed=False, error=self._error, tail=b"".join(self._tail)
        )

    def _read(self, event: SSEEvent) -> None:
        try:
            # Read fast first: most events (the text's deltas) carry nothing kept.
            glance: Any = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            pass
        else:
            if type(glance) is not _DICT:
                return
            kind = glance.get("type", event.event)
            if (
                type(glance.get("response")) is not _DICT
                and kind not in _FAILED_EVENTS
                and kind != "response.output_item.done"
            ):
                return
        # What is kept is read exactly (see load_json).
        try:
            value: object = load_json(event.data)
        except ValueError:
            return
        if not isinstance(value, dict):
            return
        data = cast(JSONObject, value)
        kind = data.get("type", event.event)
        response = object_field(data, "response")
        if response is not None:
            if isinstance(response.get("id"), str):
                self._response_id = response["id"]
            usage = object_field(response, "usage")
            if usage is not None:
                self._partial_usage = responses_usage(usage)
        if kind in _FINAL_EVENTS and response is not None:
            self._final = _answer(response)
        elif kind in _FAILED_EVENTS:
            self._error = (
                object_field(data, "error") or object_field(response or {}, "error") or data
            )
        elif kind == "response.output_item.done":
            item = object_field(data, "item")
            index = data.get("output_index")
            if item is not None and isinstance(index, int):
                self._items[index] = item


def responses_stream_error_event(message: str, *, code: str = "upstream_stream_cut") -> bytes:
    """The event that ends a client's stream as an error, as the Responses API words it."""
    error = {"type": "error", "code": code, "message": message, "param": None}
    return encode_event(dump_json(error).decode(), event="error")
