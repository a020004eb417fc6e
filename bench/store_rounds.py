"""record_round throughput and latency per store, against the raw driver in the same run.

Run:  .venv/bin/python bench/store_rounds.py [--backends memory,sqlite,postgresql,redis]
      [--duration 3] [--warmup 0.5] [--clients 32] [--pool 10] [--json out.json]

For each backend, in a fresh database (a temporary SQLite file, a new PostgreSQL
schema, a new Redis key prefix, all removed at the end), three cases:

- 1 client recording rounds back to back on one Active session;
- N clients (asyncio tasks in this process), each on its own session;
- N clients all on one session (contended).

Each case runs ``--warmup`` seconds unmeasured, then ``--duration`` seconds
measured, first through ``store.record_round`` and then through the raw driver
doing the equivalent single write on other sessions of the same tables (the
store creates them; the raw writer uses them directly):

- SQLite (sqlite3, one connection in WAL mode with synchronous=FULL like the
  store's writer, on one thread of its own, the whole transaction in one hop
  to that thread, the fastest shape the driver allows): ``BEGIN IMMEDIATE``;
  ``UPDATE sessions SET round_count = round_count + 1, delta_tokens =
  delta_tokens + ?, version = version + 1, last_activity_at = ?, deadline = ?
  WHERE session_id = ? RETURNING round_count, delta_tokens, version``; ``INSERT
  INTO rounds`` the round with that seq, and the session's delta_tokens and
  version after it, as the store keeps them; ``COMMIT``.
- PostgreSQL (psycopg 3 async, an AsyncConnectionPool with as many connections
  as the store's, autocommit, statements prepared on first use like the
  store's): one statement, one transaction: ``WITH u AS (UPDATE sessions SET
  <the same columns> WHERE session_id = %s RETURNING session_id, round_count,
  delta_tokens, version) INSERT INTO rounds ... SELECT ... FROM u``.
- Redis (redis-py with hiredis, the same BlockingConnectionPool as the store):
  one EVALSHA of a Lua script that HINCRBYs the session hash's ``rounds``,
  ``delta`` and ``version``, sets ``last``, and RPUSHes the round's JSON onto
  the session's round list. The store sends its single writes over one
  connection of its pool kept for them; ``--redis-raw-connection single`` gives
  the raw writer one kept connection too (a redis-py
  ``single_connection_client``, which its clients share in turn), a harder
  baseline for one client, and a slower one for many.

The raw writer checks nothing: not the state, not the deadline, not the
idempotency key or token bounds, and keeps no tokens_saved, tenant counters or
Redis indexes. That is what the store's price is measured against; the goal is
a store throughput of at least 0.7x the raw one. The memory store has no raw
counterpart and is shown for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from _common import BACKENDS, FreshStore, fresh_store, load, machine, percentile, table
from llmsession.ids import SessionId, TenantId
from llmsession.store import SessionStore, open_store

TENANT = TenantId("bench")
DELTA = 7
TTL_SECONDS = 3600

Op = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Measured:
    """Completed rounds, wall seconds, this process's CPU seconds, latencies (s)."""

    rounds: int
    seconds: float
    cpu_seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.rounds / self.seconds

    @property
    def cpu_us(self) -> float:
        """This process's CPU time per round: the client side's price, whatever the load."""
        return self.cpu_seconds / self.rounds * 1e6

    def ms(self, fraction: float) -> float:
        return percentile(self.latencies, fraction) * 1000

    def __add__(self, other: Measured) -> Measured:
        return Measured(
            self.rounds + other.rounds,
            self.seconds + other.seconds,
            self.cpu_seconds + other.cpu_seconds,
            self.latencies + other.latencies,
        )


