"""No route lets one tenant read, count or change another tenant's sessions.

The test walks app.routes: a route it does not know fails it, so a new route
cannot be added without saying how it keeps tenants apart.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import Route
from tests.server.conftest import ADMIN, T0, Api
from tests.server.ui_client import csrf_of, sign_in, ui_client

Probe = Callable[[Api, dict[str, str], str], Awaitable[None]]

# Routes that serve no tenant data: the API description and its viewers.
DOCS_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _same_as_missing(foreign: Any, missing: Any, foreign_id: str, missing_id: str) -> None:
    """A foreign id gets exactly the answer a missing id gets."""
    assert foreign.status_code == 404, foreign.text
    assert missing.status_code == 404, missing.text
    assert foreign.headers.get("content-type") == missing.headers.get("content-type")
    assert foreign.text.replace(foreign_id, "ID") == missing.text.replace(missing_id, "ID")


def _by_id(method: str, suffix: str, body: dict[str, Any] | None = None) -> Probe:
    async def probe(api: Api, intruder: dict[str, str], victim_id: str) -> None:
        missing_id = str(uuid.uuid4())
        foreign = await api.client.request(
            method, f"/v1/sessions/{victim_id}{suffix}", json=body, headers=intruder
        )
        missing = await api.client.request(
            method, f"/v1/sessions/{missing_id}{suffix}", json=body, headers=intruder
        )
        _same_as_missing(foreign, missing, victim_id, missing_id)

    return probe


async def _list_sessions(api: Api, intruder: dict[str, str], victim_id: str) -> None:
    for params in ({}, {"state": "active"}, {"provider_id": "openai"}, {"limit": 1000}):
        response = await api.client.get("/v1/sessions", params=params, headers=intruder)
        assert response.status_code == 200
        assert victim_id not in response.text
        assert all(s["tenant_id"] == "intruder" for s in response.json()["items"])


async def _create_session(api: Api, intruder: dict[str, str], victim_id: str) -> None:
    # The tenant comes from the key: a tenant_id in the body is refused, not obeyed.
    response = await api.client.post(
        "/v1/sessions",
        json={"provider_id": "openai", "model": "m", "initial_tokens": 1, "tenant_id": "victim"},
        headers=intruder,
    )
    assert response.status_code == 422
    created = await api.client.post(
        "/v1/sessions",
        json={"provider_id": "openai", "model": "m", "initial_tokens": 1},
        headers=intruder,
    )
    assert created.status_code == 201
    assert created.json()["tenant_id"] == "intruder"


async def _stats(api: Api, intruder: dict[str, str], victim_id: str) -> None:
    for params in ([], [("group_by", "provider"), ("group_by", "model")]):
        response = await api.client.get("/v1/stats", params=params, headers=intruder)
        assert response.status_code == 200
        groups = response.json()["groups"]
        # The intruder's own sessions only: rounds and tokens of the victim's are not counted.
        assert sum(g["rounds"] for g in groups) == 0
        assert sum(g["delta_tokens"] for g in groups) == 0
        assert "victim-model" not in response.text


def _admin_only(method: str, path: str) -> Probe:
    async def probe(api: Api, intruder: dict[str, str], victim_id: str) -> None:
        concrete = path.replace("{tenant_id}", "victim").replace("{key_id}", _key_id(api))
        body = {"tenant_id": "victim2"} if path == "/v1/admin/tenants" else None
        response = await api.client.request(method, concrete, json=body, headers=intruder)
        assert response.status_code == 403, response.text
        assert "victim" not in response.text.replace(concrete, "")

    return probe


def _key_id(api: Api) -> str:
    return api.keys["victim"].split("_")[1]


async def _public(api: Api, intruder: dict[str, str], victim_id: str) -> None:
    """Operations routes need no key and say nothing about any one session."""
    for path in ("/healthz", "/readyz"):
        response = await api.client.get(path, headers=intruder)
        assert response.status_code == 200
        assert victim_id not in response.text


async def _metrics(api: Api, intruder: dict[str, str], victim_id: str) -> None:
    # Metrics are for operators (tenant totals, never a session id or a key).
    response = await api.client.get("/metrics", headers=intruder)
    assert response.status_code == 200
    assert victim_id not in response.text
    assert api.keys["victim"] not in response.text


def _gateway(path: str, body: dict[str, Any]) -> Probe:
    """A gateway request naming another tenant's session is answered as for a missing one.

    (This app has no provider configured; tests/gateway/test_forwarding.py runs the
    same check with one, and shows the provider is never called.)"""

    async def probe(api: Api, intruder: dict[str, str], victim_id: str) -> None:
        missing_id = str(uuid.uuid4())
        foreign = await api.client.post(
            path, json=body, headers={**intruder, "LLMSession-Id": victim_id}
        )
        missing = await api.client.post(
            path, json=body, headers={**intruder, "LLMSession-Id": missing_id}
        )
        assert foreign.status_code == missing.status_code
        assert foreign.text.replace(victim_id, "ID") == missing.text.replace(missing_id, "ID")
        assert victim_id not in foreign.text

    return probe


def _ui_by_id(method: str, suffix: str) -> Probe:
    """A dashboard page or form naming another tenant's session: as for a missing one."""

    async def probe(api: Api, intruder: dict[str, str], victim_id: str) -> None:
        async with ui_client(api.app) as client:
            csrf = await sign_in(client, api.keys["intruder"])
            data = {"csrf_token": csrf} if method == "POST" else None
            missing_id = str(uuid.uuid4())
            foreign = await client.request(method, f"/ui/sessions/{victim_id}{suffix}", data=data)
            missing = await client.request(method, f"/ui/sessions/{missing_id}{suffix}", data=data)
            _same_as_missing(foreign, missing, victim_id, missing_id)
            # Naming the victim's tenant does not widen the view either.
            named = await client.request(
                method, f"/ui/sessions/{victim_id}{suffix}?tenant=victim", data=data
            )
            assert named.status_code == 404, named.text
            assert "victim-model" not in named.text

    return probe


