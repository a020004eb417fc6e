"""Forwarding through the app in-process, with a scripted upstream at the transport boundary.

What the gateway sends upstream, what it answers, and what it records, pinned down
request by request. The same paths against a real server process, the fake provider
and the official openai SDK are in test_gateway_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmsession.client import AsyncClient
from llmsession.clock import ManualClock
from llmsession.errors import StoreError
from llmsession.expiry import RENEWAL_MARGIN_SECONDS
from llmsession.gateway import GatewayConfig, ProviderConfig, SecretKey
from llmsession.gateway.forwarding import _KeptAlive
from llmsession.gateway.transport import ProviderTimeout, ProviderUnavailable
from llmsession.ids import SessionId, TenantId
from llmsession.server import ServerSettings, create_app
from llmsession.store import SessionStore, open_store
from llmsession.store.models import StoredSession, Turn
from llmsession.usage import Usage
from tests.gateway.scripted import Scripted, ScriptedUpstream
from tests.server.conftest import ADMIN, ADMIN_KEY, T0, bearer

FIXTURES = Path(__file__).parent / "fixtures" / "openai"
CHAT_BODY = (FIXTURES / "chat_response.json").read_bytes()
CHAT_STREAM = (FIXTURES / "chat_stream.sse").read_bytes()
RESPONSES_BODY = (FIXTURES / "responses_response.json").read_bytes()
PREVIOUS_MISSING = (FIXTURES / "responses_previous_missing.json").read_bytes()
SID = "LLMSession-Id"


def provider(provider_id: str = "fake", models: tuple[str, ...] | None = None) -> ProviderConfig:
    return ProviderConfig(
        provider_id=provider_id,
        kind="openai",
        base_url="http://upstream.invalid/v1",
        api_key_env="K",
        api_key=SecretKey("sk-secret"),
        models=models,
    )


def chat(n: int, *, usage: tuple[int, int] = (2006, 1920)) -> Scripted:
    body = json.loads(CHAT_BODY)
    body["choices"][0]["message"]["content"] = f"A{n}"
    body["usage"]["prompt_tokens"], body["usage"]["prompt_tokens_details"]["cached_tokens"] = usage
    return Scripted(body=json.dumps(body).encode())


class Gw:
    def __init__(self, client: httpx.AsyncClient, upstream: ScriptedUpstream) -> None:
        self.client = client
        self.upstream = upstream
        self.auth: dict[str, str] = {}

    def llmsession_client(self) -> AsyncClient:
        """llmsession's own Python client on the same app, with the tenant's key."""
        transport = self.client._transport  # the app's ASGI transport
        key = self.auth["Authorization"].removeprefix("Bearer ")
        return AsyncClient("http://testserver", api_key=key, transport=transport)  # type: ignore[arg-type]

    async def tenant(self, tenant_id: str) -> dict[str, str]:
        response = await self.client.post(
            "/v1/admin/tenants", json={"tenant_id": tenant_id}, headers=ADMIN
        )
        return bearer(response.json()["api_key"])

    async def chat(
        self,
        content: str,
        *,
        session: str | None = None,
        auth: dict[str, str] | None = None,
        **fields: Any,
    ) -> httpx.Response:
        headers = dict(auth or self.auth)
        if session is not None:
            headers[SID] = session
        if "key" in fields:
            headers["Idempotency-Key"] = fields.pop("key")
        body = {
            "model": "fake/gpt-4o-mini",
            "messages": [{"role": "user", "content": content}],
            **fields,
        }
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)

    async def session(self, session_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/sessions/{session_id}", headers=self.auth)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


def make_gw(
    upstream: ScriptedUpstream,
    config: GatewayConfig | None,
    tmp_path: Path,
    store: SessionStore | None = None,
) -> Any:
    settings = ServerSettings(
        store_url="memory://",
        admin_key=ADMIN_KEY,
        sweep_interval_seconds=3600,
    )
    return create_app(
        settings, clock=ManualClock(T0), store=store, gateway_config=config, upstream=upstream
    )


@pytest.fixture
def upstream() -> ScriptedUpstream:
    return ScriptedUpstream()


@asynccontextmanager
async def running_gw(
    upstream: ScriptedUpstream,
    config: GatewayConfig,
    tmp_path: Path,
    store: SessionStore | None = None,
) -> AsyncIterator[Gw]:
    """An app on ``config`` (and ``store``) and a client of tenant acme's."""
    app = make_gw(upstream, config, tmp_path, store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            gateway = Gw(client, upstream)
            gateway.auth = await gateway.tenant("acme")
            yield gateway


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def store(clock: ManualClock) -> AsyncIterator[SessionStore]:
    """A memory store on ``clock``, for tests that move the gateway's time."""
    opened = await open_store("memory://", clock=clock)
    yield opened
    await opened.aclose()


@pytest.fixture
async def gw(upstream: ScriptedUpstream, tmp_path: Path) -> AsyncIterator[Gw]:
    config = GatewayConfig(providers={"fake": provider()}, history_limit_bytes=200_000)
    async with running_gw(upstream, config, tmp_path) as gateway:
        yield gateway


async def test_a_first_request_starts_a_session_from_the_providers_usage(gw: Gw) -> None:
    gw.upstream.answers.append(chat(1))
    response = await gw.chat("Q1", temperature=0)
    assert response.status_code == 200, response.text
    assert response.content == chat(1).body
    session_id = response.headers[SID]
    (sent,) = gw.upstream.bodies()
    assert sent == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Q1"}],
        "temperature": 0,
        "prompt_cache_key": session_id,
    }
    assert gw.upstream.sent[0].path == "/chat/completions"
    session = await gw.session(session_id)
    assert (session["state"], session["provider_id"], session["model"]) == (
        "active",
        "fake",
        "gpt-4o-mini",
    )
    assert (session["initial_tokens"], session["round_count"], session["delta_tokens"]) == (
        2006,
        1,
        86,
    )


