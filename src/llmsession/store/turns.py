"""SessionTurns: the writers of one session in one process take turns.

Two writers of the same session in one process would only make each other's
compare-and-set fail (or queue on a database lock while holding a connection);
taking turns in the process first costs nothing and keeps every write on the
cheap path. Correctness never rests on these turns: other processes are kept out
by the backend's own version check or lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

from llmsession.ids import SessionId

__all__ = ["KeyedTurns", "SessionTurns"]

K = TypeVar("K", bound=Hashable)


class _Writers:
    """One session's turn, and how many writers hold or await it."""

    __slots__ = ("count", "lock")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.count = 0


class KeyedTurns(Generic[K]):
    """A lock per key that has holders right now; it is dropped when none is left.

    Holders of one key go one at a time, in arrival order; other keys do not wait.
    """

    def __init__(self) -> None:
        self._writers: dict[K, _Writers] = {}

    def __len__(self) -> int:
        """Keys held or awaited right now."""
        return len(self._writers)

    def turn(self, key: K) -> AbstractAsyncContextManager[None]:
        """Wait for this key's turn and hold it for the block."""
        return _Turn(self._writers, key)

    def awaited(self, key: K) -> bool:
        """Whether a holder of this key's turn has others waiting behind it."""
        writers = self._writers.get(key)
        return writers is not None and writers.count > 1


class _Turn(Generic[K]):
    """One holder of a key's turn (a class, not a generator: one is made per turn)."""

    __slots__ = ("_all", "_key", "_writers")

    def __init__(self, writers: dict[K, _Writers], key: K) -> None:
        self._all = writers
        self._key = key
        self._writers: _Writers | None = None

    async def __aenter__(self) -> None:
        writers = self._all.get(self._key)
        if writers is None:
            writers = self._all[self._key] = _Writers()
        writers.count += 1
        self._writers = writers
        try:
            await writers.lock.acquire()
        except BaseException:
            # Cancelled while waiting: it leaves without having held the turn.
            self._leave(writers)
            raise

    async def __aexit__(self, *_: object) -> None:
        writers = self._writers
        assert writers is not None
        writers.lock.release()
        self._leave(writers)

    def _leave(self, writers: _Writers) -> None:
        # Counted rather than asking the lock: a cancelled waiter leaves too.
        writers.count -= 1
        if not writers.count:
            del self._all[self._key]


class SessionTurns(KeyedTurns[SessionId]):
    """The turns of sessions' writers in one process, by session id."""