def _ui_tenant_page(path: str) -> Probe:
    """A tenant's dashboard page shows its own sessions and totals; the victim's are 404."""

    async def probe(api: Api, intruder: dict[str, str], victim_id: str) -> None:
        async with ui_client(api.app) as client:
            await sign_in(client, api.keys["intruder"])
            own = await client.get(path)
            assert own.status_code == 200, own.text
            assert victim_id not in own.text
            assert "victim-model" not in own.text
            named = await client.get(path, params={"tenant": "victim"})
            assert named.status_code == 404, named.text
            assert "victim-model" not in named.text

    return probe


def _ui_admin_only(method: str, path: str) -> Probe:
    async def probe(api: Api, intruder: dict[str, str], victim_id: str) -> None:
        concrete = path.replace("{tenant_id}", "victim").replace("{key_id}", _key_id(api))
        async with ui_client(api.app) as client:
            csrf = await sign_in(client, api.keys["intruder"])
            data = {"csrf_token": csrf, "tenant_id": "victim2"} if method == "POST" else None
            response = await client.request(method, concrete, data=data)
            assert response.status_code == 403, response.text
            assert "victim" not in response.text.replace(concrete, "")

    return probe


async def _ui_public(api: Api, intruder: dict[str, str], victim_id: str) -> None:
    """The sign-in page, sign-out and the static files serve no tenant's data."""
    async with ui_client(api.app) as client:
        page = await client.get("/ui/sign-in")
        assert page.status_code == 200
        assert "victim" not in page.text
        # Signing in with the intruder's key signs in as the intruder, whatever the form adds.
        signed = await client.post(
            "/ui/sign-in",
            data={
                "csrf_token": csrf_of(page.text),
                "api_key": api.keys["intruder"],
                "tenant": "victim",
            },
        )
        assert signed.status_code == 303
        overview = await client.get("/ui")
        assert "tenant <strong>intruder</strong>" in overview.text
        assert victim_id not in overview.text
        out = await client.post("/ui/sign-out", data={"csrf_token": csrf_of(overview.text)})
        assert out.status_code == 303
        script = await client.get("/ui/static/dashboard.js")
        assert script.status_code == 200
        assert victim_id not in script.text


async def _timeseries(api: Api, intruder: dict[str, str], victim_id: str) -> None:
    for group_by in ([], [("group_by", "provider,model")]):
        params = [
            ("bucket", "hour"),
            ("start", T0.plus_seconds(-3600).isoformat()),
            ("end", T0.plus_seconds(3600).isoformat()),
            *group_by,
        ]
        response = await api.client.get("/v1/stats/timeseries", params=params, headers=intruder)
        assert response.status_code == 200, response.text
        # The intruder's own sessions only: the victim's rounds and starts are not counted.
        assert response.json()["buckets"] == []
        assert "victim-model" not in response.text


