"""What is particular to the PostgreSQL store: schema, URL options, many processes, many stores.

The behaviour every backend shares is in test_conformance.py. These tests run
against the real server in a fresh schema per test (the ``postgres_url`` fixture).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from llmsession.clock import ManualClock, system_clock
from llmsession.errors import (
    InvalidInput,
    NotFoundError,
    SchemaVersionError,
    StoreError,
    WrongStateError,
)
from llmsession.ids import SessionId, TenantId
from llmsession.states import Active, Closed, SessionExpired
from llmsession.store import open_store, postgres
from llmsession.store.models import (
    NO_USAGE,
    GroupKey,
    Round,
    RoundResult,
    Turn,
    TurnItems,
    UsageTotals,
)
from llmsession.store.postgres import SCHEMA_VERSION, PostgresOptions, PostgresStore
from llmsession.usage import Usage
from tests.store.conftest import T0

pytestmark = pytest.mark.postgres

ACME = TenantId("acme")

TURN = Turn("chat/completions", "h", "[1]", "[2]", None, 200, "application/json", b"{}")

Opener = Callable[..., Awaitable[PostgresStore]]


def schema_of(url: str) -> str:
    options = parse_qs(urlsplit(url).query)["options"][0]
    return options.removeprefix("-csearch_path=")


async def sql(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    """Run one statement on the test's schema, outside any store."""
    conninfo = PostgresOptions.from_url(url).conninfo
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        cur = await conn.execute(statement.encode(), params or None)
        return await cur.fetchall() if cur.description is not None else []


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
async def open_pg(postgres_url: str, clock: ManualClock) -> AsyncIterator[Opener]:
    """Open PostgreSQL stores on the test's schema (as separate replicas would); closes them."""
    opened: list[PostgresStore] = []

    async def open_(url: str = postgres_url) -> PostgresStore:
        store = await PostgresStore.open(url, clock=clock)
        opened.append(store)
        return store

    try:
        yield open_
    finally:
        for store in opened:
            await store.aclose()


async def new_session(store: PostgresStore, *, ttl_seconds: int | None = None) -> SessionId:
    created = await store.create(
        ACME, provider_id="openai", model="gpt-4o", initial_tokens=1000, ttl_seconds=ttl_seconds
    )
    await store.activate(ACME, created.record.session_id)
    return created.record.session_id


async def all_rounds(store: PostgresStore, session_id: SessionId) -> list[Round]:
    rounds: list[Round] = []
    while True:
        after = rounds[-1].seq if rounds else 0
        page = await store.list_rounds(ACME, session_id, after_seq=after, limit=1000)
        rounds += page.items
        if page.next_cursor is None:
            return rounds


# -- schema -------------------------------------------------------------------------


async def test_tables_are_made_in_the_urls_schema_with_a_version(
    postgres_url: str, open_pg: Opener
) -> None:
    await open_pg()
    schema = schema_of(postgres_url)
    tables = await sql(
        postgres_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        schema,
    )
    assert {row[0] for row in tables} == {
        "schema_version",
        "sessions",
        "rounds",
        "tenants",
        "api_keys",
        "turns",
        "started_sessions",
        "usage_rollup",
        "session_counts",
    }
    assert await sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]


async def test_opening_again_keeps_the_data_and_the_version(open_pg: Opener) -> None:
    first = await open_pg()
    session_id = await new_session(first)
    second = await open_pg()
    assert (await second.get(ACME, session_id)).record.state is Active


async def test_a_newer_schema_is_refused(postgres_url: str, open_pg: Opener) -> None:
    await open_pg()
    await sql(postgres_url, "UPDATE schema_version SET version = %s", SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionError) as raised:
        await open_pg()
    message = str(raised.value)
    assert f"version {SCHEMA_VERSION + 1}" in message
    assert f"version {SCHEMA_VERSION} " in message
    assert "upgrade llmsession" in message
    assert await sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION + 1,)]


