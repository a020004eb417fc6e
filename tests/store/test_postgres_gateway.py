"""What is particular to gateway rounds in the PostgreSQL store: where the conversation
is deleted, the turn lock across processes, and the pool it holds its connections in.

The behaviour every backend shares is in test_gateway_rounds.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest

from llmsession.clock import ManualClock
from llmsession.errors import ConflictError, SessionExpiredError, StoreError, WrongStateError
from llmsession.ids import SessionId, TenantId
from llmsession.states import Closed, SessionExpired
from llmsession.store.models import Turn, TurnItems
from llmsession.store.postgres import (
    PostgresOptions,
    PostgresStore,
    _lock_key,
    _unlock_all_or_close,
)
from llmsession.usage import Usage
from tests.store.conftest import T0
from tests.store.test_postgres import spawn, sql

pytestmark = pytest.mark.postgres

ACME = TenantId("acme")

Opener = Callable[..., Awaitable[PostgresStore]]


def turn(n: int) -> Turn:
    return Turn("chat/completions", f"h{n}", f"[{n}]", "[0]", None, 200, "application/json", b"x")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def open_pg(postgres_url: str, clock: ManualClock) -> AsyncIterator[Opener]:
    """Open PostgreSQL stores on the test's schema (as separate replicas would); closes them."""
    opened: list[PostgresStore] = []

    async def open_(query: str = "") -> PostgresStore:
        store = await PostgresStore.open(postgres_url + query, clock=clock)
        opened.append(store)
        return store

    try:
        yield open_
    finally:
        for store in opened:
            await store.aclose()


async def start(store: PostgresStore, clock: ManualClock, *, ttl_seconds: int = 60) -> SessionId:
    session_id = SessionId.generate(clock())
    await store.start_with_turn(
        ACME,
        session_id,
        provider_id="fake",
        model="m",
        turn=turn(1),
        usage=Usage(100),
        ttl_seconds=ttl_seconds,
    )
    await store.record_turn(ACME, session_id, turn=turn(2), usage=Usage(120, 100))
    return session_id


async def stored_rows(url: str, table: str, session_id: SessionId) -> int:
    (row,) = await sql(url, f"SELECT count(*) FROM {table} WHERE session_id = %s", session_id.value)
    count = row[0]
    assert isinstance(count, int)
    return count


# -- the conversation ends with the session --------------------------------------------


