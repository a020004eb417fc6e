"""PostgresStore: the SessionStore on PostgreSQL, for many replicas sharing one database.

Every change follows :class:`SessionStore`'s loop: read the session, let the
core compute the next record, then write it with one statement, a
compare-and-set on ``version`` that inserts the round only if the update
matched. How the session is read depends on contention:

- Usually not at all: the store remembers the newest version of each session it
  wrote or read (:class:`RecentSessions`), so a round on a session this replica
  served last is that one statement, one round trip, no lock. A stale memory
  costs a refused compare-and-set and a retry from a fresh read; an answer that
  writes nothing (an error, a replayed round) is given only after checking that
  the remembered version is still the stored one.
- Changes of one session in one process never race each other: those that
  arrive while one is in flight queue up (:class:`SessionGroups`) and then go
  together, in one transaction on the locked row, each computed from the one
  before it, all writes and ``COMMIT`` in one pipeline: many clients on one
  session cost about one round trip per group, not per round. A change alone
  takes its turn (:class:`SessionTurns`) and the path below.
- Once writers of a session in different processes have collided, its changes
  lock the row for a while (``SELECT ... FOR UPDATE`` in a transaction), so the
  processes queue on the lock instead of retrying: ``BEGIN`` + lock + read go
  out in one pipelined round trip, write + ``COMMIT`` in another.

Sweepers in any number of processes claim due rows with ``FOR UPDATE SKIP
LOCKED``: each due session is expired exactly once, by whichever sweeper (or
late round) locked it first.

A gateway round's turn of the conversation is written by its round's statement,
and every write that takes a session out of Active deletes the session's turns
in the same statement. Turns of one session are serialized across processes by
an advisory lock, held on a connection that the locks of many turns share
(store.lock_connections, :meth:`turn_lock`); the session's changes while the
turn is held go on that connection, and the turn's round gives the lock back in
the same call (the schema's ``turn_recorded()``).

The tables are created, in the connection's current schema, on first use and
carry a schema version.

The URL is a libpq URL; these query parameters are the store's own and are
removed before connecting:

==================  =============================================  =======
``pool_min``        connections kept open                          1
``pool_max``        most connections at once                       10
``pool_timeout``    seconds to wait for a free connection          30
``session_cache``   sessions whose last version is remembered      10000
``turn_pool_max``   connections holding gateway turns' locks       10
==================  =============================================  =======

Anything else (``sslmode``, ``options=-csearch_path%3Dmyschema`` ...) goes to libpq,
``connect_timeout`` too: libpq's seconds to wait for a connection, which the store
checks (a whole number from 1 to 3600) and makes 5 when the URL does not set it.
Opening tries one connection first, so an unreachable server is one StoreError
within that time instead of the pool retrying (and logging) for ``pool_timeout``.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import AsyncGenerator, Generator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, Final, LiteralString
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit
from uuid import UUID

import psycopg
from psycopg import AsyncConnection, AsyncRawCursor, sql
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

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
    SessionTransaction,
    TransactionalStore,
    VersionConflict,
    expire_if_due,
)
from llmsession.store.cursor import decode_cursor, encode_cursor
from llmsession.store.lock_connections import UNLOCK, LockConnections
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
from llmsession.store.session_groups import PendingChange, SessionGroups
from llmsession.store.sql_rows import (
    INSERT_COLUMNS,
    ROUND_USAGE_COLUMNS,
    SESSION_COLUMNS,
    TURN_COLUMNS,
    USAGE_COLUMNS,
    change_values,
    insert_values,
    key_from_row,
    round_usage_values,
    round_values,
    stored_from_row,
    turn_from_row,
    turn_values,
    usage_from_round_row,
    usage_totals_from_row,
)
from llmsession.store.turns import SessionTurns
from llmsession.timestamps import Timestamp

__all__ = [
    "COUNTS_BACKFILL",
    "COUNTS_TRIGGER_NAMES",
    "DEFAULT_CONNECT_TIMEOUT",
    "ROLLUP_BACKFILL",
    "SCHEMA_VERSION",
    "PostgresOptions",
    "PostgresStore",
]

#: Seconds to wait for a connection when the URL has no ``connect_timeout``
#: (libpq alone would wait for the operating system, minutes for a dropped packet).
DEFAULT_CONNECT_TIMEOUT: Final = 5

#: The schema version this code creates and understands. Version 2 added an index
#: (_STATE_MODEL_INDEX); version 3 keeps with each round the session's delta_tokens
#: and version right after it (a replayed round's answer); version 4 keeps the
#: gateway's usage (sessions and rounds), turns and started sessions; version 5
#: adds usage_rollup, the rollup time series read (see store.rollup); version 6
#: adds session_counts, the counters totals read, and the trigger keeping them;
#: version 7 adds turn_history(), a gateway turn's lock and reads in one statement;
#: version 8 adds turn_recorded(), a turn's round and its lock given back in one
#: call, and makes turn_history() read each turn without the answer as sent;
#: version 9 adds try_turn_history(), which takes the lock only if it is free.
SCHEMA_VERSION: Final = 9

_Connection = AsyncConnection[TupleRow]

# A tenant's sessions of one state and model, newest first. Without it a rare model
# with a state filter was read through the partial index of Created sessions, which
# the planner costs low, filtering out 22,580 rows of other tenants and models: 19
# to 26 ms a page at a million sessions, now under 2. A model alone is left to the
# tenant index: a page stays under 12 ms, and every round writes every index (its
# update is not HOT), so one index is added, not two.
_STATE_MODEL_INDEX: Final = (
    "CREATE INDEX IF NOT EXISTS sessions_by_state_model "
    "ON sessions (tenant_id, state, model, created_at DESC, session_id DESC)"
)

# The gateway's conversation: one row per round that carried a turn, deleted in
# the write that ends the session. It references the round (not the session) so
# that purging Created sessions, which have no rounds, never looks into it.
_TURNS_TABLE: Final = """
    CREATE TABLE turns (
        session_id uuid NOT NULL,
        seq bigint NOT NULL,
        endpoint text NOT NULL,
        request_hash text NOT NULL,
        request_items text NOT NULL,
        answer_items text NOT NULL,
        response_id text,
        answer_status integer NOT NULL,
        answer_type text NOT NULL,
        answer_body bytea NOT NULL,
        PRIMARY KEY (session_id, seq),
        FOREIGN KEY (session_id, seq) REFERENCES rounds ON DELETE CASCADE
    )
    """

# The tenant's idempotency key that started a gateway session. No foreign key:
# gateway sessions are never deleted (only Created ones are purged), and one
# would make every purge look up its deleted sessions here.
_STARTED_TABLE: Final = """
    CREATE TABLE started_sessions (
        tenant_id text NOT NULL,
        idempotency_key text NOT NULL,
        session_id uuid NOT NULL,
        PRIMARY KEY (tenant_id, idempotency_key)
    )
    """

# The rollup (see store.rollup): rows per tenant, bucket (``span``, its length in
# seconds: 3600 for an hour, 86400 for a day; ``start``, epoch microseconds),
# provider and model, updated by the statement that writes the round or the
# session. Token sums are numeric: one bucket of a group may pass 2**63-1, which
# a bigint would refuse, failing the round.
#
# A row is locked from a write's upsert until its commit, so concurrent rounds
# of one tenant and group would all queue on one row (bench/store_rounds.py, 32
# clients on their own sessions: 0.84x the raw driver before the rollup, 0.41x
# with one row). Each bucket and group is therefore split over _SLOTS rows, a
# session always writing the same one (its id's low bits); reads sum them.
_ROLLUP_TABLE: Final = """
    CREATE TABLE usage_rollup (
        tenant_id text NOT NULL,
        span integer NOT NULL,
        start bigint NOT NULL,
        provider_id text NOT NULL,
        model text NOT NULL,
        slot smallint NOT NULL,
        rounds bigint NOT NULL DEFAULT 0,
        delta_tokens numeric NOT NULL DEFAULT 0,
        tokens_saved numeric NOT NULL DEFAULT 0,
        input_tokens numeric NOT NULL DEFAULT 0,
        cached_input_tokens numeric NOT NULL DEFAULT 0,
        cache_write_tokens numeric NOT NULL DEFAULT 0,
        output_tokens numeric NOT NULL DEFAULT 0,
        reasoning_tokens numeric NOT NULL DEFAULT 0,
        rounds_without_usage bigint NOT NULL DEFAULT 0,
        sessions_started bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant_id, span, start, provider_id, model, slot)
    )
    """

_SLOTS: Final = 8

#: The bucket lengths the rollup keeps, in seconds (its ``span`` column).
_SPANS: Final[dict[TimeBucketSize, int]] = {"hour": 3600, "day": 86400}

# Its columns, in store.rollup.ROLLUP_FIELDS order.
_ROLLUP_COLUMNS: Final = (
    "rounds, delta_tokens, tokens_saved, input_tokens, cached_input_tokens, "
    "cache_write_tokens, output_tokens, reasoning_tokens, rounds_without_usage, "
    "sessions_started"
)

_ROLLUP_CONFLICT: Final = (
    " ON CONFLICT (tenant_id, span, start, provider_id, model, slot) DO UPDATE SET "
    "rounds = usage_rollup.rounds + excluded.rounds, "
    "delta_tokens = usage_rollup.delta_tokens + excluded.delta_tokens, "
    "tokens_saved = usage_rollup.tokens_saved + excluded.tokens_saved, "
    "input_tokens = usage_rollup.input_tokens + excluded.input_tokens, "
    "cached_input_tokens = usage_rollup.cached_input_tokens + excluded.cached_input_tokens, "
    "cache_write_tokens = usage_rollup.cache_write_tokens + excluded.cache_write_tokens, "
    "output_tokens = usage_rollup.output_tokens + excluded.output_tokens, "
    "reasoning_tokens = usage_rollup.reasoning_tokens + excluded.reasoning_tokens, "
    "rounds_without_usage = usage_rollup.rounds_without_usage + excluded.rounds_without_usage, "
    "sessions_started = usage_rollup.sessions_started + excluded.sessions_started"
)

# Adds one write's amounts (tenant, provider, model, slot, then ROLLUP_FIELDS) to
# its hour's and its day's rows (the last two values, the buckets' starts), once
# per row of the statement's CTE named between _ROLL_SELECT and _ROLL_TAIL.
_ROLL_SELECT: Final = (
    "INSERT INTO usage_rollup (tenant_id, provider_id, model, slot, "
    + _ROLLUP_COLUMNS
    + ", span, start) SELECT %s::text, %s::text, %s::text, %s::smallint, %s::bigint, "
    "%s::numeric, %s::numeric, %s::numeric, %s::numeric, %s::numeric, %s::numeric, "
    "%s::numeric, %s::bigint, %s::bigint, b.span, b.start FROM "
)
_ROLL_TAIL: Final = (
    " CROSS JOIN (VALUES (3600, %s::bigint), (86400, %s::bigint)) AS b(span, start)"
    + _ROLLUP_CONFLICT
)


# A session's slot as _roll_params computes it: its id's last byte, mod _SLOTS (8).
_SLOT_SQL: Final = "get_byte(uuid_send(s.session_id), 15) % 8"


def _backfill(span: LiteralString, size: LiteralString) -> tuple[LiteralString, LiteralString]:
    """The statements filling the rollup's buckets of ``span`` seconds (``size``
    microseconds) from the stored rounds and sessions."""

    def start_of(column: LiteralString) -> LiteralString:
        # Floored: % truncates toward 0.
        return column + " - ((" + column + " % " + size + ") + " + size + ") % " + size

    rounds: LiteralString = (
        "INSERT INTO usage_rollup (tenant_id, span, start, provider_id, model, slot, "
        + _ROLLUP_COLUMNS
        + ") SELECT s.tenant_id, "
        + span
        + ", "
        + start_of("r.recorded_at")
        + ", s.provider_id, s.model, "
        + _SLOT_SQL
        + ", count(*), sum(r.delta_tokens), "
        "sum(s.initial_tokens - r.delta_tokens), coalesce(sum(r.input_tokens), 0), "
        "coalesce(sum(r.cached_input_tokens), 0), coalesce(sum(r.cache_write_tokens), 0), "
        "coalesce(sum(r.output_tokens), 0), coalesce(sum(r.reasoning_tokens), 0), "
        "count(*) FILTER (WHERE r.gateway AND r.input_tokens IS NULL), 0 "
        "FROM rounds r JOIN sessions s ON s.session_id = r.session_id GROUP BY 1, 2, 3, 4, 5, 6"
    )
    sessions: LiteralString = (
        "INSERT INTO usage_rollup (tenant_id, span, start, provider_id, model, slot, "
        "sessions_started) SELECT tenant_id, "
        + span
        + ", "
        + start_of("created_at")
        + ", provider_id, model, "
        + _SLOT_SQL
        + ", count(*) FROM sessions s GROUP BY 1, 2, 3, 4, 5, 6"
        + _ROLLUP_CONFLICT
    )
    return rounds, sessions


#: The rollup of every stored round and session, as the writes would have kept it
#: (each session's in its slot): the upgrade to version 5 runs it, and so can a
#: bulk load (bench/dashboard.py).
ROLLUP_BACKFILL: Final[tuple[LiteralString, ...]] = (
    *_backfill("3600", "3600000000"),
    *_backfill("86400", "86400000000"),
)

# The counters totals read: per tenant, provider, model and state, the number of
# sessions and the sums totals reports over them. Reading them costs the tenant's
# groups, not its sessions (a GROUP BY over a million sessions took 319 ms). A
# trigger on sessions keeps them in the transaction of every write, by the
# difference between the row before and after: no write path (a group of
# changes, sweep, purge, a bulk COPY) can miss one. Sums are numeric, as the
# rollup's. Like the rollup's rows, each group is split over _SLOTS rows, a
# session always counted in the same one (_SLOT_SQL), so concurrent rounds of
# one group do not all queue on one row lock; reads sum the slots.
_COUNTED_COLUMNS: Final[tuple[LiteralString, ...]] = (
    "state",
    "round_count",
    "delta_tokens",
    "tokens_saved",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "rounds_without_usage",
)
_COUNTS_TABLE: Final = """
    CREATE TABLE session_counts (
        tenant_id text NOT NULL,
        provider_id text NOT NULL,
        model text NOT NULL,
        state text NOT NULL,
        slot smallint NOT NULL,
        sessions bigint NOT NULL,
        round_count numeric NOT NULL,
        delta_tokens numeric NOT NULL,
        tokens_saved numeric NOT NULL,
        input_tokens numeric NOT NULL,
        cached_input_tokens numeric NOT NULL,
        cache_write_tokens numeric NOT NULL,
        output_tokens numeric NOT NULL,
        reasoning_tokens numeric NOT NULL,
        rounds_without_usage numeric NOT NULL,
        PRIMARY KEY (tenant_id, provider_id, model, state, slot)
    )
    """


def _counts_row(row: LiteralString) -> LiteralString:
    """The key of ``row``'s (OLD or NEW) counters, as a WHERE condition."""
    return (
        "tenant_id = " + row + ".tenant_id AND provider_id = " + row + ".provider_id "
        "AND model = " + row + ".model AND state = " + row + ".state "
        "AND slot = get_byte(uuid_send(" + row + ".session_id), 15) % 8"
    )


