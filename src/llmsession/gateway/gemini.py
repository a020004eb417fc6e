"""Google's Gemini API (``generateContent``), sans-IO: a conversation through a session.

The client sends only its new ``contents``; the model is named in the URL
(``models/{model}:generateContent``), so the request body has none. The
upstream body is the client's own body with ``contents`` = the session's
history followed by the new ones, or, when the session's history is held in a
``cachedContents`` entry (see :mod:`llmsession.gateway.gemini_cache`),
``cachedContent`` = that entry and ``contents`` = only the history the entry
does not hold, then the new ones. Gemini refuses ``systemInstruction``,
``tools`` and ``toolConfig`` beside a ``cachedContent`` (they are part of the
entry), so they are dropped from such a request; the entry is used only when
the request's own three equal the entry's (:func:`fixed_digest`).

``systemInstruction``, ``tools``, ``toolConfig``, ``generationConfig`` and
``safetySettings`` are per request, as in Gemini's own API: they are not
stored with the history, and a later request that wants them sends them again
(the SDK's ``config`` does). A client may not send ``cachedContent`` itself:
the session's entry is llmsession's.

The history entry of an answer is its first candidate's ``content`` (role
``model``). Usage: ``promptTokenCount`` already includes
``cachedContentTokenCount``; thoughts are billed as output but counted apart
from ``candidatesTokenCount``; tool-use prompt tokens apart from
``promptTokenCount`` (:func:`gemini_usage`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import quote

import orjson

from llmsession.gateway.sse import SSEDecoder, encode_event
from llmsession.gateway.wire import (
    Answer,
    GatewayInputError,
    JSONObject,
    StreamOutcome,
    checked_usage,
    dump_json,
    holds_float,
    json_objects,
    load_event,
    load_json,
    load_json_object,
    load_request,
    object_field,
    read_answer,
)
from llmsession.usage import Usage

__all__ = [
    "API_VERSION",
    "CacheRef",
    "CreatedCache",
    "GeminiRequest",
    "GeminiStream",
    "cache_create_body",
    "cache_ttl_body",
    "cached_content_missing",
    "fixed_digest",
    "gemini_stream_error_event",
    "gemini_upstream_body",
    "gemini_upstream_path",
    "gemini_usage",
    "parse_cache_created",
    "parse_gemini_request",
    "parse_gemini_response",
]

#: The API version spoken upstream, whichever the client named: ``cachedContents``
#: and ``cachedContent`` references are v1beta's.
API_VERSION: Final = "v1beta"

# What orjson reads is Any; compared with these, it stays so (as in openai_chat).
_DICT: Final[Any] = dict
_LIST: Final[Any] = list

#: The request fields that a ``cachedContents`` entry holds, and that a request
#: referencing one must therefore leave out.
_FIXED_FIELDS: Final = ("systemInstruction", "tools", "toolConfig")


@dataclass(frozen=True, slots=True)
class GeminiRequest:
    """A client's ``generateContent`` request, checked as far as the gateway relies on it."""

    body: JSONObject
    model: str
    contents: tuple[JSONObject, ...]
    stream: bool


@dataclass(frozen=True, slots=True)
class CacheRef:
    """A ``cachedContents`` entry holding the first ``items`` entries of a session's history."""

    name: str
    items: int

    def encode(self) -> str:
        return dump_json({"name": self.name, "items": self.items}).decode()

    @classmethod
    def decode(cls, text: str | None) -> CacheRef | None:
        """The reference ``encode`` wrote, or None for anything else."""
        if not text:
            return None
        try:
            value: object = load_json(text)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        fields = cast(JSONObject, value)
        name, items = fields.get("name"), fields.get("items")
        if not isinstance(name, str) or type(items) is not int or items < 0:
            return None
        return cls(name, items)


