"""KeyCache: tenants of recently authenticated API keys, kept for a second or so.

Authenticating reads the key from the store: with PostgreSQL or Redis that is a
network round trip, as long as the write a round needs. Keeping a successful
result for ``ttl_seconds`` halves the round trips of the hot path. The price: a
key revoked through *another* replica (or the CLI) keeps working on this one
for at most ``ttl_seconds``; a revocation through this replica takes effect at
once. Failures are never cached, and a ttl of 0 turns the cache off.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from llmsession.ids import TenantId
from llmsession.keys import authenticate, split_key
from llmsession.store.base import SessionStore

__all__ = ["KeyCache"]

MAX_ENTRIES = 10_000


class KeyCache:
    """``tenant_of(key)`` with a short positive cache in front of the store."""

    def __init__(
        self,
        store: Callable[[], SessionStore],
        ttl_seconds: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._store = store
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._max_entries = max_entries
        # Keyed by the key's SHA-256, so that no key is kept in the clear.
        self._entries: dict[bytes, tuple[TenantId, float, str]] = {}

    async def tenant_of(self, api_key: str) -> TenantId:
        """The tenant of a valid, unrevoked key; AuthenticationError otherwise."""
        if self._ttl <= 0:
            return await authenticate(self._store(), api_key)
        digest = hashlib.sha256(api_key.encode()).digest()
        now = self._monotonic()
        hit = self._entries.get(digest)
        if hit is not None and now < hit[1]:
            return hit[0]
        tenant = await authenticate(self._store(), api_key)
        parts = split_key(api_key)
        key_id = parts[0] if parts is not None else ""
        if len(self._entries) >= self._max_entries:
            self._evict(now)
        self._entries[digest] = (tenant, now + self._ttl, key_id)
        return tenant

    def forget_key(self, key_id: str) -> None:
        """Drop the cached result of one key (called when this replica revokes it)."""
        doomed = [digest for digest, entry in self._entries.items() if entry[2] == key_id]
        for digest in doomed:
            del self._entries[digest]

    def _evict(self, now: float) -> None:
        expired = [digest for digest, entry in self._entries.items() if entry[1] <= now]
        for digest in expired:
            del self._entries[digest]
        while len(self._entries) >= self._max_entries:
            # Dicts keep insertion order: the first entry is the oldest.
            del self._entries[next(iter(self._entries))]
