"""Every fault mode, seen through the official SDK, and what each one bills."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from tests.fake_provider.conftest import API_KEY, FakeProcess

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
HELLO_TOKENS = 2 + 3 + 3
HELLO_ANSWER_TOKENS = 5  # You said : hello there


def _wait_for_billing(fake: FakeProcess, count: int) -> list[dict[str, Any]]:
    # An entry lands when the fake finishes the request, which may be after the client left.
    deadline = time.monotonic() + 10.0
    while True:
        entries = fake.billing()
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        time.sleep(0.02)


def test_500_answers_openais_server_error_and_bills_nothing(fake: FakeProcess) -> None:
    fake.fault(mode="500")
    with pytest.raises(openai.InternalServerError) as caught:
        fake.client().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.status_code == 500
    assert caught.value.body == {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert fake.billing() == []
    # The fault was for one request: the next is served.
    fake.client().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert len(fake.billing()) == 1


def test_the_sdks_own_retry_gets_through_a_single_500_and_is_billed_once(
    fake: FakeProcess,
) -> None:
    fake.fault(mode="500", count=1)
    completion = fake.client(max_retries=1).chat.completions.create(model="gpt-4o", messages=HELLO)
    assert [e["id"] for e in fake.billing()] == [completion.id]


def test_429_carries_retry_after_and_openais_rate_limit_body(fake: FakeProcess) -> None:
    fake.fault(mode="429", retry_after_seconds=7, count=2)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            fake.client().responses.create(model="gpt-4o", input="hi")
        assert caught.value.code == "rate_limit_exceeded"
        assert caught.value.response.headers["retry-after"] == "7"
        assert caught.value.response.headers["retry-after-ms"] == "7000"
    assert fake.billing() == []
    assert fake.get("/_fake/faults") == {"pending": []}


def test_a_fault_for_one_endpoint_leaves_the_other_alone(fake: FakeProcess) -> None:
    fake.fault(mode="500", endpoint="responses")
    fake.client().chat.completions.create(model="gpt-4o", messages=HELLO)
    with pytest.raises(openai.InternalServerError):
        fake.client().responses.create(model="gpt-4o", input="hi")


def test_slow_makes_a_client_time_out_and_the_request_is_still_billed(fake: FakeProcess) -> None:
    fake.fault(mode="slow", delay_seconds=0.5)
    with pytest.raises(openai.APITimeoutError):
        fake.client(timeout=0.1).chat.completions.create(model="gpt-4o", messages=HELLO)
    # As at OpenAI, a request the client gave up on was still processed and billed.
    [entry] = _wait_for_billing(fake, 1)
    assert (entry["input_tokens"], entry["output_tokens"]) == (HELLO_TOKENS, HELLO_ANSWER_TOKENS)
    assert (entry["completed"], entry["usage_reported"]) == (False, False)


def test_a_stream_whose_client_left_during_the_delay_sends_nothing(fake: FakeProcess) -> None:
    fake.fault(mode="slow", delay_seconds=0.5)
    with pytest.raises(openai.APITimeoutError):
        fake.client(timeout=0.1).responses.create(model="gpt-4o", input="hi", stream=True)
    [entry] = _wait_for_billing(fake, 1)
    assert (entry["completed"], entry["output_tokens"], entry["stream"]) == (False, 0, True)


def test_slow_answers_in_full_after_the_delay(fake: FakeProcess) -> None:
    fake.fault(mode="slow", delay_seconds=0.05, event_delay_seconds=0.01)
    chunks = fake.client().chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert [u.completion_tokens for u in usage] == [HELLO_ANSWER_TOKENS]


def test_a_client_leaving_a_slow_stream_is_billed_for_what_was_produced(
    fake: FakeProcess,
) -> None:
    fake.fault(mode="slow", delay_seconds=0, event_delay_seconds=0.2)
    with fake.client().chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    ) as stream:
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
    [entry] = _wait_for_billing(fake, 1)
    assert (entry["completed"], entry["usage_reported"]) == (False, False)
    assert entry["input_tokens"] == HELLO_TOKENS
    assert entry["output_tokens"] < HELLO_ANSWER_TOKENS


def test_cut_chat_stream_ends_in_a_connection_error_without_usage(fake: FakeProcess) -> None:
    fake.fault(mode="cut", after_events=3)
    stream = fake.client().chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIConnectionError):
        chunks.extend(stream)
    assert [c.choices[0].delta.content for c in chunks] == ["", "You", " said"]
    assert all(c.usage is None for c in chunks)
    [entry] = fake.billing()
    # Billed for the prompt and the two answer tokens produced before the cut.
    assert (entry["input_tokens"], entry["output_tokens"]) == (HELLO_TOKENS, 2)
    assert (entry["completed"], entry["usage_reported"], entry["stream"]) == (False, False, True)


@pytest.mark.parametrize("after_events", [0, 5, 1000])
def test_cut_responses_stream_never_completes(fake: FakeProcess, after_events: int) -> None:
    fake.fault(mode="cut", after_events=after_events)
    stream = fake.client().responses.create(model="gpt-4o", input="hello there", stream=True)
    types: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        types.extend(event.type for event in stream)
    assert "response.completed" not in types
    assert len(types) == min(after_events, 12)  # 12 events come before response.completed
    [entry] = fake.billing()
    assert entry["completed"] is False


def test_a_cut_response_is_not_stored(fake: FakeProcess) -> None:
    fake.fault(mode="cut", after_events=4)
    client = fake.client()
    ids = []
    with pytest.raises(openai.APIConnectionError):
        ids.extend(
            e.response.id
            for e in client.responses.create(model="gpt-4o", input="a", stream=True)
            if e.type == "response.created"
        )
    with pytest.raises(openai.BadRequestError, match="not found"):
        client.responses.create(model="gpt-4o", input="b", previous_response_id=ids[0])


def test_cut_non_stream_answer_breaks_off_mid_body(fake: FakeProcess) -> None:
    fake.fault(mode="cut")
    with pytest.raises(openai.APIConnectionError):
        fake.client().chat.completions.create(model="gpt-4o", messages=HELLO)
    [entry] = fake.billing()
    assert (entry["completed"], entry["output_tokens"]) == (False, HELLO_ANSWER_TOKENS)


def test_no_usage_chat_stream_ends_normally_without_the_usage_chunk(fake: FakeProcess) -> None:
    fake.fault(mode="no_usage")
    chunks = list(
        fake.client().chat.completions.create(
            model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)
    [entry] = fake.billing()
    assert (entry["completed"], entry["usage_reported"]) == (True, False)
    assert entry["output_tokens"] == HELLO_ANSWER_TOKENS


def test_no_usage_responses_stream_and_bodies(fake: FakeProcess) -> None:
    fake.fault(mode="no_usage", count=3)
    client = fake.client()
    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is None
    assert client.responses.create(model="gpt-4o", input="hi").usage is None
    assert client.chat.completions.create(model="gpt-4o", messages=HELLO).usage is None
    assert [e["usage_reported"] for e in fake.billing()] == [False, False, False]


def test_forget_responses_fault_drops_stored_responses_for_the_next_request(
    fake: FakeProcess,
) -> None:
    client = fake.client()
    first = client.responses.create(model="gpt-4o", input="hi")
    fake.fault(mode="forget_responses")
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-4o", input="again", previous_response_id=first.id)
    assert caught.value.code == "previous_response_not_found"
    # The gateway's fallback: replay the conversation without previous_response_id.
    replay = client.responses.create(
        model="gpt-4o",
        input=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "again"},
        ],
    )
    assert replay.output_text == "You said : again"


def test_faults_can_be_listed_and_cleared(fake: FakeProcess) -> None:
    fake.fault(mode="500", count=3)
    fake.fault(mode="cut", endpoint="chat.completions", after_events=1)
    pending = fake.get("/_fake/faults")["pending"]
    assert [(f["mode"], f["count"]) for f in pending] == [("500", 3), ("cut", 1)]
    cleared = httpx.delete(fake.root + "/_fake/faults", timeout=5.0)
    assert cleared.json() == {"pending": []}
    fake.client().chat.completions.create(model="gpt-4o", messages=HELLO)


def test_a_wrong_fault_is_a_400_naming_what_is_allowed(fake: FakeProcess) -> None:
    response = fake.post("/_fake/faults", {"mode": "explode"})
    assert response.status_code == 400
    assert (
        "mode must be one of 500, 429, slow, cut, no_usage, forget_responses"
        in (response.json()["error"]["message"])
    )
    assert fake.get("/_fake/faults") == {"pending": []}


def test_faults_hit_only_authenticated_provider_requests(fake: FakeProcess) -> None:
    fake.fault(mode="500")
    with pytest.raises(openai.AuthenticationError):
        fake.client("sk-wrong").chat.completions.create(model="gpt-4o", messages=HELLO)
    assert len(fake.get("/_fake/faults")["pending"]) == 1
    assert API_KEY
