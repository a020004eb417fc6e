"""The gateway end to end: the official openai SDK, unchanged, against a real llmsession
process, which forwards to the fake provider running as its own process on loopback.

Every total llmsession records is compared with the fake's billing log, to the token.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.fake_provider.conftest import API_KEY, FakeProcess
from tests.gateway.processes import GatewayProcesses
from tests.gateway.test_gateway_cli import cli
from tests.server.conftest import ServerFactory, ServerProcess, bearer, launch_server

SID = "LLMSession-Id"

#: Long enough for OpenAI's prefix cache (1,024 tokens) by the fake's counting rule.
BIG_CONTEXT = " ".join(f"fact{i} is true." for i in range(900))


class Gateway(GatewayProcesses):
    def sdk(self, key: str, **options: Any) -> OpenAI:
        client = OpenAI(
            base_url=f"{self.server.base_url}/v1", api_key=key, max_retries=0, **options
        )
        self.clients.append(client)
        return client

    def billing(self, key: str) -> list[dict[str, Any]]:
        """The fake's billing entries of this tenant's sessions, in billing order.

        The gateway sends each session's id as ``prompt_cache_key``, which the fake
        logs: so a test counts only its own requests, even when an entry of an
        earlier test's stream is written after that test ended.
        """
        sessions = self.get(key, "/v1/sessions?limit=1000")["items"]
        ids = {session["session_id"] for session in sessions}
        return [entry for entry in self.fake.billing() if entry["prompt_cache_key"] in ids]

    def assert_totals_match_billing(self, key: str) -> None:
        billed = {
            name: sum(entry[name] for entry in self.billing(key))
            for name in ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
        }
        usage = self.usage(key)
        assert (usage["input_tokens"], usage["cached_input_tokens"], usage["output_tokens"]) == (
            billed["input_tokens"],
            billed["cached_tokens"],
            billed["output_tokens"],
        )
        assert usage["reasoning_tokens"] == billed["reasoning_tokens"]


def write_config(path: Path, fake: FakeProcess, **extra: str) -> Path:
    lines = [
        "[providers.fake]",
        'kind = "openai"',
        f'base_url = "{fake.base_url}"',
        'api_key_env = "FAKE_UPSTREAM_KEY"',
        *(f"{name} = {value}" for name, value in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    """Gateways whose SDK clients are closed at the end."""
    made: list[Gateway] = []
    yield made
    for gateway in made:
        gateway.close()


@pytest.fixture(scope="module")
def module_server(
    module_fake: FakeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One llmsession server for the module, on SQLite; each test uses tenants of its own."""
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
def gateway(
    module_fake: FakeProcess, module_server: ServerProcess, gateways: list[Gateway]
) -> Gateway:
    """The module's server and fake, the fake's billing log emptied."""
    assert module_fake.post("/_fake/reset").status_code == 200
    gateways.append(Gateway(module_server, module_fake))
    return gateways[-1]


