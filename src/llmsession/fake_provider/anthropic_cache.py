"""Anthropic's prompt caching rules, as the fake applies them.

- A prompt is a sequence of blocks (each tool, each system block, each message's
  content blocks, in that order); only a block marked with ``cache_control``
  (a *breakpoint*) is a place where the cache is written or read, at most 4 per
  request.
- A breakpoint caches the prompt up to the end of its block, and only when that
  prefix is at least the model's minimum cacheable length
  (:func:`min_cacheable_tokens`); a shorter one is neither read nor written.
- Reading: at each breakpoint the cache is looked up at its block and up to 19
  blocks before it (20 in all, the breakpoint's own first); the first live entry
  found is read. The request reads the longest prefix any breakpoint found.
- Writing: each breakpoint past what was read writes its prefix, with its TTL
  (``5m`` by default, or ``1h``); the tokens between the read prefix and the last
  written breakpoint are the cache write, each part at the TTL of the breakpoint
  that ends it. A read refreshes the entry's TTL.
- The cache is partitioned by API key and model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "LOOKBACK_BLOCKS",
    "MAX_BREAKPOINTS",
    "TTL_SECONDS",
    "AnthropicCache",
    "Breakpoint",
    "CacheUse",
    "min_cacheable_tokens",
]

#: The most breakpoints a request may set.
MAX_BREAKPOINTS: Final = 4
#: Blocks looked at for an earlier entry, the breakpoint's own block first.
LOOKBACK_BLOCKS: Final = 20

CacheTTL = Literal["5m", "1h"]
TTL_SECONDS: Final[dict[str, float]] = {"5m": 300.0, "1h": 3600.0}

_LONG_MINIMUM: Final = re.compile(r"opus-4-[5-9]|haiku-4")
_HAIKU_3: Final = re.compile(r"haiku")


def min_cacheable_tokens(model: str) -> int:
    """The shortest prefix the model caches: 4,096 for Claude Opus 4.5 and later and
    Haiku 4.5, 2,048 for Haiku 3 and 3.5, 1,024 for the others (Sonnet, Opus 4 and 4.1)."""
    if _LONG_MINIMUM.search(model):
        return 4096
    if _HAIKU_3.search(model):
        return 2048
    return 1024


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A marked block: its index in the prompt's blocks, and its TTL."""

    block: int
    ttl: CacheTTL


@dataclass(frozen=True, slots=True)
class CacheUse:
    """What one request read from and wrote to the cache, in tokens."""

    read: int = 0
    written_5m: int = 0
    written_1h: int = 0

    @property
    def written(self) -> int:
        return self.written_5m + self.written_1h


def _block_digests(blocks: Sequence[Sequence[str]]) -> list[tuple[int, bytes]]:
    """For each block: the prompt's length and a digest of its tokens up to that block's end."""
    running = hashlib.sha256()
    length = 0
    ends: list[tuple[int, bytes]] = []
    for block in blocks:
        for token in block:
            # A separator byte that tokens never contain keeps ("ab","c") apart from ("a","bc").
            running.update(token.encode())
            running.update(b"\x00")
        length += len(block)
        ends.append((length, running.copy().digest()))
    return ends


class AnthropicCache:
    """Cached prefixes by (key, model); ``clock`` gives monotonic seconds for the TTLs."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        #: (key fingerprint, model, prefix digest) -> (expires at, TTL seconds)
        self._entries: dict[tuple[str, str, bytes], tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def serve(
        self,
        key_fingerprint: str,
        model: str,
        blocks: Sequence[Sequence[str]],
        breakpoints: Sequence[Breakpoint],
    ) -> CacheUse:
        """Process one prompt of ``blocks`` with its ``breakpoints`` (in block order)."""
        now = self._clock()
        ends = _block_digests(blocks)
        minimum = min_cacheable_tokens(model)
        usable = [bp for bp in breakpoints if ends[bp.block][0] >= minimum]
        read = 0
        for bp in usable:
            for index in range(bp.block, max(bp.block - LOOKBACK_BLOCKS, -1), -1):
                length, digest = ends[index]
                scope = (key_fingerprint, model, digest)
                entry = self._entries.get(scope)
                if entry is not None and entry[0] >= now:
                    self._entries[scope] = (now + entry[1], entry[1])
                    read = max(read, length)
                    break
        covered = read
        written = {"5m": 0, "1h": 0}
        for bp in usable:
            length, digest = ends[bp.block]
            if length <= covered:
                continue
            seconds = TTL_SECONDS[bp.ttl]
            self._entries[(key_fingerprint, model, digest)] = (now + seconds, seconds)
            written[bp.ttl] += length - covered
            covered = length
        return CacheUse(read=read, written_5m=written["5m"], written_1h=written["1h"])

    def clear(self) -> None:
        self._entries.clear()
