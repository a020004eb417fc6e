"""A running llmsession server with the fake provider behind it, as the end-to-end tests use them.

Each wire format's test module subclasses :class:`GatewayProcesses` with its own
SDK client and its own view of the fake's billing log.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from tests.fake_provider.conftest import FakeProcess
from tests.server.conftest import ADMIN, ServerProcess, bearer


class Closable(Protocol):
    def close(self) -> None: ...


@dataclass
class GatewayProcesses:
    """The server and the fake, and the SDK clients made on them (closed by ``close``)."""

    server: ServerProcess
    fake: FakeProcess
    clients: list[Closable] = field(default_factory=list[Closable])

    def tenant(self) -> str:
        """A new tenant's API key."""
        tenant_id = f"t{uuid.uuid4().hex[:10]}"
        response = httpx.post(
            f"{self.server.base_url}/v1/admin/tenants", json={"tenant_id": tenant_id}, headers=ADMIN
        )
        assert response.status_code == 201, response.text
        key: str = response.json()["api_key"]
        return key

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def get(self, key: str, path: str) -> Any:
        response = httpx.get(f"{self.server.base_url}{path}", headers=bearer(key), timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def usage(self, key: str) -> dict[str, int]:
        """The tenant's usage totals (it has one provider and model)."""
        (group,) = self.get(key, "/v1/stats")["groups"]
        usage: dict[str, int] = group["usage"]
        return usage
