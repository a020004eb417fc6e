"""What only the SQLite store has: its URL, its file, its schema version and its locking.

The behaviour every backend shares is in test_conformance.py.
"""

from __future__ import annotations

import asyncio
import resource
import signal
import sqlite3
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from llmsession.errors import InvalidInput, SchemaVersionError, StoreError
from llmsession.ids import SessionId, TenantId
from llmsession.store import SessionQuery, SessionStore, open_store
from llmsession.store.sqlite import SCHEMA_VERSION, SQLiteStore, path_of_url

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


# The rounds table of schema version 1: no session_delta_tokens, session_version.
_VERSION_1_ROUNDS = """
    CREATE TABLE rounds_v1 (
        session_id      BLOB    NOT NULL,
        seq             INTEGER NOT NULL,
        delta_tokens    INTEGER NOT NULL,
        recorded_at     INTEGER NOT NULL,
        idempotency_key TEXT,
        PRIMARY KEY (session_id, seq),
        UNIQUE (session_id, idempotency_key)
    ) WITHOUT ROWID
"""


def _columns(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        columns = [tuple(row) for row in conn.execute(f"PRAGMA table_info({table})")]
    conn.close()
    return columns


async def test_a_version_1_file_is_upgraded_and_replays_give_the_first_answers(
    sqlite_url: str, tmp_path: Path
) -> None:
    store = await open_store(sqlite_url)
    answers = []
    sessions = [await _session(store) for _ in range(3)]
    for n, session_id in enumerate(sessions):
        for turn in range(4):
            key = f"k{turn}" if turn % 2 else None
            answers.append(
                await store.record_round(ACME, session_id, n + turn, idempotency_key=key)
            )
    await store.close(ACME, sessions[0])
    rounds = [(await store.list_rounds(ACME, s)).items for s in sessions]
    await store.aclose()
    path = path_of_url(sqlite_url)
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("BEGIN")
        conn.execute(_VERSION_1_ROUNDS)
        conn.execute(
            "INSERT INTO rounds_v1 SELECT session_id, seq, delta_tokens, recorded_at, "
            "idempotency_key FROM rounds"
        )
        conn.execute("DROP TABLE rounds")
        conn.execute("ALTER TABLE rounds_v1 RENAME TO rounds")
        conn.execute("PRAGMA user_version = 1")
        conn.execute("COMMIT")
    conn.close()

    store = await open_store(sqlite_url)
    try:
        assert _pragma(path, "user_version") == SCHEMA_VERSION
        fresh = tmp_path / "fresh.db"
        await (await open_store(f"sqlite:///{fresh}")).aclose()
        assert _columns(path, "rounds") == _columns(fresh, "rounds")
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