# A session's state only moves forward (Created, Active, then Closed or
# Expired), and a move takes the old state's row before the new one's, so two
# writes of one group and slot lock its rows in the same order. A statement
# writing many sessions (a sweep, a purge) takes rows of many slots; sweeps, and
# purges, take turns (_SWEEP_LOCK, _PURGE_LOCK) so that two never wait on each other.
_COUNTS_FUNCTION: Final = (
    """
    CREATE FUNCTION session_counts_kept() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND OLD.state = NEW.state THEN
            UPDATE session_counts SET
                round_count = round_count + (NEW.round_count - OLD.round_count),
                delta_tokens = delta_tokens + (NEW.delta_tokens - OLD.delta_tokens),
                tokens_saved = tokens_saved + (NEW.tokens_saved - OLD.tokens_saved),
                input_tokens = input_tokens + (NEW.input_tokens - OLD.input_tokens),
                cached_input_tokens =
                    cached_input_tokens + (NEW.cached_input_tokens - OLD.cached_input_tokens),
                cache_write_tokens =
                    cache_write_tokens + (NEW.cache_write_tokens - OLD.cache_write_tokens),
                output_tokens = output_tokens + (NEW.output_tokens - OLD.output_tokens),
                reasoning_tokens = reasoning_tokens + (NEW.reasoning_tokens - OLD.reasoning_tokens),
                rounds_without_usage =
                    rounds_without_usage + (NEW.rounds_without_usage - OLD.rounds_without_usage)
            WHERE """
    + _counts_row("NEW")
    + """;
            RETURN NULL;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            UPDATE session_counts SET
                sessions = sessions - 1,
                round_count = round_count - OLD.round_count,
                delta_tokens = delta_tokens - OLD.delta_tokens,
                tokens_saved = tokens_saved - OLD.tokens_saved,
                input_tokens = input_tokens - OLD.input_tokens,
                cached_input_tokens = cached_input_tokens - OLD.cached_input_tokens,
                cache_write_tokens = cache_write_tokens - OLD.cache_write_tokens,
                output_tokens = output_tokens - OLD.output_tokens,
                reasoning_tokens = reasoning_tokens - OLD.reasoning_tokens,
                rounds_without_usage = rounds_without_usage - OLD.rounds_without_usage
            WHERE """
    + _counts_row("OLD")
    + """;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO session_counts VALUES (
                NEW.tenant_id, NEW.provider_id, NEW.model, NEW.state,
                get_byte(uuid_send(NEW.session_id), 15) % 8, 1, NEW.round_count,
                NEW.delta_tokens, NEW.tokens_saved, NEW.input_tokens, NEW.cached_input_tokens,
                NEW.cache_write_tokens, NEW.output_tokens, NEW.reasoning_tokens,
                NEW.rounds_without_usage
            ) ON CONFLICT (tenant_id, provider_id, model, state, slot) DO UPDATE SET
                sessions = session_counts.sessions + 1,
                round_count = session_counts.round_count + excluded.round_count,
                delta_tokens = session_counts.delta_tokens + excluded.delta_tokens,
                tokens_saved = session_counts.tokens_saved + excluded.tokens_saved,
                input_tokens = session_counts.input_tokens + excluded.input_tokens,
                cached_input_tokens =
                    session_counts.cached_input_tokens + excluded.cached_input_tokens,
                cache_write_tokens =
                    session_counts.cache_write_tokens + excluded.cache_write_tokens,
                output_tokens = session_counts.output_tokens + excluded.output_tokens,
                reasoning_tokens = session_counts.reasoning_tokens + excluded.reasoning_tokens,
                rounds_without_usage =
                    session_counts.rounds_without_usage + excluded.rounds_without_usage;
        END IF;
        RETURN NULL;
    END
    $$
    """
)
#: The triggers on sessions that run it.
COUNTS_TRIGGER_NAMES: Final = ("session_counts_added", "session_counts_changed")
_COUNTS_TRIGGERS: Final[tuple[LiteralString, ...]] = (
    "CREATE TRIGGER session_counts_added AFTER INSERT OR DELETE ON sessions "
    "FOR EACH ROW EXECUTE FUNCTION session_counts_kept()",
    # Not for an update that leaves every counted column as it was.
    "CREATE TRIGGER session_counts_changed AFTER UPDATE OF "
    + ", ".join(_COUNTED_COLUMNS)
    + " ON sessions FOR EACH ROW WHEN (("
    + ", ".join("OLD." + column for column in _COUNTED_COLUMNS)
    + ") IS DISTINCT FROM ("
    + ", ".join("NEW." + column for column in _COUNTED_COLUMNS)
    + ")) EXECUTE FUNCTION session_counts_kept()",
)
#: The counters of every stored session, as the trigger would have kept them:
#: the upgrade to version 6 runs it, and so can a bulk load (bench/dashboard.py)
#: that leaves the trigger out (a row trigger moving the same few counter rows a
#: million times in one transaction leaves each a chain of a million versions).
COUNTS_BACKFILL: Final = (
    "INSERT INTO session_counts SELECT tenant_id, provider_id, model, state, "
    + _SLOT_SQL
    + ", count(*), sum(round_count), sum(delta_tokens), sum(tokens_saved), "
    "sum(input_tokens), sum(cached_input_tokens), sum(cache_write_tokens), "
    "sum(output_tokens), sum(reasoning_tokens), sum(rounds_without_usage) "
    "FROM sessions s GROUP BY 1, 2, 3, 4, 5"
)


# A turn's row of turn_history(): NULL where the session's columns are.
_NO_SESSION: Final = (
    "NULL::uuid, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text, "
    "NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, "
    "NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, "
    "NULL::bigint, NULL::bigint, NULL::bigint"
)


# A gateway turn's start (see PostgresStore._locked_turns): wait for the session's
# turn lock, then read the session and its turns, in one statement where three
# pipelined ones cost the client most of a turn's work. Each query of a volatile
# function takes its own snapshot, so the reads, run once the lock is granted, see
# every turn committed before it. The first row is the session (its columns, the
# turn's NULL), the next ones its turns in order (the session's columns NULL); no
# row if the tenant has no such session. A turn's row holds what a turn sends on
# (TurnItems), not the answer as sent (for a streamed answer, its whole event
# stream), which only a replay reads.
def _turn_history_function(name: LiteralString, take_lock: LiteralString) -> LiteralString:
    """turn_history() or try_turn_history(): ``take_lock`` takes the turn's lock."""
    return (
        """
    CREATE FUNCTION """
        + name
        + """(lock_key bigint, wanted uuid, tenant text)
    RETURNS TABLE (
        session_id uuid, tenant_id text, provider_id text, model text,
        initial_tokens bigint, state text, created_at bigint, activated_at bigint,
        closed_at bigint, expired_at bigint, round_count bigint, delta_tokens bigint,
        version bigint, ttl_seconds bigint, last_activity_at bigint,
        input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint,
        output_tokens bigint, reasoning_tokens bigint, rounds_without_usage bigint,
        endpoint text, request_items text, answer_items text, response_id text
    )
    LANGUAGE plpgsql AS $$
    #variable_conflict use_column
    BEGIN
        """
        + take_lock
        + """
        RETURN QUERY SELECT """
        + SESSION_COLUMNS
        + ", "
        + USAGE_COLUMNS
        + """, NULL::text, NULL::text, NULL::text, NULL::text
            FROM sessions WHERE sessions.session_id = wanted AND sessions.tenant_id = tenant;
        IF FOUND THEN
            RETURN QUERY SELECT """
        + _NO_SESSION
        + """, endpoint, request_items, answer_items, response_id
                FROM turns WHERE turns.session_id = wanted ORDER BY seq;
        END IF;
    END
    $$
    """
    )