@dataclass(frozen=True, slots=True)
class Row:
    backend: str
    clients: str
    store: Measured
    raw: Measured | None

    @property
    def ratio(self) -> float | None:
        return None if self.raw is None else self.store.rate / self.raw.rate

    def summary(self) -> dict[str, object]:
        def figures(m: Measured | None) -> dict[str, float | int] | None:
            if m is None:
                return None
            return {
                "rounds": m.rounds,
                "seconds": m.seconds,
                "rounds_per_s": m.rate,
                "p50_ms": m.ms(0.5),
                "p99_ms": m.ms(0.99),
                "cpu_us_per_round": m.cpu_us,
            }

        return {
            "backend": self.backend,
            "clients": self.clients,
            "store": figures(self.store),
            "raw": figures(self.raw),
            "ratio": self.ratio,
        }


async def drive(ops: Sequence[Op], seconds: float) -> Measured:
    """Run each op in its own task back to back for ``seconds``; time every call."""
    latencies: list[list[float]] = [[] for _ in ops]
    cpu_start = time.process_time()
    start = time.perf_counter()
    end = start + seconds

    async def client(op: Op, mine: list[float]) -> float:
        clock = time.perf_counter
        t0 = clock()
        while t0 < end:
            await op()
            t1 = clock()
            mine.append(t1 - t0)
            t0 = t1
        return t0

    pairs = zip(ops, latencies, strict=True)
    finished = await asyncio.gather(*(client(op, mine) for op, mine in pairs))
    cpu = time.process_time() - cpu_start
    flat = [value for mine in latencies for value in mine]
    return Measured(len(flat), max(finished) - start, cpu, flat)


async def compare(
    ours: Sequence[Op], theirs: Sequence[Op] | None, args: argparse.Namespace
) -> tuple[Measured, Measured | None]:
    """Warm both up, then alternate measured slices so both see the same background load."""
    await drive(ours, args.warmup)
    if theirs is not None:
        await drive(theirs, args.warmup)
    slice_seconds = args.duration / args.slices
    store_total: Measured | None = None
    raw_total: Measured | None = None
    for _ in range(args.slices):
        measured = await drive(ours, slice_seconds)
        store_total = measured if store_total is None else store_total + measured
        if theirs is not None:
            measured = await drive(theirs, slice_seconds)
            raw_total = measured if raw_total is None else raw_total + measured
    assert store_total is not None
    return store_total, raw_total


# -- sessions ---------------------------------------------------------------------


async def active_sessions(store: SessionStore, count: int) -> list[SessionId]:
    ids: list[SessionId] = []
    for _ in range(count):
        stored = await store.create(
            TENANT,
            provider_id="openai",
            model="gpt-4o",
            initial_tokens=1200,
            ttl_seconds=TTL_SECONDS,
        )
        await store.activate(TENANT, stored.record.session_id)
        ids.append(stored.record.session_id)
    return ids


def store_ops(store: SessionStore, targets: Sequence[SessionId]) -> list[Op]:
    def op_for(session_id: SessionId) -> Op:
        return lambda: store.record_round(TENANT, session_id, DELTA)

    return [op_for(session_id) for session_id in targets]


# -- raw writers ----------------------------------------------------------------------


def now_micros() -> int:
    return time.time_ns() // 1000


class RawWriter(Protocol):
    """The raw driver's equivalent of recording a round; see the module docstring."""

    async def open(self) -> None: ...

    def op(self, session_id: SessionId) -> Op: ...

    async def close(self) -> None: ...


_SQLITE_UPDATE = (
    "UPDATE sessions SET round_count = round_count + 1, delta_tokens = delta_tokens + ?, "
    "version = version + 1, last_activity_at = ?, deadline = ? WHERE session_id = ? "
    "RETURNING round_count, delta_tokens, version"
)
_SQLITE_INSERT = (
    "INSERT INTO rounds (session_id, seq, delta_tokens, recorded_at, idempotency_key, "
    "session_delta_tokens, session_version) VALUES (?, ?, ?, ?, NULL, ?, ?)"
)


