"""The fast path for gateway requests answers exactly as FastAPI's gateway routes do."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmsession.clock import ManualClock
from llmsession.gateway import GatewayConfig
from llmsession.gateway.config import ProviderConfig, SecretKey
from llmsession.gateway.transport import UpstreamRequest, UpstreamResponse
from llmsession.server import ServerSettings, create_app
from llmsession.server.fast_gateway import FastGateway
from llmsession.server.openapi import ServiceAPI
from llmsession.server.routes_gateway import GATEWAY_PATHS
from llmsession.server.routes_gemini import GEMINI_PREFIXES
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
    assert isinstance(app.front, FastGateway)
    gemini = [prefix + "{target:path}" for prefix in GEMINI_PREFIXES]
    assert sorted(app.front.endpoints()) == sorted([*GATEWAY_PATHS, *gemini])


GEMINI_FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
_FLASH = "/v1beta/models/g/gemini-2.5-flash"


async def _gemini_transcript(tmp_path: Path, *, fast: bool) -> list[Any]:
    """Gemini's routes, whose path holds the model and whose query string may hold
    ``alt=sse`` and the key: the same answers, upstream bodies and metrics either way."""
    settings = ServerSettings(
        store_url=f"sqlite:///{tmp_path / f'gemini-{fast}.db'}",
        admin_key=ADMIN_KEY,
        sweep_interval_seconds=3600,
    )
    gemini = ProviderConfig("g", "gemini", "http://g", "K", SecretKey("secret"))
    config = GatewayConfig(providers={"g": gemini}, history_limit_bytes=100_000)
    # Below the model's cache minimum, so that every answer is one upstream call.
    answer = (GEMINI_FIXTURES / "generate_response.json").read_bytes()
    answer = answer.replace(b'"promptTokenCount": 2065', b'"promptTokenCount": 17')
    answer = answer.replace(b'"cachedContentTokenCount": 2048', b'"cachedContentTokenCount": 0')
    stream = (GEMINI_FIXTURES / "stream.sse").read_bytes()
    upstream = ScriptedUpstream(
        Scripted(body=answer),
        Scripted(chunks=[stream[:90], stream[90:]], content_type="text/event-stream"),
        Scripted(body=answer),
        Scripted(status=400, body=b'{"error": {"code": 400, "message": "bad"}}'),
    )
    app = create_app(
        settings, clock=ManualClock(T0), fast_rounds=fast, gateway_config=config, upstream=upstream
    )
    transcript: list[Any] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client,
    ):
        tenant = await client.post("/v1/admin/tenants", json={"tenant_id": "a"}, headers=ADMIN)
        key = tenant.json()["api_key"]
        auth = {"x-goog-api-key": key}
        body = b'{"contents": [{"role": "user", "parts": [{"text": "Q1"}]}]}'
        first = await client.post(f"{_FLASH}:generateContent", content=body, headers=auth)
        session = first.headers[SID]
        requests: list[tuple[str, dict[str, str], bytes]] = [
            (f"{_FLASH}:streamGenerateContent?alt=sse", {**auth, SID: session}, body),
            (f"/v1/models/g/gemini-2.5-flash:generateContent?key={key}", {SID: session}, body),
            (f"{_FLASH}:generateContent", auth, body),
            (f"{_FLASH}:streamGenerateContent", {**auth, SID: session}, body),
            (f"{_FLASH}:generateContent", {**auth, SID: MISSING}, body),
            (f"{_FLASH}:generateContent?key={key}", auth, body),
            (f"{_FLASH}:generateContent", auth, b"{"),
            (f"{_FLASH}:generateContent", auth, b"x" * 200_000),
            (f"{_FLASH}:generateContent", {}, body),
            ("/v1beta/models/", auth, body),
        ]
        for path, headers, content in requests:
            response = await client.post(path, content=content, headers=headers)
            text = response.text.replace(session, "SESSION")
            transcript.append(
                (
                    response.status_code,
                    response.headers.get("content-type"),
                    response.headers.get(SID) == session,
                    text,
                )
            )
        transcript.append([json.loads(sent.body) for sent in upstream.sent])
        transcript.append(
            sorted(
                (labels, count)
                for labels, count in _request_counts((await client.get("/metrics")).text).items()
                if labels[0] != "/metrics"
            )
        )
    return transcript


async def test_both_paths_answer_gemini_alike(tmp_path: Path) -> None:
    fast = await _gemini_transcript(tmp_path, fast=True)
    routed = await _gemini_transcript(tmp_path, fast=False)
    assert [entry[0] for entry in fast[:-2]] == [200, 200, 400, 422, 404, 400, 422, 413, 401, 422]
    assert fast[0][1] == "text/event-stream"
    counts, routed_counts = dict(fast.pop()), dict(routed.pop())
    assert counts[("/v1beta/models/{target:path}", "POST", "200")] == 2
    assert counts[("/v1/models/{target:path}", "POST", "200")] == 1
    # The one difference (docs/http-api.md): the fast path knows the route of a body
    # too large, which FastAPI's body-limit middleware refuses before routing.
    assert counts.pop(("/v1beta/models/{target:path}", "POST", "413")) == 1
    assert routed_counts.pop(("unmatched", "POST", "413")) == 1
    assert counts == routed_counts
    for fast_entry, routed_entry in zip(fast, routed, strict=True):
        assert fast_entry == routed_entry


class _Broken(ScriptedUpstream):
    """An upstream failing in a way nothing expects: a bug, not a provider error."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        raise RuntimeError("a bug")