def test_a_multi_round_chat_is_billed_and_recorded_alike(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    raw = client.chat.completions.with_raw_response.create(
        model="fake/gpt-4o-mini",
        messages=[{"role": "system", "content": BIG_CONTEXT}, {"role": "user", "content": "Q1"}],
    )
    session_id = raw.headers[SID]
    first = raw.parse()
    assert first.choices[0].message.content
    for question in ("Q2", "Q3"):
        answer = client.chat.completions.create(
            model="fake/gpt-4o-mini",
            messages=[{"role": "user", "content": question}],
            extra_headers={SID: session_id},
        )
        assert answer.usage is not None
        assert answer.usage.prompt_tokens_details is not None
        assert answer.usage.prompt_tokens_details.cached_tokens > 0
    session = gateway.get(key, f"/v1/sessions/{session_id}")
    billing = gateway.billing(key)
    assert len(billing) == 3
    assert session["initial_tokens"] == billing[0]["input_tokens"]
    assert session["delta_tokens"] == sum(e["input_tokens"] - e["cached_tokens"] for e in billing)
    assert session["round_count"] == 3
    assert session["tokens_saved"] > 0
    # Every request after the first carried the whole history, keyed by the session.
    assert {e["prompt_cache_key"] for e in billing} == {session_id}
    gateway.assert_totals_match_billing(key)
    # This server has no price table: tokens only, no cost anywhere.
    rounds = gateway.get(key, f"/v1/sessions/{session_id}/rounds")["items"]
    assert [r["cost"] for r in rounds] == [None, None, None]
    assert [g["cost"] for g in gateway.get(key, "/v1/stats")["groups"]] == [None]


def test_a_streamed_chat_without_usage_requested(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    stream = client.chat.completions.with_raw_response.create(
        model="fake/gpt-4o-mini",
        messages=[{"role": "system", "content": BIG_CONTEXT}, {"role": "user", "content": "Q1"}],
        stream=True,
    )
    session_id = stream.headers[SID]
    chunks = list(stream.parse())
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    second = client.chat.completions.create(
        model="fake/gpt-4o-mini",
        messages=[{"role": "user", "content": "Q2"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={SID: session_id},
    )
    chunks = list(second)
    assert chunks[-1].usage is not None
    assert gateway.get(key, f"/v1/sessions/{session_id}")["round_count"] == 2
    gateway.assert_totals_match_billing(key)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_chain_to_the_providers_state(gateway: Gateway, stream: bool) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    raw = client.responses.with_raw_response.create(
        model="fake/gpt-4o-mini", input=BIG_CONTEXT + " Q1", stream=stream
    )
    session_id = raw.headers[SID]
    if stream:
        events = list(raw.parse())
        assert events[-1].type == "response.completed"
    for question in ("Q2", "Q3"):
        response = client.responses.create(
            model="fake/gpt-4o-mini", input=question, stream=stream, extra_headers={SID: session_id}
        )
        if stream:
            assert list(response)[-1].type == "response.completed"  # type: ignore[union-attr]
    billing = gateway.billing(key)
    assert billing[0]["previous_response_id"] is None
    assert billing[1]["previous_response_id"] is not None
    assert billing[2]["previous_response_id"] is not None
    assert billing[2]["input_tokens"] > billing[1]["input_tokens"] > billing[0]["input_tokens"]
    gateway.assert_totals_match_billing(key)


def test_responses_replay_the_history_when_the_provider_forgot_it(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    raw = client.responses.with_raw_response.create(model="fake/gpt-4o-mini", input="Q1")
    session_id = raw.headers[SID]
    gateway.fake.fault(mode="forget_responses", count=1)
    response = client.responses.create(
        model="fake/gpt-4o-mini", input="Q2", extra_headers={SID: session_id}
    )
    assert response.output_text
    billing = gateway.billing(key)
    assert len(billing) == 2
    assert billing[1]["previous_response_id"] is None
    gateway.assert_totals_match_billing(key)


def test_another_tenants_session_is_not_found_and_reaches_no_provider(gateway: Gateway) -> None:
    owner, intruder = gateway.tenant(), gateway.tenant()
    raw = gateway.sdk(owner).chat.completions.with_raw_response.create(
        model="fake/gpt-4o-mini", messages=[{"role": "user", "content": "secret"}]
    )
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.sdk(intruder).chat.completions.create(
            model="fake/gpt-4o-mini",
            messages=[{"role": "user", "content": "tell me"}],
            extra_headers={SID: raw.headers[SID]},
        )
    # The SDK's exception text holds the problem's message, not only its status.
    assert str(caught.value) == f"Error code: 404 - no session {raw.headers[SID]}"
    assert len(gateway.billing(owner)) == 1


def test_a_retry_with_the_same_key_is_billed_and_counted_once(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    kwargs: dict[str, Any] = {
        "model": "fake/gpt-4o-mini",
        "messages": [{"role": "user", "content": "Q1"}],
        "extra_headers": {"Idempotency-Key": "start-1"},
    }
    first = client.chat.completions.with_raw_response.create(**kwargs)
    again = client.chat.completions.with_raw_response.create(**kwargs)
    assert again.headers[SID] == first.headers[SID]
    assert again.parse().id == first.parse().id
    assert len(gateway.billing(key)) == 1
    assert len(gateway.get(key, "/v1/sessions")["items"]) == 1


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        ({"mode": "500"}, openai.APIStatusError, 502),
        ({"mode": "429", "retry_after_seconds": 3}, openai.RateLimitError, 429),
        ({"mode": "slow", "delay_seconds": 4}, openai.APIStatusError, 504),
    ],
)
def test_provider_failures_record_nothing(
    gateway: Gateway, fault: dict[str, Any], error: type[openai.APIStatusError], status: int
) -> None:
    key = gateway.tenant()
    gateway.fake.fault(**fault)
    with pytest.raises(error) as caught:
        gateway.sdk(key).chat.completions.create(
            model="fake/gpt-4o-mini", messages=[{"role": "user", "content": "Q1"}]
        )
    assert caught.value.status_code == status
    assert API_KEY not in str(caught.value.body)
    assert gateway.get(key, "/v1/sessions")["items"] == []


def test_a_refused_connection_is_502(
    start_server: ServerFactory,
    sqlite_url: str,
    tmp_path: Path,
    module_fake: FakeProcess,
    gateways: list[Gateway],
) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(
        '[providers.fake]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        'api_key_env = "FAKE_UPSTREAM_KEY"\n',
        encoding="utf-8",
    )
    server = start_server(sqlite_url, LLMSESSION_CONFIG=str(config), FAKE_UPSTREAM_KEY=API_KEY)
    gateways.append(Gateway(server, module_fake))
    key = gateways[0].tenant()
    with pytest.raises(openai.APIStatusError) as caught:
        gateways[0].sdk(key).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Q1"}]
        )
    assert caught.value.status_code == 502
    assert "provider 'fake' could not be reached" in str(caught.value.body)


def test_a_stream_cut_mid_way_ends_as_an_error_and_adds_nothing(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    first = client.chat.completions.with_raw_response.create(
        model="fake/gpt-4o-mini", messages=[{"role": "user", "content": "Q1"}]
    )
    session_id = first.headers[SID]
    gateway.fake.fault(mode="cut", after_events=3)
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model="fake/gpt-4o-mini",
                messages=[{"role": "user", "content": "Q2"}],
                stream=True,
                extra_headers={SID: session_id},
            )
        )
    session = gateway.get(key, f"/v1/sessions/{session_id}")
    assert session["round_count"] == 1
    client.chat.completions.create(
        model="fake/gpt-4o-mini",
        messages=[{"role": "user", "content": "Q3"}],
        extra_headers={SID: session_id},
    )
    # The cut turn left no trace in the history sent with the next one.
    assert (
        gateway.billing(key)[-1]["input_tokens"] < 2 * gateway.billing(key)[0]["input_tokens"] + 40
    )


def test_a_stream_that_stalls_past_the_timeout_ends_as_a_timeout(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    # The provider's events come 3 s apart; the gateway waits 2 (timeout_seconds).
    gateway.fake.fault(mode="slow", delay_seconds=0, event_delay_seconds=3)
    with pytest.raises(openai.APIError) as caught:
        list(
            client.chat.completions.create(
                model="fake/gpt-4o-mini", messages=[{"role": "user", "content": "Q1"}], stream=True
            )
        )
    error: Any = caught.value.body
    assert error["code"] == "upstream_timeout"
    assert "sent nothing for 2 seconds (its timeout_seconds)" in error["message"]
    gateway.fake.fault(mode="slow", delay_seconds=0, event_delay_seconds=3)
    events = list(client.responses.create(model="fake/gpt-4o-mini", input="Q1", stream=True))
    last: Any = events[-1]
    assert (last.type, last.code) == ("error", "upstream_timeout")
    assert "sent nothing for 2 seconds" in last.message
    # Neither stream had sent its usage: nothing was billed that llmsession could count.
    assert gateway.get(key, "/v1/sessions")["items"] == []


def test_a_stream_without_usage_is_recorded_as_missing(gateway: Gateway) -> None:
    key = gateway.tenant()
    gateway.fake.fault(mode="no_usage")
    raw = gateway.sdk(key).chat.completions.with_raw_response.create(
        model="fake/gpt-4o-mini", messages=[{"role": "user", "content": "Q1"}], stream=True
    )
    list(raw.parse())
    (round_,) = gateway.get(key, f"/v1/sessions/{raw.headers[SID]}/rounds")["items"]
    assert round_["usage"] is None
    assert round_["usage_missing"] is True
    assert gateway.usage(key)["rounds_without_usage"] == 1


def test_a_client_that_leaves_mid_stream_still_gets_its_round_recorded(gateway: Gateway) -> None:
    key = gateway.tenant()
    gateway.fake.fault(mode="slow", event_delay_seconds=0.05)
    with httpx.stream(
        "POST",
        f"{gateway.server.base_url}/v1/chat/completions",
        json={
            "model": "fake/gpt-4o-mini",
            "messages": [{"role": "user", "content": "Q1 " * 20}],
            "stream": True,
            "max_completion_tokens": 30,
        },
        headers=bearer(key),
        timeout=10,
    ) as response:
        session_id = response.headers[SID]
        next(response.iter_bytes())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = httpx.get(
            f"{gateway.server.base_url}/v1/sessions/{session_id}", headers=bearer(key)
        )
        if found.status_code == 200:
            break
        time.sleep(0.1)
    assert found.status_code == 200, found.text
    # The fake bills a stream after sending its last event, which the gateway may
    # have recorded already.
    while not gateway.billing(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    gateway.assert_totals_match_billing(key)


def test_concurrent_turns_on_one_session_each_see_every_turn_before(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    raw = client.chat.completions.with_raw_response.create(
        model="fake/gpt-4o-mini", messages=[{"role": "user", "content": "Q0"}]
    )
    session_id = raw.headers[SID]
    errors: list[BaseException] = []

    def turn(n: int) -> None:
        try:
            gateway.sdk(key).chat.completions.create(
                model="fake/gpt-4o-mini",
                messages=[{"role": "user", "content": f"Q{n}"}],
                extra_headers={SID: session_id},
            )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=turn, args=(n,)) for n in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    inputs = [entry["input_tokens"] for entry in gateway.billing(key)]
    # Serialized: each turn's prompt is the whole history so far, so each is longer.
    assert inputs == sorted(inputs)
    assert len(set(inputs)) == 7
    assert gateway.get(key, f"/v1/sessions/{session_id}")["round_count"] == 7
    gateway.assert_totals_match_billing(key)


def fresh_fake_env(fake: FakeProcess, tmp_path: Path) -> dict[str, str]:
    """A server's environment for a gateway in front of ``fake``, whose billing is reset."""
    assert fake.post("/_fake/reset").status_code == 200
    config = write_config(tmp_path / "gateway.toml", fake)
    return {"LLMSESSION_CONFIG": str(config), "FAKE_UPSTREAM_KEY": API_KEY}


def test_a_turn_still_with_the_provider_when_the_server_stops_is_recorded(
    module_fake: FakeProcess,
    start_server: ServerFactory,
    tmp_path: Path,
    gateways: list[Gateway],
) -> None:
    # The server's grace period (LLMSESSION_SHUTDOWN_GRACE, 1 s here) runs out
    # while the provider takes 3 s: the request is cancelled (the client gets
    # uvicorn's 500, where the default 30 s would have let the answer through), but
    # what the provider bills is recorded, and a keyed retry gets it.
    env = fresh_fake_env(module_fake, tmp_path)
    url = f"sqlite:///{tmp_path / 'sessions.db'}"
    first = Gateway(start_server(url, LLMSESSION_SHUTDOWN_GRACE="1", **env), module_fake)
    gateways.append(first)
    key = first.tenant()
    ask: dict[str, Any] = {"model": "fake/gpt-4o-mini"}
    session_id = (
        first.sdk(key)
        .chat.completions.with_raw_response.create(
            **ask, messages=[{"role": "user", "content": "Q1"}]
        )
        .headers[SID]
    )
    module_fake.fault(mode="slow", delay_seconds=3, count=1)
    retried = {SID: session_id, "Idempotency-Key": "q2"}
    errors: list[BaseException] = []

    def turn() -> None:
        try:
            first.sdk(key).chat.completions.create(
                **ask, messages=[{"role": "user", "content": "Q2"}], extra_headers=retried
            )
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=turn)
    thread.start()
    time.sleep(1)  # the request is with the provider
    assert first.server.stop() == 0, first.server.output()
    thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], openai.InternalServerError)
    second = Gateway(start_server(url, **env), module_fake)
    gateways.append(second)
    assert second.get(key, f"/v1/sessions/{session_id}")["round_count"] == 2
    raw = second.sdk(key).chat.completions.with_raw_response.create(
        **ask, messages=[{"role": "user", "content": "Q2"}], extra_headers=retried
    )
    assert raw.headers["Idempotent-Replayed"] == "true"
    assert len(second.billing(key)) == 2
    second.assert_totals_match_billing(key)


@pytest.mark.postgres
def test_more_sessions_in_a_turn_at_once_than_turn_connections_on_postgresql(
    module_fake: FakeProcess,
    start_server: ServerFactory,
    postgres_url: str,
    tmp_path: Path,
    gateways: list[Gateway],
) -> None:
    # Four sessions wait for a slow provider at once, on a server with one turn
    # connection and a 1 s pool timeout: all four hold their turns together (with
    # a connection each, the third and fourth would wait over 1 s and fail).
    env = fresh_fake_env(module_fake, tmp_path)
    url = postgres_url + "&turn_pool_max=1&pool_timeout=1"
    gateway = Gateway(start_server(url, **env), module_fake)
    gateways.append(gateway)
    key = gateway.tenant()
    sessions = [
        gateway.sdk(key)
        .chat.completions.with_raw_response.create(
            model="fake/gpt-4o-mini", messages=[{"role": "user", "content": f"S{n}"}]
        )
        .headers[SID]
        for n in range(4)
    ]
    module_fake.fault(mode="slow", delay_seconds=0.6, count=4)
    errors: list[BaseException] = []

    def turn(session_id: str) -> None:
        try:
            gateway.sdk(key).chat.completions.create(
                model="fake/gpt-4o-mini",
                messages=[{"role": "user", "content": "Q2"}],
                extra_headers={SID: session_id},
            )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=turn, args=(session_id,)) for session_id in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for session_id in sessions:
        assert gateway.get(key, f"/v1/sessions/{session_id}")["round_count"] == 2
    gateway.assert_totals_match_billing(key)


