"""Anthropic Messages wire format, against bodies and streams in Anthropic's own shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmsession.gateway.anthropic_messages import (
    MessagesStream,
    cache_ttl,
    messages_upstream_body,
    messages_usage,
    parse_messages_request,
    parse_messages_response,
    stream_error_event,
)
from llmsession.gateway.sse import SSEDecoder
from llmsession.gateway.wire import GatewayInputError, dump_json

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
STREAM = (FIXTURES / "messages_stream.sse").read_bytes()
TOOL_STREAM = (FIXTURES / "messages_stream_tool_use.sse").read_bytes()
HEADERS = {"anthropic-version": "2023-06-01"}
EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}

HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
]


def request(**fields: object) -> bytes:
    body: dict[str, object] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Q2"}],
    }
    body.update(fields)
    return json.dumps(body).encode()


def upstream(
    raw: bytes, history: list[dict[str, Any]], *, ttl: int = 3600, key: str = "sess-1"
) -> dict[str, Any]:
    parsed = parse_messages_request(raw, HEADERS)
    body: dict[str, Any] = json.loads(
        messages_upstream_body(
            parsed, history, model="claude-sonnet-4-5", cache_key=key, session_ttl_seconds=ttl
        )
    )
    return body


def marks(body: dict[str, Any]) -> list[tuple[int, int, dict[str, Any]]]:
    found: list[tuple[int, int, dict[str, Any]]] = []
    for m, message in enumerate(body["messages"]):
        content = message["content"]
        for b, block in enumerate(content if isinstance(content, list) else []):
            if "cache_control" in block:
                found.append((m, b, block["cache_control"]))
    return found


def test_upstream_body_is_the_system_the_history_then_the_new_messages() -> None:
    body = upstream(request(temperature=0.2), HISTORY)
    assert body["system"] == "You are terse."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 64
    assert body["metadata"] == {"user_id": "sess-1"}
    # Read exactly where round 1 wrote (its last block), and written at the end for round 2.
    assert marks(body) == [(0, 0, HOUR), (2, 0, HOUR)]
    assert body["messages"][2]["content"] == [{"type": "text", "text": "Q2", "cache_control": HOUR}]


def test_the_history_and_the_request_are_not_changed_by_the_marks() -> None:
    history = json.loads(json.dumps(HISTORY))
    parsed = parse_messages_request(request(), HEADERS)
    messages_upstream_body(parsed, history, model="m", cache_key="k", session_ttl_seconds=60)
    assert history == HISTORY
    assert parsed.items == ({"role": "user", "content": "Q2"},)


def test_the_first_round_marks_its_end_and_keeps_its_system() -> None:
    body = upstream(request(system="Be brief."), [], ttl=120)
    assert body["system"] == "Be brief."
    assert marks(body) == [(0, 0, EPHEMERAL)]


def test_a_later_system_replaces_the_sessions_system() -> None:
    parsed = parse_messages_request(request(system=[{"type": "text", "text": "New."}]), HEADERS)
    assert parsed.items[0] == {"role": "system", "content": [{"type": "text", "text": "New."}]}
    body = upstream(request(system=[{"type": "text", "text": "New."}]), HISTORY)
    assert body["system"] == [{"type": "text", "text": "New."}]
    assert all(m["role"] != "system" for m in body["messages"])


def test_the_session_ttl_chooses_the_cache_ttl() -> None:
    assert cache_ttl(300) == "5m"
    assert cache_ttl(301) == "1h"
    assert {c["ttl"] for *_, c in marks(upstream(request(), HISTORY, ttl=86400))} == {"1h"}
    assert [c for *_, c in marks(upstream(request(), HISTORY, ttl=300))] == [EPHEMERAL] * 2


def test_a_clients_5_minute_mark_keeps_the_gateways_marks_at_5_minutes() -> None:
    system = [{"type": "text", "text": "Docs", "cache_control": {"type": "ephemeral"}}]
    body = upstream(request(system=system), HISTORY)
    assert body["system"] == system
    assert [c for *_, c in marks(body)] == [EPHEMERAL, EPHEMERAL]


def test_the_clients_marks_come_first_and_the_total_stays_at_four() -> None:
    tools = [
        {"name": f"t{i}", "input_schema": {"type": "object"}, "cache_control": HOUR}
        for i in range(3)
    ]
    body = upstream(request(tools=tools), HISTORY)
    # Three of the client's: room for one, the write mark at the end.
    assert marks(body) == [(2, 0, HOUR)]
    body = upstream(request(tools=[*tools, {**tools[0], "name": "t3"}]), HISTORY)
    assert marks(body) == []


def test_a_block_the_client_marked_is_not_marked_again() -> None:
    new = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Q2", "cache_control": HOUR}],
        }
    ]
    tools = [
        {"name": f"t{i}", "input_schema": {"type": "object"}, "cache_control": HOUR}
        for i in range(2)
    ]
    body = upstream(request(messages=new, tools=tools), HISTORY)
    # The client's three marks, and the gateway's read mark: four, none twice.
    assert marks(body) == [(0, 0, HOUR), (2, 0, HOUR)]


def test_earlier_rounds_marks_are_kept_newest_first_while_there_is_room() -> None:
    def marked(text: str) -> dict[str, Any]:
        return {"type": "text", "text": text, "cache_control": EPHEMERAL}

    history: list[dict[str, Any]] = [
        {"role": "user", "content": [marked("D1"), marked("D2"), marked("D3")]},
        {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
    ]
    tool = {"name": "t", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}
    body = upstream(request(tools=[tool]), history)
    # The tool's mark; the write mark; D3, where round 1 ended, is the read mark; then
    # D2; D1 is dropped.
    assert [(m, b) for m, b, _ in marks(body)] == [(0, 1), (0, 2), (2, 0)]
    assert "cache_control" not in body["messages"][0]["content"][0]
    assert len(marks(body)) <= 4


def ttls_in_order(body: dict[str, Any]) -> list[str]:
    """Every mark's TTL in the prompt's order (tools, system, messages), checked as
    Anthropic checks them: at most 4, and no 1 hour mark after a 5 minute one."""
    system = body.get("system")
    blocks = [
        *body.get("tools", []),
        *(system if isinstance(system, list) else []),
        *(b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]),
    ]
    ttls = [b["cache_control"].get("ttl", "5m") for b in blocks if "cache_control" in b]
    assert len(ttls) <= 4
    assert ttls == sorted(ttls, key=lambda ttl: ttl == "5m"), ttls
    return ttls


def marked(text: str, control: dict[str, Any]) -> dict[str, Any]:
    return {"type": "text", "text": text, "cache_control": control}


def test_an_earlier_rounds_5_minute_mark_never_precedes_a_1_hour_one() -> None:
    new = [{"role": "user", "content": [marked("Q2", HOUR)]}]
    history: list[dict[str, Any]] = [
        {"role": "user", "content": [marked("D1", EPHEMERAL), marked("Q1", EPHEMERAL)]},
        {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
    ]
    body = upstream(request(messages=new), history)
    # Q1, where round 1 ended, is the gateway's read mark: its own TTL replaces the
    # client's there; D1's 5 minute mark would precede the client's new 1 hour one, so it
    # is removed.
    assert marks(body) == [(0, 1, HOUR), (2, 0, HOUR)]
    assert ttls_in_order(body) == ["1h", "1h"]
    # A session of 5 minutes: the gateway's read mark still may not be shorter than the
    # client's mark after it.
    body = upstream(request(messages=new), history, ttl=300)
    assert marks(body) == [(0, 1, HOUR), (2, 0, HOUR)]
    # Nothing stored is changed.
    assert history[0]["content"][0]["cache_control"] == EPHEMERAL


def test_an_earlier_rounds_1_hour_mark_never_follows_a_5_minute_one() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": [marked("D1", HOUR), {"type": "text", "text": "Q1"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
    ]
    tool = {"name": "t", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}
    body = upstream(request(tools=[tool]), history)
    assert marks(body) == [(0, 1, EPHEMERAL), (2, 0, EPHEMERAL)]
    assert ttls_in_order(body) == ["5m"] * 3


def test_of_earlier_rounds_marks_the_newest_win_when_their_ttls_clash() -> None:
    # Round 1 marked D1 for 5 minutes, round 2 marked D2 for 1 hour (the gateway having
    # removed D1's mark from that request); round 3 marks nothing.
    history: list[dict[str, Any]] = [
        {"role": "user", "content": [marked("D1", EPHEMERAL)]},
        {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
        {"role": "user", "content": [marked("D2", HOUR), {"type": "text", "text": "Q2"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A2"}]},
    ]
    body = upstream(request(), history)
    assert marks(body) == [(2, 0, HOUR), (2, 1, HOUR), (4, 0, HOUR)]
    assert ttls_in_order(body) == ["1h"] * 3


def test_the_stored_systems_marks_are_an_earlier_rounds() -> None:
    # Round 1 sent a system marked for 5 minutes; round 2 sends no system (the session
    # keeps it) and marks its message for 1 hour: the stored mark would precede it.
    history: list[dict[str, Any]] = [
        {"role": "system", "content": [marked("S", EPHEMERAL)]},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
    ]
    new = [{"role": "user", "content": [marked("Q2", HOUR)]}]
    body = upstream(request(messages=new), history)
    assert body["system"] == [{"type": "text", "text": "S"}]
    assert marks(body) == [(0, 0, HOUR), (2, 0, HOUR)]
    assert ttls_in_order(body) == ["1h", "1h"]
    assert history[0]["content"][0]["cache_control"] == EPHEMERAL
    # A stored system marked twice and three new marks: the request's own come first,
    # then the gateway's read mark (round 1's end), and the stored ones only while
    # there is room: none is left.
    history[0]["content"] = [marked("S1", HOUR), marked("S2", HOUR)]
    new = [{"role": "user", "content": [marked(f"D{n}", HOUR) for n in range(3)]}]
    body = upstream(request(messages=new), history)
    assert ttls_in_order(body) == ["1h"] * 4
    assert [b.get("cache_control") for b in body["system"]] == [None, None]
    # With two new marks, the newest stored one fits.
    new = [{"role": "user", "content": [marked(f"D{n}", HOUR) for n in range(2)]}]
    body = upstream(request(messages=new), history)
    assert ttls_in_order(body) == ["1h"] * 4
    assert [b.get("cache_control") for b in body["system"]] == [None, HOUR]
    # Sent again with the request, the system's marks are the request's own: kept.
    body = upstream(request(system=[marked("S", EPHEMERAL)]), history)
    assert body["system"] == [marked("S", EPHEMERAL)]
    assert ttls_in_order(body) == ["5m"] * 3


def test_thinking_and_empty_text_blocks_are_never_marked() -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}]},
    ]
    new = [
        {"role": "user", "content": [{"type": "text", "text": "Q2"}, {"type": "text", "text": ""}]}
    ]
    body = upstream(request(messages=new), history)
    assert [(m, b) for m, b, _ in marks(body)] == [(0, 0), (2, 0)]


def test_after_a_prefilled_round_the_read_mark_is_on_the_prefill() -> None:
    # Round 1 sent [Q1, "Here:"] (an assistant prefill) and marked the prefill; its
    # answer continued it. The read mark goes where that round wrote, however many
    # blocks come after it (Anthropic looks back only 20 blocks from a mark).
    history: list[dict[str, Any]] = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "Here:"},
        {"role": "assistant", "content": [{"type": "text", "text": "A1"}]},
    ]
    many = [{"type": "text", "text": f"part {i}"} for i in range(25)]
    body = upstream(request(messages=[{"role": "user", "content": many}]), history)
    assert [(m, b) for m, b, _ in marks(body)] == [(1, 0), (3, 24)]


def test_the_clients_metadata_user_id_wins() -> None:
    body = upstream(request(metadata={"user_id": "u-7"}), [])
    assert body["metadata"] == {"user_id": "u-7"}


def test_only_the_clients_version_and_beta_headers_are_forwarded() -> None:
    parsed = parse_messages_request(
        request(),
        {"anthropic-version": "2023-06-01", "anthropic-beta": "b1,b2", "x-api-key": "tenant"},
    )
    assert parsed.headers == (("anthropic-version", "2023-06-01"), ("anthropic-beta", "b1,b2"))


@pytest.mark.parametrize(
    ("fields", "wrong"),
    [
        ({"model": ""}, "'model'"),
        ({"messages": "hi"}, "'messages'"),
        ({"messages": [{"role": "system", "content": "x"}]}, "top-level 'system'"),
        ({"messages": [{"role": "user"}]}, "content"),
        ({"system": 3}, "'system'"),
        ({"stream": "yes"}, "'stream'"),
    ],
)
def test_bad_requests_name_the_field(fields: dict[str, object], wrong: str) -> None:
    with pytest.raises(GatewayInputError, match=wrong):
        parse_messages_request(request(**fields), HEADERS)


def test_an_empty_conversation_is_refused() -> None:
    parsed = parse_messages_request(request(messages=[]), HEADERS)
    with pytest.raises(GatewayInputError, match="must not be empty"):
        messages_upstream_body(parsed, [], model="m", cache_key="k", session_ttl_seconds=60)


def test_usage_counts_all_input_and_keeps_the_split() -> None:
    answer = parse_messages_response((FIXTURES / "messages_response.json").read_bytes())
    assert answer.items == (
        {"role": "assistant", "content": [{"type": "text", "text": "Hi! My name is Claude."}]},
    )
    usage = answer.usage
    assert usage is not None
    assert usage.input_tokens == 21 + 188086
    assert usage.cached_input_tokens == 0
    assert usage.cache_write_tokens == 188086
    assert usage.output_tokens == 393
    assert usage.raw["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 188086,
    }


def test_an_empty_answer_adds_nothing_to_the_history() -> None:
    body = {"type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 3}}
    assert parse_messages_response(json.dumps(body).encode()).items == ()
    start = STREAM[: STREAM.index(b"event: content_block_start")]
    end = STREAM[STREAM.index(b"event: message_delta") :]
    stream = MessagesStream()
    feed_all(stream, start + end)
    outcome = stream.close()
    assert outcome.completed
    assert outcome.answer.items == ()


@pytest.mark.parametrize(
    "usage",
    [
        {"output_tokens": 3},
        {"input_tokens": "12", "output_tokens": 3},
        {"input_tokens": 1, "cache_read_input_tokens": -1, "output_tokens": 3},
        {"input_tokens": 1},
    ],
)
def test_usage_that_is_not_counts_is_no_usage(usage: dict[str, object]) -> None:
    assert messages_usage(usage) is None


def test_null_cache_counts_are_zero() -> None:
    usage = messages_usage(
        {
            "input_tokens": 5,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
            "output_tokens": 2,
        }
    )
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (5, 0, 0)


def feed_all(stream: MessagesStream, raw: bytes, size: int = 7) -> list[bytes]:
    out: list[bytes] = []
    for start in range(0, len(raw), size):
        out += stream.feed(raw[start : start + size])
    return out


def test_a_stream_passes_through_byte_for_byte_and_holds_message_stop_back() -> None:
    stream = MessagesStream()
    forwarded = feed_all(stream, STREAM)
    outcome = stream.close()
    assert outcome.completed
    assert outcome.tail == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert b"".join(forwarded) + outcome.tail == STREAM
    assert outcome.answer.items == (
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Hello! How are you doing today?"}],
        },
    )


def test_stream_usage_is_message_start_with_the_last_message_delta_over_it() -> None:
    stream = MessagesStream()
    feed_all(stream, STREAM)
    usage = stream.close().answer.usage
    assert usage is not None
    # message_delta repeats the input counts: summing them would double the input.
    assert usage.input_tokens == 12 + 230 + 1800
    assert usage.cached_input_tokens == 1800
    assert usage.cache_write_tokens == 230
    assert usage.output_tokens == 30
    assert usage.raw["cache_creation"] == {
        "ephemeral_5m_input_tokens": 230,
        "ephemeral_1h_input_tokens": 0,
    }


def test_cumulative_message_deltas_replace_each_other() -> None:
    stream = MessagesStream()
    feed_all(stream, TOOL_STREAM, size=50)
    outcome = stream.close()
    assert outcome.completed
    usage = outcome.answer.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (849, 47)
    (message,) = outcome.answer.items
    assert message["content"] == [
        {
            "type": "thinking",
            "thinking": "The user wants the weather.",
            "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds",
        },
        {
            "type": "tool_use",
            "id": "toolu_01KFbKqPYSuAKujiL6mTfzYA",
            "name": "json",
            "input": {
                "elements": [{"location": "San Francisco", "temperature": 58, "condition": "sunny"}]
            },
        },
    ]


def test_a_blocks_text_is_what_it_started_with_and_every_delta_after_it() -> None:
    events = [
        {"type": "message_start", "message": {"role": "assistant", "content": []}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        *(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": part},
            }
            for part in ("Let me ", "think.")
        ),
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "text", "text": "Hel"},
        },
        *(
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "text_delta", "text": part},
            }
            for part in ("lo", ",", " world")
        ),
    ]
    stream = MessagesStream()
    for event in events:
        stream.feed(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    # Cut before the blocks ended: what arrived is kept all the same.
    outcome = stream.close()
    assert not outcome.completed
    assert outcome.answer.items == (
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Let me think."},
                {"type": "text", "text": "Hello, world"},
            ],
        },
    )


def test_a_cut_stream_is_not_completed_and_keeps_the_usage_sent() -> None:
    cut = STREAM[: STREAM.index(b"event: content_block_stop")]
    stream = MessagesStream()
    forwarded = feed_all(stream, cut)
    outcome = stream.close()
    assert not outcome.completed
    assert outcome.error is None
    assert b"".join(forwarded) == cut
    # message_start's counts: billed though the answer is incomplete.
    assert outcome.answer.usage is not None
    assert outcome.answer.usage.output_tokens == 1
    assert outcome.answer.usage.input_tokens == 12 + 230 + 1800


def test_an_error_event_ends_the_stream_as_the_providers_error() -> None:
    head = STREAM[: STREAM.index(b"event: content_block_stop")]
    error = (
        b'event: error\ndata: {"type":"error","error":'
        b'{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    stream = MessagesStream()
    forwarded = feed_all(stream, head + error)
    outcome = stream.close()
    assert not outcome.completed
    assert outcome.error == {"type": "overloaded_error", "message": "Overloaded"}
    assert forwarded[-1] == error


def test_the_gateways_error_event_is_what_the_sdk_reads_as_an_error() -> None:
    (event,) = SSEDecoder().feed(stream_error_event("cut"))
    assert event.event == "error"
    assert json.loads(event.data) == {
        "type": "error",
        "error": {"type": "api_error", "message": "cut"},
    }


# Numbers orjson reads otherwise than json: an integer beyond 64 bits, and a float
# under 1e-4 that dump_json leaves to json to write.
EXACT_INPUT = '{"seed": 123456789012345678901234, "scale": 1e-07}'


def test_an_answer_keeps_its_numbers_exactly() -> None:
    body = (
        '{"type": "message", "role": "assistant", "content": [{"type": "tool_use", '
        f'"id": "t", "name": "f", "input": {EXACT_INPUT}}}], "usage": {{"input_tokens": 5, '
        '"output_tokens": 2, "cache_read_input_tokens": 0, "speed": 1e-07}}'
    ).encode()
    answer = parse_messages_response(body)
    expected = json.loads(body)
    assert answer.items == ({"role": "assistant", "content": expected["content"]},)
    assert answer.items[0]["content"][0]["input"]["seed"] == 123456789012345678901234
    assert answer.usage is not None
    assert dump_json(answer.usage.raw).endswith(b'"speed":1e-07}')


def test_a_stream_keeps_its_numbers_exactly() -> None:
    start = {"type": "message_start", "message": {"role": "assistant", "usage": {}}}
    events = [
        json.dumps(start),
        '{"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", '
        f'"id": "t", "name": "f", "input": {EXACT_INPUT}}}}}',
        '{"type": "content_block_start", "index": 1, "content_block": {"type": "text"}}',
        '{"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "a"}}',
        '{"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "b"}}',
        '{"type": "message_delta", "usage": {"input_tokens": 5, "output_tokens": 2, '
        '"speed": 1e-07}}',
        '{"type": "message_stop"}',
    ]
    stream = MessagesStream()
    for event in events:
        stream.feed(f"data: {event}\n\n".encode())
    outcome = stream.close()
    assert outcome.completed
    (message,) = outcome.answer.items
    assert message["content"] == [
        {"type": "tool_use", "id": "t", "name": "f", "input": json.loads(EXACT_INPUT)},
        {"type": "text", "text": "ab"},
    ]
    assert message["content"][0]["input"]["seed"] == 123456789012345678901234
    assert outcome.answer.usage is not None
    assert dump_json(outcome.answer.usage.raw).endswith(b'"speed":1e-07}')
