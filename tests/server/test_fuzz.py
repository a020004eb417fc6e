"""Schemathesis fuzzes the real server from its own OpenAPI schema.

One test per operation and generation mode (positive: data the schema allows;
negative: data it does not), each bounded by max_examples. Requests carry a
real tenant key (the admin key on admin routes), and half the session ids are
real sessions of that tenant, in each state; the gateway routes forward to the
fake provider. The checks: no 5xx, invalid data
is refused, and every response (status, content type, headers, body) matches
the schema.

Schemathesis' own pytest plugin (``from_fixture``) does not run under this
pytest, so the operations' strategies are driven with Hypothesis directly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.fake_provider.conftest import API_KEY, fake_command, launch
from tests.server.conftest import ADMIN, ADMIN_KEY, NEW_SESSION, bearer, free_port

from llmsession.server import ServerSettings, create_app

MAX_EXAMPLES = 25

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _cases() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) of every operation; negative only where there is input to spoil."""
    schema = create_app(ServerSettings(store_url="memory://")).openapi()
    cases = []
    for path, operations in schema["paths"].items():
        if path == "/metrics":  # Prometheus text: no JSON schema to conform to
            continue
        for method, operation in operations.items():
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if {"parameters", "requestBody", "security"} & set(operation):
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return sorted(cases)


@dataclass
class World:
    base_url: str
    tenant_key: str
    session_ids: list[str]
    schema: Any


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """One real server for the whole module, with a tenant and sessions in each state,
    and the fake provider behind its gateway routes (unconfigured they answer 501)."""
    directory = tmp_path_factory.mktemp("fuzz")
    fake = launch(fake_command("--api-key", API_KEY), directory / "fake.log")
    config = directory / "gateway.toml"
    config.write_text(
        f'[providers.fake]\nkind = "openai"\nbase_url = "{fake.base_url}"\n'
        'api_key_env = "FAKE_UPSTREAM_KEY"\n',
        encoding="utf-8",
    )
    port = free_port()
    env = {
        **os.environ,
        "LLMSESSION_STORE_URL": f"sqlite:///{directory / 'sessions.db'}",
        "LLMSESSION_PORT": str(port),
        "LLMSESSION_ADMIN_KEY": ADMIN_KEY,
        "LLMSESSION_CONFIG": str(config),
        "FAKE_UPSTREAM_KEY": API_KEY,
    }
    log = directory / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmsession.server"], env=env, stdout=sink, stderr=sink
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base_url, process, log)
        yield _populate(base_url)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        fake.stop()
    output = log.read_text(errors="replace")
    assert code == 0, output
    assert "Traceback" not in output, output


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise AssertionError(log.read_text(errors="replace"))
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("server not ready")


def _populate(base_url: str) -> World:
    with httpx.Client(base_url=base_url) as client:
        created = client.post("/v1/admin/tenants", json={"tenant_id": "fuzz"}, headers=ADMIN)
        key = created.json()["api_key"]
        auth = bearer(key)
        ids = []
        for state in ("created", "active", "closed"):
            response = client.post("/v1/sessions", json=NEW_SESSION, headers=auth)
            session_id = response.json()["session_id"]
            if state != "created":
                client.post(f"/v1/sessions/{session_id}/activate", headers=auth)
                client.post(
                    f"/v1/sessions/{session_id}/rounds", json={"delta_tokens": 5}, headers=auth
                )
            if state == "closed":
                client.post(f"/v1/sessions/{session_id}/close", headers=auth)
            ids.append(session_id)
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")

    @schema.auth(refresh_interval=None)
    class BearerKeys:
        """The admin key on admin routes, the tenant's key elsewhere (unless a case drops it)."""

        def get(self, case: Any, context: Any) -> str:
            return ADMIN_KEY if case.path.startswith("/v1/admin") else key

        def set(self, case: Any, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return World(base_url, key, ids, schema)


@pytest.mark.parametrize(("method", "path", "mode"), _cases())
def test_the_server_keeps_its_schema(
    world: World, method: str, path: str, mode: GenerationMode
) -> None:
    operation = world.schema[path][method]

    @given(case=operation.as_strategy(mode), data=st.data())
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case: Any, data: st.DataObject) -> None:
        parameters = case.path_parameters or {}
        # Only valid cases get a real id: a negative case must stay invalid.
        if (
            mode is GenerationMode.POSITIVE
            and "session_id" in parameters
            and data.draw(st.booleans(), label="a real session")
        ):
            parameters["session_id"] = data.draw(st.sampled_from(world.session_ids))
        case.call_and_validate(base_url=world.base_url, checks=CHECKS)

    exercise()