async def make_version(url: str, version: int) -> None:
    """Turn the current schema into what ``version`` created (its data stays)."""
    if version < 9:
        # Version 8 held every gateway turn's lock on a connection of its own.
        await sql(url, "DROP FUNCTION try_turn_history(bigint, uuid, text)")
    if version < 8:
        # Version 7 gave a gateway turn's lock back in a statement of its own (and
        # its turn_history() read the answers as sent too: version 8 makes it again).
        await sql(url, "DROP PROCEDURE turn_recorded")
    if version < 7:
        # Version 6 took a gateway turn's lock and read its history statement by statement.
        await sql(url, "DROP FUNCTION turn_history(bigint, uuid, text)")
    if version < 6:
        # Version 5 kept no session counters (the function's triggers go with it).
        await sql(url, "DROP FUNCTION session_counts_kept() CASCADE")
        await sql(url, "DROP TABLE session_counts")
    if version < 5:
        # Version 4 kept no rollup.
        await sql(url, "DROP TABLE usage_rollup")
    if version < 4:
        # Version 3 had no gateway: no usage, no turns, no started sessions.
        await sql(url, "DROP TABLE turns, started_sessions")
        for table, columns in (("sessions", _SESSION_USAGE), ("rounds", _ROUND_USAGE)):
            drops = ", ".join(f"DROP COLUMN {column}" for column in columns)
            await sql(url, f"ALTER TABLE {table} {drops}")
    if version < 3:
        # Version 2 kept no session counters with each round.
        await sql(
            url, "ALTER TABLE rounds DROP COLUMN session_delta_tokens, DROP COLUMN session_version"
        )
    if version < 2:
        # Version 1 had no index per state and model.
        await sql(url, "DROP INDEX sessions_by_state_model")
    await sql(url, "UPDATE schema_version SET version = %s", version)


_SESSION_USAGE = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "rounds_without_usage",
)
_ROUND_USAGE = ("gateway", *_SESSION_USAGE[:5], "raw_usage")


async def schema_shape(url: str) -> list[tuple[object, ...]]:
    """Every column (type, default, nullability), constraint and index of the test's schema."""
    schema = schema_of(url)
    columns = await sql(
        url,
        "SELECT table_name, column_name, data_type, column_default, is_nullable "
        "FROM information_schema.columns WHERE table_schema = %s ORDER BY 1, 2",
        schema,
    )
    constraints = await sql(
        url,
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = %s::regnamespace ORDER BY 1, 2",
        schema,
    )
    indexes = await sql(
        url, "SELECT indexdef FROM pg_indexes WHERE schemaname = %s ORDER BY 1", schema
    )
    triggers = await sql(
        url,
        "SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c "
        "ON c.oid = t.tgrelid WHERE c.relnamespace = %s::regnamespace AND NOT t.tgisinternal "
        "ORDER BY 1",
        schema,
    )
    functions = await sql(
        url,
        "SELECT proname, prosrc FROM pg_proc WHERE pronamespace = %s::regnamespace ORDER BY 1",
        schema,
    )
    return columns + constraints + indexes + triggers + functions


async def test_a_version_1_schema_is_upgraded_in_place(postgres_url: str, open_pg: Opener) -> None:
    first = await open_pg()
    session_id = await new_session(first)
    await first.aclose()
    await make_version(postgres_url, 1)
    again = await open_pg()
    assert await sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    indexes = await sql(
        postgres_url,
        "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'sessions'",
        schema_of(postgres_url),
    )
    assert "sessions_by_state_model" in {row[0] for row in indexes}
    assert (await again.get(ACME, session_id)).record.state is Active


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7, 8])
async def test_an_older_schema_is_upgraded_to_what_a_fresh_one_is(
    postgres_url: str, open_pg: Opener, clock: ManualClock, version: int
) -> None:
    first = await open_pg()
    fresh = await schema_shape(postgres_url)
    session_id = await new_session(first)
    await first.record_round(ACME, session_id, 7, idempotency_key="r1")
    await first.aclose()
    await make_version(postgres_url, version)
    assert await schema_shape(postgres_url) != fresh
    again = await open_pg()
    assert await sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert await schema_shape(postgres_url) == fresh
    # What the old version stored reads back as a ledger's, and the gateway works on it.
    stored = await again.get(ACME, session_id)
    assert (stored.record.round_count, stored.usage) == (1, NO_USAGE)
    (old,) = (await again.list_rounds(ACME, session_id)).items
    assert (old.delta_tokens, old.gateway, old.usage) == (7, False, None)
    replayed = await again.record_round(ACME, session_id, 7, idempotency_key="r1")
    assert replayed.replayed
    assert replayed.round == old
    result = await again.record_turn(ACME, session_id, turn=TURN, usage=Usage(100, 40))
    assert result.session.usage == UsageTotals(input_tokens=100, cached_input_tokens=40)
    assert await again.history(ACME, session_id) == [TURN]
    async with again.turn_history(ACME, session_id) as (now, turns):
        # What a turn sends on (the answer as sent stays for a replay).
        items = TurnItems(TURN.endpoint, TURN.request_items, TURN.answer_items, TURN.response_id)
        assert (now.record.round_count, turns) == (2, [items])
    started = SessionId.generate(clock())
    await again.start_with_turn(
        ACME, started, provider_id="p", model="m", turn=TURN, usage=None, idempotency_key="s"
    )
    found = await again.find_turn(ACME, "s")
    assert found is not None
    assert (found.round.session_id, found.turn) == (started, TURN)


