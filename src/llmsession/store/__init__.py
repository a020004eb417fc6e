"""Durable session stores, chosen by URL.

==============================  ==========================================
``memory://``                   in-process, for tests
``sqlite:///path/to/file.db``   the embedded default (WAL mode)
``postgresql://user@host/db``   many replicas, one database
``redis://host:6379/0``         many replicas, one Redis
==============================  ==========================================
"""

from __future__ import annotations

from urllib.parse import urlsplit

from llmsession.clock import Clock, system_clock
from llmsession.errors import InvalidInput
from llmsession.store.base import (
    DEFAULT_TTL_SECONDS,
    SessionStore,
    SessionTransaction,
    VersionConflict,
    expire_if_due,
)
from llmsession.store.models import (
    ApiKeyInfo,
    GroupKey,
    KeyedRound,
    Page,
    Round,
    RoundResult,
    SessionQuery,
    StoredSession,
    Tenant,
    Totals,
)

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "ApiKeyInfo",
    "GroupKey",
    "KeyedRound",
    "Page",
    "Round",
    "RoundResult",
    "SessionQuery",
    "SessionStore",
    "SessionTransaction",
    "StoredSession",
    "Tenant",
    "Totals",
    "VersionConflict",
    "expire_if_due",
    "open_store",
]

SCHEMES = ("memory", "sqlite", "postgresql", "postgres", "redis", "rediss")


async def open_store(
    url: str, *, clock: Clock = system_clock, default_ttl_seconds: int = DEFAULT_TTL_SECONDS
) -> SessionStore:
    """Open (and on first use, create the schema of) the store at ``url``.

    Backends are imported only when chosen, so a SQLite user never loads a
    PostgreSQL or Redis driver.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from llmsession.store.memory import MemoryStore

        return MemoryStore(clock=clock, default_ttl_seconds=default_ttl_seconds)
    if scheme == "sqlite":
        from llmsession.store.sqlite import SQLiteStore

        return await SQLiteStore.open(url, clock=clock, default_ttl_seconds=default_ttl_seconds)
    if scheme in ("postgresql", "postgres"):
        from llmsession.store.postgres import PostgresStore

        return await PostgresStore.open(url, clock=clock, default_ttl_seconds=default_ttl_seconds)
    if scheme in ("redis", "rediss"):
        from llmsession.store.redis import RedisStore

        return await RedisStore.open(url, clock=clock, default_ttl_seconds=default_ttl_seconds)
    raise InvalidInput(
        f"unknown store URL scheme {scheme!r} in {url!r}; use memory://, "
        "sqlite:///path/to/file.db, postgresql://... or redis://..."
    )
