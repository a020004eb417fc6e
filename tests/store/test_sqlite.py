"""What only the SQLite store has: its URL, its file, its schema version and its locking.

The behaviour every backend shares is in test_conformance.py.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from llmsession.clock import ManualClock, system_clock
from llmsession.errors import (
    ConflictError,
    InvalidInput,
    SchemaVersionError,
    SessionExpiredError,
    StoreError,
)
from llmsession.ids import SessionId, TenantId
from llmsession.states import Active, SessionExpired
from llmsession.store import SessionQuery, SessionStore, open_store
from llmsession.store.models import NO_USAGE, TurnItems
from llmsession.store.sqlite import (
    _CHECKPOINT_EVERY,
    _WRITER_AUTOCHECKPOINT,
    SCHEMA_VERSION,
    SQLiteStore,
    _Connection,
    path_of_url,
)
from llmsession.store.turn_file import TurnFile, open_turn_file
from tests.store.conftest import T0
from tests.store.test_gateway_rounds import turn, usage
from tests.store.turn_holder import read_line, start_holder

ACME = TenantId("acme")


async def _session(store: SessionStore) -> SessionId:
    created = await store.create(ACME, provider_id="openai", model="gpt-4o", initial_tokens=10)
    await store.activate(ACME, created.record.session_id)
    return created.record.session_id


def _pragma(path: Path, name: str) -> object:
    with sqlite3.connect(path) as conn:
        value: object = conn.execute(f"PRAGMA {name}").fetchone()[0]
    conn.close()
    return value


def _entries(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def _size(path: Path) -> int:
    return path.stat().st_size


# -- URLs and files ------------------------------------------------------------------


async def test_a_relative_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await open_store("sqlite:///data/nested/sessions.db")
    await store.aclose()
    assert (tmp_path / "data" / "nested" / "sessions.db").is_file()


async def test_an_absolute_url_creates_missing_directories(tmp_path: Path) -> None:
    path = tmp_path / "a b" / "c" / "sessions.db"
    store = await open_store(f"sqlite:///{tmp_path}/a%20b/c/sessions.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.path == path
    finally:
        await store.aclose()
    assert path.is_file()


def test_path_of_url() -> None:
    assert path_of_url("sqlite:///./llmsession.db") == Path("llmsession.db")
    assert path_of_url("sqlite:///rel/x.db") == Path("rel/x.db")
    assert path_of_url("sqlite:////abs/x.db") == Path("/abs/x.db")


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "sqlite:///x.db?mode=ro",
        "sqlite:///x.db#part",
        "sqlite:///:memory:",
        "sqlite:///some/dir/",
        # Without "//": these named "el.db" and a relative "tmp/abs.db".
        "sqlite:rel.db",
        "sqlite:/tmp/abs.db",
    ],
)
async def test_a_bad_url_is_refused_and_creates_nothing(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInput, match="sqlite:///"):
        await open_store(url)
    assert _entries(tmp_path) == []


async def test_a_directory_that_cannot_be_made_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="directory"):
        await open_store(f"sqlite:///{tmp_path}/file/sessions.db")


async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    path.write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError, match=str(path)):
        await open_store(f"sqlite:///{path}")
    assert path.read_bytes() == b"this is not SQLite" * 100


# -- schema ------------------------------------------------------------------------


async def test_a_new_file_gets_the_schema_in_wal_mode(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    await store.aclose()
    path = path_of_url(sqlite_url)
    assert _pragma(path, "journal_mode") == "wal"
    assert _pragma(path, "user_version") == SCHEMA_VERSION
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert {"sessions", "rounds", "tenants", "api_keys", "sessions_due"} <= tables


async def test_a_newer_schema_is_refused_and_left_alone(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    await store.aclose()
    path = path_of_url(sqlite_url)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaVersionError, match=rf"schema version {SCHEMA_VERSION + 1}.*upgrade"):
        await open_store(sqlite_url)
    assert _pragma(path, "user_version") == SCHEMA_VERSION + 1


def _columns(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        columns = [tuple(row) for row in conn.execute(f"PRAGMA table_info({table})")]
    conn.close()
    return columns


def _schema(path: Path) -> dict[str, object]:
    """What a file's schema is made of, by table or index name: a table's columns,
    whether it has rowids and its indexes (with their columns); an index's table
    and definition. Not the tables' CREATE text, which ALTER TABLE edits."""
    with sqlite3.connect(path) as conn:
        schema: dict[str, object] = {}
        for kind, name, table, sql in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
        ).fetchall():
            if kind != "table":
                schema[name] = (kind, table, sql)
                continue
            indexes = [
                (
                    tuple(index[1:]),
                    [tuple(c) for c in conn.execute(f"PRAGMA index_xinfo({index[1]})")],
                )
                for index in conn.execute(f"PRAGMA index_list({name})").fetchall()
            ]
            listed = conn.execute(f"PRAGMA table_list({name})").fetchone()
            schema[name] = (
                [tuple(c) for c in conn.execute(f"PRAGMA table_info({name})")],
                tuple(listed),
                sorted(indexes),
            )
    conn.close()
    return schema


# What schema version 6 changed (sessions_due on the due column, not on the
# deadline); taking it back leaves version 5.
_UNDUE = (
    "DROP INDEX sessions_due",
    "ALTER TABLE sessions DROP COLUMN due",
    "CREATE INDEX sessions_due ON sessions (deadline) WHERE deadline IS NOT NULL",
)
_TO_VERSION_5 = (*_UNDUE, "PRAGMA user_version = 5")

