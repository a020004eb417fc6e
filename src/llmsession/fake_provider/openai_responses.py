"""OpenAI Responses (``POST /v1/responses``): the request the fake reads, the
``response`` object it answers, and the stream of typed events.

The prompt is the ``instructions`` (a system message, when given), then the stored
conversation of ``previous_response_id`` (when given), then ``input`` (a string is
one user message; a list holds message items, whose content is a string or text
parts; reasoning items are accepted and count nothing). The answer is one
``message`` output item (after a ``reasoning`` item, for reasoning models).

A stream is ``event:``/``data:`` pairs, each data with ``type`` and an increasing
``sequence_number``: ``response.created``, ``response.in_progress``, for each output
item ``response.output_item.added`` (a message then ``response.content_part.added``,
one ``response.output_text.delta`` per token, ``response.output_text.done``,
``response.content_part.done``) and ``response.output_item.done``, and last
``response.completed`` (``response.incomplete`` when the output limit cut the
answer) carrying the usage. There is no ``[DONE]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, cast

from llmsession.fake_provider.answers import is_reasoning_model
from llmsession.fake_provider.errors import invalid_request
from llmsession.fake_provider.provider import Served, new_id
from llmsession.fake_provider.request_fields import (
    optional_bool,
    optional_int,
    optional_str,
    required_str,
)
from llmsession.fake_provider.sse import Frame, event_frame
from llmsession.fake_provider.tokens import Message

__all__ = [
    "MIN_OUTPUT_TOKENS",
    "ResponsesRequest",
    "answer_message",
    "parse_responses_request",
    "response_body",
    "response_frames",
    "responses_usage",
]

#: OpenAI refuses a ``max_output_tokens`` below this.
MIN_OUTPUT_TOKENS: Final = 16

_ROLES: Final = frozenset({"system", "developer", "user", "assistant"})
_TEXT_PARTS: Final = frozenset({"input_text", "output_text", "text", "refusal"})


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """What the fake takes from a Responses request."""

    model: str
    instructions: str | None
    input: tuple[Message, ...]
    previous_response_id: str | None
    store: bool
    limit: int | None
    stream: bool
    prompt_cache_key: str | None

    def prompt(self, context: tuple[Message, ...]) -> tuple[Message, ...]:
        """The whole prompt after the stored ``context`` of the previous response."""
        head = () if self.instructions is None else (Message("system", self.instructions),)
        return (*head, *context, *self.input)


def _part_text(part: object, where: str) -> str:
    if not isinstance(part, dict):
        raise invalid_request(f"Invalid '{where}': expected an object.", param=where)
    fields = cast(dict[str, object], part)
    kind = fields.get("type")
    text = fields.get("refusal") if kind == "refusal" else fields.get("text")
    if kind not in _TEXT_PARTS or not isinstance(text, str):
        raise invalid_request(
            f"Invalid '{where}': the fake provider reads only text parts "
            f"(input_text, output_text), got type {kind!r}.",
            param=where,
        )
    return text


def _item(raw: object, index: int) -> Message | None:
    where = f"input[{index}]"
    if not isinstance(raw, dict):
        raise invalid_request(f"Invalid '{where}': expected an object.", param=where)
    fields = cast(dict[str, object], raw)
    kind = fields.get("type", "message")
    if kind == "reasoning":
        return None
    if kind != "message":
        raise invalid_request(
            f"Invalid '{where}.type': the fake provider reads message and reasoning items, "
            f"got {kind!r}.",
            param=f"{where}.type",
        )
    role = fields.get("role")
    if role not in _ROLES:
        raise invalid_request(
            f"Invalid value for '{where}.role': expected one of {', '.join(sorted(_ROLES))}, "
            f"got {role!r}.",
            param=f"{where}.role",
            code="invalid_value",
        )
    content = fields.get("content")
    if isinstance(content, str):
        return Message(str(role), content)
    if not isinstance(content, list):
        raise invalid_request(
            f"Invalid type for '{where}.content': expected a string or an array of parts.",
            param=f"{where}.content",
            code="invalid_type",
        )
    parts = cast(list[object], content)
    texts = [_part_text(part, f"{where}.content[{i}]") for i, part in enumerate(parts)]
    return Message(str(role), "\n".join(texts))


def _input(body: dict[str, object]) -> tuple[Message, ...]:
    raw = body.get("input")
    if raw is None:
        raise invalid_request(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )
    if isinstance(raw, str):
        return (Message("user", raw),)
    if not isinstance(raw, list):
        raise invalid_request(
            "Invalid type for 'input': expected a string or an array of input items.",
            param="input",
            code="invalid_type",
        )
    items = (_item(item, i) for i, item in enumerate(cast(list[object], raw)))
    return tuple(item for item in items if item is not None)


def parse_responses_request(body: dict[str, object]) -> ResponsesRequest:
    """The request's fields; a 400 ProviderError names the first wrong one."""
    return ResponsesRequest(
        model=required_str(body, "model"),
        instructions=optional_str(body, "instructions"),
        input=_input(body),
        previous_response_id=optional_str(body, "previous_response_id"),
        store=optional_bool(body, "store", True),
        limit=optional_int(body, "max_output_tokens", minimum=MIN_OUTPUT_TOKENS),
        stream=optional_bool(body, "stream", False),
        prompt_cache_key=optional_str(body, "prompt_cache_key"),
    )


