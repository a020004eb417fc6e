"""RedisStore: sessions in one Redis server, shared by many service replicas.

Every write to a session goes through one Lua script, a compare-and-set on the
session's ``version``: the store base computes the next record with the core in
Python, and the script only checks the version and writes what it is given (the
hash, the round, the idempotency entry, index entries, counter increments). No
rule of the state machine is in Lua; a lost compare-and-set raises
VersionConflict and the base retries from a fresh read.

Key layout, under a prefix (default ``llmsession:``, URL option ``?prefix=``)::

    schema               the layout version (SCHEMA_VERSION)
    s:<session id>       hash: the record, version, ttl_seconds, last_activity_at
    r:<session id>       list: the rounds, JSON, seq i at index i-1
    i:<session id>       hash: idempotency key -> round JSON
    ix:all:<tenant>      sorted set (lex): the tenant's sessions, <created_at><id>
    ix:<state>:<tenant>  sorted set (lex): the same, for one state
    created              sorted set (lex): every Created session, <created_at><id>
    deadlines            sorted set (lex): every Active session, <deadline><id>
    agg:<tenant>         hash: per (provider, model) counters, see _counter_fields
    tenants              hash: tenant id -> created_at
    apikeys              hash: key id -> JSON [tenant, hash hex, created_at]
    apikeys:revoked      hash: key id -> revoked_at
    keys:<tenant>        set: the tenant's key ids

Times are integer epoch microseconds. The sorted sets are ordered by member
(all scores 0) with times written as fixed-width hex, so ordering and ranges are
exact for every Timestamp, not only up to the 2**53 a double score holds, and
sessions created in the same microsecond are ordered by id, as the keyset
cursors of :mod:`llmsession.store.cursor` need.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Final, Protocol, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
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
from llmsession.record import SessionRecord
from llmsession.states import ALL_STATES, Created, SessionState, state_named
from llmsession.store.base import (
    DEFAULT_TTL_SECONDS,
    SessionStore,
    SessionTransaction,
    VersionConflict,
    expire_if_due,
)
from llmsession.store.cursor import decode_cursor, encode_cursor
from llmsession.store.models import (
    ApiKeyInfo,
    GroupKey,
    Page,
    Round,
    SessionQuery,
    StoredSession,
    Tenant,
    Totals,
    check_page_size,
)
from llmsession.timestamps import Timestamp

__all__ = ["DEFAULT_PREFIX", "SCHEMA_VERSION", "RedisStore", "persistence_warning"]

DEFAULT_PREFIX: Final = "llmsession:"
#: The key layout this code writes; a store with a newer one is refused.
SCHEMA_VERSION: Final = 1

_log = logging.getLogger(__name__)

# Sorted-set members start with a time as 16 hex digits; the offset makes every
# Timestamp (years 1 to 9999) non-negative, so text order is time order.
_LEX_OFFSET: Final = 2**62
_LEX_WIDTH: Final = 16
# Counters are kept as two limbs, lo in [0, 2**32) and hi, so that totals over
# many sessions (each up to 2**63-1 tokens) never overflow Redis's 64-bit HINCRBY
# and every increment the script makes stays exact in Lua's double numbers.
_LIMB: Final = 2**32
_METRICS: Final = ("rounds", "delta", "saved", *(f"n:{state.name}" for state in ALL_STATES))

# Compare-and-set of one session: the only way a session is inserted, changed or
# deleted. It checks the version and then writes exactly what Python computed.
#
# KEYS: 1 session hash, 2 rounds list, 3 idempotency hash, 4 counters hash,
#       5.. sorted-set indexes (referred to by number below)
# ARGV: 1 expected version ('' = the session must not exist), 2 'put' or 'del',
#       then n, n hash field/value pairs; round JSON ('' = none); idempotency key
#       ('' = none); r, r pairs (index number, member) to remove; a, a pairs to
#       add; c, c quadruples (lo field, hi field, lo increment, hi increment).
# Returns 1 when written, 0 when the version did not match (nothing written).
_CAS_SCRIPT: Final = """
local current = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
local i = 3
local n = tonumber(ARGV[i])
i = i + 1
if ARGV[2] == 'del' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
elseif n > 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, i, i + 2 * n - 1))
end
i = i + 2 * n
local round, key = ARGV[i], ARGV[i + 1]
i = i + 2
if round ~= '' then
  redis.call('RPUSH', KEYS[2], round)
  if key ~= '' then redis.call('HSET', KEYS[3], key, round) end
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('ZREM', KEYS[tonumber(ARGV[i])], ARGV[i + 1])
  i = i + 2
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('ZADD', KEYS[tonumber(ARGV[i])], 0, ARGV[i + 1])
  i = i + 2
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  local lo_field, hi_field, lo, hi = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  local total = redis.call('HINCRBY', KEYS[4], lo_field, lo)
  if hi ~= '0' then redis.call('HINCRBY', KEYS[4], hi_field, hi) end
  -- Carry: lo stays below 2**32, the sum below 2**33, exact as a Lua number.
  if total >= 4294967296 then
    redis.call('HINCRBY', KEYS[4], lo_field, '-4294967296')
    redis.call('HINCRBY', KEYS[4], hi_field, '1')
  end