@asynccontextmanager
async def _serving(
    tmp_path: Path, *, fast: bool, upstream: ScriptedUpstream
) -> AsyncIterator[tuple[ServiceAPI, httpx.AsyncClient, dict[str, str]]]:
    settings = ServerSettings(
        store_url=f"sqlite:///{tmp_path / f'serving-{fast}.db'}",
        admin_key=ADMIN_KEY,
        sweep_interval_seconds=3600,
    )
    config = GatewayConfig(providers={"fake": provider()}, history_limit_bytes=100_000)
    app = create_app(
        settings, clock=ManualClock(T0), fast_rounds=fast, gateway_config=config, upstream=upstream
    )
    # FastAPI's stack raises an unexpected error on to the server once it has answered
    # (the fast path does not, for errors before the answer): the client sees the answer.
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        tenant = await client.post("/v1/admin/tenants", json={"tenant_id": "a"}, headers=ADMIN)
        yield app, client, bearer(tenant.json()["api_key"])


_CHAT = b'{"model": "fake/m", "messages": [{"role": "user", "content": "Q"}]}'


def _request_counts(text: str) -> dict[tuple[str, str, str], float]:
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "llmsession_http_request_duration_seconds_count":
                labels = sample.labels
                counts[(labels["route"], labels["method"], labels["status"])] = sample.value
    return counts


async def test_fast_path_requests_are_counted_by_route_and_status(tmp_path: Path) -> None:
    async with _serving(tmp_path, fast=True, upstream=ScriptedUpstream(chat(1), chat(2))) as (
        _,
        client,
        auth,
    ):
        assert (await client.post("/v1/chat/completions", content=_CHAT, headers=auth)).is_success
        assert (
            await client.post("/v1/chat/completions", content=_CHAT, headers={})
        ).status_code == 401
        too_large = await client.post("/v1/messages", content=b"x" * 200_000, headers=auth)
        assert too_large.status_code == 413
        # A query string sends the request through FastAPI's router: counted as well.
        routed = await client.post(
            "/v1/chat/completions", content=_CHAT, headers=auth, params={"x": "1"}
        )
        assert routed.is_success
        counts = _request_counts((await client.get("/metrics")).text)
    assert counts[("/v1/chat/completions", "POST", "200")] == 2
    assert counts[("/v1/chat/completions", "POST", "401")] == 1
    assert counts[("/v1/messages", "POST", "413")] == 1


@pytest.mark.parametrize("fast", [True, False])
async def test_an_unexpected_error_is_a_logged_500_problem(
    tmp_path: Path, fast: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async with _serving(tmp_path, fast=fast, upstream=_Broken()) as (_, client, auth):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="llmsession.server"):
            response = await client.post("/v1/chat/completions", content=_CHAT, headers=auth)
        counts = _request_counts((await client.get("/metrics")).text)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:llmsession:problem:internal"
    logged = [r for r in caplog.records if r.getMessage().startswith("unhandled error on POST")]
    assert len(logged) == 1
    assert logged[0].getMessage() == "unhandled error on POST /v1/chat/completions"
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], RuntimeError)
    assert counts[("/v1/chat/completions", "POST", "500")] == 1


@pytest.mark.parametrize("fast", [True, False])
async def test_an_error_while_answering_is_logged_and_raised_on(
    tmp_path: Path, fast: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """As Starlette's ServerErrorMiddleware does: logged, then raised to the server (which
    closes the connection), the answer's status counted."""
    async with _serving(tmp_path, fast=fast, upstream=ScriptedUpstream(chat(1))) as (
        app,
        client,
        auth,
    ):
        headers = [(b"host", b"t"), *[(k.lower().encode(), v.encode()) for k, v in auth.items()]]
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        sent: list[str] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": _CHAT, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message["type"])
            if message["type"] == "http.response.body":
                raise RuntimeError("the server broke")

        caplog.clear()
        with (
            caplog.at_level(logging.ERROR, logger="llmsession.server"),
            pytest.raises(RuntimeError, match="the server broke"),
        ):
            await app(scope, receive, send)
        counts = _request_counts((await client.get("/metrics")).text)
    # No second answer after the first one started.
    assert sent == ["http.response.start", "http.response.body"]
    logged = [r for r in caplog.records if r.getMessage().startswith("unhandled error on POST")]
    assert [r.getMessage() for r in logged] == ["unhandled error on POST /v1/chat/completions"]
    assert counts[("/v1/chat/completions", "POST", "200")] == 1