# What schema versions 6 and 5 added (the counters and their triggers); taking
# them away leaves version 4.
_DROP_COUNTS = (
    *_UNDUE,
    *(f"DROP TRIGGER session_counts_{name}" for name in ("insert", "delete", "update", "move")),
    "DROP TABLE session_counts",
)
_TO_VERSION_4 = (*_DROP_COUNTS, "PRAGMA user_version = 4")

# What schema versions 6 to 4 added (the due index, the counters, the rollup);
# taking them away leaves version 3.
_TO_VERSION_3 = (*_DROP_COUNTS, "DROP TABLE usage_rollup", "PRAGMA user_version = 3")

# What schema versions 6 to 3 added (the due index, the counters, the rollup,
# gateway rounds); taking them away leaves version 2.
_TO_VERSION_2 = (
    *_TO_VERSION_3[:-1],
    *(
        f"ALTER TABLE sessions DROP COLUMN {column}"
        for column in (
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
            "rounds_without_usage",
            "has_turns",
        )
    ),
    *(
        f"ALTER TABLE rounds DROP COLUMN {column}"
        for column in (
            "gateway",
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
            "raw_usage",
        )
    ),
    "DROP TABLE turns",
    "DROP TABLE started_sessions",
    "PRAGMA user_version = 2",
)

# What schema version 2 added to version 1 (each round's session_delta_tokens and
# session_version); taking it away from a version 2 file leaves version 1.
_TO_VERSION_1 = (
    """
    CREATE TABLE rounds_v1 (
        session_id      BLOB    NOT NULL,
        seq             INTEGER NOT NULL,
        delta_tokens    INTEGER NOT NULL,
        recorded_at     INTEGER NOT NULL,
        idempotency_key TEXT,
        PRIMARY KEY (session_id, seq),
        UNIQUE (session_id, idempotency_key)
    ) WITHOUT ROWID
    """,
    "INSERT INTO rounds_v1 SELECT session_id, seq, delta_tokens, recorded_at, "
    "idempotency_key FROM rounds",
    "DROP TABLE rounds",
    "ALTER TABLE rounds_v1 RENAME TO rounds",
    "PRAGMA user_version = 1",
)


def _downgrade(path: Path, statements: Sequence[str]) -> None:
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN")
        for statement in statements:
            conn.execute(statement)
        conn.execute("COMMIT")
    conn.close()


async def _fresh_schema(tmp_path: Path) -> dict[str, object]:
    fresh = tmp_path / "fresh.db"
    await (await open_store(f"sqlite:///{fresh}")).aclose()
    return _schema(fresh)


async def test_the_downgrades_of_these_tests_leave_the_older_schemas(
    sqlite_url: str, tmp_path: Path
) -> None:
    await (await open_store(sqlite_url)).aclose()
    path = path_of_url(sqlite_url)
    _downgrade(path, _TO_VERSION_2)
    version_2 = _schema(path)
    assert {"turns", "started_sessions"}.isdisjoint(version_2)
    assert [c[1] for c in _columns(path, "rounds")] == [
        "session_id",
        "seq",
        "delta_tokens",
        "recorded_at",
        "idempotency_key",
        "session_delta_tokens",
        "session_version",
    ]
    _downgrade(path, _TO_VERSION_1)
    assert [c[1] for c in _columns(path, "rounds")] == [
        "session_id",
        "seq",
        "delta_tokens",
        "recorded_at",
        "idempotency_key",
    ]
    assert _schema(path) != version_2 != await _fresh_schema(tmp_path)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
async def test_an_upgraded_file_has_the_schema_of_a_fresh_one(
    sqlite_url: str, tmp_path: Path, version: int
) -> None:
    await (await open_store(sqlite_url)).aclose()
    path = path_of_url(sqlite_url)
    _downgrade(
        path,
        {5: _TO_VERSION_5, 4: _TO_VERSION_4, 3: _TO_VERSION_3}.get(version, _TO_VERSION_2),
    )
    if version == 1:
        _downgrade(path, _TO_VERSION_1)
    assert _pragma(path, "user_version") == version
    await (await open_store(sqlite_url)).aclose()
    assert _pragma(path, "user_version") == SCHEMA_VERSION
    assert _schema(path) == await _fresh_schema(tmp_path)


@pytest.mark.parametrize("version", [2, 3])
async def test_an_upgrade_back_fills_the_rollup_the_writes_keep(
    sqlite_url: str, version: int
) -> None:
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    for hour in range(3):
        session_id = await _session(store)
        await store.record_round(ACME, session_id, 10 + hour, idempotency_key="k")
        await store.record_round(ACME, session_id, 10 + hour, idempotency_key="k")
        if version == 3:
            started = SessionId.generate(clock())
            await store.start_with_turn(
                ACME, started, provider_id="fake", model="m", turn=turn(1), usage=usage(100)
            )
            await store.record_turn(ACME, started, turn=turn(2), usage=None)
        await store.create(ACME, provider_id="p", model=f"m{hour}", initial_tokens=5)
        clock.advance(3600)
    args = {"bucket": "hour", "start": T0, "end": clock(), "group_by": ["provider", "model"]}
    series = await store.timeseries(ACME, **args)  # type: ignore[arg-type]
    assert sum(bucket.rounds for bucket in series) == (9 if version == 3 else 3)
    await store.aclose()
    path = path_of_url(sqlite_url)
    _downgrade(path, _TO_VERSION_3 if version == 3 else _TO_VERSION_2)
    with sqlite3.connect(path) as conn:
        assert not conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'usage_rollup'"
        ).fetchall()
    conn.close()
    store = await open_store(sqlite_url, clock=clock)
    try:
        assert _pragma(path, "user_version") == SCHEMA_VERSION
        assert await store.timeseries(ACME, **args) == series  # type: ignore[arg-type]
    finally:
        await store.aclose()


