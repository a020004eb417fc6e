"""The /v1 session routes in-process, on a real SQLite file and a ManualClock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.server.conftest import NEW_SESSION, T0, Api

from llmsession.server.body_limit import MAX_BODY_BYTES

PROBLEM = "application/problem+json"

# What a session or stats group without gateway rounds shows as its usage.
NO_USAGE = {
    "input_tokens": 0,
    "cached_input_tokens": 0,
    "cache_write_tokens": 0,
    "output_tokens": 0,
    "reasoning_tokens": 0,
    "rounds_without_usage": 0,
}


def _problem(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:llmsession:problem:{kind}"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


async def test_a_session_lives_through_its_states(api: Api) -> None:
    auth = await api.tenant("acme")
    created = await api.client.post("/v1/sessions", json=NEW_SESSION, headers=auth)
    assert created.status_code == 201
    session = created.json()
    session_id = session["session_id"]
    assert created.headers["location"] == f"/v1/sessions/{session_id}"
    assert session == {
        "version": 1,
        "session_id": session_id,
        "tenant_id": "acme",
        "provider_id": "openai",
        "model": "gpt-4o",
        "initial_tokens": 1000,
        "state": "created",
        "created_at": T0.isoformat(),
        "activated_at": None,
        "closed_at": None,
        "expired_at": None,
        "round_count": 0,
        "delta_tokens": 0,
        "tokens_saved": 0,
        "ttl_seconds": 3600,
        "expires_at": None,
        "usage": NO_USAGE,
    }

    assert api.clock is not None
    activated_at = api.clock.advance(1)
    activated = await api.client.post(f"/v1/sessions/{session_id}/activate", headers=auth)
    assert activated.status_code == 200
    assert activated.json()["state"] == "active"
    assert activated.json()["activated_at"] == activated_at.isoformat()
    assert activated.json()["expires_at"] == activated_at.plus_seconds(3600).isoformat()

    for delta in (100, 50):
        recorded_at = api.clock.advance(2)
        response = await api.client.post(
            f"/v1/sessions/{session_id}/rounds", json={"delta_tokens": delta}, headers=auth
        )
        assert response.status_code == 201, response.text
        assert "idempotent-replayed" not in response.headers
        assert response.json()["round"]["delta_tokens"] == delta
        assert response.json()["round"]["recorded_at"] == recorded_at.isoformat()
        # Each round pushes the idle deadline.
        assert (
            response.json()["session"]["expires_at"] == recorded_at.plus_seconds(3600).isoformat()
        )
    after = response.json()["session"]
    assert (after["round_count"], after["delta_tokens"], after["tokens_saved"]) == (2, 150, 1850)
    assert response.json()["round"] == {
        "seq": 2,
        "delta_tokens": 50,
        "recorded_at": recorded_at.isoformat(),
        "idempotency_key": None,
        "gateway": False,
        "usage": None,
        "usage_missing": False,
        "cost": None,
    }

    read = await api.client.get(f"/v1/sessions/{session_id}", headers=auth)
    assert read.json() == after

    closed_at = api.clock.advance(3)
    closed = await api.client.post(f"/v1/sessions/{session_id}/close", headers=auth)
    assert closed.status_code == 200
    assert closed.json()["state"] == "closed"
    assert closed.json()["closed_at"] == closed_at.isoformat()
    assert closed.json()["expires_at"] is None
    assert closed.json()["tokens_saved"] == 1850


async def test_the_ttl_comes_from_the_request_or_the_default(api: Api) -> None:
    auth = await api.tenant("acme")
    short = await api.client.post(
        "/v1/sessions", json={**NEW_SESSION, "ttl_seconds": 5}, headers=auth
    )
    assert short.json()["ttl_seconds"] == 5
    default = await api.client.post("/v1/sessions", json=NEW_SESSION, headers=auth)
    assert default.json()["ttl_seconds"] == 3600


async def test_a_replayed_idempotency_key_returns_the_first_round_and_counts_once(
    api: Api,
) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    url = f"/v1/sessions/{session_id}/rounds"
    first = await api.client.post(
        url, json={"delta_tokens": 10}, headers={**auth, "Idempotency-Key": "req-1"}
    )
    assert first.status_code == 201
    assert first.json()["round"]["idempotency_key"] == "req-1"
    assert api.clock is not None
    api.clock.advance(5)
    again = await api.client.post(
        url, json={"delta_tokens": 10}, headers={**auth, "Idempotency-Key": "req-1"}
    )
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()

    clash = await api.client.post(
        url, json={"delta_tokens": 11}, headers={**auth, "Idempotency-Key": "req-1"}
    )
    _problem(clash, 409, "idempotency-conflict")
    session = (await api.client.get(f"/v1/sessions/{session_id}", headers=auth)).json()
    assert (session["round_count"], session["delta_tokens"]) == (1, 10)


async def test_a_replay_answers_the_first_body_after_more_rounds_and_a_close(api: Api) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    url = f"/v1/sessions/{session_id}/rounds"
    keyed = {**auth, "Idempotency-Key": "req-1"}
    first = await api.client.post(url, json={"delta_tokens": 10}, headers=keyed)
    assert first.status_code == 201
    assert api.clock is not None
    api.clock.advance(5)
    later = await api.client.post(url, json={"delta_tokens": 7}, headers=auth)
    assert later.json()["session"]["round_count"] == 2
    for close in (False, True):
        if close:
            closed = await api.client.post(f"/v1/sessions/{session_id}/close", headers=auth)
            assert closed.json()["state"] == "closed"
        again = await api.client.post(url, json={"delta_tokens": 10}, headers=keyed)
        assert (again.status_code, again.headers["idempotent-replayed"]) == (200, "true")
        assert again.json() == first.json()
        assert again.json()["session"]["state"] == "active"
        assert again.json()["session"]["round_count"] == 1


async def test_a_call_the_state_does_not_allow_is_a_409_naming_the_states(api: Api) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth, activate=False)
    round_ = await api.client.post(
        f"/v1/sessions/{session_id}/rounds", json={"delta_tokens": 1}, headers=auth
    )
    body = _problem(round_, 409, "wrong-state")
    assert (body["method"], body["required_state"], body["current_state"]) == (
        "record_delta",
        "active",
        "created",
    )
    close = await api.client.post(f"/v1/sessions/{session_id}/close", headers=auth)
    assert _problem(close, 409, "wrong-state")["method"] == "close"

    await api.client.post(f"/v1/sessions/{session_id}/activate", headers=auth)
    again = await api.client.post(f"/v1/sessions/{session_id}/activate", headers=auth)
    body = _problem(again, 409, "wrong-state")
    assert (body["required_state"], body["current_state"]) == ("created", "active")


async def test_a_round_after_the_ttl_is_refused_and_the_session_is_expired(api: Api) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth, ttl_seconds=60)
    assert api.clock is not None
    deadline = api.clock.now.plus_seconds(60)
    api.clock.advance(61)
    late = await api.client.post(
        f"/v1/sessions/{session_id}/rounds", json={"delta_tokens": 1}, headers=auth
    )
    body = _problem(late, 409, "session-expired")
    assert (body["method"], body["required_state"], body["current_state"]) == (
        "record_delta",
        "active",
        "expired",
    )
    session = (await api.client.get(f"/v1/sessions/{session_id}", headers=auth)).json()
    assert session["state"] == "expired"
    assert session["expired_at"] == deadline.isoformat()
    assert session["round_count"] == 0
    close = await api.client.post(f"/v1/sessions/{session_id}/close", headers=auth)
    _problem(close, 409, "session-expired")


async def test_missing_and_malformed_session_ids(api: Api) -> None:
    auth = await api.tenant("acme")
    missing = "019abc12-3456-7def-8123-456789abcdef"
    for method, path in [
        ("GET", "/v1/sessions/{}"),
        ("POST", "/v1/sessions/{}/activate"),
        ("POST", "/v1/sessions/{}/close"),
        ("GET", "/v1/sessions/{}/rounds"),
    ]:
        response = await api.client.request(method, path.format(missing), headers=auth)
        _problem(response, 404, "not-found")
        bad = await api.client.request(method, path.format("not-a-uuid"), headers=auth)
        body = _problem(bad, 422, "invalid-input")
        assert body["errors"][0]["loc"] == ["path", "session_id"]
        assert "not a session id" in body["errors"][0]["msg"]
    rounds = await api.client.post(
        f"/v1/sessions/{missing}/rounds", json={"delta_tokens": 1}, headers=auth
    )
    _problem(rounds, 404, "not-found")
    bad = await api.client.post("/v1/sessions/zzz/rounds", json={"delta_tokens": 1}, headers=auth)
    assert _problem(bad, 422, "invalid-input")["errors"][0]["loc"] == ["path", "session_id"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"delta_tokens": -1}, ["body", "delta_tokens"]),
        ({"delta_tokens": 2**63}, ["body", "delta_tokens"]),
        ({"delta_tokens": 10**400}, ["body", "delta_tokens"]),
        ({"delta_tokens": 1.0}, ["body", "delta_tokens"]),
        ({"delta_tokens": "5"}, ["body", "delta_tokens"]),
        ({"delta_tokens": True}, ["body", "delta_tokens"]),
        ({"delta_tokens": None}, ["body", "delta_tokens"]),
        ({}, ["body", "delta_tokens"]),
        ({"delta_tokens": 1, "recorded_at": "2020-01-01T00:00:00Z"}, ["body", "recorded_at"]),
        ([1], ["body"]),
        ("x", ["body"]),
    ],
)
async def test_bad_round_bodies_are_422_and_change_nothing(
    api: Api, body: object, loc: list[object]
) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    response = await api.client.post(f"/v1/sessions/{session_id}/rounds", json=body, headers=auth)
    problem = _problem(response, 422, "invalid-input")
    assert problem["errors"][0]["loc"] == loc
    assert problem["errors"][0]["msg"]
    session = (await api.client.get(f"/v1/sessions/{session_id}", headers=auth)).json()
    assert session["round_count"] == 0


@pytest.mark.parametrize(
    ("content", "content_type", "loc"),
    [
        (b'{"delta_tokens": ', "application/json", ["body"]),
        (b"\xff\xfe", "application/json", ["body"]),
        (b'{"delta_tokens": 1}', "text/plain", ["header", "Content-Type"]),
        (b'{"delta_tokens": 1}', None, ["header", "Content-Type"]),
        (b"", "application/json", ["body"]),
        (b"delta_tokens=1", "application/x-www-form-urlencoded", ["header", "Content-Type"]),
    ],
)
async def test_bodies_that_are_not_json_are_422(
    api: Api, content: bytes, content_type: str | None, loc: list[object]
) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    headers = {**auth, **({"Content-Type": content_type} if content_type else {})}
    response = await api.client.post(
        f"/v1/sessions/{session_id}/rounds", content=content, headers=headers
    )
    assert _problem(response, 422, "invalid-input")["errors"][0]["loc"] == loc
    # Create's body is read by FastAPI itself, which would report a body not labelled
    # JSON as "not a dictionary": the label is what is named.
    created = await api.client.post("/v1/sessions", content=content, headers=headers)
    assert _problem(created, 422, "invalid-input")["errors"][0]["loc"][: len(loc)] == loc


async def test_a_json_body_with_a_json_suffix_type_is_accepted(api: Api) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    response = await api.client.post(
        f"/v1/sessions/{session_id}/rounds",
        content=b'{"delta_tokens": 3}',
        headers={**auth, "Content-Type": "application/vnd.llmsession+json; charset=utf-8"},
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "key",
    # A server reads header values as Latin-1: "é" sent as UTF-8 arrives as "Ã©".
    ["", "x" * 256, "tab\there", "\x7f", "r\u00e9try".encode()],
)
async def test_bad_idempotency_keys_are_422(api: Api, key: str | bytes) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    response = await api.client.post(
        f"/v1/sessions/{session_id}/rounds",
        json={"delta_tokens": 1},
        headers={**auth, "Idempotency-Key": key},
    )
    body = _problem(response, 422, "invalid-input")
    assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    if isinstance(key, bytes):
        assert "must be ASCII" in body["detail"]
    session = (await api.client.get(f"/v1/sessions/{session_id}", headers=auth)).json()
    assert session["round_count"] == 0


async def test_two_idempotency_keys_are_422_and_record_nothing(api: Api) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    response = await api.client.post(
        f"/v1/sessions/{session_id}/rounds",
        json={"delta_tokens": 1},
        headers=[*auth.items(), ("Idempotency-Key", "k1"), ("Idempotency-Key", "k1")],
    )
    body = _problem(response, 422, "invalid-input")
    assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    session = (await api.client.get(f"/v1/sessions/{session_id}", headers=auth)).json()
    assert session["round_count"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**NEW_SESSION, "provider_id": ""}, "provider_id"),
        ({**NEW_SESSION, "provider_id": " openai"}, "provider_id"),
        ({**NEW_SESSION, "model": "x" * 201}, "model"),
        ({**NEW_SESSION, "model": "a\nb"}, "model"),
        ({**NEW_SESSION, "initial_tokens": -5}, "initial_tokens"),
        ({**NEW_SESSION, "initial_tokens": 2**64}, "initial_tokens"),
        ({**NEW_SESSION, "ttl_seconds": 0}, "ttl_seconds"),
        ({**NEW_SESSION, "ttl_seconds": 1.5}, "ttl_seconds"),
        ({**NEW_SESSION, "tenant_id": "other"}, "tenant_id"),
        ({**NEW_SESSION, "created_at": "2020-01-01T00:00:00Z"}, "created_at"),
        ({"model": "m", "initial_tokens": 1}, "provider_id"),
    ],
)
async def test_bad_new_sessions_are_422_naming_the_field(
    api: Api, body: dict[str, object], field: str
) -> None:
    auth = await api.tenant("acme")
    response = await api.client.post("/v1/sessions", json=body, headers=auth)
    problem = _problem(response, 422, "invalid-input")
    assert ["body", field] in [error["loc"] for error in problem["errors"]]
    listed = await api.client.get("/v1/sessions", headers=auth)
    assert listed.json()["items"] == []


async def test_listing_filters_pages_newest_first(api: Api) -> None:
    auth = await api.tenant("acme")
    assert api.clock is not None
    ids = []
    for i in range(5):
        api.clock.advance(1)
        model = "small" if i % 2 else "large"
        ids.append(await api.session(auth, activate=i < 3, model=model))
    listed = await api.client.get("/v1/sessions", headers=auth)
    assert [s["session_id"] for s in listed.json()["items"]] == ids[::-1]
    assert listed.json()["next_cursor"] is None

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, str | int] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await api.client.get("/v1/sessions", params=params, headers=auth)).json()
        seen += [s["session_id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]

    active = await api.client.get("/v1/sessions", params={"state": "active"}, headers=auth)
    assert [s["session_id"] for s in active.json()["items"]] == ids[2::-1]
    small = await api.client.get("/v1/sessions", params={"model": "small"}, headers=auth)
    assert [s["session_id"] for s in small.json()["items"]] == [ids[3], ids[1]]
    after = T0.plus_seconds(2).isoformat()
    newer = await api.client.get("/v1/sessions", params={"created_after": after}, headers=auth)
    assert len(newer.json()["items"]) == 3
    before = await api.client.get(
        "/v1/sessions", params={"created_before": after, "provider_id": "openai"}, headers=auth
    )
    assert [s["session_id"] for s in before.json()["items"]] == [ids[0]]


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 1001}, ["query", "limit"]),
        ({"limit": "ten"}, ["query", "limit"]),
        ({"limit": 10**30}, ["query", "limit"]),
        ({"state": "sleeping"}, ["query", "state"]),
        ({"created_after": "yesterday"}, ["query", "created_after"]),
        ({"created_before": "2026-01-01T00:00:00"}, ["query", "created_before"]),
        ({"provider_id": " x"}, ["query", "provider_id"]),
        ({"limt": 5}, ["query", "limt"]),
        ({"cursor": "not-a-cursor"}, []),
    ],
)
async def test_bad_list_queries_are_422(
    api: Api, params: dict[str, Any], loc: list[object]
) -> None:
    auth = await api.tenant("acme")
    response = await api.client.get("/v1/sessions", params=params, headers=auth)
    assert _problem(response, 422, "invalid-input")["errors"][0]["loc"] == loc


async def test_rounds_are_listed_in_order_with_a_cursor(api: Api) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    for delta in range(1, 6):
        await api.client.post(
            f"/v1/sessions/{session_id}/rounds", json={"delta_tokens": delta}, headers=auth
        )
    url = f"/v1/sessions/{session_id}/rounds"
    first = (await api.client.get(url, params={"limit": 2}, headers=auth)).json()
    assert [r["seq"] for r in first["items"]] == [1, 2]
    second = (
        await api.client.get(url, params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth)
    ).json()
    assert [r["seq"] for r in second["items"]] == [3, 4]
    last = (
        await api.client.get(url, params={"cursor": second["next_cursor"]}, headers=auth)
    ).json()
    assert ([r["seq"] for r in last["items"]], last["next_cursor"]) == ([5], None)
    # after is a plain filter by seq.
    rest = (await api.client.get(url, params={"after": 2}, headers=auth)).json()
    assert [r["delta_tokens"] for r in rest["items"]] == [3, 4, 5]
    assert rest["next_cursor"] is None
    for params in ({"after": -1}, {"after": 2**63}, {"limit": 0}, {"cursor": "x" * 201}):
        bad = await api.client.get(url, params=params, headers=auth)
        _problem(bad, 422, "invalid-input")
    other = await api.session(auth)
    sessions_cursor = (
        await api.client.get("/v1/sessions", params={"limit": 1}, headers=auth)
    ).json()["next_cursor"]
    assert sessions_cursor is not None
    for cursor, message in (
        ("x", "not one this service gave out for a page of rounds"),
        ("2", "not one this service gave out for a page of rounds"),
        (sessions_cursor, "listing of sessions, not of rounds"),
    ):
        bad = await api.client.get(url, params={"cursor": cursor}, headers=auth)
        assert message in _problem(bad, 422, "invalid-input")["detail"]
    foreign = await api.client.get(
        f"/v1/sessions/{other}/rounds", params={"cursor": first["next_cursor"]}, headers=auth
    )
    assert f"rounds of session {session_id}" in _problem(foreign, 422, "invalid-input")["detail"]


async def test_stats_group_by_provider_and_model(api: Api) -> None:
    auth = await api.tenant("acme")
    a = await api.session(auth, model="m1")
    await api.session(auth, model="m2", activate=False)
    await api.client.post(f"/v1/sessions/{a}/rounds", json={"delta_tokens": 200}, headers=auth)
    total = (await api.client.get("/v1/stats", headers=auth)).json()
    assert total == {
        "groups": [
            {
                "provider_id": None,
                "model": None,
                "sessions": {"created": 1, "active": 1, "closed": 0, "expired": 0},
                "rounds": 1,
                "delta_tokens": 200,
                "tokens_saved": 800,
                "usage": NO_USAGE,
                "cost": None,
            }
        ]
    }
    by_model = await api.client.get(
        "/v1/stats", params=[("group_by", "model"), ("group_by", "model")], headers=auth
    )
    assert [(g["provider_id"], g["model"]) for g in by_model.json()["groups"]] == [
        (None, "m1"),
        (None, "m2"),
    ]
    # Repeated or comma-separated, as the time series takes them.
    for params in (
        [("group_by", "provider"), ("group_by", "model")],
        {"group_by": "provider,model"},
    ):
        both = await api.client.get("/v1/stats", params=params, headers=auth)
        assert [(g["provider_id"], g["model"]) for g in both.json()["groups"]] == [
            ("openai", "m1"),
            ("openai", "m2"),
        ]
    bad = await api.client.get("/v1/stats", params={"group_by": "tenant"}, headers=auth)
    problem = _problem(bad, 422, "invalid-input")
    assert problem["errors"][0]["loc"] == ["query", "group_by"]
    assert "group_by takes names from 'provider', 'model', got 'tenant'" in problem["detail"]


async def test_timeseries_buckets_rounds_by_hour_and_group(api: Api) -> None:
    auth = await api.tenant("acme")
    assert api.clock is not None
    a = await api.session(auth, model="m1")
    await api.client.post(f"/v1/sessions/{a}/rounds", json={"delta_tokens": 200}, headers=auth)
    api.clock.advance(3600)
    b = await api.session(auth, model="m2")
    await api.client.post(f"/v1/sessions/{b}/rounds", json={"delta_tokens": 1300}, headers=auth)
    url = "/v1/stats/timeseries"
    # T0 is 09:00; a start inside the hour reads that hour.
    window = {"start": T0.plus_seconds(1800).isoformat(), "end": T0.plus_seconds(7200).isoformat()}
    hours = await api.client.get(url, params={"bucket": "hour", **window}, headers=auth)
    assert hours.status_code == 200, hours.text
    assert hours.json() == {
        "bucket": "hour",
        "start": T0.isoformat(),
        "end": T0.plus_seconds(7200).isoformat(),
        "buckets": [
            {
                "start": T0.isoformat(),
                "provider_id": None,
                "model": None,
                "rounds": 1,
                "delta_tokens": 200,
                "tokens_saved": 800,
                "usage": NO_USAGE,
                "sessions_started": 1,
            },
            {
                "start": T0.plus_seconds(3600).isoformat(),
                "provider_id": None,
                "model": None,
                "rounds": 1,
                "delta_tokens": 1300,
                "tokens_saved": -300,
                "usage": NO_USAGE,
                "sessions_started": 1,
            },
        ],
    }
    # Comma-separated or repeated, the same grouping; day buckets start at midnight.
    for group_by in (
        [("group_by", "provider,model")],
        [("group_by", "model"), ("group_by", "provider")],
    ):
        days = await api.client.get(
            url, params=[("bucket", "day"), *window.items(), *group_by], headers=auth
        )
        assert days.status_code == 200, days.text
        body = days.json()
        assert body["start"] == "2026-03-01T00:00:00.000000Z"
        assert [
            (b["start"], b["provider_id"], b["model"], b["rounds"]) for b in body["buckets"]
        ] == [
            ("2026-03-01T00:00:00.000000Z", "openai", "m1", 1),
            ("2026-03-01T00:00:00.000000Z", "openai", "m2", 1),
        ]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"bucket": "week"}, "bucket"),
        ({"start": "yesterday"}, "not an ISO 8601 timestamp"),
        ({"end": "2026-03-01T08:00:00Z"}, "must be before end"),
        ({"end": "2026-04-02T09:00:00Z"}, "spans at most 31 days"),
        ({"group_by": "provider,tenant"}, "group_by takes names from 'provider', 'model'"),
    ],
)
async def test_timeseries_refuses_bad_parameters_saying_why(
    api: Api, params: dict[str, str], message: str
) -> None:
    auth = await api.tenant("acme")
    query = {
        "bucket": "hour",
        "start": "2026-03-01T09:00:00Z",
        "end": "2026-03-01T10:00:00Z",
        **params,
    }
    response = await api.client.get("/v1/stats/timeseries", params=query, headers=auth)
    problem = _problem(response, 422, "invalid-input")
    assert message in problem["detail"]
    if "group_by" in params:
        assert problem["errors"][0]["loc"] == ["query", "group_by"]
    missing = await api.client.get("/v1/stats/timeseries", params={"bucket": "hour"}, headers=auth)
    assert "start" in _problem(missing, 422, "invalid-input")["detail"]


async def test_unknown_routes_and_methods_are_problems(api: Api) -> None:
    auth = await api.tenant("acme")
    missing = await api.client.get("/v1/nothing-here", headers=auth)
    _problem(missing, 404, "not-found")
    wrong = await api.client.delete("/v1/sessions", headers=auth)
    _problem(wrong, 405, "method-not-allowed")
    assert "POST" in wrong.headers["allow"]


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    assert (await api.client.get("/readyz")).json() == {"status": "ready"}
    assert (await api.client.get("/readyz", params={"verbose": 1})).status_code == 422


async def test_bodies_over_64_kib_are_413_however_they_are_sent(api: Api) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    url = f"/v1/sessions/{session_id}/rounds"
    json_type = {**auth, "Content-Type": "application/json"}
    at_limit = b'{"delta_tokens": 1}'.ljust(MAX_BODY_BYTES, b" ")
    accepted = await api.client.post(url, content=at_limit, headers=json_type)
    assert accepted.status_code == 201, accepted.text
    over = at_limit + b" "
    for target in (url, "/v1/sessions", f"{url}?via=router"):
        _problem(await api.client.post(target, content=over, headers=json_type), 413, "too-large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b" " * 30_000
        yield b'{"delta_tokens": 1}'

    streamed = await api.client.post(url, content=chunks(), headers=json_type)
    _problem(streamed, 413, "too-large")
    session = (await api.client.get(f"/v1/sessions/{session_id}", headers=auth)).json()
    assert session["round_count"] == 1


async def test_a_client_gone_before_its_body_gets_no_answer_and_no_error(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    auth = await api.tenant("acme")
    session_id = await api.session(auth)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for path in (f"/v1/sessions/{session_id}/rounds", "/v1/sessions"):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"content-type", b"application/json"),
                (b"authorization", auth["Authorization"].encode()),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        await api.app(scope, receive, send)
    assert sent == []
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    session = (await api.client.get(f"/v1/sessions/{session_id}", headers=auth)).json()
    assert session["round_count"] == 0