_TURN_HISTORY_FUNCTION: Final = _turn_history_function(
    "turn_history", "PERFORM pg_advisory_lock(lock_key);"
)
# The same, unless another connection holds the lock: then one row of NULLs, at
# once (see PostgresStore._hold_turn).
_TRY_TURN_HISTORY_FUNCTION: Final = _turn_history_function(
    "try_turn_history",
    """IF NOT pg_try_advisory_lock(lock_key) THEN
            RETURN QUERY SELECT """
    + _NO_SESSION
    + """, NULL::text, NULL::text, NULL::text, NULL::text;
            RETURN;
        END IF;""",
)
# Where a row of turn_history() has its turn's columns.
_TURN_AT: Final = 21

# The columns a change may write, in the order of _change_params.
_SET_CHANGE: Final = (
    "state = %s, activated_at = %s, closed_at = %s, expired_at = %s, round_count = %s, "
    "delta_tokens = %s, tokens_saved = %s, version = %s, last_activity_at = %s, deadline = %s, "
    "input_tokens = %s, cached_input_tokens = %s, cache_write_tokens = %s, output_tokens = %s, "
    "reasoning_tokens = %s, rounds_without_usage = %s"
)

_UPDATE_SESSION: Final = (
    "UPDATE sessions SET " + _SET_CHANGE + " WHERE session_id = %s AND version = %s"
)

# A gateway round carries its usage; NULL counts are cast, as an untyped NULL in a
# select list would be taken for text. Followed by the CTE holding its session's id.
_INSERT_GATEWAY_ROUND: Final = (
    "INSERT INTO rounds (session_id, seq, delta_tokens, recorded_at, idempotency_key, "
    "session_delta_tokens, session_version, "
    + ROUND_USAGE_COLUMNS
    + ") SELECT session_id, %s, %s, %s, %s, %s, %s, %s, %s::bigint, %s::bigint, %s::bigint, "
    "%s::bigint, %s::bigint, %s::text FROM "
)

# The turn is inserted only if its round was: all of them or nothing.
_UPDATE_SESSION_AND_INSERT_TURN: Final = (
    "WITH changed AS ("
    + _UPDATE_SESSION
    + " RETURNING session_id), added AS ("
    + _INSERT_GATEWAY_ROUND
    + "changed"
    + " RETURNING session_id, seq), turned AS (INSERT INTO turns (session_id, seq, "
    + TURN_COLUMNS
    + ") SELECT session_id, seq, %s, %s, %s, %s, %s, %s, %s, %s FROM added) "
    + _ROLL_SELECT
    + "added"
    + _ROLL_TAIL
)


def _dollar_numbered(statement: LiteralString) -> str:
    """``statement`` with its ``%s`` placeholders as ``$1``, ``$2``..."""
    parts = statement.split("%s")
    if any("%" in part for part in parts):
        raise ValueError(f"only %s placeholders can be numbered: {statement}")
    return parts[0] + "".join(f"${number}{part}" for number, part in enumerate(parts[1:], start=1))


# A gateway turn's round, then its lock given back (see PostgresStore._hold_turn):
# the round's statement, COMMIT, and the unlock, in one call. An unlock has to
# wait for the commit (the next turn, here or on another replica, must read this
# one's round), and as a statement of its own it cost the client a round trip
# and about a fifth of the CPU a turn takes in the store's process
# (bench/pg_turns.py). ``written`` is the statement's rowcount:
# 0 if the version had moved, and the lock is then still held.
_TURN_RECORDED_TYPES: Final[tuple[str, ...]] = (
    # _UPDATE_SESSION: _SET_CHANGE, then the session id and the expected version.
    "text",
    *("bigint",) * 15,
    "uuid",
    "bigint",
    # _INSERT_GATEWAY_ROUND: the round, then its usage.
    *("bigint",) * 3,
    "text",
    *("bigint",) * 2,
    "boolean",
    *("bigint",) * 5,
    "text",
    # TURN_COLUMNS.
    *("text",) * 5,
    "integer",
    "text",
    "bytea",
    # _ROLL_SELECT and _ROLL_TAIL.
    *("text",) * 3,
    "smallint",
    "bigint",
    *("numeric",) * 7,
    *("bigint",) * 4,
)
_TURN_RECORDED_PROCEDURE: Final = (
    "CREATE PROCEDURE turn_recorded("
    + ", ".join(_TURN_RECORDED_TYPES)
    + """, lock_key bigint, INOUT written bigint)
    LANGUAGE plpgsql AS $$
    BEGIN
        """
    + _dollar_numbered(_UPDATE_SESSION_AND_INSERT_TURN)
    + """;
        GET DIAGNOSTICS written = ROW_COUNT;
        COMMIT;
        IF written > 0 THEN
            PERFORM pg_advisory_unlock(lock_key);
        END IF;
    END
    $$
    """
).encode()

#: What takes a schema from the version before to this one, in order.
_UPGRADES: Final[dict[int, tuple[LiteralString | bytes, ...]]] = {
    2: (_STATE_MODEL_INDEX,),
    # Before version 3 a session's version grew only at create (1), activate (2) and
    # each round while it stayed Active, so round seq left it at seq + 2; its
    # delta_tokens were the sum of its rounds' up to seq.
    3: (
        "ALTER TABLE rounds ADD COLUMN session_delta_tokens bigint, "
        "ADD COLUMN session_version bigint",
        "UPDATE rounds r SET session_delta_tokens = t.total, session_version = r.seq + 2 "
        "FROM (SELECT session_id, seq, sum(delta_tokens) "
        "OVER (PARTITION BY session_id ORDER BY seq) AS total FROM rounds) t "
        "WHERE r.session_id = t.session_id AND r.seq = t.seq",
        "ALTER TABLE rounds ALTER COLUMN session_delta_tokens SET NOT NULL, "
        "ALTER COLUMN session_version SET NOT NULL",
    ),
    # Columns with a constant default (or none) are added without rewriting the table.
    4: (
        "ALTER TABLE sessions ADD COLUMN input_tokens bigint NOT NULL DEFAULT 0, "
        "ADD COLUMN cached_input_tokens bigint NOT NULL DEFAULT 0, "
        "ADD COLUMN cache_write_tokens bigint NOT NULL DEFAULT 0, "
        "ADD COLUMN output_tokens bigint NOT NULL DEFAULT 0, "
        "ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0, "
        "ADD COLUMN rounds_without_usage bigint NOT NULL DEFAULT 0",
        "ALTER TABLE rounds ADD COLUMN gateway boolean NOT NULL DEFAULT false, "
        "ADD COLUMN input_tokens bigint, ADD COLUMN cached_input_tokens bigint, "
        "ADD COLUMN cache_write_tokens bigint, ADD COLUMN output_tokens bigint, "
        "ADD COLUMN reasoning_tokens bigint, ADD COLUMN raw_usage text",
        _TURNS_TABLE,
        _STARTED_TABLE,
    ),
    5: (_ROLLUP_TABLE, *ROLLUP_BACKFILL),
    6: (_COUNTS_TABLE, COUNTS_BACKFILL, _COUNTS_FUNCTION, *_COUNTS_TRIGGERS),
    7: (_TURN_HISTORY_FUNCTION,),
    # turn_history() returns other columns: it is made again.
    8: (
        "DROP FUNCTION turn_history(bigint, uuid, text)",
        _TURN_HISTORY_FUNCTION,
        _TURN_RECORDED_PROCEDURE,
    ),
    9: (_TRY_TURN_HISTORY_FUNCTION,),
}

# Timestamps are bigint microseconds since the epoch: exact, and cheap to compare.
_SCHEMA: Final[tuple[LiteralString | bytes | sql.Composed, ...]] = (
    """
    CREATE TABLE sessions (
        session_id uuid PRIMARY KEY,
        tenant_id text NOT NULL,
        provider_id text NOT NULL,
        model text NOT NULL,
        initial_tokens bigint NOT NULL,
        state text NOT NULL,
        created_at bigint NOT NULL,
        activated_at bigint,
        closed_at bigint,
        expired_at bigint,
        round_count bigint NOT NULL,
        delta_tokens bigint NOT NULL,
        tokens_saved bigint NOT NULL,
        version bigint NOT NULL,
        ttl_seconds bigint NOT NULL,
        last_activity_at bigint NOT NULL,
        deadline bigint,
        input_tokens bigint NOT NULL DEFAULT 0,
        cached_input_tokens bigint NOT NULL DEFAULT 0,
        cache_write_tokens bigint NOT NULL DEFAULT 0,
        output_tokens bigint NOT NULL DEFAULT 0,
        reasoning_tokens bigint NOT NULL DEFAULT 0,
        rounds_without_usage bigint NOT NULL DEFAULT 0
    )
    """,
    # Lists are per tenant, newest first: every listing index starts with the tenant
    # and ends in the page order.
    "CREATE INDEX sessions_by_tenant ON sessions (tenant_id, created_at DESC, session_id DESC)",
    "CREATE INDEX sessions_by_state "
    "ON sessions (tenant_id, state, created_at DESC, session_id DESC)",
    _STATE_MODEL_INDEX,
    # Only Active sessions have a deadline: a sweep reads just the due ones.
    "CREATE INDEX sessions_by_deadline ON sessions (deadline) WHERE deadline IS NOT NULL",
    # purge_created reads only old Created sessions. Partial, so a change to any other
    # session never writes to it; its query spells the state the same way.
    sql.SQL("CREATE INDEX sessions_created ON sessions (created_at) WHERE state = {}").format(
        sql.Literal(Created.name)
    ),
    """
    CREATE TABLE rounds (
        session_id uuid NOT NULL REFERENCES sessions ON DELETE CASCADE,
        seq bigint NOT NULL,
        delta_tokens bigint NOT NULL,
        recorded_at bigint NOT NULL,
        idempotency_key text,
        -- What a replay of the round gives back (see KeyedRound).
        session_delta_tokens bigint NOT NULL,
        session_version bigint NOT NULL,
        -- A gateway round's usage: NULL counts when its provider sent none.
        gateway boolean NOT NULL DEFAULT false,
        input_tokens bigint,
        cached_input_tokens bigint,
        cache_write_tokens bigint,
        output_tokens bigint,
        reasoning_tokens bigint,
        raw_usage text,
        PRIMARY KEY (session_id, seq),
        UNIQUE (session_id, idempotency_key)
    )
    """,
    _TURNS_TABLE,
    _STARTED_TABLE,
    """
    CREATE TABLE tenants (
        tenant_id text PRIMARY KEY,
        created_at bigint NOT NULL
    )
    """,
    """
    CREATE TABLE api_keys (
        key_id text PRIMARY KEY,
        tenant_id text NOT NULL REFERENCES tenants,
        key_hash bytea NOT NULL,
        created_at bigint NOT NULL,
        revoked_at bigint
    )
    """,
    "CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at)",
    _ROLLUP_TABLE,
    _COUNTS_TABLE,
    _COUNTS_FUNCTION,
    *_COUNTS_TRIGGERS,
    _TURN_HISTORY_FUNCTION,
    _TURN_RECORDED_PROCEDURE,
    _TRY_TURN_HISTORY_FUNCTION,
)

# What _stored_from_row reads: the session, then its usage totals.
_SESSION_ROW: Final = SESSION_COLUMNS + ", " + USAGE_COLUMNS

_INSERT_SESSION: Final = (
    "INSERT INTO sessions ("
    + INSERT_COLUMNS
    + ", "
    + USAGE_COLUMNS
    + ") VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
    "%s, %s, %s, %s, %s, %s)"
)

_INSERT_STARTED: Final = (
    "INSERT INTO started_sessions (tenant_id, idempotency_key, session_id) VALUES (%s, %s, %s)"
)

# The amounts of a write's part of the rollup (as _ROLL_SELECT's), then the starts
# of its hour and its day.
_AMOUNTS_ROW: Final = (
    "(%s::bigint, %s::numeric, %s::numeric, %s::numeric, %s::numeric, %s::numeric, "
    "%s::numeric, %s::numeric, %s::bigint, %s::bigint, %s::bigint, %s::bigint)"
)