async def test_every_write_that_ends_a_session_deletes_its_turns_and_keeps_its_rounds(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    store = await open_pg()
    closed, expired, late, swept, kept = [await start(store, clock) for _ in range(5)]
    await store.close(ACME, closed)
    await store.expire(ACME, expired)
    clock.advance(30)
    await store.record_turn(ACME, kept, turn=turn(3), usage=Usage(1))
    clock.advance(31)
    with pytest.raises(SessionExpiredError):
        await store.record_turn(ACME, late, turn=turn(3), usage=Usage(1))
    assert await store.sweep() == 1  # ``late`` was expired by its round
    assert (await store.get(ACME, closed)).record.state is Closed
    for session_id in (expired, late, swept):
        assert (await store.get(ACME, session_id)).record.state is SessionExpired
    for session_id in (closed, expired, late, swept):
        assert await stored_rows(postgres_url, "turns", session_id) == 0
        assert await stored_rows(postgres_url, "rounds", session_id) == 2
    assert await stored_rows(postgres_url, "turns", kept) == 3


async def test_a_sweep_expires_sessions_with_and_without_turns_in_one_batch(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    store = await open_pg()
    gateway = [await start(store, clock) for _ in range(3)]
    ledger = []
    for _ in range(450):  # more than one chunk of the sweep's update
        created = await store.create(
            ACME, provider_id="p", model="m", initial_tokens=1, ttl_seconds=60
        )
        await store.activate(ACME, created.record.session_id)
        ledger.append(created.record.session_id)
    clock.advance(61)
    assert await store.sweep() == 453
    assert await sql(postgres_url, "SELECT count(*) FROM turns") == [(0,)]
    for session_id in gateway + ledger[::50]:
        assert (await store.get(ACME, session_id)).record.state is SessionExpired


# -- starting a session ------------------------------------------------------------------


async def test_one_starting_key_sent_to_two_replicas_at_once_starts_one_session(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    stores = [await open_pg(), await open_pg()]
    ids = [SessionId.generate(clock()) for _ in stores]

    async def start_on(store: PostgresStore, session_id: SessionId) -> SessionId | None:
        try:
            await store.start_with_turn(
                ACME,
                session_id,
                provider_id="p",
                model="m",
                turn=turn(1),
                usage=Usage(5),
                idempotency_key="once",
            )
        except ConflictError:
            return None
        return session_id

    started = await asyncio.gather(*(start_on(s, i) for s, i in zip(stores, ids, strict=True)))
    (winner,) = [session_id for session_id in started if session_id is not None]
    # The loser wrote nothing: no session, no round, no turn.
    (loser,) = set(ids) - {winner}
    for table in ("sessions", "rounds", "turns"):
        assert await stored_rows(postgres_url, table, loser) == 0
    found = await stores[1].find_turn(ACME, "once")
    assert found is not None
    assert (found.round.session_id, found.turn) == (winner, turn(1))


async def test_a_start_takes_its_rows_in_a_rounds_order_so_the_two_never_deadlock(
    open_pg: Opener, postgres_url: str, clock: ManualClock
) -> None:
    # A round's statement takes its group's rollup rows, then (its trigger) the
    # session counters of its slot. Another transaction stands in for that round
    # here, holding the rollup rows while the start runs, then taking the counters:
    # a start that took the counters first (its insert's trigger) deadlocked with it.
    store = await open_pg()
    earlier = await start(store, clock)
    slot = earlier.value.int % 8
    session_id = SessionId.generate(clock())
    while session_id.value.int % 8 != slot:
        session_id = SessionId.generate(clock())
    conninfo = PostgresOptions.from_url(postgres_url).conninfo
    async with await psycopg.AsyncConnection.connect(conninfo) as round_tx:
        await round_tx.execute("SET lock_timeout = '10s'")
        held = await round_tx.execute(
            "SELECT 1 FROM usage_rollup WHERE tenant_id = 'acme' AND slot = %s FOR UPDATE",
            (slot,),
        )
        assert len(await held.fetchall()) == 2  # the hour's row and the day's
        starting = asyncio.create_task(
            store.start_with_turn(
                ACME, session_id, provider_id="fake", model="m", turn=turn(1), usage=Usage(50)
            )
        )
        await wait_until_blocked(postgres_url)
        await round_tx.execute(
            "UPDATE session_counts SET round_count = round_count "
            "WHERE tenant_id = 'acme' AND state = 'active' AND slot = %s",
            (slot,),
        )
        await round_tx.commit()
        result = await starting
    assert result.round.seq == 1


async def test_a_start_takes_its_hours_rollup_row_before_its_days_as_a_round_does(
    open_pg: Opener, postgres_url: str, clock: ManualClock
) -> None:
    # A round takes its rollup rows hour first, then day. Another transaction stands
    # in for such a round: it holds the hour's row while the start runs, then takes
    # the day's. A start that took the day's row first deadlocked with it; which
    # row came first out of the start's aggregate depended on the bucket's times,
    # so several hours are tried.
    store = await open_pg()
    conninfo = PostgresOptions.from_url(postgres_url).conninfo
    for _ in range(6):
        clock.advance(3 * 3600 + 17)
        earlier = await start(store, clock)
        slot = earlier.value.int % 8
        session_id = SessionId.generate(clock())
        while session_id.value.int % 8 != slot:
            session_id = SessionId.generate(clock())
        async with await psycopg.AsyncConnection.connect(conninfo) as round_tx:
            await round_tx.execute("SET lock_timeout = '10s'")
            rows = "SELECT 1 FROM usage_rollup WHERE tenant_id = 'acme' AND slot = %s "
            latest = "AND start = (SELECT max(start) FROM usage_rollup WHERE span = %s) "
            hour = await round_tx.execute(
                rows + "AND span = 3600 " + latest + "FOR UPDATE", (slot, 3600)
            )
            assert len(await hour.fetchall()) == 1
            starting = asyncio.create_task(
                store.start_with_turn(
                    ACME, session_id, provider_id="fake", model="m", turn=turn(1), usage=Usage(5)
                )
            )
            await wait_until_blocked(postgres_url)
            day = await round_tx.execute(
                rows + "AND span = 86400 " + latest + "FOR UPDATE", (slot, 86400)
            )
            assert len(await day.fetchall()) == 1
            await round_tx.commit()
            result = await starting
        assert result.round.seq == 1


async def wait_until_blocked(url: str) -> None:
    """Return once some other connection waits for a lock."""
    for _ in range(500):
        rows = await sql(url, "SELECT count(*) FROM pg_locks WHERE NOT granted")
        if rows[0][0]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nothing waited for a lock within 5 s")


# -- replays ---------------------------------------------------------------------------


async def test_a_gateway_replay_on_another_replica_answers_as_the_round_first_did(
    open_pg: Opener, clock: ManualClock
) -> None:
    """The round row keeps the session's counters after it, for the starting round
    (written with the session) and for a later one (written by the round's update)."""
    writer, reader = await open_pg(), await open_pg()
    session_id = SessionId.generate(clock())
    started = await writer.start_with_turn(
        ACME,
        session_id,
        provider_id="p",
        model="m",
        turn=turn(1),
        usage=Usage(100),
        idempotency_key="s",
    )
    clock.advance(1)
    second = await writer.record_turn(
        ACME, session_id, turn=turn(2), usage=Usage(130, 100), idempotency_key="k2"
    )
    clock.advance(1)
    await writer.record_turn(ACME, session_id, turn=turn(3), usage=Usage(170, 130))

    for first, sent, found in (
        (started, turn(1), await reader.find_turn(ACME, "s")),
        (second, turn(2), await reader.find_turn(ACME, "k2", session_id)),
        (
            second,
            turn(2),
            await reader.record_turn(
                ACME, session_id, turn=turn(9), usage=Usage(9), idempotency_key="k2"
            ),
        ),
    ):
        assert found is not None
        assert (found.replayed, found.round, found.turn) == (True, first.round, sent)
        assert found.round.usage == first.round.usage
        assert (found.session.record, found.session.version) == (
            first.session.record,
            first.session.version,
        )


# -- the turn lock -------------------------------------------------------------------


async def test_turns_hold_connections_of_their_own_pool(
    open_pg: Opener, clock: ManualClock
) -> None:
    # One connection for the store's writes, two for turns: two turns held at once
    # still record their rounds (from one pool, they would wait for a third).
    store = await open_pg("&pool_min=1&pool_max=1&pool_timeout=5&turn_pool_max=2")
    sessions = [await start(store, clock) for _ in range(2)]
    inside = asyncio.Barrier(2)

    async def take_turn(session_id: SessionId) -> None:
        async with store.turn_lock(ACME, session_id):
            await inside.wait()
            await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))

    await asyncio.gather(*(take_turn(session_id) for session_id in sessions))
    for session_id in sessions:
        assert len(await store.history(ACME, session_id)) == 3


async def test_more_turns_than_connections_share_them(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    # Three times as many turns at once as turn connections: each connection holds
    # the locks of several turns, and every turn records its round.
    name = f"shared{uuid.uuid4().hex[:8]}"
    store = await open_pg(
        f"&pool_min=1&pool_max=1&pool_timeout=5&turn_pool_max=2&application_name={name}"
    )
    sessions = [await start(store, clock) for _ in range(6)]
    inside = asyncio.Barrier(7)

    async def take_turn(session_id: SessionId) -> None:
        async with store.turn_history(ACME, session_id):
            await inside.wait()
            await inside.wait()
            await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))

    turns = [asyncio.create_task(take_turn(session_id)) for session_id in sessions]
    # (With a connection per turn, four would fail to get one after pool_timeout.)
    await asyncio.wait_for(inside.wait(), timeout=10)
    holders = await sql(
        postgres_url,
        "SELECT count(*), count(DISTINCT l.pid) FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s",
        name,
    )
    assert holders == [(6, 2)]
    await inside.wait()
    await asyncio.gather(*turns)
    for session_id in sessions:
        assert len(await store.history(ACME, session_id)) == 3
        await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)


