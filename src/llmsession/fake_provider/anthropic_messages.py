"""Anthropic Messages (``POST /v1/messages``): the request the fake reads, the
``message`` body it answers, the event stream, and Anthropic's error shape.

A stream is ``event:``/``data:`` pairs: ``message_start`` (the message with no
content yet and the input usage, ``output_tokens`` 1), ``content_block_start``,
``ping``, one ``content_block_delta`` (``text_delta``) per answer token,
``content_block_stop``, ``message_delta`` (the ``stop_reason`` and the usage so
far, cumulative: input counts again and all output), ``message_stop``.

Usage follows Anthropic: ``input_tokens`` excludes what was read from
(``cache_read_input_tokens``) and written to (``cache_creation_input_tokens``,
split by TTL in ``cache_creation``) the cache.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast

from llmsession.fake_provider.anthropic_cache import MAX_BREAKPOINTS, Breakpoint, CacheTTL
from llmsession.fake_provider.errors import ProviderError, invalid_request
from llmsession.fake_provider.provider import Served
from llmsession.fake_provider.sse import Frame, event_frame
from llmsession.fake_provider.tokens import REPLY_PRIMER, tokenize

__all__ = [
    "AnthropicPrompt",
    "MessagesRequest",
    "anthropic_error_body",
    "message_body",
    "message_frames",
    "messages_usage",
    "parse_messages_request",
]

_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_ROLES: Final = ("user", "assistant")
_START: Final = "<|start|>"
_END: Final = "<|end|>"


def anthropic_error_body(error: ProviderError, request_id: str) -> dict[str, object]:
    """``{"type": "error", "error": {"type", "message"}, "request_id"}``, as Anthropic answers."""
    kind = _ERROR_TYPES.get(error.status, "api_error")
    return {
        "type": "error",
        "error": {"type": kind, "message": error.message},
        "request_id": request_id,
    }


@dataclass(frozen=True, slots=True)
class AnthropicPrompt:
    """A prompt as blocks of tokens (the unit of Anthropic's breakpoints), and its marks."""

    blocks: tuple[tuple[str, ...], ...]
    breakpoints: tuple[Breakpoint, ...]
    last_user_text: str

    @property
    def tokens(self) -> int:
        return sum(len(block) for block in self.blocks) + len(REPLY_PRIMER)


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """What the fake takes from a Messages request."""

    model: str
    max_tokens: int
    stream: bool
    prompt: AnthropicPrompt
    user_id: str | None


class _Builder:
    """Turns tools, system and messages into token blocks, collecting the breakpoints."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, ...]] = []
        self.breakpoints: list[Breakpoint] = []

    def add(self, tokens: list[str], raw: Mapping[str, object], where: str) -> None:
        control = raw.get("cache_control")
        if control is not None:
            self.breakpoints.append(Breakpoint(len(self.blocks), _ttl(control, where)))
        self.blocks.append(tuple(tokens))


def _ttl(control: object, where: str) -> CacheTTL:
    if not isinstance(control, dict):
        raise invalid_request(f"{where}.cache_control: Input should be an object")
    fields = cast(dict[str, object], control)
    if fields.get("type") != "ephemeral":
        raise invalid_request(f"{where}.cache_control.type: Input should be 'ephemeral'")
    ttl = fields.get("ttl", "5m")
    if ttl not in ("5m", "1h"):
        raise invalid_request(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return "1h" if ttl == "1h" else "5m"


def _block_text(block: Mapping[str, object], where: str) -> str:
    kind = block.get("type")
    if not isinstance(kind, str):
        raise invalid_request(f"{where}.type: Field required")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise invalid_request(f"{where}.text: Input should be a valid string")
        if not text and block.get("cache_control") is not None:
            raise invalid_request(f"{where}: cache_control cannot be set for empty text blocks")
        return text
    # Other blocks (tool_use, tool_result, thinking, ...) count as their JSON, marks aside.
    rest = {name: value for name, value in block.items() if name != "cache_control"}
    return json.dumps(rest, sort_keys=True)


def _content_blocks(content: object, where: str) -> list[dict[str, object]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(
        isinstance(b, dict) for b in cast(list[object], content)
    ):
        raise invalid_request(f"{where}: Input should be a string or a list of content blocks")
    return cast(list[dict[str, object]], content)


def _prompt(body: Mapping[str, object]) -> AnthropicPrompt:
    builder = _Builder()
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid_request("tools: Input should be a valid list")
        for index, tool in enumerate(cast(list[object], tools)):
            if not isinstance(tool, dict):
                raise invalid_request(f"tools.{index}: Input should be an object")
            raw = cast(dict[str, object], tool)
            text = json.dumps({k: v for k, v in raw.items() if k != "cache_control"})
            builder.add(["<|tool|>", *tokenize(text)], raw, f"tools.{index}")
    system = body.get("system")
    if system is not None:
        blocks = _content_blocks(system, "system")
        for index, block in enumerate(blocks):
            head = [_START, "<|role:system|>"] if index == 0 else []
            tail = [_END] if index == len(blocks) - 1 else []
            text = _block_text(block, f"system.{index}")
            builder.add([*head, *tokenize(text), *tail], block, f"system.{index}")
    messages = body.get("messages")
    if messages is None:
        raise invalid_request("messages: Field required")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("messages: at least one message is required")
    last_user = ""
    for m, message in enumerate(cast(list[object], messages)):
        where = f"messages.{m}"
        if not isinstance(message, dict):
            raise invalid_request(f"{where}: Input should be an object")
        fields = cast(dict[str, object], message)
        role = fields.get("role")
        if role not in _ROLES:
            raise invalid_request(f"{where}.role: Input should be 'user' or 'assistant'")
        blocks = _content_blocks(fields.get("content"), f"{where}.content")
        texts: list[str] = []
        for index, block in enumerate(blocks):
            head = [_START, f"<|role:{role}|>"] if index == 0 else []
            tail = [_END] if index == len(blocks) - 1 else []
            text = _block_text(block, f"{where}.content.{index}")
            if block.get("type") == "text":
                texts.append(text)
            builder.add([*head, *tokenize(text), *tail], block, f"{where}.content.{index}")
        if not blocks:
            builder.blocks.append((_START, f"<|role:{role}|>", _END))
        if role == "user":
            last_user = "\n".join(texts)
    if len(builder.breakpoints) > MAX_BREAKPOINTS:
        raise invalid_request(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(builder.breakpoints)}."
        )
    seen_5m = False
    for breakpoint_ in builder.breakpoints:
        if breakpoint_.ttl == "5m":
            seen_5m = True
        elif seen_5m:
            raise invalid_request(
                "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block"
            )
    return AnthropicPrompt(tuple(builder.blocks), tuple(builder.breakpoints), last_user)


def parse_messages_request(body: Mapping[str, object]) -> MessagesRequest:
    """The request's fields; a 400 ProviderError names the first wrong one."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise invalid_request("max_tokens: Field required")
    if type(max_tokens) is not int or max_tokens < 1:
        raise invalid_request("max_tokens: Input should be an integer of at least 1")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid_request("stream: Input should be a valid boolean")
    metadata = body.get("metadata")
    user_id: str | None = None
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise invalid_request("metadata: Input should be an object")
        raw_user = cast(dict[str, object], metadata).get("user_id")
        if isinstance(raw_user, str):
            user_id = raw_user
        elif raw_user is not None:
            raise invalid_request("metadata.user_id: Input should be a valid string")
    return MessagesRequest(
        model=model,
        max_tokens=max_tokens,
        stream=bool(stream),
        prompt=_prompt(body),
        user_id=user_id,
    )


def messages_usage(served: Served, *, output_tokens: int) -> dict[str, object]:
    """The ``usage`` object, as Anthropic reports it."""
    written = served.cache_write_tokens
    return {
        "input_tokens": served.input_tokens - served.cached_tokens - written,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": served.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": written - served.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": served.cache_write_1h_tokens,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _stop_reason(served: Served) -> str:
    return "max_tokens" if served.answer.truncated else "end_turn"


def message_body(served: Served, *, with_usage: bool) -> dict[str, object]:
    """The ``message`` object of a non-stream answer."""
    body: dict[str, object] = {
        "id": served.id,
        "type": "message",
        "role": "assistant",
        "model": served.model,
        "content": [{"type": "text", "text": served.answer.text}],
        "stop_reason": _stop_reason(served),
        "stop_sequence": None,
    }
    if with_usage:
        body["usage"] = messages_usage(served, output_tokens=served.answer.output_tokens)
    return body


def message_frames(served: Served, *, with_usage: bool) -> list[Frame]:
    """The stream of an answer; without usage, no event carries any."""
    output = served.answer.output_tokens
    first = min(1, output)
    message: dict[str, object] = {
        **message_body(served, with_usage=False),
        "content": [],
        "stop_reason": None,
    }
    if with_usage:
        message["usage"] = messages_usage(served, output_tokens=first)
    frames = [
        event_frame("message_start", {"type": "message_start", "message": message}, produced=first),
        event_frame(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            produced=first,
        ),
        event_frame("ping", {"type": "ping"}, produced=first),
    ]
    for index, text in enumerate(served.answer.deltas(), start=1):
        frames.append(
            event_frame(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
                produced=max(index, first),
            )
        )
    frames.append(
        event_frame(
            "content_block_stop", {"type": "content_block_stop", "index": 0}, produced=output
        )
    )
    delta: dict[str, object] = {
        "type": "message_delta",
        "delta": {"stop_reason": _stop_reason(served), "stop_sequence": None},
    }
    if with_usage:
        usage = messages_usage(served, output_tokens=output)
        del usage["cache_creation"], usage["service_tier"]
        delta["usage"] = usage
    frames.append(event_frame("message_delta", delta, produced=output, final=True))
    frames.append(
        event_frame("message_stop", {"type": "message_stop"}, produced=output, final=True)
    )
    return frames
