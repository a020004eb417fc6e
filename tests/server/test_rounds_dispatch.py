"""The fast path for rounds answers exactly as FastAPI's route for rounds does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.server.conftest import ADMIN, ADMIN_KEY, T0, Api

from llmsession.clock import ManualClock
from llmsession.server import ServerSettings, create_app

MISSING = "019abc12-3456-7def-8123-456789abcdef"


async def _transcript(tmp_path: Path, *, fast_rounds: bool) -> list[Any]:
    settings = ServerSettings(
        store_url=f"sqlite:///{tmp_path / f'fast-{fast_rounds}.db'}",
        admin_key=ADMIN_KEY,
        sweep_interval_seconds=3600,
    )
    clock = ManualClock(T0)
    app = create_app(settings, clock=clock, fast_rounds=fast_rounds)
    transcript: list[Any] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://testserver"
        ) as client,
    ):
        api = Api(client, app, clock)
        auth = await api.tenant("acme")
        active = await api.session(auth)
        created = await api.session(auth, activate=False)
        json_type = {"Content-Type": "application/json"}
        requests: list[
            tuple[str, dict[str, str], bytes] | tuple[str, dict[str, str], bytes, dict[str, str]]
        ] = [
            (active, auth, b'{"delta_tokens": 5}'),
            (active, {**auth, "Idempotency-Key": "k"}, b'{"delta_tokens": 6}'),
            (active, {**auth, "Idempotency-Key": "k"}, b'{"delta_tokens": 6}'),
            (active, {**auth, "Idempotency-Key": "k"}, b'{"delta_tokens": 7}'),
            (active, {**auth, "Idempotency-Key": ""}, b'{"delta_tokens": 7}'),
            (active, auth, b'{"delta_tokens": -1}'),
            (active, auth, b'{"delta_tokens": 1, "extra": 2}'),
            (active, auth, b"{"),
            (active, auth, b""),
            (active, {**auth, "Content-Type": "text/plain"}, b'{"delta_tokens": 1}'),
            (active, {}, b'{"delta_tokens": 1}'),
            (active, {"Authorization": "Bearer lls_x_y"}, b'{"delta_tokens": 1}'),
            (active, ADMIN, b'{"delta_tokens": 1}'),
            ("not-an-id", auth, b'{"delta_tokens": 1}'),
            (MISSING, auth, b'{"delta_tokens": 1}'),
            (created, auth, b'{"delta_tokens": 1}'),
            (active, auth, b'{"delta_tokens": 1}', {"x": "1"}),
        ]
        for session_id, headers, body, *params in requests:
            clock.advance(1)
            response = await client.post(
                f"/v1/sessions/{session_id}/rounds",
                content=body,
                headers={**json_type, **headers},
                params=params[0] if params else None,
            )
            text = response.text.replace(active, "ACTIVE").replace(created, "CREATED")
            transcript.append(
                (
                    response.status_code,
                    response.headers.get("content-type"),
                    response.headers.get("www-authenticate"),
                    response.headers.get("idempotent-replayed"),
                    text,
                )
            )
    return transcript


@pytest.fixture
async def transcripts(tmp_path: Path) -> tuple[list[Any], list[Any]]:
    return (
        await _transcript(tmp_path, fast_rounds=True),
        await _transcript(tmp_path, fast_rounds=False),
    )


async def test_both_paths_answer_alike(transcripts: tuple[list[Any], list[Any]]) -> None:
    fast, routed = transcripts
    assert [entry[0] for entry in fast] == [
        201, 201, 200, 409, 422, 422, 422, 422, 422, 422, 401, 401, 403, 422, 404, 409, 422,
    ]  # fmt: skip
    for fast_entry, routed_entry in zip(fast, routed, strict=True):
        assert fast_entry == routed_entry