def responses_usage(served: Served) -> dict[str, object]:
    """The ``usage`` object of a response, as OpenAI reports it.

    OpenAI's automatic prompt caching charges nothing to write, so
    ``cache_write_tokens`` is 0.
    """
    output = served.answer.output_tokens
    return {
        "input_tokens": served.input_tokens,
        "input_tokens_details": {"cached_tokens": served.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": served.answer.reasoning_tokens},
        "total_tokens": served.input_tokens + output,
    }


def answer_message(served: Served) -> Message:
    """The answer as a message of the conversation a stored response keeps."""
    return Message("assistant", served.answer.text)


@dataclass(frozen=True, slots=True)
class _Items:
    """The output items' ids, fixed for one answer so every event names the same ones."""

    reasoning_id: str | None
    message_id: str


def _items(served: Served) -> _Items:
    reasoning = new_id("rs_") if served.answer.reasoning_tokens else None
    return _Items(reasoning, new_id("msg_"))


def _text_part(text: str) -> dict[str, object]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str) -> dict[str, object]:
    return {"id": item_id, "type": "reasoning", "summary": [], "status": "completed"}


def _message_item(item_id: str, status: str, content: list[dict[str, object]]) -> dict[str, object]:
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _output(served: Served, items: _Items) -> list[dict[str, object]]:
    status = "incomplete" if served.answer.truncated else "completed"
    output: list[dict[str, object]] = []
    if items.reasoning_id is not None:
        output.append(_reasoning_item(items.reasoning_id))
    output.append(_message_item(items.message_id, status, [_text_part(served.answer.text)]))
    return output


def _response(
    served: Served,
    request: ResponsesRequest,
    *,
    status: str,
    output: list[dict[str, object]],
    usage: dict[str, object] | None,
) -> dict[str, object]:
    return {
        "id": served.id,
        "object": "response",
        "created_at": served.created,
        "status": status,
        "background": False,
        "completed_at": served.created if status == "completed" else None,
        "error": None,
        "incomplete_details": ({"reason": "max_output_tokens"} if status == "incomplete" else None),
        "instructions": request.instructions,
        "max_output_tokens": request.limit,
        "model": served.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": request.previous_response_id,
        "prompt_cache_key": request.prompt_cache_key,
        "reasoning": (
            {"effort": "medium", "summary": None} if is_reasoning_model(served.model) else None
        ),
        "service_tier": "default",
        "store": request.store,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }


def _final_status(served: Served) -> str:
    return "incomplete" if served.answer.truncated else "completed"


def response_body(
    served: Served, request: ResponsesRequest, *, with_usage: bool
) -> dict[str, object]:
    """The ``response`` object of a non-stream answer."""
    return _response(
        served,
        request,
        status=_final_status(served),
        output=_output(served, _items(served)),
        usage=responses_usage(served) if with_usage else None,
    )


def response_frames(served: Served, request: ResponsesRequest, *, with_usage: bool) -> list[Frame]:
    """The event stream of an answer; ``with_usage`` false leaves the final usage null."""
    items = _items(served)
    answer = served.answer
    reasoning = answer.reasoning_tokens
    frames: list[Frame] = []

    def add(name: str, payload: dict[str, object], produced: int, *, final: bool = False) -> None:
        event = {"type": name, "sequence_number": len(frames), **payload}
        frames.append(event_frame(name, event, produced=produced, final=final))

    pending = _response(served, request, status="in_progress", output=[], usage=None)
    add("response.created", {"response": pending}, 0)
    add("response.in_progress", {"response": pending}, 0)
    output_index = 0
    if items.reasoning_id is not None:
        item = _reasoning_item(items.reasoning_id)
        add(
            "response.output_item.added",
            {"output_index": 0, "item": {**item, "status": "in_progress"}},
            0,
        )
        add("response.output_item.done", {"output_index": 0, "item": item}, reasoning)
        output_index = 1
    where = {"item_id": items.message_id, "output_index": output_index}
    add(
        "response.output_item.added",
        {"output_index": output_index, "item": _message_item(items.message_id, "in_progress", [])},
        reasoning,
    )
    add(
        "response.content_part.added",
        {**where, "content_index": 0, "part": _text_part("")},
        reasoning,
    )
    for index, delta in enumerate(answer.deltas(), start=1):
        add(
            "response.output_text.delta",
            {**where, "content_index": 0, "delta": delta, "logprobs": []},
            reasoning + index,
        )
    produced = answer.output_tokens
    add(
        "response.output_text.done",
        {**where, "content_index": 0, "text": answer.text, "logprobs": []},
        produced,
    )
    add(
        "response.content_part.done",
        {**where, "content_index": 0, "part": _text_part(answer.text)},
        produced,
    )
    status = _final_status(served)
    add(
        "response.output_item.done",
        {
            "output_index": output_index,
            "item": _message_item(items.message_id, status, [_text_part(answer.text)]),
        },
        produced,
    )
    final = _response(
        served,
        request,
        status=status,
        output=_output(served, items),
        usage=responses_usage(served) if with_usage else None,
    )
    add(f"response.{status}", {"response": final}, produced, final=True)
    return frames
