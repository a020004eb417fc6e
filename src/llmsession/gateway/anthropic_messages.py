"""Anthropic Messages, sans-IO: ``POST /v1/messages`` through a session.

The client sends only its new ``messages`` (and ``system`` when it sets or
changes the system prompt); the upstream request is the client's own body with
``model`` = the provider's model name, ``system`` = the session's system prompt,
``messages`` = the session's history followed by the new ones, and
``metadata.user_id`` = the session id unless the client set one.

History items are the client's messages as sent, the answers' assistant
messages, and a ``{"role": "system", "content": ...}`` item for each request
that carried a ``system``: the latest one is the session's system prompt from
then on (the Messages API has no system role in ``messages``, so the item cannot
be mistaken for a message, and a client message with that role is refused).

Caching (:func:`place_breakpoints`): Anthropic caches only up to blocks marked
with ``cache_control``, at most 4 per request, and finds an earlier entry only
at a marked block or up to 20 blocks before it. The gateway marks two blocks:
the last block of this request (written for the next round) and the last block
of what the previous round sent (the block that round marked, so it is read
exactly, however many blocks the answer and the new messages add). The
client's own marks in ``tools``, a ``system`` sent with the request and its new
messages are kept and come first; marks the client left in earlier rounds'
messages, and in the session's stored ``system``, are kept, newest first, while
there is room and their TTL fits the marks kept, and dropped
otherwise (a mark changes no cached content, only where the cache is looked
up): Anthropic refuses a 1 hour mark after a 5 minute one, and the client
cannot take back a mark stored with its history. The gateway's marks use a 1
hour TTL when the session may stay idle longer than 5 minutes, so its history
is still cached when the client comes back, and 5 minutes otherwise; but never
longer than a mark before them, nor shorter than one after them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from llmsession.gateway.sse import SSEDecoder, SSEEvent, encode_event
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
    "LOOKBACK_BLOCKS",
    "MAX_BREAKPOINTS",
    "MessagesRequest",
    "MessagesStream",
    "Placed",
    "cache_ttl",
    "messages_upstream_body",
    "messages_usage",
    "parse_messages_request",
    "parse_messages_response",
    "place_breakpoints",
    "stream_error_event",
]

#: The most blocks one request may mark with ``cache_control``.
MAX_BREAKPOINTS: Final = 4
#: How far back from a marked block Anthropic looks for an earlier cache entry
#: (the marked block counts as the first).
LOOKBACK_BLOCKS: Final = 20
_SYSTEM: Final = "system"
_ROLES: Final = ("user", "assistant")
#: Blocks that cannot carry ``cache_control``.
_UNMARKABLE: Final = frozenset({"thinking", "redacted_thinking"})
#: The deltas whose fields the answer keeps are strings (and the block's index).
_STRING_DELTAS: Final = frozenset(
    {"text_delta", "input_json_delta", "thinking_delta", "signature_delta"}
)
#: Sessions idle up to this long are served by Anthropic's default 5 minute TTL.
_FIVE_MINUTES: Final = 300


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """A client's Messages request, checked as far as the gateway relies on it."""

    body: JSONObject
    model: str
    stream: bool
    #: The history items it adds: its ``system`` (if any), then its messages.
    items: tuple[JSONObject, ...]
    #: ``anthropic-version`` and ``anthropic-beta``, as the client sent them.
    headers: tuple[tuple[str, str], ...] = field(default=())


def parse_messages_request(body: bytes, headers: Mapping[str, str]) -> MessagesRequest:
    """Check a client's body; GatewayInputError names the field that is wrong."""
    request = load_request(body)
    model = model_field(request)
    raw_messages = request.get("messages")
    if not isinstance(raw_messages, list):
        raise GatewayInputError("'messages' must be a list of message objects")
    messages = cast(list[object], raw_messages)
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or cast(JSONObject, message).get("role") not in _ROLES:
            raise GatewayInputError(
                f"'messages[{index}]' must be an object with 'role' 'user' or 'assistant' "
                "(a system prompt goes in the top-level 'system')"
            )
        content = cast(JSONObject, message).get("content")
        if not isinstance(content, str | list):
            raise GatewayInputError(
                f"'messages[{index}].content' must be a string or a list of content blocks"
            )
    system = request.get(_SYSTEM)
    if system is not None and not (
        isinstance(system, str)
        or (
            isinstance(system, list)
            and all(isinstance(b, dict) for b in cast(list[object], system))
        )
    ):
        raise GatewayInputError("'system' must be a string or a list of text blocks")
    stream = flag_field(request, "stream", False)
    items: list[JSONObject] = [] if system is None else [{"role": _SYSTEM, "content": system}]
    items.extend(cast(list[JSONObject], messages))
    forwarded = tuple(
        (name, value)
        for name in ("anthropic-version", "anthropic-beta")
        if (value := headers.get(name)) is not None
    )
    return MessagesRequest(request, model, stream, tuple(items), forwarded)