async def test_a_turn_another_process_holds_is_awaited_on_a_connection_of_its_own(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    holder, store = await open_pg(), await open_pg("&turn_pool_max=1")
    busy, free = await start(holder, clock), await start(holder, clock)
    release = asyncio.Event()

    async def hold() -> None:
        async with holder.turn_history(ACME, busy):
            await release.wait()

    async def wait_for_turn() -> int:
        async with store.turn_history(ACME, busy) as (stored, _):
            await store.record_turn(ACME, busy, turn=turn(3), usage=Usage(1))
            return stored.record.round_count

    holding = asyncio.create_task(hold())
    await until_advisory_locks(postgres_url, busy, granted=1, waiting=0)
    waiting = asyncio.create_task(wait_for_turn())
    await until_advisory_locks(postgres_url, busy, granted=1, waiting=1)
    # The wait holds a connection of its own: the one turn connection still takes
    # and gives back the turns of other sessions.
    async with store.turn_history(ACME, free):
        await store.record_turn(ACME, free, turn=turn(3), usage=Usage(1))
    assert len(await store.history(ACME, free)) == 3
    release.set()
    await holding
    assert await waiting == 2
    await until_advisory_locks(postgres_url, busy, granted=0, waiting=0)


async def test_a_lost_turn_connection_fails_its_turns_rounds(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    store, other = await open_pg("&turn_pool_max=1"), await open_pg()
    sessions = [await start(store, clock) for _ in range(2)]
    async with store.turn_history(ACME, sessions[0]), store.turn_history(ACME, sessions[1]):
        pid = await turn_lock_holder(postgres_url, sessions[0])
        await sql(postgres_url, "SELECT pg_terminate_backend(%s)", pid)
        await until_advisory_locks(postgres_url, sessions[0], granted=0, waiting=0)
        # Both locks went with the connection, so neither turn may record its round:
        # another process's turn may already have read the history without it.
        for session_id in sessions:
            with pytest.raises(StoreError, match="PostgreSQL failed"):
                await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
            async with other.turn_history(ACME, session_id) as (stored, turns):
                assert (stored.record.round_count, len(turns)) == (2, 2)
    # The next turns take a new connection.
    for session_id in sessions:
        async with store.turn_history(ACME, session_id):
            await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
        assert len(await store.history(ACME, session_id)) == 3


async def test_a_turn_connection_dropped_while_idle_is_replaced_for_the_next_turn(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    # As after a server restart or an idle timeout: the next turn's lock statement
    # finds the connection gone (no lock can have been taken on it), and is tried
    # again on a new one.
    store = await open_pg("&turn_pool_max=1")
    session_id = await start(store, clock)
    async with store.turn_history(ACME, session_id):
        pid = await turn_lock_holder(postgres_url, session_id)
    await sql(postgres_url, "SELECT pg_terminate_backend(%s)", pid)
    async with store.turn_history(ACME, session_id) as (stored, _):
        holder = await turn_lock_holder(postgres_url, session_id)
        await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
    assert stored.record.round_count == 2
    assert holder != pid
    assert len(await store.history(ACME, session_id)) == 3


async def test_a_turn_cancelled_while_taking_its_lock_gives_it_back(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    store = await open_pg("&turn_pool_max=1")
    session_id = await start(store, clock)
    entered: list[SessionId] = []

    async def take_turn() -> None:
        async with store.turn_history(ACME, session_id):
            entered.append(session_id)

    conninfo = PostgresOptions.from_url(postgres_url).conninfo
    async with await psycopg.AsyncConnection.connect(conninfo) as blocker:
        # The turn takes the lock, then waits to read the turns table.
        await blocker.execute("LOCK TABLE turns IN ACCESS EXCLUSIVE MODE")
        turning = asyncio.create_task(take_turn())
        await until_a_turn_waits_for_a_row(postgres_url, session_id)
        turning.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turning
        assert entered == []
        await blocker.rollback()
    # The statement ended and the lock it took was given back, on a connection
    # the next turn uses as before.
    await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)
    async with store.turn_history(ACME, session_id) as (stored, turns):
        assert (stored.record.round_count, len(turns)) == (2, 2)
        await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
    assert len(await store.history(ACME, session_id)) == 3


async def test_a_failed_turn_releases_the_lock(open_pg: Opener, clock: ManualClock) -> None:
    store, other = await open_pg(), await open_pg()
    session_id = await start(store, clock)
    with pytest.raises(RuntimeError, match="provider broke"):
        async with store.turn_lock(ACME, session_id):
            raise RuntimeError("provider broke")
    async with other.turn_lock(ACME, session_id):
        await other.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
    assert len(await store.history(ACME, session_id)) == 3


async def test_a_turn_cancelled_while_waiting_for_the_lock_leaves_it_free(
    postgres_url: str, open_pg: Opener, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    holder, waiter, later = await open_pg(), await open_pg("&turn_pool_max=1"), await open_pg()
    session_id = await start(holder, clock)
    release = asyncio.Event()

    async def hold() -> None:
        async with holder.turn_lock(ACME, session_id):
            await release.wait()

    async def wait_for_turn() -> None:
        async with waiter.turn_lock(ACME, session_id):
            raise AssertionError("the waiter was cancelled before its turn")

    holding = asyncio.create_task(hold())
    await until_advisory_locks(postgres_url, session_id, granted=1, waiting=0)
    waiting = asyncio.create_task(wait_for_turn())
    await until_advisory_locks(postgres_url, session_id, granted=1, waiting=1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError), caplog.at_level("WARNING"):
        await waiting
    # Its wait was ended in the server, and its connection went back to the pool
    # as it was, not discarded (which psycopg_pool reports as a warning).
    assert waiter._turn_pool.get_stats().get("returns_bad", 0) == 0
    assert not [record for record in caplog.records if record.name.startswith("psycopg")]
    release.set()
    await holding
    await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)
    async with later.turn_lock(ACME, session_id):
        await later.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))


async def test_a_wait_cancelled_once_granted_gives_the_lock_back_and_keeps_the_connection(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    # A wait granted just before its cancel arrived holds the lock: the connection
    # gives back every advisory lock it holds before it goes back to the pool.
    session_id = await start(await open_pg(), clock)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s::bigint)", (_lock_key(session_id),))
        await until_advisory_locks(postgres_url, session_id, granted=1, waiting=0)
        await _unlock_all_or_close(conn)
        await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)
        assert not conn.closed