@pytest.mark.parametrize("version", [3, 4])
async def test_an_upgrade_back_fills_the_counters_the_writes_keep(
    sqlite_url: str, version: int
) -> None:
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock, default_ttl_seconds=60)
    for n in range(12):
        session_id = await _session(store)
        await store.record_round(ACME, session_id, 10 + n)
        if n % 3 == 0:
            await store.close(ACME, session_id)
        if n % 4 == 0:
            started = SessionId.generate(clock())
            await store.start_with_turn(
                ACME, started, provider_id="fake", model=f"m{n % 2}", turn=turn(1),
                usage=usage(100),
            )  # fmt: skip
        await store.create(ACME, provider_id="p", model=f"m{n % 2}", initial_tokens=5 + n)
        clock.advance(7)
    clock.advance(55)  # some Active sessions due, not swept
    totals = await store.totals(ACME, ("provider", "model"))
    assert sum(t.sessions["expired"] for t in totals) > 0
    await store.aclose()
    path = path_of_url(sqlite_url)
    rows = "SELECT * FROM session_counts WHERE sessions <> 0 ORDER BY 1, 2, 3, 4"
    with sqlite3.connect(path) as conn:
        written = conn.execute(rows).fetchall()
    conn.close()
    _downgrade(path, _TO_VERSION_4 if version == 4 else _TO_VERSION_3)
    store = await open_store(sqlite_url, clock=clock, default_ttl_seconds=60)
    try:
        assert _pragma(path, "user_version") == SCHEMA_VERSION
        assert await store.totals(ACME, ("provider", "model")) == totals
        with sqlite3.connect(path) as conn:
            assert conn.execute(rows).fetchall() == written
        conn.close()
    finally:
        await store.aclose()


async def test_a_version_2_file_is_upgraded_and_takes_gateway_rounds(sqlite_url: str) -> None:
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    sessions = [await _session(store) for _ in range(3)]
    answers = []
    for n, session_id in enumerate(sessions):
        for round_ in range(3):
            answers.append(
                await store.record_round(ACME, session_id, n + round_, idempotency_key=f"k{round_}")
            )
    await store.close(ACME, sessions[0])
    before = [await store.get(ACME, s) for s in sessions]
    rounds = [(await store.list_rounds(ACME, s)).items for s in sessions]
    totals = await store.totals(ACME, ("provider", "model"))
    await store.aclose()
    path = path_of_url(sqlite_url)
    _downgrade(path, _TO_VERSION_2)

    store = await open_store(sqlite_url, clock=clock)
    try:
        assert _pragma(path, "user_version") == SCHEMA_VERSION
        assert [await store.get(ACME, s) for s in sessions] == before
        assert all(stored.usage == NO_USAGE for stored in before)
        assert [(await store.list_rounds(ACME, s)).items for s in sessions] == rounds
        assert not any(r.gateway for page in rounds for r in page)
        assert await store.totals(ACME, ("provider", "model")) == totals
        # Ledger rounds go on; a replay still gives the first answer.
        replay = await store.record_round(ACME, sessions[1], 1, idempotency_key="k0")
        assert (replay.replayed, replay.round, replay.session) == (
            True,
            answers[3].round,
            answers[3].session,
        )
        started = SessionId.generate(clock())
        await store.start_with_turn(
            ACME, started, provider_id="fake", model="m", turn=turn(1), usage=usage(100)
        )
        await store.record_turn(ACME, started, turn=turn(2), usage=usage(150, cached=100))
        assert await store.history(ACME, started) == [turn(1), turn(2)]
    finally:
        await store.aclose()


async def test_a_version_1_file_is_upgraded_and_replays_give_the_first_answers(
    sqlite_url: str,
) -> None:
    store = await open_store(sqlite_url)
    answers = []
    sessions = [await _session(store) for _ in range(3)]
    for n, session_id in enumerate(sessions):
        for round_ in range(4):
            key = f"k{round_}" if round_ % 2 else None
            answers.append(
                await store.record_round(ACME, session_id, n + round_, idempotency_key=key)
            )
    await store.close(ACME, sessions[0])
    rounds = [(await store.list_rounds(ACME, s)).items for s in sessions]
    await store.aclose()
    path = path_of_url(sqlite_url)
    _downgrade(path, _TO_VERSION_2)
    _downgrade(path, _TO_VERSION_1)

    store = await open_store(sqlite_url)
    try:
        assert _pragma(path, "user_version") == SCHEMA_VERSION
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
            assert (again.replayed, again.round, again.session) == (
                True,
                first.round,
                first.session,
            )
    finally:
        await store.aclose()


