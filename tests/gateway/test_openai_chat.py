"""Chat Completions wire format, against golden bodies and streams in OpenAI's own shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmsession.gateway.openai_chat import (
    ChatStream,
    chat_upstream_body,
    parse_chat_request,
    parse_chat_response,
    stream_error_event,
)
from llmsession.gateway.sse import SSEDecoder
from llmsession.gateway.wire import GatewayInputError, dump_json

FIXTURES = Path(__file__).parent / "fixtures" / "openai"
STREAM = (FIXTURES / "chat_stream.sse").read_bytes()
TOOL_STREAM = (FIXTURES / "chat_stream_tool_calls.sse").read_bytes()
BODY = (FIXTURES / "chat_response.json").read_bytes()
USAGE_CHUNK = next(line for line in STREAM.split(b"\n\n") if b'"choices":[]' in line) + b"\n\n"

HISTORY = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1"},
]


def request(**fields: object) -> bytes:
    body = {"model": "fake/gpt-4o-mini", "messages": [{"role": "user", "content": "Q2"}]}
    body.update(fields)
    return json.dumps(body).encode()


def test_upstream_body_is_the_history_then_the_new_messages() -> None:
    parsed = parse_chat_request(request(temperature=0.2, user="u1"))
    body = chat_upstream_body(parsed, HISTORY, model="gpt-4o-mini", cache_key="sess-1")
    assert body == (
        b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},'
        b'{"role":"user","content":"Q1"},{"role":"assistant","content":"A1"},'
        b'{"role":"user","content":"Q2"}],"temperature":0.2,"user":"u1",'
        b'"prompt_cache_key":"sess-1"}'
    )


def test_the_clients_cache_key_wins() -> None:
    parsed = parse_chat_request(request(prompt_cache_key="mine"))
    body = json.loads(chat_upstream_body(parsed, [], model="m", cache_key="sess-1"))
    assert body["prompt_cache_key"] == "mine"


def test_a_stream_always_asks_upstream_for_usage() -> None:
    parsed = parse_chat_request(request(stream=True, stream_options={"include_obfuscation": False}))
    assert parsed.stream
    assert not parsed.client_wants_usage
    body = json.loads(chat_upstream_body(parsed, [], model="m", cache_key="k"))
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert parse_chat_request(
        request(stream=True, stream_options={"include_usage": True})
    ).client_wants_usage


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[1]", "must be a JSON object, got list"),
        (b"{", "must be a JSON object"),
        (json.dumps({"messages": []}).encode(), "'model' must be a non-empty string"),
        (json.dumps({"model": "m"}).encode(), "'messages' must be a list"),
        (json.dumps({"model": "m", "messages": [{"content": "x"}]}).encode(), r"'messages\[0\]'"),
        (request(stream="yes"), "'stream' must be true or false"),
        (request(stream_options=3), "'stream_options' must be an object"),
    ],
)
def test_bad_requests_name_the_field(body: bytes, message: str) -> None:
    with pytest.raises(GatewayInputError, match=message):
        parse_chat_request(body)


def test_an_empty_conversation_is_refused() -> None:
    parsed = parse_chat_request(request(messages=[]))
    with pytest.raises(GatewayInputError, match="must not be empty"):
        chat_upstream_body(parsed, [], model="m", cache_key="k")


def test_response_usage_and_history_entry() -> None:
    answer = parse_chat_response((FIXTURES / "chat_response.json").read_bytes())
    assert answer.items == (
        {
            "role": "assistant",
            "content": "The image shows a wooden boardwalk path running through a lush green field.",
        },
    )
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.cached_input_tokens) == (2006, 1920)
    assert (answer.usage.output_tokens, answer.usage.delta_tokens) == (15, 86)
    assert answer.usage.raw["total_tokens"] == 2021


@pytest.mark.parametrize(
    "usage",
    [
        {"completion_tokens": 3},
        {"prompt_tokens": -1, "completion_tokens": 3},
        {"prompt_tokens": "9", "completion_tokens": 1},
    ],
)
def test_usage_the_provider_did_not_give_is_not_made_up(usage: dict[str, object]) -> None:
    body = json.dumps({"choices": [], "usage": usage}).encode()
    assert parse_chat_response(body).usage is None


def run(stream: bytes, *, wants_usage: bool, sizes: int | None = None) -> tuple[bytes, ChatStream]:
    translator = ChatStream(client_wants_usage=wants_usage)
    step = sizes or len(stream)
    out = b"".join(
        b"".join(translator.feed(stream[i : i + step])) for i in range(0, len(stream), step)
    )
    return out, translator


def test_stream_passes_through_byte_for_byte_when_the_client_asked_for_usage() -> None:
    out, translator = run(STREAM, wants_usage=True)
    outcome = translator.close()
    assert out + outcome.tail == STREAM
    assert outcome.tail == b"data: [DONE]\n\n"
    assert outcome.completed
    assert outcome.answer.items == ({"role": "assistant", "content": "Hello there!"},)
    assert outcome.answer.usage is not None
    assert (outcome.answer.usage.input_tokens, outcome.answer.usage.cached_input_tokens) == (
        1300,
        1152,
    )


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_a_stream_whose_lines_end_in_cr_passes_through_byte_for_byte(ending: bytes) -> None:
    stream = STREAM.replace(b"\n", ending)
    out, translator = run(stream, wants_usage=True)
    outcome = translator.close()
    assert outcome.completed
    # The stream ends in a CR: no LF is made up after it.
    assert outcome.tail == b"data: [DONE]" + 2 * ending
    assert out + outcome.tail == stream


@pytest.mark.parametrize("step", [1, 7, 64])
def test_stream_drops_only_the_usage_chunk_when_the_client_did_not_ask(step: int) -> None:
    out, translator = run(STREAM, wants_usage=False, sizes=step)
    outcome = translator.close()
    assert out + outcome.tail == STREAM.replace(USAGE_CHUNK, b"")
    assert outcome.completed
    assert outcome.answer.usage is not None
    assert outcome.answer.usage.output_tokens == 3


def test_a_streamed_usage_object_is_kept_exactly_as_the_provider_wrote_it() -> None:
    # Events are read fast (orjson turns an integer beyond 64 bits into a float);
    # the usage chunk is read again exactly, since its object is kept verbatim.
    big = 2**70
    usage = USAGE_CHUNK.replace(
        b'"prompt_tokens_details":{', b'"prompt_tokens_details":{"x":%d,' % big
    )
    assert usage != USAGE_CHUNK
    _, translator = run(STREAM.replace(USAGE_CHUNK, usage), wants_usage=True)
    outcome = translator.close()
    assert outcome.answer.usage is not None
    assert outcome.answer.usage.raw["prompt_tokens_details"]["x"] == big
    assert type(outcome.answer.usage.raw["prompt_tokens_details"]["x"]) is int
    assert outcome.answer.items == ({"role": "assistant", "content": "Hello there!"},)


@pytest.mark.parametrize(("field", "value"), [("x", b"%d" % 2**70), ("x", b"1e-07"), ("x", b"1.5")])
def test_an_answers_usage_is_kept_exactly_as_the_provider_wrote_it(
    field: str, value: bytes
) -> None:
    body = json.loads(BODY)
    body["usage"]["prompt_tokens_details"][field] = 0
    raw = (
        json.dumps(body)
        .encode()
        .replace(b'"%s": 0' % field.encode(), b'"%s": %s' % (field.encode(), value))
    )
    assert value in raw
    answer = parse_chat_response(raw)
    assert answer.usage is not None
    kept = answer.usage.raw["prompt_tokens_details"][field]
    assert kept == json.loads(value)
    assert isinstance(kept, type(json.loads(value)))
    assert (
        dump_json(dict(answer.usage.raw))
        == json.dumps(json.loads(raw)["usage"], separators=(",", ":"), ensure_ascii=False).encode()
    )


def test_an_answers_tool_call_is_kept_exactly_as_the_provider_wrote_it() -> None:
    body = json.loads(BODY)
    body["choices"][0]["message"]["tool_calls"] = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}, "w": 0}
    ]
    raw = json.dumps(body).encode().replace(b'"w": 0', b'"w": 1e-07')
    (message,) = parse_chat_response(raw).items
    written = json.loads(raw)["choices"][0]["message"]["tool_calls"]
    assert (
        dump_json(message["tool_calls"])
        == json.dumps(written, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert b'"w":1e-07' in dump_json([message])


def test_streamed_tool_calls_are_assembled() -> None:
    _, translator = run(TOOL_STREAM, wants_usage=False)
    outcome = translator.close()
    assert outcome.answer.items == (
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
    )
    assert outcome.answer.usage is None


def test_two_tool_calls_streamed_in_pieces_side_by_side_are_each_assembled() -> None:
    arguments = ['{"ci', 'ty":', '"Paris"', "}"], ['{"q":', '"x"}']
    deltas: list[dict[str, object]] = [
        {"index": 0, "id": "c0", "type": "function", "function": {"name": "get_", "arguments": ""}},
        {"index": 1, "id": "c1", "type": "function", "function": {"name": "find", "arguments": ""}},
        {"index": 0, "function": {"name": "weather"}},
    ]
    for first, second in zip(arguments[0], [*arguments[1], "", ""], strict=True):
        deltas += (
            {"index": 0, "function": {"arguments": first}},
            {"index": 1, "function": {"arguments": second}},
        )
    stream = b"".join(
        b"data: "
        + json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [delta]}}]}).encode()
        + b"\n\n"
        for delta in deltas
    )
    _, translator = run(stream + b"data: [DONE]\n\n", wants_usage=False, sizes=11)
    (message,) = translator.close().answer.items
    assert message["tool_calls"] == [
        {
            "id": "c0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {"id": "c1", "type": "function", "function": {"name": "find", "arguments": '{"q":"x"}'}},
    ]


def test_a_streamed_legacy_function_call_is_assembled_as_a_body_keeps_it() -> None:
    # The ``functions`` API: the call comes in function_call deltas, not tool_calls.
    deltas: list[dict[str, object]] = [
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": ""},
        },
        {"function_call": {"arguments": '{"city": '}},
        {"function_call": {"arguments": '"Oslo"}'}},
    ]
    stream = b"".join(
        b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"
        for delta in deltas
    )
    _, translator = run(stream + b"data: [DONE]\n\n", wants_usage=False, sizes=7)
    (message,) = translator.close().answer.items
    assert message == {
        "role": "assistant",
        "content": None,
        "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    body = {"choices": [{"index": 0, "message": {**message, "refusal": None}}]}
    assert parse_chat_response(json.dumps(body).encode()).items == (message,)


def test_a_cut_stream_is_not_complete_and_keeps_only_the_usage_sent() -> None:
    cut = STREAM[
        : STREAM.index(
            b'{"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":[{"index":0,"delta":{},'
        )
        + 10
    ]
    _, translator = run(cut, wants_usage=False)
    outcome = translator.close()
    assert not outcome.completed
    assert outcome.answer.usage is None


def test_a_stream_ending_in_an_error_is_not_complete() -> None:
    error = b'data: {"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}\n\n'
    _, translator = run(STREAM[:200] + b"\n\n" + error + b"data: [DONE]\n\n", wants_usage=False)
    outcome = translator.close()
    assert not outcome.completed
    assert outcome.error == {
        "message": "overloaded",
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_the_error_event_is_one_openai_error_chunk() -> None:
    (event,) = SSEDecoder().feed(stream_error_event("the provider cut the stream"))
    assert json.loads(event.data)["error"]["message"] == "the provider cut the stream"


def feed_in(translator: ChatStream, chunks: list[bytes]) -> list[list[bytes]]:
    return [translator.feed(chunk) for chunk in chunks]


def test_events_of_one_chunk_each_pass_and_the_usage_chunk_with_done_is_held_or_dropped() -> None:
    events = [part + b"\n\n" for part in STREAM.split(b"\n\n")[:-1]]
    assert events[-2:] == [USAGE_CHUNK, b"data: [DONE]\n\n"]
    # All but the last two events in one chunk, then the usage chunk and [DONE] together.
    head, end = b"".join(events[:-2]), USAGE_CHUNK + b"data: [DONE]\n\n"
    for wants_usage in (True, False):
        translator = ChatStream(client_wants_usage=wants_usage)
        sent = feed_in(translator, [head, end])
        assert sent[0] == events[:-2]
        # [DONE] waits for the round's commit; the usage chunk goes only if asked for.
        assert sent[1] == ([USAGE_CHUNK] if wants_usage else [])
        outcome = translator.close()
        assert outcome.tail == b"data: [DONE]\n\n"
        assert outcome.completed
        assert outcome.answer.items == ({"role": "assistant", "content": "Hello there!"},)
        assert outcome.answer.usage is not None
        assert outcome.answer.usage.output_tokens == 3


def test_an_event_split_across_chunks_goes_once_it_is_whole() -> None:
    first, second = (part + b"\n\n" for part in STREAM.split(b"\n\n")[:2])
    translator = ChatStream(client_wants_usage=False)
    cut = second.index(b'"content"') + 12
    assert feed_in(translator, [first + second[:cut], second[cut:]]) == [[first], [second]]


def test_text_that_is_not_utf8_is_read_with_replacement_characters() -> None:
    # As the event's data is read as text: orjson refuses the bytes, so they are
    # decoded with replacements first.
    stream = STREAM.replace(b'"content":"Hello"', b'"content":"Hel\xfflo"')
    assert stream != STREAM
    out, translator = run(stream, wants_usage=True)
    outcome = translator.close()
    assert out + outcome.tail == stream
    assert outcome.answer.items == ({"role": "assistant", "content": "Hel\ufffdlo there!"},)


def test_a_delta_with_more_than_its_text_is_read_whole() -> None:
    chunk = (
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi","role":"developer",'
        b'"refusal":"no"}}]}\n\ndata: {"choices":[{"index":1,"delta":{"content":"other"}}]}'
        b'\n\ndata: {"choices":[{"index":0,"delta":null}]}\n\ndata: [DONE]\n\n'
    )
    _, translator = run(chunk, wants_usage=False)
    outcome = translator.close()
    assert outcome.answer.items == ({"role": "developer", "content": "Hi", "refusal": "no"},)