async def test_a_turns_history_leaves_the_answers_as_sent_unread(
    open_pg: Opener, clock: ManualClock
) -> None:
    # A streamed answer's body is its whole event stream; only a replay needs it.
    store = await open_pg()
    session_id = await start(store, clock)
    async with store.turn_history(ACME, session_id) as (_, history):
        assert history == [
            TurnItems(t.endpoint, t.request_items, t.answer_items, t.response_id)
            for t in (turn(1), turn(2))
        ]
    assert await store.history(ACME, session_id) == [turn(1), turn(2)]


async def test_a_turns_round_is_written_and_its_lock_given_back_in_one_call(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    store, other = await open_pg(), await open_pg()
    session_id = await start(store, clock)
    async with store.turn_history(ACME, session_id):
        holder = await turn_lock_holder(postgres_url, session_id)
        await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
        # The backend holding the turn's advisory lock wrote the round (the turn
        # needed no connection of the main pool), committed it and let the lock go.
        ((last,),) = await sql(
            postgres_url, "SELECT query FROM pg_stat_activity WHERE pid = %s", holder
        )
        assert last.startswith("CALL turn_recorded(")
        await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)
        # So another replica's next turn need not wait for this block to end, and
        # it reads the round.
        async with other.turn_history(ACME, session_id) as (stored, turns):
            assert (stored.record.round_count, len(turns)) == (3, 3)
    assert len(await store.history(ACME, session_id)) == 3