async def test_a_file_of_another_application_is_refused(sqlite_url: str) -> None:
    path = path_of_url(sqlite_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE sessions (anything TEXT)")
    conn.close()
    with pytest.raises(StoreError, match="did not create"):
        await open_store(sqlite_url)
    assert _pragma(path, "user_version") == 0


async def test_stores_opened_at_once_on_a_new_file_share_one_schema(sqlite_url: str) -> None:
    stores = await asyncio.gather(*(open_store(sqlite_url) for _ in range(6)))
    try:
        session_id = await _session(stores[0])
        for store in stores:
            assert (await store.get(ACME, session_id)).record.session_id == session_id
    finally:
        for store in stores:
            await store.aclose()


async def test_aclose_twice_is_fine(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    await store.aclose()
    await store.aclose()


# -- sharing the file with another process ------------------------------------------

_HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


@asynccontextmanager
async def _write_lock_held_elsewhere(path: Path) -> AsyncGenerator[asyncio.subprocess.Process]:
    """Another process holds SQLite's write lock on ``path`` until the block ends."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLD_WRITE_LOCK,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        assert await asyncio.wait_for(process.stdout.readline(), 60) == b"locked\n"
        yield process
    finally:
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        process.stdin.close()
        await process.wait()
    assert process.returncode == 0


def _sessions_in_the_database_file(path: Path) -> int:
    """The sessions the database file holds without its WAL: those checkpointed
    (none while the schema itself is only in the WAL)."""
    with sqlite3.connect(f"file:{path}?immutable=1", uri=True) as conn:
        tables = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sessions'").fetchall()
        count: int = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()[0] if tables else 0
    conn.close()
    return count


async def test_the_wal_is_checkpointed_in_a_thread_of_its_own(sqlite_url: str) -> None:
    # The writer's own automatic checkpoint only comes far later: every write
    # stays in the WAL until the checkpointer's turn, after _CHECKPOINT_EVERY
    # commits.
    store = await open_store(sqlite_url)
    assert isinstance(store, SQLiteStore)
    path = path_of_url(sqlite_url)
    try:
        assert store._writer is not None
        assert store._checkpointer is not None
        autocheckpoint = await store._writer.run(
            lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
        assert autocheckpoint == _WRITER_AUTOCHECKPOINT
        # Schema and tenant: the writer's first commits.
        before = store._commits
        for _ in range(_CHECKPOINT_EVERY - before - 1):
            await store.create(ACME, provider_id="p", model="m", initial_tokens=1)
        await store._checkpointer.run(lambda _: None)
        assert _sessions_in_the_database_file(path) == 0
        await store.create(ACME, provider_id="p", model="m", initial_tokens=1)
        # Its checkpoint was queued before this job.
        await store._checkpointer.run(lambda _: None)
        assert _sessions_in_the_database_file(path) == _CHECKPOINT_EVERY - before
    finally:
        await store.aclose()


async def test_a_write_waits_for_another_process_and_reads_go_on(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    try:
        session_id = await _session(store)
        async with _write_lock_held_elsewhere(path_of_url(sqlite_url)):
            pending = asyncio.create_task(store.record_round(ACME, session_id, 5))
            # Reads use their own connection and WAL snapshots: no wait for the lock.
            assert (await store.get(ACME, session_id)).record.round_count == 0
            assert len((await store.list_sessions(ACME, SessionQuery())).items) == 1
            assert await store.totals(ACME)
            assert not pending.done()
        result = await pending
        assert result.session.record.round_count == 1
    finally:
        await store.aclose()


async def test_a_write_cancelled_while_waiting_leaves_the_store_usable(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    try:
        session_id = await _session(store)
        async with _write_lock_held_elsewhere(path_of_url(sqlite_url)):
            pending = asyncio.create_task(store.record_round(ACME, session_id, 5))
            # Give the round time to reach BEGIN IMMEDIATE; cancelling earlier is
            # valid too, only less interesting.
            await asyncio.sleep(0.2)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            # The writer's thread still waits in BEGIN IMMEDIATE with the connection:
            # no write of the event loop's thread may begin on it meanwhile.
            assert isinstance(store, SQLiteStore)
            assert store._lock.locked()
        # The cancelled round ran in the writer's thread: like any database call
        # that is abandoned, it either committed whole or not at all (its caller
        # never saw an answer, so it was never acknowledged).
        result = await store.record_round(ACME, session_id, 7)
        assert (result.round.seq, result.session.record.delta_tokens) in {(1, 7), (2, 12)}
        rounds = (await store.list_rounds(ACME, session_id)).items
        assert [r.seq for r in rounds] == list(range(1, result.round.seq + 1))
        assert sum(r.delta_tokens for r in rounds) == result.session.record.delta_tokens
        assert await store.sweep() == 0
    finally:
        await store.aclose()


async def test_a_round_cancelled_during_its_commit_is_committed_before_the_next(
    sqlite_url: str,
) -> None:
    # A round's statements run in the event loop's thread and its COMMIT in the
    # writer's, held up here: its caller cancelled meanwhile, the COMMIT still
    # runs, and the next round waits for it (one connection, one transaction).
    store = await open_store(sqlite_url)
    assert isinstance(store, SQLiteStore)
    try:
        session_id = await _session(store)
        go = await _held_up(store._writer)
        try:
            pending = asyncio.create_task(store.record_round(ACME, session_id, 5))
            await asyncio.sleep(0.05)
            assert store._lock.locked()
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            assert store._lock.locked()
            following = asyncio.create_task(store.record_round(ACME, session_id, 7))
            await asyncio.sleep(0.05)
            assert not following.done()
        finally:
            go.set()
        result = await following
        assert (result.round.seq, result.session.record.delta_tokens) == (2, 12)
        rounds = (await store.list_rounds(ACME, session_id)).items
        assert [(r.seq, r.delta_tokens) for r in rounds] == [(1, 5), (2, 7)]
    finally:
        await store.aclose()


async def test_a_write_waiting_for_another_process_leaves_the_event_loop_free(
    sqlite_url: str,
) -> None:
    # The writer's busy timeout is 0 in the event loop's thread: a write that
    # finds the lock held goes to the writer's thread and waits there.
    store = await open_store(sqlite_url)
    try:
        session_id = await _session(store)
        async with _write_lock_held_elsewhere(path_of_url(sqlite_url)):
            pending = asyncio.create_task(store.record_round(ACME, session_id, 5))
            # Other tasks run meanwhile (a loop blocked until the lock's holder let
            # go would never get here: it lets go when this block ends).
            for _ in range(20):
                await asyncio.sleep(0.01)
            assert not pending.done()
        assert (await pending).session.record.round_count == 1
    finally:
        await store.aclose()


# -- remembered sessions ----------------------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE and SIGXFSZ (POSIX)")
async def test_a_commit_that_fails_leaves_nothing_remembered(sqlite_url: str) -> None:
    """A round whose COMMIT fails is refused and leaves no trace: the next rounds,
    which start from what the store remembers, count only what was stored."""
    store = await open_store(sqlite_url)
    try:
        session_id = await _session(store)
        await store.record_round(ACME, session_id, 1)
        # The WAL only grows until its first checkpoint, so a file size limit at
        # its present size makes the next COMMIT fail to append (EFBIG): a real
        # I/O error, raised by SQLite as it is on a full disk.
        wal_size = _size(Path(f"{path_of_url(sqlite_url)}-wal"))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (wal_size, hard))
        try:
            with pytest.raises(StoreError, match=r"disk I/O error|full"):
                await store.record_round(ACME, session_id, 1000)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, previous)
        await store.record_round(ACME, session_id, 20)
        result = await store.record_round(ACME, session_id, 300)
    finally:
        await store.aclose()
    assert (result.round.seq, result.session.record.delta_tokens, result.session.version) == (
        3,
        321,
        5,
    )
    fresh = await open_store(sqlite_url)
    try:
        stored = await fresh.get(ACME, session_id)
        rounds = (await fresh.list_rounds(ACME, session_id)).items
    finally:
        await fresh.aclose()
    assert (stored.record.round_count, stored.record.delta_tokens, stored.version) == (3, 321, 5)
    assert [(r.seq, r.delta_tokens) for r in rounds] == [(1, 1), (2, 20), (3, 300)]


# -- gateway rounds: what the conformance suite cannot see ------------------------------


def _stored_turns(path: Path, session_id: SessionId) -> int:
    with sqlite3.connect(path) as conn:
        count: int = conn.execute(
            "SELECT COUNT(*) FROM turns WHERE session_id = ?", (session_id.value.bytes,)
        ).fetchone()[0]
    conn.close()
    return count


async def _started(store: SessionStore, clock: ManualClock, key: str | None = None) -> SessionId:
    session_id = SessionId.generate(clock())
    await store.start_with_turn(
        ACME,
        session_id,
        provider_id="fake",
        model="m",
        turn=turn(1),
        usage=usage(100),
        idempotency_key=key,
        ttl_seconds=60,
    )
    await store.record_turn(ACME, session_id, turn=turn(2), usage=usage(150))
    return session_id


def _due(path: Path, session_id: SessionId) -> tuple[int | None, int | None]:
    """A session's due time and deadline, as stored (epoch microseconds)."""
    with sqlite3.connect(path) as conn:
        due, deadline = conn.execute(
            "SELECT due, deadline FROM sessions WHERE session_id = ?", (session_id.value.bytes,)
        ).fetchone()
    conn.close()
    return due, deadline


def _micros_after(seconds: float) -> int:
    return T0.plus_seconds(seconds).epoch_micros


async def test_a_round_leaves_due_and_a_sweep_moves_it_to_the_deadline(
    sqlite_url: str,
) -> None:
    # A round moves the deadline but not the due time, which sessions_due holds:
    # the index is no page of the round's commit. A sweep after the due time and
    # before the deadline moves due on and changes nothing else.
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock, default_ttl_seconds=60)
    path = path_of_url(sqlite_url)
    try:
        session_id = await _session(store)
        assert _due(path, session_id) == (_micros_after(60), _micros_after(60))
        clock.advance(30)
        await store.record_round(ACME, session_id, 5)
        assert _due(path, session_id) == (_micros_after(60), _micros_after(90))
        clock.advance(40)
        before = await store.get(ACME, session_id)
        assert before.record.state is Active
        assert await store.sweep() == 0
        assert await store.get(ACME, session_id) == before
        assert _due(path, session_id) == (_micros_after(90), _micros_after(90))
        expired = SessionQuery(state=SessionExpired)
        assert (await store.list_sessions(ACME, expired)).items == []
        [totals] = await store.totals(ACME)
        assert (totals.sessions["active"], totals.sessions["expired"]) == (1, 0)
        clock.advance(20)
        assert [s.record.session_id for s in (await store.list_sessions(ACME, expired)).items] == [
            session_id
        ]
        assert await store.sweep() == 1
        swept = await store.get(ACME, session_id)
        assert swept.record.state is SessionExpired
        assert swept.record.expired_at == T0.plus_seconds(90)
        assert _due(path, session_id) == (None, None)
    finally:
        await store.aclose()


async def test_a_sweep_counts_only_the_sessions_it_expires(sqlite_url: str) -> None:
    # Busy sessions come first in due order but are not due: a sweep moves them on
    # and still expires up to its limit of the due ones behind them.
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock, default_ttl_seconds=60)
    try:
        busy = [await _session(store) for _ in range(3)]
        clock.advance(1)
        idle = [await _session(store) for _ in range(3)]
        clock.advance(49)
        for session_id in busy:
            await store.record_round(ACME, session_id, 1)
        clock.advance(20)
        assert [await store.sweep(limit=2), await store.sweep(limit=2), await store.sweep()] == [
            2,
            1,
            0,
        ]
        states = [(await store.get(ACME, s)).record.state for s in busy + idle]
        assert states == [Active] * 3 + [SessionExpired] * 3
    finally:
        await store.aclose()


