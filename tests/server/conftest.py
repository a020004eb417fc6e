"""Fixtures for the server tests: the app in-process on a real SQLite file, and the
real server as a separate process on SQLite or PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from llmsession.clock import ManualClock
from llmsession.server import ServerSettings, create_app
from llmsession.timestamps import Timestamp

ADMIN_KEY = "test-admin-key-0123456789abcdef"
T0 = Timestamp.from_datetime(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))

NEW_SESSION = {"provider_id": "openai", "model": "gpt-4o", "initial_tokens": 1000}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ADMIN = bearer(ADMIN_KEY)


@dataclass
class Api:
    """An httpx client on one app, with helpers for the common setup steps."""

    client: httpx.AsyncClient
    app: FastAPI
    clock: ManualClock | None = None
    keys: dict[str, str] = field(default_factory=dict[str, str])

    async def tenant(self, tenant_id: str) -> dict[str, str]:
        """Register a tenant; the auth headers of its first key."""
        response = await self.client.post(
            "/v1/admin/tenants", json={"tenant_id": tenant_id}, headers=ADMIN
        )
        assert response.status_code == 201, response.text
        self.keys[tenant_id] = response.json()["api_key"]
        return bearer(response.json()["api_key"])

    async def session(self, auth: dict[str, str], *, activate: bool = True, **fields: Any) -> str:
        """A new session (activated unless told otherwise); its id."""
        response = await self.client.post(
            "/v1/sessions", json={**NEW_SESSION, **fields}, headers=auth
        )
        assert response.status_code == 201, response.text
        session_id: str = response.json()["session_id"]
        if activate:
            activated = await self.client.post(f"/v1/sessions/{session_id}/activate", headers=auth)
            assert activated.status_code == 200, activated.text
        return session_id


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def settings(sqlite_url: str) -> ServerSettings:
    # A long sweep interval: tests that want the sweeper say so.
    return ServerSettings(store_url=sqlite_url, admin_key=ADMIN_KEY, sweep_interval_seconds=3600)


@pytest.fixture
async def api(settings: ServerSettings, clock: ManualClock) -> AsyncIterator[Api]:
    """The app in-process (lifespan included) on a fresh SQLite file and a ManualClock."""
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Api(client, app, clock)


# -- the real server, as a separate process ------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running ``python -m llmsession.server``; ``stop`` sends SIGTERM and waits."""

    process: subprocess.Popen[bytes]
    base_url: str
    log: Path

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server ignored SIGTERM for {timeout} s") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


ServerFactory = Callable[..., ServerProcess]


def _wait_ready(server: ServerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"server exited with {server.process.returncode}:\n{server.output()}"
            )
        try:
            if httpx.get(f"{server.base_url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.stop()
    raise AssertionError(f"server not ready after {timeout} s:\n{server.output()}")


def launch_server(store_url: str, log_dir: Path, **env: str) -> ServerProcess:
    """Start ``python -m llmsession.server`` on a free port and wait until it is ready."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    environment = {
        **os.environ,
        "LLMSESSION_STORE_URL": store_url,
        "LLMSESSION_HOST": "127.0.0.1",
        "LLMSESSION_PORT": str(port),
        "LLMSESSION_ADMIN_KEY": ADMIN_KEY,
        **env,
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmsession.server"],
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log)
    _wait_ready(server)
    return server


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start real server processes; each is stopped (SIGTERM) at the end if still running."""
    started: list[ServerProcess] = []

    def start(store_url: str, **env: str) -> ServerProcess:
        server = launch_server(store_url, tmp_path, **env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.stop()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def durable_store_url(request: pytest.FixtureRequest) -> str:
    """A fresh store on a SQLite file, then on the real PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url
