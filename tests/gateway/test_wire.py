"""The gateway's JSON: read as json.loads reads it, written byte for byte as json.dumps writes it.

dump_json writes with orjson where orjson writes what json.dumps would, and leaves the
rest to json.dumps; load_json marks the floats orjson would spell differently;
load_dumped reads what dump_json wrote back to the same bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmsession.gateway.openai_chat import ChatStream, chat_upstream_body, parse_chat_request
from llmsession.gateway.wire import (
    GatewayInputError,
    JSONFloat,
    dump_json,
    load_dumped,
    load_json,
    load_json_object,
)


def stdlib(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from([1e-7, 1.5e-05, 0.0001, 9.999e-5, 1e16, 1e308, 5e-324, -0.0]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_what_load_json_reads_is_written_as_json_dumps_writes_it(value: Any) -> None:
    # The text goes through json.dumps first: the gateway reads JSON, it does not make floats.
    text = json.dumps(value, ensure_ascii=False)
    loaded = load_json(text.encode())
    assert dump_json({"v": loaded}) == stdlib({"v": json.loads(text)})
    assert repr(loaded) == repr(json.loads(text))


@given(json_values)
def test_load_dumped_reads_back_what_dump_json_wrote(value: Any) -> None:
    try:
        text = dump_json([value]).decode()
    except UnicodeEncodeError:
        return
    loaded = load_dumped(text)
    assert dump_json(loaded) == text.encode()
    assert repr(loaded) == repr(load_json(text))


@given(json_values)
def test_load_dumped_reads_other_json_as_load_json_does(value: Any) -> None:
    text = json.dumps([value], ensure_ascii=False, indent=1)
    assert repr(load_dumped(text)) == repr(load_json(text))


@pytest.mark.parametrize(
    "text",
    [
        '[{"seed":123456789012345678901234567890}]',
        '[{"t":1e-07,"u":NaN,"v":Infinity}]',
        '[{"t":1e+16}]',
        '[{"a":1,"a":2}]',
        '[{"a": "spaced"}]',
        '[{"a":"\\ud800"}]',
        "[" * 300 + "]" * 300,
    ],
)
def test_load_dumped_leaves_what_orjson_reads_otherwise_to_load_json(text: str) -> None:
    assert repr(load_dumped(text)) == repr(load_json(text))


@pytest.mark.parametrize(
    ("text", "written"),
    [
        (b'{"seed":123456789012345678901234567890}', b'{"seed":123456789012345678901234567890}'),
        (b'{"n":-18446744073709551617}', b'{"n":-18446744073709551617}'),
        (b'{"t":NaN,"u":Infinity,"v":-Infinity}', b'{"t":NaN,"u":Infinity,"v":-Infinity}'),
        (b'{"t":1e400}', b'{"t":Infinity}'),
        (b'{"t":1e-7,"u":0.0000123}', b'{"t":1e-07,"u":1.23e-05}'),
        (b'{"t":0.7,"u":1e16,"v":-0.0}', b'{"t":0.7,"u":1e+16,"v":-0.0}'),
        (b'{"a":1,"a":2}', b'{"a":2}'),
        ('{"é":"ü\\u2028\\u001f</"}'.encode(), '{"é":"ü\u2028\\u001f</"}'.encode()),
        (b"\xef\xbb\xbf" + '{"a":"ü"}'.encode(), '{"a":"ü"}'.encode()),
        ('{"a":"ü"}'.encode("utf-16"), '{"a":"ü"}'.encode()),
    ],
)
def test_the_edges_of_json_are_kept(text: bytes, written: bytes) -> None:
    value = load_json_object(text, "the body")
    assert dump_json(value) == written == stdlib(json.loads(text))


def test_a_float_orjson_would_spell_otherwise_is_still_a_float() -> None:
    value = load_json("[1e-7,NaN,0.5]")
    assert isinstance(value, list)
    assert type(value[0]) is JSONFloat
    assert value[0] == 1e-7
    assert math.isnan(value[1])
    assert type(value[2]) is float


def test_what_json_refuses_it_still_refuses() -> None:
    with pytest.raises(UnicodeEncodeError):
        dump_json({"a": "\ud800"})
    with pytest.raises(TypeError):
        dump_json({"a": object()})
    # A lone surrogate escaped in the text reads as json.loads reads it.
    assert load_json(b'"\\ud800"') == "\ud800"
    with pytest.raises(GatewayInputError):
        load_json_object(b'{"a":1}x', "the body")
    with pytest.raises(GatewayInputError):
        load_json_object(b'{"a":"\xff"}', "the body")
    with pytest.raises(ValueError, match="BOM"):
        load_json("\ufeff{}")


def test_keys_that_are_not_strings_and_deep_nesting_are_written_by_json() -> None:
    assert dump_json({1: 2, "b": None}) == b'{"1":2,"b":null}'  # type: ignore[dict-item]
    deep: list[Any] = []
    for _ in range(300):
        deep = [deep]
    assert dump_json(deep) == stdlib(deep)


def test_a_big_integer_in_a_request_reaches_the_provider_as_sent() -> None:
    request = parse_chat_request(
        b'{"model":"m","seed":123456789012345678901234567890,"temperature":1e-7,'
        b'"messages":[{"role":"user","content":"Q"}]}'
    )
    body = chat_upstream_body(request, [], model="gpt", cache_key="k")
    assert b'"seed":123456789012345678901234567890,"temperature":1e-07,' in body


def test_a_streamed_answer_keeps_what_its_deltas_said() -> None:
    stream = ChatStream(client_wants_usage=False)
    stream.feed(
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"h\\u00e9"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c",'
        b'"function":{"name":"f","arguments":"{\\"x\\":1e-7}"}}]}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    (message,) = stream.close().answer.items
    assert dump_json(message) == stdlib(message)
    assert message["content"] == "hé"