async def test_an_upgrade_to_version_6_sets_due_to_the_deadline(sqlite_url: str) -> None:
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock, default_ttl_seconds=60)
    sessions = [await _session(store) for _ in range(3)]
    await store.close(ACME, sessions[0])
    clock.advance(30)
    await store.record_round(ACME, sessions[1], 5)
    await store.aclose()
    path = path_of_url(sqlite_url)
    _downgrade(path, _TO_VERSION_5)
    store = await open_store(sqlite_url, clock=clock, default_ttl_seconds=60)
    try:
        assert _pragma(path, "user_version") == SCHEMA_VERSION
        assert [_due(path, s) for s in sessions] == [
            (None, None),
            (_micros_after(90), _micros_after(90)),
            (_micros_after(60), _micros_after(60)),
        ]
        clock.advance(31)
        assert await store.sweep() == 1
        assert (await store.get(ACME, sessions[2])).record.state is SessionExpired
    finally:
        await store.aclose()


async def test_a_sweep_deletes_turns_stored_at_the_start_or_by_a_later_round(
    sqlite_url: str,
) -> None:
    # The sweep looks for turns only where has_turns says so; the write that
    # stores a session's first turn sets it, an insert or an update.
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    path = path_of_url(sqlite_url)
    try:
        at_start, later = SessionId.generate(clock()), SessionId.generate(clock())
        for session_id, first in ((at_start, turn(1)), (later, None)):
            await store.start_with_turn(
                ACME,
                session_id,
                provider_id="fake",
                model="m",
                turn=first,
                usage=usage(100),
                ttl_seconds=60,
            )
        await store.record_turn(ACME, later, turn=None, usage=usage(1))
        await store.record_turn(ACME, later, turn=turn(3), usage=usage(1))
        assert [_stored_turns(path, s) for s in (at_start, later)] == [1, 1]
        clock.advance(61)
        assert await store.sweep() == 2
        assert [_stored_turns(path, s) for s in (at_start, later)] == [0, 0]
    finally:
        await store.aclose()


