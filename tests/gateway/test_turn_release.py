"""A body's answer goes while its session's turn is given back; the next turn still waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

import httpx

from llmsession.clock import ManualClock
from llmsession.gateway import GatewayConfig
from llmsession.ids import SessionId, TenantId
from llmsession.server import ServerSettings, create_app
from llmsession.store.memory import MemoryStore
from llmsession.store.models import StoredSession, Turn
from tests.gateway.scripted import ScriptedUpstream
from tests.gateway.test_forwarding import chat, provider
from tests.server.conftest import ADMIN, ADMIN_KEY, T0, bearer

SID = "LLMSession-Id"


class SlowRelease(MemoryStore):
    """A store whose turns are given back only once ``release`` is set."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.release = asyncio.Event()
        self.released = 0

    @asynccontextmanager
    async def _locked_turns(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AsyncGenerator[tuple[StoredSession, list[Turn]]]:
        async with super()._locked_turns(tenant_id, session_id) as read:
            try:
                yield read
            finally:
                await self.release.wait()
                self.released += 1


async def test_the_answer_does_not_wait_for_the_turn_but_the_next_turn_does() -> None:
    clock = ManualClock(T0)
    store = SlowRelease(clock)
    upstream = ScriptedUpstream(chat(1), chat(2), chat(3))
    app = create_app(
        ServerSettings(store_url="memory://", admin_key=ADMIN_KEY, sweep_interval_seconds=3600),
        store=store,
        clock=clock,
        gateway_config=GatewayConfig(providers={"fake": provider()}),
        upstream=upstream,
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
    ):
        tenant = await client.post("/v1/admin/tenants", json={"tenant_id": "a"}, headers=ADMIN)
        auth = bearer(tenant.json()["api_key"])

        async def ask(content: str, session: str | None = None) -> httpx.Response:
            headers = auth if session is None else {**auth, SID: session}
            body = {"model": "fake/m", "messages": [{"role": "user", "content": content}]}
            return await client.post("/v1/chat/completions", json=body, headers=headers)

        first = await ask("Q1")
        session = first.headers[SID]
        # The second turn's answer comes while its turn is still held.
        second = await asyncio.wait_for(ask("Q2", session), 5)
        assert second.status_code == 200
        assert store.released == 0
        # The third waits for that turn to be given back, then sees its round.
        third = asyncio.create_task(ask("Q3", session))
        await asyncio.sleep(0.05)
        assert not third.done()
        assert len(upstream.sent) == 2
        store.release.set()
        assert (await asyncio.wait_for(third, 5)).status_code == 200
        history = upstream.bodies()[2]["messages"]
        assert [m["content"] for m in history] == ["Q1", "A1", "Q2", "A2", "Q3"]
    assert store.released == 2