@pytest.mark.parametrize("version", [3, 4])
async def test_an_upgrade_back_fills_the_rollup_the_writes_keep(
    postgres_url: str, open_pg: Opener, clock: ManualClock, version: int
) -> None:
    first = await open_pg()
    for hour in range(3):
        session_id = await new_session(first)
        await first.record_round(ACME, session_id, 10 + hour, idempotency_key="k")
        await first.record_round(ACME, session_id, 10 + hour, idempotency_key="k")
        if version == 4:
            started = SessionId.generate(clock())
            await first.start_with_turn(
                ACME, started, provider_id="p", model="m", turn=TURN, usage=Usage(100, 40)
            )
            await first.record_turn(ACME, started, turn=TURN, usage=None)
        await first.create(ACME, provider_id="p", model=f"m{hour}", initial_tokens=5)
        clock.advance(3600)
    args = {"bucket": "hour", "start": T0, "end": clock(), "group_by": ["provider", "model"]}
    series = await first.timeseries(ACME, **args)  # type: ignore[arg-type]
    assert sum(bucket.rounds for bucket in series) == (9 if version == 4 else 3)
    rows = "SELECT * FROM usage_rollup ORDER BY span, start, provider_id, model, slot"
    written = await sql(postgres_url, rows)
    await first.aclose()
    await make_version(postgres_url, version)
    again = await open_pg()
    assert await sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert await again.timeseries(ACME, **args) == series  # type: ignore[arg-type]
    # Row for row what the writes kept, each session's in its own slot.
    assert await sql(postgres_url, rows) == written


@pytest.mark.parametrize("version", [4, 5])
async def test_an_upgrade_back_fills_the_counters_the_writes_keep(
    postgres_url: str, open_pg: Opener, clock: ManualClock, version: int
) -> None:
    first = await open_pg()
    for n in range(12):
        session_id = await new_session(first, ttl_seconds=60)
        await first.record_round(ACME, session_id, 10 + n)
        if n % 3 == 0:
            await first.close(ACME, session_id)
        if version == 5 and n % 4 == 0:
            started = SessionId.generate(clock())
            await first.start_with_turn(
                ACME, started, provider_id="p", model=f"m{n % 2}", turn=TURN,
                usage=Usage(100, 40), ttl_seconds=60,
            )  # fmt: skip
        await first.create(ACME, provider_id="p", model=f"m{n % 2}", initial_tokens=5 + n)
        clock.advance(7)
    clock.advance(55)  # some Active sessions due, not swept
    group_by: list[GroupKey] = ["provider", "model"]
    totals = await first.totals(ACME, group_by)
    assert sum(t.sessions["expired"] for t in totals) > 0
    rows = "SELECT * FROM session_counts WHERE sessions <> 0 ORDER BY 1, 2, 3, 4, 5"
    written = await sql(postgres_url, rows)
    assert len({row[4] for row in written}) > 1  # spread over slots
    await first.aclose()
    await make_version(postgres_url, version)
    again = await open_pg()
    assert await sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert await again.totals(ACME, group_by) == totals
    # Row for row what the writes kept, each session's in its own slot.
    assert await sql(postgres_url, rows) == written


