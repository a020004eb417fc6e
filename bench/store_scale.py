"""Listing and sweeping a store holding a million sessions, per backend.

Run:  .venv/bin/python bench/store_scale.py [--backends sqlite,postgresql,redis]
      [--sessions 1000000] [--tenants 100] [--big-share 0.5] [--due 100000]
      [--page-size 50] [--deep-page 200] [--runs 7] [--sweep-batch N]
      [--explain] [--json out.json]

Goals: a page of ``list_sessions`` in under 20 ms, and sweeping 100,000 due
sessions in under 5 s, with 1,000,000 sessions stored.

The sessions are built once, by the core: each is a ``SessionRecord`` taken
through ``Session`` transitions (activate, record_delta, close, expire), wrapped
in a ``StoredSession`` whose ``deadline`` and ``tokens_saved`` come from the
core too. Creating a million through ``store.create`` would take too long, so
they are bulk-loaded straight into each store's own schema, which the store
created when it was opened: ``COPY`` for PostgreSQL (then ``VACUUM ANALYZE``, as
autovacuum would do soon after such a load), one ``executemany`` transaction for
SQLite, and for Redis pipelines of the store's own compare-and-set script
(``CAS`` with ``cas_arguments``), so indexes and counters are exactly what the
store writes. Rounds are not loaded: neither listing nor sweeping reads them.

The data: ``--tenants`` tenants, one of which ("big") holds ``--big-share`` of
the sessions, created over the 30 days before the last one; 3 providers with 6
models (one rare: 0.5%); states Created 6%, Active 14%, Closed 55%, expired 25%,
plus exactly ``--due`` Active sessions whose idle deadline passed a day ago or
more. The other Active sessions are due in a day at the earliest.

Measured, for the big tenant with no filter and five filters (state, provider,
provider and model, the rare model, state and the rare model) and for a small
tenant ("t001") with none, state and the rare model: the first page,
and the page ``--deep-page`` pages in (reached by following ``next_cursor``;
for a filter with fewer pages, the last one): the median of ``--runs`` calls of
``list_sessions``, against the median of the raw driver's equivalent query in
the same run, which returns the rows without building the core's values:

- SQLite and PostgreSQL: the one indexed SELECT with the same WHERE, ORDER BY
  and LIMIT (page size + 1) the store sends, through sqlite3 / psycopg;
- Redis: ZREVRANGEBYLEX on the tenant's sets the store picks (with no state:
  all, of the model, else of the provider; with a state: that state's set of
  each matching (provider, model) group, found with HKEYS on the counters
  hash: its share of the page from each in one pipeline, merged, and those
  that may hold more read on in another) and one pipeline of HGETALLs; for a provider
  given with a model and no state, the same batches of 256 the store reads,
  matched on the raw provider field.

``--explain`` prints the plans of the SQL backends' first-page queries.

Then one full sweep: ``store.sweep(limit=--sweep-batch)`` in a loop until it
returns 0, timed, as the service's sweeper does it: by default with the store's
own batch (``store.sweep_batch``: 10,000 for Redis, 1,000 for the others);
afterwards the script checks that exactly ``--due`` sessions were expired by
it (sum of the sweeps, the store's totals and a raw count). The sweep's row
also gives the CPU seconds this process spent in it, and for Redis the
server's (``INFO cpu``): which side a sweep waits for.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import json
import random
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from _common import FreshStore, fresh_store, load, machine, median, table
from llmsession.ids import SessionId, TenantId
from llmsession.record import SessionRecord
from llmsession.session import Session
from llmsession.states import Active, Created, SessionExpired, SessionState
from llmsession.store import SessionQuery, SessionStore, StoredSession, open_store
from llmsession.store.cursor import decode_cursor
from llmsession.store.sql_rows import INSERT_COLUMNS, SESSION_COLUMNS, insert_values
from llmsession.timestamps import Timestamp

SCALE_BACKENDS = ("sqlite", "postgresql", "redis")
BIG = TenantId("big")
SMALL = TenantId("t001")
LIST_GOAL_MS = 20.0
SWEEP_GOAL_S = 5.0
DAY = 86_400

# (provider, model, weight in percent)
MODELS: tuple[tuple[str, str, float], ...] = (
    ("openai", "gpt-4o", 30.0),
    ("openai", "gpt-4o-mini", 19.5),
    ("openai", "gpt-4-legacy", 0.5),
    ("anthropic", "claude-sonnet", 25.0),
    ("anthropic", "claude-haiku", 10.0),
    ("mistral", "mistral-large", 15.0),
)
# States of the sessions that are not among the due ones, in percent.
STATES: tuple[tuple[str, float], ...] = (
    ("created", 6.0),
    ("active", 14.0),
    ("closed", 55.0),
    ("expired", 25.0),
)


@dataclass(frozen=True, slots=True)
class Filter:
    """One list_sessions query shape, for one tenant."""

    name: str
    tenant: TenantId = BIG
    state: type[SessionState] | None = None
    provider_id: str | None = None
    model: str | None = None

    def query(self, limit: int, cursor: str | None = None) -> SessionQuery:
        return SessionQuery(
            state=self.state,
            provider_id=self.provider_id,
            model=self.model,
            limit=limit,
            cursor=cursor,
        )


RARE = "gpt-4-legacy"
FILTERS = (
    Filter("none"),
    Filter("state=active", state=Active),
    Filter("provider=anthropic", provider_id="anthropic"),
    Filter("provider+model=anthropic/claude-haiku", provider_id="anthropic", model="claude-haiku"),
    Filter(f"model={RARE} (0.5%)", model=RARE),
    Filter(f"state=created+model={RARE}", state=Created, model=RARE),
    # A small tenant: its sessions are spread thin over the whole table.
    Filter("none", SMALL),
    Filter("state=created", SMALL, state=Created),
    Filter(f"model={RARE} (0.5%)", SMALL, model=RARE),
)


# -- the data ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dataset:
    sessions: list[StoredSession]
    tenants: list[TenantId]
    due: int
    built_at: Timestamp
    expired: int  # already expired before the sweep


def build(args: argparse.Namespace) -> Dataset:
    """Build ``--sessions`` StoredSessions through the core, oldest first."""
    rng = random.Random(args.seed)
    now = Timestamp(time.time_ns() // 1000)
    small = [TenantId(f"t{i:03d}") for i in range(1, args.tenants)]
    tenants = [BIG, *small]
    n = args.sessions
    due_at = set(rng.sample(range(n), args.due))
    # Created between 31 and 1 days ago: every due session's deadline is long past.
    first = now.epoch_micros - 31 * DAY * 1_000_000
    step = (30 * DAY * 1_000_000) // max(n, 1)
    model_weights = [weight for _, _, weight in MODELS]
    state_names = [name for name, _ in STATES]
    state_weights = [weight for _, weight in STATES]
    sessions: list[StoredSession] = []
    expired = 0
    for i in range(n):
        created = Timestamp(first + i * step + rng.randrange(step or 1))
        tenant = BIG if rng.random() < args.big_share or not small else rng.choice(small)
        provider, model, _ = rng.choices(MODELS, model_weights)[0]
        record = SessionRecord.new(
            session_id=SessionId.generate(created),
            tenant_id=tenant,
            provider_id=provider,
            model=model,
            initial_tokens=rng.randint(200, 20_000),
            created_at=created,
        )
        state = "due" if i in due_at else rng.choices(state_names, state_weights)[0]
        stored = _lived(record, state, now, rng)
        expired += stored.record.state is SessionExpired
        sessions.append(stored)
    return Dataset(sessions, tenants, args.due, now, expired)


def _lived(record: SessionRecord, state: str, now: Timestamp, rng: random.Random) -> StoredSession:
    """The session after a life ending in ``state``, each step taken by the core."""
    created = Session.new(record)
    if state == "created":
        return StoredSession(record, 1, 3600, record.created_at)
    activated_at = record.created_at.plus_seconds(rng.uniform(0.1, 5))
    active = created.activate(activated_at)
    rounds = rng.randint(0, 20)
    for _ in range(rounds):
        active.record_delta(rng.randint(0, 800))
    last = activated_at.plus_seconds(rounds * rng.uniform(1, 30))
    version = 2 + rounds
    if state == "active":
        # Still in use: its last round a few minutes ago, due a day from now at the earliest.
        last = Timestamp(
            max(last.epoch_micros, now.plus_seconds(-rng.uniform(0, 600)).epoch_micros)
        )
        return StoredSession(active.into_data(), version, 2 * DAY, last)
    if state == "due":
        return StoredSession(active.into_data(), version, 3600, last)
    if state == "closed":
        closed = active.close(last.plus_seconds(rng.uniform(0, 60)))
        return StoredSession(closed.into_data(), version + 1, 3600, last)
    deadline = last.plus_seconds(3600)
    return StoredSession(active.expire(deadline).into_data(), version + 1, 3600, last)


# -- backends: bulk load, raw list query, raw counts --------------------------------------


class Backend(Protocol):
    """What the benchmark does beside the store, with the raw driver."""

    async def open(self) -> None:
        """Connect the raw driver."""
        ...

    async def close(self) -> None:
        """Disconnect the raw driver."""
        ...

    async def bulk_load(self, sessions: Sequence[StoredSession]) -> None:
        """Write the sessions straight into the store's tables (or keys)."""
        ...

    async def raw_page(self, flt: Filter, limit: int, cursor: str | None) -> int:
        """The raw driver's equivalent of one list_sessions page; returns the rows read."""
        ...

    async def server_cpu(self) -> float | None:
        """The server's CPU seconds so far, if the raw driver can read them."""

    async def raw_expired(self, tenants: Sequence[TenantId]) -> int:
        """How many sessions are in state expired, counted by the raw driver."""
        ...

    async def explain(self, flt: Filter, limit: int, cursor: str | None) -> str:
        """The query plan of the raw query, where there is one."""
        ...


