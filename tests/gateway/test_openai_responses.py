"""Responses API wire format: chained or replayed requests, bodies and streams."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmsession.gateway.openai_responses import (
    ResponsesStream,
    parse_responses_request,
    parse_responses_response,
    previous_response_missing,
    responses_stream_error_event,
    responses_upstream_body,
)
from llmsession.gateway.sse import SSEDecoder
from llmsession.gateway.wire import GatewayInputError

FIXTURES = Path(__file__).parent / "fixtures" / "openai"
STREAM = (FIXTURES / "responses_stream.sse").read_bytes()
HISTORY = [
    {"type": "message", "role": "user", "content": "Q1"},
    {
        "type": "message",
        "id": "msg_0",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "A1"}],
    },
]


def request(**fields: object) -> bytes:
    body: dict[str, object] = {"model": "fake/gpt-4.1", "input": "Q2"}
    body.update(fields)
    return json.dumps(body).encode()


def test_a_string_input_is_one_user_message() -> None:
    parsed = parse_responses_request(request())
    assert parsed.input_items == ({"type": "message", "role": "user", "content": "Q2"},)
    assert parsed.store


def test_chained_mode_sends_only_the_new_input() -> None:
    parsed = parse_responses_request(request(instructions="Be brief."))
    body = responses_upstream_body(
        parsed, HISTORY, model="gpt-4.1", cache_key="s1", previous_response_id="resp_0"
    )
    assert body == (
        b'{"model":"gpt-4.1","input":"Q2","instructions":"Be brief.",'
        b'"prompt_cache_key":"s1","previous_response_id":"resp_0"}'
    )


def test_replay_mode_sends_the_history_then_the_new_input() -> None:
    parsed = parse_responses_request(request(store=False))
    assert not parsed.store
    body = json.loads(
        responses_upstream_body(
            parsed, HISTORY, model="gpt-4.1", cache_key="s1", previous_response_id=None
        )
    )
    assert body["input"] == [*HISTORY, {"type": "message", "role": "user", "content": "Q2"}]
    assert "previous_response_id" not in body


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"previous_response_id": "resp_x"}, "'previous_response_id' is kept by llmsession"),
        ({"conversation": "conv_1"}, "'conversation' is not supported"),
        ({"input": 3}, "'input' must be a string or a list"),
        ({"input": ["x"]}, r"'input\[0\]' must be an input item object"),
        ({"model": ""}, "'model' must be a non-empty string"),
        ({"store": "no"}, "'store' must be true or false"),
        ({"stream": 1}, "'stream' must be true or false"),
    ],
)
def test_bad_requests_name_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(GatewayInputError, match=message):
        parse_responses_request(request(**fields))


def test_response_usage_items_and_id() -> None:
    answer = parse_responses_response((FIXTURES / "responses_response.json").read_bytes())
    assert answer.response_id == "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
    assert answer.items[0]["type"] == "message"
    assert answer.usage is not None
    assert (
        answer.usage.input_tokens,
        answer.usage.cached_input_tokens,
        answer.usage.delta_tokens,
    ) == (1536, 1408, 128)


def test_previous_response_missing_is_recognised() -> None:
    body = (FIXTURES / "responses_previous_missing.json").read_bytes()
    assert previous_response_missing(400, body)
    assert not previous_response_missing(500, body)
    assert not previous_response_missing(400, b'{"error":{"code":"invalid_value"}}')
    assert not previous_response_missing(400, b"<html>")


@pytest.mark.parametrize("step", [1, 13, 10_000])
def test_stream_passes_through_and_reads_the_completed_response(step: int) -> None:
    translator = ResponsesStream()
    out = b"".join(
        b"".join(translator.feed(STREAM[i : i + step])) for i in range(0, len(STREAM), step)
    )
    outcome = translator.close()
    assert out + outcome.tail == STREAM
    assert outcome.tail.startswith(b"event: response.completed\n")
    assert outcome.completed
    assert outcome.answer.response_id == "resp_1"
    assert outcome.answer.items[0]["content"][0]["text"] == "Hi"
    assert outcome.answer.usage is not None
    assert (outcome.answer.usage.input_tokens, outcome.answer.usage.output_tokens) == (37, 11)


def test_a_cut_stream_is_not_complete() -> None:
    translator = ResponsesStream()
    translator.feed(STREAM[: STREAM.index(b"event: response.completed")])
    outcome = translator.close()
    assert not outcome.completed
    assert outcome.answer.usage is None
    assert outcome.answer.items[0]["id"] == "msg_1"


def test_a_failed_response_is_not_complete() -> None:
    failed = (
        b"event: response.failed\n"
        b'data: {"type":"response.failed","sequence_number":1,"response":{"id":"resp_2",'
        b'"status":"failed","error":{"code":"server_error","message":"boom"},"usage":null}}\n\n'
    )
    translator = ResponsesStream()
    assert translator.feed(failed) == [failed]
    outcome = translator.close()
    assert not outcome.completed
    assert outcome.error == {"code": "server_error", "message": "boom"}


def test_the_error_event_is_a_responses_error_event() -> None:
    (event,) = SSEDecoder().feed(responses_stream_error_event("cut"))
    assert event.event == "error"
    assert json.loads(event.data)["message"] == "cut"
