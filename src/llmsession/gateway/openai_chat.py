"""OpenAI Chat Completions, sans-IO: ``POST /v1/chat/completions`` through a session.

The client sends only its new ``messages``; the upstream request is the
client's own body with ``messages`` = the session's history followed by them,
``model`` = the provider's model name, and ``prompt_cache_key`` = the session
id unless the client set one (OpenAI routes requests with one key to the same
cache, so the replayed history is read from its prefix cache). A streamed
request always asks upstream for usage (``stream_options.include_usage``), and
the usage-only chunk is dropped again when the client did not ask for it.

The history entry of an answer is its first choice's assistant message, kept
to the fields a request may send back (role, content, refusal, tool_calls,
function_call, audio id).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import orjson

from llmsession.gateway.sse import SSEDecoder, encode_event
from llmsession.gateway.wire import (
    Answer,
    GatewayInputError,
    JSONObject,
    StreamOutcome,
    checked_usage,
    dump_json,
    flag_field,
    holds_float,
    json_objects,
    load_event,
    load_json,
    load_request,
    model_field,
    object_field,
    read_answer,
)
from llmsession.usage import Usage

__all__ = [
    "ChatRequest",
    "ChatStream",
    "chat_upstream_body",
    "chat_usage",
    "parse_chat_request",
    "parse_chat_response",
    "stream_error_event",
]

_DONE: Final = b"[DONE]"
# What orjson reads is Any; compared with these, it stays so (pyright would narrow
# it to a dict or list of Unknown) without a cast() call for every field of every event.
_DICT: Final[Any] = dict
_LIST: Final[Any] = list
_NO_DELTA: Final[JSONObject] = {}


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A client's Chat Completions request, checked as far as the gateway relies on it."""

    body: JSONObject
    model: str
    messages: tuple[JSONObject, ...]
    stream: bool
    #: The client asked for the usage chunk (``stream_options.include_usage``).
    client_wants_usage: bool


def parse_chat_request(body: bytes) -> ChatRequest:
    """Check a client's body; GatewayInputError names the field that is wrong."""
    request = load_request(body)
    model = model_field(request)
    raw_messages = request.get("messages")
    if not isinstance(raw_messages, list):
        raise GatewayInputError("'messages' must be a list of message objects")
    messages = cast(list[object], raw_messages)
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(
            cast(JSONObject, message).get("role"), str
        ):
            raise GatewayInputError(
                f"'messages[{index}]' must be an object with a string 'role' "
                "(system, developer, user, assistant or tool)"
            )
    stream = flag_field(request, "stream", False)
    options = request.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise GatewayInputError("'stream_options' must be an object")
    wants_usage = (
        isinstance(options, dict) and cast(JSONObject, options).get("include_usage") is True
    )
    return ChatRequest(
        body=request,
        model=model,
        messages=tuple(cast(list[JSONObject], messages)),
        stream=stream,
        client_wants_usage=wants_usage,
    )


