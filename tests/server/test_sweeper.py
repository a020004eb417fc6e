"""The sweeper loop over a real SQLite store on a ManualClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tests.server.conftest import T0

from llmsession.clock import ManualClock
from llmsession.ids import TenantId
from llmsession.server.sweeper import Sweeper
from llmsession.states import Active, Created, SessionExpired
from llmsession.store import SessionQuery, SessionStore, open_store

TENANT = TenantId("acme")


@pytest.fixture
async def store(sqlite_url: str, clock: ManualClock) -> AsyncIterator[SessionStore]:
    opened = await open_store(sqlite_url, clock=clock)
    try:
        yield opened
    finally:
        await opened.aclose()


async def _active(store: SessionStore, ttl: int) -> None:
    created = await store.create(
        TENANT, provider_id="p", model="m", initial_tokens=10, ttl_seconds=ttl
    )
    await store.activate(TENANT, created.record.session_id)


async def test_one_run_expires_everything_due_in_batches(
    store: SessionStore, clock: ManualClock
) -> None:
    for _ in range(5):
        await _active(store, ttl=10)
    await _active(store, ttl=1000)
    clock.advance(11)
    sweeper = Sweeper(store, interval_seconds=60, purge_created_after_seconds=3600, batch_size=2)
    result = await sweeper.run_once()
    assert (result.expired, result.purged) == (5, 0)
    assert (sweeper.runs, sweeper.expired) == (1, 5)
    expired = await store.list_sessions(TENANT, SessionQuery(state=SessionExpired))
    assert len(expired.items) == 5
    assert all(s.record.expired_at == T0.plus_seconds(10) for s in expired.items)
    active = await store.list_sessions(TENANT, SessionQuery(state=Active))
    assert len(active.items) == 1
    assert (await sweeper.run_once()).expired == 0


async def test_the_batch_is_the_stores_own_unless_given(
    store: SessionStore, redis_url: str
) -> None:
    assert Sweeper(store, interval_seconds=60, purge_created_after_seconds=1).batch_size == 1000
    given = Sweeper(store, interval_seconds=60, purge_created_after_seconds=1, batch_size=7)
    assert given.batch_size == 7
    redis_store = await open_store(redis_url)
    try:
        # Redis's sweep holds nothing between its chunks, so it is asked for more at once.
        sweeper = Sweeper(redis_store, interval_seconds=60, purge_created_after_seconds=1)
        assert sweeper.batch_size == redis_store.sweep_batch == 10_000
    finally:
        await redis_store.aclose()


async def test_a_sweeper_can_purge_one_tenant_only(store: SessionStore, clock: ManualClock) -> None:
    other = TenantId("globex")
    mine = await store.create(TENANT, provider_id="p", model="m", initial_tokens=1)
    await store.create(other, provider_id="p", model="m", initial_tokens=1)
    clock.advance(100)
    sweeper = Sweeper(
        store, interval_seconds=60, purge_created_after_seconds=60, purge_tenant_id=other
    )
    assert (await sweeper.run_once()).purged == 1
    assert (await store.list_sessions(other, SessionQuery())).items == []
    assert (await store.get(TENANT, mine.record.session_id)).record.state is Created


async def test_abandoned_created_sessions_are_purged(
    store: SessionStore, clock: ManualClock
) -> None:
    for _ in range(3):
        await store.create(TENANT, provider_id="p", model="m", initial_tokens=1)
    clock.advance(100)
    fresh = await store.create(TENANT, provider_id="p", model="m", initial_tokens=1)
    clock.advance(1)
    sweeper = Sweeper(store, interval_seconds=60, purge_created_after_seconds=60, batch_size=2)
    assert (await sweeper.run_once()).purged == 3
    left = await store.list_sessions(TENANT, SessionQuery(state=Created))
    assert [s.record.session_id for s in left.items] == [fresh.record.session_id]


async def test_the_loop_survives_errors_and_stops_cleanly(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = await open_store(sqlite_url)
    sweeper = Sweeper(store, interval_seconds=0.01, purge_created_after_seconds=60)
    sweeper.start()
    with pytest.raises(RuntimeError, match="already started"):
        sweeper.start()
    for _ in range(200):
        if sweeper.runs >= 2:
            break
        await asyncio.sleep(0.01)
    assert sweeper.runs >= 2
    await store.aclose()
    for _ in range(200):
        if sweeper.errors >= 2:
            break
        await asyncio.sleep(0.01)
    assert sweeper.errors >= 2
    # A store's failure is one line saying what failed, without a traceback.
    failed = [r for r in caplog.records if r.getMessage().startswith("sweep failed")]
    assert failed
    assert failed[0].exc_info is None
    assert "this store was closed" in failed[0].getMessage()
    # Bounded, not timed: a stop that waited out the interval would hang here.
    await asyncio.wait_for(sweeper.stop(), timeout=10)
    await sweeper.stop()  # stopping twice is harmless


async def test_stop_waits_for_a_long_interval_no_longer_than_a_sweep(
    store: SessionStore,
) -> None:
    sweeper = Sweeper(store, interval_seconds=3600, purge_created_after_seconds=60)
    sweeper.start()
    for _ in range(200):
        if sweeper.runs >= 1:
            break
        await asyncio.sleep(0.01)
    # The hour-long wait between sweeps is interrupted, not waited out.
    await asyncio.wait_for(sweeper.stop(), timeout=10)
    assert sweeper.errors == 0