async def test_a_continued_session_sends_the_history_then_the_new_messages(gw: Gw) -> None:
    gw.upstream.answers += [chat(1), chat(2, usage=(2100, 1920))]
    session_id = (await gw.chat("Q1")).headers[SID]
    response = await gw.chat("Q2", session=session_id)
    assert response.status_code == 200, response.text
    assert response.headers[SID] == session_id
    assert gw.upstream.bodies()[1]["messages"] == [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
    ]
    session = await gw.session(session_id)
    assert (session["round_count"], session["delta_tokens"], session["tokens_saved"]) == (
        2,
        86 + 180,
        2 * 2006 - 266,
    )


async def test_a_retried_start_returns_the_same_answer_and_session_without_calling_again(
    gw: Gw,
) -> None:
    gw.upstream.answers.append(chat(1))
    first = await gw.chat("Q1", key="start-1")
    again = await gw.chat("Q1", key="start-1")
    assert again.status_code == 200
    assert again.content == first.content
    assert again.headers[SID] == first.headers[SID]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(gw.upstream.sent) == 1
    other = await gw.chat("different", key="start-1")
    assert other.status_code == 409
    assert other.json()["type"] == "urn:llmsession:problem:idempotency-conflict"


async def test_a_retried_round_counts_once(gw: Gw) -> None:
    gw.upstream.answers += [chat(1), chat(2)]
    session_id = (await gw.chat("Q1")).headers[SID]
    first = await gw.chat("Q2", session=session_id, key="r2")
    again = await gw.chat("Q2", session=session_id, key="r2")
    assert again.content == first.content
    assert len(gw.upstream.sent) == 2
    assert (await gw.session(session_id))["round_count"] == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_a_turn_cancelled_while_its_provider_answers_is_still_recorded(
    gw: Gw, stream: bool
) -> None:
    # As uvicorn cancels the requests still running when a stopping server's grace
    # period runs out: the provider was sent the request, and bills it.
    resume = asyncio.Event()
    if stream:
        # Cancelled before the answer's first byte: no stream to the client yet.
        slow = Scripted(chunks=[CHAT_STREAM], content_type="text/event-stream")
    else:
        # Cancelled while the answer's body arrives.
        body = chat(2, usage=(2100, 1920)).body
        slow = Scripted(chunks=[body[:20], body[20:]], resume=resume)
    gw.upstream.answers += [chat(1), slow, chat(3)]
    session_id = (await gw.chat("Q1")).headers[SID]
    sent = asyncio.Event()
    gw.upstream.on_send = sent.set
    if stream:
        gw.upstream.headers_after = resume
    second = asyncio.create_task(gw.chat("Q2", session=session_id, stream=stream))
    await sent.wait()
    await asyncio.sleep(0)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    resume.set()
    # The next turn waits for the cancelled one's round, and sees its answer.
    third = await gw.chat("Q3", session=session_id)
    assert third.status_code == 200, third.text
    assert gw.upstream.bodies()[2]["messages"][3] == {
        "role": "assistant",
        "content": "Hello there!" if stream else "A2",
    }
    session = await gw.session(session_id)
    assert session["round_count"] == 3


async def test_foreign_missing_and_ended_sessions_never_reach_the_provider(gw: Gw) -> None:
    gw.upstream.answers.append(chat(1))
    session_id = (await gw.chat("Q1")).headers[SID]
    other = await gw.tenant("other")
    foreign = await gw.chat("Q2", session=session_id, auth=other)
    assert foreign.status_code == 404
    missing = await gw.chat("Q2", session="0192f0c4-7b1e-7c2a-9d1e-3f4a5b6c7d8e")
    assert missing.status_code == 404
    assert foreign.json()["detail"].replace(session_id, "X") == missing.json()["detail"].replace(
        "0192f0c4-7b1e-7c2a-9d1e-3f4a5b6c7d8e", "X"
    )
    malformed = await gw.chat("Q2", session="not-a-uuid")
    assert malformed.status_code == 422
    closed = await gw.client.post(f"/v1/sessions/{session_id}/close", headers=gw.auth)
    assert closed.status_code == 200
    ended = await gw.chat("Q2", session=session_id)
    assert ended.status_code == 409
    assert ended.json()["current_state"] == "closed"
    # A retry would meet the same state: the official SDKs are told not to retry.
    assert ended.headers["x-should-retry"] == "false"
    assert len(gw.upstream.sent) == 1