end
return 1
"""

# Adds an API key only if its id is new, and lists it under its tenant.
_ADD_KEY_SCRIPT: Final = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""


class _Admin(Protocol):
    # The few redis-py commands whose stubs leave **kwargs untyped, declared
    # with the arguments this module passes, so strict checking stays on.
    def ping(self) -> Awaitable[object]: ...

    def config_get(self, pattern: str, *args: str) -> Awaitable[dict[str | None, str | None]]: ...


def _admin(client: aioredis.Redis) -> _Admin:
    return client


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


_CAS = _Script.of(_CAS_SCRIPT)
_ADD_KEY = _Script.of(_ADD_KEY_SCRIPT)


@dataclass(frozen=True, slots=True)
class _Keys:
    """The key names under one prefix."""

    prefix: str

    def session(self, session_id: SessionId) -> str:
        return f"{self.prefix}s:{session_id}"

    def rounds(self, session_id: SessionId) -> str:
        return f"{self.prefix}r:{session_id}"

    def idempotency(self, session_id: SessionId) -> str:
        return f"{self.prefix}i:{session_id}"

    def by_tenant(self, tenant_id: TenantId, state: type[SessionState] | None = None) -> str:
        return f"{self.prefix}ix:{'all' if state is None else state.name}:{tenant_id}"

    def counters(self, tenant_id: TenantId) -> str:
        return f"{self.prefix}agg:{tenant_id}"

    def tenant_keys(self, tenant_id: TenantId) -> str:
        return f"{self.prefix}keys:{tenant_id}"

    @property
    def schema(self) -> str:
        return f"{self.prefix}schema"

    @property
    def created(self) -> str:
        return f"{self.prefix}created"

    @property
    def deadlines(self) -> str:
        return f"{self.prefix}deadlines"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}tenants"

    @property
    def api_keys(self) -> str:
        return f"{self.prefix}apikeys"

    @property
    def revoked(self) -> str:
        return f"{self.prefix}apikeys:revoked"


@dataclass(slots=True)
class _Writers:
    """The writers of one session in this process: a turn each, and how many wait."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    count: int = 0


class _RedisTransaction(SessionTransaction):
    def __init__(
        self,
        stored: StoredSession,
        find: Callable[[SessionId, str], Awaitable[Round | None]],
        cas: Callable[[StoredSession, StoredSession, Round | None], Awaitable[bool]],
    ) -> None:
        self.stored = stored
        self._find = find
        self._cas = cas

    async def find_round(self, idempotency_key: str) -> Round | None:
        return await self._find(self.stored.record.session_id, idempotency_key)

    async def commit(self, new: StoredSession, new_round: Round | None) -> None:
        if not await self._cas(self.stored, new, new_round):
            raise VersionConflict