def _sql_where(
    flt: Filter, cursor: str | None, mark: str, uuid_value: bool
) -> tuple[str, list[Any]]:
    clauses = [f"tenant_id = {mark}"]
    params: list[Any] = [flt.tenant.value]
    if flt.state is not None:
        clauses.append(f"state = {mark}")
        params.append(flt.state.name)
    if flt.provider_id is not None:
        clauses.append(f"provider_id = {mark}")
        params.append(flt.provider_id)
    if flt.model is not None:
        clauses.append(f"model = {mark}")
        params.append(flt.model)
    if cursor is not None:
        created_at, session_id = decode_cursor(cursor)
        clauses.append(f"(created_at, session_id) < ({mark}, {mark})")
        params += [
            created_at.epoch_micros,
            session_id.value if uuid_value else session_id.value.bytes,
        ]
    return " AND ".join(clauses), params


def _list_sql(
    flt: Filter, limit: int, cursor: str | None, mark: str, uuid_value: bool
) -> tuple[str, list[Any]]:
    where, params = _sql_where(flt, cursor, mark, uuid_value)
    params.append(limit + 1)
    sql = (
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE {where} "
        f"ORDER BY created_at DESC, session_id DESC LIMIT {mark}"
    )
    return sql, params


class SQLiteBackend:
    def __init__(self, place: FreshStore) -> None:
        self.place = place
        self.conn: Any = None

    async def open(self) -> None:
        # Used from asyncio.to_thread's threads, one query at a time.
        self.conn = sqlite3.connect(self.place.raw, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA query_only = ON")

    async def close(self) -> None:
        self.conn.close()

    async def bulk_load(self, sessions: Sequence[StoredSession]) -> None:
        def load_all() -> None:
            conn = sqlite3.connect(self.place.raw, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                # due is the deadline (the 17th value), as the store writes it.
                conn.executemany(
                    f"INSERT INTO sessions ({INSERT_COLUMNS}, due) "
                    f"VALUES ({', '.join('?' * 17)}, ?17)",
                    (insert_values(s, s.record.session_id.value.bytes) for s in sessions),
                )
                conn.execute("COMMIT")
            finally:
                conn.close()

        await asyncio.to_thread(load_all)

    async def raw_page(self, flt: Filter, limit: int, cursor: str | None) -> int:
        sql, params = _list_sql(flt, limit, cursor, "?", uuid_value=False)
        rows = await asyncio.to_thread(lambda: self.conn.execute(sql, params).fetchall())
        return len(rows)

    async def server_cpu(self) -> float | None:
        return None  # SQLite runs in this process: its CPU is the client's

    async def raw_expired(self, tenants: Sequence[TenantId]) -> int:
        rows = await asyncio.to_thread(
            lambda: self.conn.execute(
                "SELECT count(*) FROM sessions WHERE state = ?", (SessionExpired.name,)
            ).fetchall()
        )
        return int(next(iter(rows))[0])

    async def explain(self, flt: Filter, limit: int, cursor: str | None) -> str:
        sql, params = _list_sql(flt, limit, cursor, "?", uuid_value=False)
        rows = await asyncio.to_thread(
            lambda: self.conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
        )
        return "; ".join(str(row[3]) for row in rows)


class PostgresBackend:
    def __init__(self, place: FreshStore) -> None:
        self.place = place
        self.conn: Any = None

    async def open(self) -> None:
        import psycopg

        self.conn = await psycopg.AsyncConnection.connect(
            self.place.raw, autocommit=True, prepare_threshold=0
        )

    async def close(self) -> None:
        await self.conn.close()

    async def bulk_load(self, sessions: Sequence[StoredSession]) -> None:
        async with self.conn.cursor() as cur:
            async with cur.copy(f"COPY sessions ({INSERT_COLUMNS}) FROM STDIN") as copy:
                for stored in sessions:
                    await copy.write_row(insert_values(stored, stored.record.session_id.value))
            # What autovacuum does soon after a load this size (the connection autocommits).
            await cur.execute("VACUUM ANALYZE sessions")

    async def raw_page(self, flt: Filter, limit: int, cursor: str | None) -> int:
        sql, params = _list_sql(flt, limit, cursor, "%s", uuid_value=True)
        cur = await self.conn.execute(sql, params)
        return len(await cur.fetchall())

    async def server_cpu(self) -> float | None:
        return None

    async def raw_expired(self, tenants: Sequence[TenantId]) -> int:
        cur = await self.conn.execute(
            "SELECT count(*) FROM sessions WHERE state = %s", (SessionExpired.name,)
        )
        row = await cur.fetchone()
        return int(row[0])

    async def explain(self, flt: Filter, limit: int, cursor: str | None) -> str:
        sql, params = _list_sql(flt, limit, cursor, "%s", uuid_value=True)
        cur = await self.conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        return "\n".join(str(row[0]) for row in await cur.fetchall())


class RedisBackend:
    def __init__(self, place: FreshStore) -> None:
        from llmsession.store.redis_schema import RedisKeys

        self.place = place
        self.keys = RedisKeys(place.name)
        self.client: Any = None

    async def open(self) -> None:
        import redis.asyncio as aioredis

        self.client = aioredis.Redis.from_url(self.place.raw, decode_responses=True)

    async def close(self) -> None:
        await self.client.aclose()

    async def bulk_load(self, sessions: Sequence[StoredSession]) -> None:
        from llmsession.store.redis_schema import CAS, cas_arguments

        await self.client.script_load(CAS.source)
        batch = 2000
        for start in range(0, len(sessions), batch):
            async with self.client.pipeline(transaction=False) as pipe:
                for stored in sessions[start : start + batch]:
                    keys, argv = cas_arguments(self.keys, None, stored, None)
                    pipe.evalsha(CAS.sha, len(keys), *keys, *argv)
                written = await pipe.execute()
            if not all(reply == [1] for reply in written):
                raise RuntimeError("a bulk-loaded session was refused by the CAS script")

    async def raw_page(self, flt: Filter, limit: int, cursor: str | None) -> int:
        from llmsession.store.redis_schema import member, member_id

        high = "(" + member(*decode_cursor(cursor)) if cursor is not None else "+"
        filtered = flt.state is None and flt.provider_id is not None and flt.model is not None
        batch = max(limit + 1, 256) if filtered else limit + 1
        found = 0
        while found <= limit:
            members = await self._members(flt, high, batch)
            async with self.client.pipeline(transaction=False) as pipe:
                for text in members:
                    pipe.hgetall(self.keys.session(member_id(text)))
                rows = await pipe.execute()
            for row in rows:
                if (flt.provider_id is None or row["provider"] == flt.provider_id) and (
                    flt.model is None or row["model"] == flt.model
                ):
                    found += 1
            if len(members) < batch:
                break
            high = "(" + members[-1]
        return min(found, limit + 1)

    async def _members(self, flt: Filter, high: str, count: int) -> list[str]:
        # The store's choice of sets. With no state: of the model, else of the
        # provider, else all. With a state: that state's set of each matching
        # (provider, model) group with sessions in it, its share of the page from
        # each, merged, and the groups that may hold more read on to a page's worth.
        if flt.state is None:
            if flt.model is not None:
                index = self.keys.by_tenant(flt.tenant, model=flt.model)
            elif flt.provider_id is not None:
                index = self.keys.by_tenant(flt.tenant, provider=flt.provider_id)
            else:
                index = self.keys.by_tenant(flt.tenant)
            return list(await self.client.zrevrangebylex(index, high, "-", 0, count))
        state = flt.state
        groups = [
            (provider, model)
            for provider, model in await self._groups(flt.tenant, state)
            if flt.provider_id in (None, provider) and flt.model in (None, model)
        ]
        names = [self.keys.by_state(flt.tenant, state, *group) for group in groups]
        per = max(1, -(-count // max(1, len(names))))
        async with self.client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zrevrangebylex(name, high, "-", 0, per)
            lists = await pipe.execute()
        first = list(heapq.merge(*lists, reverse=True))[:count]
        last = first[-1] if len(first) == count else None
        short = [
            j
            for j, members in enumerate(lists)
            if per < count and len(members) == per and (last is None or members[-1] > last)
        ]
        if not short:
            return first
        async with self.client.pipeline(transaction=False) as pipe:
            for j in short:
                pipe.zrevrangebylex(names[j], "(" + lists[j][-1], "-", 0, count - per)
            for j, members in zip(short, await pipe.execute(), strict=True):
                lists[j] += members
        return list(heapq.merge(*lists, reverse=True))[:count]

    async def _groups(self, tenant: TenantId, state: type[SessionState]) -> set[tuple[str, str]]:
        """The tenant's groups with sessions in ``state``, by its count fields."""
        counts = await self.client.hgetall(self.keys.counters(tenant))
        metric = f"n:{state.name} "
        return {
            tuple(json.loads(field.split(" ", 2)[2]))
            for field, value in counts.items()
            if field.startswith(metric) and value != "0"
        }

    async def server_cpu(self) -> float | None:
        cpu = await self.client.info("cpu")
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    async def raw_expired(self, tenants: Sequence[TenantId]) -> int:
        total = 0
        for tenant in tenants:
            groups = await self._groups(tenant, SessionExpired)
            async with self.client.pipeline(transaction=False) as pipe:
                for provider, model in groups:
                    pipe.zcard(self.keys.by_state(tenant, SessionExpired, provider, model))
                for count in await pipe.execute():
                    total += int(count)
        return total

    async def explain(self, flt: Filter, limit: int, cursor: str | None) -> str:
        return ""


def backend_for(place: FreshStore) -> Backend:
    if place.backend == "sqlite":
        return SQLiteBackend(place)
    if place.backend == "postgresql":
        return PostgresBackend(place)
    return RedisBackend(place)


# -- measuring ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListFigure:
    backend: str
    tenant: str
    filter: str
    page: str
    rows: int
    store_ms: float
    raw_ms: float

    @property
    def ratio(self) -> float:
        return self.store_ms / self.raw_ms


@dataclass(frozen=True, slots=True)
class SweepFigure:
    backend: str
    due: int
    swept: int
    calls: int
    seconds: float
    verified: bool
    detail: str
    #: CPU seconds of this process (the store's client side) during the sweep.
    client_cpu: float = 0.0
    #: CPU seconds of the server during the sweep, where the raw driver can read it.
    server_cpu: float | None = None


@dataclass
class BackendFigures:
    backend: str
    load_seconds: float = 0.0
    lists: list[ListFigure] = field(default_factory=list[ListFigure])
    sweep: SweepFigure | None = None
    plans: dict[str, str] = field(default_factory=dict[str, str])


async def measure_list(
    store: SessionStore, raw: Backend, name: str, args: argparse.Namespace
) -> Iterator[ListFigure]:
    figures: list[ListFigure] = []
    limit = args.page_size
    for flt in FILTERS:
        cursor: str | None = None
        page_no = 1
        while page_no < args.deep_page:
            page = await store.list_sessions(flt.tenant, flt.query(limit, cursor))
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
            page_no += 1
        targets: list[tuple[str, str | None]] = [("first", None)]
        if page_no > 1:
            targets.append((f"page {page_no}", cursor))
        for label, at in targets:
            ours: list[float] = []
            theirs: list[float] = []
            rows = 0
            for _ in range(args.runs):
                # Alternating, so both see the same caches and the same background load.
                t0 = time.perf_counter()
                page = await store.list_sessions(flt.tenant, flt.query(limit, at))
                t1 = time.perf_counter()
                raw_rows = await raw.raw_page(flt, limit, at)
                t2 = time.perf_counter()
                ours.append((t1 - t0) * 1000)
                theirs.append((t2 - t1) * 1000)
                rows = len(page.items)
                if rows != min(raw_rows, limit):
                    raise RuntimeError(
                        f"{name} {flt.tenant} {flt.name} {label}: the store listed "
                        f"{rows} sessions, the raw query {raw_rows} rows"
                    )
            figure = ListFigure(
                name, flt.tenant.value, flt.name, label, rows, median(ours), median(theirs)
            )
            print(
                f"  {name:10} {flt.tenant.value:4} {flt.name:40} {label:9} "
                f"store {figure.store_ms:8.2f} ms raw {figure.raw_ms:8.2f} ms",
                file=sys.stderr,
                flush=True,
            )
            figures.append(figure)
    return iter(figures)


async def expired_total(store: SessionStore, tenants: Iterable[TenantId]) -> int:
    total = 0
    for tenant in tenants:
        for group in await store.totals(tenant):
            total += group.sessions[SessionExpired.name]
    return total


async def measure_sweep(
    store: SessionStore, raw: Backend, name: str, data: Dataset, args: argparse.Namespace
) -> SweepFigure:
    store_before = await expired_total(store, data.tenants)
    raw_before = await raw.raw_expired(data.tenants)
    batch = args.sweep_batch or store.sweep_batch
    swept = 0
    calls = 0
    server_before = await raw.server_cpu()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    while True:
        calls += 1
        done = await store.sweep(limit=batch)
        swept += done
        if done == 0:
            break
    seconds = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    server_after = await raw.server_cpu()
    store_after = await expired_total(store, data.tenants)
    raw_after = await raw.raw_expired(data.tenants)
    checks = {
        "sweeps returned": swept,
        "store totals grew by": store_after - store_before,
        "raw count grew by": raw_after - raw_before,
    }
    verified = all(value == data.due for value in checks.values()) and raw_before == data.expired
    detail = ", ".join(f"{key} {value:,}" for key, value in checks.items())
    server_cpu = (
        None if server_before is None or server_after is None else server_after - server_before
    )
    return SweepFigure(
        name, data.due, swept, calls, seconds, verified, detail, client_cpu, server_cpu
    )


async def bench_backend(backend: str, data: Dataset, args: argparse.Namespace) -> BackendFigures:
    figures = BackendFigures(backend)
    async with fresh_store(backend) as place:
        raw = backend_for(place)
        # Opening the store creates its schema; the data then goes straight into it.
        store = await open_store(place.url)
        await raw.open()
        try:
            for tenant in data.tenants:
                await store.create_tenant(tenant)
            t0 = time.perf_counter()
            await raw.bulk_load(data.sessions)
            figures.load_seconds = time.perf_counter() - t0
            print(
                f"{backend}: loaded {len(data.sessions):,} sessions in "
                f"{figures.load_seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            figures.lists = list(await measure_list(store, raw, backend, args))
            if args.explain:
                for flt in FILTERS:
                    plan = await raw.explain(flt, args.page_size, None)
                    if plan:
                        figures.plans[f"{flt.tenant} {flt.name}"] = plan
                        print(f"  plan {flt.tenant} {flt.name}: {plan}", file=sys.stderr)
            figures.sweep = await measure_sweep(store, raw, backend, data, args)
            print(f"  sweep: {figures.sweep}", file=sys.stderr, flush=True)
        finally:
            await raw.close()
            await store.aclose()
    return figures


def report(all_figures: Sequence[BackendFigures], args: argparse.Namespace) -> str:
    lists = table(
        [
            "backend",
            "tenant",
            "filter",
            "page",
            "rows",
            "store p50 ms",
            "raw p50 ms",
            "store/raw",
            "< 20 ms",
        ],
        [
            [
                f.backend,
                f.tenant,
                f.filter,
                f.page,
                str(f.rows),
                f"{f.store_ms:.2f}",
                f"{f.raw_ms:.2f}",
                f"{f.ratio:.2f}x",
                "yes" if f.store_ms < LIST_GOAL_MS else "**no**",
            ]
            for figures in all_figures
            for f in figures.lists
        ],
    )
    sweeps = table(
        [
            "backend",
            "due",
            "swept",
            "sweep calls",
            "seconds",
            "sessions/s",
            "client CPU s",
            "server CPU s",
            "verified",
            "< 5 s",
        ],
        [
            [
                s.backend,
                f"{s.due:,}",
                f"{s.swept:,}",
                str(s.calls),
                f"{s.seconds:.2f}",
                f"{s.swept / s.seconds:,.0f}",
                f"{s.client_cpu:.2f}",
                "-" if s.server_cpu is None else f"{s.server_cpu:.2f}",
                "yes" if s.verified else f"**no** ({s.detail})",
                "yes" if s.seconds < SWEEP_GOAL_S else "**no**",
            ]
            for figures in all_figures
            if (s := figures.sweep) is not None
        ],
    )
    loads = ", ".join(f"{f.backend} {f.load_seconds:.0f} s" for f in all_figures)
    return (
        f"{lists}\n\n{sweeps}\n\n# bulk load of {args.sessions:,} sessions: {loads}; "
        f"page size {args.page_size}, p50 of {args.runs} runs, sweep limit per call "
        f"{args.sweep_batch or 'of each store (sweep calls above)'}"
    )


async def run(args: argparse.Namespace) -> tuple[Dataset, list[BackendFigures]]:
    t0 = time.perf_counter()
    data = build(args)
    # The million sessions stay alive for every backend; frozen, the garbage collector
    # stops walking them on each full collection, which the store under test would
    # otherwise pay for (seconds over a sweep).
    gc.collect()
    gc.freeze()
    print(
        f"built {len(data.sessions):,} sessions through the core in "
        f"{time.perf_counter() - t0:.0f} s ({data.expired:,} already expired, {data.due:,} due)",
        file=sys.stderr,
        flush=True,
    )
    results = [await bench_backend(backend, data, args) for backend in args.backends]
    return data, results


def backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCALE_BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown backends {unknown}; choose from {', '.join(SCALE_BACKENDS)}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", type=backends, default=list(SCALE_BACKENDS))
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--big-share", type=float, default=0.5, help="the big tenant's share")
    parser.add_argument("--due", type=int, default=100_000, help="Active sessions past due")
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--deep-page", type=int, default=200, help="the page number measured")
    parser.add_argument("--runs", type=int, default=7, help="runs per page; the median counts")
    parser.add_argument(
        "--sweep-batch", type=int, help="limit per sweep call (default: the store's own)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--explain", action="store_true", help="print the raw queries' plans")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not 0 <= args.due <= args.sessions or args.tenants < 1 or not 0 <= args.big_share <= 1:
        parser.error("need 0 <= --due <= --sessions, --tenants >= 1, 0 <= --big-share <= 1")
    if min(args.page_size, args.deep_page, args.runs, args.sweep_batch or 1) < 1:
        parser.error("--page-size, --deep-page, --runs and --sweep-batch must be >= 1")
    started = time.perf_counter()
    _, results = asyncio.run(run(args))
    print(f"# {machine()}; load average {load()}")
    print(report(results, args))
    print(f"# total {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                [
                    {
                        "backend": f.backend,
                        "load_seconds": f.load_seconds,
                        "lists": [asdict_list(x) for x in f.lists],
                        "sweep": None if f.sweep is None else asdict_sweep(f.sweep),
                        "plans": f.plans,
                    }
                    for f in results
                ],
                out,
                indent=2,
            )


def asdict_list(figure: ListFigure) -> dict[str, object]:
    return {
        "tenant": figure.tenant,
        "filter": figure.filter,
        "page": figure.page,
        "rows": figure.rows,
        "store_p50_ms": figure.store_ms,
        "raw_p50_ms": figure.raw_ms,
    }


def asdict_sweep(figure: SweepFigure) -> dict[str, object]:
    return {
        "due": figure.due,
        "swept": figure.swept,
        "calls": figure.calls,
        "seconds": figure.seconds,
        "verified": figure.verified,
        "detail": figure.detail,
        "client_cpu": figure.client_cpu,
        "server_cpu": figure.server_cpu,
    }


if __name__ == "__main__":
    main()