async def test_provider_client_errors_pass_through_and_record_nothing(gw: Gw) -> None:
    error = b'{"error":{"message":"bad temperature","type":"invalid_request_error","param":"temperature","code":null}}'
    gw.upstream.answers.append(Scripted(status=400, body=error))
    response = await gw.chat("Q1", temperature=9)
    assert response.status_code == 400
    assert response.content == error
    stats = (await gw.client.get("/v1/stats", headers=gw.auth)).json()
    assert sum(group["rounds"] for group in stats["groups"]) == 0
    assert SID not in response.headers


async def test_when_to_retry_passes_through_but_not_the_operators_rate_limits(gw: Gw) -> None:
    headers = {
        "retry-after": "3",
        "retry-after-ms": "2500",
        "request-id": "req_1",
        "x-ratelimit-remaining-requests": "7",
        "anthropic-ratelimit-tokens-remaining": "100",
    }
    gw.upstream.answers.append(Scripted(status=429, body=b'{"error":{}}', headers=headers))
    response = await gw.chat("Q1")
    assert response.status_code == 429
    assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("3", "2500")
    assert response.headers["request-id"] == "req_1"
    assert not [name for name in response.headers if "ratelimit" in name]


@pytest.mark.parametrize("status", [401, 403])
async def test_a_provider_refusing_the_operators_key_is_logged_for_the_operator(
    gw: Gw, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    error = b'{"error":{"message":"Incorrect API key provided.","code":"invalid_api_key"}}'
    gw.upstream.answers.append(Scripted(status=status, body=error))
    with caplog.at_level(logging.WARNING, logger="llmsession"):
        response = await gw.chat("Q1")
    # The client gets the provider's answer as it is; the operator learns whose key it was.
    assert (response.status_code, response.content) == (status, error)
    [record] = [r for r in caplog.records if r.name.startswith("llmsession.gateway")]
    message = record.getMessage()
    assert message.startswith(f"provider fake answered {status}: check the key in K")
    assert "sk-" not in message


@pytest.mark.parametrize(
    ("failure", "status", "kind"),
    [
        (Scripted(status=500, body=b'{"error":{}}'), 502, "provider-unavailable"),
        (
            ProviderUnavailable("fake", "provider 'fake' could not be reached (ConnectError)"),
            502,
            "provider-unavailable",
        ),
        (
            ProviderTimeout("fake", "provider 'fake' did not answer within its timeout_seconds"),
            504,
            "provider-timeout",
        ),
    ],
)
async def test_provider_failures_are_problems_naming_the_provider(
    gw: Gw, failure: Any, status: int, kind: str
) -> None:
    gw.upstream.answers.append(failure)
    response = await gw.chat("Q1")
    assert response.status_code == status
    problem = response.json()
    assert problem["type"] == f"urn:llmsession:problem:{kind}"
    assert problem["provider_id"] == "fake"
    assert "sk-secret" not in response.text
    assert SID not in response.headers


async def test_a_stream_passes_through_records_usage_and_drops_the_usage_chunk(gw: Gw) -> None:
    gw.upstream.answers.append(
        Scripted(chunks=[CHAT_STREAM[:100], CHAT_STREAM[100:]], content_type="text/event-stream")
    )
    response = await gw.chat("Q1", stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert b'"choices":[]' not in response.content
    assert response.content.endswith(b"data: [DONE]\n\n")
    assert gw.upstream.bodies()[0]["stream_options"] == {"include_usage": True}
    session = await gw.session(response.headers[SID])
    assert (session["initial_tokens"], session["delta_tokens"]) == (1300, 148)
    assert session["usage"] == {
        "input_tokens": 1300,
        "cached_input_tokens": 1152,
        "cache_write_tokens": 0,
        "output_tokens": 3,
        "reasoning_tokens": 0,
        "rounds_without_usage": 0,
    }
    rounds = await gw.client.get(f"/v1/sessions/{response.headers[SID]}/rounds", headers=gw.auth)
    (round_,) = rounds.json()["items"]
    assert round_["gateway"] is True
    assert round_["usage_missing"] is False
    assert round_["usage"]["raw"]["prompt_tokens_details"] == {
        "cached_tokens": 1152,
        "audio_tokens": 0,
    }
    stats = (await gw.client.get("/v1/stats", headers=gw.auth)).json()
    assert stats["groups"][0]["usage"]["cached_input_tokens"] == 1152
    # llmsession's own client reads the same fields into the store's types.
    async with gw.llmsession_client() as client:
        view = await client.get_session(response.headers[SID])
        assert (view.usage.input_tokens, view.usage.cached_input_tokens) == (1300, 1152)
        (listed,) = (await client.list_rounds(response.headers[SID])).items
        assert listed.gateway
        assert listed.usage is not None
        assert listed.usage.delta_tokens == 148
        assert listed.usage.raw["completion_tokens"] == 3
        (totals,) = await client.stats()
        assert totals.usage.output_tokens == 3


async def test_a_cut_stream_ends_in_an_error_and_starts_no_session(gw: Gw) -> None:
    cut = CHAT_STREAM[: CHAT_STREAM.index(b"data: [DONE]") - 400]
    gw.upstream.answers.append(
        Scripted(
            chunks=[cut], content_type="text/event-stream", error=ProviderUnavailable("fake", "cut")
        )
    )
    response = await gw.chat("Q1", stream=True)
    assert b"[DONE]" not in response.content
    last = response.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert json.loads(last.removeprefix(b"data: "))["error"]["code"] == "upstream_stream_cut"
    missing = await gw.client.get(f"/v1/sessions/{response.headers[SID]}", headers=gw.auth)
    assert missing.status_code == 404


def cut_after_usage() -> Scripted:
    """A stream cut after its usage chunk, before ``[DONE]``: billed, not complete."""
    cut = CHAT_STREAM[: CHAT_STREAM.index(b"data: [DONE]")]
    return Scripted(
        chunks=[cut], content_type="text/event-stream", error=ProviderUnavailable("fake", "cut")
    )


async def test_a_retry_of_a_cut_stream_under_its_key_is_answered_anew(gw: Gw) -> None:
    full = Scripted(chunks=[CHAT_STREAM], content_type="text/event-stream")
    gw.upstream.answers += [chat(1), cut_after_usage(), full]
    session_id = (await gw.chat("Q1")).headers[SID]
    cut = await gw.chat("Q2", session=session_id, key="q2", stream=True)
    assert b"upstream_stream_cut" in cut.content
    # The cut round was billed, so it counts; its answer was never whole, so the
    # retry under the same key goes to the provider instead of a 409.
    assert (await gw.session(session_id))["round_count"] == 2
    again = await gw.chat("Q2", session=session_id, key="q2", stream=True)
    assert again.status_code == 200
    assert again.content.endswith(b"data: [DONE]\n\n")
    assert "Idempotent-Replayed" not in again.headers
    assert len(gw.upstream.sent) == 3
    # That answer is the key's now: a further retry replays it.
    replayed = await gw.chat("Q2", session=session_id, key="q2", stream=True)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.content == again.content
    assert (await gw.session(session_id))["round_count"] == 3


async def test_a_retry_of_a_cut_start_under_its_key_starts_anew(gw: Gw) -> None:
    gw.upstream.answers += [cut_after_usage(), chat(1)]
    cut = await gw.chat("Q1", key="start", stream=True)
    assert b"upstream_stream_cut" in cut.content
    again = await gw.chat("Q1", key="start", stream=True)
    assert again.status_code == 200
    assert "Idempotent-Replayed" not in again.headers
    assert again.headers[SID] != cut.headers[SID]
    assert len(gw.upstream.sent) == 2


def first_events(stream: bytes, count: int, separator: bytes = b"\n\n") -> bytes:
    """The stream's first ``count`` events, as the provider sent them."""
    return separator.join(stream.split(separator)[:count]) + separator


#: Per wire format: the request path and body, the events the provider sends before
#: it goes silent, and the body answer of the next turn if those carried usage (then
#: the round counts).
STALLED: dict[str, tuple[str, dict[str, Any], bytes, bytes | None]] = {
    "chat": (
        "/v1/chat/completions",
        {"model": "fake/m", "messages": [{"role": "user", "content": "Q1"}], "stream": True},
        first_events(CHAT_STREAM, 2),
        None,
    ),
    "responses": (
        "/v1/responses",
        {"model": "fake/m", "input": "Q1", "stream": True},
        first_events((FIXTURES / "responses_stream.sse").read_bytes(), 4),
        None,
    ),
    "messages": (
        "/v1/messages",
        {
            "model": "claude/m",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Q1"}],
            "stream": True,
        },
        first_events((FIXTURES.parent / "anthropic" / "messages_stream.sse").read_bytes(), 3),
        (FIXTURES.parent / "anthropic" / "messages_response.json").read_bytes(),
    ),
    "gemini": (
        "/v1beta/models/gem/m:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "Q1"}]}]},
        first_events((FIXTURES.parent / "gemini" / "stream.sse").read_bytes(), 2, b"\r\n\r\n"),
        (FIXTURES.parent / "gemini" / "generate_response.json").read_bytes(),
    ),
}


def stalled_error(wire: str, last: bytes) -> tuple[str, str]:
    """The error event's code (or type, or status) and message, in the format's shape."""
    lines = dict(line.split(b": ", 1) for line in last.splitlines() if line)
    data = json.loads(lines[b"data"])
    if wire == "responses":
        assert (lines[b"event"], data["type"]) == (b"error", "error")
        return data["code"], data["message"]
    if wire == "messages":
        assert (lines[b"event"], data["type"]) == (b"error", "error")
        return data["error"]["type"], data["error"]["message"]
    assert b"event" not in lines
    if wire == "chat":
        return data["error"]["code"], data["error"]["message"]
    return f"{data['error']['code']} {data['error']['status']}", data["error"]["message"]


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        ("chat", "upstream_timeout"),
        ("responses", "upstream_timeout"),
        ("messages", "timeout_error"),
        ("gemini", "504 DEADLINE_EXCEEDED"),
    ],
)
async def test_a_stream_that_stalls_past_the_timeout_ends_in_a_timeout_not_a_cut(
    upstream: ScriptedUpstream, tmp_path: Path, wire: str, code: str
) -> None:
    path, body, sent, answer = STALLED[wire]
    config = GatewayConfig(
        providers={
            name: ProviderConfig(
                provider_id=name,
                kind=kind,
                base_url="http://upstream.invalid/v1",
                api_key_env="K",
                api_key=SecretKey("sk-secret"),
                timeout_seconds=1.5,
            )
            for name, kind in (("fake", "openai"), ("claude", "anthropic"), ("gem", "gemini"))
        }
    )
    upstream.answers.append(
        Scripted(
            chunks=[sent],
            content_type="text/event-stream",
            error=ProviderTimeout(
                "fake", "provider 'fake' did not answer within its timeout_seconds"
            ),
        )
    )
    async with running_gw(upstream, config, tmp_path) as gw:
        client = gw.client
        response = await client.post(path, json=body, headers=gw.auth)
        session_id = response.headers[SID]
        session = await client.get(f"/v1/sessions/{session_id}", headers=gw.auth)
        if answer is not None:
            # The next turn is sent with no history: the stalled one added nothing.
            upstream.answers.append(Scripted(body=answer))
            body = {**body, "stream": False} if wire == "messages" else body
            path = path.replace("streamGenerateContent?alt=sse", "generateContent")
            headers = {**gw.auth, SID: session_id}
            assert (await client.post(path, json=body, headers=headers)).status_code == 200
    # The 200 went with the first events; what ends the stream says the gateway gave
    # up waiting, and for how long, not that the provider cut it.
    assert response.status_code == 200
    assert response.content.startswith(sent)
    last = response.content[len(sent) :]
    assert last.endswith(b"\n\n")
    found, message = stalled_error(wire, last)
    assert found == code
    assert "sent nothing for 1.5 seconds (its timeout_seconds)" in message
    # Counted as a cut stream is: a round only if the provider had sent usage.
    if answer is not None:
        assert session.json()["round_count"] == 1
        resent = upstream.bodies()[1]
        assert len(resent.get("messages", resent.get("contents"))) == 1
    else:
        assert session.status_code == 404