@cache
def _start(with_key: bool, with_turn: bool) -> bytes:
    """The one statement that stores a session the gateway starts: the key that
    started it (``with_key``), the session, its first round, the round's turn
    (``with_turn``), and the rollup's part of the session and of the round.

    Its values: the key's (tenant, key, session id), _INSERT_SESSION's, the round's
    (round_values, round_usage_values), the turn's, then the rollup's tenant,
    group and slot, and an _AMOUNTS_ROW each for the session and for the round.
    One statement is one transaction and one round trip: psycopg costs the client
    about as much for a statement in a pipeline as for one on its own.
    """
    # (A key that started another session fails the statement: nothing is written.)
    started: LiteralString = "started AS (" + _INSERT_STARTED + "), " if with_key else ""
    turned: LiteralString = (
        ", turned AS (INSERT INTO turns (session_id, seq, "
        + TURN_COLUMNS
        + ") SELECT session_id, seq, %s, %s, %s, %s, %s, %s, %s, %s FROM added)"
        if with_turn
        else ""
    )
    statement: LiteralString = (
        "WITH "
        + started
        + "inserted AS ("
        + _INSERT_SESSION
        + " RETURNING session_id), added AS ("
        + _INSERT_GATEWAY_ROUND
        + "inserted"
        + " RETURNING session_id, seq)"
        + turned
        # The rollup's rows after the inserts it reads from, and before the
        # session's counters (its insert's trigger, at the statement's end): the
        # order a round's statement takes them in, so a start and a round of one
        # group and slot never deadlock. One upsert changes a row once: the
        # session's and the round's amounts are summed per bucket.
        + " INSERT INTO usage_rollup (tenant_id, provider_id, model, slot, "
        + _ROLLUP_COLUMNS
        + ", span, start) SELECT %s::text, %s::text, %s::text, %s::smallint, "
        "sum(a.rounds), sum(a.delta_tokens), sum(a.tokens_saved), sum(a.input_tokens), "
        "sum(a.cached_input_tokens), sum(a.cache_write_tokens), sum(a.output_tokens), "
        "sum(a.reasoning_tokens), sum(a.rounds_without_usage), sum(a.sessions_started), "
        "b.span, b.start FROM added CROSS JOIN (VALUES "
        + _AMOUNTS_ROW
        + ", "
        + _AMOUNTS_ROW
        + ") AS a(rounds, delta_tokens, tokens_saved, input_tokens, cached_input_tokens, "
        "cache_write_tokens, output_tokens, reasoning_tokens, rounds_without_usage, "
        "sessions_started, hour, day) "
        "CROSS JOIN LATERAL (VALUES (3600, a.hour), (86400, a.day)) AS b(span, start) "
        # Hour, then day, as a round's VALUES: the aggregate's own order (a hash
        # table's) was either, and the other one deadlocked with a round.
        "GROUP BY b.span, b.start ORDER BY b.span" + _ROLLUP_CONFLICT
    )
    return _numbered(statement)


_SELECT_STARTED: Final = (
    "SELECT session_id FROM started_sessions WHERE tenant_id = %s AND idempotency_key = %s"
)

_SELECT_TURNS: Final = "SELECT " + TURN_COLUMNS + " FROM turns WHERE session_id = %s ORDER BY seq"

_SELECT_TURN: Final = "SELECT " + TURN_COLUMNS + " FROM turns WHERE session_id = %s AND seq = %s"

_SELECT_SESSION: Final = (
    "SELECT " + _SESSION_ROW + " FROM sessions WHERE session_id = %s AND tenant_id = %s"
)

_LOCK_SESSION: Final = _SELECT_SESSION + " FOR UPDATE"

_SELECT_VERSION: Final = "SELECT version FROM sessions WHERE session_id = %s AND tenant_id = %s"

# A new session and its part of the rollup, in one statement.
_INSERT_SESSION_ROLLED: Final = (
    "WITH inserted AS ("
    + _INSERT_SESSION
    + " RETURNING 1) "
    + _ROLL_SELECT
    + "inserted"
    + _ROLL_TAIL
)

# The round is inserted only if the compare-and-set matched: both or neither, and
# its part of the rollup with it. The statement's rowcount is the rollup's: 2 (its
# hour and its day) if the round went in, else 0.
_UPDATE_SESSION_AND_INSERT_ROUND: Final = (
    "WITH changed AS (" + _UPDATE_SESSION + " RETURNING session_id), added AS ("
    "INSERT INTO rounds (session_id, seq, delta_tokens, recorded_at, idempotency_key, "
    "session_delta_tokens, session_version) SELECT session_id, %s, %s, %s, %s, %s, %s FROM changed "
    "RETURNING 1) " + _ROLL_SELECT + "added" + _ROLL_TAIL
)

# A session leaving Active loses its conversation in the same statement. The
# DELETE runs whether or not the final SELECT reads it; it finds nothing unless
# the update matched.
_END_SESSION: Final = (
    "WITH changed AS (" + _UPDATE_SESSION + " RETURNING session_id), "
    "gone AS (DELETE FROM turns t USING changed c WHERE t.session_id = c.session_id) "
    "SELECT session_id FROM changed"
)

_UPDATE_SESSION_AND_INSERT_GATEWAY_ROUND: Final = (
    "WITH changed AS ("
    + _UPDATE_SESSION
    + " RETURNING session_id), added AS ("
    + _INSERT_GATEWAY_ROUND
    + "changed"
    + " RETURNING 1) "
    + _ROLL_SELECT
    + "added"
    + _ROLL_TAIL
)

#: The columns _round_from_row reads, in its order.
_ROUND_ROW: Final = "seq, delta_tokens, recorded_at, idempotency_key, " + ROUND_USAGE_COLUMNS

_FIND_ROUND: Final = (
    "SELECT " + _ROUND_ROW + ", session_delta_tokens, session_version FROM rounds "
    "WHERE session_id = %s AND idempotency_key = %s"
)

_CLAIM_DUE: Final = (
    "SELECT " + _SESSION_ROW + " FROM sessions WHERE deadline <= %s "
    "ORDER BY deadline LIMIT %s FOR UPDATE SKIP LOCKED"
)

# Binary parameters: text arrays would be quoted element by element in Python.
_BULK_UPDATE: Final = (
    "UPDATE sessions AS s SET state = v.state, activated_at = v.activated_at, "
    "closed_at = v.closed_at, expired_at = v.expired_at, round_count = v.round_count, "
    "delta_tokens = v.delta_tokens, tokens_saved = v.tokens_saved, version = v.version, "
    "last_activity_at = v.last_activity_at, deadline = v.deadline "
    "FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bigint[], %b::bigint[], "
    "%b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], %b::bigint[], "
    "%b::bigint[]) AS v(session_id, old_version, state, activated_at, closed_at, expired_at, "
    "round_count, delta_tokens, tokens_saved, version, last_activity_at, deadline) "
    "WHERE s.session_id = v.session_id AND s.version = v.old_version RETURNING s.session_id"
)

# Expiry ends the conversation of the sessions it expired, in the same statement.
_BULK_EXPIRE: Final = (
    "WITH expired AS (" + _BULK_UPDATE + "), "
    "gone AS (DELETE FROM turns t USING expired e WHERE t.session_id = e.session_id) "
    "SELECT count(*) FROM expired"
)

# The claim is materialized: as an IN (subquery), the planner may rescan it once
# per candidate row (a nested-loop semi join), and each rescan claims anew, so
# more than ``limit`` sessions were deleted.
_PURGE: Final = sql.SQL(
    "WITH doomed AS MATERIALIZED ("
    "SELECT session_id FROM sessions WHERE state = {created} AND created_at <= %s "
    "ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED) "
    "DELETE FROM sessions s USING doomed d "
    "WHERE s.session_id = d.session_id AND s.state = {created}"
).format(created=sql.Literal(Created.name))
# One tenant's, claimed the same way: found through sessions_by_state.
_PURGE_TENANT: Final = sql.SQL(
    "WITH doomed AS MATERIALIZED ("
    "SELECT session_id FROM sessions WHERE tenant_id = %s AND state = {created} "
    "AND created_at <= %s ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED) "
    "DELETE FROM sessions s USING doomed d "
    "WHERE s.session_id = d.session_id AND s.state = {created}"
).format(created=sql.Literal(Created.name))

# Sweeps take turns, and so do purges: each writes the counters of many groups
# and slots (see _COUNTS_FUNCTION), in no set order, so two at once could each
# hold a row the other waits for. Per schema; held until the transaction ends.
_SWEEP_LOCK: Final = (
    "SELECT pg_advisory_xact_lock(hashtext('llmsession.sweep.' || current_schema()))"
)
_PURGE_LOCK: Final = (
    "SELECT pg_advisory_xact_lock(hashtext('llmsession.purge.' || current_schema()))"
)

# A tenant's due sessions, through the deadline index: what is due and not yet swept.
_SELECT_DUE: Final = (
    "SELECT " + _SESSION_ROW + " FROM sessions WHERE deadline <= %s AND tenant_id = %s"
)

_LIST_ROUNDS: Final = (
    "SELECT r.seq, r.delta_tokens, r.recorded_at, r.idempotency_key, r.gateway, "
    "r.input_tokens, r.cached_input_tokens, r.cache_write_tokens, r.output_tokens, "
    "r.reasoning_tokens, r.raw_usage FROM sessions s "
    "LEFT JOIN rounds r ON r.session_id = s.session_id AND r.seq > %s "
    "WHERE s.session_id = %s AND s.tenant_id = %s ORDER BY r.seq LIMIT %s"
)

_KEY_COLUMNS: Final = "key_id, tenant_id, key_hash, created_at, revoked_at"


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """The store's own URL parameters, and the URL libpq gets without them."""

    conninfo: str
    pool_min: int = 1
    pool_max: int = 10
    pool_timeout: float = 30.0
    session_cache: int = 10_000
    turn_pool_max: int = 10
    #: libpq's own parameter: it stays in ``conninfo`` when the URL gives it.
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT

    @classmethod
    def from_url(cls, url: str) -> PostgresOptions:
        """Split ``url`` into libpq's URL and the store's options; InvalidInput if one is bad."""
        parts = urlsplit(url)
        slashes = url.partition(":")[2].startswith("//")
        if parts.scheme not in ("postgresql", "postgres") or not slashes:
            raise InvalidInput(
                f"a PostgreSQL store URL starts with postgresql:// or postgres://, got {url!r}"
            )
        ours: dict[str, str] = {}
        kept: list[str] = []
        # Split by hand, not parse_qsl + urlencode, so what libpq gets is byte for byte
        # what the caller wrote.
        for item in parts.query.split("&") if parts.query else []:
            name = unquote(item.split("=", 1)[0])
            if name in _OPTION_NAMES or name == "connect_timeout":
                pairs = parse_qsl(item, keep_blank_values=True)
                ours[name] = pairs[0][1] if pairs else ""
            if name not in _OPTION_NAMES:
                kept.append(item)
        # Written out, not by urlunsplit, which drops the "//" of an empty host
        # ("postgresql:///db", libpq's local socket).
        conninfo = f"{parts.scheme}://{parts.netloc}{parts.path}"
        if kept:
            conninfo += "?" + "&".join(kept)
        if parts.fragment:
            conninfo += "#" + parts.fragment
        try:
            # libpq's own parse: an option it does not know is a bad URL, not a
            # connection that failed.
            conninfo_to_dict(conninfo)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except (psycopg.ProgrammingError, ValueError) as error:
            said = str(error).strip()
            if parts.password:
                # libpq quotes the token it could not read, which may be the password.
                for secret in {parts.password, unquote(parts.password)}:
                    said = said.replace(secret, "***")
            raise InvalidInput(f"invalid PostgreSQL URL {_safe_url(conninfo)}: {said}") from None
        pool_min = _int_option(ours, "pool_min", 1, minimum=0, maximum=1000)
        pool_max = _int_option(ours, "pool_max", 10, minimum=1, maximum=1000)
        if pool_min > pool_max:
            raise InvalidInput(f"pool_min ({pool_min}) must not be more than pool_max ({pool_max})")
        return cls(
            conninfo,
            pool_min,
            pool_max,
            _seconds_option(ours, "pool_timeout", 30.0),
            _int_option(ours, "session_cache", 10_000, minimum=0, maximum=10_000_000),
            _int_option(ours, "turn_pool_max", 10, minimum=1, maximum=1000),
            _int_option(ours, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, minimum=1, maximum=3600),
        )