async def test_a_version_2_schema_is_upgraded_and_replays_give_the_first_answers(
    postgres_url: str, open_pg: Opener, clock: ManualClock
) -> None:
    first_store = await open_pg()
    answers: list[RoundResult] = []
    sessions = [await new_session(first_store) for _ in range(3)]
    for n, session_id in enumerate(sessions):
        for turn in range(4):
            clock.advance(1)
            key = f"k{turn}" if turn % 2 else None
            answers.append(
                await first_store.record_round(ACME, session_id, n + turn, idempotency_key=key)
            )
    await first_store.close(ACME, sessions[0])
    rounds = [(await first_store.list_rounds(ACME, s)).items for s in sessions]
    await first_store.aclose()
    await make_version(postgres_url, 2)

    store = await open_pg()
    assert await sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    columns = await sql(
        postgres_url,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = 'rounds' "
        "AND column_name IN ('session_delta_tokens', 'session_version') ORDER BY 1",
        schema_of(postgres_url),
    )
    assert columns == [
        ("session_delta_tokens", "bigint", "NO"),
        ("session_version", "bigint", "NO"),
    ]
    assert [(await store.list_rounds(ACME, s)).items for s in sessions] == rounds
    for first in answers:
        if first.round.idempotency_key is None:
            continue
        again = await store.record_round(
            ACME,
            first.round.session_id,
            first.round.delta_tokens,
            idempotency_key=first.round.idempotency_key,
        )
        assert (again.replayed, again.round, again.session) == (True, first.round, first.session)


async def test_a_version_no_llmsession_wrote_is_refused(postgres_url: str, open_pg: Opener) -> None:
    await open_pg()
    await sql(postgres_url, "UPDATE schema_version SET version = 0")
    with pytest.raises(SchemaVersionError, match="says 0, which no llmsession ever wrote"):
        await open_pg()


async def test_many_stores_creating_one_schema_at_once(postgres_url: str, open_pg: Opener) -> None:
    stores = await asyncio.gather(*(open_pg() for _ in range(8)))
    assert await sql(postgres_url, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    session_id = await new_session(stores[0])
    assert (await stores[-1].get(ACME, session_id)).record.state is Active


def test_many_processes_creating_one_schema_at_once(postgres_url: str) -> None:
    script = f"""
        import asyncio
        from llmsession.store.postgres import PostgresStore

        async def main():
            store = await PostgresStore.open({postgres_url!r})
            await store.aclose()

        asyncio.run(main())
    """
    processes = [spawn(script) for _ in range(6)]
    for process in processes:
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
    versions = asyncio.run(sql(postgres_url, "SELECT version FROM schema_version"))
    assert versions == [(SCHEMA_VERSION,)]


async def test_a_search_path_without_a_schema_is_a_clear_error(open_pg: Opener) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dno_such_schema_x"
    with pytest.raises(StoreError, match="search_path names no existing schema"):
        await open_pg(url)


async def test_an_unreachable_server_is_a_store_error(open_pg: Opener) -> None:
    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL at .*:\*\*\*@"):
        await open_pg("postgresql://postgres:secret@127.0.0.1:1/test?pool_timeout=0.5")


async def test_the_sweep_reads_the_partial_deadline_index(
    postgres_url: str, open_pg: Opener
) -> None:
    await open_pg()
    conninfo = PostgresOptions.from_url(postgres_url).conninfo
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SET enable_seqscan = off")
        cur = await conn.execute(
            "EXPLAIN SELECT session_id FROM sessions WHERE deadline <= 5 "
            "ORDER BY deadline LIMIT 10 FOR UPDATE SKIP LOCKED"
        )
        plan = "\n".join(str(row[0]) for row in await cur.fetchall())
    assert "sessions_by_deadline" in plan


# -- URL options ---------------------------------------------------------------------


def test_the_stores_options_are_taken_out_of_the_url() -> None:
    url = (
        "postgresql://u@h:5432/db?pool_min=2&options=-csearch_path%3Ds1&pool_max=5"
        "&pool_timeout=2.5&sslmode=disable&session_cache=0&turn_pool_max=3"
    )
    options = PostgresOptions.from_url(url)
    assert options == PostgresOptions(
        "postgresql://u@h:5432/db?options=-csearch_path%3Ds1&sslmode=disable",
        pool_min=2,
        pool_max=5,
        pool_timeout=2.5,
        session_cache=0,
        turn_pool_max=3,
    )
    assert PostgresOptions.from_url("postgres://h/db") == PostgresOptions("postgres://h/db")
    # libpq's local socket: the empty host keeps its "//".
    local = "postgresql:///test?host=/var/run/postgresql&user=postgres"
    assert PostgresOptions.from_url(f"{local}&pool_max=2").conninfo == local
    assert PostgresOptions.from_url("postgresql:///test").conninfo == "postgresql:///test"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("pool_max=0", "pool_max"),
        ("pool_max=ten", "pool_max"),
        ("pool_min=-1", "pool_min"),
        ("pool_min=5&pool_max=2", "pool_min (5) must not be more than pool_max (2)"),
        ("pool_timeout=0", "pool_timeout"),
        ("pool_timeout=nan", "pool_timeout"),
        ("session_cache=-3", "session_cache"),
        ("turn_pool_max=0", "turn_pool_max"),
    ],
)
def test_bad_options_are_refused_by_name(query: str, named: str) -> None:
    with pytest.raises(InvalidInput, match=named.replace("(", r"\(").replace(")", r"\)")):
        PostgresOptions.from_url(f"postgresql://h/db?{query}")