async def test_a_turn_near_its_sessions_deadline_renews_it_before_the_provider(
    upstream: ScriptedUpstream, tmp_path: Path, clock: ManualClock, store: SessionStore
) -> None:
    config = GatewayConfig(providers={"fake": provider()})
    async with running_gw(upstream, config, tmp_path, store) as gw:
        upstream.answers += [chat(1), chat(2), chat(3)]
        session_id = (await gw.chat("Q1")).headers[SID]
        acme, sid = TenantId("acme"), SessionId.parse(session_id)
        first = await store.get(acme, sid)
        # Far from the deadline: the turn's round alone is written.
        clock.advance(60)
        assert (await gw.chat("Q2", session=session_id)).status_code == 200
        second = await store.get(acme, sid)
        assert second.version == first.version + 1
        # A second before it: renewed before the provider is called, so the deadline
        # passing while the provider works (here at once) costs nothing; a turn either
        # keeps its session alive or is refused unbilled.
        assert RENEWAL_MARGIN_SECONDS > 1
        clock.advance(3599)
        upstream.on_send = lambda: clock.advance(2)
        assert (await gw.chat("Q3", session=session_id)).status_code == 200
        third = await store.get(acme, sid)
        assert third.version == second.version + 2
        assert third.record.round_count == 3
        upstream.on_send = None
        # Past it, refused before the provider.
        clock.advance(3601)
        late = await gw.chat("Q4", session=session_id)
        assert late.status_code == 409
        assert len(upstream.sent) == 3