PROBES: dict[tuple[str, str], Probe] = {
    ("POST", "/v1/chat/completions"): _gateway(
        "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    ),
    ("POST", "/v1/responses"): _gateway("/v1/responses", {"model": "m", "input": "x"}),
    ("POST", "/v1/messages"): _gateway(
        "/v1/messages",
        {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]},
    ),
    **{
        ("POST", f"{prefix}{{target:path}}"): _gateway(
            f"{prefix}m:generateContent", {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
        )
        for prefix in ("/v1/models/", "/v1beta/models/")
    },
    ("POST", "/v1/sessions"): _create_session,
    ("GET", "/v1/sessions"): _list_sessions,
    ("GET", "/v1/sessions/{session_id}"): _by_id("GET", ""),
    ("POST", "/v1/sessions/{session_id}/activate"): _by_id("POST", "/activate"),
    ("POST", "/v1/sessions/{session_id}/rounds"): _by_id("POST", "/rounds", {"delta_tokens": 5}),
    ("GET", "/v1/sessions/{session_id}/rounds"): _by_id("GET", "/rounds"),
    ("POST", "/v1/sessions/{session_id}/close"): _by_id("POST", "/close"),
    ("GET", "/v1/stats"): _stats,
    ("GET", "/v1/stats/timeseries"): _timeseries,
    ("POST", "/v1/admin/tenants"): _admin_only("POST", "/v1/admin/tenants"),
    ("GET", "/v1/admin/tenants"): _admin_only("GET", "/v1/admin/tenants"),
    ("POST", "/v1/admin/tenants/{tenant_id}/keys"): _admin_only(
        "POST", "/v1/admin/tenants/{tenant_id}/keys"
    ),
    ("GET", "/v1/admin/tenants/{tenant_id}/keys"): _admin_only(
        "GET", "/v1/admin/tenants/{tenant_id}/keys"
    ),
    ("POST", "/v1/admin/keys/{key_id}/revoke"): _admin_only(
        "POST", "/v1/admin/keys/{key_id}/revoke"
    ),
    ("GET", "/healthz"): _public,
    ("GET", "/readyz"): _public,
    ("GET", "/metrics"): _metrics,
    ("GET", "/ui"): _ui_tenant_page("/ui"),
    ("GET", "/ui/sessions"): _ui_tenant_page("/ui/sessions"),
    ("GET", "/ui/sessions/{session_id}"): _ui_by_id("GET", ""),
    ("GET", "/ui/sessions/{session_id}/close"): _ui_by_id("GET", "/close"),
    ("POST", "/ui/sessions/{session_id}/close"): _ui_by_id("POST", "/close"),
    ("GET", "/ui/tenants"): _ui_admin_only("GET", "/ui/tenants"),
    ("POST", "/ui/tenants"): _ui_admin_only("POST", "/ui/tenants"),
    ("GET", "/ui/tenants/{tenant_id}"): _ui_admin_only("GET", "/ui/tenants/{tenant_id}"),
    ("POST", "/ui/tenants/{tenant_id}/keys"): _ui_admin_only(
        "POST", "/ui/tenants/{tenant_id}/keys"
    ),
    ("POST", "/ui/keys/{key_id}/revoke"): _ui_admin_only("POST", "/ui/keys/{key_id}/revoke"),
    ("GET", "/ui/sign-in"): _ui_public,
    ("POST", "/ui/sign-in"): _ui_public,
    ("POST", "/ui/sign-out"): _ui_public,
    ("GET", "/ui/static/{path:path}"): _ui_public,
}


def _served_routes(api: Api) -> set[tuple[str, str]]:
    """Every (method, path) the app serves, included routers flattened."""
    served: set[tuple[str, str]] = set()
    for context in iter_route_contexts(api.app.routes):
        route = context.original_route
        if isinstance(route, APIRoute):
            assert context.path is not None
            served |= {(method, context.path) for method in context.methods or ()}
        elif isinstance(route, Route) and route.path in DOCS_PATHS:
            continue
        else:
            raise AssertionError(f"unexpected route {route!r}: classify it in this test")
    return served


async def test_every_route_keeps_tenants_apart(api: Api) -> None:
    served = _served_routes(api)
    unclassified = served - PROBES.keys()
    assert not unclassified, f"routes without an isolation probe: {sorted(unclassified)}"
    assert not PROBES.keys() - served, "probes for routes that no longer exist"

    victim = await api.tenant("victim")
    intruder = await api.tenant("intruder")
    active = await api.session(victim, model="victim-model")
    for delta in (3, 4):
        await api.client.post(
            f"/v1/sessions/{active}/rounds", json={"delta_tokens": delta}, headers=victim
        )
    created = await api.session(victim, activate=False, model="victim-model")

    async def snapshot() -> list[Any]:
        listed = await api.client.get("/v1/sessions", headers=victim)
        rounds = await api.client.get(f"/v1/sessions/{active}/rounds", headers=victim)
        stats = await api.client.get("/v1/stats", headers=victim)
        keys = await api.client.get("/v1/admin/tenants/victim/keys", headers=ADMIN)
        return [listed.json(), rounds.json(), stats.json(), keys.json()]

    before = await snapshot()
    for (method, path), probe in sorted(PROBES.items()):
        for victim_id in (active, created):
            await probe(api, intruder, victim_id)
        assert await snapshot() == before, f"{method} {path} changed the victim's data"
