"""Google's Gemini API (``generateContent``, ``streamGenerateContent?alt=sse``,
``cachedContents``): the requests the fake reads, the bodies and events it answers,
and Gemini's error shape.

Counting: each ``Content`` is a message of its role (``user`` or ``model``) whose
text is its text parts joined by newlines (another part counts as its JSON
text); the ``systemInstruction`` is a message of role ``system`` before them.
A prompt is the cached content entry's tokens (when ``cachedContent`` names
one), then the system instruction and the contents, then the reply primer.

Usage, as Gemini reports it: ``promptTokenCount`` is the whole prompt, the cached
part included; ``cachedContentTokenCount`` the cached part (an entry's tokens,
or an implicit cache hit), left out when 0 as Gemini leaves out zero counts;
``candidatesTokenCount`` the visible answer; ``thoughtsTokenCount`` the thoughts
(billed as output, not in ``candidatesTokenCount``); ``totalTokenCount`` their sum.
A Gemini model whose name contains ``pro`` thinks (16 thoughts tokens) unless
``generationConfig.thinkingConfig.thinkingBudget`` is 0.

A stream is one ``GenerateContentResponse`` per answer token, each with the
running ``usageMetadata`` (so a client that adds them up counts wrong); the last
one carries the ``finishReason`` and the final usage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, cast

from llmsession.fake_provider.answers import REASONING_TOKENS, Answer, plan_answer
from llmsession.fake_provider.errors import ProviderError
from llmsession.fake_provider.gemini_cache import CacheEntry
from llmsession.fake_provider.provider import Served
from llmsession.fake_provider.sse import Frame, data_frame
from llmsession.fake_provider.tokens import Message

__all__ = [
    "CacheCreate",
    "GeminiError",
    "GenerateRequest",
    "cache_entry_json",
    "gemini_answer",
    "generate_body",
    "generate_frames",
    "invalid_argument",
    "missing_cache",
    "parse_cache_create",
    "parse_generate_request",
    "parse_ttl",
    "usage_metadata",
]

_FIXED_FIELDS: Final = ("systemInstruction", "tools", "toolConfig")


@dataclass(eq=False)
class GeminiError(ProviderError):
    """An error answer shaped as Google's: ``{"error": {"code", "message", "status"}}``;
    ``type`` holds the status name (``INVALID_ARGUMENT``...)."""

    details: list[dict[str, object]] = field(default_factory=list[dict[str, object]])

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {
            "code": self.status,
            "message": self.message,
            "status": self.type,
        }
        if self.details:
            error["details"] = self.details
        return {"error": error}


def invalid_argument(message: str) -> GeminiError:
    return GeminiError(400, message, "INVALID_ARGUMENT")


def missing_cache(name: str) -> GeminiError:
    return GeminiError(
        403, f"CachedContent not found (or permission denied): {name}", "PERMISSION_DENIED"
    )


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """What the fake takes from a ``generateContent`` request."""

    model: str
    system: Message | None
    contents: tuple[Message, ...]
    cached_content: str | None
    limit: int | None
    thinking_budget: int | None


@dataclass(frozen=True, slots=True)
class CacheCreate:
    """What the fake takes from a ``POST cachedContents`` request."""

    model: str
    display_name: str
    system: Message | None
    contents: tuple[Message, ...]
    ttl_seconds: float | None


def _text(content: object, where: str) -> tuple[str, str]:
    if not isinstance(content, dict):
        raise invalid_argument(f"Invalid value at '{where}': expected a Content object.")
    fields = cast(dict[str, object], content)
    parts = fields.get("parts")
    if not isinstance(parts, list):
        raise invalid_argument(f"Invalid value at '{where}.parts': expected a list of parts.")
    texts: list[str] = []
    for part in cast(list[object], parts):
        if isinstance(part, dict) and isinstance(cast(dict[str, object], part).get("text"), str):
            texts.append(cast(str, cast(dict[str, object], part)["text"]))
        else:
            texts.append(json.dumps(part, sort_keys=True))
    role = fields.get("role") or "user"
    if role not in ("user", "model", "function"):
        raise invalid_argument(
            f"Please use a valid role: user, model. Got {role!r} at '{where}.role'."
        )
    return str(role), "\n".join(texts)


def _contents(body: Mapping[str, object], *, required: bool) -> tuple[Message, ...]:
    raw = body.get("contents")
    if raw is None and not required:
        return ()
    if not isinstance(raw, list) or (required and not raw):
        raise invalid_argument("* GenerateContentRequest.contents: contents is not specified")
    return tuple(
        Message(*_text(c, f"contents[{i}]")) for i, c in enumerate(cast(list[object], raw))
    )


def _system(body: Mapping[str, object]) -> Message | None:
    raw = body.get("systemInstruction")
    if raw is None:
        return None
    _, text = _text(raw, "systemInstruction")
    return Message("system", text)


def _model_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise invalid_argument(
            "* CreateCachedContentRequest.cached_content.model: model is required"
        )
    return value.removeprefix("models/")


def parse_generate_request(body: Mapping[str, object], model: str) -> GenerateRequest:
    """The request's fields; a 400 GeminiError names the first wrong one."""
    cached = body.get("cachedContent")
    if cached is not None and not isinstance(cached, str):
        raise invalid_argument("Invalid value at 'cached_content' (TYPE_STRING).")
    if cached is not None and any(body.get(name) is not None for name in _FIXED_FIELDS):
        raise invalid_argument(
            "CachedContent can not be used with GenerateContent request setting "
            "system_instruction, tools or tool_config.\n\nProposed fix: move those values "
            "to CachedContent from GenerateContent request."
        )
    config: object = body.get("generationConfig") or {}
    if not isinstance(config, dict):
        raise invalid_argument("Invalid value at 'generation_config': expected an object.")
    settings = cast(dict[str, object], config)
    limit = settings.get("maxOutputTokens")
    if limit is not None and (type(limit) is not int or limit < 1):
        raise invalid_argument(
            f"Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), {limit!r}"
        )
    thinking: object = settings.get("thinkingConfig") or {}
    # Proto JSON takes either spelling, and the google-genai SDK sends the snake one.
    fields = cast(dict[str, object], thinking) if isinstance(thinking, dict) else {}
    budget = fields.get("thinkingBudget", fields.get("thinking_budget"))
    return GenerateRequest(
        model=model,
        system=_system(body),
        contents=_contents(body, required=cached is None),
        cached_content=cached,
        limit=limit,
        thinking_budget=budget if type(budget) is int else None,
    )


