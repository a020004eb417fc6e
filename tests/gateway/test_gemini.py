"""Gemini's wire format and the explicit cache's rule, against bodies in Gemini's own shape.

The fixtures follow the REST reference of ``generateContent``,
``streamGenerateContent?alt=sse`` (CRLF-separated events, each a whole
``GenerateContentResponse`` with the running ``usageMetadata``) and
``cachedContents``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.genai import errors

from llmsession.gateway.config import ProviderConfig, SecretKey
from llmsession.gateway.endpoints import ENDPOINTS
from llmsession.gateway.gemini import (
    CacheRef,
    GeminiStream,
    cached_content_missing,
    fixed_digest,
    gemini_stream_error_event,
    gemini_upstream_body,
    gemini_upstream_path,
    gemini_usage,
    parse_cache_created,
    parse_gemini_request,
    parse_gemini_response,
)
from llmsession.gateway.gemini_cache import CacheState, GeminiCaches, min_cache_tokens, plan_cache
from llmsession.gateway.sse import SSEDecoder
from llmsession.gateway.wire import GatewayInputError, StreamOutcome, dump_json
from llmsession.ids import SessionId
from llmsession.usage import Usage
from tests.gateway.scripted import Scripted, ScriptedUpstream

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
STREAM = (FIXTURES / "stream.sse").read_bytes()
EVENTS = [event + b"\r\n\r\n" for event in STREAM.split(b"\r\n\r\n") if event]
ENDPOINT = ENDPOINTS["gemini/generateContent"]

HISTORY = [
    {"role": "user", "parts": [{"text": "Q1"}]},
    {"role": "model", "parts": [{"text": "A1"}]},
]
SYSTEM = {"parts": [{"text": "You are terse."}]}


def request_body(**fields: Any) -> bytes:
    return json.dumps(
        {"contents": [{"role": "user", "parts": [{"text": "Q2"}]}], **fields}
    ).encode()


def test_the_model_and_the_method_come_from_the_url() -> None:
    parsed = ENDPOINT.parse(
        request_body(), path_model="gemini/gemini-2.5-flash:streamGenerateContent", headers={}
    )
    assert (parsed.model, parsed.stream, parsed.may_chain) == (
        "gemini/gemini-2.5-flash",
        True,
        True,
    )
    assert parsed.items == ({"role": "user", "parts": [{"text": "Q2"}]},)
    plain = ENDPOINT.parse(request_body(), path_model="m:generateContent", headers={})
    assert not plain.stream
    with pytest.raises(GatewayInputError, match="generateContent"):
        ENDPOINT.parse(request_body(), path_model="m:countTokens", headers={})
    assert ENDPOINT.upstream_path(parsed, "gemini-2.5-flash") == (
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert ENDPOINT.upstream_headers(parsed, "k") == [("x-goog-api-key", "k")]
    assert gemini_upstream_path("a b", stream=False) == "/v1beta/models/a%20b:generateContent"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"contents": "hi"}, "'contents' must be a list"),
        ({"contents": [{"role": "user"}]}, "'contents\\[0\\]' must be an object with a list"),
        ({"contents": [{"role": 3, "parts": []}]}, "role' must be a string"),
        ({"contents": [], "cachedContent": "cachedContents/x"}, "'cachedContent' is not accepted"),
        (
            {"contents": [], "systemInstruction": "be terse"},
            "'systemInstruction' must be an object",
        ),
    ],
)
def test_bad_requests_are_refused_saying_what_is_allowed(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(GatewayInputError, match=message):
        parse_gemini_request(json.dumps(body).encode(), model="m", stream=False)


def test_replay_sends_the_history_then_the_new_contents_with_the_clients_fields() -> None:
    request = parse_gemini_request(
        request_body(systemInstruction=SYSTEM, generationConfig={"temperature": 0}),
        model="m",
        stream=False,
    )
    body = json.loads(gemini_upstream_body(request, HISTORY, None))
    assert body["contents"] == [*HISTORY, {"role": "user", "parts": [{"text": "Q2"}]}]
    assert body["systemInstruction"] == SYSTEM
    assert body["generationConfig"] == {"temperature": 0}
    assert "cachedContent" not in body


def test_a_cached_history_sends_the_entry_and_only_what_it_does_not_hold() -> None:
    request = parse_gemini_request(
        request_body(systemInstruction=SYSTEM, tools=[{"functionDeclarations": []}]),
        model="m",
        stream=False,
    )
    body = json.loads(gemini_upstream_body(request, HISTORY, CacheRef("cachedContents/c1", 1)))
    assert body["cachedContent"] == "cachedContents/c1"
    assert body["contents"] == [HISTORY[1], {"role": "user", "parts": [{"text": "Q2"}]}]
    # Gemini refuses these beside a cachedContent: they are in the entry.
    assert "systemInstruction" not in body
    assert "tools" not in body


def test_an_empty_first_request_is_refused() -> None:
    request = parse_gemini_request(b'{"contents": []}', model="m", stream=False)
    with pytest.raises(GatewayInputError, match="must not be empty"):
        gemini_upstream_body(request, [], None)


def test_the_fixed_fields_digest_ignores_what_the_entry_does_not_hold() -> None:
    base = fixed_digest({"systemInstruction": SYSTEM})
    assert base == fixed_digest({"systemInstruction": SYSTEM, "generationConfig": {"x": 1}})
    assert base != fixed_digest({"systemInstruction": SYSTEM, "tools": []})
    assert base != fixed_digest({})


def test_a_response_adds_its_content_and_counts_the_cached_part_once() -> None:
    answer = parse_gemini_response((FIXTURES / "generate_response.json").read_bytes())
    assert answer.items == (
        {"role": "model", "parts": [{"text": "The capital of France is Paris."}]},
    )
    usage = answer.usage
    assert usage is not None
    # promptTokenCount already includes cachedContentTokenCount; thoughts are output.
    assert (usage.input_tokens, usage.cached_input_tokens) == (2065, 2048)
    assert (usage.output_tokens, usage.reasoning_tokens) == (7 + 38, 38)
    assert usage.delta_tokens == 17
    assert usage.raw["totalTokenCount"] == 2110


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"promptTokenCount": 5}, Usage(5)),
        (
            {"promptTokenCount": 5, "toolUsePromptTokenCount": 3, "candidatesTokenCount": 2},
            Usage(8, output_tokens=2),
        ),
        ({"candidatesTokenCount": 2}, None),
        ({"promptTokenCount": "5"}, None),
        ({"promptTokenCount": 5, "cachedContentTokenCount": 9}, None),
    ],
)
def test_usage_metadata(metadata: dict[str, Any], expected: Usage | None) -> None:
    assert gemini_usage(metadata) == expected


def feed_all(stream: GeminiStream, events: list[bytes]) -> list[bytes]:
    return [sent for event in events for sent in stream.feed(event)]


def test_a_stream_passes_through_and_holds_back_its_finishing_event() -> None:
    stream = GeminiStream()
    forwarded = feed_all(stream, EVENTS)
    assert forwarded == EVENTS[:-1]
    outcome = stream.close()
    assert outcome.completed
    assert outcome.tail == EVENTS[-1]
    assert b"".join(forwarded) + outcome.tail == STREAM
    usage = outcome.answer.usage
    assert usage is not None
    # Every event carried the running usage: the last counts, they are never added up.
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (12, 35, 28)
    (content,) = outcome.answer.items
    assert content == {
        "role": "model",
        "parts": [
            {"text": "**Answering** plainly.", "thought": True},
            {"text": "The capital of France is Paris."},
        ],
    }


def test_a_stream_in_odd_pieces_reads_the_same() -> None:
    stream = GeminiStream()
    forwarded = [sent for i in range(0, len(STREAM), 7) for sent in stream.feed(STREAM[i : i + 7])]
    outcome = stream.close()
    assert b"".join(forwarded) + outcome.tail == STREAM
    assert outcome.completed


def test_a_stream_without_its_finish_reason_is_incomplete_with_the_usage_it_sent() -> None:
    stream = GeminiStream()
    feed_all(stream, EVENTS[:2])
    outcome = stream.close()
    assert not outcome.completed
    assert outcome.answer.usage is not None
    assert outcome.answer.usage.output_tokens == 2 + 28


def test_an_event_not_in_utf8_is_read_as_its_text_reads() -> None:
    stream = GeminiStream()
    assert stream.feed(b'data: {"candidates": [{"content": {"parts": [{"text": "caf\xff"}]}}]}\n\n')
    assert not stream.feed(b'data: {"candidates": [{"finishReason": "STOP"}]}\n\n')
    outcome = stream.close()
    assert outcome.completed
    assert outcome.answer.items == ({"role": "model", "parts": [{"text": "caf\ufffd"}]},)


def test_signed_parts_are_kept_apart() -> None:
    signed = {"text": "", "thoughtSignature": "c2ln"}
    chunk = {"candidates": [{"content": {"parts": [{"text": "a"}, signed, {"text": "b"}]}}]}
    stream = GeminiStream()
    stream.feed(f"data: {json.dumps(chunk)}\r\n\r\n".encode())
    (content,) = stream.close().answer.items
    assert content["parts"] == [{"text": "a"}, signed, {"text": "b"}]


def test_an_error_event_or_a_blocked_prompt_ends_the_stream() -> None:
    stream = GeminiStream()
    error = json.loads((FIXTURES / "invalid_argument.json").read_bytes())
    stream.feed(f"data: {json.dumps(error)}\n\n".encode())
    outcome = stream.close()
    assert not outcome.completed
    assert outcome.error == error["error"]
    blocked = GeminiStream()
    blocked.feed(b'data: {"promptFeedback": {"blockReason": "SAFETY"}}\n\n')
    assert blocked.close().completed


def test_the_error_event_is_one_the_sdk_raises() -> None:
    (event,) = SSEDecoder().feed(gemini_stream_error_event("the provider went away"))
    body = json.loads(event.data)
    with pytest.raises(errors.ServerError, match="the provider went away"):
        errors.APIError.raise_error(body["error"]["code"], body, None)


def test_a_missing_entry_is_recognised_and_other_errors_are_not() -> None:
    missing = (FIXTURES / "cache_missing.json").read_bytes()
    assert cached_content_missing(403, missing)
    assert ENDPOINT.previous_response_missing(403, missing)
    assert not cached_content_missing(400, (FIXTURES / "invalid_argument.json").read_bytes())
    assert not cached_content_missing(500, missing)
    assert not cached_content_missing(403, b"not json")


def test_a_created_entry_is_read_from_its_answer() -> None:
    created = parse_cache_created((FIXTURES / "cache_created.json").read_bytes())
    assert created is not None
    assert (created.name, created.tokens) == ("cachedContents/4d2kd477o3pg", 2048)
    assert parse_cache_created(b'{"name": "cachedContents/x"}') is None
    assert parse_cache_created(b"[]") is None


def test_states_and_references_round_trip_and_garbage_is_ignored() -> None:
    state = CacheState("cachedContents/c", 4, 2000, "f", 2100)
    assert CacheState.decode(state.encode()) == state
    assert CacheRef.decode(CacheRef("cachedContents/c", 4).encode()) == CacheRef(
        "cachedContents/c", 4
    )
    for garbage in (None, "", "resp_123", "[]", '{"gemini_cache": 3}'):
        assert CacheState.decode(garbage) is None
        assert CacheRef.decode(garbage) is None


@pytest.mark.parametrize(
    ("state", "fixed", "expected"),
    [
        # No history yet, or below the model's minimum: implicit caching only.
        (None, "f", "none"),
        (CacheState(None, 0, 0, "f", 1023), "f", "none"),
        (CacheState(None, 0, 0, "f", 1024), "f", "create"),
        # An entry grows by replay until the uncached part is as large as the entry.
        (CacheState("cachedContents/c", 2, 2000, "f", 3999), "f", "reuse"),
        (CacheState("cachedContents/c", 2, 2000, "f", 4000), "f", "create"),
        # Another system instruction or tools: the entry cannot serve this request.
        (CacheState("cachedContents/c", 2, 2000, "f", 2100), "g", "create"),
    ],
)
def test_the_cache_rule(state: CacheState | None, fixed: str, expected: str) -> None:
    assert plan_cache(state, fixed=fixed, history_items=4, model="gemini-2.5-flash") == expected


def test_pro_models_need_more_tokens() -> None:
    assert min_cache_tokens("gemini-2.5-flash") == 1024
    assert min_cache_tokens("gemini-2.5-pro") == 4096
    state = CacheState(None, 0, 0, "f", 2000)
    assert plan_cache(state, fixed="f", history_items=2, model="gemini-2.5-pro") == "none"


PROVIDER = ProviderConfig("g", "gemini", "http://g", "K", SecretKey("secret"))


async def test_a_creation_is_billed_in_its_round_and_a_failed_one_costs_nothing() -> None:
    request = ENDPOINT.parse(
        request_body(), path_model="gemini-2.5-flash:generateContent", headers={}
    )
    last = CacheState(None, 0, 0, fixed_digest({}), 1500).encode()
    session = SessionId.parse("0197f0a5-1d3c-7c2e-9a55-3f4e2b1c0d9e")
    created = (FIXTURES / "cache_created.json").read_bytes()
    upstream = ScriptedUpstream(Scripted(body=created), Scripted(status=500, body=b"{}"))
    caches = GeminiCaches(upstream)
    turn = await caches.prepare(
        provider=PROVIDER,
        model="gemini-2.5-flash",
        session_id=session,
        request=request,
        history=HISTORY,
        last=last,
        ttl_seconds=600,
    )
    (sent,) = upstream.sent
    assert (sent.method, sent.path) == ("POST", "/v1beta/cachedContents")
    assert json.loads(sent.body)["ttl"] == "600s"
    assert json.loads(sent.body)["contents"] == HISTORY
    assert turn.chain == CacheRef("cachedContents/4d2kd477o3pg", 2).encode()
    answer = Usage(2060, cached_input_tokens=2048, output_tokens=5, raw={"promptTokenCount": 2060})
    usage = turn.usage(answer)
    assert usage is not None
    assert (usage.input_tokens, usage.cache_write_tokens) == (2060 + 2048, 2048)
    assert usage.raw["cachedContentCreation"]["usageMetadata"] == {"totalTokenCount": 2048}
    stored = CacheState.decode(turn.stored(answer))
    assert stored == CacheState("cachedContents/4d2kd477o3pg", 2, 2048, fixed_digest({}), 2060)
    # A failed creation: the turn goes out as plain replay, and nothing is added.
    failed = await caches.prepare(
        provider=PROVIDER,
        model="gemini-2.5-flash",
        session_id=session,
        request=request,
        history=HISTORY,
        last=last,
        ttl_seconds=600,
    )
    assert failed.chain is None
    assert failed.usage(answer) == answer


async def test_a_creation_for_an_answer_without_usage_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    request = ENDPOINT.parse(
        request_body(), path_model="gemini-2.5-flash:generateContent", headers={}
    )
    created = (FIXTURES / "cache_created.json").read_bytes()
    turn = await GeminiCaches(ScriptedUpstream(Scripted(body=created))).prepare(
        provider=PROVIDER,
        model="gemini-2.5-flash",
        session_id=SessionId.parse("0197f0a5-1d3c-7c2e-9a55-3f4e2b1c0d9e"),
        request=request,
        history=HISTORY,
        last=CacheState(None, 0, 0, fixed_digest({}), 1500).encode(),
        ttl_seconds=600,
    )
    # The round stays without usage (usage_missing): the creation alone is no round's
    # input. What it was billed is not lost from sight, though.
    assert turn.usage(None) is None
    assert "cachedContents/4d2kd477o3pg was created (2048 tokens" in caplog.text


GONE = b'{"error": {"code": 403, "message": "CachedContent not found (or permission denied)"}}'


@pytest.mark.parametrize(
    ("renewal", "kept", "then"),
    [
        # No answer worth trusting: the entry is still the session's, nothing deleted.
        (Scripted(status=500, body=b"{}"), True, []),
        (Scripted(status=429, body=b"{}"), True, []),
        # Gone (Gemini's 403 naming it, or a 404): nothing to delete, and the turn is one
        # without an entry, which creates one for the history.
        (Scripted(status=403, body=GONE), False, [("POST", "/v1beta/cachedContents")]),
        (Scripted(status=404, body=b"{}"), False, [("POST", "/v1beta/cachedContents")]),
        # Refused otherwise: the entry is given up, as before, and deleted once the
        # round is recorded.
        (Scripted(status=400, body=b"{}"), False, [("DELETE", "/v1beta/cachedContents/old")]),
    ],
)
async def test_a_failed_renewal_keeps_the_entry_unless_it_is_gone_or_refused(
    renewal: Scripted, kept: bool, then: list[tuple[str, str]]
) -> None:
    request = ENDPOINT.parse(
        request_body(), path_model="gemini-2.5-flash:generateContent", headers={}
    )
    last = CacheState("cachedContents/old", 2, 1500, fixed_digest({}), 1600)
    created = (FIXTURES / "cache_created.json").read_bytes()
    upstream = ScriptedUpstream(renewal, Scripted(body=created), Scripted(body=b"{}"))
    turn = await GeminiCaches(upstream).prepare(
        provider=PROVIDER,
        model="gemini-2.5-flash",
        session_id=SessionId.parse("0197f0a5-1d3c-7c2e-9a55-3f4e2b1c0d9e"),
        request=request,
        history=HISTORY,
        last=last.encode(),
        ttl_seconds=600,
    )
    creates = then[:1] == [("POST", "/v1beta/cachedContents")]
    assert (turn.chain is not None) == creates
    answer = Usage(1700, output_tokens=5, raw={"promptTokenCount": 1700})
    stored = CacheState.decode(turn.stored(answer))
    assert stored is not None
    if kept:
        assert stored == replace(last, history_tokens=1700)
    elif creates:
        assert stored.name == "cachedContents/4d2kd477o3pg"
    else:
        assert stored.name is None
    await turn.committed()
    sent = [(request.method, request.path) for request in upstream.sent]
    assert sent == [("PATCH", "/v1beta/cachedContents/old"), *then]


# Numbers orjson reads otherwise than json: an integer beyond 64 bits, and a float
# under 1e-4 that dump_json leaves to json to write.
EXACT_ARGS = '{"seed": 123456789012345678901234, "scale": 1e-07, "ratio": 0.25}'
EXACT_METADATA = '{"promptTokenCount": 12, "candidatesTokenCount": 3, "score": 1e-07}'


def test_a_response_keeps_its_numbers_exactly() -> None:
    body = (
        '{"candidates": [{"content": {"role": "model", "parts": [{"functionCall": '
        f'{{"name": "f", "args": {EXACT_ARGS}}}}}]}}}}], "usageMetadata": {EXACT_METADATA}}}'
    ).encode()
    answer = parse_gemini_response(body)
    expected = json.loads(body)
    assert answer.items == (expected["candidates"][0]["content"],)
    assert answer.usage is not None
    assert answer.usage.raw == expected["usageMetadata"]
    assert dump_json(answer.usage.raw).endswith(b'"score":1e-07}')
    assert answer.items[0]["parts"][0]["functionCall"]["args"]["seed"] == 123456789012345678901234


def streamed(events: list[str]) -> StreamOutcome:
    """What a GeminiStream makes of these events' data, each line ended by CR LF."""
    stream = GeminiStream()
    for event in events:
        stream.feed(f"data: {event}\r\n\r\n".encode())
    return stream.close()


