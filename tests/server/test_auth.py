"""Authentication: tenant keys, the admin key, revocation and the short key cache."""

from __future__ import annotations

import httpx
import pytest
from tests.server.conftest import ADMIN, ADMIN_KEY, NEW_SESSION, Api, bearer

from llmsession.errors import AuthenticationError
from llmsession.ids import TenantId
from llmsession.keys import issue_key
from llmsession.server import ServerSettings, create_app
from llmsession.server.key_cache import KeyCache
from llmsession.store import open_store


def _unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == "urn:llmsession:problem:unauthorized"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer lls_0123456789abcdef_nope"},
        {"Authorization": "Bearer not-a-key-at-all"},
        {"Authorization": "Bearer lls__"},
        {"Authorization": "Bearer " + "x" * 5000},
        {"Authorization": "Bearer caf\u00e9"},
    ],
    ids=lambda h: repr(h.get("Authorization", "none"))[:24],
)
async def test_missing_or_unknown_keys_get_401_everywhere(
    api: Api, headers: dict[str, str]
) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    # Headers go out as bytes: a header may carry any latin-1 byte, not only ASCII.
    encoded = {name: value.encode("latin-1") for name, value in headers.items()}
    for method, path, body in [
        ("POST", "/v1/sessions", NEW_SESSION),
        ("GET", "/v1/sessions", None),
        ("GET", f"/v1/sessions/{session_id}", None),
        ("POST", f"/v1/sessions/{session_id}/rounds", {"delta_tokens": 1}),
        ("POST", f"/v1/sessions/{session_id}/activate", None),
        ("GET", "/v1/stats", None),
        ("GET", "/v1/stats/timeseries?bucket=day&start=2026-01-01Z&end=2026-01-02Z", None),
        ("GET", "/v1/admin/tenants", None),
        ("POST", "/v1/admin/tenants", {"tenant_id": "intruder"}),
    ]:
        response = await api.client.request(method, path, json=body, headers=encoded)
        _unauthorized(response)
    # Nothing was changed by the refused calls.
    session = (await api.client.get(f"/v1/sessions/{session_id}", headers=auth)).json()
    assert session["round_count"] == 0
    tenants = (await api.client.get("/v1/admin/tenants", headers=ADMIN)).json()["items"]
    assert [t["tenant_id"] for t in tenants] == ["acme"]


async def test_401_comes_before_validation(api: Api) -> None:
    response = await api.client.post("/v1/sessions/not-an-id/rounds", json={"delta_tokens": -1})
    _unauthorized(response)
    response = await api.client.get("/v1/sessions", params={"limit": 0})
    _unauthorized(response)


async def test_the_scheme_is_case_insensitive(api: Api) -> None:
    await api.tenant("acme")
    key = api.keys["acme"]
    for scheme in ("bearer", "BEARER", "Bearer"):
        response = await api.client.get(
            "/v1/sessions", headers={"Authorization": f"{scheme} {key}"}
        )
        assert response.status_code == 200, response.text


async def test_a_revoked_key_gets_401_at_once(api: Api) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    key_id = api.keys["acme"].split("_")[1]
    revoked = await api.client.post(f"/v1/admin/keys/{key_id}/revoke", headers=ADMIN)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    _unauthorized(
        await api.client.post(
            f"/v1/sessions/{session_id}/rounds", json={"delta_tokens": 1}, headers=auth
        )
    )
    _unauthorized(await api.client.get("/v1/sessions", headers=auth))
    # Revoking twice keeps the first time.
    again = await api.client.post(f"/v1/admin/keys/{key_id}/revoke", headers=ADMIN)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    # Another key of the same tenant still works.
    issued = await api.client.post("/v1/admin/tenants/acme/keys", headers=ADMIN)
    assert issued.status_code == 201
    fresh = bearer(issued.json()["api_key"])
    assert (await api.client.get(f"/v1/sessions/{session_id}", headers=fresh)).status_code == 200


async def test_keys_are_listed_without_secrets(api: Api) -> None:
    await api.tenant("acme")
    await api.client.post("/v1/admin/tenants/acme/keys", headers=ADMIN)
    listed = await api.client.get("/v1/admin/tenants/acme/keys", headers=ADMIN)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert len(items) == 2
    for item in items:
        assert set(item) == {"key_id", "tenant_id", "created_at", "revoked_at"}
    assert api.keys["acme"] not in listed.text


async def test_a_tenant_key_on_admin_routes_is_403(api: Api) -> None:
    auth = await api.tenant("acme")
    key_id = api.keys["acme"].split("_")[1]
    for method, path in [
        ("GET", "/v1/admin/tenants"),
        ("POST", "/v1/admin/tenants/acme/keys"),
        ("GET", "/v1/admin/tenants/acme/keys"),
        ("POST", f"/v1/admin/keys/{key_id}/revoke"),
    ]:
        response = await api.client.request(method, path, headers=auth)
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "urn:llmsession:problem:forbidden"
    created = await api.client.post("/v1/admin/tenants", json={"tenant_id": "evil"}, headers=auth)
    assert created.status_code == 403
    # The key was not revoked by its own tenant.
    assert (await api.client.get("/v1/sessions", headers=auth)).status_code == 200