async def test_a_renewal_that_fails_during_a_turn_is_tried_again(
    upstream: ScriptedUpstream, tmp_path: Path, clock: ManualClock, store: SessionStore
) -> None:
    renew = store.keep_alive
    calls: list[object] = []
    renewed = asyncio.Event()

    async def failing_once(tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        calls.append(session_id)
        if len(calls) == 1:
            raise StoreError("the store is out of reach for a moment")
        stored = await renew(tenant_id, session_id)
        renewed.set()
        return stored

    store.keep_alive = failing_once  # type: ignore[method-assign]
    config = GatewayConfig(providers={"fake": provider()})
    resume = asyncio.Event()
    upstream.answers += [
        chat(1),
        Scripted(
            chunks=[CHAT_STREAM[:100], CHAT_STREAM[100:]],
            content_type="text/event-stream",
            resume=resume,
        ),
    ]
    async with running_gw(upstream, config, tmp_path, store) as gw:
        session_id = (await gw.chat("Q1")).headers[SID]
        # The turn starts 50 ms (of the store's clock) before its renewal is due.
        clock.advance(3600 - RENEWAL_MARGIN_SECONDS - 0.05)
        turn = asyncio.create_task(gw.chat("Q2", session=session_id, stream=True))
        async with asyncio.timeout(10):
            await renewed.wait()
        assert len(calls) == 2
        # The first renewal failed, the second (a second later) kept the session: the
        # provider ends its answer past the first deadline, and the round counts.
        clock.advance(RENEWAL_MARGIN_SECONDS + 1)
        resume.set()
        answer = await turn
        assert answer.content.endswith(b"data: [DONE]\n\n")
        assert (await gw.session(session_id))["round_count"] == 2


async def test_a_gemini_turn_near_its_deadline_renews_before_its_cache_entry_is_made(
    upstream: ScriptedUpstream, tmp_path: Path, clock: ManualClock, store: SessionStore
) -> None:
    gemini = ProviderConfig("g", "gemini", "http://upstream.invalid", "K", SecretKey("secret"))
    fixtures = FIXTURES.parent / "gemini"
    answer = Scripted(body=(fixtures / "generate_response.json").read_bytes())
    created = Scripted(body=(fixtures / "cache_created.json").read_bytes())
    upstream.answers += [answer, created, answer]
    path = "/v1beta/models/g/gemini-2.5-flash:generateContent"

    def asking(text: str) -> dict[str, Any]:
        return {"contents": [{"role": "user", "parts": [{"text": text}]}]}

    async with running_gw(upstream, GatewayConfig(providers={"g": gemini}), tmp_path, store) as gw:
        session_id = (await gw.client.post(path, json=asking("Q1"), headers=gw.auth)).headers[SID]
        # A second before the deadline, and every provider request takes two: the
        # session is renewed before the entry's creation, which the provider bills.
        clock.advance(3599)
        upstream.on_send = lambda: clock.advance(2)
        second = await gw.client.post(path, json=asking("Q2"), headers={**gw.auth, SID: session_id})
        assert second.status_code == 200, second.text
        assert [request.path for request in upstream.sent][1] == "/v1beta/cachedContents"
        assert (await gw.session(session_id))["round_count"] == 2


async def test_a_failed_renewal_is_tried_again_before_the_deadline_however_near(
    clock: ManualClock, store: SessionStore
) -> None:
    session_id = SessionId.generate(clock())
    turn = Turn("chat/completions", "h", "[]", "[]", None, 200, "application/json", b"{}")
    started = await store.start_with_turn(
        TenantId("acme"), session_id, provider_id="p", model="m", turn=turn, usage=Usage(10)
    )
    deadline = started.session.deadline
    assert deadline is not None
    kept = _KeptAlive(store, TenantId("acme"), session_id, started.session, T0.epoch_micros)
    loop = asyncio.get_running_loop()
    for left, retried_in in ((5.0, 1.0), (0.4, 0.2), (0.03, 0.015), (0.01, None)):
        now = deadline.epoch_micros - round(left * 1e6)
        timer = kept._schedule(now, retry=True)
        if retried_in is None:
            assert timer is None
        else:
            assert timer is not None
            assert timer.when() - loop.time() == pytest.approx(retried_in, abs=0.005)
            timer.cancel()
    kept.cancel()


async def test_responses_chain_to_the_stored_response_and_replay_when_it_is_gone(gw: Gw) -> None:
    gw.upstream.answers += [
        Scripted(body=RESPONSES_BODY),
        Scripted(body=RESPONSES_BODY.replace(b"resp_67ccd2", b"resp_SECOND")),
        Scripted(status=400, body=PREVIOUS_MISSING),
        Scripted(body=RESPONSES_BODY),
    ]
    headers = dict(gw.auth)
    first = await gw.client.post(
        "/v1/responses", json={"model": "gpt-4.1", "input": "Q1"}, headers=headers
    )
    assert first.status_code == 200, first.text
    headers[SID] = first.headers[SID]
    second = await gw.client.post(
        "/v1/responses", json={"model": "gpt-4.1", "input": "Q2"}, headers=headers
    )
    assert second.status_code == 200
    third = await gw.client.post(
        "/v1/responses", json={"model": "gpt-4.1", "input": "Q3"}, headers=headers
    )
    assert third.status_code == 200, third.text
    bodies = gw.upstream.bodies()
    assert "previous_response_id" not in bodies[0]
    assert (
        bodies[1]["previous_response_id"] == "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"
    )
    assert bodies[1]["input"] == "Q2"
    assert bodies[2]["previous_response_id"].startswith("resp_SECOND")
    # Gone: the whole history is replayed instead.
    assert "previous_response_id" not in bodies[3]
    assert [item.get("role") for item in bodies[3]["input"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert (await gw.session(first.headers[SID]))["round_count"] == 3


async def test_a_turn_after_one_the_provider_did_not_store_replays_at_once(gw: Gw) -> None:
    gw.upstream.answers += [Scripted(body=RESPONSES_BODY), Scripted(body=RESPONSES_BODY)]
    headers = dict(gw.auth)
    first = await gw.client.post(
        "/v1/responses", json={"model": "gpt-4.1", "input": "Q1", "store": False}, headers=headers
    )
    assert first.status_code == 200, first.text
    headers[SID] = first.headers[SID]
    second = await gw.client.post(
        "/v1/responses", json={"model": "gpt-4.1", "input": "Q2"}, headers=headers
    )
    assert second.status_code == 200, second.text
    # The first response was never stored: no request chained to it (which the provider
    # would refuse as previous_response_not_found), the history replayed instead.
    _, replayed = gw.upstream.bodies()
    assert "previous_response_id" not in replayed
    assert [item.get("role") for item in replayed["input"]] == ["user", "assistant", "user"]


async def test_model_routing(gw: Gw) -> None:
    gw.upstream.answers += [chat(1), chat(2)]
    bare = await gw.chat("Q1", model="gpt-4o-mini")
    assert bare.status_code == 200
    mismatch = await gw.chat("Q2", session=bare.headers[SID], model="fake/gpt-4o")
    assert mismatch.status_code == 409
    assert "fake/gpt-4o-mini" in mismatch.json()["detail"]
    assert mismatch.headers["x-should-retry"] == "false"
    same = await gw.chat("Q2", session=bare.headers[SID], model="gpt-4o-mini")
    assert same.status_code == 200
    assert gw.upstream.bodies()[1]["model"] == "gpt-4o-mini"


async def test_a_session_continued_on_the_other_endpoint_is_refused(gw: Gw) -> None:
    gw.upstream.answers.append(chat(1))
    session_id = (await gw.chat("Q1")).headers[SID]
    headers = {**gw.auth, SID: session_id}
    response = await gw.client.post(
        "/v1/responses", json={"model": "gpt-4o-mini", "input": "x"}, headers=headers
    )
    assert response.status_code == 409
    assert "continue it there" in response.json()["detail"]


async def test_history_over_the_limit_is_413_and_large_bodies_are_accepted_up_to_it(gw: Gw) -> None:
    gw.upstream.answers.append(chat(1))
    big = await gw.chat("x" * 100_000)
    assert big.status_code == 200, big.text
    too_big = await gw.chat("y" * 150_000, session=big.headers[SID])
    assert too_big.status_code == 413
    assert "history_limit_bytes" in too_big.json()["detail"]
    assert f"session {big.headers[SID]} would hold " in too_big.json()["detail"]
    assert too_big.json()["detail"].endswith("; start a new session")
    assert len(gw.upstream.sent) == 1
    over_body = await gw.chat("z" * 300_000)
    assert over_body.status_code == 413


async def test_a_start_over_the_limit_names_no_session_and_says_to_send_less(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    # A limit under the server's own body limit: the body is read, the history refused.
    config = GatewayConfig(providers={"fake": provider()}, history_limit_bytes=1000)
    async with running_gw(upstream, config, tmp_path) as gw:
        client = gw.client
        too_big = await gw.chat("y" * 2000)
        listed = await client.get("/v1/sessions", headers=gw.auth)
    assert too_big.status_code == 413, too_big.text
    detail = too_big.json()["detail"]
    assert detail.startswith("this request's conversation is ")
    assert "over this server's limit of 1000 per session (history_limit_bytes)" in detail
    assert detail.endswith(
        "no session was started: send less, or ask the operator to raise history_limit_bytes"
    )
    assert "session 0" not in detail
    assert SID not in too_big.headers
    assert upstream.sent == []
    assert listed.json()["items"] == []


async def test_the_limit_counts_a_stored_non_ascii_history_in_bytes(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    # "é" is 2 bytes of UTF-8: the stored turn is over 600 bytes though under 350
    # characters, and the second turn would bring the history past 1000 bytes.
    config = GatewayConfig(providers={"fake": provider()}, history_limit_bytes=1000)
    upstream.answers.extend([chat(1), chat(2)])
    async with running_gw(upstream, config, tmp_path) as gw:
        first = await gw.chat("é" * 300)
        assert first.status_code == 200, first.text
        second = await gw.chat("é" * 200, session=first.headers[SID])
    assert second.status_code == 413, second.text
    detail = second.json()["detail"]
    stored = len(json.dumps([{"role": "user", "content": "é" * 300}], ensure_ascii=False).encode())
    assert f"session {first.headers[SID]} would hold " in detail
    held = int(detail.split(" would hold ")[1].split(" bytes")[0])
    assert held > stored + 400
    assert len(upstream.sent) == 1


async def test_bad_bodies_are_refused_before_the_provider(gw: Gw) -> None:
    response = await gw.client.post(
        "/v1/chat/completions",
        content=b'{"model": 3}',
        headers={**gw.auth, "content-type": "application/json"},
    )
    assert response.status_code == 422
    assert "'model' must be a non-empty string" in response.json()["detail"]
    assert gw.upstream.sent == []


async def test_two_idempotency_keys_are_refused_before_the_provider(gw: Gw) -> None:
    # Which of the two a retry meant cannot be told.
    headers = [*gw.auth.items(), ("Idempotency-Key", "k1"), ("Idempotency-Key", "k2")]
    body = {"model": "fake/gpt-4o-mini", "messages": [{"role": "user", "content": "Q"}]}
    response = await gw.client.post("/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 422
    problem = response.json()
    assert problem["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert "2 Idempotency-Key headers; send one" in problem["detail"]
    assert gw.upstream.sent == []


async def test_two_authorization_headers_are_refused_on_every_gateway_route(gw: Gw) -> None:
    # docs/http-api.md: more than one Authorization header is a 400, whatever they
    # hold; taking the first would let whatever added it pick the tenant.
    key = gw.auth["Authorization"]
    bodies = {
        "/v1/chat/completions": {"model": "fake/m", "messages": [{"role": "user", "content": "Q"}]},
        "/v1/responses": {"model": "fake/m", "input": "Q"},
        "/v1/messages": {"model": "fake/m", "max_tokens": 8, "messages": []},
        "/v1beta/models/fake/m:generateContent": {"contents": []},
    }
    for path, body in bodies.items():
        for second in (key, "Bearer lls_other_0000"):
            headers = [("Authorization", key), ("Authorization", second)]
            response = await gw.client.post(path, json=body, headers=headers)
            assert response.status_code == 400, (path, response.text)
            assert response.json()["type"].endswith("ambiguous-credentials")
    assert gw.upstream.sent == []


async def test_a_model_no_session_could_record_is_refused_before_the_provider(gw: Gw) -> None:
    # The session records the model; one it would refuse must not be billed first.
    for model, says in [
        ("fake/gpt-4o-mini ", "must not start or end with white space"),
        ("fake/" + "m" * 201, "model must be at most 200 characters"),
        ("fake/a\u0007b", "must hold only printable characters"),
    ]:
        for stream in (False, True):
            response = await gw.chat("Q", model=model, stream=stream)
            assert response.status_code == 422, (model, response.text)
            assert says in response.json()["detail"]
            assert SID not in response.headers
    assert gw.upstream.sent == []


async def test_bodies_json_reads_but_no_provider_could_are_422_not_500(gw: Gw) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    lone = b'{"model": "fake/m", "messages": [{"role": "user", "content": "\\ud800"}], '
    lone += b'"input": "\\udfff x", "contents": [], "max_tokens": 8}'
    for path in (
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        "/v1beta/models/fake/m:generateContent",
    ):
        for body, says in [(deep, "nested too deeply"), (lone, "lone surrogate")]:
            headers = {**gw.auth, "content-type": "application/json"}
            response = await gw.client.post(path, content=body, headers=headers)
            assert response.status_code == 422, (path, response.text)
            assert says in response.json()["detail"], response.text
    # A whole surrogate pair is a character like any other.
    gw.upstream.answers.append(chat(1))
    paired = b'{"model": "fake/m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    response = await gw.client.post(
        "/v1/chat/completions",
        content=paired,
        headers={**gw.auth, "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert gw.upstream.bodies()[0]["messages"][-1]["content"] == "\U0001f600"


async def test_a_bare_model_with_a_slash_goes_to_the_only_provider(gw: Gw) -> None:
    gw.upstream.answers.append(chat(1))
    response = await gw.chat("Q", model="meta-llama/x")
    assert response.status_code == 200
    assert gw.upstream.bodies()[0]["model"] == "meta-llama/x"
    assert (await gw.session(response.headers[SID]))["model"] == "meta-llama/x"


async def test_without_providers_the_gateway_says_so(
    upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    app = make_gw(upstream, None, tmp_path)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            tenant = await client.post("/v1/admin/tenants", json={"tenant_id": "a"}, headers=ADMIN)
            response = await client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": []},
                headers=bearer(tenant.json()["api_key"]),
            )
    assert response.status_code == 501
    assert "no provider is configured" in response.json()["detail"]
    assert "--config" in response.json()["detail"]


async def test_a_retried_streamed_start_waits_for_the_first_stream_to_be_recorded(
    gw: Gw,
) -> None:
    stream = Scripted(chunks=[CHAT_STREAM], content_type="text/event-stream")
    gw.upstream.answers += [stream, stream]
    first, second = await asyncio.gather(
        gw.chat("Q1", key="s", stream=True), gw.chat("Q1", key="s", stream=True)
    )
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers[SID] == second.headers[SID]
    assert first.content == second.content
    assert len(gw.upstream.sent) == 1


async def test_concurrent_retries_of_a_start_call_the_provider_once(gw: Gw) -> None:
    gw.upstream.answers.append(chat(1))
    first, second = await asyncio.gather(gw.chat("Q1", key="s"), gw.chat("Q1", key="s"))
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.headers[SID] == second.headers[SID]
    assert first.content == second.content
    assert len(gw.upstream.sent) == 1