def test_a_stream_keeps_its_numbers_exactly_and_joins_its_text() -> None:
    events = [
        '{"candidates": [{"content": {"role": "model", "parts": [{"text": "a"}]}}]}',
        '{"candidates": [{"content": {"parts": [{"text": "b"}, {"text": "c"}]}}]}',
        '{"candidates": [{"content": {"parts": [{"functionCall": '
        f'{{"name": "f", "args": {EXACT_ARGS}}}}}]}}, "finishReason": "STOP"}}], '
        f'"usageMetadata": {EXACT_METADATA}}}',
    ]
    outcome = streamed(events)
    assert outcome.completed
    (content,) = outcome.answer.items
    assert content == {
        "role": "model",
        "parts": [{"text": "abc"}, {"functionCall": {"name": "f", "args": json.loads(EXACT_ARGS)}}],
    }
    assert content["parts"][1]["functionCall"]["args"]["seed"] == 123456789012345678901234
    assert outcome.answer.usage is not None
    assert dump_json(outcome.answer.usage.raw).endswith(b'"score":1e-07}')


def test_a_stream_keeps_the_numbers_of_its_last_usage_exactly() -> None:
    # Each event's usage is the running total: the last one counts, read exactly
    # whether or not an event before it held a float.
    first = '{"promptTokenCount": 12, "candidatesTokenCount": 1, "score": 1e-05}'
    events = [
        f'{{"candidates": [{{"content": {{"parts": [{{"text": "a"}}]}}}}], "usageMetadata": {first}}}',
        '{"candidates": [{"content": {"parts": [{"text": "b"}]}, "finishReason": "STOP"}], '
        f'"usageMetadata": {EXACT_METADATA}}}',
    ]
    outcome = streamed(events)
    assert outcome.completed
    assert outcome.answer.items == ({"role": "model", "parts": [{"text": "ab"}]},)
    assert outcome.answer.usage is not None
    assert outcome.answer.usage.raw == json.loads(EXACT_METADATA)
    assert dump_json(outcome.answer.usage.raw).endswith(b'"score":1e-07}')


def test_a_session_without_an_entry_below_the_minimum_stores_no_digest() -> None:
    below = CacheState(None, 0, 0, "", 500)
    assert plan_cache(below, fixed="", history_items=2, model="gemini-2.5-flash") == "none"
    assert CacheState.decode(below.encode()) == below