def parse_gemini_request(body: bytes, *, model: str | None, stream: bool) -> GeminiRequest:
    """Check a client's body; GatewayInputError names the field that is wrong."""
    if not model:
        raise GatewayInputError(
            "the URL must name the model: POST /v1beta/models/{model}:generateContent, e.g. "
            "models/gemini/gemini-2.5-flash:generateContent for provider 'gemini'"
        )
    request = load_request(body)
    raw_contents = request.get("contents")
    if not isinstance(raw_contents, list):
        raise GatewayInputError("'contents' must be a list of Content objects")
    contents = cast(list[object], raw_contents)
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(
            cast(JSONObject, content).get("parts"), list
        ):
            raise GatewayInputError(
                f"'contents[{index}]' must be an object with a list of 'parts' "
                "(and a 'role': user or model)"
            )
        role = cast(JSONObject, content).get("role")
        if role is not None and not isinstance(role, str):
            raise GatewayInputError(f"'contents[{index}].role' must be a string: user or model")
    if request.get("cachedContent") is not None:
        raise GatewayInputError(
            "'cachedContent' is not accepted: llmsession keeps each session's history in "
            "a cached content entry of its own; send only the new contents"
        )
    for name in (*_FIXED_FIELDS, "generationConfig"):
        value = request.get(name)
        if value is not None and not isinstance(value, dict | list):
            raise GatewayInputError(f"'{name}' must be an object (tools: a list), got {value!r}")
    return GeminiRequest(
        body=request,
        model=model,
        contents=tuple(cast(list[JSONObject], contents)),
        stream=stream,
    )


def fixed_digest(body: Mapping[str, Any]) -> str:
    """A digest of what a cached content entry fixes: the system instruction and tools."""
    fixed = {name: body[name] for name in _FIXED_FIELDS if body.get(name) is not None}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:32]


def gemini_upstream_path(model: str, *, stream: bool) -> str:
    """The path of the generation request, appended to the provider's base_url."""
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/{API_VERSION}/models/{quote(model, safe='-._~')}:{method}"


def gemini_upstream_body(
    request: GeminiRequest, history: Sequence[JSONObject], cache: CacheRef | None
) -> bytes:
    """The body sent upstream: the history (or the entry holding it), then the new contents."""
    body = dict(request.body)
    if cache is not None and cache.items <= len(history):
        body["cachedContent"] = cache.name
        for name in _FIXED_FIELDS:
            body.pop(name, None)
        contents = [*history[cache.items :], *request.contents]
    else:
        contents = [*history, *request.contents]
    if not contents and cache is None:
        raise GatewayInputError("'contents' must not be empty when a session has no history")
    body["contents"] = contents
    return dump_json(body)


def gemini_usage(metadata: Mapping[str, Any]) -> Usage | None:
    """Gemini's ``usageMetadata`` normalized; None without a ``promptTokenCount``.

    ``promptTokenCount`` already includes ``cachedContentTokenCount`` (adding it
    would count the cached part twice). Thoughts are billed as output but are
    not in ``candidatesTokenCount``, so output = candidates + thoughts, with the
    thoughts as reasoning; tool-use prompt tokens (results of Google's own
    tools) are input not in ``promptTokenCount``. Gemini leaves out counts that
    are zero, so an absent count other than ``promptTokenCount`` is 0.
    """
    prompt = metadata.get("promptTokenCount")
    candidates = metadata.get("candidatesTokenCount", 0)
    thoughts = metadata.get("thoughtsTokenCount", 0)
    tool_use = metadata.get("toolUsePromptTokenCount", 0)
    if not all(type(count) is int for count in (prompt, candidates, thoughts, tool_use)):
        return None
    return checked_usage(
        input_tokens=cast(int, prompt) + cast(int, tool_use),
        cached_input_tokens=metadata.get("cachedContentTokenCount", 0),
        output_tokens=cast(int, candidates) + cast(int, thoughts),
        reasoning_tokens=thoughts,
        raw=metadata,
    )


def parse_gemini_response(body: bytes) -> Answer:
    """A complete (non-streamed) ``GenerateContentResponse``."""
    return read_answer(body, _gemini_answer, gemini_usage)


def _gemini_answer(response: JSONObject) -> tuple[tuple[JSONObject, ...], JSONObject | None]:
    """What an answer keeps: its first candidate's content as the history holds it, and
    its ``usageMetadata``."""
    candidates = json_objects(response.get("candidates"))
    content = object_field(candidates[0], "content") if candidates else None
    items = () if content is None else (_history_content(content),)
    return items, object_field(response, "usageMetadata")