class SQLiteRaw:
    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        # One thread owns the connection, as in the store; each round is one hop.
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-raw")

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            return conn

        self.conn = await asyncio.get_running_loop().run_in_executor(self.thread, connect)

    def op(self, session_id: SessionId) -> Op:
        key = session_id.value.bytes
        loop = asyncio.get_running_loop()

        def transaction() -> None:
            conn = self.conn
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                now = now_micros()
                seq, total, version = conn.execute(
                    _SQLITE_UPDATE, (DELTA, now, now + TTL_SECONDS * 1_000_000, key)
                ).fetchone()
                conn.execute(_SQLITE_INSERT, (key, seq, DELTA, now, total, version))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        async def write() -> None:
            await loop.run_in_executor(self.thread, transaction)

        return write

    async def close(self) -> None:
        if self.conn is not None:
            await asyncio.get_running_loop().run_in_executor(self.thread, self.conn.close)
        self.thread.shutdown()


_PG_WRITE = (
    "WITH u AS (UPDATE sessions SET round_count = round_count + 1, "
    "delta_tokens = delta_tokens + %s, version = version + 1, last_activity_at = %s, "
    "deadline = %s WHERE session_id = %s RETURNING session_id, round_count, delta_tokens, "
    "version) INSERT INTO rounds (session_id, seq, delta_tokens, recorded_at, idempotency_key, "
    "session_delta_tokens, session_version) "
    "SELECT session_id, round_count, %s, %s, NULL, delta_tokens, version FROM u"
)


