"""LockConnections on the real PostgreSQL: which connection a turn's lock takes, and
when an unused one is closed. What the store does with them is in
test_postgres_gateway.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from functools import partial

import psycopg
import pytest
from psycopg.rows import TupleRow

from llmsession.store.lock_connections import LockConnection, LockConnections
from llmsession.store.postgres import PostgresOptions

pytestmark = pytest.mark.postgres

_TRY_LOCK = "SELECT CASE WHEN pg_try_advisory_lock(%s::bigint) THEN 1 END"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make(postgres_url: str, clock: Clock) -> AsyncIterator[Callable[[int], LockConnections]]:
    conninfo = PostgresOptions.from_url(postgres_url).conninfo
    made: list[LockConnections] = []

    def make_(size: int) -> LockConnections:
        connect = partial(psycopg.AsyncConnection.connect, conninfo, autocommit=True)
        made.append(LockConnections(connect, size, max_idle=600, clock=clock))
        return made[-1]

    try:
        yield make_
    finally:
        for connections in made:
            await connections.aclose()


async def lock(connections: LockConnections, key: int) -> LockConnection:
    shared, rows = await connections.take_lock(_TRY_LOCK, (key,), key)
    assert rows == [(1,)]
    return shared


async def test_turns_take_connections_of_their_own_until_size_then_share_the_least_held(
    make: Callable[[int], LockConnections],
) -> None:
    connections = make(2)
    first, second, third = [await lock(connections, key) for key in (1, 2, 3)]
    assert first is not second
    assert third in (first, second)
    fourth = await lock(connections, 4)
    assert {first, second} == {third, fourth}
    # Another process's connections do not take a lock these hold: one row of NULL.
    _, rows = await make(1).take_lock(_TRY_LOCK, (3,), 3)
    assert rows is None


async def test_a_connection_unused_for_max_idle_is_closed_at_the_next_take(
    make: Callable[[int], LockConnections], clock: Clock
) -> None:
    connections = make(2)
    used = await lock(connections, 1)
    await connections.unlock(used, 1)
    connections.give_back(used)
    clock.now = 600
    assert await lock(connections, 2) is used
    await connections.unlock(used, 2)
    connections.give_back(used)
    clock.now = 1201
    replaced = await lock(connections, 3)
    assert replaced is not used
    assert used.conn.closed
    assert not replaced.conn.closed


async def test_turns_arriving_while_the_last_connection_opens_wait_for_it(
    postgres_url: str,
) -> None:
    conninfo = PostgresOptions.from_url(postgres_url).conninfo
    opened: list[psycopg.AsyncConnection[TupleRow]] = []

    async def connect() -> psycopg.AsyncConnection[TupleRow]:
        await asyncio.sleep(0.05)  # long enough for the other turns to arrive
        opened.append(await psycopg.AsyncConnection.connect(conninfo, autocommit=True))
        return opened[-1]

    connections = LockConnections(connect, 1)
    try:
        taken = await asyncio.gather(*(lock(connections, key) for key in (1, 2, 3)))
        assert len(opened) == 1
        assert {id(shared) for shared in taken} == {id(taken[0])}
        assert taken[0].holders == 3
    finally:
        await connections.aclose()


async def test_a_lock_is_taken_when_the_server_dropped_every_idle_connection(
    make: Callable[[int], LockConnections], postgres_url: str
) -> None:
    # A restart or pg_terminate_backend drops them all; trying once more, on the
    # next dead one, failed the turn with a 503.
    connections = make(3)
    held = [await lock(connections, key) for key in (1, 2, 3)]
    assert len({id(shared) for shared in held}) == 3
    for key, shared in zip((1, 2, 3), held, strict=True):
        await connections.unlock(shared, key)
        connections.give_back(shared)
    pids = [shared.conn.info.backend_pid for shared in held]
    conninfo = PostgresOptions.from_url(postgres_url).conninfo
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
        for pid in pids:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    taken = await lock(connections, 4)
    assert all(taken is not shared for shared in held)
    assert all(shared.conn.closed for shared in held)
