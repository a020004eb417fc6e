"""The fake's Anthropic Messages: its caching rules, and its wire format with the official SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from llmsession.fake_provider.anthropic_cache import (
    AnthropicCache,
    Breakpoint,
    min_cacheable_tokens,
)
from llmsession.fake_provider.billing import key_fingerprint
from tests.fake_provider.conftest import API_KEY, FakeProcess

MODEL = "claude-sonnet-4-5"
#: Over 1,024 tokens by the fake's counting rule (3 tokens a sentence).
BIG = " ".join(f"fact{i} holds." for i in range(400))
EPHEMERAL: Any = {"type": "ephemeral"}
HOUR: Any = {"type": "ephemeral", "ttl": "1h"}


# -- the caching rules ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def blocks(*sizes: int, tag: str = "t") -> list[list[str]]:
    return [[f"{tag}{b}_{i}" for i in range(size)] for b, size in enumerate(sizes)]


def test_minimum_cacheable_length_by_model_family() -> None:
    assert min_cacheable_tokens("claude-sonnet-4-5-20250929") == 1024
    assert min_cacheable_tokens("claude-opus-4-1") == 1024
    assert min_cacheable_tokens("claude-opus-4-5") == 4096
    assert min_cacheable_tokens("claude-haiku-4-5") == 4096
    assert min_cacheable_tokens("claude-3-5-haiku-20241022") == 2048


def test_a_prefix_below_the_minimum_is_neither_written_nor_read() -> None:
    cache = AnthropicCache(clock=Clock())
    prompt = blocks(1000, 10)
    use = cache.serve("k", MODEL, prompt, [Breakpoint(0, "5m")])
    assert (use.read, use.written) == (0, 0)
    assert len(cache) == 0


def test_a_breakpoint_writes_then_reads_and_the_split_follows_the_ttl() -> None:
    cache = AnthropicCache(clock=Clock())
    prompt = blocks(1100, 50, 30)
    first = cache.serve("k", MODEL, prompt, [Breakpoint(0, "1h"), Breakpoint(1, "5m")])
    assert (first.read, first.written_1h, first.written_5m) == (0, 1100, 50)
    again = cache.serve("k", MODEL, prompt, [Breakpoint(0, "1h"), Breakpoint(1, "5m")])
    assert (again.read, again.written) == (1150, 0)
    # Another key or model shares nothing.
    assert cache.serve("k2", MODEL, prompt, [Breakpoint(1, "5m")]).read == 0
    assert cache.serve("k", "claude-opus-4-1", prompt, [Breakpoint(1, "5m")]).read == 0


def test_the_lookback_reaches_20_blocks_and_no_further() -> None:
    cache = AnthropicCache(clock=Clock())
    base = blocks(1100)
    cache.serve("k", MODEL, base, [Breakpoint(0, "5m")])
    near = base + blocks(*([1] * 19), tag="n")
    use = cache.serve("k", MODEL, near, [Breakpoint(19, "5m")])
    assert (use.read, use.written) == (1100, 19)
    far = base + blocks(*([1] * 20), tag="f")
    assert cache.serve("k", MODEL, far, [Breakpoint(20, "5m")]).read == 0


def test_entries_expire_after_their_ttl_and_a_read_refreshes_it() -> None:
    clock = Clock()
    cache = AnthropicCache(clock=clock)
    prompt = blocks(1100)
    cache.serve("k", MODEL, prompt, [Breakpoint(0, "5m")])
    clock.now = 299
    assert cache.serve("k", MODEL, prompt, [Breakpoint(0, "5m")]).read == 1100
    clock.now = 598
    assert cache.serve("k", MODEL, prompt, [Breakpoint(0, "5m")]).read == 1100
    clock.now = 1000
    assert cache.serve("k", MODEL, prompt, [Breakpoint(0, "5m")]).read == 0
    hour = blocks(1100, tag="h")
    assert cache.serve("k", MODEL, hour, [Breakpoint(0, "1h")]).written_1h == 1100
    clock.now = 1000 + 3000
    assert cache.serve("k", MODEL, hour, [Breakpoint(0, "1h")]).read == 1100


# -- the wire format, with the official SDK ---------------------------------------------


@pytest.fixture
def client(fake: FakeProcess) -> Iterator[anthropic.Anthropic]:
    sdk = anthropic.Anthropic(base_url=fake.root, api_key=API_KEY, max_retries=0)
    yield sdk
    sdk.close()


def system(ttl: Any = EPHEMERAL) -> list[Any]:
    return [{"type": "text", "text": BIG, "cache_control": ttl}]


def test_a_message_and_its_usage_as_anthropic_counts_it(
    fake: FakeProcess, client: anthropic.Anthropic
) -> None:
    first = client.messages.create(
        model=MODEL,
        max_tokens=64,
        system=system(HOUR),
        messages=[{"role": "user", "content": "Q1"}],
        metadata={"user_id": "session-1"},
    )
    assert first.content[0].type == "text"
    assert first.content[0].text == "You said : Q1"
    assert first.stop_reason == "end_turn"
    usage = first.usage
    assert usage.cache_read_input_tokens == 0
    assert usage.cache_creation_input_tokens is not None
    assert usage.cache_creation_input_tokens > 1024
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_1h_input_tokens == usage.cache_creation_input_tokens
    second = client.messages.create(
        model=MODEL,
        max_tokens=64,
        system=system(HOUR),
        messages=[{"role": "user", "content": "Q2"}],
    )
    assert second.usage.cache_read_input_tokens == usage.cache_creation_input_tokens
    assert second.usage.cache_creation_input_tokens == 0
    # input_tokens excludes the cache: the whole prompt is the sum of the three.
    assert second.usage.input_tokens == usage.input_tokens
    entries = fake.billing()
    assert entries[0] == {
        "id": first.id,
        "endpoint": "messages",
        "model": MODEL,
        "key_fingerprint": key_fingerprint(API_KEY),
        "input_tokens": usage.input_tokens + usage.cache_creation_input_tokens,
        "cached_tokens": 0,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": 0,
        "stream": False,
        "completed": True,
        "usage_reported": True,
        "prompt_cache_key": "session-1",
        "previous_response_id": None,
        "cache_write_tokens": usage.cache_creation_input_tokens,
        "cache_write_1h_tokens": usage.cache_creation_input_tokens,
        "session_id": None,
    }
    assert entries[1]["cached_tokens"] == second.usage.cache_read_input_tokens


def test_a_stream_carries_usage_in_message_start_and_cumulative_message_delta(
    fake: FakeProcess, client: anthropic.Anthropic
) -> None:
    client.messages.create(
        model=MODEL, max_tokens=64, system=system(), messages=[{"role": "user", "content": "Q1"}]
    )
    events = list(
        client.messages.create(
            model=MODEL,
            max_tokens=64,
            system=system(),
            messages=[{"role": "user", "content": "Q2 now"}],
            stream=True,
        )
    )
    types = [event.type for event in events]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start, delta = events[0], events[-2]
    assert start.type == "message_start"
    assert delta.type == "message_delta"
    assert start.message.usage.cache_read_input_tokens is not None
    assert start.message.usage.cache_read_input_tokens > 1024
    assert start.message.usage.output_tokens == 1
    # Cumulative: the input counts again, and all the output.
    assert delta.usage.input_tokens == start.message.usage.input_tokens
    assert delta.usage.cache_read_input_tokens == start.message.usage.cache_read_input_tokens
    assert delta.usage.output_tokens == 5
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")  # type: ignore[union-attr]
    assert text == "You said : Q2 now"
    entry = fake.billing()[-1]
    assert (entry["stream"], entry["output_tokens"], entry["cached_tokens"]) == (
        True,
        5,
        start.message.usage.cache_read_input_tokens,
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": str(i), "cache_control": EPHEMERAL}
                            for i in range(5)
                        ],
                    }
                ],
            },
            "A maximum of 4 blocks with cache_control",
        ),
        (
            {
                "max_tokens": 5,
                "system": [
                    {"type": "text", "text": "a", "cache_control": EPHEMERAL},
                    {"type": "text", "text": "b", "cache_control": HOUR},
                ],
                "messages": [{"role": "user", "content": "x"}],
            },
            "ttl='1h'",
        ),
    ],
)
def test_bad_requests_are_anthropics_400(
    fake: FakeProcess, client: anthropic.Anthropic, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, **body)
    error: Any = caught.value.body
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert message in error["error"]["message"]
    assert error["request_id"] == caught.value.response.headers["request-id"]
    assert fake.billing() == []


def test_keys_and_the_version_header_are_checked(fake: FakeProcess) -> None:
    url = f"{fake.root}/v1/messages"
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    wrong = httpx.post(url, json=body, headers={"x-api-key": "nope", "anthropic-version": "1"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    unversioned = httpx.post(url, json=body, headers={"x-api-key": API_KEY})
    assert unversioned.status_code == 400
    assert "anthropic-version" in unversioned.json()["error"]["message"]
    ok = httpx.post(url, json=body, headers={"x-api-key": API_KEY, "anthropic-version": "1"})
    assert ok.status_code == 200, ok.text
    del body["max_tokens"]
    missing = httpx.post(url, json=body, headers={"x-api-key": API_KEY, "anthropic-version": "1"})
    assert missing.json()["error"]["message"] == "max_tokens: Field required"


@pytest.mark.parametrize(
    ("fault", "error", "kind"),
    [
        ({"mode": "500"}, anthropic.InternalServerError, "api_error"),
        ({"mode": "429"}, anthropic.RateLimitError, "rate_limit_error"),
    ],
)
def test_faults_answer_in_anthropics_shape(
    fake: FakeProcess,
    client: anthropic.Anthropic,
    fault: dict[str, Any],
    error: type[anthropic.APIStatusError],
    kind: str,
) -> None:
    fake.fault(**fault, endpoint="messages")
    with pytest.raises(error) as caught:
        client.messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == kind


def test_a_cut_stream_and_a_stream_without_usage(
    fake: FakeProcess, client: anthropic.Anthropic
) -> None:
    fake.fault(mode="cut", after_events=5)
    with pytest.raises(anthropic.APIConnectionError):
        list(
            client.messages.create(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    fake.fault(mode="no_usage")
    events = list(
        client.messages.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    assert events[-1].type == "message_stop"
    assert getattr(events[0].message, "usage", None) is None  # type: ignore[union-attr]
    assert getattr(events[-2], "usage", None) is None
    cut, no_usage = fake.billing()
    assert (cut["completed"], cut["output_tokens"]) == (False, 2)
    assert (no_usage["completed"], no_usage["usage_reported"]) == (True, False)
