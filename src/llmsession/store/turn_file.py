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

The lock can be taken and given back from any thread (:meth:`TurnFile.take`,
:meth:`TurnFile.give_back`): SQLite takes it where it then reads the session's
history (the event loop's thread while its writer is idle, else its reader's
thread) and gives it back in its reader's thread, without waiting.
Since the process's locks are not its holders', each byte remembers the
:class:`Claim` that took it last: a give-back that runs after the session's next
in-process holder took the byte again leaves it to that one, and a claim given
back before its take ran (its holder was cancelled) takes nothing.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import random
import threading
from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import Final

from llmsession.errors import StoreError
from llmsession.ids import SessionId
from llmsession.store.turns import SessionTurns

__all__ = ["Claim", "Retries", "TurnFile", "open_turn_file"]

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


class Claim:
    """One holder's claim on a session's byte: taken at most once, given back once."""

    __slots__ = ("given_back", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.given_back = False


class Retries:
    """The pauses between tries of a turn another process holds, growing from 1.5 ms
    to 25 ms (a turn lasts as long as a provider's answer), each a random part of its
    step so that waiters do not try in step."""

    __slots__ = ("_pause",)

    def __init__(self) -> None:
        self._pause = _POLL_FIRST

    async def wait(self) -> None:
        """Sleep before the next try."""
        pause = self._pause
        await asyncio.sleep(random.uniform(pause / 2, pause))
        self._pause = min(pause * 2, _POLL_MAX)


class TurnFile:
    """The turns of the sessions of one file, in this process and across processes."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.users = 0
        self._fd = fd
        self._local = SessionTurns()
        # Taken around every lock call and by release: they may run in several threads.
        self._guard = threading.Lock()
        # The claim that holds each byte this process locked.
        self._owners: dict[int, Claim] = {}

    def release(self) -> None:
        """One user fewer; the last closes the file, which drops any lock still held."""
        with self._guard:
            self.users -= 1
            if self.users:
                return
            del _OPEN[self.path]
            self._owners.clear()
            os.close(self._fd)

    def local_turn(self, session_id: SessionId) -> AbstractAsyncContextManager[None]:
        """The session's turn in this process only: hold it around take and give_back."""
        return self._local.turn(session_id)

    @asynccontextmanager
    async def turn(self, session_id: SessionId) -> AsyncGenerator[None]:
        """Wait for the session's turn in this process, then across processes, and
        hold it for the block; released on the way out, also when cancelled."""
        claim = self.claim(session_id)
        async with self._local.turn(session_id):
            try:
                retries = Retries()
                # Only non-blocking tries: a blocking one would stall the event loop.
                while not self.take(claim):
                    await retries.wait()
                yield
            finally:
                self.give_back(claim)

    @staticmethod
    def claim(session_id: SessionId) -> Claim:
        """A new claim on the session's byte, for one holder of its in-process turn."""
        return Claim(_offset(session_id))

    def take(self, claim: Claim) -> bool:
        """Lock the claim's byte without waiting; False while another process holds it
        (or once the claim was given back). Call it holding the session's in-process
        turn, from any thread. StoreError if the lock cannot be taken at all."""
        with self._guard:
            if not self.users:
                raise StoreError("this store was closed; open a new one")
            if claim.given_back:
                return False
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, claim.offset, os.SEEK_SET)
            except OSError as error:
                if error.errno in _HELD:
                    return False
                raise StoreError(f"cannot lock a turn in {self.path}: {error}") from error
            self._owners[claim.offset] = claim
            return True

    def give_back(self, claim: Claim) -> None:
        """Unlock the claim's byte if it still holds it; from any thread, any number of
        times, also before or while its take runs. Never raises."""
        with self._guard:
            claim.given_back = True
            if self._owners.get(claim.offset) is not claim:
                return
            del self._owners[claim.offset]
            # Not held by this process any more (the lock only goes with the file,
            # released by now) is all an unlock can fail with.
            with suppress(OSError):
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, claim.offset, os.SEEK_SET)


def _offset(session_id: SessionId) -> int:
    digest = hashlib.blake2b(session_id.value.bytes, digest_size=8).digest()
    return int.from_bytes(digest) >> (64 - _OFFSET_BITS)
