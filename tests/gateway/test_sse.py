"""The SSE decoder: fields as the WHATWG spec reads them, and each event's exact bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmsession.gateway.sse import SSEDecoder, SSEEvent, encode_event

OPENAI_CHAT_STREAM = (
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9}}\n\n'
    b"data: [DONE]\n\n"
)

RESPONSES_STREAM = (
    b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n'
    b": keep-alive\n\n"
    b'event: response.completed\r\ndata: {"type":"response.completed",\r\ndata: "sequence_number":1}\r\n\r\n'
)


def decode_all(stream: bytes, sizes: list[int] | None = None) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    if sizes is None:
        return decoder.feed(stream)
    start = 0
    for size in sizes:
        events += decoder.feed(stream[start : start + size])
        start += size
    events += decoder.feed(stream[start:])
    return events


def test_openai_chat_stream() -> None:
    events = decode_all(OPENAI_CHAT_STREAM)
    assert [e.data for e in events][-1] == "[DONE]"
    assert len(events) == 4
    assert b"".join(e.raw for e in events) == OPENAI_CHAT_STREAM


def test_named_events_comments_and_crlf() -> None:
    events = decode_all(RESPONSES_STREAM)
    assert [e.event for e in events] == ["response.created", "response.completed"]
    assert events[1].data == '{"type":"response.completed",\n"sequence_number":1}'
    # The comment block completes no event; its bytes travel with the next one.
    assert events[1].raw.startswith(b": keep-alive\n\n")
    assert b"".join(e.raw for e in events) == RESPONSES_STREAM


@pytest.mark.parametrize("stream", [OPENAI_CHAT_STREAM, RESPONSES_STREAM])
def test_every_split_point_gives_the_same_events(stream: bytes) -> None:
    whole = decode_all(stream)
    for cut in range(1, len(stream)):
        assert decode_all(stream, [cut]) == whole


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=30))
def test_byte_by_byte_and_random_chunks(sizes: list[int]) -> None:
    assert decode_all(RESPONSES_STREAM, sizes) == decode_all(RESPONSES_STREAM)


_PIECES = [
    b'data: {"a":1}\n\n',
    b"data: [DONE]\n\n",
    b"data:no-space\n\n",
    b"data: two\ndata: lines\n\n",
    b"event: named\ndata: x\n\n",
    b"event: a:b \xff\ndata: {}\n\n",
    b"event: two\ndata: x\ndata: y\n\n",
    b"event: no-data\nid: 9\n\n",
    b"event:\ndata:\n\n",
    b"id: 7\n\n",
    b"data: after-id\n\n",
    b": comment\n\n",
    b"\n",
    b"data: caf\xc3\xa9 \xff\n\n",
    b"data: crlf\r\n\r\n",
    b"retry: 10\ndata: r\n\n",
    b"data: half",
]


@given(
    st.lists(st.sampled_from(_PIECES), max_size=12),
    st.lists(st.integers(min_value=1, max_value=60), max_size=20),
)
def test_whole_events_in_a_chunk_read_as_line_by_line(
    pieces: list[bytes], sizes: list[int]
) -> None:
    # Fed a byte at a time, no chunk holds a whole event: every byte goes through
    # the line-by-line reading, the reference for the whole-event shortcut.
    stream = b"".join(pieces)
    one_by_one = decode_all(stream, [1] * len(stream))
    assert decode_all(stream) == one_by_one
    assert decode_all(stream, sizes) == one_by_one


def test_lone_cr_line_endings_and_a_cr_split_from_its_lf() -> None:
    decoder = SSEDecoder()
    assert [e.data for e in decoder.feed(b"data: a\r\rdata: b\r\r")] == ["a"]
    # The last CR may be half of a CRLF until the next byte or the end of the stream,
    # which adds nothing to it.
    assert [(e.data, e.raw) for e in decoder.close()] == [("b", b"data: b\r\r")]
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r\n\r") == []
    events = decoder.feed(b"\n")
    assert [(e.data, e.raw) for e in events] == [("a", b"data: a\r\n\r\n")]


_LINES = [
    b'data: {"a":1}',
    b"data: [DONE]",
    b"data:no-space",
    b"data: caf\xc3\xa9",
    b"data:",
    b"event: named",
    b"id: 7",
    b"retry: 5",
    b": comment",
]


#: Events as their lines; each ends in a data line, so each is dispatched.
_EVENTS = st.lists(
    st.tuples(st.lists(st.sampled_from(_LINES), max_size=3), st.sampled_from(_LINES[:5])).map(
        lambda event: [*event[0], event[1]]
    ),
    min_size=1,
    max_size=6,
)


def render(events: list[list[bytes]], ending: bytes) -> bytes:
    return b"".join(b"".join(line + ending for line in [*lines, b""]) for lines in events)


def chunked(stream: bytes, sizes: list[int]) -> list[bytes]:
    chunks: list[bytes] = []
    start = 0
    for size in sizes:
        chunks.append(stream[start : start + size])
        start += size
    return [*chunks, stream[start:]]


@given(
    _EVENTS,
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.lists(st.integers(min_value=0, max_value=40), max_size=30),
)
def test_every_line_ending_passes_through_byte_for_byte_however_chunked(
    events: list[list[bytes]], ending: bytes, sizes: list[int]
) -> None:
    # The gateway forwards each event's raw bytes: joined, they must be the stream
    # as the provider sent it, whichever line ending it uses and however it is cut,
    # the end of the stream included (a last CR has no LF after it to wait for).
    stream = render(events, ending)
    reference = decode_all(render(events, b"\n"))
    decoder = SSEDecoder()
    read = [event for chunk in chunked(stream, sizes) for event in decoder.feed(chunk)]
    read += decoder.close()
    assert b"".join(event.raw for event in read) == stream
    assert [(e.data, e.event, e.id, e.retry) for e in read] == [
        (e.data, e.event, e.id, e.retry) for e in reference
    ]
    decoder = SSEDecoder()
    data = [pair for chunk in chunked(stream, sizes) for pair in decoder.feed_data(chunk)]
    data += [(event.data.encode(), event.raw) for event in decoder.close()]
    assert [(e.data.encode(), e.raw) for e in read] == data


def test_a_cut_stream_dispatches_no_half_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: whole\n\ndata: half") != []
    assert decoder.close() == []


def test_field_rules() -> None:
    (event,) = decode_all(b"data\ndata:  two spaces\nid: 7\nretry: 30\nretry: x\nunknown: 1\n\n")
    assert event.data == "\n two spaces"
    assert (event.id, event.retry) == ("7", 30)


def test_a_bom_is_skipped_but_kept_in_raw() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    (event,) = decode_all(stream, [1, 1])
    assert event.data == "x"
    assert event.raw == stream


def test_incomplete_event_is_pending_not_dispatched() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\ndata: b") == []
    assert decoder.pending() == b"data: a\n"


def test_encode_round_trips() -> None:
    raw = encode_event('{"a":1}\nsecond', event="response.created")
    (event,) = decode_all(raw)
    assert (event.event, event.data, event.raw) == ("response.created", '{"a":1}\nsecond', raw)


def decode_data(stream: bytes, sizes: list[int]) -> list[tuple[bytes, bytes]]:
    decoder = SSEDecoder()
    events: list[tuple[bytes, bytes]] = []
    start = 0
    for size in sizes:
        events += decoder.feed_data(stream[start : start + size])
        start += size
    events += decoder.feed_data(stream[start:])
    return events + [(e.data.encode(), e.raw) for e in decoder.close()]


def as_feed_reads(events: list[SSEEvent]) -> list[tuple[str, bytes]]:
    return [(e.data, e.raw) for e in events]


def as_data_reads(events: list[tuple[bytes, bytes]]) -> list[tuple[str, bytes]]:
    return [(data.decode("utf-8", errors="replace"), raw) for data, raw in events]


@given(
    st.lists(st.sampled_from(_PIECES), max_size=12),
    st.lists(st.integers(min_value=0, max_value=60), max_size=20),
)
def test_feed_data_reads_what_feed_reads(pieces: list[bytes], sizes: list[int]) -> None:
    # Data-only events are cut out of whole chunks; everything else (other lines,
    # CRs, an event split across chunks) goes the line-by-line way: the same
    # events either way, and their bytes, however the stream is cut.
    stream = b"".join(pieces)
    decoder = SSEDecoder()
    reference = as_feed_reads(decoder.feed(stream) + decoder.close())
    assert as_data_reads(decode_data(stream, sizes)) == reference
    assert as_data_reads(decode_data(stream, [1] * len(stream))) == reference


@pytest.mark.parametrize("stream", [OPENAI_CHAT_STREAM, RESPONSES_STREAM])
def test_feed_data_at_every_split_point(stream: bytes) -> None:
    reference = as_feed_reads(decode_all(stream))
    for cut in range(len(stream) + 1):
        assert as_data_reads(decode_data(stream, [cut])) == reference


def test_feed_data_gives_each_events_own_bytes_from_one_chunk() -> None:
    decoder = SSEDecoder()
    events = decoder.feed_data(OPENAI_CHAT_STREAM + b"data: {")
    assert [raw for _, raw in events] == [
        part + b"\n\n" for part in OPENAI_CHAT_STREAM.split(b"\n\n")[:-1]
    ]
    assert events[-1] == (b"[DONE]", b"data: [DONE]\n\n")
    # The event begun at the chunk's end completes with the next.
    assert decoder.feed_data(b'"a":1}\n\ndata: x\n\n') == [
        (b'{"a":1}', b'data: {"a":1}\n\n'),
        (b"x", b"data: x\n\n"),
    ]


def test_feed_data_keeps_a_bom_in_the_first_events_bytes() -> None:
    stream = b"\xef\xbb\xbfdata: x\n\ndata: y\n\n"
    assert decode_data(stream, [2]) == [
        (b"x", b"\xef\xbb\xbfdata: x\n\n"),
        (b"y", b"data: y\n\n"),
    ]