def cache_ttl(session_ttl_seconds: int) -> str:
    """The cache TTL that keeps a session's history cached while the session may be idle."""
    return "5m" if session_ttl_seconds <= _FIVE_MINUTES else "1h"


def messages_upstream_body(
    request: MessagesRequest,
    history: Sequence[JSONObject],
    *,
    model: str,
    cache_key: str,
    session_ttl_seconds: int,
) -> bytes:
    """The body sent upstream: the session's system, the history, then the new messages."""
    system: object = None
    past: list[JSONObject] = []
    for item in history:
        if item.get("role") == _SYSTEM:
            system = item.get("content")
        else:
            past.append(item)
    new: list[JSONObject] = []
    system_is_new = False
    for item in request.items:
        if item.get("role") == _SYSTEM:
            system = item.get("content")
            system_is_new = True
        else:
            new.append(item)
    if not past and not new:
        raise GatewayInputError("'messages' must not be empty when a session has no history")
    body = dict(request.body)
    body["model"] = model
    tools = json_objects(body.get("tools"))
    placed = place_breakpoints(
        tools, system, past, new, ttl=cache_ttl(session_ttl_seconds), system_is_new=system_is_new
    )
    if placed.system is None:
        body.pop(_SYSTEM, None)
    else:
        body[_SYSTEM] = placed.system
    body["messages"] = placed.messages
    metadata = dict(object_field(body, "metadata") or {})
    metadata.setdefault("user_id", cache_key)
    body["metadata"] = metadata
    return dump_json(body)


@dataclass(frozen=True, slots=True)
class Placed:
    """The system prompt and messages to send, with the cache breakpoints in place."""

    system: object
    messages: list[JSONObject]


def _marked(block: Mapping[str, Any]) -> bool:
    return block.get("cache_control") is not None


def _markable(block: Mapping[str, Any]) -> bool:
    kind = block.get("type")
    if kind in _UNMARKABLE:
        return False
    return kind != "text" or bool(block.get("text"))


