"""OpenAI's prompt caching rules, as the fake applies them.

- A prompt is cacheable only from 1,024 tokens; cached prefixes come in steps of
  128 tokens (1,024, 1,152, 1,280, ...).
- A request that processed a prompt writes each of its step prefixes to the cache;
  a later request whose prompt starts with one of them reads it. ``cached_tokens``
  is the longest cached step prefix, never the whole prompt's odd tail.
- The cache is partitioned by a scope: the API key, the model and the request's
  ``prompt_cache_key``. Different scopes never share a prefix.
- With a TTL, a prefix not used for that many seconds is gone (OpenAI keeps them
  for minutes of inactivity); without one, prefixes stay until a reset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["CACHE_STEP", "MIN_CACHED_PREFIX", "CacheScope", "PrefixCache", "step_prefixes"]

#: The shortest prompt prefix that is ever cached.
MIN_CACHED_PREFIX: Final = 1024

#: Cached prefixes grow in steps of this many tokens.
CACHE_STEP: Final = 128


@dataclass(frozen=True, slots=True)
class CacheScope:
    """What partitions the cache: who asks (a key fingerprint), for which model, under which key."""

    key_fingerprint: str
    model: str
    prompt_cache_key: str | None


def step_prefixes(length: int) -> range:
    """The cacheable prefix lengths of a prompt of ``length`` tokens, shortest first."""
    return range(MIN_CACHED_PREFIX, length + 1, CACHE_STEP)


def _prefix_digests(tokens: Sequence[str]) -> dict[int, bytes]:
    # One pass over the prompt: the running hash is read at every step boundary.
    digests: dict[int, bytes] = {}
    boundaries = set(step_prefixes(len(tokens)))
    if not boundaries:
        return digests
    running = hashlib.sha256()
    for index, token in enumerate(tokens, start=1):
        # A separator byte that tokens never contain keeps ("ab","c") apart from ("a","bc").
        running.update(token.encode())
        running.update(b"\x00")
        if index in boundaries:
            digests[index] = running.digest()
    return digests


class PrefixCache:
    """Cached prompt prefixes by scope; ``clock`` gives monotonic seconds for the TTL."""

    def __init__(self, *, ttl_seconds: float | None, clock: Callable[[], float]) -> None:
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: dict[tuple[CacheScope, int, bytes], float] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def serve(self, scope: CacheScope, tokens: Sequence[str]) -> tuple[int, int]:
        """Process one prompt: ``(cached_tokens, newly_written_tokens)``.

        Reads the longest live cached step prefix, then writes every step prefix
        of the prompt (refreshing the TTL of those already there).
        """
        now = self._clock()
        digests = _prefix_digests(tokens)
        cached = 0
        for length, digest in digests.items():
            seen = self._entries.get((scope, length, digest))
            if seen is not None and (self._ttl is None or now - seen <= self._ttl):
                cached = max(cached, length)
        for length, digest in digests.items():
            self._entries[(scope, length, digest)] = now
        longest = max(digests, default=0)
        return cached, longest - cached

    def clear(self) -> None:
        self._entries.clear()
