"""RedisStore: sessions in one Redis server, shared by many service replicas.

Every write to a session is one Lua script, a compare-and-set on the session's
``version`` (:data:`llmsession.store.redis_schema.CAS`): the store base computes
the next record with the core in Python; the script only checks the version and
writes what it is given. A lost compare-and-set raises VersionConflict and the
base retries from a fresh read. Sweepers on many replicas race through the same
script, so each due session is expired exactly once. Writes to different
sessions that arrive while a script call is in flight go together in the next
call, each still checked against its own version.

URL: ``redis://[user:password@]host:port/db`` (or ``rediss://``) with options

- ``prefix``: put before every key the store writes (default ``llmsession:``);
- ``wait_replicas``: after each write, ``WAIT`` until this many replicas have it
  (default 0: do not wait), up to ``wait_timeout_ms`` (default 1000);
- anything else redis-py takes, e.g. ``max_connections``, ``socket_timeout`` or
  ``socket_connect_timeout`` (seconds to wait for a connection; redis-py's default 5).

What survives a crash is decided by the server's configuration; see
docs/redis.md. :meth:`RedisStore.open` logs a warning when that configuration
can lose acknowledged rounds, once per process and server. Redis Cluster is not
supported: a write touches keys in many hash slots.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import math
import random
import re
import secrets
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Mapping,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, replace
from types import TracebackType
from typing import ClassVar, Final, Protocol, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import parse_url
from redis.client import NEVER_DECODE
from redis.exceptions import NoScriptError, RedisError, ResponseError

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
from llmsession.states import ALL_STATES, Created, SessionExpired
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
    Totals,
    Turn,
    TurnItems,
    UsageTotals,
)
from llmsession.store.presented import newest_first, present, present_totals, shown_in
from llmsession.store.recent import RecentSessions
from llmsession.store.redis_schema import (
    ADD_KEY,
    CAS,
    EXTEND_LOCK,
    FIELDS,
    LIST_STATE,
    READ,
    READ_RANGE,
    RELEASE_LOCK,
    SCHEMA_VERSION,
    SET_SCHEMA,
    TAKE_TURN,
    UPGRADE_DUE,
    UPGRADE_KEYED,
    UPGRADE_LISTED,
    USAGE_METRICS,
    CasBatch,
    RedisKeys,
    Script,
    group_head,
    group_tail,
    keyed_round_json,
    lex_time,
    member,
    member_id,
    parse_counters,
    parse_keyed_round,
    parse_rollup,
    parse_round,
    parse_session,
    parse_session_values,
    parse_time,
    parse_turn,
    parse_turn_items,
    rollup_fields,
    rollup_keys,
    split_row,
    state_metric,
)
from llmsession.store.rollup import TimeWindow, fold, hour_of, round_amounts, session_amounts
from llmsession.store.session_groups import PendingChange, SessionGroups
from llmsession.timestamps import Timestamp

__all__ = ["DEFAULT_PREFIX", "SCHEMA_VERSION", "RedisStore", "durability_warnings"]

DEFAULT_PREFIX: Final = "llmsession:"
_DEFAULT_WAIT_TIMEOUT_MS: Final = 1000
# A sweep that lost entries to a racing sweeper reads on for more, in at most this
# many passes, so it still returns when others keep winning.
_SWEEP_PASSES: Final = 8
# A sweep reads and writes in chunks of this many sessions, so that Redis works on
# one chunk while this process computes the next.
_SWEEP_CHUNK: Final = 250
# Reads finding the due sessions (totals, listings of expired ones) take this many
# members of deadlines per call.
_DUE_CHUNK: Final = 1000
# The writer's connection, idle this long, is checked with a PING before a write.
_WRITER_IDLE_SECONDS: Final = 5.0
_DURABILITY_SETTINGS: Final = ("appendonly", "appendfsync", "save", "maxmemory-policy")
# What CAS answers for a write: written; or not, because the key that starts a
# session through the gateway has started one already (else 0: version moved).
_WRITTEN: Final = 1
_START_KEY_USED: Final = 2
# A session's turn lock (turn_lock) lapses this long after its holder last renewed
# it, so a crashed holder keeps the session waiting at most this long. The
# holder renews it every _TURN_RENEW_SECONDS; waiters poll with a backoff from
# _TURN_POLL_FIRST to _TURN_POLL_MAX seconds.
_TURN_LEASE_MS: Final = 10_000
# Options of a command whose reply redis-py leaves as bytes (a turn, and its body).
_RAW_REPLY: Final[dict[str, object]] = {NEVER_DECODE: []}
_TURN_RENEW_SECONDS: Final = 3.0
_TURN_POLL_FIRST: Final = 0.002
_TURN_POLL_MAX: Final = 0.05
# The largest list index Redis takes.
_MAX_INDEX: Final = 2**63 - 1

_log = logging.getLogger(__name__)

_Call = tuple[Script, Sequence[str], Sequence[str | bytes]]


class _Admin(Protocol):
    # The redis-py commands whose stubs leave **kwargs untyped, declared with
    # the arguments this module passes, so strict type checking stays on.
    def ping(self) -> Awaitable[object]: ...

    def config_get(self, pattern: str, *args: str) -> Awaitable[dict[str | None, str | None]]: ...

    def scan_iter(self, match: str, count: int) -> AsyncIterator[object]: ...

    def execute_command(self, *args: str, **options: object) -> Awaitable[object]: ...


class _Waiter(Protocol):
    def wait(self, num_replicas: int, timeout: int) -> object: ...

    def execute_command(self, *args: str, **options: object) -> object: ...


def _admin(client: aioredis.Redis) -> _Admin:
    return client


def _waiter(pipe: Pipeline) -> _Waiter:
    return pipe


@dataclass(frozen=True, slots=True)
class _Options:
    """What a store URL says: the URL left for redis-py, and the store's own options."""

    client_url: str
    prefix: str
    where: str
    wait_replicas: int
    wait_timeout_ms: int


class _HeldTurn:
    """A session's turn lock held by this process (RedisStore._turn): its key, its
    holder's token, and whether the write of the turn's round gave it back."""

    __slots__ = ("name", "released", "token")

    def __init__(self, name: str, token: str) -> None:
        self.name = name
        self.token = token
        self.released = False


# A turn's lock waiting for the store's next TAKE_TURN call (see RedisStore._set_lock):
# the lock, its holder's token, the session read under it.
_Take = tuple[str, str, SessionId]

# One compare-and-set waiting for the store's next script call (see RedisStore._cas):
# old, new, the new round, an idempotency key that must still be unused, the turn
# whose lock the write gives back.
_Write = tuple[
    StoredSession | None, StoredSession | None, Round | None, str | None, _HeldTurn | None
]