async def test_every_way_out_of_active_deletes_the_turns_and_keeps_the_rest(
    sqlite_url: str,
) -> None:
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    path = path_of_url(sqlite_url)
    try:
        closed = await _started(store, clock, key="start-closed")
        expired = await _started(store, clock)
        swept = await _started(store, clock)
        late = await _started(store, clock)
        clock.advance(30)
        kept = await _started(store, clock)
        assert [_stored_turns(path, s) for s in (closed, expired, swept, late, kept)] == [2] * 5

        await store.close(ACME, closed)
        await store.expire(ACME, expired)
        clock.advance(31)
        with pytest.raises(SessionExpiredError):
            await store.record_turn(ACME, late, turn=turn(3), usage=usage(1))
        assert await store.sweep() == 1
        assert [_stored_turns(path, s) for s in (closed, expired, swept, late, kept)] == [
            0,
            0,
            0,
            0,
            2,
        ]
        for session_id in (closed, expired, swept, late):
            stored = await store.get(ACME, session_id)
            assert (stored.record.round_count, stored.usage.input_tokens) == (2, 250)
            assert len((await store.list_rounds(ACME, session_id)).items) == 2
        # The key that started a session stays with it.
        found = await store.find_turn(ACME, "start-closed")
        assert found is not None
        assert (found.round.session_id, found.turn) == (closed, None)
    finally:
        await store.aclose()


async def test_a_used_start_key_writes_nothing(sqlite_url: str) -> None:
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    try:
        first = await _started(store, clock, key="start")
        again = SessionId.generate(clock())
        with pytest.raises(ConflictError, match=str(first)):
            await store.start_with_turn(
                ACME,
                again,
                provider_id="fake",
                model="m",
                turn=turn(1),
                usage=usage(100),
                idempotency_key="start",
            )
        assert _stored_turns(path_of_url(sqlite_url), again) == 0
        (totals,) = await store.totals(ACME)
        assert totals.sessions["active"] == 1
        assert totals.rounds == 2
    finally:
        await store.aclose()