@pytest.fixture
def two_servers_on_postgresql(
    module_fake: FakeProcess,
    start_server: ServerFactory,
    postgres_url: str,
    tmp_path: Path,
    gateways: list[Gateway],
) -> tuple[Gateway, Gateway]:
    """Two llmsession processes on one PostgreSQL schema, before the fake."""
    env = fresh_fake_env(module_fake, tmp_path)
    one = Gateway(start_server(postgres_url, **env), module_fake)
    two = Gateway(start_server(postgres_url, **env), module_fake)
    gateways += [one, two]
    return one, two


@pytest.mark.postgres
def test_a_session_continues_through_a_second_server_on_postgresql(
    two_servers_on_postgresql: tuple[Gateway, Gateway],
) -> None:
    one, two = two_servers_on_postgresql
    key = one.tenant()
    raw = one.sdk(key).chat.completions.with_raw_response.create(
        model="fake/gpt-4o-mini", messages=[{"role": "user", "content": "Q1"}]
    )
    two.sdk(key).chat.completions.create(
        model="fake/gpt-4o-mini",
        messages=[{"role": "user", "content": "Q2"}],
        extra_headers={SID: raw.headers[SID]},
    )
    billing = two.billing(key)
    assert billing[1]["input_tokens"] > billing[0]["input_tokens"] + billing[0]["output_tokens"]
    assert two.get(key, f"/v1/sessions/{raw.headers[SID]}")["round_count"] == 2
    two.assert_totals_match_billing(key)


