"""A client that leaves mid-stream: the gateway reads the rest and records the round.

The client's response reads the provider itself (no task between them); these
tests take the client away at the two places it can go: its send fails (an
ASGI 2.4 server's OSError), or its task is cancelled while the provider is slow.
Either way a task of the gateway's must read the rest, record what the provider
billed, give the session's turn back, and be waited for when the server stops.
(test_gateway_e2e.py has a client that hangs up on a real server process.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from llmsession.clock import ManualClock
from llmsession.errors import StoreError
from llmsession.gateway import GatewayConfig
from llmsession.ids import SessionId, TenantId
from llmsession.server import ServerSettings, create_app
from llmsession.store.memory import MemoryStore
from tests.gateway.scripted import Scripted, ScriptedUpstream
from tests.gateway.test_forwarding import CHAT_STREAM, chat, cut_after_usage, provider
from tests.server.conftest import ADMIN, ADMIN_KEY, T0, bearer

SID = "LLMSession-Id"
#: The fixture's stream, in two chunks: the first is the answer's first event.
_FIRST = CHAT_STREAM.index(b"\n\n") + 2
CHUNKS = [CHAT_STREAM[:_FIRST], CHAT_STREAM[_FIRST:]]

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Server:
    """The app in-process, a tenant, and a way to call it as an ASGI server would."""

    def __init__(self, app: Any, client: httpx.AsyncClient, auth: dict[str, str]) -> None:
        self.app = app
        self.client = client
        self.auth = auth

    async def stream(self, send: Send, **fields: Any) -> None:
        """One streamed turn starting a session (its body with ``fields``), answered
        through ``send``."""
        body = json.dumps(
            {
                "model": "fake/m",
                "messages": [{"role": "user", "content": "Q1"}],
                "stream": True,
                **fields,
            }
        ).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"content-type", b"application/json"),
                (b"authorization", self.auth["Authorization"].encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, receive, send)

    async def recorded(self, session_id: str) -> dict[str, Any]:
        """The session, once its round is recorded."""
        for _ in range(200):
            found = await self.client.get(f"/v1/sessions/{session_id}", headers=self.auth)
            if found.status_code == 200:
                data: dict[str, Any] = found.json()
                return data
            await asyncio.sleep(0.01)
        raise AssertionError(f"session {session_id} was never recorded: {found.text}")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=ManualClock(T0))


@asynccontextmanager
async def serve(store: MemoryStore, upstream: ScriptedUpstream) -> AsyncIterator[Server]:
    app = create_app(
        ServerSettings(store_url="memory://", admin_key=ADMIN_KEY, sweep_interval_seconds=3600),
        store=store,
        clock=ManualClock(T0),
        gateway_config=GatewayConfig(providers={"fake": provider()}),
        upstream=upstream,
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
    ):
        tenant = await client.post("/v1/admin/tenants", json={"tenant_id": "acme"}, headers=ADMIN)
        yield Server(app, client, bearer(tenant.json()["api_key"]))


def session_of(start: dict[str, Any]) -> str:
    headers = {
        bytes(name).decode().lower(): bytes(value).decode() for name, value in start["headers"]
    }
    return headers[SID.lower()]


async def next_turn_sees_the_answer(server: Server, upstream: ScriptedUpstream, sid: str) -> None:
    """The turn was given back, and the answer read for the gone client is in the history."""
    upstream.answers.append(chat(2))
    body = {"model": "fake/m", "messages": [{"role": "user", "content": "Q2"}]}
    second = await asyncio.wait_for(
        server.client.post("/v1/chat/completions", json=body, headers={**server.auth, SID: sid}),
        5,
    )
    assert second.status_code == 200, second.text
    history = upstream.bodies()[1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[1]["content"]


async def test_a_client_whose_send_fails_mid_stream_still_gets_its_round_recorded(
    store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = ScriptedUpstream(Scripted(chunks=CHUNKS, content_type="text/event-stream"))
    async with serve(store, upstream) as server:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                raise OSError("the client is gone")
            sent.append(message)

        # The first event was read from the provider; sending it fails: the client's
        # response stops there, before the provider's stream ends.
        await server.stream(send)
        (start,) = sent
        session = await server.recorded(session_of(start))
        assert (session["initial_tokens"], session["delta_tokens"]) == (1300, 148)
        assert session["usage"]["output_tokens"] == 3
        await next_turn_sees_the_answer(server, upstream, session["session_id"])
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_client_cancelled_while_the_provider_is_slow_still_gets_its_round_recorded(
    store: MemoryStore,
) -> None:
    resume = asyncio.Event()
    upstream = ScriptedUpstream(
        Scripted(chunks=CHUNKS, content_type="text/event-stream", resume=resume)
    )
    async with serve(store, upstream) as server:
        sent: list[dict[str, Any]] = []
        first_event = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body":
                first_event.set()

        client = asyncio.create_task(server.stream(send))
        await asyncio.wait_for(first_event.wait(), 5)
        # The client's task now waits for the provider's next chunk: take it away.
        client.cancel()
        with pytest.raises(asyncio.CancelledError):
            await client
        sid = session_of(sent[0])
        await asyncio.sleep(0.02)
        missing = await server.client.get(f"/v1/sessions/{sid}", headers=server.auth)
        assert missing.status_code == 404
        resume.set()
        session = await server.recorded(sid)
        assert (session["initial_tokens"], session["delta_tokens"]) == (1300, 148)
        # What went to the client before it left is all it got: no [DONE].
        assert all(b"[DONE]" not in m.get("body", b"") for m in sent)
        await next_turn_sees_the_answer(server, upstream, sid)


async def test_the_server_stops_only_once_a_gone_clients_round_is_recorded(
    store: MemoryStore,
) -> None:
    resume = asyncio.Event()
    upstream = ScriptedUpstream(
        Scripted(chunks=CHUNKS, content_type="text/event-stream", resume=resume)
    )
    async with serve(store, upstream) as server:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                raise OSError("the client is gone")
            sent.append(message)

        await server.stream(send)
        sid = SessionId.parse(session_of(sent[0]))
        # The provider's rest comes only after the app has begun to stop.
        asyncio.get_running_loop().call_later(0.05, resume.set)
    # Leaving the app's lifespan closed the gateway, which waited for the round.
    assert resume.is_set()
    stored = await store.get(TenantId("acme"), sid)
    assert (stored.record.initial_tokens, stored.record.delta_tokens) == (1300, 148)


class FailingStore(MemoryStore):
    """A store whose writes fail as a database's do, with the driver's words."""

    async def start_with_turn(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreError(
            'PostgreSQL failed: deadlock detected\nCONTEXT: SQL statement "UPDATE '
            'session_counts SET ..." at host db.internal'
        )


async def test_a_stream_whose_round_cannot_be_stored_ends_in_an_error_that_hides_the_driver(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingStore(clock=ManualClock(T0))
    upstream = ScriptedUpstream(Scripted(chunks=CHUNKS, content_type="text/event-stream"))
    async with serve(store, upstream) as server:
        body = {"model": "fake/m", "messages": [{"role": "user", "content": "Q1"}], "stream": True}
        response = await server.client.post("/v1/chat/completions", json=body, headers=server.auth)
        missing = await server.client.get(
            f"/v1/sessions/{response.headers[SID]}", headers=server.auth
        )
    assert b"[DONE]" not in response.content
    last = response.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    error = json.loads(last.removeprefix(b"data: "))["error"]
    assert error["message"].startswith("the session store failed, so this answer was not")
    # Not a cut stream: the provider answered in full; the round could not be stored.
    assert error["code"] == "round_not_recorded"
    assert b"session_counts" not in response.content
    assert b"db.internal" not in response.content
    assert missing.status_code == 404
    # The operator finds the driver's words in the log.
    assert any("deadlock detected" in r.getMessage() for r in caplog.records)


async def test_the_events_of_one_chunk_go_in_one_message_and_the_last_with_the_end(
    store: MemoryStore,
) -> None:
    # One chunk holds the answer's first event, the next all the others: the client
    # gets them in one message each, the held-back [DONE] in the message that ends
    # the body, and the bytes are the provider's (the client asked for usage too).
    upstream = ScriptedUpstream(Scripted(chunks=CHUNKS, content_type="text/event-stream"))
    async with serve(store, upstream) as server:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await server.stream(send, stream_options={"include_usage": True})
        await server.recorded(session_of(sent[0]))
    bodies = [(m["body"], m["more_body"]) for m in sent[1:]]
    done = b"data: [DONE]\n\n"
    assert CHAT_STREAM.endswith(done)
    assert bodies == [
        (CHUNKS[0], True),
        (CHUNKS[1].removesuffix(done), True),
        (done, False),
    ]
    assert b"".join(body for body, _ in bodies) == CHAT_STREAM


class FailingTurnStore(MemoryStore):
    """A store that starts sessions but fails to record a later round, as a database
    lost mid-turn does."""

    async def record_turn(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreError("PostgreSQL failed: terminating connection at host db.internal")


async def test_a_cut_stream_whose_billed_round_cannot_be_stored_still_says_it_was_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The provider sent its usage, then cut the stream; recording that billed round
    # fails. The client learns both, in the cut's own error event: not a bare
    # "the gateway failed".
    store = FailingTurnStore(clock=ManualClock(T0))
    upstream = ScriptedUpstream(chat(1), cut_after_usage())
    async with serve(store, upstream) as server:
        body = {"model": "fake/m", "messages": [{"role": "user", "content": "Q1"}]}
        first = await server.client.post("/v1/chat/completions", json=body, headers=server.auth)
        sid = first.headers[SID]
        body = {"model": "fake/m", "messages": [{"role": "user", "content": "Q2"}], "stream": True}
        response = await server.client.post(
            "/v1/chat/completions", json=body, headers={**server.auth, SID: sid}
        )
        session = await server.client.get(f"/v1/sessions/{sid}", headers=server.auth)
    assert b"[DONE]" not in response.content
    last = response.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    error = json.loads(last.removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_stream_cut"
    assert error["message"].startswith("the provider's stream ended before the answer")
    assert "the session store failed, so what the provider billed" in error["message"]
    assert b"db.internal" not in response.content
    assert session.json()["round_count"] == 1
    assert any("db.internal" in r.getMessage() for r in caplog.records)
    assert not any(r.getMessage() == "gateway stream failed" for r in caplog.records)