def _blocks(content: object) -> list[JSONObject] | None:
    """A message's or system's content as blocks; None when it is an empty string."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else None
    return json_objects(content)


def _ttl_of(block: Mapping[str, Any]) -> str:
    control = object_field(block, "cache_control") or {}
    return "1h" if control.get("ttl") == "1h" else "5m"


def place_breakpoints(
    tools: Sequence[JSONObject],
    system: object,
    past: Sequence[JSONObject],
    new: Sequence[JSONObject],
    *,
    ttl: str,
    system_is_new: bool = True,
) -> Placed:
    """The module's caching rule (see its docstring), on copies: nothing given is changed.

    ``past`` are the history's messages, ``new`` the request's; ``ttl`` the TTL
    the gateway's marks get unless the marks around them forbid it;
    ``system_is_new`` whether ``system`` came with this request (else it is the
    session's, stored from an earlier round, and its marks are that round's).
    Only the messages whose marks change are copied (every turn walks the whole
    history, so the walk reads each message's content in place).
    """
    messages = [*past, *new]
    # The client's marks of this request: in tools and a new system, which come before
    # every message, and in its new messages, after every earlier one.
    head = [_ttl_of(tool) for tool in tools if _marked(tool)]
    system_blocks = None if system is None else _blocks(system)
    if system_is_new:
        head += [_ttl_of(block) for block in system_blocks or () if _marked(block)]
    fixed: dict[tuple[int, int], str] = {}
    for m in range(len(past), len(messages)):
        for b, block in _marked_blocks(messages[m].get("content")):
            fixed[m, b] = _ttl_of(block)
    room = MAX_BREAKPOINTS - len(head) - len(fixed)
    gateway: list[tuple[int, int]] = []
    for position in _gateway_places(messages, len(past)):
        if position in fixed:
            continue  # the client marked it already, and it is counted
        if room <= 0:
            break
        gateway.append(position)
        room -= 1
    # Earlier rounds' marks: the client's own first where the gateway marks (one of its
    # two then), the others newest first while there is room; each only if its TTL
    # fits the marks kept so far, as Anthropic refuses a 1 hour mark after a 5 minute one.
    old_blocks = _old_marks(past)
    if not system_is_new:
        # The stored system's marks are the oldest of all, before every message.
        for b, block in reversed(_marked_blocks(system_blocks)):
            old_blocks[_SYSTEM_AT, b] = block
    kept: dict[tuple[int, int], str] = {}

    def fits(position: tuple[int, int], mark_ttl: str) -> bool:
        return _in_order(head, {**fixed, **kept, position: mark_ttl})

    for position in gateway:
        reused = old_blocks.get(position)
        if reused is not None and fits(position, _ttl_of(reused)):
            kept[position] = _ttl_of(reused)
    for position, block in old_blocks.items():
        if room <= 0:
            break
        if position not in gateway and fits(position, _ttl_of(block)):
            kept[position] = _ttl_of(block)
            room -= 1
    # The gateway's marks (on a client's mark that did not fit, in its place).
    placed: dict[tuple[int, int], str] = {}
    for position in sorted(p for p in gateway if p not in kept):
        placed[position] = _fitting_ttl(position, ttl, head, {**fixed, **kept, **placed})
    dropped = [position for position in old_blocks if position not in kept | placed]
    changed = {m for m, _ in placed} | {m for m, _ in dropped}
    if _SYSTEM_AT in changed:
        changed.remove(_SYSTEM_AT)
        # Only a mark dropped: the gateway never marks the system.
        system_copy = [dict(block) for block in system_blocks or ()]
        for m, b in dropped:
            if m == _SYSTEM_AT:
                del system_copy[b]["cache_control"]
        system = system_copy
    for m in changed:
        blocks = [dict(block) for block in _blocks(messages[m].get("content")) or ()]
        for (mm, b), mark_ttl in placed.items():
            if mm == m:
                blocks[b]["cache_control"] = _control(mark_ttl)
        for mm, b in dropped:
            if mm == m:
                del blocks[b]["cache_control"]
        messages[m] = {**messages[m], "content": blocks}
    return Placed(system, messages)


#: The stored system's place among the messages' (``(_SYSTEM_AT, block)``): before them.
_SYSTEM_AT: Final = -1


def _gateway_places(messages: Sequence[JSONObject], past: int) -> list[tuple[int, int]]:
    """Where the gateway marks, first wanted first: the last block of the request (the
    write mark), then the last block of what the previous round sent (the read mark);
    ``past`` is how many of ``messages`` are the history's."""
    wanted: list[tuple[int, int]] = []
    write = _last_markable(messages, past, len(messages))
    if write is not None:
        wanted.append(write)
    if past:
        # What the previous round sent ends before the answer it got: one assistant
        # message (an answer is at most one). Not every assistant message before it:
        # a request may end with one itself (a prefill), and its round marked that.
        end = past
        if messages[end - 1].get("role") == "assistant":
            end -= 1
        read = _last_markable(messages, 0, end)
        if read is not None:
            wanted.append(read)
    return wanted


def _fitting_ttl(
    position: tuple[int, int],
    ttl: str,
    head: Sequence[str],
    marks: Mapping[tuple[int, int], str],
) -> str:
    """A gateway mark's TTL: ``ttl``, but never longer than a mark before it nor shorter
    than one after it (``marks`` are in order, so no place has both)."""
    if "5m" in head or any(t == "5m" for p, t in marks.items() if p < position):
        return "5m"
    if any(t == "1h" for p, t in marks.items() if p > position):
        return "1h"
    return ttl


def _control(ttl: str) -> JSONObject:
    """A mark of the gateway's: Anthropic's default (5 minutes) is left implicit."""
    return {"type": "ephemeral", "ttl": "1h"} if ttl == "1h" else {"type": "ephemeral"}


def _in_order(head: Sequence[str], marks: Mapping[tuple[int, int], str]) -> bool:
    """Whether no 1 hour mark comes after a 5 minute one: ``head`` (tools' and system's
    TTLs, in order), then ``marks`` (messages' marks by place)."""
    ttls = [*head, *(marks[position] for position in sorted(marks))]
    return "1h" not in ttls[ttls.index("5m") :] if "5m" in ttls else True


def _old_marks(past: Sequence[JSONObject]) -> dict[tuple[int, int], JSONObject]:
    """Earlier rounds' marked blocks by place, newest first."""
    old: dict[tuple[int, int], JSONObject] = {}
    for m in range(len(past) - 1, -1, -1):
        for b, block in reversed(_marked_blocks(past[m].get("content"))):
            old[m, b] = block
    return old


def _marked_blocks(content: object) -> list[tuple[int, JSONObject]]:
    """The blocks of a message's content that carry ``cache_control``, with their
    places among its blocks (a string content has none)."""
    if not isinstance(content, list):
        return []
    marked: list[tuple[int, JSONObject]] = []
    b = 0
    for block in cast(list[object], content):
        if isinstance(block, dict):
            if cast(JSONObject, block).get("cache_control") is not None:
                marked.append((b, cast(JSONObject, block)))
            b += 1
    return marked


def _last_markable(messages: Sequence[JSONObject], start: int, end: int) -> tuple[int, int] | None:
    """The last block of ``messages[start:end]`` that may carry ``cache_control``."""
    for m in range(end - 1, start - 1, -1):
        content = messages[m].get("content")
        if isinstance(content, str):
            # One text block, markable unless empty (then the message has no block).
            if content:
                return m, 0
            continue
        blocks = json_objects(content)
        for b in range(len(blocks) - 1, -1, -1):
            if _markable(blocks[b]):
                return m, b
    return None


def _count(value: object) -> object:
    """A usage count, with a missing or null one as 0 (other values are left to be refused)."""
    return 0 if value is None else value


def messages_usage(usage: Mapping[str, Any]) -> Usage | None:
    """Anthropic's usage object normalized.

    Its ``input_tokens`` excludes what was read from and written to the cache,
    so all input is the sum of the three. None if a count is missing or is no
    token count: no number is made up for what the provider did not say.
    """
    counts = [
        usage.get("input_tokens"),
        _count(usage.get("cache_creation_input_tokens")),
        _count(usage.get("cache_read_input_tokens")),
    ]
    if not all(type(c) is int for c in counts):
        return None
    fresh, written, read = cast(list[int], counts)
    return checked_usage(
        input_tokens=fresh + written + read,
        cached_input_tokens=read,
        cache_write_tokens=written,
        output_tokens=usage.get("output_tokens"),
        raw=usage,
    )


def parse_messages_response(body: bytes) -> Answer:
    """A complete (non-streamed) upstream answer."""
    return read_answer(body, _messages_answer, messages_usage)


def _messages_answer(response: JSONObject) -> tuple[tuple[JSONObject, ...], JSONObject | None]:
    """What an answer keeps: its message as the history holds it, and its usage object."""
    items: tuple[JSONObject, ...] = ()
    blocks = [_history_block(b) for b in json_objects(response.get("content"))]
    if blocks:
        # An empty answer adds nothing: Anthropic refuses an empty message sent back.
        items = ({"role": response.get("role", "assistant"), "content": blocks},)
    return items, object_field(response, "usage")


def _history_block(block: Mapping[str, Any]) -> JSONObject:
    # Answers carry nulls (``citations: null``) that a request's blocks may not.
    return {name: value for name, value in block.items() if value is not None}


class MessagesStream:
    """Passes a Messages stream through, reading usage and the answer on the side.

    Usage is ``message_start``'s, with the fields of the last ``message_delta``
    put over it: ``message_delta`` counts are cumulative, so they replace, never add.
    """

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._start_usage: JSONObject | None = None
        self._delta_usage: JSONObject | None = None
        self._role = "assistant"
        self._blocks: dict[int, JSONObject] = {}
        self._partial_json: dict[int, list[str]] = {}
        #: A block's text or thinking as it arrives, in pieces joined once at the
        #: end: added to the block's string instead, all of it would be copied at
        #: every delta.
        self._pieces: dict[tuple[int, str], list[str]] = {}
        self._saw_message = False
        self._done = False
        self._error: JSONObject | None = None
        self._tail: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Decode ``chunk``; return the events to forward now, byte for byte.

        ``message_stop`` (and anything after it) is held back for :meth:`close`.
        """
        forward: list[bytes] = []
        for event in self._decoder.feed(chunk):
            done = self._done
            self._read(event)
            (self._tail if done or self._done else forward).append(event.raw)
        return forward

    def close(self) -> StreamOutcome:
        """The upstream stream ended: what it carried, and whether it reached ``message_stop``."""
        for event in self._decoder.close():
            self._read(event)
            self._tail.append(event.raw)
        message = self._message()
        items = (message,) if self._saw_message and message["content"] else ()
        return StreamOutcome(
            answer=Answer(items=items, usage=self._usage()),
            completed=self._done and self._error is None,
            error=self._error,
            tail=b"".join(self._tail),
        )

    def _usage(self) -> Usage | None:
        if self._start_usage is None and self._delta_usage is None:
            return None
        merged = dict(self._start_usage or {})
        for name, value in (self._delta_usage or {}).items():
            if value is not None:
                merged[name] = value
        return messages_usage(merged)

    def _read(self, event: SSEEvent) -> None:
        # Every event of a stream passes here: it is read fast (orjson), and read
        # again exactly (json) when what is kept of it may hold a float: a text
        # delta holds only strings and an index, the other events are few.
        try:
            payload: object = load_event(event.data)
        except ValueError:
            return
        if type(payload) is not dict:
            return
        data = cast(JSONObject, payload)
        kind = data.get("type", event.event)
        if kind == "content_block_delta":
            delta = data.get("delta")
            if type(delta) is dict and cast(JSONObject, delta).get("type") in _STRING_DELTAS:
                self._add_delta(data)
                return
        if holds_float(data):
            data = cast(JSONObject, load_json(event.data))
            kind = data.get("type", event.event)
        if kind == "message_start":
            message = object_field(data, "message") or {}
            self._saw_message = True
            if isinstance(message.get("role"), str):
                self._role = message["role"]
            self._start_usage = object_field(message, "usage")
        elif kind == "content_block_start":
            block = object_field(data, "content_block")
            index = data.get("index")
            if block is not None and isinstance(index, int):
                self._blocks[index] = dict(block)
                # A block started again at an index replaces it, pieces and all.
                for name in ("text", "thinking"):
                    self._pieces.pop((index, name), None)
        elif kind == "content_block_delta":
            self._add_delta(data)
        elif kind == "content_block_stop":
            self._finish_block(data.get("index"))
        elif kind == "message_delta":
            usage = object_field(data, "usage")
            if usage is not None:
                self._delta_usage = usage
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            self._error = object_field(data, "error") or {"type": "error", "message": ""}

    def _add_delta(self, data: Mapping[str, Any]) -> None:
        index = data.get("index")
        delta = object_field(data, "delta")
        if not isinstance(index, int) or delta is None or index not in self._blocks:
            return
        block = self._blocks[index]
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            self._add_piece(index, "text", delta["text"])
        elif kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            self._partial_json.setdefault(index, []).append(delta["partial_json"])
        elif kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            self._add_piece(index, "thinking", delta["thinking"])
        elif kind == "signature_delta" and isinstance(delta.get("signature"), str):
            block["signature"] = delta["signature"]
        elif kind == "citations_delta" and isinstance(delta.get("citation"), dict):
            citations = block.get("citations")
            block["citations"] = [
                *(citations if isinstance(citations, list) else []),
                delta["citation"],
            ]

    def _add_piece(self, index: int, name: str, piece: str) -> None:
        pieces = self._pieces.get((index, name))
        if pieces is None:
            # What the block started with comes first.
            self._pieces[index, name] = [str(self._blocks[index].get(name) or ""), piece]
        else:
            pieces.append(piece)

    def _finish_block(self, index: object) -> None:
        if not isinstance(index, int) or index not in self._partial_json:
            return
        text = "".join(self._partial_json.pop(index))
        if text and index in self._blocks:
            try:
                self._blocks[index]["input"] = load_json(text)
            except ValueError:
                # Kept as sent: the provider will say what is wrong if it is sent back.
                self._blocks[index]["input"] = text

    def _message(self) -> JSONObject:
        for (index, name), pieces in self._pieces.items():
            self._blocks[index][name] = "".join(pieces)
        self._pieces.clear()
        for index in list(self._partial_json):
            self._finish_block(index)
        blocks = [_history_block(self._blocks[i]) for i in sorted(self._blocks)]
        return {"role": self._role, "content": blocks}


def stream_error_event(message: str, *, kind: str = "api_error") -> bytes:
    """The event that ends a client's stream as an error, in Anthropic's own shape."""
    error = {"type": "error", "error": {"type": kind, "message": message}}
    return encode_event(dump_json(error).decode(), event="error")