@pytest.mark.parametrize("url", ["mysql://h/db", "postgresql:/db", "postgres:db"])
def test_only_postgresql_urls_are_taken(url: str) -> None:
    with pytest.raises(InvalidInput, match="starts with postgresql://"):
        PostgresOptions.from_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://h/db?bogus=1", 'invalid URI query parameter: "bogus"'),
        ("postgresql://h:five/db", "'five'"),
        # libpq quotes the token it could not read: here the password.
        ("postgresql://u:pa%zz@h/db", r'u:\*\*\*@h/db: invalid percent-encoded token: "\*\*\*"'),
    ],
)
def test_a_url_libpq_cannot_read_is_invalid_input_without_its_password(
    url: str, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message) as raised:
        PostgresOptions.from_url(url)
    assert "pa%zz" not in str(raised.value)


async def test_the_pool_honours_its_sizes_and_libpq_gets_the_rest(
    postgres_url: str, open_pg: Opener
) -> None:
    name = f"llms_{schema_of(postgres_url)}"
    store = await open_pg(f"{postgres_url}&application_name={name}&pool_min=3&pool_max=4")
    count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    assert await sql(postgres_url, count, name) == [(3,)]
    session_id = await new_session(store)
    await asyncio.gather(*(store.record_round(ACME, session_id, 1) for _ in range(40)))
    assert (await store.get(ACME, session_id)).record.round_count == 40
    connected = (await sql(postgres_url, count, name))[0][0]
    assert isinstance(connected, int)
    assert 3 <= connected <= 4


async def test_a_pool_may_start_empty(postgres_url: str, open_pg: Opener) -> None:
    store = await open_pg(f"{postgres_url}&pool_min=0&pool_max=1")
    session_id = await new_session(store)
    assert (await store.get(ACME, session_id)).version == 2


async def test_a_dropped_connection_is_a_store_error_and_the_store_recovers(
    postgres_url: str, open_pg: Opener
) -> None:
    name = f"llmd_{schema_of(postgres_url)}"
    store = await open_pg(f"{postgres_url}&application_name={name}&pool_min=1&pool_max=1")
    session_id = await new_session(store)
    await sql(
        postgres_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        name,
    )
    with pytest.raises(StoreError, match="PostgreSQL failed"):
        await store.get(ACME, session_id)
    deadline = time.monotonic() + 10
    while True:
        try:
            await store.ping()
            break
        except StoreError:
            assert time.monotonic() < deadline, "the pool never reconnected"
            await asyncio.sleep(0.05)
    assert (await store.get(ACME, session_id)).record.state is Active


