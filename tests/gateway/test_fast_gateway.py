"""The fast path for gateway requests answers exactly as FastAPI's gateway routes do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from llmsession.clock import ManualClock
from llmsession.gateway import GatewayConfig
from llmsession.server import ServerSettings, create_app
from llmsession.server.fast_gateway import FastGateway
from llmsession.server.routes_gateway import GATEWAY_PATHS
from tests.gateway.scripted import Scripted, ScriptedUpstream
from tests.gateway.test_forwarding import CHAT_STREAM, RESPONSES_BODY, chat, provider
from tests.server.conftest import ADMIN, ADMIN_KEY, T0, bearer

SID = "LLMSession-Id"
MISSING = "019abc12-3456-7def-8123-456789abcdef"


def _upstream() -> ScriptedUpstream:
    return ScriptedUpstream(
        chat(1),
        chat(2),
        Scripted(chunks=[CHAT_STREAM[:100], CHAT_STREAM[100:]], content_type="text/event-stream"),
        Scripted(status=400, body=b'{"error":{"message":"bad"}}'),
        Scripted(status=503, body=b"down"),
        Scripted(body=RESPONSES_BODY),
    )


async def _transcript(tmp_path: Path, *, fast: bool) -> list[Any]:
    settings = ServerSettings(
        store_url=f"sqlite:///{tmp_path / f'fast-{fast}.db'}",
        admin_key=ADMIN_KEY,
        sweep_interval_seconds=3600,
    )
    config = GatewayConfig(providers={"fake": provider()}, history_limit_bytes=100_000)
    upstream = _upstream()
    app = create_app(
        settings,
        clock=ManualClock(T0),
        fast_rounds=fast,
        gateway_config=config,
        upstream=upstream,
    )
    transcript: list[Any] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
    ):
        tenant = await client.post("/v1/admin/tenants", json={"tenant_id": "a"}, headers=ADMIN)
        auth = bearer(tenant.json()["api_key"])

        def chat_body(content: str, **fields: Any) -> bytes:
            messages = [{"role": "user", "content": content}]
            return json.dumps({"model": "fake/m", "messages": messages, **fields}).encode()

        first = await client.post("/v1/chat/completions", content=chat_body("Q1"), headers=auth)
        session = first.headers[SID]
        requests: list[tuple[str, dict[str, str], bytes]] = [
            ("/v1/chat/completions", {**auth, SID: session}, chat_body("Q2")),
            ("/v1/chat/completions", {**auth, SID: session}, chat_body("Q3", stream=True)),
            ("/v1/chat/completions", {**auth, SID: session}, chat_body("Q4")),
            ("/v1/chat/completions", auth, chat_body("Q5")),
            ("/v1/responses", auth, b'{"model": "fake/m", "input": "hi"}'),
            ("/v1/chat/completions", {**auth, SID: MISSING}, chat_body("Q6")),
            ("/v1/chat/completions", {**auth, SID: "not-an-id"}, chat_body("Q7")),
            ("/v1/chat/completions", {**auth, "Idempotency-Key": ""}, chat_body("Q8")),
            ("/v1/chat/completions", auth, b'{"model": 3}'),
            ("/v1/chat/completions", auth, b"{"),
            ("/v1/chat/completions", auth, b"x" * 200_000),
            ("/v1/chat/completions", {}, chat_body("Q9")),
            ("/v1/chat/completions", ADMIN, chat_body("Q10")),
        ]
        for path, headers, body in requests:
            response = await client.post(path, content=body, headers=headers)
            text = response.text.replace(session, "SESSION")
            transcript.append(
                (
                    response.status_code,
                    response.headers.get("content-type"),
                    response.headers.get(SID) == session,
                    response.headers.get("www-authenticate"),
                    text,
                )
            )
        # What went upstream, but the session ids (fresh in each run).
        transcript.append([{**body, "prompt_cache_key": 0} for body in upstream.bodies()])
    return transcript


async def test_both_paths_answer_alike(tmp_path: Path) -> None:
    fast = await _transcript(tmp_path, fast=True)
    routed = await _transcript(tmp_path, fast=False)
    assert [entry[0] for entry in fast[:-1]] == [
        200, 200, 400, 502, 200, 404, 422, 422, 422, 422, 413, 401, 403,
    ]  # fmt: skip
    for fast_entry, routed_entry in zip(fast, routed, strict=True):
        assert fast_entry == routed_entry


def test_the_fast_path_serves_every_gateway_path(tmp_path: Path) -> None:
    settings = ServerSettings(store_url=f"sqlite:///{tmp_path / 'x.db'}", admin_key=ADMIN_KEY)
    app = create_app(settings)
    fast = FastGateway(app.router, routes=app)
    assert sorted(fast.endpoints()) == sorted(GATEWAY_PATHS)