_OPTION_NAMES: Final = frozenset(
    {"pool_min", "pool_max", "pool_timeout", "session_cache", "turn_pool_max"}
)


def _int_option(
    options: dict[str, str], name: str, default: int, *, minimum: int, maximum: int
) -> int:
    text = options.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not minimum <= value <= maximum:
        raise InvalidInput(
            f"URL parameter {name} must be a whole number from {minimum} to {maximum}, got {text!r}"
        )
    return value


def _seconds_option(options: dict[str, str], name: str, default: float) -> float:
    text = options.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 3600:
        raise InvalidInput(
            f"URL parameter {name} must be a number of seconds above 0 and at most 3600, "
            f"got {text!r}"
        )
    return value


class _PostgresTransaction(SessionTransaction):
    """One change's session on a pooled connection; ``committed`` once its write went in."""

    def __init__(self, recent: RecentSessions, conn: _Connection, stored: StoredSession) -> None:
        self._recent = recent
        self._conn = conn
        self.stored = stored
        self.committed = False

    async def find_round(self, idempotency_key: str) -> KeyedRound | None:
        session_id = self.stored.record.session_id
        cur = await self._conn.execute(_FIND_ROUND, (session_id.value, idempotency_key))
        row = await cur.fetchone()
        return None if row is None else _keyed_from_row(session_id, row)

    def _written(self, new: StoredSession) -> None:
        self.committed = True
        self._recent.remember(new)


class _LockedTransaction(_PostgresTransaction):
    """The session row locked by SELECT ... FOR UPDATE in an open transaction."""

    async def commit(self, new: StoredSession, new_round: Round | None) -> None:
        # The write and COMMIT go out together: one round trip.
        async with self._conn.pipeline():
            cur = await _execute_write(self._conn, new, self.stored.version, new_round)
            await self._conn.execute("COMMIT")
        if cur.rowcount == 0:
            # Nothing was written (the round insert depends on the update).
            raise VersionConflict
        self._written(new)


class _OptimisticTransaction(_PostgresTransaction):
    """The session as last seen, unlocked: the single write statement checks the version.

    On the connection of the session's gateway turn (``held``), the turn's round
    also gives the turn's lock back.
    """

    def __init__(
        self,
        recent: RecentSessions,
        conn: _Connection,
        stored: StoredSession,
        held: _HeldTurn | None = None,
    ) -> None:
        super().__init__(recent, conn, stored)
        self._held = held

    async def commit(self, new: StoredSession, new_round: Round | None) -> None:
        held = self._held
        if held is not None and new_round is not None and new_round.turn is not None:
            written = await _record_turn_and_release(
                self._conn, new, self.stored.version, new_round, held.key
            )
            held.released = written > 0
        else:
            cur = await _execute_write(self._conn, new, self.stored.version, new_round)
            written = cur.rowcount
        if written == 0:
            self._recent.forget(new.record.session_id)
            raise VersionConflict
        self._written(new)


