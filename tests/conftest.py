"""Fixtures shared by every test: the real PostgreSQL and Redis servers of this machine.

A test that needs a server it cannot reach is skipped with the reason, unless
LLMSESSION_REQUIRE_SERVICES=1 (CI sets it), where the test fails instead: CI must
never turn green by skipping.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

POSTGRES_BASE_URL = os.environ.get(
    "LLMSESSION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_BASE_URL = os.environ.get("LLMSESSION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def services_required() -> bool:
    return os.environ.get("LLMSESSION_REQUIRE_SERVICES") == "1"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or, when services are required, fail) unless host:port accepts connections."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if services_required():
        pytest.fail(f"{message}, and LLMSESSION_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(f"{message}; start it to run this test")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A store URL for a fresh SQLite file."""
    return f"sqlite:///{tmp_path / 'sessions.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A store URL on the real PostgreSQL, in a fresh schema dropped after the test."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_BASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES_BASE_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_BASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A store URL on the real Redis, under a fresh key prefix deleted after the test."""
    require_service("Redis", "127.0.0.1", 6379)
    import redis.asyncio as aioredis

    prefix = f"t{uuid.uuid4().hex[:12]}:"
    yield f"{REDIS_BASE_URL}?prefix={prefix}"
    client = aioredis.Redis.from_url(REDIS_BASE_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