class PostgresRaw:
    def __init__(self, url: str, pool_size: int) -> None:
        self.url = url
        self.pool_size = pool_size
        self.pool: Any = None

    async def open(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        self.pool = AsyncConnectionPool(
            self.url,
            kwargs={"autocommit": True, "prepare_threshold": 0},
            min_size=self.pool_size,
            max_size=self.pool_size,
            open=False,
        )
        await self.pool.open(wait=True)

    def op(self, session_id: SessionId) -> Op:
        key = session_id.value

        async def write() -> None:
            now = now_micros()
            async with self.pool.connection() as conn:
                cur = await conn.execute(
                    _PG_WRITE, (DELTA, now, now + TTL_SECONDS * 1_000_000, key, DELTA, now)
                )
                if cur.rowcount != 1:
                    raise RuntimeError(f"raw write to {session_id} wrote {cur.rowcount} rows")

        return write

    async def close(self) -> None:
        await self.pool.close()


_REDIS_ROUND = """
local seq = redis.call('HINCRBY', KEYS[1], 'rounds', 1)
redis.call('HINCRBY', KEYS[1], 'delta', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'last', ARGV[2])
redis.call('RPUSH', KEYS[2], '[' .. seq .. ',' .. ARGV[1] .. ',' .. ARGV[2] .. ',null]')
return seq
"""


class RedisRaw:
    def __init__(self, url: str, prefix: str, *, single_connection: bool = False) -> None:
        from llmsession.store.redis_schema import RedisKeys

        self.url = url
        self.keys = RedisKeys(prefix)
        self.single_connection = single_connection
        self.pooled: Any = None
        self.client: Any = None
        self.sha = ""

    async def open(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.connection import parse_url

        pool = aioredis.BlockingConnectionPool(decode_responses=True, **parse_url(self.url))
        self.pooled = self.client = aioredis.Redis.from_pool(pool)
        if self.single_connection:
            self.client = aioredis.Redis(connection_pool=pool, single_connection_client=True)
        self.sha = await self.client.script_load(_REDIS_ROUND)

    def op(self, session_id: SessionId) -> Op:
        session_key = self.keys.session(session_id)
        rounds_key = self.keys.rounds(session_id)

        async def write() -> None:
            await self.client.evalsha(self.sha, 2, session_key, rounds_key, DELTA, now_micros())

        return write

    async def close(self) -> None:
        if self.client is not self.pooled:
            await self.client.aclose()
        await self.pooled.aclose()


def raw_writer(place: FreshStore, args: argparse.Namespace) -> RawWriter | None:
    if place.backend == "sqlite":
        return SQLiteRaw(place.raw)
    if place.backend == "postgresql":
        return PostgresRaw(place.raw, args.pool)
    if place.backend == "redis":
        single = args.redis_raw_connection == "single"
        return RedisRaw(place.raw, place.name, single_connection=single)
    return None


# -- the run ----------------------------------------------------------------------------


async def bench_backend(backend: str, args: argparse.Namespace) -> list[Row]:
    options = f"pool_min={args.pool}&pool_max={args.pool}"
    rows: list[Row] = []
    async with fresh_store(backend, url_options=options) as place:
        store = await open_store(place.url)
        raw = raw_writer(place, args)
        try:
            await store.create_tenant(TENANT)
            if raw is not None:
                await raw.open()
            n = args.clients
            cases = [("1", 1, False), (str(n), n, False), (f"{n} on 1 session", n, True)]
            for label, clients, contended in cases:
                # Separate sessions for the store and the raw writer: the raw writer
                # leaves rows the store's remembered versions no longer match.
                sessions = 1 if contended else clients
                ours = await active_sessions(store, sessions)
                theirs = await active_sessions(store, sessions)
                if contended:
                    ours, theirs = ours * clients, theirs * clients
                measured, raw_measured = await compare(
                    store_ops(store, ours),
                    None if raw is None else [raw.op(s) for s in theirs],
                    args,
                )
                row = Row(backend, label, measured, raw_measured)
                print(format_row(row), file=sys.stderr, flush=True)
                rows.append(row)
        finally:
            if raw is not None:
                await raw.close()
            await store.aclose()
    return rows


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_row(row: Row) -> str:
    raw = row.raw
    return (
        f"{row.backend:10} {row.clients:>16} {row.store.rate:8.0f}/s "
        f"raw {_opt(None if raw is None else raw.rate, '8.0f')}/s ratio {_opt(row.ratio, '.2f')} "
        f"p50 {row.store.ms(0.5):.2f} ms p99 {row.store.ms(0.99):.2f} ms "
        f"cpu {row.store.cpu_us:.0f}/{_opt(None if raw is None else raw.cpu_us, '.0f')} us"
    )


def report(rows: Sequence[Row]) -> str:
    headers = [
        "backend",
        "clients",
        "store rounds/s",
        "raw rounds/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "raw p50 ms",
        "raw p99 ms",
        "CPU µs/round store",
        "CPU µs/round raw",
    ]
    body: list[list[str]] = []
    for row in rows:
        raw = row.raw
        body.append(
            [
                row.backend,
                row.clients,
                f"{row.store.rate:,.0f}",
                _opt(None if raw is None else raw.rate, ",.0f"),
                _opt(row.ratio, ".2f") + ("x" if row.ratio is not None else ""),
                f"{row.store.ms(0.5):.2f}",
                f"{row.store.ms(0.99):.2f}",
                _opt(None if raw is None else raw.ms(0.5), ".2f"),
                _opt(None if raw is None else raw.ms(0.99), ".2f"),
                f"{row.store.cpu_us:.0f}",
                _opt(None if raw is None else raw.cpu_us, ".0f"),
            ]
        )
    return table(headers, body)


async def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    for backend in args.backends:
        rows += await bench_backend(backend, args)
    return rows


def backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown backends {unknown}; choose from {', '.join(BACKENDS)}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", type=backends, default=list(BACKENDS))
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per case")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument(
        "--slices", type=int, default=3, help="alternate store and raw this many times per case"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument(
        "--pool", type=int, default=10, help="PostgreSQL connections, store and raw"
    )
    parser.add_argument(
        "--redis-raw-connection",
        choices=["pool", "single"],
        default="pool",
        help="the Redis raw writer's connection: from its pool per call, or one kept",
    )
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.duration <= 0 or args.warmup < 0 or min(args.clients, args.pool, args.slices) < 1:
        parser.error("--duration must be > 0, --warmup >= 0, --clients, --pool, --slices >= 1")
    started = time.perf_counter()
    rows = asyncio.run(run(args))
    print(
        f"# {machine()}; {args.duration:g} s per case and side in {args.slices} alternating "
        f"slices, after {args.warmup:g} s warm-up; load average {load()}"
    )
    print(report(rows))
    print(f"# total {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as out:
            json.dump([row.summary() for row in rows], out, indent=2)


if __name__ == "__main__":
    main()
