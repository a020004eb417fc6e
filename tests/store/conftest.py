"""Fixtures for the store tests: one ``store`` per backend, all on a ManualClock.

``store_url`` is parametrized over every backend; a test that only makes sense
for durable backends re-parametrizes it with ``DURABLE`` (indirect).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest

from llmsession.clock import ManualClock
from llmsession.ids import SessionId, TenantId
from llmsession.store import (
    DEFAULT_TTL_SECONDS,
    Round,
    SessionQuery,
    SessionStore,
    StoredSession,
    open_store,
)
from llmsession.timestamps import Timestamp

T0 = Timestamp.from_datetime(datetime(2026, 1, 1, 12, 0, tzinfo=UTC))

MEMORY_URL = "memory://"

ALL_BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]
DURABLE = ALL_BACKENDS[1:]

Opener = Callable[..., Awaitable[SessionStore]]


def backend_url(request: pytest.FixtureRequest, backend: str) -> str:
    """The URL of a fresh, empty store of ``backend`` (its server fixture runs only here)."""
    if backend == "memory":
        return MEMORY_URL
    url: str = request.getfixturevalue(f"{backend}_url")
    return url


@pytest.fixture
def clock() -> ManualClock:
    """The time every store of a test reads; it moves only when the test says so."""
    return ManualClock(T0)


@pytest.fixture(params=ALL_BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    """A fresh store URL for each backend in turn."""
    backend: str = request.param
    return backend_url(request, backend)


@pytest.fixture
async def store(store_url: str, clock: ManualClock) -> AsyncIterator[SessionStore]:
    """An open store on ``store_url``, closed after the test."""
    opened = await open_store(store_url, clock=clock)
    try:
        yield opened
    finally:
        await opened.aclose()


@pytest.fixture
async def open_more(
    store_url: str, clock: ManualClock, store: SessionStore
) -> AsyncIterator[Opener]:
    """Open more stores on the data of ``store`` (as other processes would).

    A memory store's data lives in one object, so for memory this hands back
    ``store`` itself.
    """
    opened: list[SessionStore] = []

    async def open_(default_ttl_seconds: int = DEFAULT_TTL_SECONDS) -> SessionStore:
        if store_url == MEMORY_URL:
            return store
        another = await open_store(store_url, clock=clock, default_ttl_seconds=default_ttl_seconds)
        opened.append(another)
        return another

    try:
        yield open_
    finally:
        for another in opened:
            await another.aclose()


async def all_rounds(store: SessionStore, tenant: TenantId, session_id: SessionId) -> list[Round]:
    """Every round of a session, in order, page after page."""
    found: list[Round] = []
    cursor: str | None = None
    while True:
        page = await store.list_rounds(tenant, session_id, cursor=cursor, limit=1000)
        found += page.items
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


async def all_sessions(store: SessionStore, tenant: TenantId) -> list[StoredSession]:
    """Every session of a tenant, newest first, page after page."""
    found: list[StoredSession] = []
    cursor: str | None = None
    while True:
        page = await store.list_sessions(tenant, SessionQuery(limit=1000, cursor=cursor))
        found += page.items
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor
