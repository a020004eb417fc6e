"""The official openai SDK, unchanged, against the fake provider process: both
endpoints, sync and async, stream and not; every usage figure equals the billing log."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessageParam

from llmsession.fake_provider.billing import key_fingerprint
from tests.fake_provider.conftest import API_KEY, FakeProcess

QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]
# system: 3 words and ".", + 3; user: 6 words and "?", + 3; the reply primer 3.
QUESTION_TOKENS = (4 + 3) + (7 + 3) + 3
ANSWER = "You said : What is the capital of France ?"
ANSWER_TOKENS = 10


def _only_entry(fake: FakeProcess) -> dict[str, Any]:
    entries = fake.billing()
    assert len(entries) == 1, entries
    return entries[0]


def test_chat_completion(fake: FakeProcess) -> None:
    completion = fake.client().chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content) == ("assistant", ANSWER)
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        QUESTION_TOKENS,
        ANSWER_TOKENS,
        QUESTION_TOKENS + ANSWER_TOKENS,
    )
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert _only_entry(fake) == {
        "id": completion.id,
        "endpoint": "chat.completions",
        "model": "gpt-4o-mini",
        "key_fingerprint": key_fingerprint(API_KEY),
        "input_tokens": QUESTION_TOKENS,
        "cached_tokens": 0,
        "output_tokens": ANSWER_TOKENS,
        "reasoning_tokens": 0,
        "stream": False,
        "completed": True,
        "usage_reported": True,
        "prompt_cache_key": None,
        "previous_response_id": None,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
        "session_id": None,
    }


def test_chat_stream_with_usage(fake: FakeProcess) -> None:
    stream = fake.client().chat.completions.create(
        model="gpt-4o-mini",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        QUESTION_TOKENS,
        ANSWER_TOKENS,
    )
    assert all(chunk.usage is None for chunk in chunks[:-1])
    entry = _only_entry(fake)
    assert entry["stream"]
    assert entry["completed"]
    assert entry["usage_reported"]
    assert entry["output_tokens"] == ANSWER_TOKENS


def test_chat_stream_without_usage_asked_sends_none_and_still_bills(fake: FakeProcess) -> None:
    chunks = list(
        fake.client().chat.completions.create(model="gpt-4o", messages=QUESTION, stream=True)
    )
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    entry = _only_entry(fake)
    assert entry["completed"]
    assert not entry["usage_reported"]
    assert (entry["input_tokens"], entry["output_tokens"]) == (QUESTION_TOKENS, ANSWER_TOKENS)


def test_chat_stream_helper_accumulates_the_completion(fake: FakeProcess) -> None:
    with fake.client().chat.completions.stream(
        model="gpt-4o", messages=QUESTION, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == ANSWER
    assert final.usage is not None
    assert final.usage.total_tokens == QUESTION_TOKENS + ANSWER_TOKENS


async def test_chat_async_create_and_stream(fake: FakeProcess) -> None:
    client = fake.async_client()
    completion = await client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert completion.choices[0].message.content == ANSWER
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
    await client.close()
    assert [u.prompt_tokens for u in usage] == [QUESTION_TOKENS]
    assert [e["stream"] for e in fake.billing()] == [False, True]


def test_chat_reasoning_model_and_output_limit(fake: FakeProcess) -> None:
    client = fake.client()
    thinking = client.chat.completions.create(model="o3-mini", messages=QUESTION)
    assert thinking.usage is not None
    assert thinking.usage.completion_tokens_details is not None
    assert thinking.usage.completion_tokens_details.reasoning_tokens == 16
    assert thinking.usage.completion_tokens == 16 + ANSWER_TOKENS
    limited = client.chat.completions.create(
        model="gpt-4o", messages=QUESTION, max_completion_tokens=3
    )
    assert (limited.choices[0].message.content, limited.choices[0].finish_reason) == (
        "You said :",
        "length",
    )
    legacy = client.chat.completions.create(model="gpt-4o", messages=QUESTION, max_tokens=2)
    assert legacy.usage is not None
    assert legacy.usage.completion_tokens == 2
    assert [(e["output_tokens"], e["reasoning_tokens"]) for e in fake.billing()] == [
        (26, 16),
        (3, 0),
        (2, 0),
    ]


def test_responses_create(fake: FakeProcess) -> None:
    response = fake.client().responses.create(
        model="gpt-4o", instructions="You answer briefly.", input="What is the capital of France?"
    )
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == ANSWER
    assert response.output[0].type == "message"
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (
        QUESTION_TOKENS,
        ANSWER_TOKENS,
        QUESTION_TOKENS + ANSWER_TOKENS,
    )
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    entry = _only_entry(fake)
    assert (entry["id"], entry["endpoint"], entry["input_tokens"]) == (
        response.id,
        "responses",
        QUESTION_TOKENS,
    )


def test_responses_input_items_count_as_messages(fake: FakeProcess) -> None:
    response = fake.client().responses.create(
        model="gpt-4o",
        input=[
            {"role": "system", "content": "You answer briefly."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is the capital of France?"}],
            },
        ],
    )
    assert response.usage is not None
    assert response.usage.input_tokens == QUESTION_TOKENS


def test_responses_stream_events(fake: FakeProcess) -> None:
    events = list(
        fake.client().responses.create(model="o4-mini", input="What is the capital?", stream=True)
    )
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert types.count("response.output_item.added") == 2  # reasoning, then the message
    assert types.count("response.output_text.delta") == 8
    for name in ("content_part.added", "output_text.done", "content_part.done"):
        assert types.count(f"response.{name}") == 1
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    final = events[-1]
    assert final.type == "response.completed"
    assert "".join(deltas) == final.response.output_text == "You said : What is the capital ?"
    assert [item.type for item in final.response.output] == ["reasoning", "message"]
    usage = final.response.usage
    assert usage is not None
    assert (usage.output_tokens, usage.output_tokens_details.reasoning_tokens) == (24, 16)
    entry = _only_entry(fake)
    assert (entry["output_tokens"], entry["reasoning_tokens"], entry["stream"]) == (24, 16, True)


def test_responses_stream_helper_accumulates_the_response(fake: FakeProcess) -> None:
    with fake.client().responses.stream(model="gpt-4o", input="hello") as stream:
        final = stream.get_final_response()
    assert final.output_text == "You said : hello"


async def test_responses_async_create_and_stream(fake: FakeProcess) -> None:
    client = fake.async_client()
    first = await client.responses.create(model="gpt-4o", input="hello")
    stream = await client.responses.create(
        model="gpt-4o", input="again", previous_response_id=first.id, stream=True
    )
    completed = [event async for event in stream if event.type == "response.completed"]
    await client.close()
    assert completed[0].response.output_text == "You said : again"
    assert completed[0].response.previous_response_id == first.id


def test_responses_output_limit_makes_an_incomplete_response(fake: FakeProcess) -> None:
    client = fake.client()
    # 16 is the least max_output_tokens OpenAI takes; o1's 16 reasoning tokens use it all.
    cut = client.responses.create(model="o1", input="hi", max_output_tokens=16)
    assert (cut.status, cut.output_text) == ("incomplete", "")
    assert cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    events = list(
        client.responses.create(model="o1", input="hi", max_output_tokens=16, stream=True)
    )
    assert events[-1].type == "response.incomplete"


@pytest.mark.parametrize("stream", [False, True])
def test_billing_totals_equal_the_usage_the_sdk_saw(fake: FakeProcess, stream: bool) -> None:
    client = fake.client()
    seen = {
        "input_tokens": 0,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
    }
    big = "word " * 1500
    for model in ("gpt-4o", "o3-mini"):
        for question in ("one", "two"):
            messages: list[ChatCompletionMessageParam] = [
                {"role": "system", "content": big},
                {"role": "user", "content": question},
            ]
            if stream:
                chunks = client.chat.completions.create(
                    model=model,
                    messages=messages,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                usage = next(c.usage for c in chunks if c.usage is not None)
            else:
                usage = client.chat.completions.create(model=model, messages=messages).usage
            assert usage is not None
            assert usage.prompt_tokens_details
            assert usage.completion_tokens_details
            seen["input_tokens"] += usage.prompt_tokens
            seen["cached_tokens"] += usage.prompt_tokens_details.cached_tokens or 0
            seen["output_tokens"] += usage.completion_tokens
            seen["reasoning_tokens"] += usage.completion_tokens_details.reasoning_tokens or 0
            response = client.responses.create(
                model=model, instructions=big, input=question, stream=False
            )
            assert response.usage is not None
            seen["input_tokens"] += response.usage.input_tokens
            seen["cached_tokens"] += response.usage.input_tokens_details.cached_tokens
            seen["output_tokens"] += response.usage.output_tokens
            seen["reasoning_tokens"] += response.usage.output_tokens_details.reasoning_tokens
    totals = fake.get("/_fake/billing")["totals"]
    assert totals == {"requests": 8, **seen}
    assert seen["cached_tokens"] > 0