class PostgresStore(TransactionalStore):
    """Sessions in PostgreSQL tables; safe for many processes on one database."""

    def __init__(
        self,
        pool: AsyncConnectionPool[_Connection],
        turn_pool: AsyncConnectionPool[_Connection],
        lock_connections: LockConnections,
        *,
        clock: Clock = system_clock,
        default_ttl_seconds: int = DEFAULT_TTL_SECONDS,
        session_cache: int = 10_000,
    ) -> None:
        """Wrap open pools whose schema is ready; use :meth:`open` instead.

        Gateway turns hold their locks on ``lock_connections``, and wait for a lock
        another process holds on a connection of ``turn_pool`` (see :meth:`turn_lock`).
        """
        super().__init__(clock=clock, default_ttl_seconds=default_ttl_seconds)
        self._pool = pool
        self._turn_pool = turn_pool
        self._lock_connections = lock_connections
        self._recent = RecentSessions(session_cache)
        self._turns = SessionTurns()
        # Not self._turns: a gateway turn holds its place for seconds, and records
        # its round (a writer's turn) inside it.
        self._gateway_turns = SessionTurns()
        self._groups = SessionGroups(partial(TransactionalStore._run_change, self), self._run_group)
        # The connections of the gateway turns this process holds, by session id.
        self._held: dict[UUID, _HeldTurn] = {}
        # When each pooled connection was last given back (see _pooled).
        self._idle_since: weakref.WeakKeyDictionary[_Connection, float] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Clock = system_clock,
        default_ttl_seconds: int = DEFAULT_TTL_SECONDS,
    ) -> PostgresStore:
        """Connect to ``url``, create or check the schema, and return the store.

        StoreError if the server cannot be reached; SchemaVersionError if the
        schema was made by a newer llmsession.
        """
        options = PostgresOptions.from_url(url)
        # Autocommit: transactions are opened explicitly, only where a change needs one.
        # prepare_threshold=0: every statement is prepared on first use per connection.
        connection_kwargs: dict[str, Any] = {
            "autocommit": True,
            "prepare_threshold": 0,
            "connect_timeout": options.connect_timeout,
        }
        # One connection first: the pool would retry an unreachable server until
        # pool_timeout, logging a warning each time, before saying what went wrong.
        try:
            probe = await psycopg.AsyncConnection.connect(
                options.conninfo, connect_timeout=options.connect_timeout
            )
        except psycopg.Error as error:
            raise StoreError(_cannot_connect(options, error)) from error
        await probe.close()
        pool: AsyncConnectionPool[_Connection] = AsyncConnectionPool(
            options.conninfo,
            kwargs=connection_kwargs,
            min_size=options.pool_min,
            max_size=options.pool_max,
            timeout=options.pool_timeout,
            open=False,
            name="llmsession",
        )
        # A gateway turn holds its lock for as long as the provider takes, and
        # records its round inside: on connections of the main pool, turns could
        # take every one and wait forever for one more. None is opened until the
        # gateway is used.
        lock_connections = LockConnections(
            partial(psycopg.AsyncConnection.connect, options.conninfo, **connection_kwargs),
            options.turn_pool_max,
        )
        turn_pool: AsyncConnectionPool[_Connection] = AsyncConnectionPool(
            options.conninfo,
            kwargs=connection_kwargs,
            min_size=0,
            max_size=options.turn_pool_max,
            timeout=options.pool_timeout,
            open=False,
            name="llmsession-turns",
        )
        try:
            try:
                await pool.open(wait=True, timeout=options.pool_timeout)
                await turn_pool.open()
            except psycopg.Error as error:
                raise StoreError(_cannot_connect(options, error)) from error
            store = cls(
                pool,
                turn_pool,
                lock_connections,
                clock=clock,
                default_ttl_seconds=default_ttl_seconds,
                session_cache=options.session_cache,
            )
            await store._ensure_schema()
        except BaseException:
            await pool.close()
            await turn_pool.close()
            await lock_connections.aclose()
            raise
        return store

    async def _ensure_schema(self) -> None:
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT current_schema()")
            row = await cur.fetchone()
            schema: str | None = row[0] if row is not None else None
            if schema is None:
                raise StoreError(
                    "PostgreSQL has no schema to create llmsession's tables in: the "
                    "search_path names no existing schema; create the schema or fix the "
                    "search_path (e.g. ?options=-csearch_path%3Dmyschema in the URL)"
                )
            # Processes opening a fresh schema at once take turns; the lock ends with
            # this transaction.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"llmsession.schema.{schema}",)
            )
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer)")
            cur = await conn.execute("SELECT max(version) FROM schema_version")
            row = await cur.fetchone()
            found: int | None = row[0] if row is not None else None
            if found is None:
                for statement in _SCHEMA:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,)
                )
            elif 1 <= found < SCHEMA_VERSION:
                # Under the same lock: one process upgrades, the others then see it done.
                # The upgrades run in this transaction, which holds writes to the
                # tables they touch until it commits (seconds at a million sessions
                # or rounds).
                for version in range(found + 1, SCHEMA_VERSION + 1):
                    for statement in _UPGRADES[version]:
                        await conn.execute(statement)
                await conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
            elif found > SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"the llmsession tables in PostgreSQL schema {schema!r} are at schema "
                    f"version {found}, newer than version {SCHEMA_VERSION} that this "
                    "llmsession understands; upgrade llmsession, or use another schema"
                )
            elif found != SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"the schema_version table in PostgreSQL schema {schema!r} says "
                    f"{found}, which no llmsession ever wrote (this one writes "
                    f"{SCHEMA_VERSION}); it belongs to something else: use another schema"
                )

    # -- session primitives ------------------------------------------------------

    async def _insert(self, stored: StoredSession, first: Round | None = None) -> None:
        session_values = (
            *insert_values(stored, stored.record.session_id.value),
            *stored.usage.as_tuple(),
        )
        rolled = _roll_params(stored, stored.record.created_at, session_amounts())
        if first is None:
            async with self._connection() as conn:
                await conn.execute(_INSERT_SESSION_ROLLED, (*session_values, *rolled))
            self._recent.remember(stored)
            return
        record = stored.record
        start_key = first.idempotency_key
        keyed = (
            ()
            if start_key is None
            else (record.tenant_id.value, start_key, record.session_id.value)
        )
        turned = () if first.turn is None else turn_values(first.turn)
        round_rolled = _roll_params(stored, first.recorded_at, round_amounts(first, stored))
        params = (
            *keyed,
            *session_values,
            *round_values(first, stored),
            *round_usage_values(first),
            *turned,
            *rolled,
            *round_rolled[4:],
        )
        statement = _start(start_key is not None, first.turn is not None)
        async with self._connection() as conn:
            try:
                await AsyncRawCursor[TupleRow](conn).execute(statement, params)
            except pg_errors.UniqueViolation as error:
                if error.diag.constraint_name != "started_sessions_pkey" or start_key is None:
                    raise
                started = await self._started_on(conn, record.tenant_id, start_key)
                raise ConflictError(
                    f"idempotency key {start_key!r} already started session {started}"
                ) from None
            finally:
                if conn.info.transaction_status in _IN_TRANSACTION:
                    await conn.execute("ROLLBACK")
        self._recent.remember(stored)

    async def _session_turns(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> tuple[StoredSession, list[Turn]]:
        async with self._connection() as conn:
            # Both queries go out together: one round trip.
            async with conn.pipeline():
                sessions = await conn.execute(*_select_session(tenant_id, session_id))
                turns = await conn.execute(*_select_turns(session_id))
            rows = (await sessions.fetchall(), await turns.fetchall())
        return self._session_and_turns(session_id, rows)

    def _session_and_turns(
        self, session_id: SessionId, rows: Sequence[list[TupleRow]]
    ) -> tuple[StoredSession, list[Turn]]:
        """The session (as _get gives it) and its turns, from the rows of
        _select_session and _select_turns; NotFoundError without a session row."""
        sessions, turns = rows
        if not sessions:
            self._recent.forget(session_id)
            raise NotFoundError(f"no session {session_id}")
        stored = _stored_from_row(sessions[0])
        # The round the turn then records is one statement, from this version.
        self._recent.remember(stored)
        return present(stored, self.clock()), [turn_from_row(row) for row in turns]

    async def _history_turns(self, session_id: SessionId) -> list[Turn]:
        async with self._connection() as conn:
            cur = await conn.execute(_SELECT_TURNS, (session_id.value,))
            rows = await cur.fetchall()
        return [turn_from_row(row) for row in rows]

    async def _stored_turn(self, session_id: SessionId, seq: int) -> Turn | None:
        async with self._connection() as conn:
            cur = await conn.execute(_SELECT_TURN, (session_id.value, seq))
            row = await cur.fetchone()
        return None if row is None else turn_from_row(row)

    async def _started_by(self, tenant_id: TenantId, idempotency_key: str) -> SessionId | None:
        async with self._connection() as conn:
            return await self._started_on(conn, tenant_id, idempotency_key)

    async def _started_on(
        self, conn: _Connection, tenant_id: TenantId, idempotency_key: str
    ) -> SessionId | None:
        cur = await conn.execute(_SELECT_STARTED, (tenant_id.value, idempotency_key))
        row = await cur.fetchone()
        return None if row is None else SessionId(row[0])

    async def _keyed_round(
        self, tenant_id: TenantId, session_id: SessionId, idempotency_key: str
    ) -> tuple[StoredSession, KeyedRound] | None:
        async with self._connection() as conn:
            stored = await self._read(conn, tenant_id, session_id)
            cur = await conn.execute(_FIND_ROUND, (session_id.value, idempotency_key))
            row = await cur.fetchone()
        return None if row is None else (stored, _keyed_from_row(session_id, row))

    def turn_lock(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AbstractAsyncContextManager[None]:
        """Hold a session's turn in every process sharing the database.

        Waiters in this process queue here first (in arrival order), so only the
        first asks PostgreSQL, which grants the lock to the processes in the order
        they asked (see :meth:`_hold_turn`). A process that dies releases its locks
        by disconnecting.
        """
        return self._turn_only(session_id)

    @asynccontextmanager
    async def _turn_only(self, session_id: SessionId) -> AsyncGenerator[None]:
        key = _lock_key(session_id)
        async with self._hold_turn(session_id, key, (_TRY_LOCK, _LOCK), (key,)):
            yield

    @asynccontextmanager
    async def _locked_turns(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AsyncGenerator[tuple[StoredSession, Sequence[HistoryTurn]]]:
        # The lock and the reads in one statement, one round trip: the reads run
        # once the lock is granted, so they see every turn before this one.
        key = _lock_key(session_id)
        params = (key, session_id.value, tenant_id.value)
        statements = (_TRY_TURN_HISTORY, _TURN_HISTORY)
        async with self._hold_turn(session_id, key, statements, params) as rows:
            yield self._history_from_rows(session_id, rows)

    def _history_from_rows(
        self, session_id: SessionId, rows: list[TupleRow]
    ) -> tuple[StoredSession, list[TurnItems]]:
        """The session (as _get gives it) and its turns, from the rows of
        turn_history(); NotFoundError without a session row."""
        if not rows:
            self._recent.forget(session_id)
            raise NotFoundError(f"no session {session_id}")
        stored = _stored_from_row(rows[0])
        # The round the turn then records is one statement, from this version.
        self._recent.remember(stored)
        turns = [TurnItems(*row[_TURN_AT:]) for row in rows[1:]]
        return present(stored, self.clock()), turns

    @asynccontextmanager
    async def _hold_turn(
        self,
        session_id: SessionId,
        key: int,
        statements: tuple[LiteralString, LiteralString],
        params: tuple[Any, ...],
    ) -> AsyncGenerator[list[TupleRow]]:
        """Hold the session's turn, taken by ``statements`` (each locks ``key``: the
        first only if it is free, the second waiting for it); the rows of the one
        that took it.

        The turn's lock is taken on a connection shared with other turns (see
        store.lock_connections), at once unless another process holds the turn.
        Only a turn that has to wait for it waits on a connection of its own, from
        the turn pool: a waiting statement holds its connection until it ends.
        """
        async with self._gateway_turns.turn(session_id):
            if self._closed:
                raise StoreError("this store was closed; open a new one")
            # Binary rows: turn_history()'s uuid and bigints decode without parsing text.
            shared, rows = await self._lock_connections.take_lock(statements[0], params, key)
            try:
                if rows is not None:
                    # The session's changes meanwhile (the turn's own round) are
                    # written on this connection, one statement at a time with the
                    # other turns' on it: its round gives the lock back.
                    held = _HeldTurn(shared.conn, key, shared.lock)
                    try:
                        with self._lent(session_id, held):
                            yield rows
                    finally:
                        # After a change still writing on the connection.
                        await self._lock_connections.unlock(
                            shared, key, unless=lambda: held.released
                        )
                    return
            finally:
                self._lock_connections.give_back(shared)
            conn = await self._pooled(self._turn_pool, None)
            try:
                rows = await _advisory(conn, statements[1], params, binary=True)
                held = _HeldTurn(conn, key, asyncio.Lock())
                try:
                    with self._lent(session_id, held):
                        yield rows
                finally:
                    # A change still writing on the connection finishes first.
                    async with held.lock:
                        if not held.released:
                            await _advisory(conn, UNLOCK, (key,))
            finally:
                await self._give_back(self._turn_pool, conn)

    @contextmanager
    def _lent(self, session_id: SessionId, held: _HeldTurn) -> Generator[None]:
        """The session's changes go on ``held``'s connection while this lasts (see
        :meth:`_connection`)."""
        self._held[session_id.value] = held
        try:
            yield
        finally:
            del self._held[session_id.value]

    async def _run_change(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        change: ChangeFn,
        idempotency_key: str | None,
    ) -> Change:
        return await self._groups.submit(tenant_id, session_id, change, idempotency_key)

    async def _run_group(
        self, tenant_id: TenantId, session_id: SessionId, batch: Sequence[PendingChange]
    ) -> list[Change | Exception]:
        async with self._connection(session_id=session_id) as conn:
            try:
                return await self._run_locked_group(conn, tenant_id, session_id, batch)
            except NotFoundError as error:
                return [error] * len(batch)
            except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
                return [VersionConflict() for _ in batch]
            finally:
                if conn.info.transaction_status in _IN_TRANSACTION:
                    await conn.execute("ROLLBACK")

    async def _run_locked_group(
        self,
        conn: _Connection,
        tenant_id: TenantId,
        session_id: SessionId,
        batch: Sequence[PendingChange],
    ) -> list[Change | Exception]:
        tx = await self._lock(conn, tenant_id, session_id)
        stored = tx.stored
        outcomes: list[Change | Exception] = []
        writes: list[tuple[int, StoredSession, AsyncRawCursor[TupleRow]]] = []
        async with conn.pipeline():
            for pending in batch:
                try:
                    # A round found by its key sees the batch's earlier writes: the
                    # lookup waits for what the pipeline sent before it.
                    first = (
                        None
                        if pending.idempotency_key is None
                        else await tx.find_round(pending.idempotency_key)
                    )
                    result = self._compute(pending.change, stored, first)
                except Exception as error:
                    outcomes.append(error)
                    continue
                if result.stored is not stored:
                    cur = await _execute_write(conn, result.stored, stored.version, result.round)
                    writes.append((len(outcomes), result.stored, cur))
                    stored = result.stored
                outcomes.append(result)
            await conn.execute("COMMIT")
        for index, new, cur in writes:
            if cur.rowcount > 0:
                self._recent.remember(new)
            else:
                # Each write expects the version the one before it wrote: from the
                # first refused one on, none went in; those changes are retried.
                outcomes[index] = VersionConflict()
        return outcomes

    @asynccontextmanager
    async def _begin(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AsyncGenerator[SessionTransaction]:
        # Writers of one session in this process take turns before taking a
        # connection, so they never collide with each other: each finds the version
        # its predecessor remembered, and the row lock is left for other processes.
        async with self._turns.turn(session_id), self._connection(session_id=session_id) as conn:
            if self._recent.contended(session_id):
                try:
                    yield await self._lock(conn, tenant_id, session_id)
                except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
                    raise VersionConflict from None
                finally:
                    # Whatever was not committed is rolled back before the connection
                    # is reused.
                    if conn.info.transaction_status in _IN_TRANSACTION:
                        await conn.execute("ROLLBACK")
                return
            # A session this process wrote last needs no read at all: a round is then
            # one statement, one round trip.
            cached = self._recent.get(tenant_id, session_id)
            if cached is None:
                stored = await self._read(conn, tenant_id, session_id)
            else:
                stored = cached
            # The turn's round gives the turn's lock back, unless a turn of the
            # session waits in this process: released only at the turn's end, the
            # lock is not taken meanwhile by another process's turn that came later.
            held = (
                None
                if self._gateway_turns.awaited(session_id)
                else self._held.get(session_id.value)
            )
            tx = _OptimisticTransaction(self._recent, conn, stored, held)
            try:
                yield tx
            except VersionConflict:
                if cached is None:
                    # Even a fresh read lost the race: take the lock while this lasts.
                    self._recent.mark_contended(session_id)
                raise
            except LLMSessionError:
                # The answer came from the remembered session; it only stands if that
                # is still the stored one.
                if not tx.committed and cached is not None:
                    await self._check_current(conn, cached)
                raise
            if not tx.committed and cached is not None:
                await self._check_current(conn, cached)

    async def _lock(
        self, conn: _Connection, tenant_id: TenantId, session_id: SessionId
    ) -> _LockedTransaction:
        # BEGIN and the locking read go out together: one round trip.
        async with conn.pipeline():
            await conn.execute("BEGIN")
            cur = await conn.execute(_LOCK_SESSION, (session_id.value, tenant_id.value))
        row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no session {session_id}")
        return _LockedTransaction(self._recent, conn, _stored_from_row(row))

    async def _check_current(self, conn: _Connection, cached: StoredSession) -> None:
        """VersionConflict (a retry from a fresh read) unless ``cached`` is still stored."""
        record = cached.record
        cur = await conn.execute(_SELECT_VERSION, (record.session_id.value, record.tenant_id.value))
        row = await cur.fetchone()
        if row is None or row[0] != cached.version:
            self._recent.forget(record.session_id)
            raise VersionConflict

    async def _read(
        self, conn: _Connection, tenant_id: TenantId, session_id: SessionId
    ) -> StoredSession:
        cur = await conn.execute(_SELECT_SESSION, (session_id.value, tenant_id.value))
        row = await cur.fetchone()
        if row is None:
            self._recent.forget(session_id)
            raise NotFoundError(f"no session {session_id}")
        stored = _stored_from_row(row)
        self._recent.remember(stored)
        return stored

    async def _get(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """One session as of now: past its deadline, expired (see store.presented)."""
        async with self._connection() as conn:
            stored = await self._read(conn, tenant_id, session_id)
        return present(stored, self.clock())

    async def _list_sessions(self, tenant_id: TenantId, query: SessionQuery) -> Page[StoredSession]:
        """A tenant's sessions as of now, newest first (see store.presented): a due
        Active session is listed as expired, under ``state=expired``, not ``active``."""
        now = self.clock()
        clauses: list[LiteralString] = ["tenant_id = %s"]
        params: list[object] = [tenant_id.value]
        if query.provider_id is not None:
            clauses.append("provider_id = %s")
            params.append(query.provider_id)
        if query.model is not None:
            clauses.append("model = %s")
            params.append(query.model)
        if query.created_after is not None:
            clauses.append("created_at > %s")
            params.append(query.created_after.epoch_micros)
        if query.created_before is not None:
            clauses.append("created_at < %s")
            params.append(query.created_before.epoch_micros)
        if query.cursor is not None:
            after_created, after_id = decode_cursor(query.cursor)
            clauses.append("(created_at, session_id) < (%s, %s)")
            params += [after_created.epoch_micros, after_id.value]
        due_clauses: list[LiteralString] = ["deadline <= %s", *clauses]
        due_params: list[object] = [now.epoch_micros, *params]
        if query.state is not None:
            clauses.append("state = %s")
            params.append(query.state.name)
            if query.state is Active:
                clauses.append("deadline > %s")
                params.append(now.epoch_micros)
        async with self._connection() as conn:
            due: list[TupleRow] = []
            if query.state is SessionExpired:
                # The due sessions, read first: one swept meanwhile is then in both
                # reads. The deadline index finds them, so this costs what is due
                # and not yet swept, not every Active session of the tenant.
                due = await _fetch_page(conn, due_clauses, due_params, query.limit)
            rows = await _fetch_page(conn, clauses, params, query.limit)
        found = newest_first(
            shown_in(map(_stored_from_row, due), now, query),
            shown_in(map(_stored_from_row, rows), now, query),
        )
        items = found[: query.limit]
        cursor = (
            encode_cursor(items[-1].record.created_at, items[-1].record.session_id)
            if len(found) > query.limit
            else None
        )
        return Page(items, cursor)

    async def _list_rounds(
        self, tenant_id: TenantId, session_id: SessionId, after_seq: int, limit: int
    ) -> list[Round]:
        async with self._connection() as conn:
            cur = await conn.execute(
                _LIST_ROUNDS, (after_seq, session_id.value, tenant_id.value, limit)
            )
            rows = await cur.fetchall()
        if not rows:
            raise NotFoundError(f"no session {session_id}")
        return [_round_from_row(session_id, row) for row in rows if row[0] is not None]

    async def _totals(self, tenant_id: TenantId, group_by: Sequence[GroupKey] = ()) -> list[Totals]:
        """Totals as of now: a due Active session counts as expired (see store.presented)."""
        provider: LiteralString = "provider_id" if "provider" in group_by else "NULL::text"
        model: LiteralString = "model" if "model" in group_by else "NULL::text"
        # The counters of every slot, summed; a group whose sessions were all
        # purged keeps its (zero) rows, left out as a count would leave it.
        statement = (
            "SELECT " + provider + ", " + model + ", state, sum(sessions), sum(round_count), "
            "sum(delta_tokens), sum(tokens_saved), sum(input_tokens), sum(cached_input_tokens), "
            "sum(cache_write_tokens), sum(output_tokens), sum(reasoning_tokens), "
            "sum(rounds_without_usage) FROM session_counts WHERE tenant_id = %s "
            "GROUP BY 1, 2, 3 HAVING sum(sessions) > 0"
        )
        now = self.clock()
        async with self._connection() as conn, conn.transaction():
            # One snapshot for the sums and the due sessions moved out of them.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur = await conn.execute(statement, (tenant_id.value,))
            rows = await cur.fetchall()
            cur = await conn.execute(_SELECT_DUE, (now.epoch_micros, tenant_id.value))
            due = await cur.fetchall()
        groups: dict[tuple[str | None, str | None], Totals] = {}
        for provider_id, model_name, state, count, rounds, delta, saved, *usage in rows:
            key: tuple[str | None, str | None] = (provider_id, model_name)
            group = groups.get(key)
            if group is None:
                group = Totals(key[0], key[1], {s.name: 0 for s in ALL_STATES})
            group.sessions[state_named(state).name] += int(count)
            # sum(bigint) is numeric in PostgreSQL: Decimal here, converted exactly.
            groups[key] = Totals(
                group.provider_id,
                group.model,
                group.sessions,
                rounds=group.rounds + int(rounds),
                delta_tokens=group.delta_tokens + int(delta),
                tokens_saved=group.tokens_saved + int(saved),
                usage=UsageTotals(
                    *(
                        total + int(more)
                        for total, more in zip(group.usage.as_tuple(), usage, strict=True)
                    )
                ),
            )
        return present_totals(list(groups.values()), map(_stored_from_row, due), now, group_by)

    async def _timeseries(
        self, tenant_id: TenantId, window: TimeWindow, group_by: Sequence[GroupKey]
    ) -> list[TimeBucket]:
        provider: LiteralString = "provider_id" if "provider" in group_by else "''"
        model: LiteralString = "model" if "model" in group_by else "''"
        statement = (
            "SELECT start, "
            + provider
            + ", "
            + model
            + ", sum(rounds), sum(delta_tokens), sum(tokens_saved), sum(input_tokens), "
            "sum(cached_input_tokens), sum(cache_write_tokens), sum(output_tokens), "
            "sum(reasoning_tokens), sum(rounds_without_usage), sum(sessions_started) "
            "FROM usage_rollup WHERE tenant_id = %s AND span = %s AND start >= %s "
            "AND start < %s GROUP BY 1, 2, 3"
        )
        params = (tenant_id.value, _SPANS[window.bucket], window.first, window.end)
        async with self._connection() as conn:
            cur = await conn.execute(statement, params)
            rows = await cur.fetchall()
        # sum() is numeric: Decimal here, converted exactly.
        return fold(
            ((int(row[0]), row[1], row[2], [int(v) for v in row[3:]]) for row in rows),
            window,
            group_by,
        )

    async def _sweep(self, now: Timestamp, limit: int) -> int:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_SWEEP_LOCK)
            # Binary rows decode faster (uuids, bigints), and a sweep decodes many.
            cur = conn.cursor(binary=True)
            await cur.execute(_CLAIM_DUE, (now.epoch_micros, limit))
            rows = await cur.fetchall()
            if not rows:
                return 0
            # The claimed rows are expired in chunks, each chunk's update sent down
            # the pipeline without waiting: the server writes one chunk while the
            # core expires the next.
            counts: list[psycopg.AsyncCursor[TupleRow]] = []
            expired: list[StoredSession] = []
            async with conn.pipeline():
                for start in range(0, len(rows), _SWEEP_CHUNK):
                    columns: list[list[Any]] = [[] for _ in range(12)]
                    for row in rows[start : start + _SWEEP_CHUNK]:
                        stored = _stored_from_row(row)
                        new = expire_if_due(stored, now)
                        if new is None:
                            continue
                        expired.append(new)
                        values = (new.record.session_id.value, stored.version, *change_values(new))
                        for column, value in zip(columns, values, strict=True):
                            column.append(value)
                    if columns[0]:
                        counts.append(await conn.execute(_BULK_EXPIRE, columns))
            total = 0
            for count in counts:
                counted = await count.fetchone()
                total += 0 if counted is None else int(counted[0])
        for new in expired:
            # Not remember(): a sweep's many sessions would push the ones being
            # served out of the memory.
            self._recent.refresh(new)
        return total

    async def _purge_created(
        self, cutoff: Timestamp, limit: int, tenant_id: TenantId | None
    ) -> int:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_PURGE_LOCK)
            if tenant_id is None:
                cur = await conn.execute(_PURGE, (cutoff.epoch_micros, limit))
            else:
                cur = await conn.execute(
                    _PURGE_TENANT, (tenant_id.value, cutoff.epoch_micros, limit)
                )
            return cur.rowcount

    async def ping(self) -> None:
        # A health check answers soon, even while the pool waits for a server to return.
        async with self._connection(wait=min(self._pool.timeout, _PING_TIMEOUT)) as conn:
            await conn.execute("SELECT 1")

    async def aclose(self) -> None:
        self._closed = True
        await self._pool.close()
        await self._turn_pool.close()
        await self._lock_connections.aclose()

    # -- tenants and API keys ---------------------------------------------------------

    async def _create_tenant(self, tenant_id: TenantId) -> Tenant:
        tenant = Tenant(tenant_id, self.clock())
        async with self._connection() as conn:
            cur = await conn.execute(
                "INSERT INTO tenants (tenant_id, created_at) VALUES (%s, %s) "
                "ON CONFLICT (tenant_id) DO NOTHING",
                (tenant_id.value, tenant.created_at.epoch_micros),
            )
        if cur.rowcount != 1:
            raise ConflictError(f"tenant {tenant_id} already exists")
        return tenant

    async def _get_tenant(self, tenant_id: TenantId) -> Tenant:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT created_at FROM tenants WHERE tenant_id = %s", (tenant_id.value,)
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no tenant {tenant_id}")
        return Tenant(tenant_id, Timestamp(row[0]))

    async def list_tenants(self) -> list[Tenant]:
        async with self._connection() as conn:
            cur = await conn.execute(
                'SELECT tenant_id, created_at FROM tenants ORDER BY tenant_id COLLATE "C"'
            )
            rows = await cur.fetchall()
        return [Tenant(TenantId(row[0]), Timestamp(row[1])) for row in rows]

    async def _add_api_key(self, tenant_id: TenantId, key_id: str, key_hash: bytes) -> ApiKeyInfo:
        await self.get_tenant(tenant_id)
        info = ApiKeyInfo(key_id, tenant_id, key_hash, self.clock())
        async with self._connection() as conn:
            cur = await conn.execute(
                "INSERT INTO api_keys (key_id, tenant_id, key_hash, created_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (key_id) DO NOTHING",
                (key_id, tenant_id.value, key_hash, info.created_at.epoch_micros),
            )
        if cur.rowcount != 1:
            raise ConflictError(f"API key id {key_id!r} already exists")
        return info

    async def get_api_key(self, key_id: str) -> ApiKeyInfo | None:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT " + _KEY_COLUMNS + " FROM api_keys WHERE key_id = %s", (key_id,)
            )
            row = await cur.fetchone()
        return None if row is None else key_from_row(row)

    async def _list_api_keys(self, tenant_id: TenantId) -> list[ApiKeyInfo]:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT " + _KEY_COLUMNS + " FROM api_keys WHERE tenant_id = %s "
                'ORDER BY created_at, key_id COLLATE "C"',
                (tenant_id.value,),
            )
            rows = await cur.fetchall()
        return [key_from_row(row) for row in rows]

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        async with self._connection() as conn:
            # COALESCE keeps the first revocation time: revoking twice changes nothing.
            cur = await conn.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s) WHERE key_id = %s "
                "RETURNING " + _KEY_COLUMNS,
                (self.clock().epoch_micros, key_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFoundError(f"no API key {key_id!r}")
        return key_from_row(row)

    # -- connections ------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(
        self, wait: float | None = None, session_id: SessionId | None = None
    ) -> AsyncGenerator[_Connection]:
        """A pooled connection, waiting up to ``wait`` seconds (the pool timeout if None);
        or, for a change of ``session_id`` while this process holds its gateway turn,
        the turn's connection."""
        if self._closed:
            raise StoreError("this store was closed; open a new one")
        held = None if session_id is None else self._held.get(session_id.value)
        if held is not None:
            # The connection's users go one at a time: the changes of this session
            # (one group at a time anyway, SessionGroups), the turn's unlock after
            # the last of them, and the other turns holding their locks on it.
            async with held.lock:
                try:
                    yield held.conn
                except psycopg.Error as error:
                    raise StoreError(f"PostgreSQL failed: {error}") from error
            # (Its users roll back what they leave open, as they do on a pooled one;
            # a connection they broke fails the unlock, which then closes it.)
            return
        conn = await self._pooled(self._pool, wait)
        try:
            yield conn
        except psycopg.Error as error:
            raise StoreError(f"PostgreSQL failed: {error}") from error
        finally:
            await self._give_back(self._pool, conn)

    async def _pooled(
        self, pool: AsyncConnectionPool[_Connection], wait: float | None
    ) -> _Connection:
        """A connection of ``pool``, waiting up to ``wait`` seconds for each (the pool
        timeout if None); one that has been idle there longer than
        _IDLE_CHECK_SECONDS (or never lent) is checked first, and a dead one is
        given back for the pool to replace and the next taken."""
        for _ in range(pool.max_size):
            try:
                conn = await pool.getconn(wait)
            except psycopg.Error as error:
                raise StoreError(f"no PostgreSQL connection: {error}") from error
            since = self._idle_since.get(conn)
            if since is not None and time.monotonic() - since <= _IDLE_CHECK_SECONDS:
                return conn
            try:
                await conn.execute(_CHECK)
            except BaseException as error:
                await pool.putconn(conn)
                if isinstance(error, psycopg.OperationalError):
                    continue
                if isinstance(error, psycopg.Error):
                    raise StoreError(f"PostgreSQL failed: {error}") from error
                raise
            return conn
        # As many dead ones as the pool holds: whatever comes now, the pool made.
        try:
            return await pool.getconn(wait)
        except psycopg.Error as error:
            raise StoreError(f"no PostgreSQL connection: {error}") from error

    async def _give_back(self, pool: AsyncConnectionPool[_Connection], conn: _Connection) -> None:
        """Return ``conn`` to ``pool``, which rolls back what is left open or replaces
        it if broken."""
        self._idle_since[conn] = time.monotonic()
        await pool.putconn(conn)


