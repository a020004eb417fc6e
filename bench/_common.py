"""What the store benchmarks share: fresh databases per run, percentiles, tables.

Every run gets its own data: a SQLite file in a temporary directory, a
PostgreSQL schema created for the run (``?options=-csearch_path%3D<schema>``,
as tests/conftest.py does) and a Redis key prefix (``?prefix=``). All three are
removed at the end, also when the run fails.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BACKENDS",
    "POSTGRES_BASE_URL",
    "REDIS_BASE_URL",
    "FreshStore",
    "fresh_store",
    "load",
    "machine",
    "median",
    "percentile",
    "redis_delete_prefix",
    "table",
]

POSTGRES_BASE_URL = os.environ.get(
    "LLMSESSION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_BASE_URL = os.environ.get("LLMSESSION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

BACKENDS = ("memory", "sqlite", "postgresql", "redis")


@dataclass(frozen=True, slots=True)
class FreshStore:
    """Where one run's store lives.

    ``url`` is the store URL; ``raw`` what the raw driver connects to: the SQLite
    file path, the PostgreSQL URL with the schema's search_path, or the Redis URL
    without the store's options; ``name`` the schema or the key prefix.
    """

    backend: str
    url: str
    raw: str
    name: str


@asynccontextmanager
async def fresh_store(backend: str, *, url_options: str = "") -> AsyncIterator[FreshStore]:
    """A fresh place for ``backend``'s store, removed afterwards.

    ``url_options`` (``a=1&b=2``) is added to the store URL of PostgreSQL.
    """
    if backend == "memory":
        yield FreshStore(backend, "memory://", "", "")
    elif backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="llmsession-bench-") as directory:
            path = Path(directory) / "sessions.db"
            yield FreshStore(backend, f"sqlite:///{path}", str(path), str(path))
    elif backend == "postgresql":
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:12]}"
        async with await psycopg.AsyncConnection.connect(
            POSTGRES_BASE_URL, autocommit=True
        ) as conn:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        raw = f"{POSTGRES_BASE_URL}?options=-csearch_path%3D{schema}"
        extra = f"&{url_options}" if url_options else ""
        try:
            yield FreshStore(backend, raw + extra, raw, schema)
        finally:
            async with await psycopg.AsyncConnection.connect(
                POSTGRES_BASE_URL, autocommit=True
            ) as conn:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    elif backend == "redis":
        prefix = f"bench{uuid.uuid4().hex[:12]}:"
        try:
            yield FreshStore(backend, f"{REDIS_BASE_URL}?prefix={prefix}", REDIS_BASE_URL, prefix)
        finally:
            await redis_delete_prefix(REDIS_BASE_URL, prefix)
    else:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


async def redis_delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN + UNLINK in batches); returns how many."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=10_000):
            batch.append(key)
            if len(batch) >= 10_000:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; every column but the first two right-aligned."""
    align = ["---" if i < 2 else "---:" for i in range(len(headers))]
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def machine() -> str:
    """One line naming the interpreter and the machine, for the report."""
    return (
        f"Python {platform.python_version()} on {platform.machine()} {sys.platform}, "
        f"{os.cpu_count()} CPUs"
    )


def load() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was besides this run."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