def _history_content(content: Mapping[str, Any]) -> JSONObject:
    return {"role": content.get("role") or "model", "parts": json_objects(content.get("parts"))}


class GeminiStream:
    """Passes a ``streamGenerateContent?alt=sse`` stream through, reading usage and the
    answer on the side.

    Every event is a whole ``GenerateContentResponse``. ``usageMetadata`` may come
    with several of them, each time the running total: the last one counts, they
    are never added. A stream has no end marker of its own: it is complete when a
    candidate carries a ``finishReason`` (or the prompt was blocked), and that
    event, with anything after it, is held back until the round is committed.
    """

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        #: The last ``usageMetadata`` seen, read exactly (should it hold a float)
        #: and normalized only at the end: each one replaces the one before, so
        #: only the last is worth it. With the event's data, if it was read fast.
        self._metadata: JSONObject | None = None
        self._metadata_data: bytes | None = None
        self._finished = False
        self._error: JSONObject | None = None
        self._role = "model"
        self._parts: list[JSONObject] = []
        #: The pieces of the last part's text while it is plain text (one run of it).
        self._run: list[str] | None = None
        self._saw_content = False
        self._tail: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Decode ``chunk``; return the events to forward now, byte for byte."""
        forward: list[bytes] = []
        for data, raw in self._decoder.feed_data(chunk):
            self._read(data)
            (self._tail if self._finished else forward).append(raw)
        return forward

    def close(self) -> StreamOutcome:
        """The upstream stream ended: what it carried, and whether it finished."""
        for event in self._decoder.close():
            self._read(event.data.encode())
            self._tail.append(event.raw)
        self._end_run()
        items = ({"role": self._role, "parts": self._parts},) if self._saw_content else ()
        metadata = self._metadata
        if metadata is not None and self._metadata_data is not None and holds_float(metadata):
            metadata = object_field(_load_exactly(self._metadata_data), "usageMetadata")
        return StreamOutcome(
            answer=Answer(items=items, usage=None if metadata is None else gemini_usage(metadata)),
            completed=self._finished and self._error is None,
            error=self._error,
            tail=b"".join(self._tail),
        )

    def _read(self, data: bytes) -> None:
        """Read one event's data.

        Every event of a stream passes here: it is read fast (orjson), and read
        again exactly (json) only when what is kept of it holds a float (its usage
        metadata: only the last one, in close()). The checks are written out rather
        than made through the wire module's helpers, as ChatStream's are.
        """
        try:
            chunk: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            # Not UTF-8, or what orjson refuses: read as SSEEvent.data (a str) is.
            try:
                chunk = load_event(data.decode("utf-8", errors="replace"))
            except ValueError:
                return
        if type(chunk) is not _DICT:
            return
        error = chunk.get("error")
        if type(error) is _DICT:
            if holds_float(error):
                error = _load_exactly(data)["error"]
            self._error = error
            return
        first, content = _first_content(chunk)
        exact = content is not None and _holds_float_parts(content)
        if exact:
            chunk = _load_exactly(data)
            first, content = _first_content(chunk)
        metadata = chunk.get("usageMetadata")
        if type(metadata) is _DICT:
            self._metadata = metadata
            self._metadata_data = None if exact else data
        feedback = chunk.get("promptFeedback")
        if type(feedback) is _DICT and feedback.get("blockReason"):
            self._finished = True
        if first is None:
            return
        if content is not None:
            self._add(content)
        if first.get("finishReason"):
            self._finished = True

    def _add(self, content: Mapping[str, Any]) -> None:
        self._saw_content = True
        role = content.get("role")
        if type(role) is str:
            self._role = role
        parts = content.get("parts")
        if type(parts) is not list:
            return
        for part in cast(list[object], parts):
            if type(part) is not dict:
                continue
            entry = cast(JSONObject, part)
            text = entry.get("text")
            plain = type(text) is str and entry.keys() <= _PLAIN_TEXT_KEYS
            run = self._run
            if plain and run is not None and self._parts[-1].get("thought") == entry.get("thought"):
                # Text arrives in pieces; the history keeps one part per run of text.
                run.append(cast(str, text))
            else:
                self._end_run()
                self._parts.append(dict(entry))
                self._run = [cast(str, text)] if plain else None

    def _end_run(self) -> None:
        """Put the run of text pieces together in the last part."""
        run = self._run
        if run is not None and len(run) > 1:
            self._parts[-1]["text"] = "".join(run)
        self._run = None


_PLAIN_TEXT_KEYS: Final = frozenset({"text", "thought"})


def _first_content(chunk: Any) -> tuple[Any, Any]:
    """An event's first candidate (of index 0, the one the history keeps) and that
    candidate's content, each None if it has none."""
    candidates = chunk.get("candidates")
    if type(candidates) is _LIST:
        for candidate in candidates:
            if type(candidate) is _DICT and candidate.get("index", 0) == 0:
                content = candidate.get("content")
                return candidate, content if type(content) is _DICT else None
    return None, None


