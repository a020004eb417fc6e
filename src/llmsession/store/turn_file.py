"""TurnFile: sessions' turns across processes, as byte-range locks on one file.

A session's turn is an exclusive POSIX lock (``fcntl.lockf``) on one byte of a
sidecar file, at an offset taken from a hash of the session id; the file never
holds data. The kernel drops a process's locks when it exits or dies, so a
crashed holder leaves nothing behind: no lease to renew, lapse or take over.
Two sessions whose offsets collide (odds 2**-62) only take turns with each other.

POSIX locks belong to the process, not to a file descriptor: the process's own
holders never exclude each other, and closing any descriptor of the file drops
all of the process's locks on it. So a process has one TurnFile per path,
shared by every store on it (:func:`open_turn_file`), whose in-process turns
(:class:`SessionTurns`, in arrival order) come before the file lock.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import random
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

from llmsession.errors import StoreError
from llmsession.ids import SessionId
from llmsession.store.turns import SessionTurns

__all__ = ["TurnFile", "open_turn_file"]

# How long a waiter for another process's turn sleeps between tries, at first
# and at most: a turn lasts as long as a provider's answer.
_POLL_FIRST: Final = 0.0015
_POLL_MAX: Final = 0.025
# Offsets below 2**62: the locked byte's end (offset + 1) stays inside off_t.
_OFFSET_BITS: Final = 62
# What a non-blocking lock attempt fails with while another process holds it.
_HELD: Final = frozenset({errno.EACCES, errno.EAGAIN})

_OPEN: dict[Path, TurnFile] = {}


def open_turn_file(path: Path) -> TurnFile:
    """This process's TurnFile on ``path`` (created on first use); release it with
    :meth:`TurnFile.release`. StoreError if the file cannot be opened."""
    key = Path(os.path.abspath(path))
    turn_file = _OPEN.get(key)
    if turn_file is None:
        try:
            fd = os.open(key, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise StoreError(f"cannot open the turn lock file {key}: {error}") from error
        turn_file = _OPEN[key] = TurnFile(key, fd)
    turn_file.users += 1
    return turn_file


class TurnFile:
    """The turns of the sessions of one file, in this process and across processes."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.users = 0
        self._fd = fd
        self._local = SessionTurns()

    def release(self) -> None:
        """One user fewer; the last closes the file, which drops any lock still held."""
        self.users -= 1
        if self.users == 0:
            del _OPEN[self.path]
            os.close(self._fd)

    @asynccontextmanager
    async def turn(self, session_id: SessionId) -> AsyncGenerator[None]:
        """Wait for the session's turn in this process, then across processes, and
        hold it for the block; released on the way out, also when cancelled."""
        offset = _offset(session_id)
        async with self._local.turn(session_id):
            pause = _POLL_FIRST
            # Only non-blocking tries: a blocking one would stall the event loop.
            while not self._try_lock(offset):
                await asyncio.sleep(random.uniform(pause / 2, pause))
                pause = min(pause * 2, _POLL_MAX)
            try:
                yield
            finally:
                if self.users:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)

    def _try_lock(self, offset: int) -> bool:
        if not self.users:
            raise StoreError("this store was closed; open a new one")
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        except OSError as error:
            if error.errno in _HELD:
                return False
            raise StoreError(f"cannot lock a turn in {self.path}: {error}") from error
        return True


def _offset(session_id: SessionId) -> int:
    digest = hashlib.blake2b(session_id.value.bytes, digest_size=8).digest()
    return int.from_bytes(digest) >> (64 - _OFFSET_BITS)