async def test_a_connection_dropped_while_idle_is_replaced_before_a_statement_runs(
    postgres_url: str, open_pg: Opener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A session's start is written only once its provider answered: a connection
    # the server dropped while it sat idle in the pool must not fail it. Every
    # connection counts as idle long enough to be checked here.
    monkeypatch.setattr(postgres, "_IDLE_CHECK_SECONDS", 0.0, raising=False)
    name = f"llmi_{schema_of(postgres_url)}"
    store = await open_pg(f"{postgres_url}&application_name={name}&pool_min=2&pool_max=2")
    session_id = await new_session(store)
    terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
    await sql(postgres_url, terminate, name)
    # Both pooled connections are dead: each is checked, given back, and replaced.
    assert (await store.get(ACME, session_id)).record.state is Active
    await sql(postgres_url, terminate, name)
    started = await new_session(store)
    assert (await store.get(ACME, started)).version == 2


async def test_open_store_picks_this_backend(postgres_url: str) -> None:
    store = await open_store(postgres_url)
    try:
        assert isinstance(store, PostgresStore)
    finally:
        await store.aclose()


# -- several replicas on one database ------------------------------------------------


async def test_64_clients_over_four_replicas_lose_no_round(open_pg: Opener) -> None:
    replicas = [await open_pg() for _ in range(4)]
    session_id = await new_session(replicas[0])
    clients, per_client = 64, 5

    async def client(number: int) -> list[int]:
        replica = replicas[number % len(replicas)]
        sent: list[int] = []
        for i in range(per_client):
            delta = number * 100 + i
            await replica.record_round(ACME, session_id, delta)
            sent.append(delta)
        return sent

    sent = [d for deltas in await asyncio.gather(*map(client, range(clients))) for d in deltas]
    stored = await replicas[3].get(ACME, session_id)
    assert stored.record.round_count == clients * per_client
    assert stored.record.delta_tokens == sum(sent)
    assert stored.version == 2 + clients * per_client
    rounds = await all_rounds(replicas[1], session_id)
    assert [r.seq for r in rounds] == list(range(1, clients * per_client + 1))
    assert Counter(r.delta_tokens for r in rounds) == Counter(sent)


async def test_one_idempotency_key_over_replicas_counts_once(open_pg: Opener) -> None:
    replicas = [await open_pg() for _ in range(3)]
    session_id = await new_session(replicas[0])
    results = await asyncio.gather(
        *(
            replicas[i % 3].record_round(ACME, session_id, 7, idempotency_key="once")
            for i in range(30)
        )
    )
    assert sum(not r.replayed for r in results) == 1
    assert {r.round for r in results} == {results[0].round}
    assert (await replicas[2].get(ACME, session_id)).record.round_count == 1


async def test_a_replica_never_answers_from_what_it_saw_before(open_pg: Opener) -> None:
    # Each replica remembers the sessions it wrote; another replica's writes since
    # must still decide every answer.
    first, second = await open_pg(), await open_pg()
    created = await second.create(ACME, provider_id="p", model="m", initial_tokens=10)
    session_id = created.record.session_id
    await first.activate(ACME, session_id)
    # second last saw it Created: it must see it Active now.
    with pytest.raises(WrongStateError, match="'active'"):
        await second.activate(ACME, session_id)
    recorded = await second.record_round(ACME, session_id, 3)
    assert recorded.round.seq == 1

    replay_first = await first.record_round(ACME, session_id, 4, idempotency_key="k")
    replay = await second.record_round(ACME, session_id, 4, idempotency_key="k")
    assert replay.replayed
    assert replay.session == replay_first.session
    await second.record_round(ACME, session_id, 5)

    await first.close(ACME, session_id)
    with pytest.raises(WrongStateError, match="'closed'"):
        await second.record_round(ACME, session_id, 1)
    stored = await second.get(ACME, session_id)
    assert (stored.record.state, stored.record.round_count) == (Closed, 3)


async def test_a_purged_session_is_gone_for_a_replica_that_made_it(
    open_pg: Opener, clock: ManualClock
) -> None:
    maker, purger = await open_pg(), await open_pg()
    created = await maker.create(ACME, provider_id="p", model="m", initial_tokens=10)
    clock.advance(60)
    assert await purger.purge_created(60) == 1
    with pytest.raises(NotFoundError):
        await maker.activate(ACME, created.record.session_id)


async def test_a_sweep_in_one_replica_is_seen_by_the_others(
    open_pg: Opener, clock: ManualClock
) -> None:
    writer, sweeper = await open_pg(), await open_pg()
    session_id = await new_session(writer, ttl_seconds=10)
    await writer.record_round(ACME, session_id, 1)
    clock.advance(10)
    assert await sweeper.sweep() == 1
    with pytest.raises(WrongStateError, match="'expired'"):
        await writer.record_round(ACME, session_id, 1)
    stored = await writer.get(ACME, session_id)
    assert (stored.record.state, stored.version) == (SessionExpired, 4)


async def test_without_the_session_cache_rounds_still_count(
    postgres_url: str, open_pg: Opener
) -> None:
    store = await open_pg(f"{postgres_url}&session_cache=0")
    session_id = await new_session(store)
    await asyncio.gather(*(store.record_round(ACME, session_id, 2) for _ in range(20)))
    stored = await store.get(ACME, session_id)
    assert (stored.record.round_count, stored.record.delta_tokens) == (20, 40)


def test_sweepers_in_separate_processes_expire_each_session_once(postgres_url: str) -> None:
    # Real time here: the sweeping processes read the system clock.
    count = 400
    started = system_clock().plus_seconds(-7200)

    async def make_due_sessions() -> list[SessionId]:
        store = await PostgresStore.open(postgres_url, clock=ManualClock(started))
        try:
            return [await new_session(store, ttl_seconds=60 + i % 5) for i in range(count)]
        finally:
            await store.aclose()

    ids = asyncio.run(make_due_sessions())
    script = f"""
        import asyncio, sys
        from llmsession.store.postgres import PostgresStore

        async def main():
            store = await PostgresStore.open({postgres_url!r})
            print("ready", flush=True)
            sys.stdin.readline()  # all processes start sweeping together
            total = 0
            while swept := await store.sweep(limit=3):
                total += swept
            await store.aclose()
            print(total)

        asyncio.run(main())
    """
    processes = [spawn(script) for _ in range(4)]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    swept: list[int] = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        swept.append(int(out))
    assert sum(swept) == count

    async def check() -> None:
        store = await PostgresStore.open(postgres_url)
        try:
            for i, session_id in enumerate(ids):
                stored = await store.get(ACME, session_id)
                assert stored.record.state is SessionExpired
                assert stored.record.expired_at == started.plus_seconds(60 + i % 5)
                assert stored.version == 3  # created, activated, expired once
        finally:
            await store.aclose()

    asyncio.run(check())


def spawn(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_changes_queued_on_one_session_go_together_and_each_gets_its_answer(
    open_pg: Opener,
) -> None:
    store = await open_pg()
    session_id = await new_session(store)

    async def round_(i: int) -> RoundResult | WrongStateError:
        # Every third round carries one of five keys (the same key, the same tokens).
        key = f"k{i % 5}" if i % 3 == 0 else None
        delta = 100 + i % 5 if key else i + 1
        try:
            return await store.record_round(ACME, session_id, delta, idempotency_key=key)
        except WrongStateError as error:
            return error

    closing = store.close(ACME, session_id)
    answers = await asyncio.gather(
        *(round_(i) for i in range(20)), closing, *(round_(i) for i in range(20, 40))
    )
    outcomes = answers[:20] + answers[21:]
    results = [o for o in outcomes if isinstance(o, RoundResult)]
    refused = [o for o in outcomes if isinstance(o, WrongStateError)]
    stored = await store.get(ACME, session_id)
    rounds = await all_rounds(store, session_id)
    assert stored.record.state is Closed
    assert stored.record.round_count == len(rounds)
    assert [r.seq for r in rounds] == list(range(1, len(rounds) + 1))
    # Every round answered as new is stored once; a replay names a stored round.
    assert sorted((r.round for r in results if not r.replayed), key=lambda r: r.seq) == rounds
    assert {r.round for r in results} <= set(rounds)
    keys = [r.idempotency_key for r in rounds if r.idempotency_key is not None]
    assert len(keys) == len(set(keys))
    # Rounds queued behind the close were refused, each with its own error.
    assert refused
    assert len(results) + len(refused) == 40
