"""SQLiteStore: the embedded default, one file shared safely by several processes.

The file is in WAL mode, so readers never wait for the writer, and a server and
a CLI (or several servers on one machine) can use it at once: every write
transaction starts with ``BEGIN IMMEDIATE``, which takes SQLite's single write
lock up front, and ``busy_timeout`` makes a second process wait for it instead
of failing. ``synchronous=FULL`` syncs the WAL on every commit, so a round is on
disk before it is acknowledged and survives a crash or a power cut.

Each store holds two connections with a thread each: a writer, whose
transactions an :class:`asyncio.Lock` keeps from interleaving (one connection
holds one transaction at a time), and a read-only reader, so reads go on while
the writer waits for another process's lock. A third, read-only and never
waiting, reads a gateway turn's history in the event loop's thread (see
:meth:`SQLiteStore._take_and_read`). A round's transaction (begin, read, let
the core compute, write) runs in the event loop's thread, on the writer's
connection with a busy timeout of 0, and only its COMMIT, which waits for the
fsync, in the writer's thread (see :meth:`SQLiteStore._write_here`): statements
in another thread than the loop's each waited for the GIL under load. Changes
that queue up meanwhile share the next transaction (:class:`GroupCommit`). Long
writes (sweeps, purges), and any write while another process holds the write
lock, run wholly in the writer's thread, which waits for that lock.

The writer remembers the sessions it last read or wrote
(:class:`RecentSessions`, touched only in its thread) and starts a change from
that instead of reading the row; the ``UPDATE``'s version check tells whether
it was still the stored one (another process may have written since). If it was
not, or if the change would write nothing (an error, a replay), the change is
computed again from a fresh read in the same transaction: an answer never rests
on a remembered session alone.

Gateway sessions keep their conversation in ``turns``, written in the
transaction of its round and deleted in the one that ends the session. Their
turns are serialized across processes by byte-range locks on a sidecar file
(``<path>-turns``, see :meth:`SQLiteStore.turn_lock`).

Times are integer epoch microseconds. The schema is created, versioned (in
``PRAGMA user_version``) and upgraded here; see _UPGRADES.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from queue import SimpleQueue
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

from llmsession.clock import Clock, system_clock
from llmsession.errors import (
    ConflictError,
    InvalidInput,
    LLMSessionError,
    NotFoundError,
    SchemaVersionError,
    StoreError,
)
from llmsession.ids import SessionId, TenantId
from llmsession.states import ALL_STATES, Active, Created, SessionExpired, state_named
from llmsession.store.base import (
    DEFAULT_TTL_SECONDS,
    Change,
    ChangeFn,
    SessionStore,
    VersionConflict,
    expire_if_due,
)
from llmsession.store.cursor import decode_cursor, encode_cursor
from llmsession.store.group_commit import GroupCommit
from llmsession.store.models import (
    ApiKeyInfo,
    GroupKey,
    HistoryTurn,
    KeyedRound,
    Page,
    Round,
    SessionQuery,
    StoredSession,
    Tenant,
    TimeBucket,
    TimeBucketSize,
    Totals,
    Turn,
    TurnItems,
    UsageTotals,
)
from llmsession.store.presented import newest_first, present, present_totals, shown_in
from llmsession.store.recent import RecentSessions
from llmsession.store.rollup import (
    Amounts,
    TimeWindow,
    bucket_starts,
    fold,
    round_amounts,
    session_amounts,
)
from llmsession.store.sql_rows import (
    INSERT_COLUMNS,
    ROUND_USAGE_COLUMNS,
    SESSION_COLUMNS,
    TURN_COLUMNS,
    USAGE_COLUMNS,
    change_values,
    insert_values,
    key_from_row,
    micros,
    round_values,
    stored_from_row,
    turn_from_row,
    turn_values,
    usage_from_round_row,
    usage_totals_from_row,
    usage_values,
)
from llmsession.store.turn_file import Claim, Retries, TurnFile, open_turn_file
from llmsession.timestamps import Timestamp

__all__ = ["ROLLUP_BACKFILL", "SCHEMA_VERSION", "SQLiteStore", "path_of_url"]

T = TypeVar("T")

#: The schema this code writes and reads; stored in ``PRAGMA user_version``.
#: Version 2 keeps with each round the session's delta_tokens and version right
#: after it (a replayed round's answer). Version 3 adds gateway rounds: usage on
#: sessions and rounds, the turns of the conversation and the keys that
#: started sessions. Version 4 adds usage_rollup, the rollup time series read
#: (see store.rollup). Version 5 adds session_counts, the counters totals read,
#: and the triggers keeping them. Version 6 indexes sessions by ``due`` (see
#: _SESSIONS_DUE) instead of by their deadline. _UPGRADES brings older files up to it.
SCHEMA_VERSION: Final = 6

# SQLite's INTEGER, and so the largest LIMIT.
_MAX_INTEGER = 2**63 - 1

# How many sessions the writer remembers (as PostgreSQL's default session_cache):
# a few MB, and a round on any of them needs no read.
_SESSION_CACHE: Final = 10_000

# How long a write waits for another process's write lock before giving up.
_BUSY_TIMEOUT_SECONDS = 30.0

# The WAL's frames are copied into the database file (a checkpoint: reads of
# the WAL, writes and an fsync of the file) by a connection of their own, in its
# own thread, after every _CHECKPOINT_EVERY commits of the writer (about 550
# frames for gateway rounds one at a time): SQLite's automatic checkpoint ran in
# the COMMIT that passed 1,000 frames, and the answer waiting for that COMMIT
# waited for it too. A checkpoint PASSIVE waits for nobody and writes go on
# meanwhile. The writer still checkpoints by itself past _WRITER_AUTOCHECKPOINT
# frames, should the background ones fall behind, so the WAL stays bounded.
_CHECKPOINT_EVERY: Final = 64
_WRITER_AUTOCHECKPOINT: Final = 4000

# The partial index on Created sessions only serves queries that spell its
# condition the same way, so the state name is part of the SQL text.
_CREATED = Created.name

# The columns version 3 added at the end of sessions and rounds, as _SCHEMA
# declares them and the upgrade adds them: a fresh file and an upgraded one are
# the same. Sessions: UsageTotals (the provider's usage of the session's gateway
# rounds), then has_turns, 1 once a turn was stored (which ended sessions have
# turns to delete).
_SESSION_GATEWAY_COLUMNS: Final = tuple(
    f"{column} INTEGER NOT NULL DEFAULT 0" for column in (*USAGE_COLUMNS.split(", "), "has_turns")
)
# Rounds: a gateway round's flag (1) and the provider's figures (NULL if it sent none).
_ROUND_GATEWAY_COLUMNS: Final = (
    "gateway INTEGER NOT NULL DEFAULT 0",
    *(f"{column} INTEGER" for column in ROUND_USAGE_COLUMNS.split(", ")[1:-1]),
    "raw_usage TEXT",
)

# The tables of gateway rounds. A turn is large (a conversation's items and a
# whole answer), so ``turns`` keeps its rowid: WITHOUT ROWID suits small rows.
_GATEWAY_TABLES: Final = (
    """
    CREATE TABLE turns (
        session_id    BLOB    NOT NULL,
        seq           INTEGER NOT NULL,
        endpoint      TEXT    NOT NULL,
        request_hash  TEXT    NOT NULL,
        request_items TEXT    NOT NULL,
        answer_items  TEXT    NOT NULL,
        response_id   TEXT,
        answer_status INTEGER NOT NULL,
        answer_type   TEXT    NOT NULL,
        answer_body   BLOB    NOT NULL,
        PRIMARY KEY (session_id, seq)
    )
    """,
    # The tenant's idempotency key that started a session through the gateway.
    """
    CREATE TABLE started_sessions (
        tenant_id       TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        session_id      BLOB NOT NULL,
        PRIMARY KEY (tenant_id, idempotency_key)
    ) WITHOUT ROWID
    """,
)


# The rollup (see store.rollup), one row per tenant, bucket (``span``, its length
# in seconds: 3600 for an hour, 86400 for a day; ``start``, epoch microseconds),
# provider and model. Token sums are kept as two columns, the high and the low
# 32 bits of each amount summed apart, as _split_sum reads them: one bucket of a
# group may pass 2**63-1 (SQLite would turn the sum into a float).
_ROLLUP_SPLIT: Final = (
    "delta",
    "saved",
    "input",
    "cached",
    "cache_write",
    "output",
    "reasoning",
)
# Its columns in store.rollup.ROLLUP_FIELDS order, each split one as hi, lo.
_ROLLUP_COLUMNS: Final = (
    "rounds",
    *(f"{name}_{half}" for name in _ROLLUP_SPLIT for half in ("hi", "lo")),
    "rounds_without_usage",
    "sessions_started",
)
_ROLLUP_TABLE: Final = f"""
    CREATE TABLE usage_rollup (
        tenant_id   TEXT    NOT NULL,
        span        INTEGER NOT NULL,
        start       INTEGER NOT NULL,
        provider_id TEXT    NOT NULL,
        model       TEXT    NOT NULL,
        {", ".join(f"{column} INTEGER NOT NULL DEFAULT 0" for column in _ROLLUP_COLUMNS)},
        PRIMARY KEY (tenant_id, span, start, provider_id, model)
    ) WITHOUT ROWID
    """
_ROLLUP_CONFLICT: Final = (
    "ON CONFLICT (tenant_id, span, start, provider_id, model) DO UPDATE SET "
    + ", ".join(f"{column} = {column} + excluded.{column}" for column in _ROLLUP_COLUMNS)
)
_ROLLUP_INSERT: Final = (
    "INSERT INTO usage_rollup (tenant_id, span, start, provider_id, model, "
    f"{', '.join(_ROLLUP_COLUMNS)})"
)
# A write's amounts go to its hour and its day: one statement, two rows. Its
# parameters are numbered (the tenant, the hour's start, the day's, the provider,
# the model, then the amounts) for the two rows to share all but their start: each
# value is bound once, and binding is most of what a statement costs in Python.
_ROLL_AMOUNTS: Final = ", ".join(f"?{6 + i}" for i in range(len(_ROLLUP_COLUMNS)))
_ROLL: Final = (
    f"{_ROLLUP_INSERT} VALUES (?1, 3600, ?2, ?4, ?5, {_ROLL_AMOUNTS}), "
    f"(?1, 86400, ?3, ?4, ?5, {_ROLL_AMOUNTS}) {_ROLLUP_CONFLICT}"
)
#: The bucket lengths the rollup keeps, in seconds (its ``span`` column).
_SPANS: Final[dict[TimeBucketSize, int]] = {"hour": 3600, "day": 86400}


def _start_sql(column: str, span: int) -> str:
    """The start of the bucket of a time column, floored (SQLite's % truncates)."""
    size = span * 1_000_000
    return f"{column} - (({column} % {size}) + {size}) % {size}"


def _halves_sql(amount: str) -> str:
    return f"SUM(({amount}) >> 32), SUM(({amount}) & {0xFFFFFFFF})"


def _backfill(span: int) -> tuple[str, str]:
    """The statements filling the rollup's buckets of ``span`` seconds from the
    stored rounds and sessions."""
    rounds = (
        f"{_ROLLUP_INSERT} SELECT s.tenant_id, {span}, {_start_sql('r.recorded_at', span)}, "
        "s.provider_id, s.model, COUNT(*), "
        + ", ".join(
            _halves_sql(amount)
            for amount in (
                "r.delta_tokens",
                "s.initial_tokens - r.delta_tokens",
                *(
                    f"COALESCE(r.{column}, 0)"
                    for column in (
                        "input_tokens",
                        "cached_input_tokens",
                        "cache_write_tokens",
                        "output_tokens",
                        "reasoning_tokens",
                    )
                ),
            )
        )
        + ", SUM(r.gateway = 1 AND r.input_tokens IS NULL), 0 "
        "FROM rounds r JOIN sessions s ON s.session_id = r.session_id GROUP BY 1, 2, 3, 4, 5"
    )
    # WHERE true: SQLite's parser needs it between a SELECT and ON CONFLICT.
    sessions = (
        "INSERT INTO usage_rollup (tenant_id, span, start, provider_id, model, sessions_started) "
        f"SELECT tenant_id, {span}, {_start_sql('created_at', span)}, provider_id, model, "
        f"COUNT(*) FROM sessions WHERE true GROUP BY 1, 2, 3, 4, 5 {_ROLLUP_CONFLICT}"
    )
    return rounds, sessions


#: The rollup of every stored round and session, as the writes would have kept it:
#: the upgrade to version 4 runs it, and so can a bulk load (bench/dashboard.py).
ROLLUP_BACKFILL: Final = (*_backfill(_SPANS["hour"]), *_backfill(_SPANS["day"]))


# SUM() raises on passing 2**63-1, and total() is a float. Summing the high and
# low 32 bits separately stays exact in 64 bits for up to 2**31 sessions per
# group, far beyond what one SQLite file holds; Python adds the halves.
_LOW_BITS = 0xFFFFFFFF


def _split_sum(column: str) -> str:
    return f"SUM({column} >> 32), SUM({column} & {_LOW_BITS})"


# The counters totals read: per tenant, provider, model and state, the number of
# sessions and the sums of _SUMMED over them, each split into the high and the
# low 32 bits as _split_sum sums them (a group's sum may pass 2**63-1). Reading
# them costs the tenant's groups, not its sessions (a GROUP BY over a million
# sessions took 3.1 s). Triggers on sessions keep them in the transaction of
# every write, by the difference between the row before and after: no write
# path (the group commit, the fast path, sweep, purge, a bulk load) can miss one.
_SUMMED: Final = ("round_count", "delta_tokens", "tokens_saved", *USAGE_COLUMNS.split(", "))
_COUNT_COLUMNS: Final = tuple(f"{column}_{half}" for column in _SUMMED for half in ("hi", "lo"))
_COUNTS_TABLE: Final = f"""
    CREATE TABLE session_counts (
        tenant_id   TEXT    NOT NULL,
        provider_id TEXT    NOT NULL,
        model       TEXT    NOT NULL,
        state       TEXT    NOT NULL,
        sessions    INTEGER NOT NULL,
        {", ".join(f"{column} INTEGER NOT NULL" for column in _COUNT_COLUMNS)},
        PRIMARY KEY (tenant_id, provider_id, model, state)
    ) WITHOUT ROWID
    """


def _halves(row: str, column: str) -> tuple[str, str]:
    return f"({row}.{column} >> 32)", f"({row}.{column} & {_LOW_BITS})"


def _count_row(row: str, sign: str) -> str:
    """An upsert adding (``sign`` +) or taking away (-) ``row``'s session."""
    values = ", ".join(f"{sign}{half}" for column in _SUMMED for half in _halves(row, column))
    return (
        f"INSERT INTO session_counts VALUES ({row}.tenant_id, {row}.provider_id, "
        f"{row}.model, {row}.state, {sign}1, {values}) "
        "ON CONFLICT (tenant_id, provider_id, model, state) DO UPDATE SET "
        + ", ".join(
            f"{column} = {column} + excluded.{column}" for column in ("sessions", *_COUNT_COLUMNS)
        )
        + ";"
    )


# An update that keeps the state changes one row by the difference; one that
# moves the session takes it out of its old state's row and into its new one's.
_COUNTED: Final = ", ".join(("state", *_SUMMED))
_SAME_GROUP: Final = (
    "tenant_id = NEW.tenant_id AND provider_id = NEW.provider_id AND model = NEW.model "
    "AND state = NEW.state"
)
_COUNTS_TRIGGERS: Final = (
    f"CREATE TRIGGER session_counts_insert AFTER INSERT ON sessions "
    f"BEGIN {_count_row('NEW', '')} END",
    f"CREATE TRIGGER session_counts_delete AFTER DELETE ON sessions "
    f"BEGIN {_count_row('OLD', '-')} END",
    f"CREATE TRIGGER session_counts_update AFTER UPDATE OF {_COUNTED} ON sessions "
    "WHEN OLD.state = NEW.state BEGIN UPDATE session_counts SET "
    + ", ".join(
        f"{column}_{half} = {column}_{half} + {new} - {old}"
        for column in _SUMMED
        for half, new, old in zip(
            ("hi", "lo"), _halves("NEW", column), _halves("OLD", column), strict=True
        )
    )
    + f" WHERE {_SAME_GROUP}; END",
    f"CREATE TRIGGER session_counts_move AFTER UPDATE OF {_COUNTED} ON sessions "
    f"WHEN OLD.state <> NEW.state BEGIN {_count_row('OLD', '-')} {_count_row('NEW', '')} END",
)
#: The counters of every stored session, as the triggers would have kept them.
_COUNTS_BACKFILL: Final = (
    "INSERT INTO session_counts SELECT tenant_id, provider_id, model, state, COUNT(*), "
    f"{', '.join(_split_sum(column) for column in _SUMMED)} FROM sessions GROUP BY 1, 2, 3, 4"
)


def _rounds_table(name: str, added: Sequence[str] = ()) -> str:
    """The rounds table as version 2 made it, with the columns of later versions
    ``added`` at its end (where ALTER TABLE puts them)."""
    extra = "".join(f"        {column},\n" for column in added)
    return f"""
    CREATE TABLE {name} (
        session_id           BLOB    NOT NULL,
        seq                  INTEGER NOT NULL,
        delta_tokens         INTEGER NOT NULL,
        recorded_at          INTEGER NOT NULL,
        idempotency_key      TEXT,
        session_delta_tokens INTEGER NOT NULL,
        session_version      INTEGER NOT NULL,
{extra}        PRIMARY KEY (session_id, seq),
        UNIQUE (session_id, idempotency_key)
    ) WITHOUT ROWID
    """


# The sweep's index. Only Active sessions have a deadline, and only they a
# ``due`` time: their deadline or earlier, never later, so a sweep costs what is
# due, not what is stored. A round moves the deadline later and leaves ``due``
# (and so this index) as it was: moving the entry was a page of every round's
# commit. A sweep that finds a session not due yet moves its ``due`` to its
# deadline (see SQLiteStore._sweep), at most once per TTL for a busy session.
# Activation sets it to the deadline, leaving Active clears it.
_SESSIONS_DUE: Final = "CREATE INDEX sessions_due ON sessions (due) WHERE due IS NOT NULL"


#: What takes a schema from the version before to this one, in order; run in
#: one transaction with the new user_version.
_UPGRADES: Final[dict[int, tuple[str, ...]]] = {
    # SQLite adds no NOT NULL column without a default, so the rounds table is
    # copied. Before version 2 a session's version grew only at create (1),
    # activate (2) and each round while it stayed Active, so round seq left it
    # at seq + 2; its delta_tokens were the sum of its rounds' up to seq.
    2: (
        _rounds_table("rounds_v2"),
        "INSERT INTO rounds_v2 (session_id, seq, delta_tokens, recorded_at, idempotency_key, "
        "session_delta_tokens, session_version) "
        "SELECT session_id, seq, delta_tokens, recorded_at, idempotency_key, "
        "SUM(delta_tokens) OVER (PARTITION BY session_id ORDER BY seq), seq + 2 FROM rounds",
        "DROP TABLE rounds",
        "ALTER TABLE rounds_v2 RENAME TO rounds",
    ),
    # SQLite adds a column by changing the table's definition only, without
    # rewriting a row.
    3: (
        *(f"ALTER TABLE sessions ADD COLUMN {column}" for column in _SESSION_GATEWAY_COLUMNS),
        *(f"ALTER TABLE rounds ADD COLUMN {column}" for column in _ROUND_GATEWAY_COLUMNS),
        *_GATEWAY_TABLES,
    ),
    4: (_ROLLUP_TABLE, *ROLLUP_BACKFILL),
    5: (_COUNTS_TABLE, _COUNTS_BACKFILL, *_COUNTS_TRIGGERS),
    6: (
        "DROP INDEX sessions_due",
        "ALTER TABLE sessions ADD COLUMN due INTEGER",
        "UPDATE sessions SET due = deadline WHERE deadline IS NOT NULL",
        _SESSIONS_DUE,
    ),
}

_SCHEMA: Final = (
    f"""
    CREATE TABLE sessions (
        session_id       BLOB    NOT NULL PRIMARY KEY,
        tenant_id        TEXT    NOT NULL,
        provider_id      TEXT    NOT NULL,
        model            TEXT    NOT NULL,
        initial_tokens   INTEGER NOT NULL,
        state            TEXT    NOT NULL,
        created_at       INTEGER NOT NULL,
        activated_at     INTEGER,
        closed_at        INTEGER,
        expired_at       INTEGER,
        round_count      INTEGER NOT NULL,
        delta_tokens     INTEGER NOT NULL,
        tokens_saved     INTEGER NOT NULL,
        version          INTEGER NOT NULL,
        ttl_seconds      INTEGER NOT NULL,
        last_activity_at INTEGER NOT NULL,
        deadline         INTEGER,
        {", ".join(_SESSION_GATEWAY_COLUMNS)},
        due              INTEGER
    ) WITHOUT ROWID
    """,
    """
    CREATE INDEX sessions_by_tenant
        ON sessions (tenant_id, created_at DESC, session_id DESC)
    """,
    """
    CREATE INDEX sessions_by_state
        ON sessions (tenant_id, state, created_at DESC, session_id DESC)
    """,
    """
    CREATE INDEX sessions_by_provider
        ON sessions (tenant_id, provider_id, created_at DESC, session_id DESC)
    """,
    """
    CREATE INDEX sessions_by_model
        ON sessions (tenant_id, model, created_at DESC, session_id DESC)
    """,
    _SESSIONS_DUE,
    f"""
    CREATE INDEX sessions_created_unused
        ON sessions (created_at) WHERE state = '{_CREATED}'
    """,
    _rounds_table("rounds", _ROUND_GATEWAY_COLUMNS),
    """
    CREATE TABLE tenants (
        tenant_id  TEXT    NOT NULL PRIMARY KEY,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE api_keys (
        key_id     TEXT    NOT NULL PRIMARY KEY,
        tenant_id  TEXT    NOT NULL,
        key_hash   BLOB    NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    ) WITHOUT ROWID
    """,
    """
    CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at, key_id)
    """,
    *_GATEWAY_TABLES,
    _ROLLUP_TABLE,
    _COUNTS_TABLE,
    *_COUNTS_TRIGGERS,
)

# A session as _stored_from_row reads it: its columns, then its usage.
_SESSION_COLUMNS = f"{SESSION_COLUMNS}, {USAGE_COLUMNS}"
_SELECT_SESSION = f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ? AND tenant_id = ?"
# has_turns goes with the write of the round whose turn is stored (see _insert_round).
# due is the deadline (see _SESSIONS_DUE), as in every write that sets the state.
_INSERT_SESSION = (
    f"INSERT INTO sessions ({INSERT_COLUMNS}, {USAGE_COLUMNS}, has_turns, due) "
    f"VALUES ({', '.join('?' * 25)})"
)
_SET_SESSION = (
    "UPDATE sessions SET state = ?, activated_at = ?, closed_at = ?, expired_at = ?, "
    "round_count = ?, delta_tokens = ?, tokens_saved = ?, version = ?, last_activity_at = ?, "
    "deadline = ?, input_tokens = ?, cached_input_tokens = ?, cache_write_tokens = ?, "
    "output_tokens = ?, reasoning_tokens = ?, rounds_without_usage = ?, due = ?"
)
_UPDATE_SESSION = f"{_SET_SESSION} WHERE session_id = ? AND version = ?"
_UPDATE_SESSION_WITH_TURN = f"{_SET_SESSION}, has_turns = 1 WHERE session_id = ? AND version = ?"
# A round that leaves its session's state as it was leaves its times as they were
# too: its write sets only what a round moves (fewer values to bind, no index on
# the state to touch), and not due, which a later deadline leaves valid (see
# _SESSIONS_DUE). The counters' trigger watches these columns too.
_SET_ROUND = (
    "UPDATE sessions SET round_count = ?, delta_tokens = ?, tokens_saved = ?, version = ?, "
    "last_activity_at = ?, deadline = ?, input_tokens = ?, cached_input_tokens = ?, "
    "cache_write_tokens = ?, output_tokens = ?, reasoning_tokens = ?, rounds_without_usage = ?"
)
_UPDATE_ROUND = f"{_SET_ROUND} WHERE session_id = ? AND version = ?"
_UPDATE_ROUND_WITH_TURN = f"{_SET_ROUND}, has_turns = 1 WHERE session_id = ? AND version = ?"
# A ledger round leaves the gateway columns to their defaults (0 and NULL).
_INSERT_ROUND = (
    "INSERT INTO rounds (session_id, seq, delta_tokens, recorded_at, idempotency_key, "
    "session_delta_tokens, session_version) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Its gateway flag is a literal: a bool parameter costs sqlite3 a failed adaptation.
_INSERT_GATEWAY_ROUND = (
    "INSERT INTO rounds (session_id, seq, delta_tokens, recorded_at, idempotency_key, "
    f"session_delta_tokens, session_version, {ROUND_USAGE_COLUMNS}) "
    f"VALUES ({', '.join('?' * 7)}, 1, {', '.join('?' * 6)})"
)
_INSERT_TURN = f"INSERT INTO turns (session_id, seq, {TURN_COLUMNS}) VALUES ({', '.join('?' * 10)})"
_DELETE_TURNS = "DELETE FROM turns WHERE session_id = ?"
_ROUND_COLUMNS = f"seq, delta_tokens, recorded_at, idempotency_key, {ROUND_USAGE_COLUMNS}"
_SELECT_ROUND_BY_KEY = (
    f"SELECT {_ROUND_COLUMNS}, session_delta_tokens, session_version FROM rounds "
    "WHERE session_id = ? AND idempotency_key = ?"
)
# The sessions due at a time (bound twice), through sessions_due: those whose due
# time came, and of them those whose deadline did too (see _SESSIONS_DUE).
_DUE = "due IS NOT NULL AND due <= ? AND deadline <= ?"
# What a sweep reads: the sessions whose due time came, in its order; with
# has_turns (which ended sessions have turns to delete).
_SELECT_DUE = (
    f"SELECT {_SESSION_COLUMNS}, has_turns FROM sessions "
    "WHERE due IS NOT NULL AND due <= ? ORDER BY due LIMIT ?"
)
# A session found not due yet: its due goes to its deadline, and nothing else moves.
_MOVE_DUE = "UPDATE sessions SET due = ? WHERE session_id = ?"


@contextmanager
def _named_errors(path: Path) -> Generator[None]:
    """A SQLite error as StoreError naming the file."""
    try:
        yield
    except sqlite3.Error as error:
        raise StoreError(f"SQLite file {path}: {error}") from error


class _Connection:
    """One sqlite3 connection and its own thread.

    ``run(work)`` calls ``work(connection)`` in that thread; a SQLite error comes
    out as StoreError naming the file. The writer's connection is also used in
    the event loop's thread (see SQLiteStore._write_here), never at the same
    time as in its own. Work runs in submission order. The thread
    takes jobs from a queue and hands each result back to the event loop with one
    ``call_soon_threadsafe``: a round's two or three trips to SQLite cost a
    third of what ``run_in_executor`` costs (its concurrent future, and the
    asyncio future chained to it). Work whose caller was cancelled before it
    started is skipped, as an executor does.
    """

    def __init__(self, path: Path, *, busy_timeout: float = _BUSY_TIMEOUT_SECONDS) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._jobs: SimpleQueue[_Job[Any] | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._raw: sqlite3.Connection | None = None

    async def open(self) -> None:
        # isolation_level=None: no implicit transactions; this module writes
        # BEGIN IMMEDIATE and COMMIT itself. timeout is SQLite's busy_timeout.
        self._raw = await self._call(
            partial(
                sqlite3.connect,
                self.path,
                isolation_level=None,
                timeout=self._busy_timeout,
                check_same_thread=False,
            )
        )

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection itself, for work in the caller's thread."""
        raw = self._raw
        if raw is None:
            raise StoreError("this store was closed; open a new one")
        return raw

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        raw = self._raw
        if raw is None:
            raise StoreError("this store was closed; open a new one")
        return await self._call(partial(work, raw))

    def post_work(self, work: Callable[[sqlite3.Connection], object]) -> bool:
        """As :meth:`post`, ``work`` called with the connection."""
        raw = self._raw
        return raw is not None and self.post(partial(work, raw))

    def post(self, work: Callable[[], object]) -> bool:
        """Queue ``work`` for the thread and wait for nothing: it runs after every job
        queued before it, and its outcome goes nowhere. False if the thread is gone."""
        if self._thread is None:
            return False
        self._jobs.put((work, None, None))
        return True

    async def close(self) -> None:
        raw, self._raw = self._raw, None
        try:
            if raw is not None:
                await self._call(raw.close)
        finally:
            if self._thread is not None:
                self._jobs.put(None)
                self._thread = None

    def submit(self, work: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``work`` for the thread; the future gets its outcome (a SQLite
        error as it is). Cancelling the future before the job starts skips it."""
        return self._submit(partial(work, self.connection))

    async def _call(self, work: Callable[[], T]) -> T:
        with _named_errors(self.path):
            return await self._submit(work)

    def _submit(self, work: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(
                target=_serve, args=(self._jobs,), name="llmsession-sqlite", daemon=True
            )
            self._thread.start()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((work, loop, future))
        return future


# A posted job (see _Connection.post) has no loop and no future.
_Job = tuple[Callable[[], T], asyncio.AbstractEventLoop | None, "asyncio.Future[T] | None"]


def _serve(jobs: SimpleQueue[_Job[Any] | None]) -> None:
    """A connection's thread: run each job, hand its outcome to its loop; None ends it."""
    while (job := jobs.get()) is not None:
        work, loop, future = job
        if loop is None or future is None:
            # Nobody waits for a posted job's outcome, and this thread must go on.
            with suppress(Exception):
                work()
            continue
        # Read across threads: at worst a job cancelled just now still runs, as
        # one already running would.
        if future.cancelled():
            continue
        try:
            outcome: tuple[bool, object] = (True, work())
        except BaseException as error:
            outcome = (False, error)
        # A closed loop (RuntimeError) has nobody waiting for this outcome any more.
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, object]) -> None:
    if future.cancelled():
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        assert isinstance(value, BaseException)
        future.set_exception(value)


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """Set WAL mode and return the mode the file is in.

    Switching a new file to WAL takes an exclusive lock, and SQLite answers
    "database is locked" at once, without its busy handler, when several
    connections try it together; so wait and try again, up to the busy timeout.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_SECONDS
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _open_inline(path: Path, _: sqlite3.Connection) -> sqlite3.Connection:
    """A read-only connection for the event loop's thread (see
    SQLiteStore._take_and_read), its schema read: busy timeout 0, so that it
    never waits there."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0, check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT 1 FROM sessions LIMIT 1").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy what the WAL holds into the database file, waiting for no reader or
    writer (frames a reader still needs stay for the next one)."""
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _fetch_all(sql: str, params: Sequence[object], conn: sqlite3.Connection) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _in_snapshot(
    first: tuple[str, Sequence[object]],
    second: tuple[str, Sequence[object]],
    conn: sqlite3.Connection,
) -> tuple[list[Any], list[Any]]:
    """Two queries' rows from one snapshot of the file (one read transaction)."""
    conn.execute("BEGIN")
    try:
        return conn.execute(*first).fetchall(), conn.execute(*second).fetchall()
    finally:
        conn.execute("COMMIT")