class RedisStore(SessionStore):
    """Sessions in Redis; open one with :meth:`open` (or ``open_store("redis://...")``).

    Durability is what the Redis server is configured for; see docs/redis.md.
    :meth:`open` logs a warning when that configuration can lose acknowledged
    rounds. Redis Cluster is not supported: the scripts touch keys of many slots.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock = system_clock,
        default_ttl_seconds: int = DEFAULT_TTL_SECONDS,
        where: str = "Redis",
    ) -> None:
        """Wrap a connected client; prefer :meth:`open`, which also checks the schema."""
        super().__init__(clock=clock, default_ttl_seconds=default_ttl_seconds)
        self._client = client
        self._keys = _Keys(prefix)
        self._where = where
        self._closed = False
        self._writers: dict[SessionId, _Writers] = {}
        #: Why acknowledged writes may be lost under the server's configuration
        #: (see :func:`persistence_warning`); None if it looks durable or is unknown.
        self.persistence_warning: str | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Clock = system_clock,
        default_ttl_seconds: int = DEFAULT_TTL_SECONDS,
    ) -> RedisStore:
        """Connect to ``redis://host:port/db[?prefix=...]``, check the schema, load the scripts.

        ``prefix`` (default ``llmsession:``) is put before every key this store
        writes; other query options go to redis-py. Raises StoreError if Redis
        cannot be reached and SchemaVersionError if the data under the prefix
        was written by a newer llmsession.
        """
        client_url, prefix, where = _split_url(url)
        try:
            options = parse_url(client_url)
        except ValueError as error:
            raise InvalidInput(f"invalid Redis URL for {where}: {error}") from None
        # A blocking pool: a burst of requests waits for a connection instead of
        # failing with "Too many connections" (size: URL option max_connections).
        pool = aioredis.BlockingConnectionPool(decode_responses=True, **options)
        client = aioredis.Redis.from_pool(pool)
        store = cls(
            client,
            prefix=prefix,
            clock=clock,
            default_ttl_seconds=default_ttl_seconds,
            where=where,
        )
        try:
            await store._prepare()
        except BaseException:
            await client.aclose()
            raise
        return store

    async def _prepare(self) -> None:
        with self._guard():
            await self._client.set(self._keys.schema, str(SCHEMA_VERSION), nx=True)
            raw = await self._client.get(self._keys.schema)
            for script in (_CAS, _ADD_KEY):
                await self._client.script_load(script.source)
        text = None if raw is None else _text(raw)
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

    async def _check_persistence(self) -> None:
        try:
            raw = await _admin(self._client).config_get("appendonly", "appendfsync", "save")
        except ResponseError as error:
            # Managed Redis services often disable CONFIG; say so instead of guessing.
            _log.info("cannot read the persistence settings of %s: %s", self._where, error)
            return
        except RedisError as error:
            raise StoreError(f"{self._where} failed: {error}") from error
        config = {str(k): str(v) for k, v in raw.items()}
        self.persistence_warning = persistence_warning(config)
        if self.persistence_warning is not None:
            _log.warning("%s: %s", self._where, self.persistence_warning)

    # -- backend primitives ----------------------------------------------------

    async def _insert(self, stored: StoredSession) -> None:
        if not await self._cas(None, stored, None):
            raise StoreError(f"session id {stored.record.session_id} is already taken")

    @asynccontextmanager
    async def _begin(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AsyncGenerator[SessionTransaction]:
        # Writers to one session in this process take turns: they would only
        # make each other's compare-and-set fail. Correctness never rests on
        # this lock; other processes are still kept out by the version check.
        entry = self._writers.get(session_id)
        if entry is None:
            entry = self._writers[session_id] = _Writers()
        entry.count += 1
        try:
            async with entry.lock:
                stored = await self.get(tenant_id, session_id)
                yield _RedisTransaction(stored, self._find_round, self._cas)
        finally:
            entry.count -= 1
            if not entry.count:
                del self._writers[session_id]

    async def _find_round(self, session_id: SessionId, idempotency_key: str) -> Round | None:
        with self._guard():
            raw = await self._client.hget(self._keys.idempotency(session_id), idempotency_key)
        return None if raw is None else _parse_round(session_id, _text(raw))

    async def get(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        self._check_open()
        with self._guard():
            fields = await self._client.hgetall(self._keys.session(session_id))
        stored = self._parse_session(session_id, fields)
        if stored is None or stored.record.tenant_id != tenant_id:
            raise NotFoundError(f"no session {session_id}")
        return stored

    async def list_sessions(self, tenant_id: TenantId, query: SessionQuery) -> Page[StoredSession]:
        self._check_open()
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        index = self._keys.by_tenant(tenant_id, query.state)
        uppers: list[str] = []
        if query.created_before is not None:
            uppers.append(_lex_time(query.created_before.epoch_micros))
        if after is not None:
            uppers.append(_member(*after))
        high = "(" + min(uppers) if uppers else "+"
        low = (
            "[" + _lex_time(query.created_after.epoch_micros + 1)
            if query.created_after is not None
            else "-"
        )
        # Only provider and model are not in the index; without them each entry
        # read is a match (barring a racing purge), so read just one page.
        filtered = query.provider_id is not None or query.model is not None
        batch = max(query.limit + 1, 256) if filtered else query.limit + 1
        matches: list[StoredSession] = []
        while len(matches) <= query.limit:
            with self._guard():
                members = await self._client.zrevrangebylex(index, high, low, 0, batch)
                if not members:
                    break
                async with self._client.pipeline(transaction=False) as pipe:
                    for member in members:
                        pipe.hgetall(self._keys.session(_member_id(_text(member))))
                    rows: list[object] = await pipe.execute()
            for member, row in zip(members, rows, strict=True):
                stored = self._parse_session(_member_id(_text(member)), row)
                if stored is not None and _matches(stored, tenant_id, query):
                    matches.append(stored)
            if len(members) < batch:
                break
            high = "(" + _text(members[-1])
        page = matches[: query.limit]
        more = len(matches) > query.limit
        cursor = (
            encode_cursor(page[-1].record.created_at, page[-1].record.session_id)
            if more and page
            else None
        )
        return Page(page, cursor)

    async def list_rounds(
        self, tenant_id: TenantId, session_id: SessionId, *, after_seq: int = 0, limit: int = 100
    ) -> Page[Round]:
        check_page_size(limit)
        if type(after_seq) is not int or after_seq < 0:
            raise InvalidInput(f"after_seq must be an integer >= 0, got {after_seq!r}")
        self._check_open()
        with self._guard():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(self._keys.session(session_id), "tenant")
                pipe.lrange(self._keys.rounds(session_id), after_seq, after_seq + limit)
                owner, raw_rounds = await pipe.execute()
        if owner is None or _text(owner) != tenant_id.value:
            raise NotFoundError(f"no session {session_id}")
        rounds = [_parse_round(session_id, _text(raw)) for raw in _items(raw_rounds)]
        page = rounds[:limit]
        return Page(page, str(page[-1].seq) if len(rounds) > limit else None)

    async def totals(self, tenant_id: TenantId, group_by: Sequence[GroupKey] = ()) -> list[Totals]:
        self._check_open()
        with self._guard():
            raw = await self._client.hgetall(self._keys.counters(tenant_id))
        limbs: dict[tuple[str, str], dict[str, int]] = {}
        for name, value in raw.items():
            provider, model, metric, limb = _parse_counter_field(_text(name))
            weight = _LIMB if limb == "hi" else 1
            group = limbs.setdefault((provider, model), dict.fromkeys(_METRICS, 0))
            group[metric] += int(_text(value)) * weight
        groups: dict[tuple[str | None, str | None], Totals] = {}
        for (provider, model), values in limbs.items():
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
            )
        return [groups[key] for key in sorted(groups, key=lambda k: (k[0] or "", k[1] or ""))]

    async def sweep(self, *, limit: int = 1000) -> int:
        self._check_open()
        if limit <= 0:
            return 0
        now = self.clock()
        due = await self._read_index(
            self._keys.deadlines, "(" + _lex_time(now.epoch_micros + 1), limit
        )
        changes = [
            (stored, expired)
            for stored in due
            if (expired := expire_if_due(stored, now)) is not None
        ]
        return await self._cas_many(changes)

    async def purge_created(self, older_than_seconds: int, *, limit: int = 1000) -> int:
        self._check_open()
        if limit <= 0:
            return 0
        cutoff = self.clock().plus_seconds(-older_than_seconds)
        candidates = await self._read_index(
            self._keys.created, "(" + _lex_time(cutoff.epoch_micros + 1), limit
        )
        doomed = [
            (stored, None)
            for stored in candidates
            if stored.record.state is Created and stored.record.created_at <= cutoff
        ]
        return await self._cas_many(doomed)

    async def ping(self) -> None:
        self._check_open()
        with self._guard():
            await _admin(self._client).ping()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    # -- tenants and API keys ----------------------------------------------------

    async def create_tenant(self, tenant_id: TenantId) -> Tenant:
        self._check_open()
        tenant = Tenant(tenant_id, self.clock())
        with self._guard():
            added = await self._client.hsetnx(
                self._keys.tenants, tenant_id.value, str(tenant.created_at.epoch_micros)
            )
        if not added:
            raise ConflictError(f"tenant {tenant_id} already exists")
        return tenant

    async def get_tenant(self, tenant_id: TenantId) -> Tenant:
        self._check_open()
        with self._guard():
            raw = await self._client.hget(self._keys.tenants, tenant_id.value)
        if raw is None:
            raise NotFoundError(f"no tenant {tenant_id}")
        return Tenant(tenant_id, _time(_text(raw)))

    async def list_tenants(self) -> list[Tenant]:
        self._check_open()
        with self._guard():
            raw = await self._client.hgetall(self._keys.tenants)
        tenants = [Tenant(TenantId(_text(k)), _time(_text(v))) for k, v in raw.items()]
        return sorted(tenants, key=lambda t: t.tenant_id)

    async def add_api_key(self, tenant_id: TenantId, key_id: str, key_hash: bytes) -> ApiKeyInfo:
        await self.get_tenant(tenant_id)
        info = ApiKeyInfo(key_id, tenant_id, key_hash, self.clock())
        value = json.dumps([tenant_id.value, key_hash.hex(), info.created_at.epoch_micros])
        keys = [self._keys.api_keys, self._keys.tenant_keys(tenant_id)]
        if not await self._eval(_ADD_KEY, keys, [key_id, value]):
            raise ConflictError(f"API key id {key_id!r} already exists")
        return info

    async def get_api_key(self, key_id: str) -> ApiKeyInfo | None:
        self._check_open()
        with self._guard():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hget(self._keys.api_keys, key_id)
                pipe.hget(self._keys.revoked, key_id)
                raw, revoked = await pipe.execute()
        return None if raw is None else _parse_key(key_id, _text(raw), revoked)

    async def list_api_keys(self, tenant_id: TenantId) -> list[ApiKeyInfo]:
        self._check_open()
        with self._guard():
            ids = sorted(
                _text(i) for i in await self._client.smembers(self._keys.tenant_keys(tenant_id))
            )
            if not ids:
                return []
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(self._keys.api_keys, ids)
                pipe.hmget(self._keys.revoked, ids)
                raws, revoked = await pipe.execute()
        keys = [
            _parse_key(key_id, _text(raw), rev)
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
        # HSETNX: of two racing revocations the first time is kept.
        with self._guard():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hsetnx(self._keys.revoked, key_id, str(self.clock().epoch_micros))
                pipe.hget(self._keys.revoked, key_id)
                _, revoked = await pipe.execute()
        return replace(info, revoked_at=_time(_text(revoked)))

    # -- helpers -----------------------------------------------------------------

    async def _read_index(self, index: str, high: str, limit: int) -> list[StoredSession]:
        """The sessions of the first ``limit`` members of a global index below ``high``."""
        with self._guard():
            members = await self._client.zrangebylex(index, "-", high, 0, limit)
            if not members:
                return []
            ids = [_member_id(_text(member)) for member in members]
            async with self._client.pipeline(transaction=False) as pipe:
                for session_id in ids:
                    pipe.hgetall(self._keys.session(session_id))
                rows: list[object] = await pipe.execute()
        found = (self._parse_session(i, row) for i, row in zip(ids, rows, strict=True))
        return [stored for stored in found if stored is not None]

    async def _cas(
        self, old: StoredSession | None, new: StoredSession | None, new_round: Round | None
    ) -> bool:
        """Write ``new`` over ``old`` (None: insert / delete) if ``old`` is still current."""
        self._check_open()
        keys, args = self._cas_arguments(old, new, new_round)
        return bool(await self._eval(_CAS, keys, args))

    async def _cas_many(self, changes: Sequence[tuple[StoredSession, StoredSession | None]]) -> int:
        """Apply many compare-and-sets in one pipeline; how many won."""
        if not changes:
            return 0
        calls = [self._cas_arguments(old, new, None) for old, new in changes]
        results: list[object] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _ in range(2):
            with self._guard():
                async with self._client.pipeline(transaction=False) as pipe:
                    for index in pending:
                        keys, args = calls[index]
                        pipe.evalsha(_CAS.sha, len(keys), *keys, *args)
                    replies: list[object] = await pipe.execute(raise_on_error=False)
                for index, reply in zip(pending, replies, strict=True):
                    results[index] = reply
                pending = [i for i in pending if isinstance(results[i], NoScriptError)]
                if not pending:
                    break
                # The server lost its scripts (restart, SCRIPT FLUSH); those calls
                # did not run. Load the script and run them again.
                await self._client.script_load(_CAS.source)
        for reply in results:
            if isinstance(reply, Exception):
                raise StoreError(f"{self._where} failed: {reply}") from reply
        return sum(1 for reply in results if reply == 1)

    async def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[str]) -> object:
        with self._guard():
            try:
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # The server lost its scripts (restart, SCRIPT FLUSH): load and retry.
                await self._client.script_load(script.source)
                return await self._client.evalsha(script.sha, len(keys), *keys, *args)

    def _cas_arguments(
        self, old: StoredSession | None, new: StoredSession | None, new_round: Round | None
    ) -> tuple[list[str], list[str]]:
        some = new if new is not None else old
        assert some is not None
        record = some.record
        session_id = record.session_id
        keys = [
            self._keys.session(session_id),
            self._keys.rounds(session_id),
            self._keys.idempotency(session_id),
            self._keys.counters(record.tenant_id),
        ]
        args = ["" if old is None else str(old.version), "put" if new is not None else "del"]
        fields = [] if new is None else _session_fields(new)
        args.append(str(len(fields) // 2))
        args.extend(fields)
        if new_round is None:
            args.extend(["", ""])
        else:
            args.extend([_round_json(new_round), new_round.idempotency_key or ""])
        old_entries = self._index_entries(old)
        new_entries = self._index_entries(new)
        positions: dict[str, int] = {}
        for entries in (old_entries - new_entries, new_entries - old_entries):
            args.append(str(len(entries)))
            for index, member in sorted(entries):
                if index not in positions:
                    keys.append(index)
                    positions[index] = len(keys)
                args.extend([str(positions[index]), member])
        increments = _counter_increments(old, new)
        args.append(str(len(increments)))
        for metric, amount in increments:
            lo_field, hi_field = (
                _counter_field(record.provider_id, record.model, metric, limb)
                for limb in ("lo", "hi")
            )
            args.extend([lo_field, hi_field, str(amount % _LIMB), str(amount // _LIMB)])
        return keys, args

    def _index_entries(self, stored: StoredSession | None) -> set[tuple[str, str]]:
        """The (sorted set, member) pairs a session is listed under."""
        if stored is None:
            return set()
        record = stored.record
        member = _member(record.created_at, record.session_id)
        entries = {
            (self._keys.by_tenant(record.tenant_id), member),
            (self._keys.by_tenant(record.tenant_id, record.state), member),
        }
        if record.state is Created:
            entries.add((self._keys.created, member))
        deadline = stored.deadline
        if deadline is not None:
            entries.add((self._keys.deadlines, _member(deadline, record.session_id)))
        return entries

    def _parse_session(self, session_id: SessionId, fields: object) -> StoredSession | None:
        if not isinstance(fields, dict) or not fields:
            return None
        row = {_text(k): _text(v) for k, v in cast(dict[object, object], fields).items()}
        try:
            record = SessionRecord(
                session_id=session_id,
                tenant_id=TenantId(row["tenant"]),
                provider_id=row["provider"],
                model=row["model"],
                initial_tokens=int(row["initial"]),
                created_at=_time(row["created"]),
                state=state_named(row["state"]),
                activated_at=_optional_time(row["activated"]),
                closed_at=_optional_time(row["closed"]),
                expired_at=_optional_time(row["expired"]),
                round_count=int(row["rounds"]),
                delta_tokens=int(row["delta"]),
            )
            return StoredSession(
                record,
                version=int(row["version"]),
                ttl_seconds=int(row["ttl"]),
                last_activity_at=_time(row["last"]),
            )
        except (KeyError, ValueError, LLMSessionError) as error:
            raise StoreError(
                f"session {session_id} in {self._where} is not a valid stored session: {error!r}"
            ) from error

    @contextmanager
    def _guard(self) -> Generator[None]:
        """Turn redis-py's errors into StoreError, naming the server but no password."""
        self._check_open()
        try:
            yield
        except NoScriptError:
            raise
        except RedisError as error:
            raise StoreError(f"{self._where} failed: {error}") from error

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("this store was closed; open a new one")


