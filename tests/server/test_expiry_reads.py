"""Reads over HTTP never show a session as active past its idle deadline.

The app runs in-process on a ManualClock with a sweeper that does not run
during the test (an hour's interval), on every backend: GET, the listing (with
and without a state filter) and the stats show a due session as expired at its
deadline, before any sweep.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.server.conftest import ADMIN_KEY, T0, Api

from llmsession.server import ServerSettings


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
def settings(request: pytest.FixtureRequest) -> ServerSettings:
    backend: str = request.param
    url = "memory://" if backend == "memory" else request.getfixturevalue(f"{backend}_url")
    return ServerSettings(store_url=url, admin_key=ADMIN_KEY, sweep_interval_seconds=3600)


async def _ids(api: Api, auth: dict[str, str], **params: Any) -> list[str]:
    response = await api.client.get("/v1/sessions", params=params, headers=auth)
    assert response.status_code == 200, response.text
    return [item["session_id"] for item in response.json()["items"]]


async def test_reads_show_a_due_session_expired_before_any_sweep(api: Api) -> None:
    assert api.clock is not None
    auth = await api.tenant("acme")
    due = await api.session(auth, ttl_seconds=60)
    recorded = await api.client.post(
        f"/v1/sessions/{due}/rounds", json={"delta_tokens": 100}, headers=auth
    )
    assert recorded.status_code == 201, recorded.text
    live = await api.session(auth, ttl_seconds=600)
    api.clock.now = T0.plus_seconds(60)  # due's deadline: its last activity was at T0

    response = await api.client.get(f"/v1/sessions/{due}", headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "expired"
    assert body["expired_at"] == T0.plus_seconds(60).isoformat()
    assert body["expires_at"] is None
    assert (body["round_count"], body["delta_tokens"]) == (1, 100)

    assert await _ids(api, auth, state="active") == [live]
    assert await _ids(api, auth, state="expired") == [due]
    listed = await api.client.get("/v1/sessions", headers=auth)
    states = {item["session_id"]: item["state"] for item in listed.json()["items"]}
    assert states == {due: "expired", live: "active"}

    stats = await api.client.get("/v1/stats", headers=auth)
    assert stats.status_code == 200, stats.text
    [group] = stats.json()["groups"]
    assert group["sessions"] == {"created": 0, "active": 1, "closed": 0, "expired": 1}

    # The round and close that the reads predicted are refused as expired.
    late = await api.client.post(
        f"/v1/sessions/{due}/rounds", json={"delta_tokens": 1}, headers=auth
    )
    assert late.status_code == 409, late.text
    again = await api.client.get(f"/v1/sessions/{due}", headers=auth)
    assert again.json() == body