async def test_the_admin_key_cannot_touch_sessions(api: Api) -> None:
    response = await api.client.post("/v1/sessions", json=NEW_SESSION, headers=ADMIN)
    assert response.status_code == 403
    assert response.json()["type"] == "urn:llmsession:problem:forbidden"
    assert (await api.client.get("/v1/stats", headers=ADMIN)).status_code == 403


async def test_admin_errors(api: Api) -> None:
    await api.tenant("acme")
    dup = await api.client.post("/v1/admin/tenants", json={"tenant_id": "acme"}, headers=ADMIN)
    assert dup.status_code == 409
    assert dup.json()["type"] == "urn:llmsession:problem:conflict"
    for body in ({"tenant_id": "-bad"}, {"tenant_id": ""}, {"tenant_id": "x" * 129}, {}):
        bad = await api.client.post("/v1/admin/tenants", json=body, headers=ADMIN)
        assert bad.status_code == 422, bad.text
        assert bad.json()["errors"][0]["loc"][0] == "body"
    unknown = await api.client.post("/v1/admin/tenants/nobody/keys", headers=ADMIN)
    assert unknown.status_code == 404
    assert (await api.client.get("/v1/admin/tenants/nobody/keys", headers=ADMIN)).status_code == 404
    bad_tenant = await api.client.get("/v1/admin/tenants/%20x/keys", headers=ADMIN)
    assert bad_tenant.json()["errors"][0]["loc"] == ["path", "tenant_id"]
    missing_key = await api.client.post("/v1/admin/keys/0123456789abcdef/revoke", headers=ADMIN)
    assert missing_key.status_code == 404
    for key_id in ("%00", "a_b", "x" * 65):
        bad_key = await api.client.post(f"/v1/admin/keys/{key_id}/revoke", headers=ADMIN)
        assert bad_key.status_code == 422, bad_key.text
        assert bad_key.json()["errors"][0]["loc"] == ["path", "key_id"]


async def test_without_an_admin_key_admin_routes_are_closed(sqlite_url: str) -> None:
    app = create_app(ServerSettings(store_url=sqlite_url, sweep_interval_seconds=3600))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://testserver"
        ) as client,
    ):
        response = await client.get("/v1/admin/tenants", headers=ADMIN)
        assert response.status_code == 401
        assert "admin routes are closed" in response.json()["detail"]
        store = await open_store(sqlite_url)
        try:
            await store.create_tenant(TenantId("acme"))
            issued = await issue_key(store, TenantId("acme"))
        finally:
            await store.aclose()
        refused = await client.get("/v1/admin/tenants", headers=bearer(issued.api_key))
        assert refused.status_code == 403
        assert "admin routes are closed" in refused.json()["detail"]


async def test_the_key_cache_keeps_a_result_for_its_ttl_only(sqlite_url: str) -> None:
    """A key revoked elsewhere (another replica, the CLI) stops working within the TTL."""
    store = await open_store(sqlite_url)
    try:
        await store.create_tenant(TenantId("acme"))
        issued = await issue_key(store, TenantId("acme"))
        now = [100.0]
        cache = KeyCache(lambda: store, 1.0, monotonic=lambda: now[0])
        assert await cache.tenant_of(issued.api_key) == TenantId("acme")
        await store.revoke_api_key(issued.info.key_id)
        now[0] += 0.5
        assert await cache.tenant_of(issued.api_key) == TenantId("acme")
        now[0] += 0.6
        with pytest.raises(AuthenticationError, match="revoked"):
            await cache.tenant_of(issued.api_key)

        other = await issue_key(store, TenantId("acme"))
        assert await cache.tenant_of(other.api_key) == TenantId("acme")
        cache.forget_key(other.info.key_id)
        await store.revoke_api_key(other.info.key_id)
        with pytest.raises(AuthenticationError):
            await cache.tenant_of(other.api_key)

        off = KeyCache(lambda: store, 0.0)
        third = await issue_key(store, TenantId("acme"))
        assert await off.tenant_of(third.api_key) == TenantId("acme")
        await store.revoke_api_key(third.info.key_id)
        with pytest.raises(AuthenticationError):
            await off.tenant_of(third.api_key)
    finally:
        await store.aclose()


async def test_the_key_cache_stays_bounded(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    try:
        await store.create_tenant(TenantId("acme"))
        keys = [(await issue_key(store, TenantId("acme"))).api_key for _ in range(5)]
        cache = KeyCache(lambda: store, 60.0, max_entries=3)
        for key in keys:
            await cache.tenant_of(key)
        assert len(cache._entries) <= 3  # pyright: ignore[reportPrivateUsage]
    finally:
        await store.aclose()


def test_the_admin_key_is_never_echoed() -> None:
    with pytest.raises(ValueError, match="admin_key") as raised:
        ServerSettings(admin_key="short-secret")
    assert "short-secret" not in str(raised.value)
    settings = ServerSettings(admin_key=ADMIN_KEY)
    assert ADMIN_KEY not in repr(settings)
    assert ADMIN_KEY not in str(settings)