async def test_a_turns_round_keeps_the_lock_while_a_turn_waits_in_the_same_process(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    store = await open_pg()
    session_id = await start(store, clock)
    order: list[str] = []

    async def next_turn() -> None:
        async with store.turn_history(ACME, session_id) as (stored, _):
            order.append(f"next saw {stored.record.round_count} rounds")

    async with store.turn_history(ACME, session_id):
        waiting = asyncio.create_task(next_turn())
        await asyncio.sleep(0.05)
        await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
        # Let go now, the lock could go to another process's turn that came after
        # the one waiting here: it is kept until this turn ends.
        await until_advisory_locks(postgres_url, session_id, granted=1, waiting=0)
        order.append("first ended")
    await waiting
    assert order == ["first ended", "next saw 3 rounds"]
    await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)


async def test_a_turns_round_retried_after_a_conflict_gives_the_lock_back_once(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    store, other = await open_pg(), await open_pg()
    session_id = await start(store, clock)
    async with store.turn_history(ACME, session_id):
        # Another replica's API records a ledger round meanwhile (no turn needed):
        # the turn's write finds another version, is not written, keeps the lock,
        # and its retry writes and gives the lock back.
        await other.record_round(ACME, session_id, 5)
        await until_advisory_locks(postgres_url, session_id, granted=1, waiting=0)
        result = await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
        assert result.round.seq == 4
        await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)
    # The next turn takes the lock as usual.
    async with other.turn_history(ACME, session_id) as (stored, turns):
        assert (stored.record.round_count, len(turns)) == (4, 3)
        await until_advisory_locks(postgres_url, session_id, granted=1, waiting=0)
    await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)


