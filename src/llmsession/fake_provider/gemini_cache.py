"""Gemini's explicit cache, as the fake keeps it: ``cachedContents`` entries with a TTL.

- An entry holds a prompt prefix (its system instruction, then its contents) for
  one API key and one model; another key sees it as missing, and a request for
  another model cannot use it.
- It needs at least :func:`min_cache_tokens` tokens: 1,024 for Flash models,
  4,096 for Pro models (a model whose name contains ``pro``), as Gemini's
  docs state for 2.5 and 3 models.
- It lives until its ``expireTime`` (now + ``ttl`` at creation, moved by a
  ``PATCH``; 1 hour when neither is given) or until it is deleted. An expired
  entry is gone for every request, as if deleted.
- Implicit caching uses the OpenAI-style prefix cache of the fake
  (:mod:`llmsession.fake_provider.prefix_cache`) with the same per-model minimum.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "CacheEntry",
    "GeminiCacheStore",
    "min_cache_tokens",
]

#: An entry's TTL when the create request gives none (Gemini's default).
DEFAULT_TTL_SECONDS: Final = 3600.0


def min_cache_tokens(model: str) -> int:
    """The fewest tokens Gemini caches for ``model``, explicitly or implicitly."""
    return 4096 if "pro" in model.lower() else 1024


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One ``cachedContents`` entry: whose, for which model, what it holds, until when."""

    name: str
    key_fingerprint: str
    model: str
    display_name: str
    #: The prompt prefix it holds, as the fake's tokens.
    tokens: tuple[str, ...]
    #: The text of the last user content it holds (the fake model answers the last one).
    last_user_text: str
    #: When it was created and when it expires, in the store's clock (seconds).
    created_at: float
    expires_at: float
    #: Wall-clock seconds of creation, for the answer's ``createTime``.
    created_wall: float


class GeminiCacheStore:
    """Entries by name; ``clock`` gives monotonic seconds for the TTL."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: dict[str, CacheEntry] = {}

    def now(self) -> float:
        return self._clock()

    def add(
        self,
        *,
        key_fingerprint: str,
        model: str,
        display_name: str,
        tokens: tuple[str, ...],
        last_user_text: str,
        ttl_seconds: float,
        created_wall: float,
    ) -> CacheEntry:
        now = self._clock()
        entry = CacheEntry(
            name="cachedContents/" + secrets.token_hex(8),
            key_fingerprint=key_fingerprint,
            model=model,
            display_name=display_name,
            tokens=tokens,
            last_user_text=last_user_text,
            created_at=now,
            expires_at=now + ttl_seconds,
            created_wall=created_wall,
        )
        self._entries[entry.name] = entry
        return entry

    def get(self, name: str, key_fingerprint: str) -> CacheEntry | None:
        """The live entry of this key, or None (missing, another key's, or expired)."""
        entry = self._entries.get(name)
        if entry is None or entry.key_fingerprint != key_fingerprint:
            return None
        if entry.expires_at <= self._clock():
            del self._entries[name]
            return None
        return entry

    def set_ttl(self, name: str, key_fingerprint: str, ttl_seconds: float) -> CacheEntry | None:
        entry = self.get(name, key_fingerprint)
        if entry is None:
            return None
        entry = replace(entry, expires_at=self._clock() + ttl_seconds)
        self._entries[name] = entry
        return entry

    def delete(self, name: str, key_fingerprint: str) -> bool:
        if self.get(name, key_fingerprint) is None:
            return False
        del self._entries[name]
        return True

    def live(self) -> list[CacheEntry]:
        """Every entry not expired, oldest first."""
        now = self._clock()
        for name in [n for n, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[name]
        return sorted(self._entries.values(), key=lambda entry: entry.created_at)

    def clear(self) -> None:
        self._entries.clear()