def persistence_warning(config: Mapping[str, str]) -> str | None:
    """Why a Redis with this CONFIG (appendonly, appendfsync, save) may lose acknowledged writes.

    None when every acknowledged write is on disk before Redis replies
    (``appendonly yes`` with ``appendfsync always``).
    """
    appendonly = config.get("appendonly", "")
    fsync = config.get("appendfsync", "")
    save = config.get("save", "").strip()
    if appendonly == "yes":
        if fsync == "always":
            return None
        return (
            f"appendfsync is {fsync!r}: Redis replies before the append-only file is on "
            "disk, so a crash can lose the last second or two of acknowledged rounds; "
            "set appendfsync always to lose none"
        )
    if save:
        return (
            f"appendonly is off and only RDB snapshots are taken (save {save!r}): a crash "
            "loses every round acknowledged since the last snapshot; set appendonly yes "
            "and appendfsync always"
        )
    return (
        'persistence is off (appendonly no, save ""): every session and round is lost '
        "when Redis restarts; set appendonly yes and appendfsync always"
    )


def _split_url(url: str) -> tuple[str, str, str]:
    """(URL for redis-py, key prefix, a description without password) of a store URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    if len(prefixes) > 1:
        raise InvalidInput(f"the Redis URL gives prefix {len(prefixes)} times; give it once")
    if any(name == "decode_responses" for name, _ in query):
        raise InvalidInput("the Redis URL must not set decode_responses; the store sets it")
    prefix = prefixes[0] if prefixes else DEFAULT_PREFIX
    if not prefix or not prefix.isprintable() or any(c.isspace() for c in prefix):
        raise InvalidInput(
            f"Redis key prefix {prefix!r} is not allowed: use printable characters without "
            f"spaces, e.g. the default {DEFAULT_PREFIX!r}"
        )
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    where = f"Redis at {parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"
    return urlunsplit(parts._replace(query=rest)), prefix, where


def _lex_time(micros: int) -> str:
    return format(micros + _LEX_OFFSET, f"0{_LEX_WIDTH}x")


def _member(at: Timestamp, session_id: SessionId) -> str:
    return _lex_time(at.epoch_micros) + str(session_id)


def _member_id(member: str) -> SessionId:
    return SessionId.parse(member[_LEX_WIDTH:])


def _session_fields(stored: StoredSession) -> list[str]:
    record = stored.record
    fields = {
        "tenant": record.tenant_id.value,
        "provider": record.provider_id,
        "model": record.model,
        "initial": str(record.initial_tokens),
        "state": record.state.name,
        "created": str(record.created_at.epoch_micros),
        "activated": _optional_micros(record.activated_at),
        "closed": _optional_micros(record.closed_at),
        "expired": _optional_micros(record.expired_at),
        "rounds": str(record.round_count),
        "delta": str(record.delta_tokens),
        "version": str(stored.version),
        "ttl": str(stored.ttl_seconds),
        "last": str(stored.last_activity_at.epoch_micros),
    }
    return [text for pair in fields.items() for text in pair]


def _counters(stored: StoredSession | None) -> dict[str, int]:
    # What one session adds to its group's totals; tokens_saved comes from the record.
    if stored is None:
        return {}
    record = stored.record
    return {
        f"n:{record.state.name}": 1,
        "rounds": record.round_count,
        "delta": record.delta_tokens,
        "saved": record.tokens_saved,
    }


def _counter_increments(
    old: StoredSession | None, new: StoredSession | None
) -> list[tuple[str, int]]:
    """How a change moves its group's counters: new contributions minus old ones."""
    before, after = _counters(old), _counters(new)
    changes = ((m, after.get(m, 0) - before.get(m, 0)) for m in _METRICS)
    return [(metric, amount) for metric, amount in changes if amount]