def chat_upstream_body(
    request: ChatRequest, history: Sequence[JSONObject], *, model: str, cache_key: str
) -> bytes:
    """The body sent upstream: the history, then the client's new messages."""
    messages = [*history, *request.messages]
    if not messages:
        raise GatewayInputError("'messages' must not be empty when a session has no history")
    body = dict(request.body)
    body["model"] = model
    body["messages"] = messages
    body.setdefault("prompt_cache_key", cache_key)
    if request.stream:
        options = dict(object_field(request.body, "stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    return dump_json(body)


def chat_usage(usage: Mapping[str, Any]) -> Usage | None:
    """OpenAI's usage object normalized; ``prompt_tokens`` already includes the cached part.

    None if it lacks a count or holds one that is no token count: no number is
    made up for what the provider did not say.
    """
    prompt = object_field(usage, "prompt_tokens_details") or {}
    completion = object_field(usage, "completion_tokens_details") or {}
    return checked_usage(
        input_tokens=usage.get("prompt_tokens"),
        cached_input_tokens=prompt.get("cached_tokens") or 0,
        output_tokens=usage.get("completion_tokens"),
        reasoning_tokens=completion.get("reasoning_tokens") or 0,
        raw=usage,
    )


def parse_chat_response(body: bytes) -> Answer:
    """A complete (non-streamed) upstream answer."""
    return read_answer(body, _chat_answer, chat_usage)


def _chat_answer(response: JSONObject) -> tuple[tuple[JSONObject, ...], JSONObject | None]:
    """What an answer keeps: its message as the history holds it, and its usage object."""
    choices = json_objects(response.get("choices"))
    message = object_field(choices[0], "message") if choices else None
    items = () if message is None else (_history_message(message),)
    return items, object_field(response, "usage")


def _history_message(message: Mapping[str, Any]) -> JSONObject:
    kept: JSONObject = {"role": message.get("role", "assistant"), "content": message.get("content")}
    for name in ("refusal", "tool_calls", "function_call"):
        if message.get(name) is not None:
            kept[name] = message[name]
    audio = object_field(message, "audio")
    if audio is not None and "id" in audio:
        kept["audio"] = {"id": audio["id"]}
    return kept


class ChatStream:
    """Passes a Chat Completions stream through, reading usage and the answer on the side."""

    def __init__(self, *, client_wants_usage: bool) -> None:
        self._decoder = SSEDecoder()
        self._client_wants_usage = client_wants_usage
        self._usage: Usage | None = None
        self._done = False
        self._error: JSONObject | None = None
        self._role = "assistant"
        self._content: list[str] = []
        self._refusal: list[str] = []
        self._tool_calls: dict[int, JSONObject] = {}
        #: Each call's name and arguments as they arrive, joined once at the end.
        self._call_pieces: dict[tuple[int, str], list[str]] = {}
        #: The legacy ``function_call``'s (``functions``) name and arguments, likewise.
        self._function_pieces: dict[str, list[str]] | None = None
        self._saw_message = False
        self._tail: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Decode ``chunk``; return the events to forward now, byte for byte.

        ``[DONE]`` (and anything after it) is held back for :meth:`close`.
        """
        forward: list[bytes] = []
        for data, raw in self._decoder.feed_data(chunk):
            if self._keep(data):
                (self._tail if self._done else forward).append(raw)
        return forward

    def close(self) -> StreamOutcome:
        """The upstream stream ended: what it carried, and whether it reached ``[DONE]``."""
        for event in self._decoder.close():
            if self._keep(event.data.encode()):
                self._tail.append(event.raw)
        items = (self._message(),) if self._saw_message else ()
        return StreamOutcome(
            answer=Answer(items=items, usage=self._usage),
            completed=self._done and self._error is None,
            error=self._error,
            tail=b"".join(self._tail),
        )

    def _keep(self, data: bytes) -> bool:
        """Read one event's data; whether the client gets the event.

        Every event of every stream passes here: the checks are written out rather
        than made through the wire module's helpers, and what orjson read is not
        cast (Any) field by field.
        """
        if data == _DONE:
            self._done = True
            return True
        try:
            chunk: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            # Not UTF-8, or what orjson refuses: read as SSEEvent.data (a str) is.
            try:
                chunk = load_event(data.decode("utf-8", errors="replace"))
            except ValueError:
                return True
        if type(chunk) is not _DICT:
            return True
        error = chunk.get("error")
        if type(error) is _DICT:
            self._error = error
            return True
        usage: Any = chunk.get("usage")
        if type(usage) is _DICT:
            if holds_float(usage):
                # Kept verbatim: read exactly what orjson may have read otherwise.
                usage = load_json(data.decode("utf-8", errors="replace"))["usage"]
            self._usage = chat_usage(usage)
        else:
            usage = None
        choices = chunk.get("choices")
        has_choice = False
        if type(choices) is _LIST:
            for choice in choices:
                if type(choice) is _DICT:
                    has_choice = True
                    if choice.get("index", 0) == 0:
                        delta = choice.get("delta")
                        if type(delta) is not _DICT:
                            delta = _NO_DELTA
                        self._saw_message = True
                        # Most deltas are a piece of the text alone.
                        content = delta.get("content")
                        if type(content) is str:
                            self._content.append(content)
                            if len(delta) > 1:
                                self._add_fields(delta)
                        elif delta:
                            self._add_fields(delta)
        # The usage-only chunk exists because the gateway asked for it.
        return self._client_wants_usage or usage is None or has_choice

    def _add_fields(self, delta: JSONObject) -> None:
        """A delta's fields but its text."""
        role = delta.get("role")
        if type(role) is str:
            self._role = role
        refusal = delta.get("refusal")
        if type(refusal) is str:
            self._refusal.append(refusal)
        calls = delta.get("tool_calls")
        if calls is not None:
            self._add_tool_calls(calls)
        function = object_field(delta, "function_call")
        if function is not None:
            pieces = self._function_pieces
            if pieces is None:
                pieces = self._function_pieces = {"name": [], "arguments": []}
            for part in ("name", "arguments"):
                piece = function.get(part)
                if isinstance(piece, str):
                    pieces[part].append(piece)

    def _add_tool_calls(self, calls: object) -> None:
        for call in json_objects(calls):
            index = call.get("index", 0)
            merged = self._tool_calls.setdefault(
                index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            if call.get("id") is not None:
                merged["id"] = call["id"]
            if call.get("type") is not None:
                merged["type"] = call["type"]
            function = object_field(call, "function") or {}
            for part in ("name", "arguments"):
                if isinstance(function.get(part), str):
                    self._call_pieces.setdefault((index, part), []).append(function[part])

    def _message(self) -> JSONObject:
        for (index, part), pieces in self._call_pieces.items():
            self._tool_calls[index]["function"][part] = "".join(pieces)
        self._call_pieces.clear()
        calls = self._tool_calls or self._function_pieces is not None
        message: JSONObject = {
            "role": self._role,
            "content": "".join(self._content) if self._content or not calls else None,
        }
        if self._refusal:
            message["refusal"] = "".join(self._refusal)
        if self._tool_calls:
            message["tool_calls"] = [self._tool_calls[i] for i in sorted(self._tool_calls)]
        if self._function_pieces is not None:
            message["function_call"] = {
                part: "".join(pieces) for part, pieces in self._function_pieces.items()
            }
        return message


def stream_error_event(message: str, *, code: str = "upstream_stream_cut") -> bytes:
    """The event that ends a client's stream as an error, as OpenAI words errors."""
    error = {"error": {"message": message, "type": "server_error", "param": None, "code": code}}
    return encode_event(dump_json(error).decode())