async def test_a_turn_whose_round_is_refused_keeps_its_lock_until_it_ends(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    store, other = await open_pg(), await open_pg()
    session_id = await start(store, clock)
    async with store.turn_history(ACME, session_id):
        # Another replica's API closes the session meanwhile (no turn needed): the
        # round's write finds another version, and the retry a Closed session.
        await other.close(ACME, session_id)
        with pytest.raises(WrongStateError):
            await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
        await until_advisory_locks(postgres_url, session_id, granted=1, waiting=0)
    await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)


async def test_a_turn_whose_round_fails_keeps_its_lock_until_it_ends(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    store = await open_pg()
    session_id = await start(store, clock)
    await sql(
        postgres_url,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'refused'; END $$",
    )
    await sql(
        postgres_url,
        "CREATE TRIGGER refused BEFORE INSERT ON turns FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    async with store.turn_history(ACME, session_id):
        with pytest.raises(StoreError, match="refused"):
            await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
        await until_advisory_locks(postgres_url, session_id, granted=1, waiting=0)
    await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)
    await sql(postgres_url, "DROP FUNCTION refuse() CASCADE")
    # Nothing of the failed round was written, and the next turn records its own.
    async with store.turn_history(ACME, session_id) as (stored, turns):
        assert (stored.record.round_count, len(turns)) == (2, 2)
        await store.record_turn(ACME, session_id, turn=turn(3), usage=Usage(1))
    assert len(await store.history(ACME, session_id)) == 3


async def test_a_change_in_flight_on_a_turns_connection_ends_before_the_turn_does(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    store = await open_pg()
    session_id = await start(store, clock)
    closing: list[asyncio.Task[object]] = []

    async def take_turn() -> None:
        async with store.turn_history(ACME, session_id):
            # On the turn's connection, waiting for the row another client holds.
            closing.append(asyncio.create_task(store.close(ACME, session_id)))
            await until_a_turn_waits_for_a_row(postgres_url, session_id)

    conninfo = PostgresOptions.from_url(postgres_url).conninfo
    async with await psycopg.AsyncConnection.connect(conninfo) as blocker:
        await blocker.execute(
            "SELECT 1 FROM sessions WHERE session_id = %s FOR UPDATE", (session_id.value,)
        )
        turning = asyncio.create_task(take_turn())
        await until_a_turn_waits_for_a_row(postgres_url, session_id)
        await asyncio.sleep(0.1)
        # The block ended, but the turn is held until the close is done with the
        # connection, which is then unlocked and given back to the pool.
        assert not turning.done()
        await until_advisory_locks(postgres_url, session_id, granted=1, waiting=0)
        await blocker.rollback()
        await turning
    await closing[0]
    await until_advisory_locks(postgres_url, session_id, granted=0, waiting=0)
    assert (await store.get(ACME, session_id)).record.state is Closed


# A session's turn lock as pg_locks shows it: a bigint key's high and low 32 bits
# as classid and objid, objsubid 1. Only this test's session's lock counts, so
# another process's advisory locks on the shared database change nothing here.
_TURN_LOCK = (
    "locktype = 'advisory' AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 1"
)


def _key_parts(session_id: SessionId) -> tuple[int, int]:
    # The store's key: the id's two 64-bit halves folded by XOR (as unsigned here).
    value = session_id.value.int
    key = (value >> 64) ^ (value & 0xFFFF_FFFF_FFFF_FFFF)
    return key >> 32, key & 0xFFFF_FFFF


async def turn_lock_holder(url: str, session_id: SessionId) -> int:
    """The backend holding the session's turn lock."""
    ((pid,),) = await sql(
        url, "SELECT pid FROM pg_locks WHERE granted AND " + _TURN_LOCK, *_key_parts(session_id)
    )
    assert isinstance(pid, int)
    return pid


async def until_a_turn_waits_for_a_row(url: str, session_id: SessionId) -> None:
    """Wait until the backend holding the session's turn lock waits for a lock on a row
    or a table."""
    statement = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND pid IN "
        "(SELECT pid FROM pg_locks WHERE granted AND " + _TURN_LOCK + ")"
    )
    deadline = time.monotonic() + 10
    while (await sql(url, statement, *_key_parts(session_id)))[0] != (1,):
        assert time.monotonic() < deadline, "no turn waits for a lock"
        await asyncio.sleep(0.02)


async def until_advisory_locks(
    url: str, session_id: SessionId, *, granted: int, waiting: int
) -> None:
    """Wait until the server shows the session's turn lock held and awaited so often."""
    statement = (
        "SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted) "
        "FROM pg_locks WHERE " + _TURN_LOCK
    )
    deadline = time.monotonic() + 10
    while (found := (await sql(url, statement, *_key_parts(session_id)))[0]) != (
        granted,
        waiting,
    ):
        assert time.monotonic() < deadline, f"advisory locks {found}, not {(granted, waiting)}"
        await asyncio.sleep(0.02)


def test_turns_in_separate_processes_go_one_at_a_time(postgres_url: str) -> None:
    # Real time here: the processes read the system clock.
    async def make_session() -> SessionId:
        store = await PostgresStore.open(postgres_url)
        try:
            session_id = SessionId.generate(store.clock())
            await store.start_with_turn(
                ACME, session_id, provider_id="p", model="m", turn=turn(0), usage=Usage(1)
            )
            return session_id
        finally:
            await store.aclose()

    session_id = asyncio.run(make_session())
    # Each turn records what it saw of the history: under the lock, every turn has
    # seen exactly the turns before it.
    script = f"""
        import asyncio, sys
        from llmsession.ids import SessionId, TenantId
        from llmsession.store.models import Turn, TurnItems
        from llmsession.store.postgres import PostgresStore
        from llmsession.usage import Usage

        async def main():
            store = await PostgresStore.open({postgres_url!r})
            acme, session_id = TenantId("acme"), SessionId.parse({str(session_id)!r})
            print("ready", flush=True)
            sys.stdin.readline()
            for i in range(6):
                async with store.turn_lock(acme, session_id):
                    seen = len(await store.history(acme, session_id))
                    await asyncio.sleep(0.01)
                    answer = Turn("chat/completions", f"saw {{seen}}", "[]", "[]", None, 200,
                                  "application/json", b"")
                    await store.record_turn(acme, session_id, turn=answer, usage=Usage(1))
            await store.aclose()

        asyncio.run(main())
    """
    processes = [spawn(script) for _ in range(3)]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            _out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.communicate()

    async def history() -> list[Turn]:
        store = await PostgresStore.open(postgres_url)
        try:
            return await store.history(ACME, session_id)
        finally:
            await store.aclose()

    turns = asyncio.run(history())
    assert [t.request_hash for t in turns[1:]] == [f"saw {n}" for n in range(1, 19)]
