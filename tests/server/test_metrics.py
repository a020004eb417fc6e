"""/metrics: store totals per tenant, provider and model; request latency; the sweeper."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.server.conftest import ADMIN_KEY, T0, Api

from llmsession.clock import ManualClock
from llmsession.server import ServerSettings, create_app
from llmsession.store import open_store

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def _scrape(api: Api) -> Samples:
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return _samples(response.text)


async def test_session_figures_come_from_the_store_per_tenant_provider_and_model(
    api: Api,
) -> None:
    acme = await api.tenant("acme")
    beta = await api.tenant("beta")
    busy = await api.session(acme, model="m1", initial_tokens=100)
    for delta in (10, 30):
        await api.client.post(
            f"/v1/sessions/{busy}/rounds", json={"delta_tokens": delta}, headers=acme
        )
    await api.session(acme, model="m2", activate=False)
    done = await api.session(beta, model="m1", initial_tokens=5)
    await api.client.post(f"/v1/sessions/{done}/rounds", json={"delta_tokens": 9}, headers=beta)
    await api.client.post(f"/v1/sessions/{done}/close", headers=beta)

    samples = await _scrape(api)
    m1 = {"tenant": "acme", "provider": "openai", "model": "m1"}
    assert _value(samples, "llmsession_sessions", **m1, state="active") == 1
    assert _value(samples, "llmsession_sessions", **m1, state="created") == 0
    assert _value(samples, "llmsession_rounds_total", **m1) == 2
    assert _value(samples, "llmsession_delta_tokens_total", **m1) == 40
    assert _value(samples, "llmsession_tokens_saved", **m1) == 160
    m2 = {"tenant": "acme", "provider": "openai", "model": "m2"}
    assert _value(samples, "llmsession_sessions", **m2, state="created") == 1
    assert _value(samples, "llmsession_rounds_total", **m2) == 0
    beta_m1 = {"tenant": "beta", "provider": "openai", "model": "m1"}
    assert _value(samples, "llmsession_sessions", **beta_m1, state="closed") == 1
    assert _value(samples, "llmsession_delta_tokens_total", **beta_m1) == 9
    # round_count * initial_tokens - delta_tokens would be negative: nothing was saved.
    assert _value(samples, "llmsession_tokens_saved", **beta_m1) == 0
    assert _value(samples, "llmsession_store_up") == 1
    # Figures of a tenant with no session do not appear at all.
    assert not [key for key in samples if ("tenant", "gamma") in key[1]]


async def test_request_latency_is_labelled_by_route_template_method_and_status(
    api: Api,
) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    for _ in range(3):
        await api.client.post(
            f"/v1/sessions/{session_id}/rounds", json={"delta_tokens": 1}, headers=auth
        )
    await api.client.post(
        f"/v1/sessions/{session_id}/rounds", json={"delta_tokens": -1}, headers=auth
    )
    await api.client.get("/v1/sessions")
    await api.client.head(f"/v1/sessions/{session_id}", headers=auth)
    await api.client.get(f"/no/such/{session_id}")
    await api.client.request("BREW", "/v1/sessions")

    samples = await _scrape(api)
    name = "llmsession_http_request_duration_seconds_count"
    rounds = "/v1/sessions/{session_id}/rounds"
    assert _value(samples, name, route=rounds, method="POST", status="201") == 3
    assert _value(samples, name, route=rounds, method="POST", status="422") == 1
    assert _value(samples, name, route="/v1/sessions", method="GET", status="401") == 1
    # HEAD is served as GET, and labelled as what it was.
    assert (
        _value(samples, name, route="/v1/sessions/{session_id}", method="HEAD", status="200") == 1
    )
    assert _value(samples, name, route="unmatched", method="GET", status="404") == 1
    assert _value(samples, name, route="/v1/sessions", method="OTHER", status="405") == 1
    assert (
        _value(
            samples,
            "llmsession_http_request_duration_seconds_bucket",
            route=rounds,
            method="POST",
            status="201",
            le="+Inf",
        )
        == 3
    )
    # No raw path (with its session id) ever becomes a label.
    assert not [key for key in samples if any(session_id in v for _, v in key[1])]


async def test_sweeper_runs_and_expiries_are_counted(sqlite_url: str) -> None:
    clock = ManualClock(T0)
    settings = ServerSettings(
        store_url=sqlite_url, admin_key=ADMIN_KEY, sweep_interval_seconds=0.02
    )
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            api = Api(client, app, clock)
            auth = await api.tenant("acme")
            session_id = await api.session(auth, ttl_seconds=10)
            await api.session(auth, activate=False)
            clock.advance(settings.purge_created_after_seconds + 1)
            samples: Samples = {}
            for _ in range(500):
                samples = await _scrape(api)
                if _value(samples, "llmsession_sweeper_expired_sessions_total") >= 1 and (
                    _value(samples, "llmsession_sweeper_purged_sessions_total") >= 1
                ):
                    break
                await asyncio.sleep(0.01)
            assert _value(samples, "llmsession_sweeper_expired_sessions_total") == 1
            assert _value(samples, "llmsession_sweeper_purged_sessions_total") == 1
            assert _value(samples, "llmsession_sweeper_runs_total") >= 1
            assert _value(samples, "llmsession_sweeper_errors_total") == 0
            session = (await client.get(f"/v1/sessions/{session_id}", headers=auth)).json()
            assert session["state"] == "expired"
            assert session["expired_at"] == T0.plus_seconds(10).isoformat()
            listed = (await client.get("/v1/sessions", headers=auth)).json()["items"]
            assert [s["session_id"] for s in listed] == [session_id]


async def test_a_failing_store_is_reported_not_fatal(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    settings = ServerSettings(
        store_url="memory://", admin_key=ADMIN_KEY, sweep_interval_seconds=0.02
    )
    app = create_app(settings, store=store)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/readyz")).status_code == 200
            await store.aclose()
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["type"] == "urn:llmsession:problem:store-unavailable"
            response = await client.get("/metrics")
            assert response.status_code == 200
            samples = _samples(response.text)
            assert _value(samples, "llmsession_store_up") == 0
            created = await client.post(
                "/v1/admin/tenants",
                json={"tenant_id": "acme"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            assert created.status_code == 503
            assert created.json()["type"] == "urn:llmsession:problem:store-unavailable"
            assert created.headers["retry-after"] == "1"
            # The sweeper keeps going through the failures, counting them.
            for _ in range(500):
                samples = _samples((await client.get("/metrics")).text)
                if _value(samples, "llmsession_sweeper_errors_total") >= 2:
                    break
                await asyncio.sleep(0.01)
            assert _value(samples, "llmsession_sweeper_errors_total") >= 2