class RedisStore(SessionStore):
    """Sessions in Redis; open one with :meth:`open` (or ``open_store("redis://...")``)."""

    #: A sweep writes in chunks of 250, each its own script call, and holds
    #: nothing between them; what a call costs beyond its chunks (Redis idle
    #: while the first is computed, this process idle while the last is written)
    #: was an eighth of a 1,000-session call.
    sweep_batch: ClassVar[int] = 10_000

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock = system_clock,
        default_ttl_seconds: int = DEFAULT_TTL_SECONDS,
        where: str = "Redis",
        wait_replicas: int = 0,
        wait_timeout_ms: int = _DEFAULT_WAIT_TIMEOUT_MS,
        session_cache: int = 10_000,
    ) -> None:
        """Wrap a client; prefer :meth:`open`, which also checks the schema and the server.

        ``session_cache``: how many sessions' last seen versions to keep, so a
        change starts without reading the session (0: always read first).
        """
        super().__init__(clock=clock, default_ttl_seconds=default_ttl_seconds)
        self._client = client
        # The single writes (_cas_batch) go one call at a time (GroupCommit), so
        # they keep one connection of the pool for themselves: checking a
        # connection out of redis-py's pool and back costs about as much client
        # CPU as the rest of a round's call.
        self._writer = aioredis.Redis(
            connection_pool=client.connection_pool, single_connection_client=True
        )
        self._writer_used = -math.inf
        # The same for the calls that take turns' locks (TAKE_TURN): one at a
        # time, the takes that arrive meanwhile going together in the next.
        self._taker = aioredis.Redis(
            connection_pool=client.connection_pool, single_connection_client=True
        )
        self._taker_used = -math.inf
        self._takes: GroupCommit[_Take, object] = GroupCommit(self._take_batch)
        self._guarding = _Guard(where)
        self._keys = RedisKeys(prefix)
        self._where = where
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._recent = RecentSessions(session_cache)
        # The turn locks this process holds, by session (one at most per session:
        # its turns in this process take turns first, in SessionTurns).
        self._held: dict[SessionId, _HeldTurn] = {}
        self._groups = SessionGroups(self._change_one, self._run_group)
        # Single writes (to any sessions) that arrive while a script call is in
        # flight go together in the next one: a call's client CPU, not Redis,
        # is what limits many sessions written at once.
        self._writes: GroupCommit[_Write, int] = GroupCommit(self._cas_batch)
        #: How this server may lose acknowledged writes (see :func:`durability_warnings`);
        #: empty if its configuration looks durable or could not be read.
        self.durability_warnings: list[str] = []

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Clock = system_clock,
        default_ttl_seconds: int = DEFAULT_TTL_SECONDS,
    ) -> RedisStore:
        """Connect, check the schema version, load the scripts, check persistence.

        Raises InvalidInput for a bad URL, StoreError if Redis cannot be reached,
        and SchemaVersionError if the data under the prefix was written by a
        newer llmsession.
        """
        options = _parse_url(url)
        try:
            connect = parse_url(options.client_url)
        except ValueError as error:
            raise InvalidInput(f"invalid Redis URL for {options.where}: {error}") from None
        # A blocking pool: a burst of requests waits for a free connection
        # instead of failing with "Too many connections" (URL: max_connections).
        pool = aioredis.BlockingConnectionPool(decode_responses=True, **connect)
        try:
            # Made now, not at the first command: an option redis-py does not take
            # fails here, as a bad URL (a connection is made without connecting).
            pool.connection_class(**pool.connection_kwargs)
        except TypeError as error:
            unknown = re.search(r"keyword argument '([^']+)'", str(error))
            named = repr(unknown.group(1)) if unknown else str(error)
            raise InvalidInput(
                f"invalid Redis URL for {options.where}: redis-py takes no option {named}; "
                "see docs/redis.md for the options the store and redis-py take"
            ) from None
        if pool.max_connections < 3:
            raise InvalidInput(
                f"the Redis URL for {options.where} sets max_connections to "
                f"{pool.max_connections}; the store needs at least 3 (one is kept for "
                "writes, one for taking turns)"
            )
        client = aioredis.Redis.from_pool(pool)
        store = cls(
            client,
            prefix=options.prefix,
            clock=clock,
            default_ttl_seconds=default_ttl_seconds,
            where=options.where,
            wait_replicas=options.wait_replicas,
            wait_timeout_ms=options.wait_timeout_ms,
        )
        try:
            await _connect(client, options.where)
            await store._prepare()
        except BaseException:
            await client.aclose()
            raise
        return store

    async def _prepare(self) -> None:
        with self._guard():
            await self._client.set(self._keys.schema, str(SCHEMA_VERSION), nx=True)
            raw = await self._client.get(self._keys.schema)
            for script in (
                CAS,
                ADD_KEY,
                READ,
                READ_RANGE,
                LIST_STATE,
                SET_SCHEMA,
                UPGRADE_DUE,
                UPGRADE_LISTED,
                UPGRADE_KEYED,
                RELEASE_LOCK,
                EXTEND_LOCK,
                TAKE_TURN,
            ):
                await self._client.script_load(script.source)
        text = None if raw is None else _text(raw)
        if text == "1":
            await self._upgrade_to_due()
            text = "2"
        if text == "2":
            await self._upgrade_listed()
            text = "3"
        if text == "3":
            await self._upgrade_keyed()
            text = "4"
        if text == "4":
            # Version 5 only adds keys and fields (see SCHEMA_VERSION).
            await self._run_one(SET_SCHEMA, [self._keys.schema], ["4", "5"])
            self._upgraded(5)
            text = "5"
        if text == "5":
            await self._upgrade_rollup()
            text = "6"
        if text == "6":
            # Version 7 reads version 6 turns as they are (see SCHEMA_VERSION).
            await self._run_one(SET_SCHEMA, [self._keys.schema], ["6", "7"])
            self._upgraded(7)
            text = "7"
        if text is None or not text.isdigit():
            raise StoreError(
                f"the key {self._keys.schema!r} in {self._where} holds {text!r}, not a schema "
                "version; is this prefix used by something other than llmsession?"
            )
        if int(text) > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the data under prefix {self._keys.prefix!r} in {self._where} has schema "
                f"version {text}; this llmsession knows versions up to {SCHEMA_VERSION}; "
                "upgrade llmsession"
            )
        await self._check_persistence()

    async def _upgrade_to_due(self) -> None:
        """Bring version 1 data up to version 2 (see UPGRADE_DUE), then say so.

        Safe to run in several processes at once, and to run again after a crash.
        Processes still running a version 1 llmsession must be stopped first: they
        would move members of deadlines without the "due" field.
        """
        low = "-"
        while True:
            last = _text(
                await self._run_one(
                    UPGRADE_DUE,
                    [self._keys.deadlines, self._keys.schema],
                    [low, str(_SWEEP_CHUNK * 4), self._keys.session_prefix],
                )
            )
            if not last:
                break
            low = "(" + last
        self._upgraded(2)

    async def _upgrade_listed(self) -> None:
        """Bring version 2 data up to version 3: list every session in its group's
        state set (see UPGRADE_LISTED), delete the sets per tenant, provider and
        model and state, then say so.

        Safe to run in several processes at once, and to run again after a crash.
        Processes still running an older llmsession must be stopped first: they
        would go on writing the old sets and not the new ones.
        """
        keys = self._keys
        pattern = _glob_escape(keys.session_prefix) + "*"
        # Every session is found by SCAN, which may return a key twice: harmless here.
        names: list[str] = []
        labels: set[tuple[TenantId, str, str]] = set()
        with self._guard():
            async for name in _admin(self._client).scan_iter(match=pattern, count=1000):
                names.append(_text(name))
                if len(names) == _SWEEP_CHUNK * 4:
                    labels |= await self._list_in_groups(names)
                    names = []
        labels |= await self._list_in_groups(names)
        # The version 2 state sets: per tenant, and per provider and per model.
        ordered = sorted(
            f"{keys.prefix}ix:{state.name}:{where}{tenant}"
            for tenant, provider, model in labels
            for state in ALL_STATES
            for where in ("", f"p{json.dumps(provider)}:", f"m{json.dumps(model)}:")
        )
        with self._guard():
            for start in range(0, len(ordered), _SWEEP_CHUNK * 4):
                await self._client.unlink(*ordered[start : start + _SWEEP_CHUNK * 4])
        await self._run_one(SET_SCHEMA, [keys.schema], ["2", "3"])
        self._upgraded(3)

    async def _upgrade_keyed(self) -> None:
        """Bring version 3 data up to version 4: give each round under an idempotency
        key the session's delta_tokens and version right after it (see UPGRADE_KEYED),
        then say so.

        In version 3 a session's version grew only at create (1), activate (2) and
        each round while it stayed Active, so round seq left it at seq + 2; its
        delta_tokens were the sum of its rounds' up to seq. Safe to run in several
        processes at once, and to run again after a crash. Processes still running
        an older llmsession must be stopped first: they would go on writing rounds
        without these numbers.
        """
        keys = self._keys
        pattern = _glob_escape(keys.prefix) + "i:*"
        names: list[str] = []
        with self._guard():
            async for name in _admin(self._client).scan_iter(match=pattern, count=1000):
                names.append(_text(name))
                if len(names) == _SWEEP_CHUNK:
                    await self._key_rounds(names)
                    names = []
        await self._key_rounds(names)
        await self._run_one(SET_SCHEMA, [keys.schema], ["3", "4"])
        self._upgraded(4)

    async def _upgrade_rollup(self) -> None:
        """Bring version 5 data up to version 6: fill the rollup (see store.rollup)
        from every stored session and its rounds, then say so.

        The rollup's fields are set to the sums found, not incremented, so several
        processes may run this at once, or run it again after a crash: each sets
        the same values. Processes still running an older llmsession must be
        stopped first: their rounds would not be counted.
        """
        keys = self._keys
        pattern = _glob_escape(keys.session_prefix) + "*"
        # SCAN may return a key twice: each session is counted once, by its id.
        seen: set[SessionId] = set()
        rows: dict[TenantId, dict[tuple[int, str, str], list[int]]] = {}
        names: list[str] = []
        with self._guard():
            async for name in _admin(self._client).scan_iter(match=pattern, count=1000):
                names.append(_text(name))
                if len(names) == _SWEEP_CHUNK:
                    await self._sum_rollup(names, seen, rows)
                    names = []
        await self._sum_rollup(names, seen, rows)
        with self._guard():
            for tenant, sums in rows.items():
                for name, fields in rollup_fields(keys, tenant, sums).items():
                    for start in range(0, len(fields), _SWEEP_CHUNK * 4):
                        chunk = fields[start : start + _SWEEP_CHUNK * 4]
                        await self._client.hset(name, mapping=dict(chunk))
        await self._run_one(SET_SCHEMA, [keys.schema], ["5", "6"])
        self._upgraded(6)

    async def _sum_rollup(
        self,
        names: Sequence[str],
        seen: set[SessionId],
        rows: dict[TenantId, dict[tuple[int, str, str], list[int]]],
    ) -> None:
        """Add these sessions (hash names) and their rounds to ``rows``, by tenant."""
        prefix = self._keys.session_prefix
        ids = {SessionId.parse(name[len(prefix) :]) for name in names} - seen
        seen |= ids
        sessions = await self._read(sorted(ids, key=str))
        with self._guard():
            async with self._client.pipeline(transaction=False) as pipe:
                for stored in sessions:
                    pipe.lrange(self._keys.rounds(stored.record.session_id), 0, -1)
                listed = await pipe.execute()
        for stored, raw_rounds in zip(sessions, listed, strict=True):
            record = stored.record
            sums = rows.setdefault(record.tenant_id, {})
            parts = [(record.created_at, session_amounts())]
            for raw in _items(raw_rounds):
                found = parse_round(record.session_id, _text(raw))
                parts.append((found.recorded_at, round_amounts(found, stored)))
            for at, amounts in parts:
                total = sums.setdefault(
                    (hour_of(at), record.provider_id, record.model), [0] * len(amounts)
                )
                for i, amount in enumerate(amounts):
                    total[i] += amount

    async def _key_rounds(self, names: Sequence[str]) -> None:
        """Rewrite the version 3 entries of these idempotency hashes as version 4 ones."""
        if not names:
            return
        # SCAN may return a name twice: harmless, the second pass finds nothing to do.
        ids = [SessionId.parse(name[len(self._keys.prefix) + 2 :]) for name in names]
        with self._guard():
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id in ids:
                    pipe.hgetall(self._keys.idempotency(session_id))
                hashes = [_row(raw) for raw in await pipe.execute()]
        # Per session: (key, value read, round) of each entry still in version 3 form.
        old: list[list[tuple[str, str, Round]]] = []
        for session_id, keyed in zip(ids, hashes, strict=True):
            read = ((key, raw, _version_3_round(session_id, raw)) for key, raw in keyed.items())
            old.append([(key, raw, first) for key, raw, first in read if first is not None])
        with self._guard():
            # Each session's rounds up to its last one under a key, for the running sums.
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id, entries in zip(ids, old, strict=True):
                    last = max((found.seq for _, _, found in entries), default=0)
                    pipe.lrange(self._keys.rounds(session_id), 0, last - 1)
                listed = await pipe.execute()
        names_used: list[str] = []
        args: list[str] = []
        for session_id, entries, raw_rounds in zip(ids, old, listed, strict=True):
            if not entries:
                continue
            totals = list(
                itertools.accumulate(
                    parse_round(session_id, _text(raw)).delta_tokens for raw in _items(raw_rounds)
                )
            )
            args.append(str(len(entries)))
            for key, raw, found in entries:
                if found.seq > len(totals):
                    raise StoreError(
                        f"{self._where}: session {session_id} has a round {found.seq} under "
                        f"idempotency key {key!r}, but only {len(totals)} rounds"
                    )
                args += (key, raw, keyed_round_json(found, totals[found.seq - 1], found.seq + 2))
            names_used.append(self._keys.idempotency(session_id))
        if names_used:
            await self._run_one(UPGRADE_KEYED, names_used, args)

    async def _list_in_groups(self, names: Sequence[str]) -> set[tuple[TenantId, str, str]]:
        """List these sessions (hash names) in their group's state set; return their
        (tenant, provider, model) labels."""
        prefix = self._keys.session_prefix
        sessions = await self._read([SessionId.parse(name[len(prefix) :]) for name in names])
        hashes_and_sets: list[str] = []
        versions_and_members: list[str] = []
        labels: set[tuple[TenantId, str, str]] = set()
        for stored in sessions:
            record = stored.record
            tenant, provider, model = record.tenant_id, record.provider_id, record.model
            hashes_and_sets += (
                self._keys.session(record.session_id),
                self._keys.by_state(tenant, record.state, provider, model),
            )
            versions_and_members += (
                str(stored.version),
                member(record.created_at, record.session_id),
            )
            labels.add((tenant, provider, model))
        if sessions:
            await self._run_one(UPGRADE_LISTED, hashes_and_sets, versions_and_members)
        return labels

    def _upgraded(self, version: int) -> None:
        _log.info(
            "%s: the data under prefix %r is at schema version %d now",
            self._where,
            self._keys.prefix,
            version,
        )

    async def _check_persistence(self) -> None:
        try:
            raw = await _admin(self._client).config_get(*_DURABILITY_SETTINGS)
        except ResponseError as error:
            # Managed services often disable CONFIG: say so rather than guess.
            _log_once(
                logging.INFO,
                self._where,
                f"cannot read the persistence settings of {self._where}: {error}",
            )
            return
        except RedisError as error:
            raise StoreError(f"{self._where} failed: {error}") from error
        self.durability_warnings = durability_warnings({str(k): str(v) for k, v in raw.items()})
        for warning in self.durability_warnings:
            _log_once(logging.WARNING, self._where, f"{self._where}: {warning}")

    # -- backend primitives ----------------------------------------------------

    async def _insert(self, stored: StoredSession, first: Round | None = None) -> None:
        written = await self._cas(None, stored, first)
        if written == _START_KEY_USED:
            key = None if first is None else first.idempotency_key
            assert key is not None
            started = await self._started_by(stored.record.tenant_id, key)
            raise ConflictError(f"idempotency key {key!r} already started session {started}")
        if written != _WRITTEN:
            raise StoreError(f"session id {stored.record.session_id} is already taken")

    async def _change_one(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        change: ChangeFn,
        idempotency_key: str | None,
    ) -> Change:
        """Read (or recall), compute and commit one change; VersionConflict if it lost a race.

        Writers to one session in this process take turns already: the session's
        group (SessionGroups) runs one change or group at a time. Correctness
        never rests on that; other processes are kept out by the version check.
        """
        # The version last seen here saves a read: the script refuses a write
        # over a stale one (a retry from a fresh read follows). An answer that
        # writes nothing (an error) is checked against the stored version
        # before it stands.
        stored = self._recent.get(tenant_id, session_id)
        remembered = stored is not None
        unchecked_key: str | None = None
        first: KeyedRound | None = None
        if stored is not None:
            # Taken as unused without reading: the write checks it, and so does
            # an answer that writes nothing.
            unchecked_key = idempotency_key
        else:
            stored = await self._get_stored(tenant_id, session_id)
            self._recent.remember(stored)
            if idempotency_key is not None:
                first = await self._round_by_key(session_id, idempotency_key)
        try:
            result = self._compute(change, stored, first)
        except LLMSessionError:
            if remembered:
                await self._check_current(stored, unchecked_key)
            raise
        if result.stored is stored:
            if remembered:
                await self._check_current(stored, unchecked_key)
            return result
        held = self._held.get(session_id)
        if held is not None and (held.released or result.round is None or not result.round.gateway):
            held = None
        try:
            # A gateway round on a session whose turn this process holds is the
            # turn's round (the gateway records one per turn, under its turn):
            # its write gives the turn's lock back, with no call of its own.
            written = await self._cas(stored, result.stored, result.round, unchecked_key, held)
        except StoreError:
            # Redis failed: the write may or may not have been applied, so the
            # next change starts from a fresh read.
            self._recent.forget(session_id)
            raise
        if written != _WRITTEN:
            raise VersionConflict
        return result

    async def _check_current(self, stored: StoredSession, unused_key: str | None) -> None:
        """VersionConflict (a retry from a fresh read) unless ``stored`` is still stored
        and ``unused_key`` (if any) still unused."""
        session_id = stored.record.session_id
        with self._guard():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(self._keys.session(session_id), "version")
                pipe.hexists(self._keys.idempotency(session_id), unused_key or "")
                version, used = await pipe.execute()
        if version != str(stored.version) or (unused_key is not None and used):
            self._recent.forget(session_id)
            raise VersionConflict

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
        try:
            return await self._write_group(tenant_id, session_id, batch)
        except (NotFoundError, StoreError) as error:
            self._recent.forget(session_id)
            return [error] * len(batch)

    async def _write_group(
        self, tenant_id: TenantId, session_id: SessionId, batch: Sequence[PendingChange]
    ) -> list[Change | Exception]:
        keys = sorted({p.idempotency_key for p in batch if p.idempotency_key is not None})
        with self._guard():
            # MULTI: the session and its rounds by key are read at one instant.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._keys.session(session_id))
                if keys:
                    pipe.hmget(self._keys.idempotency(session_id), keys)
                replies = await pipe.execute()
        row = _row(replies[0])
        if row.get("tenant") != tenant_id.value:
            raise NotFoundError(f"no session {session_id}")
        stored = self._parse(session_id, row)
        found: dict[str, KeyedRound] = {}
        if keys:
            for used, raw in zip(keys, _items(replies[1]), strict=True):
                if raw is not None:
                    found[used] = self._parse_keyed(session_id, raw)
        cas = CasBatch(self._keys)
        outcomes: list[Change | Exception] = []
        writes: list[int] = []
        for pending in batch:
            key = pending.idempotency_key
            try:
                result = self._compute(
                    pending.change, stored, None if key is None else found.get(key)
                )
            except Exception as error:
                outcomes.append(error)
                continue
            if result.stored is not stored:
                cas.add(stored, result.stored, result.round, chained=bool(writes))
                writes.append(len(outcomes))
                stored = result.stored
                if result.round is not None and result.round.idempotency_key is not None:
                    # A later change of this batch with the same key replays it.
                    found[result.round.idempotency_key] = KeyedRound(
                        result.round, result.stored.record.delta_tokens, result.stored.version
                    )
            outcomes.append(result)
        if not writes:
            self._recent.remember(stored)
            return outcomes
        written = _items(await self._run_one(CAS, cas.keys, cas.args))
        refused = next(
            (index for index, reply in zip(writes, written, strict=True) if reply != 1), None
        )
        if refused is None:
            self._recent.remember(stored)
            return outcomes
        # Each write expects the version the one before it wrote: from the first
        # refused one on, none went in, and every later answer was computed from
        # what did not happen; those changes are retried.
        self._recent.forget(session_id)
        return [
            VersionConflict() if index >= refused else outcome
            for index, outcome in enumerate(outcomes)
        ]

    async def _get(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """One session as of now: past its deadline, expired (see store.presented)."""
        return present(await self._get_stored(tenant_id, session_id), self.clock())

    async def _get_stored(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """One session as stored: what a change starts from."""
        with self._guard():
            raw = await self._client.hgetall(self._keys.session(session_id))
        row = _row(raw)
        # The tenant is checked before anything else is read: a foreign session,
        # valid or not, looks exactly like a missing one.
        if row.get("tenant") != tenant_id.value:
            raise NotFoundError(f"no session {session_id}")
        return self._parse(session_id, row)

    # -- gateway rounds ------------------------------------------------------------

    async def _keyed_round(
        self, tenant_id: TenantId, session_id: SessionId, idempotency_key: str
    ) -> tuple[StoredSession, KeyedRound] | None:
        with self._guard():
            # MULTI: the session and its round are read at one instant.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._keys.session(session_id))
                pipe.hget(self._keys.idempotency(session_id), idempotency_key)
                raw, found = await pipe.execute()
        row = _row(raw)
        if row.get("tenant") != tenant_id.value:
            raise NotFoundError(f"no session {session_id}")
        stored = self._parse(session_id, row)
        return None if found is None else (stored, self._parse_keyed(session_id, found))

    async def _history_turns(self, session_id: SessionId) -> list[Turn]:
        with self._guard():
            # Not decoded: a turn is MessagePack, and its answer any bytes.
            raw = await _admin(self._client).execute_command(
                "HGETALL", self._keys.history(session_id), **_RAW_REPLY
            )
        return self._turns(session_id, raw)

    def _turns(self, session_id: SessionId, raw: object) -> list[Turn]:
        """The turns of a history hash read whole: each turn with its answer as sent."""
        fields = _blobs(raw)
        return [
            parse_turn(session_id, seq, packed, _answer(fields.get(b"%d:a" % seq)))
            for seq, packed in _in_order(fields)
        ]

    def _turn_items(self, session_id: SessionId, raw: object) -> list[TurnItems]:
        """The turns TAKE_TURN read (seq and turn), without the answers as sent."""
        return [parse_turn_items(session_id, seq, packed) for seq, packed in _in_order(raw)]

    async def _session_turns(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> tuple[StoredSession, list[Turn]]:
        with self._guard():
            # One round trip; under the session's turn, nothing else adds a turn between.
            async with self._client.pipeline(transaction=False) as pipe:
                self._queue_history_reads(pipe, session_id)
                raw, history = await pipe.execute()
        return self._session_and_turns(tenant_id, session_id, raw, history)

    def _queue_history_reads(self, pipe: Pipeline, session_id: SessionId) -> None:
        pipe.hgetall(self._keys.session(session_id))
        # Not decoded: a turn is MessagePack, and its answer any bytes.
        _waiter(pipe).execute_command("HGETALL", self._keys.history(session_id), **_RAW_REPLY)

    def _session_and_turns(
        self, tenant_id: TenantId, session_id: SessionId, raw: object, history: object
    ) -> tuple[StoredSession, list[Turn]]:
        row = _row(raw)
        # As in _get_stored: a foreign session looks exactly like a missing one.
        if row.get("tenant") != tenant_id.value:
            raise NotFoundError(f"no session {session_id}")
        stored = self._parse(session_id, row)
        # The round the turn then records is one CAS from this version, with no read.
        self._recent.remember(stored)
        return present(stored, self.clock()), self._turns(session_id, history)

    async def _stored_turn(self, session_id: SessionId, seq: int) -> Turn | None:
        with self._guard():
            raw, answer = _items(
                await _admin(self._client).execute_command(
                    "HMGET", self._keys.history(session_id), str(seq), f"{seq}:a", **_RAW_REPLY
                )
            )
        return None if raw is None else parse_turn(session_id, seq, _blob(raw), _answer(answer))

    async def _started_by(self, tenant_id: TenantId, idempotency_key: str) -> SessionId | None:
        with self._guard():
            raw = await self._client.hget(self._keys.started(tenant_id), idempotency_key)
        if raw is None:
            return None
        try:
            return SessionId.parse(_text(raw))
        except LLMSessionError:
            raise StoreError(
                f"{self._where}: the session started under {idempotency_key!r} is "
                f"{raw!r:.80}, not a session id"
            ) from None

    def turn_lock(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AbstractAsyncContextManager[None]:
        """Hold a session's turn across every process on this Redis.

        In this process, waiters queue in arrival order (SessionTurns) and only
        the first polls Redis: ``SET lock:<id> <token> NX PX`` with a lease of
        10 s, renewed every 3 s while held, given back by compare-and-delete
        (RELEASE_LOCK), or by the write of the turn's gateway round (CAS), in
        the same script call. A holder that dies without giving it back holds
        the session up for at most the lease.
        """
        return self._turn_only(session_id)

    @asynccontextmanager
    async def _turn_only(self, session_id: SessionId) -> AsyncGenerator[None]:
        async with self._turn(session_id, read=False):
            yield

    @asynccontextmanager
    async def _locked_turns(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AsyncGenerator[tuple[StoredSession, Sequence[HistoryTurn]]]:
        async with self._turn(session_id, read=True) as read:
            assert read is not None
            row, history = read
            values = split_row(_blob(row).decode())
            # As in _get_stored: a foreign session looks exactly like a missing one.
            if values is None or values[0] != tenant_id.value:
                raise NotFoundError(f"no session {session_id}")
            stored = self._parse_values(session_id, values)
            # The round the turn then records is one CAS from this version, with no read.
            self._recent.remember(stored)
            yield present(stored, self.clock()), self._turn_items(session_id, _pairs(history))

    @asynccontextmanager
    async def _turn(
        self, session_id: SessionId, *, read: bool
    ) -> AsyncGenerator[list[object] | None]:
        """Hold the session's turn; with ``read``, TAKE_TURN's reply: the session's row
        and its history, read by the call that took the lock."""
        # Not the session's writer groups: a turn is held for seconds, and the
        # rounds recorded inside it go through those.
        async with self._local_turns.turn(session_id):
            name = self._keys.turn_lock(session_id)
            token = secrets.token_hex(16)
            try:
                replies = await self._take_lock(name, token, session_id if read else None)
            except BaseException:
                # Cancelled or failed after the SET may have gone through.
                await asyncio.shield(self._release_lock(name, token))
                raise
            held = self._held[session_id] = _HeldTurn(name, token)
            # Most turns end long before the first renewal is due: a timer until
            # then, not a task per turn.
            renewing: list[asyncio.Future[None]] = []
            timer = asyncio.get_running_loop().call_later(
                _TURN_RENEW_SECONDS,
                lambda: renewing.append(asyncio.ensure_future(self._renew_lock(held))),
            )
            try:
                yield replies
            finally:
                del self._held[session_id]
                timer.cancel()
                for task in renewing:
                    task.cancel()
                if not held.released:
                    # No round was written (an error, a replay, a turn without
                    # one), or its write's outcome is unknown: given back here.
                    await asyncio.shield(self._release_lock(name, token))

    async def _take_lock(
        self, name: str, token: str, read: SessionId | None = None
    ) -> list[object] | None:
        """Take the lock; with ``read``, TAKE_TURN's reply for that session (its
        reads run in the call that took the lock, so under it)."""
        pause = _TURN_POLL_FIRST
        while True:
            # A waiter is cancelled where it waits (a client went away): a call cut
            # off mid-flight can leave redis-py waiting forever for its answer
            # (seen with redis-py 8.2), so the call finishes first and the
            # cancellation is given back after it.
            attempt = asyncio.ensure_future(self._set_lock(name, token, read))
            with self._guard():
                try:
                    taken, replies = await asyncio.shield(attempt)
                except asyncio.CancelledError:
                    await asyncio.wait([attempt])
                    if not attempt.cancelled():
                        attempt.exception()  # retrieved: the cancellation is what matters
                    raise
            if taken:
                return replies
            await asyncio.sleep(random.uniform(pause / 2, pause))
            pause = min(pause * 2, _TURN_POLL_MAX)

    async def _set_lock(
        self, name: str, token: str, read: SessionId | None
    ) -> tuple[bool, list[object] | None]:
        """Whether the lock was taken, and with ``read`` TAKE_TURN's reply."""
        if read is None:
            return bool(await self._client.set(name, token, nx=True, px=_TURN_LEASE_MS)), None
        reply = await self._takes.submit((name, token, read))
        # 0: the lock is another holder's (nothing was read).
        return (False, None) if reply == 0 else (True, _items(reply))

    async def _take_batch(self, takes: Sequence[_Take]) -> list[object]:
        """The takes of ``_set_lock`` in one TAKE_TURN call, on the taker's connection."""
        keys: list[str] = []
        args = [str(_TURN_LEASE_MS)]
        names = self._keys
        for name, token, session_id in takes:
            keys += (name, names.session(session_id), names.history(session_id))
            args.append(token)
        replies = _items(await self._run_taker(TAKE_TURN, keys, args))
        if len(replies) != len(takes):
            raise StoreError(f"unexpected reply from Redis: {replies!r:.200}")
        return replies

    async def _renew_lock(self, held: _HeldTurn) -> None:
        """Renew the lease now, then every _TURN_RENEW_SECONDS while the turn lasts."""
        name = held.name
        while not held.released:
            try:
                renewed = await self._run_one(
                    EXTEND_LOCK, [name], [held.token, str(_TURN_LEASE_MS)]
                )
            except StoreError as error:
                # Tried again at the next renewal; the lease outlasts two misses.
                _log.warning("%s: renewing the turn lock %r failed: %s", self._where, name, error)
                await asyncio.sleep(_TURN_RENEW_SECONDS)
                continue
            if renewed != 1 and not held.released:
                # Its lease ran out (Redis or this process stalled) and another
                # process may hold it now: rounds stay exact (compare-and-set),
                # but two turns may have seen the same history.
                _log.warning(
                    "%s: the turn lock %r was lost before its turn ended", self._where, name
                )
                return
            await asyncio.sleep(_TURN_RENEW_SECONDS)

    async def _release_lock(self, name: str, token: str) -> None:
        try:
            await self._run_one(RELEASE_LOCK, [name], [token])
        except StoreError as error:
            # The lease lets the lock go by itself.
            _log.warning("%s: giving back the turn lock %r failed: %s", self._where, name, error)

    async def _list_sessions(self, tenant_id: TenantId, query: SessionQuery) -> Page[StoredSession]:
        """A tenant's sessions as of now, newest first (see store.presented): a due
        Active session is listed as expired, under ``state=expired``, not ``active``."""
        self._check_open()
        now = self.clock()
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        due: list[StoredSession] = []
        if query.state is SessionExpired:
            # The due sessions, read first: one swept meanwhile is then in both reads.
            due = [
                stored
                for stored in shown_in(await self._due(tenant_id, now), now, query)
                if _matches(stored, tenant_id, query)
                and (after is None or (stored.record.created_at, stored.record.session_id) < after)
            ]
        uppers: list[str] = []
        if query.created_before is not None:
            uppers.append(lex_time(query.created_before.epoch_micros))
        if after is not None:
            uppers.append(member(*after))
        high = "(" + min(uppers) if uppers else "+"
        low = (
            "[" + lex_time(query.created_after.epoch_micros + 1)
            if query.created_after is not None
            else "-"
        )
        # Unless a provider is given with a model and no state, every entry read
        # is a match (barring a racing change), so one page is read at once. A
        # model rarely has more than one provider: the same again, then larger
        # batches.
        batch = query.limit + 1
        matches: list[StoredSession] = []
        while len(matches) <= query.limit:
            members = await self._listed(tenant_id, query, high, low, batch)
            for stored in await self._read([member_id(m) for m in members]):
                # A due Active session is shown as expired: not a match for active.
                shown = present(stored, now)
                if _matches(shown, tenant_id, query):
                    matches.append(shown)
            if len(members) < batch:
                break
            high = "(" + members[-1]
            batch = min(batch * 2, 1024)
        if due:
            matches = newest_first(due, matches)
        page = matches[: query.limit]
        more = len(matches) > query.limit
        cursor = (
            encode_cursor(page[-1].record.created_at, page[-1].record.session_id)
            if more and page
            else None
        )
        return Page(page, cursor)

    async def _listed(
        self, tenant_id: TenantId, query: SessionQuery, high: str, low: str, count: int
    ) -> list[str]:
        """The first ``count`` members, newest first, from ``high`` down to ``low``
        (ZREVRANGEBYLEX bounds), of the sets that hold the query's sessions."""
        keys = self._keys
        if query.state is None:
            # The most selective set: of the model, else of the provider, else all.
            if query.model is not None:
                index = keys.by_tenant(tenant_id, model=query.model)
            elif query.provider_id is not None:
                index = keys.by_tenant(tenant_id, provider=query.provider_id)
            else:
                index = keys.by_tenant(tenant_id)
            with self._guard():
                return [
                    _text(m) for m in await self._client.zrevrangebylex(index, high, low, 0, count)
                ]
        head, tail = keys.state_set_parts(tenant_id, query.state)
        reply = await self._run_one(
            LIST_STATE,
            [keys.counters(tenant_id)],
            [
                head,
                tail,
                "" if query.provider_id is None else group_head(query.provider_id),
                "" if query.model is None else group_tail(query.model),
                high,
                low,
                str(count),
                state_metric(query.state),
            ],
        )
        names_read, lists_read, per_read = _items(reply)
        names = [_text(name) for name in _items(names_read)]
        lists = [[_text(m) for m in _items(members)] for members in _items(lists_read)]
        per = _count(per_read)
        first = _first(lists, count)
        # A group may hold more of the first `count` than it gave: one that gave
        # all it was asked for, the last of them among the first `count` (or
        # with fewer than `count` read in all). Reading it on to `count` in all
        # settles it, as no group can hold more than that.
        last = first[-1] if len(first) == count else None
        short = [
            j
            for j, members in enumerate(lists)
            if per < count and len(members) == per and (last is None or members[-1] > last)
        ]
        if not short:
            return first
        with self._guard():
            async with self._client.pipeline(transaction=False) as pipe:
                for j in short:
                    pipe.zrevrangebylex(names[j], "(" + lists[j][-1], low, 0, count - per)
                more = await pipe.execute()
        for j, members in zip(short, more, strict=True):
            lists[j] += [_text(m) for m in _items(members)]
        return _first(lists, count)

    async def _list_rounds(
        self, tenant_id: TenantId, session_id: SessionId, after_seq: int, limit: int
    ) -> list[Round]:
        # Round seq is at index seq - 1; Redis takes indexes up to 2**63-1.
        last = min(after_seq + limit - 1, _MAX_INDEX)
        with self._guard():
            # MULTI: the owner and the rounds are read at one instant.
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(self._keys.session(session_id), "tenant")
                pipe.lrange(self._keys.rounds(session_id), after_seq, last)
                owner, raw_rounds = await pipe.execute()
        if owner is None or _text(owner) != tenant_id.value:
            raise NotFoundError(f"no session {session_id}")
        return [parse_round(session_id, _text(raw)) for raw in _items(raw_rounds)]

    async def _timeseries(
        self, tenant_id: TenantId, window: TimeWindow, group_by: Sequence[GroupKey]
    ) -> list[TimeBucket]:
        """From the rollup hashes holding the window's buckets, one round trip."""
        self._check_open()
        with self._guard():
            async with self._client.pipeline(transaction=False) as pipe:
                for name in rollup_keys(self._keys, tenant_id, window):
                    pipe.hgetall(name)
                hashes = await pipe.execute()
        return fold((row for raw in hashes for row in parse_rollup(_row(raw))), window, group_by)

    async def _totals(self, tenant_id: TenantId, group_by: Sequence[GroupKey] = ()) -> list[Totals]:
        """Totals as of now: a due Active session counts as expired (see store.presented).

        The counters and the due sessions cannot be read in one step without
        holding Redis for as long as the due sessions take to read, so the due
        ones are read first, then the counters together with their versions
        (MULTI): one written since (by a sweeper: a due session has no other
        change) is counted as the counters have it.
        """
        self._check_open()
        now = self.clock()
        due = await self._due(tenant_id, now)
        with self._guard():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._keys.counters(tenant_id))
                for stored in due:
                    pipe.hget(self._keys.session(stored.record.session_id), "version")
                raw, *versions = await pipe.execute()
        unchanged = [
            stored
            for stored, version in zip(due, versions, strict=True)
            if version is not None and _text(version) == str(stored.version)
        ]
        groups: dict[tuple[str | None, str | None], Totals] = {}
        for (provider, model), values in parse_counters(_row(raw)).items():
            counts = {state.name: values[f"n:{state.name}"] for state in ALL_STATES}
            if not any(counts.values()):
                continue  # every session of this group was purged
            key = (
                provider if "provider" in group_by else None,
                model if "model" in group_by else None,
            )
            current = groups.get(key) or Totals(
                key[0], key[1], {state.name: 0 for state in ALL_STATES}
            )
            for name, count in counts.items():
                current.sessions[name] += count
            groups[key] = replace(
                current,
                rounds=current.rounds + values["rounds"],
                delta_tokens=current.delta_tokens + values["delta"],
                tokens_saved=current.tokens_saved + values["saved"],
                usage=UsageTotals(
                    *(
                        total + values[metric]
                        for total, metric in zip(
                            current.usage.as_tuple(), USAGE_METRICS, strict=True
                        )
                    )
                ),
            )
        return present_totals(list(groups.values()), unchanged, now, group_by)

    async def _due(self, tenant_id: TenantId, now: Timestamp) -> list[StoredSession]:
        """The tenant's sessions due at ``now``, as stored (still Active).

        Read from ``deadlines`` as a sweep reads it, so this costs what is due and
        not yet swept (of every tenant), not what is stored.
        """
        due: list[StoredSession] = []
        low, high = "-", "(" + lex_time(now.epoch_micros + 1)
        while True:
            members, rows = await self._read_range(self._keys.deadlines, low, high, _DUE_CHUNK)
            for text, row in zip(members, rows, strict=True):
                values = split_row(row)
                if values is None:
                    continue  # gone since it was read
                stored = self._parse_values(member_id(text), values)
                if stored.record.tenant_id == tenant_id and expire_if_due(stored, now) is not None:
                    due.append(stored)
            if len(members) < _DUE_CHUNK:
                return due
            low = "(" + members[-1]

    async def _sweep(self, now: Timestamp, limit: int) -> int:
        self._check_open()

        def change(stored: StoredSession) -> tuple[StoredSession, StoredSession | None] | None:
            expired = expire_if_due(stored, now)
            if expired is not None:
                return stored, expired
            # Not due: rounds moved its deadline on since its member was placed.
            # Writing it onto itself moves the member (see CasBatch.add).
            return (stored, stored) if stored.deadline is not None else None

        return await self._drain(
            self._keys.deadlines, "(" + lex_time(now.epoch_micros + 1), limit, change
        )

    async def _purge_created(
        self, cutoff: Timestamp, limit: int, tenant_id: TenantId | None
    ) -> int:
        self._check_open()

        # One tenant's are picked from every tenant's index: it holds only Created
        # sessions, of which those older than a purge's age are few (abandoned ones).
        def change(stored: StoredSession) -> tuple[StoredSession, StoredSession | None] | None:
            record = stored.record
            doomed = (
                record.state is Created
                and record.created_at <= cutoff
                and (tenant_id is None or record.tenant_id == tenant_id)
            )
            return (stored, None) if doomed else None

        return await self._drain(
            self._keys.created, "(" + lex_time(cutoff.epoch_micros + 1), limit, change
        )

    async def ping(self) -> None:
        with self._guard():
            await _admin(self._client).ping()

    async def aclose(self) -> None:
        if not self._guarding.closed:
            self._guarding.closed = True
            # The writer's and taker's connections go back to the pool, which the
            # client closes.
            await self._writer.aclose()
            await self._taker.aclose()
            await self._client.aclose()

    # -- tenants and API keys ----------------------------------------------------

    async def _create_tenant(self, tenant_id: TenantId) -> Tenant:
        tenant = Tenant(tenant_id, self.clock())
        [added] = await self._write(
            lambda pipe: pipe.hsetnx(
                self._keys.tenants, tenant_id.value, str(tenant.created_at.epoch_micros)
            )
        )
        if not added:
            raise ConflictError(f"tenant {tenant_id} already exists")
        return tenant

    async def _get_tenant(self, tenant_id: TenantId) -> Tenant:
        with self._guard():
            raw = await self._client.hget(self._keys.tenants, tenant_id.value)
        if raw is None:
            raise NotFoundError(f"no tenant {tenant_id}")
        return Tenant(tenant_id, self._time(raw))

    async def list_tenants(self) -> list[Tenant]:
        with self._guard():
            raw = await self._client.hgetall(self._keys.tenants)
        tenants = [Tenant(TenantId(k), self._time(v)) for k, v in _row(raw).items()]
        return sorted(tenants, key=lambda t: t.tenant_id)

    async def _add_api_key(self, tenant_id: TenantId, key_id: str, key_hash: bytes) -> ApiKeyInfo:
        await self.get_tenant(tenant_id)
        info = ApiKeyInfo(key_id, tenant_id, key_hash, self.clock())
        value = json.dumps([tenant_id.value, key_hash.hex(), info.created_at.epoch_micros])
        keys = [self._keys.api_keys, self._keys.tenant_keys(tenant_id)]
        [added] = await self._run([(ADD_KEY, keys, [key_id, value])])
        if not added:
            raise ConflictError(f"API key id {key_id!r} already exists")
        return info

    async def get_api_key(self, key_id: str) -> ApiKeyInfo | None:
        with self._guard():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(self._keys.api_keys, key_id)
                pipe.hget(self._keys.revoked, key_id)
                raw, revoked = await pipe.execute()
        return None if raw is None else self._key(key_id, raw, revoked)

    async def _list_api_keys(self, tenant_id: TenantId) -> list[ApiKeyInfo]:
        with self._guard():
            members = await self._client.smembers(self._keys.tenant_keys(tenant_id))
            ids = sorted(_text(key_id) for key_id in members)
            if not ids:
                return []
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(self._keys.api_keys, ids)
                pipe.hmget(self._keys.revoked, ids)
                raws, revoked = await pipe.execute()
        keys = [
            self._key(key_id, raw, rev)
            for key_id, raw, rev in zip(ids, _items(raws), _items(revoked), strict=True)
            if raw is not None
        ]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        info = await self.get_api_key(key_id)
        if info is None:
            raise NotFoundError(f"no API key {key_id!r}")
        if info.revoked_at is not None:
            return info
        now = str(self.clock().epoch_micros)

        def revoke(pipe: Pipeline) -> None:
            # HSETNX, then read back: of racing revocations the first time is kept.
            pipe.hsetnx(self._keys.revoked, key_id, now)
            pipe.hget(self._keys.revoked, key_id)

        _, revoked = await self._write(revoke)
        return replace(info, revoked_at=self._time(revoked))

    # -- reading -----------------------------------------------------------------

    async def _round_by_key(self, session_id: SessionId, idempotency_key: str) -> KeyedRound | None:
        with self._guard():
            raw = await self._client.hget(self._keys.idempotency(session_id), idempotency_key)
        return None if raw is None else self._parse_keyed(session_id, raw)

    def _parse_keyed(self, session_id: SessionId, raw: object) -> KeyedRound:
        try:
            return parse_keyed_round(session_id, _text(raw))
        except StoreError as error:
            raise StoreError(f"{self._where}: {error}") from None

    def _parse_values(self, session_id: SessionId, values: Sequence[object]) -> StoredSession:
        try:
            return parse_session_values(session_id, values)
        except StoreError as error:
            raise StoreError(f"{self._where}: {error}") from None

    def _parse(self, session_id: SessionId, row: Mapping[str, str]) -> StoredSession:
        try:
            return parse_session(session_id, row)
        except StoreError as error:
            raise StoreError(f"{self._where}: {error}") from None

    def _time(self, raw: object) -> Timestamp:
        try:
            return parse_time(_text(raw))
        except ValueError:
            raise StoreError(f"{self._where}: {raw!r:.80} is not a stored time") from None

    def _key(self, key_id: str, raw: object, revoked: object) -> ApiKeyInfo:
        try:
            tenant, key_hash, created = json.loads(_text(raw))
            return ApiKeyInfo(
                key_id,
                TenantId(str(tenant)),
                bytes.fromhex(str(key_hash)),
                Timestamp(int(created)),
                None if revoked is None else self._time(revoked),
            )
        except (ValueError, TypeError):
            raise StoreError(f"{self._where}: API key {key_id!r} is not valid") from None

    # -- writing -----------------------------------------------------------------

    def _cas(
        self,
        old: StoredSession | None,
        new: StoredSession | None,
        new_round: Round | None,
        absent_key: str | None = None,
        held: _HeldTurn | None = None,
    ) -> Coroutine[object, object, int]:
        """Write ``new`` over ``old`` (None: insert, delete) if ``old`` is still current
        and ``absent_key`` (if given) is not an idempotency key of the session yet;
        give ``held`` back with it if it is written.
        Returns what CAS says of it: 1 written, 0 not, 2 not (a started-by key used)."""
        return self._writes.submit((old, new, new_round, absent_key, held))

    async def _cas_batch(self, writes: Sequence[_Write]) -> list[int]:
        """The writes of ``_cas`` in one script call, each checked on its own (not
        chained): one refused write leaves the others standing."""
        batch = CasBatch(self._keys)
        for old, new, new_round, absent_key, held in writes:
            unlock = None if held is None else (held.name, held.token)
            batch.add(old, new, new_round, absent_key=absent_key, unlock=unlock)
        replies = _items(await self._run_writer(CAS, batch.keys, batch.args))
        outcomes: list[int] = []
        for (old, new, _, _, held), reply in zip(writes, replies, strict=True):
            if reply == _WRITTEN and held is not None:
                held.released = True
            if reply == _WRITTEN and new is not None:
                self._recent.remember(new)
            else:
                some = new if new is not None else old
                assert some is not None
                self._recent.forget(some.record.session_id)
            outcomes.append(_WRITTEN if reply == _WRITTEN else _count(reply))
        return outcomes

    async def _drain(
        self,
        index: str,
        high: str,
        limit: int,
        change: Callable[[StoredSession], tuple[StoredSession, StoredSession | None] | None],
    ) -> int:
        """Apply ``change`` to the sessions of a global index below ``high``, up to ``limit``.

        Racing processes read the same entries; each entry is written by one of
        them only, and a loser reads on past what the winners took. Returns how
        many this call changed (a session written onto itself, which only moves
        its index member, does not count).
        """
        done = 0
        low = "-"
        for _ in range(_SWEEP_PASSES):
            written, low, exhausted = await self._drain_pass(index, low, high, limit - done, change)
            done += written
            if exhausted or done >= limit:
                break
        return done

    async def _drain_pass(
        self,
        index: str,
        low: str,
        high: str,
        wanted: int,
        change: Callable[[StoredSession], tuple[StoredSession, StoredSession | None] | None],
    ) -> tuple[int, str, bool]:
        """Read ``wanted`` entries forward from ``low`` and write their changes.

        In chunks: each chunk's entries and sessions come in one script call and
        its changes go in one compare-and-set call. Reads run ahead of writes:
        each read is sent as soon as the one before it is in (it starts where
        that one ended), and before the write of the chunk just computed, so
        Redis answers it first. So this process computes while Redis writes,
        and waits only when Redis has fallen behind. Returns how many were
        written, where the next pass starts, and whether the index ran out.
        """
        drain = _Pass(
            self._read_range, self._written, index=index, low=low, high=high, wanted=wanted
        )
        try:
            drain.read_next()
            while drain.ready or drain.reading is not None:
                if not drain.ready:
                    assert drain.reading is not None
                    drain.take(await drain.reading)
                    # Let the next read reach the server before this chunk is computed.
                    await asyncio.sleep(0)
                members, rows = drain.ready.pop(0)
                batch, changed = self._changes(members, rows, change)
                drain.wanted += len(members) - sum(1 for _, counts in changed if counts)
                if drain.reading is not None and drain.reading.done():
                    drain.take(drain.reading.result())
                drain.read_next()
                if changed:
                    drain.writes.append(asyncio.ensure_future(self._write_batch(batch, changed)))
                    # Sent behind the read just sent, before the next chunk is computed.
                    await asyncio.sleep(0)
                # Up to three writes in flight: computing goes on while Redis works.
                await drain.collect(2)
            await drain.collect(0)
        finally:
            drain.stop()
        return drain.done, drain.low, drain.exhausted

    def _changes(
        self,
        members: Sequence[str],
        rows: Sequence[str],
        change: Callable[[StoredSession], tuple[StoredSession, StoredSession | None] | None],
    ) -> tuple[CasBatch, list[tuple[SessionId, bool]]]:
        """The writes of a chunk, and per write its session and whether it counts
        towards the limit (a session written onto itself does not)."""
        batch = CasBatch(self._keys)
        changed: list[tuple[SessionId, bool]] = []
        for text, row in zip(members, rows, strict=True):
            values = split_row(row)
            if values is None:
                continue  # gone since it was read
            stored = self._parse_values(member_id(text), values)
            pair = change(stored)
            if pair is not None:
                batch.add(*pair)
                changed.append((stored.record.session_id, pair[1] is not stored))
        return batch, changed

    async def _written(
        self, writing: asyncio.Future[tuple[int, list[tuple[SessionId, bool]]]]
    ) -> int:
        count, changed = await writing
        for session_id, _ in changed:
            # Whatever was known of these is stale now, or gone.
            self._recent.forget(session_id)
        return count

    async def _write_batch(
        self, batch: CasBatch, changed: list[tuple[SessionId, bool]]
    ) -> tuple[int, list[tuple[SessionId, bool]]]:
        """The writes, and how many of those that count (see _drain) went in."""
        written = _items(await self._run_one(CAS, batch.keys, batch.args))
        counted = sum(
            1 for reply, (_, counts) in zip(written, changed, strict=True) if counts and reply == 1
        )
        return counted, changed

    async def _read_range(
        self, index: str, low: str, high: str, count: int
    ) -> tuple[list[str], list[str]]:
        """The next ``count`` members of a global index from ``low`` to ``high``, and the
        rows of the sessions they name (see split_row): one call.

        The rows are parsed by the caller one at a time, just before each is
        used: a chunk of sessions parsed at once outlived the garbage collector's
        young generation, and collecting them cost a sweep 7 µs per session,
        against 1.7 µs parsed one at a time."""
        prefix = self._keys.session_prefix
        reply = _items(
            await self._run_one(READ_RANGE, [index], [low, high, str(count), prefix, *FIELDS])
        )
        return [_text(m) for m in _items(reply[0])], [_text(row) for row in _items(reply[1])]

    async def _read(self, ids: Sequence[SessionId]) -> list[StoredSession]:
        """The sessions with these ids, in order, leaving out those that are gone: one call."""
        if not ids:
            return []
        names = [self._keys.session(session_id) for session_id in ids]
        rows = _items(await self._run_one(READ, names, FIELDS))
        sessions: list[StoredSession] = []
        for session_id, row in zip(ids, rows, strict=True):
            values = split_row(_text(row))
            if values is not None:
                sessions.append(self._parse_values(session_id, values))
        return sessions

    async def _run_one(
        self, script: Script, keys: Sequence[str], args: Sequence[str | bytes]
    ) -> object:
        """One script call, sent directly (no pipeline) unless replicas are waited for."""
        if self._wait_replicas:
            [reply] = await self._run([(script, keys, args)])
            return reply
        with self._guard():
            try:
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # The server lost the scripts (a restart, SCRIPT FLUSH, a failover):
                # the call did not run. Load the script and run it again, once.
                await self._client.script_load(script.source)
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)

    async def _run_taker(self, script: Script, keys: Sequence[str], args: Sequence[str]) -> object:
        """One script call on the taker's own connection (see ``__init__``), its reply
        left as bytes (not decoded): a turn is MessagePack, its answer any bytes."""
        command = ("EVALSHA", script.sha, str(len(keys)), *keys, *args)
        taker = _admin(self._taker)
        loop = asyncio.get_running_loop()
        with self._guard():
            if loop.time() - self._taker_used > _WRITER_IDLE_SECONDS:
                # As for the writer: a call that takes a lock may have been
                # applied when it fails, a PING not.
                with suppress(RedisError):
                    await taker.ping()
            try:
                reply = await taker.execute_command(*command, **_RAW_REPLY)
            except NoScriptError:
                # As in _run_one: the call did not run.
                await self._taker.script_load(script.source)
                reply = await taker.execute_command(*command, **_RAW_REPLY)
        self._taker_used = loop.time()
        return reply

    async def _run_writer(
        self, script: Script, keys: Sequence[str], args: Sequence[str | bytes]
    ) -> object:
        """One script call on the writer's own connection (see ``__init__``)."""
        if self._wait_replicas:
            return await self._run_one(script, keys, args)
        writer = self._writer
        loop = asyncio.get_running_loop()
        with self._guard():
            if loop.time() - self._writer_used > _WRITER_IDLE_SECONDS:
                # The server or something on the way may have closed a connection
                # idle this long; a PING, which may safely fail, finds out before
                # a write, which may not (it may have been applied). A failed PING
                # drops the connection, and the write connects anew.
                with suppress(RedisError):
                    await _admin(writer).ping()
            try:
                reply = await writer.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await writer.script_load(script.source)
                reply = await writer.evalsha(script.sha, len(keys), *keys, *args)
        self._writer_used = loop.time()
        return reply

    async def _run(self, calls: Sequence[_Call]) -> list[object]:
        """Run scripts in one round trip; reload them if the server lost them."""
        results = await self._write(_evalsha(calls))
        lost = [i for i, reply in enumerate(results) if isinstance(reply, NoScriptError)]
        if lost:
            # The server lost the scripts (a restart, SCRIPT FLUSH, a failover):
            # those calls did not run. Load the scripts and run them again, once.
            with self._guard():
                for source in {calls[i][0].source for i in lost}:
                    await self._client.script_load(source)
            again = await self._write(_evalsha([calls[i] for i in lost]))
            for i, reply in zip(lost, again, strict=True):
                results[i] = reply
        for reply in results:
            if isinstance(reply, Exception):
                raise StoreError(f"{self._where} failed: {reply}") from reply
        return results

    async def _write(self, commands: Callable[[Pipeline], object]) -> list[object]:
        """Send write commands in one pipeline, then WAIT for replicas if configured."""
        with self._guard():
            async with self._client.pipeline(transaction=False) as pipe:
                commands(pipe)
                if self._wait_replicas:
                    _waiter(pipe).wait(self._wait_replicas, self._wait_timeout_ms)
                replies: list[object] = await pipe.execute(raise_on_error=False)
        for reply in replies:
            # NOSCRIPT is left to _run, which reloads the script.
            if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                raise StoreError(f"{self._where} failed: {reply}") from reply
        if self._wait_replicas:
            acknowledged = replies.pop()
            if not isinstance(acknowledged, int) or acknowledged < self._wait_replicas:
                raise StoreError(
                    f"{self._where} applied the write, but only {acknowledged!r} of "
                    f"{self._wait_replicas} replicas confirmed it within "
                    f"{self._wait_timeout_ms} ms: it is lost if the primary fails now. "
                    "A retry with the same idempotency key is safe."
                )
        return replies

    def _guard(self) -> _Guard:
        """Turn redis-py's errors into StoreError naming the server (never its password)."""
        return self._guarding

    def _check_open(self) -> None:
        self._guarding.check_open()


_Read = tuple[list[str], list[str]]
_Written = tuple[int, list[tuple[SessionId, bool]]]


class _Pass:
    """One pass of RedisStore._drain_pass: where it is, and its calls in flight."""

    def __init__(
        self,
        read_range: Callable[[str, str, str, int], Coroutine[object, object, _Read]],
        written: Callable[[asyncio.Future[_Written]], Awaitable[int]],
        *,
        index: str,
        low: str,
        high: str,
        wanted: int,
    ) -> None:
        self.read_range = read_range
        self.written = written
        self.index = index
        self.low = low
        self.high = high
        #: Entries still to change, counting those read and not computed as if each counted.
        self.wanted = wanted
        self.done = 0
        self.exhausted = False
        self.asked = 0
        self.reading: asyncio.Future[_Read] | None = None
        #: Chunks read and not yet computed (at most one).
        self.ready: list[_Read] = []
        #: Writes sent and not yet answered.
        self.writes: list[asyncio.Future[_Written]] = []

    def take(self, read: _Read) -> None:
        """A read is in: note where the next one starts, and send it."""
        members, _ = read
        self.ready.append(read)
        self.wanted -= len(members)
        if members:
            self.low = "(" + members[-1]
        self.exhausted = len(members) < self.asked
        self.reading = None
        self.read_next()

    def read_next(self) -> None:
        """Send the next read, unless one is in flight or none is wanted."""
        if self.reading is None and not self.exhausted and self.wanted > 0:
            self.asked = min(self.wanted, _SWEEP_CHUNK)
            self.reading = asyncio.ensure_future(
                self.read_range(self.index, self.low, self.high, self.asked)
            )

    async def collect(self, keep: int) -> None:
        """Wait for the oldest writes until ``keep`` are left in flight."""
        while len(self.writes) > keep:
            # Taken off only once answered: stop() sees it till then.
            self.done += await self.written(self.writes[0])
            del self.writes[0]

    def stop(self) -> None:
        """Cancelled or failed: leave nothing running on its own, and no error of
        another call unretrieved (the first one is the one raised). A cancelled
        write may still have been applied; its sessions' remembered versions are
        then stale, which costs a refused write and a fresh read, never a wrong one."""
        for pending in (self.reading, *self.writes):
            if pending is None:
                continue
            if not pending.done():
                pending.cancel()
            elif not pending.cancelled():
                pending.exception()


class _Guard:
    """RedisStore._guard, and whether the store was closed: a class, not a
    generator, as it wraps every call (a generator-based context manager costs
    about a microsecond each time)."""

    __slots__ = ("closed", "where")

    def __init__(self, where: str) -> None:
        self.where = where
        self.closed = False

    def check_open(self) -> None:
        if self.closed:
            raise StoreError("this store was closed; open a new one")

    def __enter__(self) -> None:
        self.check_open()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: TracebackType | None
    ) -> None:
        if isinstance(error, RedisError):
            raise StoreError(f"{self.where} failed: {error}") from error


# What this process has logged about each server (its ``where``: host, port and
# database, never a password): a process opens many stores on one server (a
# CLI command, workers, each test), and one warning says it all. A new message,
# as when the server's settings changed, is logged again.
_LOGGED: set[tuple[str, str]] = set()


def _log_once(level: int, where: str, message: str) -> None:
    if (where, message) not in _LOGGED:
        _LOGGED.add((where, message))
        _log.log(level, "%s", message)


def durability_warnings(config: Mapping[str, str]) -> list[str]:
    """How a Redis with this CONFIG may lose acknowledged writes; empty if it looks durable.

    Reads ``appendonly``, ``appendfsync``, ``save`` and ``maxmemory-policy``.
    Durable means: every write is on disk before Redis replies (``appendonly
    yes``, ``appendfsync always``), and no key is ever evicted. Replicas and
    failover are another matter; see docs/redis.md.
    """
    warnings: list[str] = []
    fsync = config.get("appendfsync", "")
    save = config.get("save", "").strip()
    if config.get("appendonly") == "yes":
        if fsync != "always":
            warnings.append(
                f"appendfsync is {fsync!r}: Redis replies before the append-only file is on "
                "disk, so a crash can lose the last second or two of acknowledged rounds; "
                "set appendfsync always to lose none"
            )
    elif save:
        warnings.append(
            f"appendonly is off and only RDB snapshots are taken (save {save!r}): a crash "
            "loses every round acknowledged since the last snapshot; set appendonly yes "
            "and appendfsync always"
        )
    else:
        warnings.append(
            'persistence is off (appendonly no, save ""): every session and round is lost '
            "when Redis restarts; set appendonly yes and appendfsync always"
        )
    # The store sets no key TTLs, so only allkeys-* policies can evict its keys.
    policy = config.get("maxmemory-policy", "noeviction")
    if policy.startswith("allkeys"):
        warnings.append(
            f"maxmemory-policy is {policy!r}: when memory runs out Redis silently deletes "
            "keys, sessions and rounds among them; set maxmemory-policy noeviction"
        )
    return warnings


def _parse_url(url: str) -> _Options:
    """Split a store URL into redis-py's URL and the store's own options."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {"prefix", "wait_replicas", "wait_timeout_ms", "decode_responses"}
    given: dict[str, str] = {}
    for name, value in query:
        if name in ours:
            if name in given:
                raise InvalidInput(f"the Redis URL gives {name} more than once; give it once")
            given[name] = value
    if "decode_responses" in given:
        raise InvalidInput("the Redis URL must not set decode_responses; the store sets it")
    prefix = given.get("prefix", DEFAULT_PREFIX)
    if not prefix or not prefix.isprintable() or any(c.isspace() for c in prefix):
        raise InvalidInput(
            f"Redis key prefix {prefix!r} is not allowed: use printable characters without "
            f"spaces, e.g. the default {DEFAULT_PREFIX!r}"
        )
    wait_replicas = _count_option(given, "wait_replicas", 0, minimum=0)
    wait_timeout_ms = _count_option(given, "wait_timeout_ms", _DEFAULT_WAIT_TIMEOUT_MS, minimum=1)
    rest = urlencode([(name, value) for name, value in query if name not in ours])
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        raise InvalidInput(f"invalid Redis URL: {error}") from None
    database = parts.path.removeprefix("/")
    # redis-py takes a path that is not a number for database 0, silently.
    if parts.scheme != "unix" and database and not (database.isdigit() and database.isascii()):
        raise InvalidInput(
            f"the Redis URL's path names the database by its number, such as /0; got {parts.path!r}"
        )
    if parts.scheme == "unix":
        where = f"Redis at {parts.path}"
    else:
        where = f"Redis at {parts.hostname or 'localhost'}:{parts.port or 6379}/{database or 0}"
    client_url = urlunsplit(parts._replace(query=rest))
    return _Options(client_url, prefix, where, wait_replicas, wait_timeout_ms)


async def _connect(client: aioredis.Redis, where: str) -> None:
    """A first command, so that an unreachable server is one error saying what to check."""
    try:
        await _admin(client).ping()
    except RedisError as error:
        said = str(error).rstrip()
        raise StoreError(
            f"cannot connect to {where}: {said}{'' if said.endswith('.') else '.'} "
            "Check the URL's host, port and password, and that Redis is running there."
        ) from error


def _count_option(given: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    text = given.get(name)
    if text is None:
        return default
    if not text.isdigit() or not text.isascii() or int(text) < minimum:
        raise InvalidInput(f"Redis URL option {name} must be an integer >= {minimum}, got {text!r}")
    return int(text)


def _version_3_round(session_id: SessionId, raw: str) -> Round | None:
    """The round of a version 3 idempotency hash entry; None for a version 4 one."""
    try:
        parse_keyed_round(session_id, raw)
    except StoreError:
        return parse_round(session_id, raw)
    return None


def _glob_escape(text: str) -> str:
    """``text`` as a SCAN MATCH pattern that matches it only."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def _evalsha(calls: Sequence[_Call]) -> Callable[[Pipeline], None]:
    def queue(pipe: Pipeline) -> None:
        for script, keys, args in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)

    return queue


def _matches(stored: StoredSession, tenant_id: TenantId, query: SessionQuery) -> bool:
    record = stored.record
    return (
        record.tenant_id == tenant_id
        and (query.state is None or record.state is query.state)
        and (query.provider_id is None or record.provider_id == query.provider_id)
        and (query.model is None or record.model == query.model)
        and (query.created_after is None or record.created_at > query.created_after)
        and (query.created_before is None or record.created_at < query.created_before)
    )


def _first(lists: Sequence[Sequence[str]], count: int) -> list[str]:
    """The first ``count`` of lists of members each newest first, newest first."""
    return list(itertools.islice(heapq.merge(*lists, reverse=True), count))


def _count(value: object) -> int:
    if isinstance(value, int):
        return value
    raise StoreError(f"unexpected reply from Redis: {value!r:.200}")


def _text(value: object) -> str:
    # The client decodes replies (decode_responses=True), so text is a str.
    if isinstance(value, str):
        return value
    raise StoreError(f"unexpected reply from Redis: {value!r:.200}")


def _row(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise StoreError(f"unexpected reply from Redis: {value!r:.200}")
    return {_text(k): _text(v) for k, v in cast(dict[object, object], value).items()}


def _blob(value: object) -> bytes:
    # A reply read with NEVER_DECODE.
    if isinstance(value, bytes):
        return value
    raise StoreError(f"unexpected reply from Redis: {value!r:.200}")


def _blobs(value: object) -> dict[object, object]:
    if not isinstance(value, dict):
        raise StoreError(f"unexpected reply from Redis: {value!r:.200}")
    return cast(dict[object, object], value)


def _pairs(value: object) -> dict[object, object]:
    # A hash's fields and values, flat, as a script returns HGETALL's reply.
    items = _items(value)
    return dict(zip(items[::2], items[1::2], strict=True))


def _in_order(fields: object) -> list[tuple[int, bytes]]:
    """A history hash's turns (its fields but the answers as sent, "<seq>:a"), by seq."""
    turns = [
        (_seq(name), _blob(packed))
        for name, packed in _blobs(fields).items()
        if not (isinstance(name, bytes) and name.endswith(b":a"))
    ]
    turns.sort(key=lambda pair: pair[0])
    return turns


def _answer(value: object) -> bytes | None:
    # A turn's answer as sent, or None where a version 6 turn holds its own.
    return None if value is None else _blob(value)


def _seq(value: object) -> int:
    # A field of a history hash: a round's seq, as CAS wrote it.
    if isinstance(value, bytes) and value.isdigit():
        return int(value)
    raise StoreError(f"unexpected round number in a history: {value!r:.80}")


def _items(value: object) -> list[object]:
    if not isinstance(value, list):
        raise StoreError(f"unexpected reply from Redis: {value!r:.200}")
    return list(cast(list[object], value))
