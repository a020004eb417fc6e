"""End to end: the real server as a separate process, over real HTTP on loopback,
on a SQLite file and on the real PostgreSQL; stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from tests.server.conftest import ADMIN, NEW_SESSION, ServerFactory, bearer, free_port
from tests.server.test_sessions_api import NO_USAGE

from llmsession.client import AsyncClient
from llmsession.errors import AuthenticationError, NotFoundError, WrongStateError
from llmsession.states import Active, Closed

TENANTS = ("acme", "globex", "initech")


async def _tenant(client: httpx.AsyncClient, tenant_id: str) -> dict[str, str]:
    response = await client.post("/v1/admin/tenants", json={"tenant_id": tenant_id}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return bearer(response.json()["api_key"])


async def _work(
    client: httpx.AsyncClient, auth: dict[str, str], sessions: int, rounds: int
) -> list[str]:
    """Open sessions and record rounds on all of them concurrently; their ids."""
    ids = []
    for i in range(sessions):
        created = await client.post(
            "/v1/sessions", json={**NEW_SESSION, "model": f"m{i % 2}"}, headers=auth
        )
        assert created.status_code == 201, created.text
        session_id = created.json()["session_id"]
        activated = await client.post(f"/v1/sessions/{session_id}/activate", headers=auth)
        assert activated.status_code == 200, activated.text
        ids.append(session_id)

    async def rounds_on(session_id: str) -> None:
        for n in range(rounds):
            response = await client.post(
                f"/v1/sessions/{session_id}/rounds",
                json={"delta_tokens": n + 1},
                headers={**auth, "Idempotency-Key": f"{session_id}-{n}"},
            )
            assert response.status_code == 201, response.text

    await asyncio.gather(*(rounds_on(session_id) for session_id in ids))
    return ids


async def test_several_tenants_over_real_http(
    start_server: ServerFactory, durable_store_url: str
) -> None:
    server = start_server(durable_store_url)
    sessions, rounds = 4, 10
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        auths = {tenant: await _tenant(client, tenant) for tenant in TENANTS}
        ids = dict(
            zip(
                TENANTS,
                await asyncio.gather(*(_work(client, auths[t], sessions, rounds) for t in TENANTS)),
                strict=True,
            )
        )
        per_session_delta = sum(range(1, rounds + 1))
        for tenant, auth in auths.items():
            stats = (await client.get("/v1/stats", headers=auth)).json()["groups"]
            assert stats == [
                {
                    "provider_id": None,
                    "model": None,
                    "sessions": {"created": 0, "active": sessions, "closed": 0, "expired": 0},
                    "rounds": sessions * rounds,
                    "delta_tokens": sessions * per_session_delta,
                    "tokens_saved": sessions * (rounds * 1000 - per_session_delta),
                    "usage": NO_USAGE,
                    "cost": None,
                }
            ]
            listed = (await client.get("/v1/sessions", headers=auth)).json()["items"]
            assert sorted(s["session_id"] for s in listed) == sorted(ids[tenant])
            for other in TENANTS:
                if other != tenant:
                    foreign = await client.get(f"/v1/sessions/{ids[other][0]}", headers=auth)
                    assert foreign.status_code == 404

        # A retried round is counted once, across the network too.
        first = ids["acme"][0]
        replay = await client.post(
            f"/v1/sessions/{first}/rounds",
            json={"delta_tokens": 1},
            headers={**auths["acme"], "Idempotency-Key": f"{first}-0"},
        )
        assert replay.status_code == 200
        assert replay.headers["idempotent-replayed"] == "true"
        # The first answer: round 1 and the session right after it, not as it is now.
        assert replay.json()["round"]["seq"] == 1
        assert (
            replay.json()["session"]["round_count"],
            replay.json()["session"]["delta_tokens"],
        ) == (1, 1)

        closed = await client.post(f"/v1/sessions/{first}/close", headers=auths["acme"])
        assert closed.json()["state"] == "closed"

        key_id = (await client.get("/v1/admin/tenants/globex/keys", headers=ADMIN)).json()["items"][
            0
        ]["key_id"]
        revoked = await client.post(f"/v1/admin/keys/{key_id}/revoke", headers=ADMIN)
        assert revoked.status_code == 200
        assert (await client.get("/v1/sessions", headers=auths["globex"])).status_code == 401

        metrics = (await client.get("/metrics")).text
        assert (
            'llmsession_rounds_total{model="m0",provider="openai",tenant="initech"} 20.0' in metrics
        )

    assert server.stop() == 0, server.output()
    assert "Traceback" not in server.output()

    # Everything acknowledged is still there after a restart.
    again = start_server(durable_store_url)
    async with httpx.AsyncClient(base_url=again.base_url, timeout=30) as client:
        session = (await client.get(f"/v1/sessions/{first}", headers=auths["acme"])).json()
        assert (session["state"], session["round_count"]) == ("closed", rounds)
        stats = (await client.get("/v1/stats", headers=auths["initech"])).json()["groups"]
        assert stats[0]["rounds"] == sessions * rounds
        assert (await client.get("/v1/sessions", headers=auths["globex"])).status_code == 401
    assert again.stop() == 0, again.output()


async def test_the_python_client_against_the_real_server(
    start_server: ServerFactory, sqlite_url: str
) -> None:
    server = start_server(sqlite_url)
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        key = (
            await http.post("/v1/admin/tenants", json={"tenant_id": "acme"}, headers=ADMIN)
        ).json()["api_key"]
    async with AsyncClient(server.base_url, api_key=key) as client:
        view = await client.create_session(provider_id="openai", model="gpt-4o", initial_tokens=500)
        active = await client.activate_session(view.session_id)
        assert active.state is Active
        first = await client.record_round(view.session_id, 20, idempotency_key="k")
        replay = await client.record_round(view.session_id, 20, idempotency_key="k")
        assert replay.replayed
        assert replay.round == first.round
        closed = await client.close_session(view.session_id)
        assert closed.state is Closed
        assert closed.tokens_saved == 480
        with pytest.raises(WrongStateError):
            await client.record_round(view.session_id, 1)
        with pytest.raises(NotFoundError):
            await client.get_session(uuid.uuid4().hex)
    async with AsyncClient(server.base_url, api_key="lls_nope_nope") as stranger:
        with pytest.raises(AuthenticationError):
            await stranger.list_sessions()
    assert server.stop() == 0, server.output()


async def test_sigterm_mid_load_loses_no_acknowledged_round(
    start_server: ServerFactory, durable_store_url: str
) -> None:
    """Rounds in flight at SIGTERM finish; the rest fail loudly and are retried safely."""
    server = start_server(durable_store_url)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        auth = await _tenant(client, "acme")
        session_ids = await _work(client, auth, sessions=4, rounds=0)
        acked: set[str] = set()
        sent: list[tuple[str, str]] = []
        stop = asyncio.Event()

        async def writer(session_id: str) -> None:
            for n in range(400):  # bounded; SIGTERM comes long before
                key = f"{session_id}-{n}"
                sent.append((session_id, key))
                try:
                    response = await client.post(
                        f"/v1/sessions/{session_id}/rounds",
                        json={"delta_tokens": 1},
                        headers={**auth, "Idempotency-Key": key},
                    )
                except httpx.TransportError:
                    return
                if response.status_code != 201:
                    return
                acked.add(key)
                if len(acked) >= 40:
                    stop.set()

        tasks = [asyncio.create_task(writer(s)) for s in session_ids]
        await asyncio.wait_for(stop.wait(), timeout=60)
        server.process.send_signal(signal.SIGTERM)
        await asyncio.gather(*tasks)
    assert await asyncio.to_thread(server.stop) == 0, server.output()

    again = start_server(durable_store_url)
    async with httpx.AsyncClient(base_url=again.base_url, timeout=30) as client:
        stored_keys: set[str] = set()
        for session_id in session_ids:
            page = await client.get(
                f"/v1/sessions/{session_id}/rounds", params={"limit": 1000}, headers=auth
            )
            stored_keys |= {r["idempotency_key"] for r in page.json()["items"]}
        assert acked <= stored_keys, "an acknowledged round was lost"
        # Retrying everything that was sent records each round exactly once.
        for session_id, key in sent:
            response = await client.post(
                f"/v1/sessions/{session_id}/rounds",
                json={"delta_tokens": 1},
                headers={**auth, "Idempotency-Key": key},
            )
            assert response.status_code in (200, 201), response.text
            assert (response.status_code == 200) == (key in stored_keys)
        total = 0
        for session_id in session_ids:
            session = await client.get(f"/v1/sessions/{session_id}", headers=auth)
            total += session.json()["round_count"]
        assert total == len(sent)
    assert again.stop() == 0, again.output()


def _run_module(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmsession.server"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_bad_settings_exit_2_naming_the_variable() -> None:
    result = _run_module({"LLMSESSION_PORT": "eighty"})
    assert result.returncode == 2
    assert "LLMSESSION_PORT='eighty' is not valid" in result.stderr


def test_an_unreachable_store_exits_1(tmp_path: Path) -> None:
    # A directory cannot be opened as a SQLite database file. The store is checked
    # before the server starts: exit 1, as for every command (tests/test_cli.py).
    result = _run_module(
        {"LLMSESSION_STORE_URL": f"sqlite:///{tmp_path}", "LLMSESSION_PORT": str(free_port())}
    )
    assert result.returncode == 1, result.stderr