def _counter_field(provider: str, model: str, metric: str, limb: str) -> str:
    return json.dumps([provider, model, metric, limb])


def _parse_counter_field(field: str) -> tuple[str, str, str, str]:
    try:
        provider, model, metric, limb = json.loads(field)
    except ValueError as error:
        raise StoreError(f"unexpected counter field {field!r}") from error
    if metric not in _METRICS or limb not in ("lo", "hi"):
        raise StoreError(f"unexpected counter field {field!r}")
    return str(provider), str(model), str(metric), str(limb)


def _round_json(round_: Round) -> str:
    return json.dumps(
        [round_.seq, round_.delta_tokens, round_.recorded_at.epoch_micros, round_.idempotency_key]
    )


def _parse_round(session_id: SessionId, raw: str) -> Round:
    try:
        seq, delta, recorded, key = json.loads(raw)
        return Round(session_id, int(seq), int(delta), Timestamp(int(recorded)), key)
    except (ValueError, TypeError, LLMSessionError) as error:
        raise StoreError(f"a round of session {session_id} is not valid: {raw[:200]!r}") from error


def _parse_key(key_id: str, raw: str, revoked: object) -> ApiKeyInfo:
    tenant, key_hash, created = json.loads(raw)
    revoked_at = None if revoked is None else _time(_text(revoked))
    return ApiKeyInfo(
        key_id,
        TenantId(str(tenant)),
        bytes.fromhex(str(key_hash)),
        Timestamp(int(created)),
        revoked_at,
    )


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


def _optional_micros(at: Timestamp | None) -> str:
    return "" if at is None else str(at.epoch_micros)


def _time(text: str) -> Timestamp:
    return Timestamp(int(text))


def _optional_time(text: str) -> Timestamp | None:
    return None if text == "" else _time(text)


def _text(value: object) -> str:
    # The client decodes replies (decode_responses=True); bytes only if it did not.
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    raise StoreError(f"unexpected reply from Redis: {value!r:.200}")


def _items(value: object) -> list[object]:
    if not isinstance(value, list):
        raise StoreError(f"unexpected reply from Redis: {value!r:.200}")
    return list(cast(list[object], value))
