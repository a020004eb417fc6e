"""The dashboard at /ui, in-process: sign-in and its cookie, CSRF, escaping, the pages'
figures against the store, closing sessions, the admin's tenants and keys, /docs offline.

(tests/browser/ drives the same pages in a real browser against a server process.)
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from tests.server.conftest import ADMIN, ADMIN_KEY, T0, Api, bearer
from tests.server.ui_client import csrf_of, sign_in, ui_client

from llmsession.clock import ManualClock
from llmsession.server import ServerSettings, create_app
from llmsession.server.ui.assets import STATIC_DIR
from llmsession.server.ui.cookies import SIGN_IN_SECONDS, CookieSigner
from llmsession.server.ui.routes import COOKIE_NAME

XSS_MODEL = "<script>alert(1)</script>"


def _cookie_header(response: httpx.Response, name: str) -> str:
    [header] = [h for h in response.headers.get_list("set-cookie") if h.startswith(f"{name}=")]
    return header


async def _sign_in_response(client: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await client.get("/ui/sign-in")
    return await client.post("/ui/sign-in", data={"csrf_token": csrf_of(form.text), "api_key": key})


# -- sign-in and the cookie ------------------------------------------------------------


async def test_a_tenant_key_signs_in_with_a_signed_httponly_strict_cookie_not_the_key(
    api: Api,
) -> None:
    await api.tenant("acme")
    key = api.keys["acme"]
    async with ui_client(api.app) as client:
        signed = await _sign_in_response(client, key)

        assert signed.status_code == 303
        header = _cookie_header(signed, COOKIE_NAME)
        attributes = {part.strip().lower() for part in header.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/ui"} <= attributes
        assert f"max-age={SIGN_IN_SECONDS}" in attributes
        assert "secure" not in attributes  # served over http: a Secure cookie never returns
        secret = key.split("_", 2)[2]
        assert key not in header
        assert secret not in header
        overview = await client.get("/ui")
        assert overview.status_code == 200
        assert "tenant <strong>acme</strong>" in overview.text
        assert key not in overview.text


async def test_over_https_the_cookie_is_secure(api: Api) -> None:
    await api.tenant("acme")
    transport = httpx.ASGITransport(api.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
        signed = await _sign_in_response(client, api.keys["acme"])
    assert "secure" in {p.strip().lower() for p in _cookie_header(signed, COOKIE_NAME).split(";")}


@pytest.mark.parametrize(
    ("key", "status", "message"),
    [
        ("lls_0123456789abcdef_nope", 401, "sign-in refused: invalid API key"),
        ("not a key at all", 401, "sign-in refused: invalid API key"),
        ("   ", 422, "enter an API key or the admin key"),
    ],
)
async def test_a_bad_key_is_refused_with_the_reason_and_no_cookie(
    api: Api, key: str, status: int, message: str
) -> None:
    async with ui_client(api.app) as client:
        refused = await _sign_in_response(client, key)
        assert refused.status_code == status
        assert message in refused.text
        assert COOKIE_NAME not in refused.headers.get("set-cookie", "")
        assert (await client.get("/ui")).status_code == 303


async def test_signing_in_needs_the_sign_in_form_s_token(api: Api) -> None:
    await api.tenant("acme")
    async with ui_client(api.app) as client:
        await client.get("/ui/sign-in")
        forged = await client.post("/ui/sign-in", data={"api_key": api.keys["acme"]})
        assert forged.status_code == 403
        assert "CSRF token" in forged.text
        wrong = await client.post(
            "/ui/sign-in", data={"api_key": api.keys["acme"], "csrf_token": "x" * 43}
        )
        assert wrong.status_code == 403
        assert (await client.get("/ui")).status_code == 303


async def test_without_a_sign_in_every_page_leads_to_the_sign_in_form(api: Api) -> None:
    async with ui_client(api.app) as client:
        for path in ("/ui", "/ui/sessions", "/ui/tenants"):
            response = await client.get(path)
            assert response.status_code == 303
            assert response.headers["location"] == "/ui/sign-in"
        client.cookies.set(COOKIE_NAME, "forged.value", path="/ui")
        assert (await client.get("/ui")).status_code == 303


async def test_a_tampered_or_expired_cookie_is_not_a_sign_in(api: Api) -> None:
    await api.tenant("acme")
    key_id = api.keys["acme"].split("_")[1]
    signer = CookieSigner.for_settings(None, ADMIN_KEY)
    async with ui_client(api.app) as client:
        _, valid = signer.issue("acme", key_id, int(time.time()))
        client.cookies.set(COOKIE_NAME, valid, path="/ui")
        assert (await client.get("/ui")).status_code == 200

        _, expired = signer.issue("acme", key_id, int(time.time()) - SIGN_IN_SECONDS - 1)
        client.cookies.set(COOKIE_NAME, expired, path="/ui")
        assert (await client.get("/ui")).status_code == 303

        # Another tenant's name with a valid MAC of other contents, or another signer.
        _, _, mac = valid.partition(".")
        _, other = signer.issue("victim", key_id, int(time.time()))
        client.cookies.set(COOKIE_NAME, f"{other.partition('.')[0]}.{mac}", path="/ui")
        assert (await client.get("/ui")).status_code == 303
        _, foreign = CookieSigner(b"another secret").issue("acme", key_id, int(time.time()))
        client.cookies.set(COOKIE_NAME, foreign, path="/ui")
        assert (await client.get("/ui")).status_code == 303
        # A genuine cookie naming a key of another tenant.
        await api.tenant("victim")
        _, mixed = signer.issue("victim", key_id, int(time.time()))
        client.cookies.set(COOKIE_NAME, mixed, path="/ui")
        assert (await client.get("/ui")).status_code == 303


async def test_revoking_the_key_ends_its_sign_ins_at_once(api: Api) -> None:
    await api.tenant("acme")
    key_id = api.keys["acme"].split("_")[1]
    async with ui_client(api.app) as client:
        await sign_in(client, api.keys["acme"])
        revoked = await api.client.post(f"/v1/admin/keys/{key_id}/revoke", headers=ADMIN)
        assert revoked.status_code == 200
        assert (await client.get("/ui")).status_code == 303


async def test_sign_out_needs_its_token_and_ends_the_sign_in(api: Api) -> None:
    await api.tenant("acme")
    async with ui_client(api.app) as client:
        csrf = await sign_in(client, api.keys["acme"])
        refused = await client.post("/ui/sign-out", data={})
        assert refused.status_code == 403
        assert (await client.get("/ui")).status_code == 200
        out = await client.post("/ui/sign-out", data={"csrf_token": csrf})
        assert out.status_code == 303
        assert out.headers["location"] == "/ui/sign-in"
        assert (await client.get("/ui")).status_code == 303


async def test_a_token_of_another_sign_in_is_refused(api: Api) -> None:
    await api.tenant("acme")
    async with ui_client(api.app) as first, ui_client(api.app) as second:
        first_csrf = await sign_in(first, api.keys["acme"])
        await sign_in(second, api.keys["acme"])
        refused = await second.post("/ui/sign-out", data={"csrf_token": first_csrf})
        assert refused.status_code == 403


async def test_the_admin_sign_in_survives_a_restart_but_not_a_new_admin_key(
    api: Api, settings: ServerSettings, clock: ManualClock
) -> None:
    async with ui_client(api.app) as client:
        await sign_in(client, ADMIN_KEY)
        cookie = client.cookies[COOKIE_NAME]
    for admin_key, status in ((ADMIN_KEY, 200), ("another-admin-key-0123456789", 303)):
        restarted = create_app(
            ServerSettings(store_url=settings.store_url, admin_key=admin_key), clock=clock
        )
        async with restarted.router.lifespan_context(restarted), ui_client(restarted) as client:
            client.cookies.set(COOKIE_NAME, cookie, path="/ui")
            assert (await client.get("/ui")).status_code == status


async def test_an_explicit_ui_secret_signs_the_cookies(api: Api, settings: ServerSettings) -> None:
    secret = "s" * 32
    app = create_app(
        ServerSettings(store_url=settings.store_url, admin_key=ADMIN_KEY, ui_secret=secret)
    )
    async with app.router.lifespan_context(app), ui_client(app) as client:
        fingerprint = CookieSigner.for_settings(secret, ADMIN_KEY).admin_fingerprint(ADMIN_KEY)
        _, cookie = CookieSigner.for_settings(secret, ADMIN_KEY).issue(None, fingerprint, 10**10)
        client.cookies.set(COOKIE_NAME, cookie, path="/ui")
        assert (await client.get("/ui")).status_code == 200
        _, derived = CookieSigner.for_settings(None, ADMIN_KEY).issue(None, fingerprint, 10**10)
        client.cookies.set(COOKIE_NAME, derived, path="/ui")
        assert (await client.get("/ui")).status_code == 303


async def test_pages_carry_the_security_headers(api: Api) -> None:
    await api.tenant("acme")
    async with ui_client(api.app) as client:
        await sign_in(client, api.keys["acme"])
        page = await client.get("/ui")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"


# -- what the pages show -------------------------------------------------------------------


def _figure(html: str, name: str) -> str:
    found = re.search(rf'data-figure="{name}">([^<]*)<', html)
    assert found is not None, name
    return found.group(1).replace("\u2009", "")


async def test_the_overview_shows_the_store_s_totals(api: Api) -> None:
    acme = await api.tenant("acme")
    first = await api.session(acme, initial_tokens=1000)
    for delta in (100, 300):
        await api.client.post(
            f"/v1/sessions/{first}/rounds", json={"delta_tokens": delta}, headers=acme
        )
    await api.session(acme, activate=False, model="other")
    stats = (await api.client.get("/v1/stats", headers=acme)).json()["groups"][0]
    async with ui_client(api.app) as client:
        await sign_in(client, api.keys["acme"])
        page = (await client.get("/ui")).text

    assert _figure(page, "sessions") == "2"
    assert _figure(page, "sessions-active") == "1"
    assert _figure(page, "sessions-created") == "1"
    assert _figure(page, "rounds") == str(stats["rounds"]) == "2"
    assert _figure(page, "delta-tokens") == str(stats["delta_tokens"]) == "400"
    assert _figure(page, "tokens-saved") == str(stats["tokens_saved"]) == "1600"
    assert _figure(page, "share-saved") == "80.0 %"  # 1600 of 1600 + 400


async def test_the_pages_show_cache_writes_and_rounds_without_usage() -> None:
    """Cache writes explain a round that cost more than re-sending; a round the provider
    billed without usage makes every usage figure a partial sum: both are shown."""
    from llmsession.ids import SessionId, TenantId
    from llmsession.store.memory import MemoryStore
    from llmsession.usage import Usage

    clock = ManualClock(T0)
    store = MemoryStore(clock=clock)
    app = create_app(ServerSettings(store_url="memory://", admin_key=ADMIN_KEY), store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            created = await http.post(
                "/v1/admin/tenants", json={"tenant_id": "acme"}, headers=ADMIN
            )
            key = created.json()["api_key"]
            session_id = SessionId.generate(clock())
            first = Usage(input_tokens=1200, cache_write_tokens=1100, output_tokens=10)
            await store.start_with_turn(
                TenantId("acme"),
                session_id,
                provider_id="claude",
                model="sonnet",
                turn=None,
                usage=first,
            )
            await store.record_turn(TenantId("acme"), session_id, turn=None, usage=None)
            stats = (await http.get("/v1/stats", headers=bearer(key))).json()["groups"][0]
            async with ui_client(app) as client:
                await sign_in(client, key)
                overview = (await client.get("/ui")).text
                session = (await client.get(f"/ui/sessions/{session_id}")).text

    assert stats["usage"]["cache_write_tokens"] == 1100
    assert stats["usage"]["rounds_without_usage"] == 1
    assert _figure(overview, "cache-write-tokens") == "1100"
    assert _figure(overview, "rounds-without-usage") == "1"
    assert "<th>Cache writes</th>" in overview  # the by-model table
    found = re.search(r'id="session-usage">([^<]*)<', session)
    assert found is not None
    assert found.group(1).replace("\u2009", "") == (
        "input 1200, cached 0, cache writes 1100, output 10; 1 round without provider usage"
    )
    assert "<th>Cache writes</th>" in session


async def test_the_admin_overview_lists_every_tenant(api: Api) -> None:
    for tenant in ("acme", "globex"):
        auth = await api.tenant(tenant)
        session = await api.session(auth)
        await api.client.post(
            f"/v1/sessions/{session}/rounds", json={"delta_tokens": 10}, headers=auth
        )
    async with ui_client(api.app) as client:
        await sign_in(client, ADMIN_KEY)
        page = (await client.get("/ui")).text
        one = await client.get("/ui", params={"tenant": "globex"})
        unknown = await client.get("/ui", params={"tenant": "nobody"})
    assert _figure(page, "rounds") == "2"
    assert 'href="/ui?tenant=acme"' in page
    assert 'href="/ui?tenant=globex"' in page
    assert _figure(one.text, "rounds") == "1"
    assert unknown.status_code == 404


async def test_a_model_name_is_shown_as_text_on_every_page(api: Api) -> None:
    acme = await api.tenant("acme")
    session = await api.session(acme, model=XSS_MODEL)
    await api.client.post(f"/v1/sessions/{session}/rounds", json={"delta_tokens": 1}, headers=acme)
    async with ui_client(api.app) as client:
        await sign_in(client, api.keys["acme"])
        pages = [
            await client.get("/ui"),
            await client.get("/ui/sessions"),
            await client.get(f"/ui/sessions/{session}"),
            await client.get(f"/ui/sessions/{session}/close"),
            await client.get("/ui/sessions", params={"model": XSS_MODEL}),
        ]
    for page in pages:
        assert page.status_code == 200
        assert XSS_MODEL not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


async def test_the_sessions_page_filters_and_pages_with_the_api_s_cursors(api: Api) -> None:
    acme = await api.tenant("acme")
    ids = [await api.session(acme, model=f"m{i % 2}") for i in range(5)]
    await api.client.post(f"/v1/sessions/{ids[0]}/close", headers=acme)
    async with ui_client(api.app) as client:
        await sign_in(client, api.keys["acme"])

        def listed(html: str) -> list[str]:
            return re.findall(r'data-session-id="([^"]+)"', html)

        newest_first = [
            s["session_id"]
            for s in (await api.client.get("/v1/sessions", headers=acme)).json()["items"]
        ]
        assert sorted(newest_first) == sorted(ids)
        everything = await client.get("/ui/sessions")
        assert listed(everything.text) == newest_first
        assert listed((await client.get("/ui/sessions", params={"state": "closed"})).text) == [
            ids[0]
        ]
        assert listed((await client.get("/ui/sessions", params={"model": "m1"})).text) == [
            i for i in newest_first if i in (ids[1], ids[3])
        ]
        # The form's empty fields are no filter; datetime-local values are UTC.
        empty = await client.get(
            "/ui/sessions",
            params={"state": "", "provider_id": "", "created_after": "2026-03-01T08:59"},
        )
        assert listed(empty.text) == newest_first
        assert (
            listed(
                (
                    await client.get("/ui/sessions", params={"created_before": "2026-03-01T08:59"})
                ).text
            )
            == []
        )

        seen: list[str] = []
        url: str | None = "/ui/sessions?limit=20&model=m0"
        page_count = 0
        while url is not None:
            page = await client.get(url.replace("&amp;", "&"))
            seen += listed(page.text)
            found = re.search(r'href="([^"]+)" id="next-page"', page.text)
            url = found.group(1) if found else None
            page_count += 1
        assert seen == [i for i in newest_first if i in (ids[0], ids[2], ids[4])]
        assert page_count == 1

        bad = await client.get("/ui/sessions", params={"state": "sleeping"})
        assert bad.status_code == 422
        assert "unknown session state &#39;sleeping&#39;" in bad.text


async def test_paging_follows_next_cursor(api: Api, settings: ServerSettings) -> None:
    acme = await api.tenant("acme")
    ids = [await api.session(acme) for _ in range(45)]
    listed = await api.client.get("/v1/sessions", params={"limit": 100}, headers=acme)
    newest_first = [s["session_id"] for s in listed.json()["items"]]
    assert sorted(newest_first) == sorted(ids)
    async with ui_client(api.app) as client:
        await sign_in(client, api.keys["acme"])
        seen: list[str] = []
        url: str | None = "/ui/sessions?limit=20"
        while url is not None:
            page = await client.get(url.replace("&amp;", "&"))
            assert page.status_code == 200
            seen += re.findall(r'data-session-id="([^"]+)"', page.text)
            found = re.search(r'href="([^"]+)" id="next-page"', page.text)
            url = found.group(1) if found else None
        assert seen == newest_first


async def test_the_session_page_shows_its_rounds_and_the_plotted_series(api: Api) -> None:
    acme = await api.tenant("acme")
    session = await api.session(acme, initial_tokens=100)
    for delta in (30, 250, 20):
        await api.client.post(
            f"/v1/sessions/{session}/rounds", json={"delta_tokens": delta}, headers=acme
        )
    async with ui_client(api.app) as client:
        await sign_in(client, api.keys["acme"])
        page = await client.get(f"/ui/sessions/{session}")
    assert page.status_code == 200
    island = re.search(
        r'<script type="application/json" id="round-series">(.*?)</script>', page.text
    )
    assert island is not None
    import json

    series = json.loads(island.group(1))
    assert series["seq"] == [1, 2, 3]
    assert series["delta_tokens"] == [30, 250, 20]
    # The core's tokens_saved after each round: max(0, n * 100 - sum of deltas).
    assert series["tokens_saved"] == [70, 0, 0]
    assert series["input_tokens"] == []
    assert 'id="close-session"' in page.text


async def test_a_tenant_closes_an_active_session_through_the_confirmation(api: Api) -> None:
    acme = await api.tenant("acme")
    session = await api.session(acme)
    async with ui_client(api.app) as client:
        csrf = await sign_in(client, api.keys["acme"])
        confirm = await client.get(f"/ui/sessions/{session}/close")
        assert 'id="confirm-close"' in confirm.text

        refused = await client.post(f"/ui/sessions/{session}/close", data={})
        assert refused.status_code == 403
        assert (await api.client.get(f"/v1/sessions/{session}", headers=acme)).json()[
            "state"
        ] == "active"

        closed = await client.post(
            f"/ui/sessions/{session}/close", data={"csrf_token": csrf_of(confirm.text)}
        )
        assert closed.status_code == 303
        assert (await api.client.get(f"/v1/sessions/{session}", headers=acme)).json()[
            "state"
        ] == "closed"
        page = await client.get(f"/ui/sessions/{session}")
        assert 'id="close-session"' not in page.text

        again = await client.post(f"/ui/sessions/{session}/close", data={"csrf_token": csrf})
        assert again.status_code == 409
        assert "close" in again.text


async def test_the_admin_sees_a_tenant_s_sessions_but_does_not_close_them(api: Api) -> None:
    acme = await api.tenant("acme")
    session = await api.session(acme)
    async with ui_client(api.app) as client:
        csrf = await sign_in(client, ADMIN_KEY)
        choose = await client.get("/ui/sessions")
        assert 'href="/ui/sessions?tenant=acme"' in choose.text
        listed = await client.get("/ui/sessions", params={"tenant": "acme"})
        assert session in listed.text
        page = await client.get(f"/ui/sessions/{session}", params={"tenant": "acme"})
        assert page.status_code == 200
        assert 'id="close-session"' not in page.text
        refused = await client.post(f"/ui/sessions/{session}/close", data={"csrf_token": csrf})
        assert refused.status_code == 403


# -- admin: tenants and keys ------------------------------------------------------------------


async def test_the_admin_creates_a_tenant_whose_key_is_shown_once_and_works(api: Api) -> None:
    async with ui_client(api.app) as client:
        csrf = await sign_in(client, ADMIN_KEY)
        refused = await client.post("/ui/tenants", data={"tenant_id": "acme"})
        assert refused.status_code == 403
        created = await client.post("/ui/tenants", data={"tenant_id": "acme", "csrf_token": csrf})
        assert created.status_code == 201
        key = re.search(r'value="(lls_[^"]+)" id="new-api-key"', created.text)
        assert key is not None
        assert created.headers["cache-control"] == "no-store"
        assert (
            await api.client.get("/v1/sessions", headers=bearer(key.group(1)))
        ).status_code == 200
        listing = await client.get("/ui/tenants")
        assert key.group(1) not in listing.text
        assert ">acme</a>" in listing.text

        duplicate = await client.post("/ui/tenants", data={"tenant_id": "acme", "csrf_token": csrf})
        assert duplicate.status_code == 409
        bad = await client.post("/ui/tenants", data={"tenant_id": "-bad", "csrf_token": csrf})
        assert bad.status_code == 422
        assert "tenant id &#39;-bad&#39; is not allowed" in bad.text


async def test_the_admin_issues_and_revokes_keys(api: Api) -> None:
    await api.tenant("acme")
    async with ui_client(api.app) as client:
        csrf = await sign_in(client, ADMIN_KEY)
        issued = await client.post("/ui/tenants/acme/keys", data={"csrf_token": csrf})
        assert issued.status_code == 201
        found = re.search(r'value="(lls_([^_"]+)_[^"]+)" id="new-api-key"', issued.text)
        assert found is not None
        new_key, key_id = found.groups()
        async with ui_client(api.app) as tenant_client:
            await sign_in(tenant_client, new_key)
            revoked = await client.post(f"/ui/keys/{key_id}/revoke", data={"csrf_token": csrf})
            assert revoked.status_code == 303
            assert revoked.headers["location"] == "/ui/tenants/acme"
            assert (await tenant_client.get("/ui")).status_code == 303
        assert (await api.client.get("/v1/sessions", headers=bearer(new_key))).status_code == 401
        page = await client.get("/ui/tenants/acme")
        assert new_key not in page.text
        row = re.search(rf'<tr data-key-id="{key_id}">(.*?)</tr>', page.text, re.DOTALL)
        assert row is not None
        assert "Revoke" not in row.group(1)
        unknown = await client.post("/ui/keys/ffff/revoke", data={"csrf_token": csrf})
        assert unknown.status_code == 404


async def test_a_tenant_cannot_open_the_admin_pages(api: Api) -> None:
    await api.tenant("acme")
    async with ui_client(api.app) as client:
        await sign_in(client, api.keys["acme"])
        assert (await client.get("/ui/tenants")).status_code == 403
        assert "Tenants and keys" not in (await client.get("/ui")).text


# -- assets and /docs, offline ---------------------------------------------------------------


async def test_docs_and_pages_load_nothing_from_another_origin(api: Api) -> None:
    await api.tenant("acme")
    docs = await api.client.get("/docs")
    assert docs.status_code == 200
    async with ui_client(api.app) as client:
        await sign_in(client, api.keys["acme"])
        overview = (await client.get("/ui")).text
    for html in (docs.text, overview):
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources
        assert all(source.startswith("/") for source in sources), sources
        for source in sources:
            if source.startswith(("/ui/static/", "/docs")):
                assert (await api.client.get(source)).status_code == 200, source
    assert "cdn." not in docs.text


async def test_static_files_are_the_package_s_only(api: Api) -> None:
    script = await api.client.get("/ui/static/vendor/uplot/uPlot.iife.min.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.content == (STATIC_DIR / "vendor/uplot/uPlot.iife.min.js").read_bytes()
    for path in ("../routes.py", "..%2Froutes.py", "vendor/../../routes.py", "nothing.js"):
        assert (await api.client.get(f"/ui/static/{path}")).status_code == 404


def test_the_vendored_assets_carry_their_licenses_and_versions() -> None:
    vendor = STATIC_DIR / "vendor"
    note = (vendor / "README.md").read_text()
    for directory, package, version in (
        ("uplot", "uplot", "1.6.32"),
        ("swagger-ui", "swagger-ui-dist", "5.36.0"),
    ):
        assert (vendor / directory / "LICENSE").is_file()
        assert f"| `{directory}/` | [`{package}`]" in note
        assert f"{package}@{version}" in note
    # The bundle names its own version: the note must say which one is committed.
    assert '"5.36.0"' in Path(vendor / "swagger-ui" / "swagger-ui-bundle.js").read_text()


def test_gateway_rounds_are_plotted_with_the_provider_s_usage() -> None:
    from llmsession.ids import SessionId, TenantId
    from llmsession.record import SessionRecord
    from llmsession.server.ui.pages import round_series
    from llmsession.states import Active
    from llmsession.store.models import Round, StoredSession
    from llmsession.timestamps import Timestamp
    from llmsession.usage import Usage

    now = Timestamp.parse("2026-03-01T09:00:00Z")
    session_id = SessionId.parse("019abc12-3456-7def-8123-456789abcdef")
    record = SessionRecord(
        session_id,
        TenantId("acme"),
        "openai",
        "gpt-4o",
        500,
        now,
        Active,
        activated_at=now,
        round_count=3,
        delta_tokens=1100,
    )
    stored = StoredSession(record, 4, 3600, now)
    rounds = [
        Round(session_id, 1, 500, now, usage=Usage(500, 0, 0, 40), gateway=True),
        Round(session_id, 2, 100, now, usage=Usage(600, 500, 0, 30), gateway=True),
        Round(session_id, 3, 500, now, usage=None, gateway=True),  # the provider sent none
    ]

    series = round_series(stored, rounds).as_json()

    assert series["delta_tokens"] == [500, 100, 500]
    assert series["tokens_saved"] == [0, 400, 400]
    assert series["input_tokens"] == [500, 600, None]
    assert series["cached_input_tokens"] == [0, 500, None]
    assert series["output_tokens"] == [40, 30, None]


def test_the_admin_s_sum_of_tenants_adds_costs_but_never_a_partial_one() -> None:
    from decimal import Decimal

    from llmsession.cost import Cost
    from llmsession.server.ui.pages import sum_totals
    from llmsession.store.models import Totals, UsageTotals

    billed = UsageTotals(input_tokens=100, output_tokens=10)
    first = Totals(
        None, None, {"active": 1}, 2, 30, 70, billed, Cost("EUR", Decimal("0.5"), Decimal("2"))
    )
    second = Totals(
        None, None, {"closed": 2}, 1, 5, 5, billed, Cost("EUR", Decimal("0.25"), Decimal("1"))
    )
    ledger = Totals(None, None, {"created": 1}, 4, 10, 10)  # billed nothing: no cost, no harm
    unpriced = Totals(None, None, {"active": 1}, 1, 1, 1, billed, None)

    total = sum_totals([first, second, ledger])

    assert total.sessions == {"created": 1, "active": 1, "closed": 2, "expired": 0}
    assert (total.rounds, total.delta_tokens, total.tokens_saved) == (7, 45, 85)
    assert total.usage == UsageTotals(input_tokens=200, output_tokens=20)
    assert total.cost == Cost("EUR", Decimal("0.75"), Decimal("3"))
    assert sum_totals([first, unpriced]).cost is None
    assert sum_totals([]).cost is None


def test_the_plots_over_time_give_every_bucket_of_the_range_a_point() -> None:
    from llmsession.server.ui.pages import time_charts
    from llmsession.store.models import TimeBucket, UsageTotals
    from llmsession.timestamps import Timestamp

    start = Timestamp.parse("2026-03-01T09:30:00Z")  # plotted from its hour, 09:00
    end = Timestamp.parse("2026-03-01T13:00:00Z")
    nine, eleven = Timestamp.parse("2026-03-01T09:00:00Z"), Timestamp.parse("2026-03-01T11:00:00Z")
    grouped = [
        TimeBucket(nine, "openai", "gpt-4o", rounds=2, tokens_saved=900),
        TimeBucket(eleven, "openai", "gpt-4o", rounds=1, tokens_saved=-50),
        TimeBucket(eleven, "fake", "mini", rounds=3, tokens_saved=10),
    ]
    overall = [
        TimeBucket(nine, None, None, usage=UsageTotals(input_tokens=0)),
        TimeBucket(
            eleven, None, None, usage=UsageTotals(input_tokens=400, cached_input_tokens=100)
        ),
    ]

    charts = time_charts("hour", start, end, grouped, overall)

    hour = 3600
    assert charts["x"] == [nine.epoch_micros // 10**6 + i * hour for i in range(4)]
    assert charts["groups"] == [
        {"provider_id": "openai", "model": "gpt-4o"},
        {"provider_id": "fake", "model": "mini"},
    ]
    assert charts["tokens_saved"] == [[900, 0, -50, 0], [0, 0, 10, 0]]
    assert charts["rounds"] == [[2, 0, 1, 0], [0, 0, 3, 0]]
    assert charts["cache_share"] == [None, None, 25.0, None]


async def test_the_overview_s_plot_window_is_checked(api: Api) -> None:
    await api.tenant("acme")
    async with ui_client(api.app) as client:
        await sign_in(client, api.keys["acme"])
        page = await client.get("/ui")
        assert 'id="time-series"' in page.text
        # The default: the 48 hours up to the end of the current hour (the clock: 09:00).
        assert 'id="plot-start" value="2026-02-27T10:00"' in page.text
        assert 'id="plot-end" value="2026-03-01T10:00"' in page.text
        days = await client.get("/ui", params={"bucket": "day", "split": "model"})
        assert days.status_code == 200
        assert 'id="plot-start" value="2026-01-31T00:00"' in days.text
        bad = await client.get("/ui", params={"bucket": "week"})
        assert bad.status_code == 422
        assert "choose hour or day" in bad.text
        too_long = await client.get(
            "/ui", params={"start": "2026-01-01T00:00", "end": "2026-03-01T00:00"}
        )
        assert too_long.status_code == 422
        unsplit = await client.get("/ui", params={"split": "tenant"})
        assert unsplit.status_code == 422