@pytest.mark.postgres
@pytest.mark.parametrize("stream", [False, True])
def test_a_retried_start_while_the_first_runs_on_another_server_calls_the_provider_once(
    module_fake: FakeProcess, two_servers_on_postgresql: tuple[Gateway, Gateway], stream: bool
) -> None:
    one, two = two_servers_on_postgresql
    key = one.tenant()
    # A model of this test's own: the fake's bills of it are this test's, all of
    # them, those of a session never stored included.
    model = f"start-retry-{uuid.uuid4().hex[:8]}"
    # The first call is slow: its retry reaches the other server while it runs.
    module_fake.fault(mode="slow", delay_seconds=1.0, count=1)
    answers: dict[str, tuple[str, str]] = {}
    errors: list[BaseException] = []

    def ask(name: str, gateway: Gateway, after: float) -> None:
        time.sleep(after)
        try:
            raw = gateway.sdk(key).chat.completions.with_raw_response.create(
                model=f"fake/{model}",
                messages=[{"role": "user", "content": "Q1"}],
                stream=stream,
                extra_headers={"Idempotency-Key": "start-1"},
            )
            parsed: Any = raw.parse()
            text = (
                "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)
                if stream
                else parsed.choices[0].message.content
            )
            answers[name] = (raw.headers[SID], text)
        except BaseException as error:
            errors.append(error)

    threads = [
        threading.Thread(target=ask, args=("first", one, 0.0)),
        threading.Thread(target=ask, args=("retry", two, 0.3)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # One session, one bill, the same answer: the retry waited for the first's turn.
    assert answers["retry"] == answers["first"]
    assert [entry["model"] for entry in module_fake.billing()].count(model) == 1
    assert [s["session_id"] for s in one.get(key, "/v1/sessions")["items"]] == [answers["first"][0]]
    one.assert_totals_match_billing(key)


#: One question, asked in every turn of the tests below.
ASK: dict[str, Any] = {"model": "fake/gpt-4o-mini", "messages": [{"role": "user", "content": "Q"}]}


def started_session(gateway: Gateway) -> tuple[str, OpenAI, str]:
    """A new tenant's key, its SDK client, and a session it started with one round."""
    key = gateway.tenant()
    client = gateway.sdk(key)
    return key, client, client.chat.completions.with_raw_response.create(**ASK).headers[SID]


def test_a_close_from_the_cli_waits_for_the_turn_under_way(
    module_fake: FakeProcess,
    start_server: ServerFactory,
    tmp_path: Path,
    gateways: list[Gateway],
) -> None:
    store_url = f"sqlite:///{tmp_path / 'sessions.db'}"
    gateway = Gateway(start_server(store_url, **fresh_fake_env(module_fake, tmp_path)), module_fake)
    gateways.append(gateway)
    key, client, session_id = started_session(gateway)
    tenant = gateway.get(key, f"/v1/sessions/{session_id}")["tenant_id"]
    module_fake.fault(mode="slow", delay_seconds=2)
    answers: list[str | None] = []
    turn = threading.Thread(
        target=lambda: answers.append(
            client.chat.completions.create(**ASK, extra_headers={SID: session_id})
            .choices[0]
            .message.content
        )
    )
    turn.start()
    time.sleep(0.5)  # the turn is with the provider
    closed = cli("sessions", "close", "--tenant", tenant, session_id, "--store-url", store_url)
    turn.join()
    # The close waited for the turn: its answer reached the client, its round counts.
    assert closed.returncode == 0, closed.stderr
    assert closed.stdout.startswith(f"Closed session {session_id}: 2 rounds")
    (answer,) = answers
    assert answer
    assert len(gateway.billing(key)) == 2
    gateway.assert_totals_match_billing(key)


@pytest.mark.parametrize(
    "fault",
    [
        {"mode": "slow", "delay_seconds": 3},
        {"mode": "slow", "delay_seconds": 0, "event_delay_seconds": 0.6},
    ],
    ids=["body", "stream"],
)
def test_a_session_is_not_idle_while_its_provider_answers(
    module_fake: FakeProcess,
    start_server: ServerFactory,
    tmp_path: Path,
    gateways: list[Gateway],
    fault: dict[str, Any],
) -> None:
    env = {
        **fresh_fake_env(module_fake, tmp_path),
        "LLMSESSION_DEFAULT_TTL": "2",
        "LLMSESSION_SWEEP_INTERVAL": "0.2",
    }
    gateway = Gateway(start_server(f"sqlite:///{tmp_path / 's.db'}", **env), module_fake)
    gateways.append(gateway)
    key, client, session_id = started_session(gateway)
    time.sleep(0.5)
    # The provider answers for longer than the session's TTL, with the sweeper running:
    # the session is never shown expired meanwhile, and the round counts.
    states: list[str] = []
    answered = threading.Event()

    def watch() -> None:
        while not answered.is_set():
            states.append(gateway.get(key, f"/v1/sessions/{session_id}")["state"])
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    module_fake.fault(**fault)
    began = time.monotonic()
    watcher.start()
    headers = {SID: session_id, "Idempotency-Key": "long"}
    try:
        if "event_delay_seconds" in fault:
            chunks = client.chat.completions.create(**ASK, stream=True, extra_headers=headers)
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            answer = client.chat.completions.create(**ASK, extra_headers=headers)
            assert answer.choices[0].message.content
    finally:
        answered.set()
        watcher.join()
    assert time.monotonic() - began > 2
    assert set(states) == {"active"}
    session = gateway.get(key, f"/v1/sessions/{session_id}")
    assert (session["state"], session["round_count"]) == ("active", 2)
    gateway.assert_totals_match_billing(key)
    # Idle past the TTL, the session ends, and its history with it.
    time.sleep(2.5)
    with pytest.raises(openai.ConflictError, match="expired"):
        client.chat.completions.create(**ASK, extra_headers={SID: session_id})
    with pytest.raises(openai.ConflictError, match="deleted with its history"):
        client.chat.completions.create(**ASK, extra_headers=headers)
    assert len(gateway.billing(key)) == 2


def test_a_refused_request_leaves_the_sessions_deadline(
    module_fake: FakeProcess,
    start_server: ServerFactory,
    tmp_path: Path,
    gateways: list[Gateway],
) -> None:
    env = {**fresh_fake_env(module_fake, tmp_path), "LLMSESSION_DEFAULT_TTL": "4"}
    gateway = Gateway(start_server(f"sqlite:///{tmp_path / 's.db'}", **env), module_fake)
    gateways.append(gateway)
    key, client, session_id = started_session(gateway)
    before = gateway.get(key, f"/v1/sessions/{session_id}")
    time.sleep(2.5)  # under half the TTL left
    with pytest.raises(openai.ConflictError):
        client.chat.completions.create(
            **{**ASK, "model": "fake/gpt-4o"}, extra_headers={SID: session_id}
        )
    with pytest.raises(openai.ConflictError):
        client.responses.create(
            model="fake/gpt-4o-mini", input="Q", extra_headers={SID: session_id}
        )
    after = gateway.get(key, f"/v1/sessions/{session_id}")
    assert after["expires_at"] == before["expires_at"]
    assert len(gateway.billing(key)) == 1