async def test_turns_lock_a_sidecar_file_that_holds_no_data(sqlite_url: str) -> None:
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    path = path_of_url(sqlite_url)
    sidecar = Path(f"{path}-turns")
    try:
        session_id = await _started(store, clock)
        async with store.turn_lock(ACME, session_id):
            assert (await asyncio.to_thread(os.path.getsize, sidecar)) == 0
        assert "turn_leases" not in _schema(path)
    finally:
        await store.aclose()


async def test_two_stores_on_one_file_in_one_process_take_turns(sqlite_url: str) -> None:
    # POSIX locks are the process's: the stores share its in-process turns.
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    other = await open_store(sqlite_url, clock=clock)
    try:
        session_id = await _started(store, clock)
        got_in = asyncio.Event()

        async def take_turn() -> None:
            async with other.turn_lock(ACME, session_id):
                got_in.set()

        async with store.turn_lock(ACME, session_id):
            waiting = asyncio.create_task(take_turn())
            await asyncio.sleep(0.1)
            assert not got_in.is_set()
        await asyncio.wait_for(waiting, 60)
        # Closing one store leaves the other's turns working.
        await store.aclose()
        async with asyncio.timeout(60), other.turn_lock(ACME, session_id):
            pass
    finally:
        await other.aclose()
        await store.aclose()


async def test_a_cancelled_turn_lets_the_next_one_in(sqlite_url: str) -> None:
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    other = await open_store(sqlite_url, clock=clock)
    try:
        session_id = await _started(store, clock)
        inside = asyncio.Event()

        async def hold() -> None:
            async with store.turn_lock(ACME, session_id):
                inside.set()
                await asyncio.Event().wait()

        holding = asyncio.create_task(hold())
        await inside.wait()
        holding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holding
        async with asyncio.timeout(60), other.turn_lock(ACME, session_id):
            pass
    finally:
        await other.aclose()
        await store.aclose()


def _free_elsewhere(sidecar: Path, offset: int) -> bool:
    """Whether another process could lock the byte at ``offset`` of ``sidecar`` now."""
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n"
        "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]), os.SEEK_SET)\n"
        "except OSError:\n"
        "    sys.exit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(sidecar), str(offset)], check=False)
    assert done.returncode in (0, 1)
    return done.returncode == 0


async def test_a_late_give_back_leaves_the_byte_to_the_next_holder(tmp_path: Path) -> None:
    # SQLite gives a turn back from its reader's thread without waiting: the
    # session's next holder in this process may have taken the byte again by then.
    turn_file = open_turn_file(tmp_path / "x.db-turns")
    try:
        session_id = SessionId.generate(T0)
        first, second = turn_file.claim(session_id), turn_file.claim(session_id)
        assert turn_file.take(first)
        assert turn_file.take(second)
        turn_file.give_back(first)
        assert not await asyncio.to_thread(_free_elsewhere, turn_file.path, second.offset)
        turn_file.give_back(second)
        assert await asyncio.to_thread(_free_elsewhere, turn_file.path, second.offset)
    finally:
        turn_file.release()


async def test_a_claim_given_back_before_its_take_takes_nothing(tmp_path: Path) -> None:
    turn_file = open_turn_file(tmp_path / "x.db-turns")
    try:
        claim = turn_file.claim(SessionId.generate(T0))
        turn_file.give_back(claim)
        assert not turn_file.take(claim)
        assert await asyncio.to_thread(_free_elsewhere, turn_file.path, claim.offset)
    finally:
        turn_file.release()


async def _held_up(connection: object) -> threading.Event:
    """Hold up a store connection's thread until the returned event is set."""
    assert isinstance(connection, _Connection)
    busy, go = threading.Event(), threading.Event()

    def hold_up() -> None:
        busy.set()
        go.wait()

    assert connection.post(hold_up)
    await asyncio.to_thread(busy.wait)
    return go


async def test_a_turn_is_read_in_the_event_loops_thread_while_the_writer_works(
    sqlite_url: str,
) -> None:
    # The writer's lock is held (a COMMIT in flight, say) and the reader's thread
    # held up: a turn still takes its lock and reads its history, in the event
    # loop's thread.
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    assert isinstance(store, SQLiteStore)
    try:
        session_id = await _started(store, clock)
        go = await _held_up(store._reader)
        try:
            async with (
                asyncio.timeout(10),
                store._lock,
                store.turn_history(ACME, session_id) as (_, history),
            ):
                assert len(history) == 2
        finally:
            go.set()
        offset = TurnFile.claim(session_id).offset
        sidecar = Path(f"{path_of_url(sqlite_url)}-turns")
        assert await asyncio.to_thread(_free_elsewhere, sidecar, offset)
    finally:
        await store.aclose()


async def test_a_turns_history_leaves_the_answers_as_sent_unread(sqlite_url: str) -> None:
    # A streamed answer's body is its whole event stream; only a replay needs it.
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    try:
        session_id = await _started(store, clock)
        async with store.turn_history(ACME, session_id) as (_, history):
            assert history
            assert all(type(past) is TurnItems for past in history)
        assert [past.answer_body for past in await store.history(ACME, session_id)] == [
            turn(1).answer_body,
            turn(2).answer_body,
        ]
    finally:
        await store.aclose()