def parse_ttl(value: object, where: str = "ttl") -> float:
    """A duration such as ``"300s"`` or ``"3.5s"``, in seconds."""
    if isinstance(value, str) and value.endswith("s"):
        try:
            seconds = float(value[:-1])
        except ValueError:
            pass
        else:
            if seconds >= 0:
                return seconds
    raise invalid_argument(
        f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Duration), {value!r}"
    )


def expiry_seconds(body: Mapping[str, object]) -> float | None:
    """The TTL a create or patch body asks for (``ttl`` or ``expireTime``), if any."""
    if body.get("ttl") is not None:
        return parse_ttl(body["ttl"])
    expire = body.get("expireTime")
    if expire is None:
        return None
    if not isinstance(expire, str):
        raise invalid_argument(
            "Invalid value at 'expire_time' (type.googleapis.com/google.protobuf.Timestamp)"
        )
    try:
        moment = datetime.fromisoformat(expire.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_argument(
            f"Invalid value at 'expire_time' (google.protobuf.Timestamp), {expire!r}"
        ) from None
    return max(0.0, moment.timestamp() - time.time())


def parse_cache_create(body: Mapping[str, object]) -> CacheCreate:
    display = body.get("displayName") or ""
    if not isinstance(display, str) or len(display) > 128:
        raise invalid_argument(
            "Invalid value at 'cached_content.display_name': at most 128 characters."
        )
    return CacheCreate(
        model=_model_name(body.get("model")),
        display_name=display,
        system=_system(body),
        contents=_contents(body, required=False),
        ttl_seconds=expiry_seconds(body),
    )


def gemini_answer(model: str, last_user_text: str, request: GenerateRequest) -> Answer:
    """The fake model's answer; Pro models think unless the thinking budget is 0."""
    planned = plan_answer(model, last_user_text, request.limit)
    thinks = "pro" in model.lower() and request.thinking_budget != 0
    if not thinks:
        return Answer(planned.tokens, 0, planned.truncated)
    limit = request.limit
    if limit is None or limit >= REASONING_TOKENS + len(planned.tokens):
        return Answer(planned.tokens, REASONING_TOKENS, planned.truncated)
    reasoning = min(REASONING_TOKENS, limit)
    return Answer(planned.tokens[: limit - reasoning], reasoning, truncated=True)


def usage_metadata(served: Served, *, candidates: int | None = None) -> dict[str, object]:
    """``usageMetadata`` as Gemini reports it; ``candidates``: answer tokens so far."""
    answer = served.answer
    shown = len(answer.tokens) if candidates is None else candidates
    metadata: dict[str, object] = {"promptTokenCount": served.input_tokens}
    if shown:
        metadata["candidatesTokenCount"] = shown
    metadata["totalTokenCount"] = served.input_tokens + shown + answer.reasoning_tokens
    if served.cached_tokens:
        metadata["cachedContentTokenCount"] = served.cached_tokens
    metadata["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": served.input_tokens}]
    if served.cached_tokens:
        metadata["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": served.cached_tokens}]
    if answer.reasoning_tokens:
        metadata["thoughtsTokenCount"] = answer.reasoning_tokens
    return metadata