class _HeldTurn:
    """The connection holding a gateway turn's advisory lock (``key``), lent to the
    session's changes while the turn lasts, one at a time with its other users
    (``lock``); ``released`` once the turn's round gave the lock back
    (turn_recorded)."""

    __slots__ = ("conn", "key", "lock", "released")

    def __init__(self, conn: _Connection, key: int, lock: asyncio.Lock) -> None:
        self.conn = conn
        self.key = key
        self.lock = lock
        self.released = False


_PING_TIMEOUT: Final = 5.0
# A pooled connection idle this long is checked (_CHECK) before it is lent. The
# server, or what lies between (a proxy, idle_session_timeout, an operator's
# pg_terminate_backend), may have closed it meanwhile, and the first statement on
# it would fail: for a session's start, written only once its provider answered,
# a billed round lost. Idle less, it is lent unchecked, as the check costs a
# round trip.
_IDLE_CHECK_SECONDS: Final = 5.0
_CHECK: Final = "SELECT 1"
# Claimed sessions expired per update statement of a sweep.
_SWEEP_CHUNK: Final = 200
_IN_TRANSACTION: Final = (TransactionStatus.INTRANS, TransactionStatus.INERROR)


async def _fetch_page(
    conn: _Connection, clauses: Sequence[LiteralString], params: Sequence[object], limit: int
) -> list[TupleRow]:
    """The sessions matching ``clauses``, newest first: a page and one row more, which
    tells whether there is a next page."""
    statement = (
        "SELECT "
        + _SESSION_ROW
        + " FROM sessions WHERE "
        + " AND ".join(clauses)
        + " ORDER BY created_at DESC, session_id DESC LIMIT %s"
    )
    cur = await conn.execute(statement, [*params, limit + 1])
    return await cur.fetchall()


