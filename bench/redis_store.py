"""The Redis store's rounds and sweeps per second, against bare redis-py doing the same I/O.

Run:  .venv/bin/python bench/redis_store.py [--url redis://127.0.0.1:6379/0] [--rounds 4000]

Every scenario writes under a fresh key prefix, deleted afterwards. Figures:

- ``record_round``, one client: the store's read, core computation and
  compare-and-set script, against a baseline of the same two round trips with
  bare redis-py (HGETALL, then one EVALSHA of a script doing HSET + RPUSH +
  HINCRBY) and no checks;
- 64 clients on 64 sessions (no contention), the same against the baseline;
- 64 clients on ONE session, through one store (its writers take turns in the
  process) and through eight stores (as eight replicas would: they race, and
  the losers of each compare-and-set retry): rounds per second and script
  calls per round;
- ``sweep`` of 5,000 due sessions, against a baseline of reading the same due
  members and hashes and writing each with one EVALSHA, unchecked.

Nothing here is a test: it reports figures. The best of ``--repeat`` runs counts.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from llmsession.clock import ManualClock
from llmsession.ids import SessionId, TenantId
from llmsession.store.models import Round, StoredSession
from llmsession.store.redis import RedisStore
from llmsession.timestamps import Timestamp

ACME = TenantId("acme")

_BASELINE_SCRIPT = """
redis.call('HSET', KEYS[1], 'rounds', ARGV[1], 'delta', ARGV[2], 'version', ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('HINCRBY', KEYS[3], 'delta', ARGV[2])
return 1
"""


@dataclass
class Figure:
    name: str
    ops: int
    seconds: float
    baseline_seconds: float | None = None
    note: str = ""

    def row(self) -> str:
        per_second = self.ops / self.seconds
        if self.baseline_seconds is None:
            base, ratio = "", ""
        else:
            base = f"{self.ops / self.baseline_seconds:,.0f}"
            ratio = f"{self.seconds / self.baseline_seconds:.2f}x"
        return f"| {self.name} | {per_second:,.0f} | {base} | {ratio} | {self.note} |"


class CountingStore(RedisStore):
    """A RedisStore that counts its compare-and-set script calls, won or lost."""

    calls = 0

    async def _cas(
        self,
        old: StoredSession | None,
        new: StoredSession | None,
        new_round: Round | None,
        absent_key: str | None = None,
    ) -> bool:
        CountingStore.calls += 1
        return await super()._cas(old, new, new_round, absent_key)


class Run:
    """One scenario's prefix, stores and cleanup."""

    def __init__(self, url: str) -> None:
        self.base_url = url
        self.prefix = f"bench{uuid.uuid4().hex[:10]}:"
        self.clock = ManualClock(Timestamp(time.time_ns() // 1000))
        self.stores: list[CountingStore] = []

    @property
    def url(self) -> str:
        return f"{self.base_url}?prefix={self.prefix}"

    async def store(self) -> CountingStore:
        store = await CountingStore.open(self.url, clock=self.clock, default_ttl_seconds=60)
        assert isinstance(store, CountingStore)
        self.stores.append(store)
        return store

    async def close(self) -> None:
        for store in self.stores:
            await store.aclose()
        client = redis.Redis.from_url(self.base_url)
        keys = list(client.scan_iter(match=f"{self.prefix}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()


async def _active(store: RedisStore) -> SessionId:
    made = await store.create(ACME, provider_id="p", model="m", initial_tokens=1000)
    await store.activate(ACME, made.record.session_id)
    return made.record.session_id


async def _timed(work: Callable[[], Awaitable[None]]) -> float:
    start = time.perf_counter()
    await work()
    return time.perf_counter() - start


async def store_rounds(
    url: str, clients: int, rounds: int, *, sessions: int, stores: int
) -> tuple[float, int]:
    """Seconds for ``rounds`` rounds from ``clients`` clients; and script calls made."""
    run = Run(url)
    try:
        opened = [await run.store() for _ in range(stores)]
        ids = [await _active(opened[0]) for _ in range(sessions)]
        CountingStore.calls = 0

        async def client(number: int) -> None:
            store = opened[number % stores]
            session_id = ids[number % sessions]
            for n in range(rounds // clients):
                await store.record_round(ACME, session_id, 1, idempotency_key=f"{number}-{n}")

        seconds = await _timed(lambda: _gather([client(c) for c in range(clients)]))
        return seconds, CountingStore.calls
    finally:
        await run.close()


async def baseline_rounds(url: str, clients: int, rounds: int) -> float:
    run = Run(url)
    client = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(url, decode_responses=True)
    )
    try:
        sha = await client.script_load(_BASELINE_SCRIPT)
        for number in range(clients):
            await client.hset(f"{run.prefix}s:{number}", mapping={"rounds": 0, "delta": 0})

        async def one(number: int) -> None:
            key = f"{run.prefix}s:{number}"
            for n in range(rounds // clients):
                row = await client.hgetall(key)
                count = int(row["rounds"]) + 1
                await client.evalsha(
                    sha, 3, key, f"{run.prefix}r:{number}", f"{run.prefix}agg",
                    count, int(row["delta"]) + 1, count, f"[{count},1,0,\"{number}-{n}\"]",
                )  # fmt: skip

        return await _timed(lambda: _gather([one(c) for c in range(clients)]))
    finally:
        await client.aclose()
        await run.close()


async def sweep(url: str, sessions: int) -> float:
    run = Run(url)
    try:
        store = await run.store()
        for _ in range(sessions):
            await _active(store)
        run.clock.advance(61)

        async def work() -> None:
            expired = await store.sweep(limit=sessions)
            assert expired == sessions, expired

        return await _timed(work)
    finally:
        await run.close()


async def baseline_sweep(url: str, sessions: int) -> float:
    run = Run(url)
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        sha = await client.script_load(_BASELINE_SCRIPT)
        async with client.pipeline(transaction=False) as pipe:
            for number in range(sessions):
                pipe.zadd(f"{run.prefix}deadlines", {f"{number:016x}": 0})
                pipe.hset(f"{run.prefix}s:{number}", mapping={"rounds": 0, "delta": 0})
            await pipe.execute()

        async def work() -> None:
            members = await client.zrangebylex(f"{run.prefix}deadlines", "-", "+", 0, sessions)
            async with client.pipeline(transaction=False) as pipe:
                for name in members:
                    pipe.hgetall(f"{run.prefix}s:{int(name, 16)}")
                await pipe.execute()
            async with client.pipeline(transaction=False) as pipe:
                for name in members:
                    number = int(name, 16)
                    pipe.evalsha(
                        sha, 3, f"{run.prefix}s:{number}", f"{run.prefix}r:{number}",
                        f"{run.prefix}agg", 0, 0, 2, "",
                    )  # fmt: skip
                    pipe.zrem(f"{run.prefix}deadlines", name)
                await pipe.execute()

        return await _timed(work)
    finally:
        await client.aclose()
        await run.close()


async def _gather(coroutines: list[Coroutine[object, object, None]]) -> None:
    await asyncio.gather(*coroutines)


async def best(repeat: int, measure: Callable[[], Awaitable[float]]) -> float:
    return min([await measure() for _ in range(repeat)])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=3200)
    parser.add_argument("--sweep", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rounds: int = args.rounds
    repeat: int = args.repeat

    figures: list[Figure] = []
    one = await best(
        repeat, lambda: _first(store_rounds(args.url, 1, rounds // 4, sessions=1, stores=1))
    )
    base = await best(repeat, lambda: baseline_rounds(args.url, 1, rounds // 4))
    figures.append(Figure("record_round, 1 client", rounds // 4, one, base))
    many = await best(
        repeat, lambda: _first(store_rounds(args.url, 64, rounds, sessions=64, stores=1))
    )
    base = await best(repeat, lambda: baseline_rounds(args.url, 64, rounds))
    figures.append(Figure("record_round, 64 clients, 64 sessions", rounds, many, base))
    for stores in (1, 8):
        results = [
            await store_rounds(args.url, 64, rounds, sessions=1, stores=stores)
            for _ in range(repeat)
        ]
        seconds, calls = min(results)
        figures.append(
            Figure(
                f"record_round, 64 clients, 1 session, {stores} store(s)",
                rounds,
                seconds,
                note=f"{calls / rounds:.2f} script calls per round",
            )
        )
    swept = await best(repeat, lambda: sweep(args.url, args.sweep))
    base = await best(repeat, lambda: baseline_sweep(args.url, args.sweep))
    figures.append(Figure(f"sweep {args.sweep} due sessions (sessions/s)", args.sweep, swept, base))

    client = redis.Redis.from_url(args.url)
    version = client.info("server")["redis_version"]
    client.close()
    print(
        f"Python {platform.python_version()}, redis-py {redis.__version__}, "
        f"Redis {version}, best of {repeat}"
    )
    print("| scenario | ops/s | baseline ops/s | time vs baseline | note |")
    print("|---|---:|---:|---:|---|")
    for figure in figures:
        print(figure.row())


async def _first(measure: Awaitable[tuple[float, int]]) -> float:
    return (await measure)[0]


if __name__ == "__main__":
    asyncio.run(main())