async def test_a_turn_is_read_in_the_event_loops_thread(
    sqlite_url: str,
) -> None:
    # The reader's thread is held up: a turn still takes its lock and reads its
    # history, and so does one of a session whose lock another process held at
    # first (tried again until it is free).
    # The other process runs on the system clock: so does the session.
    clock = ManualClock(system_clock())
    store = await open_store(sqlite_url, clock=clock)
    assert isinstance(store, SQLiteStore)
    try:
        first, second = await _started(store, clock), await _started(store, clock)
        holder = await start_holder(sqlite_url, ACME, second)
        assert holder.stdin is not None
        try:
            assert await read_line(holder) == b"held\n"
            go = await _held_up(store._reader)
            try:
                async with asyncio.timeout(60):
                    async with store.turn_history(ACME, first) as (_, history):
                        assert len(history) == 2
                        await store.record_turn(ACME, first, turn=turn(3), usage=usage(1))
                    async with store.turn_history(ACME, first) as (_, history):
                        assert len(history) == 3

                    async def second_turn() -> int:
                        async with store.turn_history(ACME, second) as (_, history):
                            return len(history)

                    waiting = asyncio.create_task(second_turn())
                    await asyncio.sleep(0.3)
                    assert not waiting.done()
                    holder.stdin.write(b"go\n")
                    await holder.stdin.drain()
                    assert await read_line(holder) == b"done\n"
                    # The other process's turn came first.
                    assert await waiting == 3
            finally:
                go.set()
        finally:
            if holder.returncode is None:
                holder.kill()
            await holder.wait()
    finally:
        await store.aclose()


async def test_a_turn_read_that_fails_in_the_event_loops_thread_is_done_in_the_readers(
    sqlite_url: str,
) -> None:
    # Its connection closed under it, the read in the event loop's thread fails;
    # the reader's thread reads the history, under the lock already taken.
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    assert isinstance(store, SQLiteStore)
    try:
        session_id = await _started(store, clock)
        assert store._inline is not None
        store._inline.close()
        offset = TurnFile.claim(session_id).offset
        sidecar = Path(f"{path_of_url(sqlite_url)}-turns")
        async with asyncio.timeout(60), store.turn_history(ACME, session_id) as (_, history):
            assert len(history) == 2
            assert not await asyncio.to_thread(_free_elsewhere, sidecar, offset)
        assert await asyncio.to_thread(_free_elsewhere, sidecar, offset)
    finally:
        await store.aclose()


async def test_a_turn_read_that_fails_in_the_event_loops_thread_leaves_no_snapshot(
    sqlite_url: str,
) -> None:
    # A read transaction left open there would keep every checkpoint from the
    # end of the WAL: the failed read's is rolled back.
    clock = ManualClock(T0)
    store = await open_store(sqlite_url, clock=clock)
    assert isinstance(store, SQLiteStore)
    try:
        session_id = await _started(store, clock)
        inline = store._inline
        assert inline is not None
        inline.execute("BEGIN")
        inline.execute("SELECT 1 FROM sessions").fetchall()
        async with asyncio.timeout(60), store.turn_history(ACME, session_id) as (_, history):
            assert len(history) == 2
        assert not inline.in_transaction
        async with asyncio.timeout(60), store.turn_history(ACME, session_id) as (_, history):
            assert len(history) == 2
    finally:
        await store.aclose()


async def test_a_turn_waits_for_a_turn_in_another_process(sqlite_url: str) -> None:
    # The other process runs on the system clock: so does the session.
    clock = ManualClock(system_clock())
    store = await open_store(sqlite_url, clock=clock)
    try:
        session_id = await _started(store, clock)
        await store.record_turn(ACME, session_id, turn=None, usage=None)
        holder = await start_holder(sqlite_url, ACME, session_id)
        assert holder.stdin is not None
        try:
            assert await read_line(holder) == b"held\n"
            got_in = asyncio.Event()

            async def take_turn() -> int:
                async with store.turn_lock(ACME, session_id):
                    got_in.set()
                    return len(await store.history(ACME, session_id))

            waiting = asyncio.create_task(take_turn())
            # Never set while the other process holds the turn, however long it waits.
            await asyncio.sleep(0.3)
            assert not got_in.is_set()
            holder.stdin.write(b"go\n")
            await holder.stdin.drain()
            assert await read_line(holder) == b"done\n"
            # The other process's turn (its round 4, turn(2)) came first.
            assert await asyncio.wait_for(waiting, 60) == 3
            await asyncio.wait_for(holder.wait(), 60)
        finally:
            if holder.returncode is None:
                holder.kill()
            await holder.wait()
        assert holder.returncode == 0
    finally:
        await store.aclose()


async def test_the_turn_of_a_killed_process_is_free_at_once(sqlite_url: str) -> None:
    clock = ManualClock(system_clock())
    store = await open_store(sqlite_url, clock=clock)
    try:
        session_id = await _started(store, clock)
        holder = await start_holder(sqlite_url, ACME, session_id)
        try:
            assert await read_line(holder) == b"held\n"
        finally:
            holder.kill()
            await holder.wait()
        # The kernel dropped the dead process's lock: nothing lapses or is taken over.
        async with asyncio.timeout(60), store.turn_lock(ACME, session_id):
            await store.record_turn(ACME, session_id, turn=turn(3), usage=usage(1))
        assert len(await store.history(ACME, session_id)) == 3
    finally:
        await store.aclose()
