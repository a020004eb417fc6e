"""The gateway's Anthropic Messages end to end: the official anthropic SDK, unchanged,
against a real llmsession process, which forwards to the fake provider's own process.

Every total llmsession records is compared with the fake's billing log, to the token,
and each known pitfall of Anthropic's usage has a test that fails if it comes back:
cumulative ``message_delta`` usage summed, cache reads missing from streams, cache
writes not counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fake_provider.conftest import API_KEY, FakeProcess
from tests.gateway.processes import GatewayProcesses
from tests.server.conftest import ServerFactory, ServerProcess, bearer, launch_server

SID = "LLMSession-Id"
MODEL = "claude-sonnet-4-5"
#: Over Claude Sonnet's 1,024-token minimum by the fake's counting rule.
BIG_CONTEXT = " ".join(f"fact{i} is true." for i in range(900))


class Gateway(GatewayProcesses):
    def sdk(self, key: str, **options: Any) -> anthropic.Anthropic:
        client = anthropic.Anthropic(
            base_url=self.server.base_url, api_key=key, max_retries=0, **options
        )
        self.clients.append(client)
        return client

    def billing(self, key: str) -> list[dict[str, Any]]:
        """The fake's entries of this tenant's sessions: the gateway sends each session's
        id as ``metadata.user_id``, which the fake logs as ``prompt_cache_key``."""
        sessions = self.get(key, "/v1/sessions?limit=1000")["items"]
        ids = {session["session_id"] for session in sessions}
        return [entry for entry in self.fake.billing() if entry["prompt_cache_key"] in ids]

    def assert_totals_match_billing(self, key: str) -> None:
        billing = self.billing(key)
        billed = {
            name: sum(entry[name] for entry in billing)
            for name in ("input_tokens", "cached_tokens", "cache_write_tokens", "output_tokens")
        }
        usage = self.usage(key)
        assert (
            usage["input_tokens"],
            usage["cached_input_tokens"],
            usage["cache_write_tokens"],
            usage["output_tokens"],
        ) == (
            billed["input_tokens"],
            billed["cached_tokens"],
            billed["cache_write_tokens"],
            billed["output_tokens"],
        )


def write_config(path: Path, fake: FakeProcess, **extra: str) -> Path:
    lines = [
        "[providers.claude]",
        'kind = "anthropic"',
        f'base_url = "{fake.root}"',
        'api_key_env = "FAKE_UPSTREAM_KEY"',
        *(f"{name} = {value}" for name, value in extra.items()),
        "",
        "[providers.fake]",
        'kind = "openai"',
        f'base_url = "{fake.base_url}"',
        'api_key_env = "FAKE_UPSTREAM_KEY"',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def module_server(
    module_fake: FakeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("gateway")
    config = write_config(folder / "gateway.toml", module_fake, timeout_seconds="2")
    server = launch_server(
        f"sqlite:///{folder / 'sessions.db'}",
        folder,
        LLMSESSION_CONFIG=str(config),
        FAKE_UPSTREAM_KEY=API_KEY,
    )
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for gateway in made:
        gateway.close()


@pytest.fixture
def gateway(
    module_fake: FakeProcess, module_server: ServerProcess, gateways: list[Gateway]
) -> Gateway:
    assert module_fake.post("/_fake/reset").status_code == 200
    gateways.append(Gateway(module_server, module_fake))
    return gateways[-1]


def ask(client: anthropic.Anthropic, text: str, session: str | None = None, **fields: Any) -> Any:
    """One round through the gateway, not streamed: the raw response (headers and message)."""
    return client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": text}],
        extra_headers={} if session is None else {SID: session},
        **fields,
    )


def ask_streamed(
    client: anthropic.Anthropic, text: str, session: str | None = None, **fields: Any
) -> tuple[str, list[Any]]:
    raw = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": text}],
        stream=True,
        extra_headers={} if session is None else {SID: session},
        **fields,
    )
    return raw.headers[SID], list(raw.parse())


def test_a_multi_round_session_reads_its_history_from_the_cache(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    raw = ask(client, "Q1", system=BIG_CONTEXT)
    session_id = raw.headers[SID]
    first = raw.parse()
    assert first.content[0].text == "You said : Q1"
    assert first.usage.cache_creation_input_tokens > 1024
    for question in ("Q2", "Q3"):
        answer = ask(client, question, session_id).parse()
        # All that the previous round sent is read from the cache.
        assert answer.usage.cache_read_input_tokens >= first.usage.cache_creation_input_tokens
    billing = gateway.billing(key)
    assert len(billing) == 3
    # Each round reads exactly what the round before wrote, and writes only what is new.
    assert billing[1]["cached_tokens"] == billing[0]["cache_write_tokens"]
    assert billing[2]["cached_tokens"] == (
        billing[1]["cached_tokens"] + billing[1]["cache_write_tokens"]
    )
    assert billing[2]["cache_write_tokens"] < 40
    # The session may stay idle an hour (the default TTL): the marks are 1 hour ones.
    assert all(e["cache_write_1h_tokens"] == e["cache_write_tokens"] for e in billing)
    session = gateway.get(key, f"/v1/sessions/{session_id}")
    assert session["round_count"] == 3
    assert session["initial_tokens"] == billing[0]["input_tokens"]
    assert session["delta_tokens"] == sum(e["input_tokens"] - e["cached_tokens"] for e in billing)
    assert session["tokens_saved"] > 0
    rounds = gateway.get(key, f"/v1/sessions/{session_id}/rounds")["items"]
    assert (
        rounds[0]["usage"]["raw"]["cache_creation"]["ephemeral_1h_input_tokens"]
        == (billing[0]["cache_write_tokens"])
    )
    gateway.assert_totals_match_billing(key)


def test_a_streamed_session_counts_cache_reads_and_never_sums_message_deltas(
    gateway: Gateway,
) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    session_id, events = ask_streamed(client, "Q1", system=BIG_CONTEXT)
    assert [e.type for e in events][-2:] == ["message_delta", "message_stop"]
    for question in ("Q2", "Q3"):
        _, events = ask_streamed(client, question, session_id)
        text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
        assert text == f"You said : {question}"
    billing = gateway.billing(key)
    rounds = gateway.get(key, f"/v1/sessions/{session_id}/rounds")["items"]
    assert len(rounds) == 3
    for entry, round_ in zip(billing, rounds, strict=True):
        usage = round_["usage"]
        # message_delta repeats the input counts: summed, they would be doubled here.
        assert usage["input_tokens"] == entry["input_tokens"]
        # Cache reads and writes carried by the stream's message_start are recorded.
        assert usage["cached_input_tokens"] == entry["cached_tokens"]
        assert usage["cache_write_tokens"] == entry["cache_write_tokens"]
        assert usage["output_tokens"] == entry["output_tokens"]
    assert rounds[2]["usage"]["cached_input_tokens"] > 1024
    gateway.assert_totals_match_billing(key)


def test_a_clients_5_minute_mark_of_an_earlier_round_never_refuses_a_later_1_hour_one(
    gateway: Gateway,
) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)

    def send(text: str, control: dict[str, str], session: str | None = None) -> Any:
        block = {"type": "text", "text": text, "cache_control": control}
        return client.messages.with_raw_response.create(
            model=MODEL,
            max_tokens=64,
            messages=[{"role": "user", "content": [block]}],
            extra_headers={} if session is None else {SID: session},
        )

    session_id = send(BIG_CONTEXT, {"type": "ephemeral"}).headers[SID]
    # Valid on its own; the stored round 1 holds a 5 minute mark, which the client
    # cannot take back: the gateway leaves it out of what it sends.
    second = send("Q2", {"type": "ephemeral", "ttl": "1h"}, session_id).parse()
    assert second.content[0].text == "You said : Q2"
    third = send("Q3", {"type": "ephemeral", "ttl": "1h"}, session_id).parse()
    # Each round still reads all that the round before sent from the cache.
    one, two, _ = gateway.billing(key)
    assert two["cached_tokens"] == one["cache_write_tokens"]
    assert third.usage.cache_read_input_tokens == two["cached_tokens"] + two["cache_write_tokens"]
    assert gateway.get(key, f"/v1/sessions/{session_id}")["round_count"] == 3
    gateway.assert_totals_match_billing(key)


def test_the_session_keeps_its_system_and_only_new_messages_are_sent(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    session_id = ask(client, "Q1", system="Be brief.").headers[SID]
    ask(client, "Q2", session_id)
    one, two = gateway.billing(key)
    # Round two's prompt is round one's, its answer (with 3 tokens of markers) and Q2's
    # message (4): nothing was sent twice.
    assert two["input_tokens"] == one["input_tokens"] + one["output_tokens"] + 3 + 4
    gateway.assert_totals_match_billing(key)


def test_the_tenant_key_as_x_api_key_or_bearer(gateway: Gateway) -> None:
    key = gateway.tenant()
    url = f"{gateway.server.base_url}/v1/messages"
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    version = {"anthropic-version": "2023-06-01"}
    by_api_key = httpx.post(url, json=body, headers={"x-api-key": key, **version}, timeout=10)
    assert by_api_key.status_code == 200, by_api_key.text
    both = httpx.post(
        url, json=body, headers={"x-api-key": key, **bearer(key), **version}, timeout=10
    )
    assert both.status_code == 200, both.text
    ambiguous = httpx.post(
        url, json=body, headers={"x-api-key": key, **bearer("other"), **version}, timeout=10
    )
    assert ambiguous.status_code == 400
    assert ambiguous.json()["type"].endswith("ambiguous-credentials")
    with pytest.raises(anthropic.AuthenticationError):
        gateway.sdk("lls_nobody_0000").messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )


def test_the_clients_anthropic_version_is_forwarded(gateway: Gateway) -> None:
    key = gateway.tenant()
    url = f"{gateway.server.base_url}/v1/messages"
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    # The fake refuses a request without the header, as Anthropic does: passed on as it is.
    response = httpx.post(url, json=body, headers={"x-api-key": key}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "anthropic-version: header is required"
    assert SID not in response.headers


def test_a_providers_400_reaches_the_sdk_as_anthropics_error(gateway: Gateway) -> None:
    key = gateway.tenant()
    with pytest.raises(anthropic.BadRequestError) as caught:
        gateway.sdk(key).messages.create(
            model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "hi"}]
        )
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert gateway.get(key, "/v1/sessions")["items"] == []


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ({"mode": "500"}, anthropic.APIStatusError, 502),
        ({"mode": "429", "retry_after_seconds": 3}, anthropic.RateLimitError, 429),
        ({"mode": "slow", "delay_seconds": 4}, anthropic.APIStatusError, 504),
    ],
)
def test_provider_failures_record_nothing(
    gateway: Gateway, fault: dict[str, Any], error: type[anthropic.APIStatusError], status: int
) -> None:
    key = gateway.tenant()
    gateway.fake.fault(**fault)
    with pytest.raises(error) as caught:
        gateway.sdk(key).messages.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": "Q1"}]
        )
    assert caught.value.status_code == status
    assert API_KEY not in str(caught.value.body)
    assert gateway.get(key, "/v1/sessions")["items"] == []


def test_a_stream_cut_mid_way_ends_as_an_error_and_adds_nothing(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    session_id = ask(client, "Q1").headers[SID]
    gateway.fake.fault(mode="cut", after_events=4)
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask_streamed(client, "Q2 is long enough", session_id)
    body: Any = caught.value.body
    assert body["type"] == "error"
    # message_start carried the usage: the cut round is billed, so it is counted...
    assert gateway.get(key, f"/v1/sessions/{session_id}")["round_count"] == 2
    # ...but its messages are not in the history sent with the next round.
    ask(client, "Q3", session_id)
    first, cut, third = gateway.billing(key)
    assert third["input_tokens"] == first["input_tokens"] + first["output_tokens"] + 3 + 4
    assert cut["completed"] is False


def test_a_stream_that_stalls_past_the_timeout_ends_as_a_timeout_error(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    session_id = ask(client, "Q1").headers[SID]
    # The provider's events come 3 s apart; the gateway waits 2 (timeout_seconds).
    gateway.fake.fault(mode="slow", delay_seconds=0, event_delay_seconds=3)
    with pytest.raises(anthropic.APIStatusError) as caught:
        ask_streamed(client, "Q2 is long enough", session_id)
    body: Any = caught.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "timeout_error"
    assert "sent nothing for 2 seconds (its timeout_seconds)" in body["error"]["message"]
    # The fake stalls before its first event, so no usage came: as for a cut stream,
    # no round is counted without it, and nothing joins the history.
    assert gateway.get(key, f"/v1/sessions/{session_id}")["round_count"] == 1
    ask(client, "Q3", session_id)
    # (The fake logs the stalled request when its first event is due, maybe after Q3.)
    first, third = [entry for entry in gateway.billing(key) if entry["completed"]]
    assert third["input_tokens"] == first["input_tokens"] + first["output_tokens"] + 3 + 4


def test_a_stream_without_usage_is_recorded_as_missing(gateway: Gateway) -> None:
    key = gateway.tenant()
    gateway.fake.fault(mode="no_usage")
    session_id, _ = ask_streamed(gateway.sdk(key), "Q1")
    (round_,) = gateway.get(key, f"/v1/sessions/{session_id}/rounds")["items"]
    assert round_["usage"] is None
    assert round_["usage_missing"] is True


def test_each_endpoint_reaches_only_providers_of_its_kind(gateway: Gateway) -> None:
    key = gateway.tenant()
    with pytest.raises(anthropic.UnprocessableEntityError) as caught:
        gateway.sdk(key).messages.create(
            model="fake/gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert "speaks the openai wire format" in str(caught.value.body)
    openai_client = openai.OpenAI(
        base_url=f"{gateway.server.base_url}/v1", api_key=key, max_retries=0
    )
    with openai_client, pytest.raises(openai.UnprocessableEntityError) as refused:
        openai_client.chat.completions.create(
            model=f"claude/{MODEL}", messages=[{"role": "user", "content": "hi"}]
        )
    assert "speaks the anthropic wire format" in str(refused.value.body)
    assert gateway.billing(key) == []
    assert gateway.fake.billing() == []


def test_a_session_whose_ttl_is_5_minutes_gets_5_minute_marks(
    start_server: ServerFactory,
    sqlite_url: str,
    tmp_path: Path,
    module_fake: FakeProcess,
    gateways: list[Gateway],
) -> None:
    assert module_fake.post("/_fake/reset").status_code == 200
    config = write_config(tmp_path / "gw.toml", module_fake)
    server = start_server(
        sqlite_url,
        LLMSESSION_CONFIG=str(config),
        FAKE_UPSTREAM_KEY=API_KEY,
        LLMSESSION_DEFAULT_TTL="300",
    )
    gateways.append(Gateway(server, module_fake))
    key = gateways[0].tenant()
    client = gateways[0].sdk(key)
    session_id = ask(client, "Q1", system=BIG_CONTEXT).headers[SID]
    ask(client, "Q2", session_id)
    one, two = gateways[0].billing(key)
    assert one["cache_write_tokens"] > 1024
    assert (one["cache_write_1h_tokens"], two["cache_write_1h_tokens"]) == (0, 0)
    assert two["cached_tokens"] == one["cache_write_tokens"]
    gateways[0].assert_totals_match_billing(key)