def _history_reads(
    tenant_id: TenantId, session_id: SessionId, turns: str
) -> tuple[tuple[str, Sequence[object]], tuple[str, Sequence[object]]]:
    """The reads of a session and its history, with the ``turns`` query
    (_SELECT_TURNS or _SELECT_TURN_ITEMS; see SQLiteStore._session_turns)."""
    return (_SELECT_SESSION, _key(tenant_id, session_id)), (turns, (session_id.value.bytes,))


def _begin_immediate(conn: sqlite3.Connection) -> None:
    # A transaction can only be open here if a cancelled task's rollback was
    # itself cancelled; it holds nothing anyone acknowledged, so end it.
    if conn.in_transaction:
        conn.rollback()
    conn.execute("BEGIN IMMEDIATE")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.rollback()


def _in_transaction(work: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """Run ``work`` in one write transaction: committed if it returns, rolled back if not."""
    _begin_immediate(conn)
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return result


def _try_begin_immediate(conn: sqlite3.Connection) -> bool:
    """BEGIN IMMEDIATE on the writer (busy timeout 0): False, at once, while
    another process holds SQLite's write lock."""
    try:
        _begin_immediate(conn)
    except sqlite3.OperationalError as error:
        # The primary code: SQLITE_BUSY's extended codes (recovery, snapshot) too.
        if error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
            return False
        raise
    return True


def _commit(conn: sqlite3.Connection) -> None:
    """COMMIT the transaction the event loop's thread wrote, or roll it back."""
    try:
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _patiently(work: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """Run ``work`` on the writer with a busy timeout: in the writer's thread, a
    transaction may wait for another process's write lock (the event loop's may not)."""
    conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_SECONDS * 1000)}")
    try:
        return work(conn)
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


