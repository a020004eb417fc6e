"""Provider routes the gateway does not serve: token counting is a clear 404, never sent on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from llmsession.gateway import GatewayConfig
from llmsession.gateway.config import ProviderConfig, SecretKey
from tests.gateway.scripted import ScriptedUpstream
from tests.gateway.test_forwarding import make_gw
from tests.server.conftest import ADMIN

_NOT_SERVED = "call the provider directly, with a key of your own"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str, ScriptedUpstream]]:
    upstream = ScriptedUpstream()
    providers = {
        "claude": ProviderConfig(
            "claude", "anthropic", "http://upstream.test", "KEY", SecretKey("sk-up")
        ),
        "gem": ProviderConfig("gem", "gemini", "http://upstream.test", "KEY", SecretKey("sk-up")),
    }
    app = make_gw(upstream, GatewayConfig(providers=providers), tmp_path)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            tenant = await http.post("/v1/admin/tenants", json={"tenant_id": "a"}, headers=ADMIN)
            yield http, tenant.json()["api_key"], upstream


async def test_anthropic_count_tokens_is_a_404_saying_it_is_not_served(
    client: tuple[httpx.AsyncClient, str, ScriptedUpstream],
) -> None:
    http, key, upstream = client
    # Where the anthropic SDK's messages.count_tokens posts; a 404 it does not retry.
    response = await http.post(
        "/v1/messages/count_tokens",
        json={"model": "claude/claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 404, response.text
    detail = response.json()["detail"]
    assert detail.startswith("llmsession does not serve Anthropic's token counting")
    assert _NOT_SERVED in detail
    assert upstream.sent == []


@pytest.mark.parametrize("version", ["v1beta", "v1"])
async def test_gemini_count_tokens_is_a_404_saying_it_is_not_served(
    client: tuple[httpx.AsyncClient, str, ScriptedUpstream], version: str
) -> None:
    http, key, upstream = client
    response = await http.post(
        f"/{version}/models/gem/gemini-2.5-flash:countTokens",
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        headers={"x-goog-api-key": key},
    )
    assert response.status_code == 404, response.text
    detail = response.json()["detail"]
    assert detail.startswith("llmsession does not serve Gemini's token counting")
    assert _NOT_SERVED in detail
    assert upstream.sent == []
