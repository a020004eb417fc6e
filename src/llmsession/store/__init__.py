"""Durable session stores, chosen by URL.

==============================  ==========================================
``memory://``                   in-process, for tests
``sqlite:///path/to/file.db``   the embedded default (WAL mode)
``postgresql://user@host/db``   many replicas, one database
``redis://host:6379/0``         many replicas, one Redis
==============================  ==========================================
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from llmsession.clock import Clock, system_clock
from llmsession.errors import InvalidInput, StoreError
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
    TimeBucket,
    TimeBucketSize,
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
    "TimeBucket",
    "TimeBucketSize",
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

    Two stores opened on one URL share its data, as two processes would, except
    ``memory://``: each call gives a new, empty MemoryStore of its own (share
    one by passing the object). Backends are imported only when chosen, so a
    SQLite user never loads a PostgreSQL or Redis driver.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from llmsession.store.memory import MemoryStore

        return MemoryStore(clock=clock, default_ttl_seconds=default_ttl_seconds)
    if scheme == "sqlite":
        from llmsession.store.sqlite import SQLiteStore

        return await SQLiteStore.open(url, clock=clock, default_ttl_seconds=default_ttl_seconds)
    if scheme in ("postgresql", "postgres"):
        try:
            from llmsession.store.postgres import PostgresStore
        except ModuleNotFoundError as error:
            raise _missing_extra(error, scheme, "postgres") from error

        return await PostgresStore.open(url, clock=clock, default_ttl_seconds=default_ttl_seconds)
    if scheme in ("redis", "rediss"):
        try:
            from llmsession.store.redis import RedisStore
        except ModuleNotFoundError as error:
            raise _missing_extra(error, scheme, "redis") from error

        return await RedisStore.open(url, clock=clock, default_ttl_seconds=default_ttl_seconds)
    raise InvalidInput(
        f"unknown store URL scheme {scheme!r} in {url!r}; use memory://, "
        "sqlite:///path/to/file.db, postgresql://... or redis://..."
    )


#: The top-level modules each backend's extra installs.
_EXTRA_MODULES: Final = {"postgres": ("psycopg", "psycopg_pool"), "redis": ("redis", "msgpack")}


def _missing_extra(error: ModuleNotFoundError, scheme: str, extra: str) -> StoreError:
    """The error for a backend whose extra is not installed; any other import error as it is."""
    missing = (error.name or "").partition(".")[0]
    if missing not in _EXTRA_MODULES[extra]:
        raise error
    return StoreError(
        f"{scheme}:// store URLs need the {extra!r} extra ({missing} is not installed): "
        f"pip install 'llmsession[{extra}]'"
    )