def _finish_reason(served: Served) -> str:
    return "MAX_TOKENS" if served.answer.truncated else "STOP"


def generate_body(served: Served, *, with_usage: bool) -> dict[str, object]:
    """The ``GenerateContentResponse`` of a non-stream answer."""
    body: dict[str, object] = {
        "candidates": [
            {
                "content": {"parts": [{"text": served.answer.text}], "role": "model"},
                "finishReason": _finish_reason(served),
                "index": 0,
            }
        ],
        "modelVersion": served.model,
        "responseId": served.id,
    }
    if with_usage:
        body["usageMetadata"] = usage_metadata(served)
    return body


def generate_frames(served: Served, *, with_usage: bool) -> list[Frame]:
    """The ``alt=sse`` stream: one event per answer token, the last with the finish reason."""
    reasoning = served.answer.reasoning_tokens
    deltas = served.answer.deltas() or [""]
    frames: list[Frame] = []
    for index, delta in enumerate(deltas, start=1):
        last = index == len(deltas)
        candidate: dict[str, object] = {
            "content": {"parts": [{"text": delta}], "role": "model"},
            "index": 0,
        }
        if last:
            candidate["finishReason"] = _finish_reason(served)
        chunk: dict[str, object] = {"candidates": [candidate]}
        if with_usage:
            shown = len(served.answer.tokens) if last else index
            chunk["usageMetadata"] = usage_metadata(served, candidates=shown)
        chunk["modelVersion"] = served.model
        chunk["responseId"] = served.id
        produced = served.answer.output_tokens if last else reasoning + index
        frames.append(data_frame(chunk, produced=produced, final=last))
    return frames


def _timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def cache_entry_json(entry: CacheEntry, now: float) -> dict[str, object]:
    """A ``CachedContent`` resource as Gemini answers it (input-only fields left out)."""
    wall_now = time.time()
    return {
        "name": entry.name,
        "model": f"models/{entry.model}",
        "displayName": entry.display_name,
        "createTime": _timestamp(entry.created_wall),
        "updateTime": _timestamp(wall_now),
        "expireTime": _timestamp(wall_now + (entry.expires_at - now)),
        "usageMetadata": {"totalTokenCount": len(entry.tokens)},
    }


def prompt_messages(system: Message | None, contents: Sequence[Message]) -> tuple[Message, ...]:
    return ((system,) if system is not None else ()) + tuple(contents)