def _load_exactly(data: bytes) -> Any:
    """An event's data read exactly (json), as SSEEvent.data reads it."""
    return load_json(data.decode("utf-8", errors="replace"))


def _holds_float_parts(content: Any) -> bool:
    """Whether a content's parts hold a float (a plain text part cannot: checked first)."""
    parts = content.get("parts")
    if type(parts) is not _LIST:
        return False
    return any(not _plain_text_part(part) and holds_float(part) for part in parts)


def _plain_text_part(part: object) -> bool:
    """Whether a part is only a text (the parts of most events are)."""
    if type(part) is not dict:
        return False
    entry = cast(JSONObject, part)
    return len(entry) == 1 and type(entry.get("text")) is str


def gemini_stream_error_event(
    message: str, *, code: int = 502, status: str = "UNAVAILABLE"
) -> bytes:
    """The event that ends a client's stream as an error, shaped as Gemini's errors."""
    error = {"error": {"code": code, "message": message, "status": status}}
    return encode_event(dump_json(error).decode())


def cached_content_missing(status: int, body: bytes) -> bool:
    """Whether an upstream error says the referenced cached content entry is gone
    (expired, deleted), so the request is to be sent again with the history."""
    if status not in (400, 403, 404):
        return False
    try:
        value: object = load_json(body)
    except (ValueError, UnicodeDecodeError):
        return False
    error = object_field(cast(JSONObject, value), "error") if isinstance(value, dict) else None
    message = error.get("message") if error is not None else None
    return isinstance(message, str) and "cachedcontent" in message.lower().replace(" ", "")


@dataclass(frozen=True, slots=True)
class CreatedCache:
    """A ``cachedContents`` entry the provider created, and what its creation cost."""

    name: str
    #: ``usageMetadata.totalTokenCount``: the tokens the entry holds, billed as input once.
    tokens: int
    #: The entry's ``usageMetadata``, verbatim.
    usage_metadata: JSONObject


def cache_create_body(
    request: GeminiRequest,
    history: Sequence[JSONObject],
    *,
    model: str,
    ttl_seconds: int,
    display_name: str,
) -> bytes:
    """``POST /v1beta/cachedContents``: the history, with the request's fixed fields."""
    body: JSONObject = {
        "model": f"models/{model}",
        "displayName": display_name[:128],
        "contents": list(history),
        "ttl": f"{ttl_seconds}s",
    }
    for name in _FIXED_FIELDS:
        if request.body.get(name) is not None:
            body[name] = request.body[name]
    return dump_json(body)


def cache_ttl_body(ttl_seconds: int) -> bytes:
    """``PATCH /v1beta/{name}``: a new TTL, counted from now."""
    return dump_json({"ttl": f"{ttl_seconds}s"})


def parse_cache_created(body: bytes) -> CreatedCache | None:
    """The entry a create answered, or None if the answer does not name one."""
    try:
        response = load_json_object(body, "the provider's answer")
    except GatewayInputError:
        return None
    name = response.get("name")
    metadata = object_field(response, "usageMetadata") or {}
    tokens = metadata.get("totalTokenCount")
    if not isinstance(name, str) or not name.startswith("cachedContents/"):
        return None
    if type(tokens) is not int or tokens < 0:
        return None
    return CreatedCache(name, tokens, metadata)