@dataclass(frozen=True, slots=True)
class _PendingChange:
    tenant_id: TenantId
    session_id: SessionId
    change: ChangeFn
    idempotency_key: str | None


class SQLiteStore(SessionStore):
    """Sessions in one SQLite file (WAL mode), shareable by several processes.

    Open one with :meth:`open` (or :func:`llmsession.store.open_store` and a
    ``sqlite:///path`` URL); close it with :meth:`aclose`.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock = system_clock,
        default_ttl_seconds: int = DEFAULT_TTL_SECONDS,
    ) -> None:
        """Prepare a store on ``path`` without connecting; use :meth:`open` instead."""
        super().__init__(clock=clock, default_ttl_seconds=default_ttl_seconds)
        self.path = path
        self._writer: _Connection | None = None
        self._reader: _Connection | None = None
        # A third, read-only connection, used from the event loop's thread only
        # (see _take_and_read); None until opened.
        self._inline: sqlite3.Connection | None = None
        # Checkpoints the WAL in its own thread (see _CHECKPOINT_EVERY).
        self._checkpointer: _Connection | None = None
        # The writer's commits since the last checkpoint was asked for.
        self._commits = 0
        self._lock = asyncio.Lock()
        self._changes = GroupCommit(self._run_changes)
        # Touched only under the writer's lock (in _apply_change), or on its release.
        self._recent = RecentSessions(_SESSION_CACHE)
        self._closed = False
        # Opened by the first gateway turn (see turn_lock).
        self._turn_file: TurnFile | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Clock = system_clock,
        default_ttl_seconds: int = DEFAULT_TTL_SECONDS,
    ) -> SQLiteStore:
        """Open the store at ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``.

        Creates the parent directory, the file and the schema on first use.
        Raises InvalidInput for a malformed URL, SchemaVersionError for a file
        written by a newer llmsession, StoreError if the file cannot be used.
        """
        store = cls(path_of_url(url), clock=clock, default_ttl_seconds=default_ttl_seconds)
        try:
            await store._connect()
        except BaseException:
            await store.aclose()
            raise
        return store

    # -- connections -------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create the directory of {self.path}: {error}") from error
        # Busy timeout 0: the event loop's thread writes on it too, and must never
        # wait there; the writer's own thread waits (see _patiently).
        self._writer = writer = _Connection(self.path, busy_timeout=0)
        await writer.open()
        mode = await writer.run(_switch_to_wal)
        if mode.lower() != "wal":
            raise StoreError(
                f"SQLite file {self.path} cannot use WAL mode (it stays in {mode!r} "
                "mode); put it on a local file system"
            )
        # FULL: the WAL is synced at every commit, so an acknowledged round survives
        # a power cut too, not only a killed process (which NORMAL would cover).
        await writer.run(partial(_fetch_all, "PRAGMA synchronous = FULL", ()))
        await writer.run(
            partial(_fetch_all, f"PRAGMA wal_autocheckpoint = {_WRITER_AUTOCHECKPOINT}", ())
        )
        self._checkpointer = checkpointer = _Connection(self.path)
        await checkpointer.open()
        # FULL: the database file is synced before the WAL may start over, over
        # frames that were only in the WAL.
        await checkpointer.run(partial(_fetch_all, "PRAGMA synchronous = FULL", ()))
        await writer.run(partial(_patiently, self._migrate))
        self._reader = reader = _Connection(self.path)
        await reader.open()
        await reader.run(partial(_fetch_all, "PRAGMA query_only = ON", ()))
        # Opened in the reader's thread, and its schema read there, so that no
        # first read in the event loop's thread parses it.
        self._inline = await reader.run(partial(_open_inline, self.path))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if self._schema_version(conn) == SCHEMA_VERSION:
            return
        # Checked again under the write lock: another process may have won the race.
        _in_transaction(self._create_or_upgrade, conn)

    def _create_or_upgrade(self, conn: sqlite3.Connection) -> None:
        found = self._schema_version(conn)
        if found == SCHEMA_VERSION:
            return
        if found == 0:
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
            except sqlite3.OperationalError as error:
                raise StoreError(
                    f"SQLite file {self.path} already holds tables that llmsession did not "
                    f"create ({error}); use a new file"
                ) from error
        else:
            for version in range(found + 1, SCHEMA_VERSION + 1):
                for statement in _UPGRADES[version]:
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"SQLite file {self.path} has schema version {found}, but this llmsession "
                f"knows versions up to {SCHEMA_VERSION}; upgrade llmsession to open it"
            )
        return found

    def _connections(self) -> tuple[_Connection, _Connection]:
        if self._closed or self._writer is None or self._reader is None:
            raise StoreError("this store was closed; open a new one")
        return self._writer, self._reader

    async def _write(
        self, work: Callable[[sqlite3.Connection], T], *, in_thread: bool = False
    ) -> T:
        """Run ``work`` in one write transaction, holding SQLite's write lock.

        ``work`` reads the clock after the lock was taken, so a writer that waited
        never writes an older time. It runs in the event loop's thread (see
        _write_here), or with ``in_thread`` (long work: sweeps, purges) wholly in
        the writer's.
        """
        if in_thread:
            return await self._in_writer(partial(_in_transaction, work))
        return await self._write_here(work)

    async def _write_here(
        self, work: Callable[[sqlite3.Connection], T], batch: Sequence[_PendingChange] = ()
    ) -> T:
        """Run ``work``'s statements in the event loop's thread, then COMMIT in the
        writer's; ``batch`` is forgotten (see RecentSessions) if nothing is committed.

        Statements in the writer's thread each let go of the GIL and took it back,
        and under load the event loop held it: a batch of rounds waited for the
        loop once per statement, and the answers waited for the batch. Here they
        run in C, while nothing else wants the GIL. Only the COMMIT, which waits
        for the fsync, goes to the writer's thread, so the loop goes on meanwhile
        and the rounds that arrive queue for the next batch (GroupCommit).

        The writer's busy timeout is 0, so nothing here waits: while another
        process holds the write lock, the whole transaction goes to the writer's
        thread, which waits for it. The lock stays held until the COMMIT is done,
        even if the caller is cancelled: the connection is then busy.
        """
        writer, _ = self._connections()
        conn = writer.connection
        await self._lock.acquire()
        with _named_errors(self.path):
            try:
                began = _try_begin_immediate(conn)
            except BaseException:
                self._lock.release()
                raise
            if began:
                try:
                    result = work(conn)
                except BaseException:
                    try:
                        _rollback(conn)
                    finally:
                        self._lock.release()
                        self._forget(batch)
                    raise
                committed = writer.submit(_commit)
                committed.add_done_callback(partial(self._committed, batch))
                await asyncio.shield(committed)
                return result
        self._lock.release()
        try:
            return await self._in_writer(partial(_in_transaction, work))
        except BaseException:
            self._forget(batch)
            raise

    def _committed(self, batch: Sequence[_PendingChange], future: asyncio.Future[None]) -> None:
        """A COMMIT of _write_here ended: the writer is free again."""
        self._lock.release()
        if future.cancelled() or future.exception() is not None:
            # Rolled back: what the batch wrote and so remembered was never
            # stored, and its version numbers will be written again with other
            # contents.
            self._forget(batch)
        else:
            self._count_commit()

    def _forget(self, batch: Sequence[_PendingChange]) -> None:
        for pending in batch:
            self._recent.forget(pending.session_id)

    async def _in_writer(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in the writer's thread (waiting there for another process's
        write lock), its transactions kept from interleaving.

        The lock stays held until the thread is done, even if the caller is
        cancelled: a thread cannot be stopped, and until it is done the connection
        is in its hands, so the event loop's thread must not begin a transaction on
        it (see _write_here; "cannot start a transaction within a transaction").
        """
        writer, _ = self._connections()
        await self._lock.acquire()
        try:
            job = writer.submit(partial(_patiently, work))
        except BaseException:
            self._lock.release()
            raise
        job.add_done_callback(self._done_in_writer)
        with _named_errors(self.path):
            return await asyncio.shield(job)

    def _done_in_writer(self, job: asyncio.Future[Any]) -> None:
        """A transaction of _in_writer ended: the writer is free again."""
        self._lock.release()
        # Also read when nobody waits for it any more (its caller was cancelled).
        if not job.cancelled() and job.exception() is None:
            self._count_commit()

    def _count_commit(self) -> None:
        self._commits += 1
        if self._commits >= _CHECKPOINT_EVERY and self._checkpointer is not None:
            self._commits = 0
            self._checkpointer.post_work(_checkpoint)

    async def _read(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        _, reader = self._connections()
        return await reader.run(partial(_fetch_all, sql, params))

    # -- session primitives ------------------------------------------------------

    async def _insert(self, stored: StoredSession, first: Round | None = None) -> None:
        params = (
            *insert_values(stored, stored.record.session_id.value.bytes),
            *stored.usage.as_tuple(),
            first is not None and first.turn is not None,
            micros(stored.deadline),
        )
        start_key = None if first is None else first.idempotency_key

        def insert(conn: sqlite3.Connection) -> None:
            if start_key is not None:
                _record_start(conn, stored, start_key)
            conn.execute(_INSERT_SESSION, params)
            _roll(conn, stored, stored.record.created_at, session_amounts())
            if first is not None:
                _insert_round(conn, first, stored, stored.record.session_id.value.bytes)

        await self._write(insert)

    async def _history_turns(self, session_id: SessionId) -> list[Turn]:
        rows = await self._read(_SELECT_TURNS, (session_id.value.bytes,))
        return [turn_from_row(row) for row in rows]

    async def _session_turns(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> tuple[StoredSession, list[Turn]]:
        _, reader = self._connections()
        reads = _history_reads(tenant_id, session_id, _SELECT_TURNS)
        sessions, turns = await reader.run(partial(_in_snapshot, *reads))
        stored = self._session_from_rows(tenant_id, session_id, sessions)
        return stored, [turn_from_row(row) for row in turns]

    def _session_from_rows(
        self, tenant_id: TenantId, session_id: SessionId, sessions: list[Any]
    ) -> StoredSession:
        """The session as _get gives it, from the rows of _SELECT_SESSION."""
        if not sessions:
            raise NotFoundError(f"no session {session_id}")
        # The row is the one of these ids: no need to decode them again.
        row = sessions[0]
        stored = stored_from_row(row, session_id, usage_totals_from_row(row, 15), tenant_id)
        return present(stored, self.clock())

    @asynccontextmanager
    async def _locked_turns(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AsyncGenerator[tuple[StoredSession, Sequence[HistoryTurn]]]:
        # The file lock is taken where the session and its history are then read
        # (see _take_and_read), in the event loop's thread, and given back here:
        # neither waits.
        _, reader = self._connections()
        turn_file = self._turns()
        claim = turn_file.claim(session_id)
        reads = _history_reads(tenant_id, session_id, _SELECT_TURN_ITEMS)
        async with turn_file.local_turn(session_id):
            try:
                retries = Retries()
                while (rows := await self._take_and_read(reader, turn_file, claim, reads)) is None:
                    # Another process holds the turn.
                    await retries.wait()
            except BaseException:
                # Cancelled (waiting for another process, or in the reader's
                # thread) or failed: at once, before the next holder in this
                # process can take its turn.
                turn_file.give_back(claim)
                raise
            try:
                sessions, turns = rows
                yield (
                    self._session_from_rows(tenant_id, session_id, sessions),
                    [TurnItems(*row) for row in turns],
                )
            finally:
                turn_file.give_back(claim)

    async def _take_and_read(
        self,
        reader: _Connection,
        turn_file: TurnFile,
        claim: Claim,
        reads: tuple[tuple[str, Sequence[object]], tuple[str, Sequence[object]]],
    ) -> tuple[list[Any], list[Any]] | None:
        """Take ``claim``'s lock, then read the session and its history in one
        snapshot taken after it; None if another process holds the lock.

        This runs in the event loop's thread, on a connection of its own: a hop
        to the reader's thread and back cost more than the read, and under load
        the reader's thread waited for the GIL at every statement, as the writer
        did (see _write_here). A WAL reader waits for no writer, the lock is
        only tried, and the connection's busy timeout is 0, so nothing here waits:
        a read that finds the file busy (another process recovering it) or fails
        is done again in the reader's thread, still under the lock.
        """
        inline = self._inline
        if inline is None:
            raise StoreError("this store was closed; open a new one")
        if not turn_file.take(claim):
            return None
        try:
            return _in_snapshot(*reads, inline)
        except sqlite3.Error:
            # A read transaction left open would hold its snapshot, and so keep
            # every checkpoint from reaching the end of the WAL.
            with suppress(sqlite3.Error):
                if inline.in_transaction:
                    inline.rollback()
            return await reader.run(partial(_in_snapshot, *reads))

    async def _stored_turn(self, session_id: SessionId, seq: int) -> Turn | None:
        rows = await self._read(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE session_id = ? AND seq = ?",
            (session_id.value.bytes, seq),
        )
        return turn_from_row(rows[0]) if rows else None

    async def _started_by(self, tenant_id: TenantId, idempotency_key: str) -> SessionId | None:
        rows = await self._read(_SELECT_STARTED, (tenant_id.value, idempotency_key))
        return SessionId(uuid.UUID(bytes=rows[0][0])) if rows else None

    async def _keyed_round(
        self, tenant_id: TenantId, session_id: SessionId, idempotency_key: str
    ) -> tuple[StoredSession, KeyedRound] | None:
        _, reader = self._connections()
        sessions, rounds = await reader.run(
            partial(
                _in_snapshot,
                (_SELECT_SESSION, _key(tenant_id, session_id)),
                (_SELECT_ROUND_BY_KEY, (session_id.value.bytes, idempotency_key)),
            )
        )
        if not sessions:
            raise NotFoundError(f"no session {session_id}")
        if not rounds:
            return None
        return _stored_from_row(sessions[0]), _keyed_from_row(session_id, rounds[0])

    def turn_lock(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AbstractAsyncContextManager[None]:
        """Hold a session's gateway turn, across every process using this file.

        In this process waiters queue in arrival order; the first then takes an
        exclusive lock on the session's byte of ``<path>-turns`` (see
        :mod:`llmsession.store.turn_file`), retrying with a short backoff while
        another process holds it. The lock goes on the way out (also when
        cancelled), and with its process if that dies.
        """
        self._connections()
        return self._turns().turn(session_id)

    def _turns(self) -> TurnFile:
        if self._turn_file is None:
            self._turn_file = open_turn_file(Path(f"{self.path}-turns"))
        return self._turn_file

    async def _run_change(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        change: ChangeFn,
        idempotency_key: str | None,
    ) -> Change:
        return await self._changes.submit(
            _PendingChange(tenant_id, session_id, change, idempotency_key)
        )

    async def _run_changes(self, batch: Sequence[_PendingChange]) -> list[Change | Exception]:
        # Every change that queued up while the last commit was syncing goes into
        # one transaction: one fsync for the batch instead of one per round.
        return await self._write_here(partial(self._apply_changes, batch), batch)

    def _apply_changes(
        self, batch: Sequence[_PendingChange], conn: sqlite3.Connection
    ) -> list[Change | Exception]:
        if len(batch) == 1:
            # Alone in its transaction: an error rolls all of it back, so the
            # savepoint's two statements would buy nothing.
            return [self._apply_change(batch[0], conn)]
        outcomes: list[Change | Exception] = []
        for pending in batch:
            # A savepoint per change: one refused change leaves the others whole.
            conn.execute("SAVEPOINT change")
            try:
                outcomes.append(self._apply_change(pending, conn))
            except Exception as error:
                conn.execute("ROLLBACK TO change")
                if isinstance(error, sqlite3.Error):
                    error = StoreError(f"SQLite file {self.path}: {error}")
                outcomes.append(error)
            conn.execute("RELEASE change")
        return outcomes

    def _apply_change(self, pending: _PendingChange, conn: sqlite3.Connection) -> Change:
        """Read, let the core compute, write: all in the writer's thread, under its lock.

        A session this store remembers is not read: a round is then one UPDATE
        and one INSERT. The UPDATE's version check decides whether the
        remembered session was current; if not, the change is computed again
        from a fresh read (the write lock is held throughout, so that read is
        current).
        """
        known = self._recent.get(pending.tenant_id, pending.session_id)
        if known is not None:
            try:
                result = self._change(pending, known, conn)
            except LLMSessionError:
                # Only a write confirms the remembered session; an error may
                # come from an outdated one.
                result = None
            if (
                result is not None
                and result.stored is not known
                and self._write_change(conn, known, result)
            ):
                return result
        row = conn.execute(_SELECT_SESSION, _key(pending.tenant_id, pending.session_id)).fetchone()
        if row is None:
            self._recent.forget(pending.session_id)
            raise NotFoundError(f"no session {pending.session_id}")
        stored = stored_from_row(
            row, pending.session_id, usage_totals_from_row(row, 15), pending.tenant_id
        )
        self._recent.remember(stored)
        result = self._change(pending, stored, conn)
        if result.stored is not stored and not self._write_change(conn, stored, result):
            raise VersionConflict
        return result

    def _change(
        self, pending: _PendingChange, stored: StoredSession, conn: sqlite3.Connection
    ) -> Change:
        first = None
        if pending.idempotency_key is not None:
            found = conn.execute(
                _SELECT_ROUND_BY_KEY, (pending.session_id.value.bytes, pending.idempotency_key)
            ).fetchone()
            if found is not None:
                first = _keyed_from_row(pending.session_id, found)
        return self._compute(pending.change, stored, first)

    def _write_change(self, conn: sqlite3.Connection, old: StoredSession, result: Change) -> bool:
        """Write ``result`` over ``old`` if the row still holds ``old``'s version."""
        new, new_round = result.stored, result.round
        record = new.record
        # sqlite3 tries to adapt every parameter but an int, float, str or bytearray,
        # and failing to costs it an exception raised and cleared: the id goes to
        # each statement as a bytearray, the same BLOB.
        key = bytearray(record.session_id.value.bytes)
        # A session's time never runs backwards, so a round never moves its deadline
        # earlier; if one did, the full write below would set due with it.
        if (
            new_round is not None
            and record.state is old.record.state
            and old.deadline is not None
            and new.deadline is not None
            and new.deadline >= old.deadline
        ):
            usage = new.usage
            written = conn.execute(
                _UPDATE_ROUND if new_round.turn is None else _UPDATE_ROUND_WITH_TURN,
                (
                    record.round_count,
                    record.delta_tokens,
                    record.tokens_saved,
                    new.version,
                    new.last_activity_at.epoch_micros,
                    micros(new.deadline),
                    usage.input_tokens,
                    usage.cached_input_tokens,
                    usage.cache_write_tokens,
                    usage.output_tokens,
                    usage.reasoning_tokens,
                    usage.rounds_without_usage,
                    key,
                    old.version,
                ),
            )
        else:
            update = (
                _UPDATE_SESSION
                if new_round is None or new_round.turn is None
                else _UPDATE_SESSION_WITH_TURN
            )
            written = conn.execute(update, _update_params(new, key, old.version))
        if written.rowcount != 1:
            return False
        if new_round is not None:
            _insert_round(conn, new_round, new, key)
        elif record.state is not Active and old.record.state is Active:
            # The session ended: its conversation goes with it (the rounds stay).
            conn.execute(_DELETE_TURNS, (key,))
        self._recent.remember(new)
        return True

    async def _get(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """One session as of now: past its deadline, expired (see store.presented)."""
        rows = await self._read(_SELECT_SESSION, _key(tenant_id, session_id))
        if not rows:
            raise NotFoundError(f"no session {session_id}")
        return present(_stored_from_row(rows[0]), self.clock())

    async def _list_sessions(self, tenant_id: TenantId, query: SessionQuery) -> Page[StoredSession]:
        """A tenant's sessions as of now, newest first (see store.presented): a due
        Active session is listed as expired, under ``state=expired``, not ``active``."""
        now = self.clock()
        conditions = ["tenant_id = ?"]
        params: list[object] = [tenant_id.value]
        if query.cursor is not None:
            created_at, session_id = decode_cursor(query.cursor)
            conditions.append("(created_at, session_id) < (?, ?)")
            params += [created_at.epoch_micros, session_id.value.bytes]
        if query.provider_id is not None:
            conditions.append("provider_id = ?")
            params.append(query.provider_id)
        if query.model is not None:
            conditions.append("model = ?")
            params.append(query.model)
        if query.created_after is not None:
            conditions.append("created_at > ?")
            params.append(query.created_after.epoch_micros)
        if query.created_before is not None:
            conditions.append("created_at < ?")
            params.append(query.created_before.epoch_micros)
        where = " AND ".join(conditions)
        order = "ORDER BY created_at DESC, session_id DESC LIMIT ?"
        due: list[Any] = []
        if query.state is SessionExpired:
            # The due sessions, read first: one swept meanwhile is then in both reads.
            # Through the deadline index, so this costs what is due and not yet
            # swept; without statistics SQLite would pick the tenant's index and
            # read every session of the tenant.
            due = await self._read(
                f"SELECT {_SESSION_COLUMNS} FROM sessions INDEXED BY sessions_due "
                f"WHERE {_DUE} AND {where} {order}",
                [now.epoch_micros, now.epoch_micros, *params, query.limit + 1],
            )
        if query.state is not None:
            where += " AND state = ?"
            params.append(query.state.name)
            if query.state is Active:
                where += " AND deadline > ?"
                params.append(now.epoch_micros)
        rows = await self._read(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {where} {order}",
            [*params, query.limit + 1],
        )
        found = newest_first(
            shown_in(map(_stored_from_row, due), now, query),
            shown_in(map(_stored_from_row, rows), now, query),
        )
        page = found[: query.limit]
        cursor = None
        if len(found) > query.limit:
            last = page[-1].record
            cursor = encode_cursor(last.created_at, last.session_id)
        return Page(page, cursor)

    async def _list_rounds(
        self, tenant_id: TenantId, session_id: SessionId, after_seq: int, limit: int
    ) -> list[Round]:
        # Rounds are never deleted (a purged session never had any), so checking the
        # owner and reading the rounds need not share a snapshot.
        owner = await self._read(
            "SELECT 1 FROM sessions WHERE session_id = ? AND tenant_id = ?",
            _key(tenant_id, session_id),
        )
        if not owner:
            raise NotFoundError(f"no session {session_id}")
        rows = await self._read(
            f"SELECT {_ROUND_COLUMNS} FROM rounds WHERE session_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (session_id.value.bytes, after_seq, limit),
        )
        return [_round_from_row(session_id, row) for row in rows]

    async def _totals(self, tenant_id: TenantId, group_by: Sequence[GroupKey] = ()) -> list[Totals]:
        """Totals as of now: a due Active session counts as expired (see store.presented)."""
        provider = "provider_id" if "provider" in group_by else "NULL"
        model = "model" if "model" in group_by else "NULL"
        now = self.clock()
        _, reader = self._connections()
        rows, due = await reader.run(
            partial(
                _in_snapshot,
                (
                    f"SELECT {provider}, {model}, state, SUM(sessions), "
                    f"{', '.join(f'SUM({column})' for column in _COUNT_COLUMNS)} "
                    "FROM session_counts WHERE tenant_id = ? GROUP BY 1, 2, 3",
                    (tenant_id.value,),
                ),
                (
                    f"SELECT {_SESSION_COLUMNS} FROM sessions INDEXED BY sessions_due "
                    f"WHERE {_DUE} AND tenant_id = ?",
                    (now.epoch_micros, now.epoch_micros, tenant_id.value),
                ),
            )
        )
        # Per group: sessions by state, then the sums of _SUMMED.
        sums: dict[tuple[str | None, str | None], tuple[dict[str, int], list[int]]] = {}
        for row in rows:
            key: tuple[str | None, str | None] = (row[0], row[1])
            by_state, amounts = sums.setdefault(
                key, ({state.name: 0 for state in ALL_STATES}, [0] * len(_SUMMED))
            )
            by_state[state_named(row[2]).name] += int(row[3])
            for i in range(len(_SUMMED)):
                amounts[i] += _join_halves(row[4 + 2 * i], row[5 + 2 * i])
        stored = [
            Totals(
                key[0],
                key[1],
                by_state,
                amounts[0],
                amounts[1],
                amounts[2],
                _usage_totals(amounts[3:]),
            )
            for key, (by_state, amounts) in sums.items()
            # A group whose sessions were all purged keeps its (zero) counters.
            if any(by_state.values())
        ]
        return present_totals(stored, map(_stored_from_row, due), now, group_by)

    async def _timeseries(
        self, tenant_id: TenantId, window: TimeWindow, group_by: Sequence[GroupKey]
    ) -> list[TimeBucket]:
        provider = "provider_id" if "provider" in group_by else "''"
        model = "model" if "model" in group_by else "''"
        rows = await self._read(
            f"SELECT start, {provider}, {model}, "
            + ", ".join(f"SUM({column})" for column in _ROLLUP_COLUMNS)
            + " FROM usage_rollup WHERE tenant_id = ? AND span = ? AND start >= ? AND start < ? "
            "GROUP BY 1, 2, 3",
            (tenant_id.value, _SPANS[window.bucket], window.first, window.end),
        )
        return fold(
            ((row[0], row[1], row[2], _rollup_amounts(row[3:])) for row in rows), window, group_by
        )

    async def _sweep(self, now: Timestamp, limit: int) -> int:
        def expire_due(conn: sqlite3.Connection) -> int:
            written = 0
            # A session that had rounds since its due time was set is found but not
            # due: its due moves to its deadline, it does not count towards the
            # limit, and the next rows are read in its place.
            while True:
                wanted = limit - written
                rows = conn.execute(_SELECT_DUE, (now.epoch_micros, wanted)).fetchall()
                updates: list[Sequence[object]] = []
                moved: list[tuple[int | None, bytes]] = []
                # Only sessions that had turns are looked up in the turns table: a
                # sweep of ledger sessions costs what it did before there were turns.
                ended: list[tuple[bytes]] = []
                for row in rows:
                    stored = _stored_from_row(row)
                    expired = expire_if_due(stored, now)
                    if expired is None:
                        moved.append((micros(stored.deadline), row[0]))
                        continue
                    updates.append(_update_params(expired, row[0], stored.version))
                    if row[-1]:
                        ended.append((row[0],))
                if moved:
                    conn.executemany(_MOVE_DUE, moved)
                if updates:
                    # The write lock was held since the SELECT, so every version
                    # matches; counting what was written keeps the figure honest.
                    written += conn.executemany(_UPDATE_SESSION, updates).rowcount
                if ended:
                    conn.executemany(_DELETE_TURNS, ended)
                if len(rows) < wanted or not moved or written >= limit:
                    return written

        return await self._write(expire_due, in_thread=True)

    async def _purge_created(
        self, cutoff: Timestamp, limit: int, tenant_id: TenantId | None
    ) -> int:
        # One tenant's are found through sessions_by_state, every tenant's through
        # sessions_created_unused.
        scope, params = (
            ("", ()) if tenant_id is None else ("tenant_id = ? AND ", (tenant_id.value,))
        )

        def purge(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM sessions WHERE session_id IN (SELECT session_id FROM sessions "
                f"WHERE {scope}state = '{_CREATED}' AND created_at <= ? "
                "ORDER BY created_at LIMIT ?)",
                (*params, cutoff.epoch_micros, limit),
            ).rowcount

        return await self._write(purge, in_thread=True)

    async def ping(self) -> None:
        await self._read("SELECT 1 FROM sessions LIMIT 1")

    async def aclose(self) -> None:
        """Close the connections, after any transaction in progress; idempotent."""
        self._closed = True
        async with self._lock:
            writer, reader, inline = self._writer, self._reader, self._inline
            self._writer = self._reader = self._inline = None
            if inline is not None and reader is not None:
                await reader.run(lambda _: inline.close())
            checkpointer, self._checkpointer = self._checkpointer, None
            for conn in (writer, reader, checkpointer):
                if conn is not None:
                    await conn.close()
            turn_file, self._turn_file = self._turn_file, None
            if turn_file is not None:
                turn_file.release()

    # -- tenants and API keys -------------------------------------------------------

    async def _create_tenant(self, tenant_id: TenantId) -> Tenant:
        def insert(conn: sqlite3.Connection) -> Tenant:
            tenant = Tenant(tenant_id, self.clock())
            try:
                conn.execute(
                    "INSERT INTO tenants (tenant_id, created_at) VALUES (?, ?)",
                    (tenant_id.value, tenant.created_at.epoch_micros),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(f"tenant {tenant_id} already exists") from None
            return tenant

        return await self._write(insert)

    async def _get_tenant(self, tenant_id: TenantId) -> Tenant:
        rows = await self._read(
            "SELECT created_at FROM tenants WHERE tenant_id = ?", (tenant_id.value,)
        )
        if not rows:
            raise NotFoundError(f"no tenant {tenant_id}")
        return Tenant(tenant_id, Timestamp(rows[0][0]))

    async def list_tenants(self) -> list[Tenant]:
        rows = await self._read("SELECT tenant_id, created_at FROM tenants ORDER BY tenant_id")
        return [Tenant(TenantId(row[0]), Timestamp(row[1])) for row in rows]

    async def _add_api_key(self, tenant_id: TenantId, key_id: str, key_hash: bytes) -> ApiKeyInfo:
        def insert(conn: sqlite3.Connection) -> ApiKeyInfo:
            known = conn.execute(
                "SELECT 1 FROM tenants WHERE tenant_id = ?", (tenant_id.value,)
            ).fetchone()
            if known is None:
                raise NotFoundError(f"no tenant {tenant_id}")
            info = ApiKeyInfo(key_id, tenant_id, key_hash, self.clock())
            try:
                conn.execute(
                    "INSERT INTO api_keys (key_id, tenant_id, key_hash, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (key_id, tenant_id.value, key_hash, info.created_at.epoch_micros),
                )
            except sqlite3.IntegrityError:
                raise ConflictError(f"API key id {key_id!r} already exists") from None
            return info

        return await self._write(insert)

    async def get_api_key(self, key_id: str) -> ApiKeyInfo | None:
        rows = await self._read(f"{_SELECT_KEY} WHERE key_id = ?", (key_id,))
        return key_from_row(rows[0]) if rows else None

    async def _list_api_keys(self, tenant_id: TenantId) -> list[ApiKeyInfo]:
        rows = await self._read(
            f"{_SELECT_KEY} WHERE tenant_id = ? ORDER BY created_at, key_id", (tenant_id.value,)
        )
        return [key_from_row(row) for row in rows]

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        def revoke(conn: sqlite3.Connection) -> ApiKeyInfo:
            row = conn.execute(f"{_SELECT_KEY} WHERE key_id = ?", (key_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no API key {key_id!r}")
            info = key_from_row(row)
            if info.revoked_at is not None:
                return info
            now = self.clock()
            conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (now.epoch_micros, key_id)
            )
            return ApiKeyInfo(info.key_id, info.tenant_id, info.key_hash, info.created_at, now)

        return await self._write(revoke)


_SELECT_KEY = "SELECT key_id, tenant_id, key_hash, created_at, revoked_at FROM api_keys"

# Summed by totals(), in the order of Totals' rounds, delta_tokens, tokens_saved
# and then UsageTotals' fields.
_SELECT_TURNS = f"SELECT {TURN_COLUMNS} FROM turns WHERE session_id = ? ORDER BY seq"
# A gateway turn's history: not the answers as sent (answer_body, the last
# column, is then never read from its overflow pages).
_SELECT_TURN_ITEMS = (
    "SELECT endpoint, request_items, answer_items, response_id"
    " FROM turns WHERE session_id = ? ORDER BY seq"
)
_SELECT_STARTED = (
    "SELECT session_id FROM started_sessions WHERE tenant_id = ? AND idempotency_key = ?"
)


def path_of_url(url: str) -> Path:
    """The file a ``sqlite:///`` URL names: three slashes, then a relative or absolute path."""
    parts = urlsplit(url)
    # Without the "//", "sqlite:rel.db" would lose its first letter below and
    # "sqlite:/abs.db" would name a relative path.
    slashes = url.partition(":")[2].startswith("//")
    if parts.scheme != "sqlite" or not slashes or parts.netloc or parts.query or parts.fragment:
        raise InvalidInput(
            f"{url!r} is not a SQLite store URL; use sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (no host, query or fragment)"
        )
    # urlsplit keeps the slash that ends the empty host; one more makes the path absolute.
    path = unquote(parts.path)[1:]
    if not path or path.endswith("/"):
        raise InvalidInput(
            f"{url!r} names no file; use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if path == ":memory:":
        raise InvalidInput(
            "an in-memory SQLite database is not durable; use memory:// for one, "
            "or sqlite:///path/to/file.db for a file"
        )
    return Path(path)


def _key(tenant_id: TenantId, session_id: SessionId) -> tuple[bytes, str]:
    return session_id.value.bytes, tenant_id.value


def _join_halves(high: int | None, low: int | None) -> int:
    return ((high or 0) << 32) + (low or 0)


def _update_params(
    new: StoredSession, key: bytes | bytearray, expected_version: int
) -> tuple[object, ...]:
    return (
        *change_values(new),
        *new.usage.as_tuple(),
        micros(new.deadline),
        key,
        expected_version,
    )


def _insert_round(
    conn: sqlite3.Connection, new_round: Round, new: StoredSession, key: bytes | bytearray
) -> None:
    """Insert a round (``new`` is its session right after it, ``key`` its id as
    stored), add it to the rollup and, for a gateway round with one, store its
    turn (its session's write set has_turns, in the same statement)."""
    _roll(conn, new, new_round.recorded_at, round_amounts(new_round, new))
    params = (key, *round_values(new_round, new))
    if not new_round.gateway:
        conn.execute(_INSERT_ROUND, params)
        return
    conn.execute(_INSERT_GATEWAY_ROUND, (*params, *usage_values(new_round.usage)))
    if new_round.turn is not None:
        conn.execute(_INSERT_TURN, (key, new_round.seq, *turn_values(new_round.turn)))


def _roll(conn: sqlite3.Connection, stored: StoredSession, at: Timestamp, amounts: Amounts) -> None:
    """Add ``amounts`` to the rollup rows of ``stored``'s tenant and group, at the hour
    and the day of ``at``."""
    record = stored.record
    hour, day = bucket_starts(at)
    # Written out, in _ROLL's order: a generator over the seven split amounts cost
    # more than the rest.
    rounds, delta, saved, input_, cached, cache_write, output, reasoning, without, started = amounts
    conn.execute(
        _ROLL,
        (
            record.tenant_id.value,
            hour,
            day,
            record.provider_id,
            record.model,
            rounds,
            delta >> 32,
            delta & _LOW_BITS,
            saved >> 32,
            saved & _LOW_BITS,
            input_ >> 32,
            input_ & _LOW_BITS,
            cached >> 32,
            cached & _LOW_BITS,
            cache_write >> 32,
            cache_write & _LOW_BITS,
            output >> 32,
            output & _LOW_BITS,
            reasoning >> 32,
            reasoning & _LOW_BITS,
            without,
            started,
        ),
    )


def _record_start(conn: sqlite3.Connection, stored: StoredSession, idempotency_key: str) -> None:
    """Record the tenant's key that starts ``stored``; ConflictError if it started another."""
    tenant = stored.record.tenant_id
    try:
        conn.execute(
            "INSERT INTO started_sessions (tenant_id, idempotency_key, session_id) "
            "VALUES (?, ?, ?)",
            (tenant.value, idempotency_key, stored.record.session_id.value.bytes),
        )
    except sqlite3.IntegrityError:
        row = conn.execute(_SELECT_STARTED, (tenant.value, idempotency_key)).fetchone()
        started = "another session" if row is None else SessionId(uuid.UUID(bytes=row[0]))
        raise ConflictError(
            f"idempotency key {idempotency_key!r} already started session {started}"
        ) from None


def _rollup_amounts(sums: Sequence[int]) -> list[int]:
    """Amounts in ROLLUP_FIELDS order from the sums of _ROLLUP_COLUMNS."""
    return [
        sums[0],
        *(_join_halves(sums[i], sums[i + 1]) for i in range(1, 15, 2)),
        sums[15],
        sums[16],
    ]


def _usage_totals(sums: Sequence[int]) -> UsageTotals:
    return UsageTotals(sums[0], sums[1], sums[2], sums[3], sums[4], sums[5])


def _stored_from_row(row: Any) -> StoredSession:
    return stored_from_row(row, SessionId(uuid.UUID(bytes=row[0])), usage_totals_from_row(row, 15))


def _round_from_row(session_id: SessionId, row: Any) -> Round:
    gateway, usage = usage_from_round_row(row, 4)
    return Round(session_id, row[0], row[1], Timestamp(row[2]), row[3], usage, gateway)


def _keyed_from_row(session_id: SessionId, row: Any) -> KeyedRound:
    """A round of _SELECT_ROUND_BY_KEY: _ROUND_COLUMNS, then what its replay gives back."""
    return KeyedRound(_round_from_row(session_id, row), row[-2], row[-1])