def _write(
    new: StoredSession, expected_version: int, new_round: Round | None
) -> tuple[LiteralString, tuple[Any, ...]]:
    """The one statement that writes ``new`` (and its round) if the version is as expected.

    Its rowcount is 0 if the version had moved, more if it wrote (1 for the session
    alone, 2 with a round: its rollup rows).
    """
    params = _change_params(new, expected_version)
    if new_round is None:
        if new.record.state is Active:
            return _UPDATE_SESSION, params
        # Rounds are recorded only on Active sessions: an ending write has none.
        return _END_SESSION, params
    params = (*params, *round_values(new_round, new))
    rolled = _roll_params(new, new_round.recorded_at, round_amounts(new_round, new))
    if not new_round.gateway:
        return _UPDATE_SESSION_AND_INSERT_ROUND, (*params, *rolled)
    params = (*params, *round_usage_values(new_round))
    if new_round.turn is None:
        return _UPDATE_SESSION_AND_INSERT_GATEWAY_ROUND, (*params, *rolled)
    return _UPDATE_SESSION_AND_INSERT_TURN, (*params, *turn_values(new_round.turn), *rolled)


async def _execute_write(
    conn: _Connection, new: StoredSession, expected_version: int, new_round: Round | None
) -> AsyncRawCursor[TupleRow]:
    """Run _write's statement; its cursor tells the rowcount.

    On a raw cursor, with the placeholders numbered once per statement: psycopg
    parses a ``%s`` query again on every execution when it has more than 50
    parameters (a gateway round with its turn has 55), 80 to 120 µs each time.
    """
    statement, params = _write(new, expected_version, new_round)
    return await AsyncRawCursor[TupleRow](conn).execute(_numbered(statement), params)


async def _record_turn_and_release(
    conn: _Connection, new: StoredSession, expected_version: int, new_round: Round, key: int
) -> int:
    """Write a gateway turn's round (as _write's statement), commit it, and give the
    turn's lock ``key`` back if it went in: one CALL of turn_recorded. Its rowcount."""
    statement, params = _write(new, expected_version, new_round)
    if statement is not _UPDATE_SESSION_AND_INSERT_TURN:
        raise AssertionError(f"turn_recorded writes a round with its turn, not {statement}")
    cur = await AsyncRawCursor[TupleRow](conn).execute(_TURN_RECORDED, (*params, key))
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


@cache
def _numbered(statement: LiteralString) -> bytes:
    """``statement`` with its ``%s`` placeholders as ``$1``, ``$2``... (a raw cursor's),
    encoded once."""
    return _dollar_numbered(statement).encode()


def _roll_params(stored: StoredSession, at: Timestamp, amounts: Amounts) -> tuple[Any, ...]:
    """The values of _ROLL_SELECT and _ROLL_TAIL: ``stored``'s tenant, group and slot,
    ``amounts``, and the starts of the hour and the day of ``at``."""
    record = stored.record
    return (
        record.tenant_id.value,
        record.provider_id,
        record.model,
        record.session_id.value.int % _SLOTS,
        *amounts,
        *bucket_starts(at),
    )


def _change_params(stored: StoredSession, expected_version: int) -> tuple[Any, ...]:
    """The values of _UPDATE_SESSION: what changed, then the session id and expected version."""
    return (
        *change_values(stored),
        *stored.usage.as_tuple(),
        stored.record.session_id.value,
        expected_version,
    )


def _stored_from_row(row: TupleRow) -> StoredSession:
    """A StoredSession from a row of _SESSION_ROW."""
    return stored_from_row(row, SessionId(row[0]), usage_totals_from_row(row, 15))


def _round_from_row(session_id: SessionId, row: TupleRow) -> Round:
    """A Round from a row of _ROUND_ROW."""
    gateway, usage = usage_from_round_row(row, 4)
    return Round(session_id, int(row[0]), int(row[1]), Timestamp(row[2]), row[3], usage, gateway)


# Where _FIND_ROUND's session_delta_tokens and session_version follow _ROUND_ROW.
_KEYED_AT: Final = len(_ROUND_ROW.split(","))


def _keyed_from_row(session_id: SessionId, row: TupleRow) -> KeyedRound:
    """A KeyedRound from a row of _FIND_ROUND."""
    return KeyedRound(
        _round_from_row(session_id, row), int(row[_KEYED_AT]), int(row[_KEYED_AT + 1])
    )


async def _advisory(
    conn: _Connection, statement: LiteralString, params: tuple[Any, ...], *, binary: bool = False
) -> list[TupleRow]:
    """Run a statement that takes or releases an advisory lock on a turn-pool
    connection (which holds no other lock), and return its rows.

    Whether the lock is held is unknown if the statement fails or is cancelled: a
    cancelled wait may have been granted just before the cancel arrived. A
    cancelled statement is ended in the server (psycopg cancels it), and then every
    advisory lock of the connection is given back, so that it goes back to the pool
    holding none. Otherwise the connection is closed: a closed one holds none, and
    the pool replaces it.
    """
    try:
        cur = await conn.cursor(binary=binary).execute(statement, params)
        return await cur.fetchall()
    except asyncio.CancelledError:
        await _unlock_all_or_close(conn)
        raise
    except BaseException as error:
        await conn.close()
        if isinstance(error, psycopg.Error):
            raise StoreError(f"PostgreSQL failed: {error}") from error
        raise


async def _unlock_all_or_close(conn: _Connection) -> None:
    """Give back every advisory lock ``conn`` holds, or close it if that cannot be
    done (a closed connection holds none)."""
    if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
        try:
            await conn.execute("SELECT pg_advisory_unlock_all()")
            return
        except psycopg.Error:
            # Closed below: the cancellation being handled is what the caller sees.
            pass
        except BaseException:
            await conn.close()
            raise
    await conn.close()


_LOCK: Final = "SELECT pg_advisory_lock(%s::bigint)"
_TURN_HISTORY: Final = "SELECT * FROM turn_history(%s::bigint, %s::uuid, %s::text)"
# These two take the lock only if it is free; else their one row starts with NULL.
_TRY_LOCK: Final = "SELECT CASE WHEN pg_try_advisory_lock(%s::bigint) THEN 1 END"
_TRY_TURN_HISTORY: Final = "SELECT * FROM try_turn_history(%s::bigint, %s::uuid, %s::text)"
# Each value cast to its parameter's type: psycopg sends an int as the smallest
# integer type that holds it. On a raw cursor, as _execute_write's statements.
_TURN_RECORDED: Final = (
    "CALL turn_recorded("
    + "".join(f"${number}::{kind}, " for number, kind in enumerate(_TURN_RECORDED_TYPES, 1))
    + f"${len(_TURN_RECORDED_TYPES) + 1}::bigint, NULL)"
).encode()


_Query = tuple[LiteralString, tuple[Any, ...]]


def _select_session(tenant_id: TenantId, session_id: SessionId) -> _Query:
    return _SELECT_SESSION, (session_id.value, tenant_id.value)


def _select_turns(session_id: SessionId) -> _Query:
    return _SELECT_TURNS, (session_id.value,)


def _lock_key(session_id: SessionId) -> int:
    """The advisory lock key of a session's turn: its 128 bits folded into a signed bigint."""
    value = session_id.value.int
    folded = (value >> 64) ^ (value & 0xFFFF_FFFF_FFFF_FFFF)
    return folded - (1 << 64) if folded >= 1 << 63 else folded


def _cannot_connect(options: PostgresOptions, error: psycopg.Error) -> str:
    """One line: where the store tried to connect (no password), why it failed, what to check."""
    # libpq's messages run over several lines ("...failed: Connection refused\n\tIs the
    # server running...?"); an error is one line.
    text = str(error).removeprefix("connection failed: ")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = " ".join(line if line[-1] in ".?!" else f"{line}." for line in lines)
    return (
        f"cannot connect to PostgreSQL at {_safe_url(options.conninfo)} "
        f"(connect_timeout={options.connect_timeout} s): {detail} "
        "Check the URL's host, port, user and database, and that PostgreSQL is running there."
    )


def _safe_url(conninfo: str) -> str:
    """The URL without its password, for error messages."""
    parts = urlsplit(conninfo)
    if parts.password is None:
        return conninfo
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
