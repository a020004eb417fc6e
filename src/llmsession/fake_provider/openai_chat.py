"""OpenAI Chat Completions (``POST /v1/chat/completions``): the request the fake reads,
the ``chat.completion`` body it answers, and the ``chat.completion.chunk`` stream.

A stream is ``data: {chunk}`` lines: a first chunk with the assistant's role, one
chunk per answer token, a chunk with the ``finish_reason``, then, when the request
set ``stream_options.include_usage``, a chunk with ``choices: []`` and the usage
(every chunk before it carries ``usage: null``), and ``data: [DONE]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

from llmsession.fake_provider.answers import is_reasoning_model
from llmsession.fake_provider.errors import invalid_request
from llmsession.fake_provider.provider import Served
from llmsession.fake_provider.request_fields import (
    optional_bool,
    optional_int,
    optional_str,
    required_str,
)
from llmsession.fake_provider.sse import Frame, data_frame, done_frame
from llmsession.fake_provider.tokens import Message

__all__ = [
    "ChatRequest",
    "chat_usage",
    "completion_body",
    "completion_frames",
    "parse_chat_request",
]

_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_FINGERPRINT: Final = "fp_fake"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What the fake takes from a chat completion request."""

    model: str
    messages: tuple[Message, ...]
    limit: int | None
    stream: bool
    include_usage: bool
    prompt_cache_key: str | None


def _content_text(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise invalid_request(
            f"Invalid type for '{where}': expected a string or an array of content parts.",
            param=where,
            code="invalid_type",
        )
    texts: list[str] = []
    for index, part in enumerate(cast(list[object], content)):
        part_where = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise invalid_request(f"Invalid '{part_where}': expected an object.", param=part_where)
        fields = cast(dict[str, object], part)
        text = fields.get("text")
        if fields.get("type") != "text" or not isinstance(text, str):
            raise invalid_request(
                f"Invalid '{part_where}': the fake provider reads only text parts "
                f'({{"type": "text", "text": ...}}), got type {fields.get("type")!r}.',
                param=part_where,
            )
        texts.append(text)
    return "\n".join(texts)


def _message(raw: object, index: int) -> Message:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise invalid_request(f"Invalid '{where}': expected an object.", param=where)
    fields = cast(dict[str, object], raw)
    role = fields.get("role")
    if role not in _ROLES:
        raise invalid_request(
            f"Invalid value for '{where}.role': expected one of {', '.join(sorted(_ROLES))}, "
            f"got {role!r}.",
            param=f"{where}.role",
            code="invalid_value",
        )
    name = optional_str(fields, "name")
    return Message(str(role), _content_text(fields.get("content"), f"{where}.content"), name)


def parse_chat_request(body: dict[str, object]) -> ChatRequest:
    """The request's fields; a 400 ProviderError names the first wrong one."""
    model = required_str(body, "model")
    raw_messages = body.get("messages")
    if raw_messages is None:
        raise invalid_request(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(raw_messages, list) or not raw_messages:
        raise invalid_request(
            "Invalid 'messages': expected a non-empty array of messages.",
            param="messages",
            code="empty_array" if isinstance(raw_messages, list) else "invalid_type",
        )
    messages = tuple(_message(m, i) for i, m in enumerate(cast(list[object], raw_messages)))
    if body.get("max_tokens") is not None and is_reasoning_model(model):
        raise invalid_request(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            param="max_tokens",
            code="unsupported_parameter",
        )
    n = optional_int(body, "n", minimum=1)
    if n not in (None, 1):
        raise invalid_request("The fake provider answers with one choice only (n=1).", param="n")
    max_completion = optional_int(body, "max_completion_tokens", minimum=1)
    limit = (
        max_completion
        if max_completion is not None
        else optional_int(body, "max_tokens", minimum=1)
    )
    stream = optional_bool(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        if not isinstance(options, dict):
            raise invalid_request(
                "Invalid type for 'stream_options': expected an object.", param="stream_options"
            )
        include_usage = optional_bool(cast(dict[str, object], options), "include_usage", False)
    return ChatRequest(
        model=model,
        messages=messages,
        limit=limit,
        stream=stream,
        include_usage=include_usage,
        prompt_cache_key=optional_str(body, "prompt_cache_key"),
    )


def chat_usage(served: Served) -> dict[str, object]:
    """The ``usage`` object of a chat completion, as OpenAI reports it."""
    output = served.answer.output_tokens
    return {
        "prompt_tokens": served.input_tokens,
        "completion_tokens": output,
        "total_tokens": served.input_tokens + output,
        "prompt_tokens_details": {"cached_tokens": served.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": served.answer.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish_reason(served: Served) -> str:
    return "length" if served.answer.truncated else "stop"


def completion_body(served: Served, *, with_usage: bool) -> dict[str, object]:
    """The ``chat.completion`` object of a non-stream answer."""
    return {
        "id": served.id,
        "object": "chat.completion",
        "created": served.created,
        "model": served.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": served.answer.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": _finish_reason(served),
            }
        ],
        "usage": chat_usage(served) if with_usage else None,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
    }


def completion_frames(served: Served, *, include_usage: bool) -> list[Frame]:
    """The stream of an answer; the usage chunk only when ``include_usage``."""
    reasoning = served.answer.reasoning_tokens

    def chunk(choices: list[dict[str, object]]) -> dict[str, object]:
        payload: dict[str, object] = {
            "id": served.id,
            "object": "chat.completion.chunk",
            "created": served.created,
            "model": served.model,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = None
        return payload

    def choice(delta: dict[str, object], finish_reason: str | None = None) -> dict[str, object]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    frames = [
        data_frame(
            chunk([choice({"role": "assistant", "content": "", "refusal": None})]),
            produced=reasoning,
        )
    ]
    for index, delta in enumerate(served.answer.deltas(), start=1):
        frames.append(data_frame(chunk([choice({"content": delta})]), produced=reasoning + index))
    produced = served.answer.output_tokens
    frames.append(data_frame(chunk([choice({}, _finish_reason(served))]), produced=produced))
    if include_usage:
        frames.append(
            data_frame({**chunk([]), "usage": chat_usage(served)}, produced=produced, final=True)
        )
    frames.append(done_frame(produced=produced))
    return frames
