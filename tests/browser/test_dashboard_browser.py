"""The dashboard in headless Chromium against a real server process with seeded data.

Every figure and plotted value read from the page is compared with what the JSON API
answers for the same data; every page's console must stay free of errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.browser.conftest import require_browser, save_screenshot
from tests.fake_provider.conftest import API_KEY, FakeProcess, fake_command, launch
from tests.server.conftest import ADMIN, ADMIN_KEY, ServerProcess, bearer, launch_server

XSS_MODEL = "<script>alert(1)</script>"
MODELS = [("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4"), ("openai", XSS_MODEL)]
SID = "LLMSession-Id"
#: Long enough for the fake provider's prefix cache, so later rounds read from it.
BIG_CONTEXT = " ".join(f"fact{i} is true." for i in range(900))
#: The gateway in front of the fake provider, with a price for its model.
CONFIG = """
[gateway]
currency = "EUR"

[providers.fake]
kind = "openai"
base_url = "{base_url}"
api_key_env = "FAKE_UPSTREAM_KEY"
timeout_seconds = 5

[prices.fake."gpt-4o-mini"]
input = 0.15
cached_input = 0.075
output = 0.6
"""


@dataclass
class Seeded:
    """The server and what was put in it."""

    server: ServerProcess
    http: httpx.Client
    keys: dict[str, str] = field(default_factory=dict[str, str])
    #: acme's sessions by role: "rounds" (several rounds), "closable", "xss", ...
    sessions: dict[str, str] = field(default_factory=dict[str, str])

    def auth(self, tenant: str) -> dict[str, str]:
        return bearer(self.keys[tenant])

    @property
    def url(self) -> str:
        return self.server.base_url


def _seed(server: ServerProcess) -> Seeded:
    http = httpx.Client(base_url=server.base_url, timeout=10)
    seeded = Seeded(server, http)
    for tenant in ("acme", "globex"):
        created = http.post("/v1/admin/tenants", json={"tenant_id": tenant}, headers=ADMIN)
        assert created.status_code == 201, created.text
        seeded.keys[tenant] = created.json()["api_key"]

    def session(tenant: str, provider: str, model: str, deltas: list[int]) -> str:
        auth = seeded.auth(tenant)
        body = {"provider_id": provider, "model": model, "initial_tokens": 1000}
        session_id: str = http.post("/v1/sessions", json=body, headers=auth).json()["session_id"]
        assert http.post(f"/v1/sessions/{session_id}/activate", headers=auth).status_code == 200
        for delta in deltas:
            recorded = http.post(
                f"/v1/sessions/{session_id}/rounds", json={"delta_tokens": delta}, headers=auth
            )
            assert recorded.status_code == 201, recorded.text
        return session_id

    for index in range(24):
        provider, model = MODELS[index % len(MODELS)]
        sid = session("acme", provider, model, [40 * (index % 5 + 1)] * (index % 4 + 1))
        if index % 4 == 3:
            assert http.post(f"/v1/sessions/{sid}/close", headers=seeded.auth("acme")).is_success
        if model == XSS_MODEL:
            seeded.sessions["xss"] = sid
    seeded.sessions["rounds"] = session("acme", "openai", "gpt-4o", [120, 900, 60, 1400, 30, 75])
    seeded.sessions["closable"] = session("acme", "anthropic", "claude-sonnet-4", [10])
    seeded.sessions["globex"] = session("globex", "openai", "gpt-4o", [5, 6])
    seeded.sessions["gateway"] = _chat(server, seeded.keys["acme"], rounds=3)
    return seeded


def _chat(server: ServerProcess, key: str, rounds: int) -> str:
    """A gateway session of ``rounds`` chat rounds through the official SDK; its id."""
    with OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model="fake/gpt-4o-mini",
            messages=[
                {"role": "system", "content": BIG_CONTEXT},
                {"role": "user", "content": "Q1"},
            ],
        )
        session_id = raw.headers[SID]
        for n in range(2, rounds + 1):
            sdk.chat.completions.create(
                model="fake/gpt-4o-mini",
                messages=[{"role": "user", "content": f"Q{n}"}],
                extra_headers={SID: session_id},
            )
    return session_id


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    require_browser()  # before starting anything
    work = tmp_path_factory.mktemp("dashboard-browser")
    fake: FakeProcess = launch(fake_command("--api-key", API_KEY), work / "fake.log")
    config = work / "gateway.toml"
    config.write_text(CONFIG.format(base_url=fake.base_url), encoding="utf-8")
    try:
        server = launch_server(
            f"sqlite:///{work / 'sessions.db'}",
            work,
            LLMSESSION_CONFIG=str(config),
            FAKE_UPSTREAM_KEY=API_KEY,
        )
        try:
            seeded = _seed(server)
            yield seeded
            seeded.http.close()
        finally:
            server.stop()
        assert "Traceback" not in server.output(), server.output()
    finally:
        fake.stop()


@pytest.fixture
def page(browser: Any, seeded: Seeded) -> Iterator[Any]:
    """The module's browser, signed out, its console log emptied; after the test, no
    console errors (beyond those a test expects and lists in ``allowed_errors``)."""
    browser.get(f"{seeded.url}/ui/sign-in")
    browser.delete_all_cookies()
    browser.get_log("browser")
    browser.allowed_errors = []
    yield browser
    errors = [
        entry
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE"
        and not any(allowed in entry["message"] for allowed in browser.allowed_errors)
    ]
    assert errors == [], errors


def _by(css: str) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    return (By.CSS_SELECTOR, css)


def sign_in(driver: Any, seeded: Seeded, key: str) -> None:
    driver.get(f"{seeded.url}/ui/sign-in")
    driver.find_element(*_by("#api-key")).send_keys(key)
    driver.find_element(*_by("#sign-in-form button[type=submit]")).click()
    _wait(driver, lambda d: d.current_url == f"{seeded.url}/ui")


def _wait(driver: Any, condition: Any, timeout: float = 10) -> Any:
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        WebDriverException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    def tried(driver: Any) -> Any:
        try:
            return condition(driver)
        except WebDriverException as error:
            # Chromium reports some reads of a node whose page was just replaced as
            # an "inspector error", not as stale: the same case, tried again.
            if "does not belong to the document" in str(error):
                return False
            raise

    # A page that is still loading can replace an element between finding it and
    # reading it (stale): that is a condition not met yet, tried again.
    return WebDriverWait(
        driver,
        timeout,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(tried)


def _figure(driver: Any, name: str) -> int:
    text: str = driver.find_element(*_by(f'[data-figure="{name}"]')).text
    return int(text.replace("\u2009", "").replace(",", ""))


def _rows(driver: Any) -> list[str]:
    return [
        row.get_attribute("data-session-id")
        for row in driver.find_elements(*_by("#sessions tr[data-session-id]"))
    ]


def _api_sessions(seeded: Seeded, **params: Any) -> list[str]:
    listed = seeded.http.get("/v1/sessions", params=params, headers=seeded.auth("acme"))
    assert listed.status_code == 200, listed.text
    return [s["session_id"] for s in listed.json()["items"]]


# -- the tests ----------------------------------------------------------------------------


def test_a_tenant_signs_in_and_the_overview_shows_the_api_s_totals(
    page: Any, seeded: Seeded
) -> None:
    sign_in(page, seeded, seeded.keys["acme"])
    [stats] = seeded.http.get("/v1/stats", headers=seeded.auth("acme")).json()["groups"]

    assert _figure(page, "sessions") == sum(stats["sessions"].values())
    for state, count in stats["sessions"].items():
        assert _figure(page, f"sessions-{state}") == count
    assert _figure(page, "rounds") == stats["rounds"]
    assert _figure(page, "delta-tokens") == stats["delta_tokens"]
    assert _figure(page, "tokens-saved") == stats["tokens_saved"]
    assert _figure(page, "input-tokens") == stats["usage"]["input_tokens"] > 0
    assert _figure(page, "cached-input-tokens") == stats["usage"]["cached_input_tokens"] > 0
    assert _figure(page, "output-tokens") == stats["usage"]["output_tokens"]
    # Ledger sessions of unpriced models billed nothing: the cost is the gateway's.
    cost = stats["cost"]
    assert page.find_element(*_by('[data-figure="cost-paid"]')).text == f"{cost['paid']} EUR"
    assert page.find_element(*_by('[data-figure="cost-saved"]')).text == f"{cost['saved']} EUR"
    # The key never reaches the browser's storage: only the signed, HttpOnly cookie.
    cookies = page.get_cookies()
    assert [c["name"] for c in cookies] == ["llmsession_ui"]
    assert cookies[0]["httpOnly"] is True
    assert cookies[0]["sameSite"] == "Strict"
    assert seeded.keys["acme"].split("_", 2)[2] not in cookies[0]["value"]
    assert page.execute_script("return document.cookie") == ""
    save_screenshot(page, "overview-tenant")


def _chart_data(driver: Any, chart_id: str) -> Any:
    """What a chart plotted, once it is drawn."""
    return _wait(
        driver,
        lambda d: d.execute_script(
            f"const c = window.llmsessionCharts && window.llmsessionCharts['{chart_id}'];"
            "return c && c.plot.root.querySelector('canvas') ? [c.labels, c.data] : null;"
        ),
    )


def test_the_overview_plots_the_api_s_time_series(page: Any, seeded: Seeded) -> None:
    sign_in(page, seeded, seeded.keys["acme"])
    # The plotted window, as the form shows it (UTC, to the minute).
    start = page.find_element(*_by("#plot-start")).get_attribute("value") + ":00Z"
    end = page.find_element(*_by("#plot-end")).get_attribute("value") + ":00Z"
    auth = seeded.auth("acme")
    window = {"bucket": "hour", "start": start, "end": end}
    split = seeded.http.get(
        "/v1/stats/timeseries", params={**window, "group_by": "provider,model"}, headers=auth
    ).json()["buckets"]
    whole = seeded.http.get("/v1/stats/timeseries", params=window, headers=auth).json()["buckets"]
    assert split
    assert whole

    def expected(field: str) -> dict[tuple[str, int], int]:
        return {(f"{b['provider_id']} / {b['model']}", _epoch(b["start"])): b[field] for b in split}

    for chart_id, name in (("chart-saved", "tokens_saved"), ("chart-rounds-over-time", "rounds")):
        labels, data = _chart_data(page, chart_id)
        x, lines = data[0], data[1:]
        plotted = {
            (label, at): value
            for label, line in zip(labels, lines, strict=True)
            for at, value in zip(x, line, strict=True)
            if value != 0
        }
        assert plotted == {key: value for key, value in expected(name).items() if value != 0}
        assert sorted(labels) == sorted({label for label, _ in expected(name)})

    _, (x, share) = _chart_data(page, "chart-cache-share")
    shares = {_epoch(b["start"]): b["usage"] for b in whole}
    for at, value in zip(x, share, strict=True):
        usage = shares.get(at)
        if usage is None or usage["input_tokens"] == 0:
            assert value is None
        else:
            assert value == pytest.approx(
                100 * usage["cached_input_tokens"] / usage["input_tokens"]
            )
    assert any(value for value in share)  # the gateway session's later rounds hit the cache
    save_screenshot(page, "overview-plots")


def _epoch(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text).timestamp())


def test_the_sessions_table_filters_and_pages_as_the_api(page: Any, seeded: Seeded) -> None:
    from selenium.webdriver.support.ui import Select

    sign_in(page, seeded, seeded.keys["acme"])
    page.get(f"{seeded.url}/ui/sessions")
    Select(page.find_element(*_by("#filter-limit"))).select_by_visible_text("20")
    page.find_element(*_by("#apply-filters")).click()
    _wait(page, lambda d: "limit=20" in d.current_url)
    first = _rows(page)
    assert first == _api_sessions(seeded, limit=20)
    save_screenshot(page, "sessions")
    page.find_element(*_by("#next-page")).click()
    _wait(page, lambda d: "cursor=" in d.current_url)
    api_first = seeded.http.get(
        "/v1/sessions", params={"limit": 20}, headers=seeded.auth("acme")
    ).json()
    assert _rows(page) == _api_sessions(seeded, limit=20, cursor=api_first["next_cursor"])
    assert not page.find_elements(*_by("#next-page"))

    Select(page.find_element(*_by("#filter-state"))).select_by_visible_text("closed")
    page.find_element(*_by("#filter-model")).send_keys("gpt-4o")
    page.find_element(*_by("#apply-filters")).click()
    _wait(page, lambda d: "state=closed" in d.current_url)
    closed = _rows(page)
    assert closed
    assert closed == _api_sessions(seeded, state="closed", model="gpt-4o", limit=20)


def test_the_session_page_plots_the_api_s_rounds(page: Any, seeded: Seeded) -> None:
    sign_in(page, seeded, seeded.keys["acme"])
    session_id = seeded.sessions["rounds"]
    page.get(f"{seeded.url}/ui/sessions/{session_id}")
    plotted = _wait(
        page,
        lambda d: d.execute_script(
            "const c = window.llmsessionCharts && window.llmsessionCharts['chart-rounds'];"
            "return c && c.plot.root.querySelector('canvas') ? c.data : null;"
        ),
    )
    rounds = seeded.http.get(
        f"/v1/sessions/{session_id}/rounds", headers=seeded.auth("acme")
    ).json()["items"]
    session = seeded.http.get(f"/v1/sessions/{session_id}", headers=seeded.auth("acme")).json()
    seq, deltas, saved = plotted
    assert seq == [r["seq"] for r in rounds]
    assert deltas == [r["delta_tokens"] for r in rounds]
    # The last point is the session's tokens_saved as the API reports it.
    assert saved[-1] == session["tokens_saved"]
    assert len(page.find_elements(*_by("#rounds tbody tr"))) == len(rounds)
    save_screenshot(page, "session")


def test_a_gateway_session_plots_the_provider_s_usage_per_round(page: Any, seeded: Seeded) -> None:
    sign_in(page, seeded, seeded.keys["acme"])
    session_id = seeded.sessions["gateway"]
    page.get(f"{seeded.url}/ui/sessions/{session_id}")
    plotted = _wait(
        page,
        lambda d: d.execute_script(
            "const c = window.llmsessionCharts && window.llmsessionCharts['chart-usage'];"
            "return c && c.plot.root.querySelector('canvas') ? c.data : null;"
        ),
    )
    auth = seeded.auth("acme")
    rounds = seeded.http.get(f"/v1/sessions/{session_id}/rounds", headers=auth).json()["items"]
    assert len(rounds) == 3
    seq, input_tokens, cached, output = plotted
    assert seq == [1, 2, 3]
    assert input_tokens == [r["usage"]["input_tokens"] for r in rounds]
    assert cached == [r["usage"]["cached_input_tokens"] for r in rounds]
    assert output == [r["usage"]["output_tokens"] for r in rounds]
    assert max(cached) > 0  # later rounds were served from the provider's cache
    costs = [cell.text for cell in page.find_elements(*_by("#rounds tbody td.cost"))]
    assert costs == [f"{r['cost']['paid']} EUR" for r in rounds]
    save_screenshot(page, "session-gateway")


def test_closing_a_session_asks_first_then_closes_it(page: Any, seeded: Seeded) -> None:
    sign_in(page, seeded, seeded.keys["acme"])
    session_id = seeded.sessions["closable"]
    page.get(f"{seeded.url}/ui/sessions/{session_id}")
    assert page.find_element(*_by("#session-state")).text == "active"
    page.find_element(*_by("#close-session")).click()
    _wait(page, lambda d: d.find_elements(*_by("#confirm-close")))
    save_screenshot(page, "close-confirm")
    page.find_element(*_by("#confirm-close")).click()
    _wait(page, lambda d: d.find_element(*_by("#session-state")).text == "closed")
    assert not page.find_elements(*_by("#close-session"))
    api = seeded.http.get(f"/v1/sessions/{session_id}", headers=seeded.auth("acme")).json()
    assert api["state"] == "closed"


def test_a_script_in_a_model_name_is_shown_as_text(page: Any, seeded: Seeded) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    sign_in(page, seeded, seeded.keys["acme"])
    page.get(f"{seeded.url}/ui/sessions/{seeded.sessions['xss']}")
    assert page.find_element(*_by("#session-model")).text == XSS_MODEL
    page.get(f"{seeded.url}/ui/sessions")
    assert XSS_MODEL in [cell.text for cell in page.find_elements(*_by("#sessions td.model"))]
    page.get(f"{seeded.url}/ui")
    assert XSS_MODEL in [cell.text for cell in page.find_elements(*_by("#by-model td.model"))]
    labels, _ = _chart_data(page, "chart-saved")  # the plot's legend names the model too
    assert f"openai / {XSS_MODEL}" in labels
    legend = page.find_element(*_by("#chart-saved .u-legend")).text
    assert XSS_MODEL in legend
    with pytest.raises(NoAlertPresentException):
        _ = page.switch_to.alert.text


def test_another_tenant_s_session_is_not_found(page: Any, seeded: Seeded) -> None:
    page.allowed_errors = ["404 (Not Found)"]
    sign_in(page, seeded, seeded.keys["acme"])
    page.get(f"{seeded.url}/ui/sessions/{seeded.sessions['globex']}")
    assert page.find_element(*_by("h1")).text == "Error 404"
    assert "globex" not in page.page_source
    page.get(f"{seeded.url}/ui/sessions?tenant=globex")
    assert page.find_element(*_by("h1")).text == "Error 404"


def test_a_form_without_its_csrf_token_is_refused(page: Any, seeded: Seeded) -> None:
    page.allowed_errors = ["403 (Forbidden)"]
    sign_in(page, seeded, seeded.keys["acme"])
    page.execute_script(
        "document.querySelector('form[action=\"/ui/sign-out\"] input[name=csrf_token]').remove()"
    )
    page.find_element(*_by("#sign-out")).click()
    _wait(page, lambda d: d.find_element(*_by("h1")).text == "Error 403")
    assert "CSRF token" in page.find_element(*_by("#error-detail")).text
    # Still signed in: the refused form changed nothing.
    page.get(f"{seeded.url}/ui")
    assert page.current_url == f"{seeded.url}/ui"


def test_the_admin_sees_every_tenant_and_manages_keys(page: Any, seeded: Seeded) -> None:
    sign_in(page, seeded, ADMIN_KEY)
    tenants = [a.text for a in page.find_elements(*_by("#per-tenant tbody td:first-child a"))]
    assert sorted(tenants) == ["acme", "globex"]
    save_screenshot(page, "overview-admin")

    page.get(f"{seeded.url}/ui/tenants")
    page.find_element(*_by("#new-tenant-id")).send_keys("initech")
    page.find_element(*_by("#create-tenant button")).click()
    new_key = _wait(page, lambda d: d.find_element(*_by("#new-api-key"))).get_attribute("value")
    assert new_key.startswith("lls_")
    assert seeded.http.get("/v1/sessions", headers=bearer(new_key)).status_code == 200
    save_screenshot(page, "tenants")

    page.get(f"{seeded.url}/ui/tenants/initech")
    assert new_key not in page.page_source  # shown once, never again
    key_id = new_key.split("_")[1]
    page.find_element(*_by(f'tr[data-key-id="{key_id}"] button')).click()
    _wait(page, lambda d: not d.find_elements(*_by(f'tr[data-key-id="{key_id}"] button')))
    assert seeded.http.get("/v1/sessions", headers=bearer(new_key)).status_code == 401
    save_screenshot(page, "tenant")


def test_signing_out_ends_the_sign_in(page: Any, seeded: Seeded) -> None:
    sign_in(page, seeded, seeded.keys["globex"])
    page.find_element(*_by("#sign-out")).click()
    _wait(page, lambda d: d.current_url == f"{seeded.url}/ui/sign-in")
    assert "llmsession_ui" not in [cookie["name"] for cookie in page.get_cookies()]
    page.get(f"{seeded.url}/ui")
    assert page.current_url == f"{seeded.url}/ui/sign-in"
    save_screenshot(page, "sign-in")


def test_the_api_docs_render_from_local_files(page: Any, seeded: Seeded) -> None:
    page.get(f"{seeded.url}/docs")
    title = _wait(page, lambda d: d.find_elements(*_by(".swagger-ui .info .title")))
    assert title[0].text.startswith("llmsession")
    loaded = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded
    assert all(url.startswith(seeded.url) for url in loaded), loaded
    save_screenshot(page, "api-docs")
