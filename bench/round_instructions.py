"""Instructions per Redis round: the store's own Python, its whole round, and a raw redis-py call.

Run:  .venv/bin/python bench/round_instructions.py [--url redis://127.0.0.1:6379/0]

Time on a shared machine is noisy; instruction counts are not. Each figure is
``valgrind --tool=callgrind`` run twice on a child of this script, once with
500 and once with 2,500 operations, the difference divided by 2,000, so start-up
and imports cancel out (about two minutes in all). Three children:

- ``store``: ``RedisStore.record_round`` on one Active session with the store's
  Redis call (``_run_writer``) replaced by a stub answering ``[1]``, so only the
  store's own work counts: the retry loop, the session's group, the core's
  computation, the ``CAS`` arguments, the write queue;
- ``whole``: the same rounds with the store's real Redis call, the whole
  client side of a store round;
- ``raw``: one ``EVALSHA`` of the raw round script of ``bench/store_rounds.py``
  through redis-py, the whole client side of the raw baseline (system calls
  are not counted: valgrind counts user-space instructions).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path

from _common import REDIS_BASE_URL, redis_delete_prefix

SMALL, LARGE = 500, 2500


async def store_rounds(url: str, count: int, *, stubbed: bool = True) -> None:
    from llmsession.ids import TenantId
    from llmsession.store.redis import RedisStore

    prefix = f"instructions_{uuid.uuid4().hex[:12]}:"
    store = await RedisStore.open(f"{url}?prefix={prefix}")
    try:
        tenant = TenantId("bench")
        created = await store.create(
            tenant, provider_id="openai", model="gpt-4o", initial_tokens=1200
        )
        session_id = created.record.session_id
        await store.activate(tenant, session_id)
        await store.record_round(tenant, session_id, 7)

        async def stub(*_: object) -> object:
            return [1]

        if stubbed:
            store._run_writer = stub  # type: ignore[method-assign]
        for _ in range(count):
            await store.record_round(tenant, session_id, 7)
    finally:
        await store.aclose()
        await redis_delete_prefix(url, prefix)


async def raw_calls(url: str, count: int) -> None:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import parse_url

    from store_rounds import _REDIS_ROUND

    pool = aioredis.BlockingConnectionPool(decode_responses=True, **parse_url(url))
    client = aioredis.Redis.from_pool(pool)
    prefix = f"instructions_{uuid.uuid4().hex[:12]}:"
    try:
        sha = await client.script_load(_REDIS_ROUND)
        for _ in range(count):
            await client.evalsha(sha, 2, f"{prefix}s", f"{prefix}r", 7, 1_795_000_000_000_000)
    finally:
        await client.aclose()
        await redis_delete_prefix(url, prefix)


def instructions(kind: str, url: str, count: int) -> int:
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(Path(__file__)),
            "--url",
            url,
            "--child",
            kind,
            "--count",
            str(count),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default=REDIS_BASE_URL)
    parser.add_argument("--child", choices=["store", "whole", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "store":
        asyncio.run(store_rounds(args.url, args.count))
        return
    if args.child == "whole":
        asyncio.run(store_rounds(args.url, args.count, stubbed=False))
        return
    if args.child == "raw":
        asyncio.run(raw_calls(args.url, args.count))
        return
    for kind, label in (
        ("store", "store's own work per round"),
        ("whole", "store's whole round, its Redis call included"),
        ("raw", "raw redis-py call"),
    ):
        small = instructions(kind, args.url, SMALL)
        large = instructions(kind, args.url, LARGE)
        print(f"{label}: {(large - small) // (LARGE - SMALL):,} instructions")


if __name__ == "__main__":
    main()
