"""LockConnections: the PostgreSQL connections that hold gateway turns' locks.

A gateway turn holds its session's advisory lock for as long as the provider
takes to answer, seconds with a real one. With a connection of its own per
turn, a process could serve only as many turns at once as it had connections.
Here a connection holds the locks of many turns: a turn that takes one gets the
connection holding the fewest, opening another first while there are fewer than
``size``. So connections serve turns side by side while they are few, and are
shared once ``size`` are open.

Statements of the turns on one connection go one at a time (``lock``). A lock
statement runs to its end even if its turn is cancelled meanwhile, and a lock it
took for a cancelled turn is given back: a cancelled turn never leaves a
connection mid-statement for the next one, nor a lock behind. If a lock statement
fails, the connection is closed and no longer taken: which locks it still holds
is then unknown, and a closed connection holds none. Every turn that held a lock
on it finds it closed at its next statement, its round included, so a turn whose
lock was lost never records a round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, LiteralString

import psycopg
from psycopg.rows import TupleRow

from llmsession.errors import StoreError

__all__ = ["UNLOCK", "LockConnection", "LockConnections"]

_Connection = psycopg.AsyncConnection[TupleRow]

#: Gives an advisory lock back (its one parameter the key).
UNLOCK: Final = "SELECT pg_advisory_unlock(%s::bigint)"


class LockConnection:
    """One connection, its statements one at a time (``lock``), how many turns hold
    their locks on it (``holders``), and since when none has (``idle_since``)."""

    __slots__ = ("conn", "holders", "idle_since", "lock")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.lock = asyncio.Lock()
        self.holders = 0
        self.idle_since: float | None = None


class LockConnections:
    """Up to ``size`` connections, opened by ``connect`` when first needed, shared by
    the turns holding advisory locks on them; one that no turn used for
    ``max_idle`` seconds (of ``clock``) is closed when a turn next takes one."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[_Connection]],
        size: int,
        *,
        max_idle: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._size = size
        self._max_idle = max_idle
        self._clock = clock
        self._open: list[LockConnection] = []
        # Connections being opened count towards size: turns arriving together do
        # not open more than it.
        self._opening = 0
        self._opened = asyncio.Condition()
        self._closed = False
        # Statements whose callers were cancelled, kept until they end.
        self._orphans: set[asyncio.Future[Any]] = set()

    async def _take(self) -> LockConnection:
        """A connection for one more turn's lock; StoreError if none can be opened.

        Give it back with :meth:`give_back` when the turn ends.
        """
        while True:
            if self._closed:
                raise StoreError("this store was closed; open a new one")
            await self._close_idle()
            least = min(self._open, key=lambda shared: shared.holders, default=None)
            room = len(self._open) + self._opening < self._size
            if (least is None or least.holders > 0) and room:
                least = await self._open_one()
            elif least is None:
                # Every connection allowed is being opened by other turns.
                async with self._opened:
                    await self._opened.wait()
                continue
            least.holders += 1
            least.idle_since = None
            return least

    async def _close_idle(self) -> None:
        """Forget the connections a turn's statement found broken (they hold no lock
        any more), and close those no turn used for max_idle seconds."""
        now = self._clock()
        kept: list[LockConnection] = []
        idle: list[LockConnection] = []
        for shared in self._open:
            if shared.conn.closed:
                continue
            if (
                shared.idle_since is not None
                and now - shared.idle_since > self._max_idle
                and not shared.lock.locked()
            ):
                idle.append(shared)
            else:
                kept.append(shared)
        self._open = kept
        for shared in idle:
            await shared.conn.close()

    async def _open_one(self) -> LockConnection:
        self._opening += 1
        try:
            try:
                conn = await self._connect()
            except psycopg.Error as error:
                raise StoreError(f"no PostgreSQL connection: {error}") from error
            if self._closed:
                await conn.close()
                raise StoreError("this store was closed; open a new one")
            shared = LockConnection(conn)
            self._open.append(shared)
            return shared
        finally:
            # Turns waiting for it take it now, or open one themselves if it failed.
            self._opening -= 1
            async with self._opened:
                self._opened.notify_all()

    def give_back(self, shared: LockConnection) -> None:
        """One turn fewer holds a lock on ``shared``."""
        shared.holders -= 1
        if not shared.holders:
            shared.idle_since = self._clock()

    async def take_lock(
        self, statement: LiteralString, params: tuple[Any, ...], key: int
    ) -> tuple[LockConnection, list[TupleRow] | None]:
        """Take a connection (see :meth:`_take`) and run ``statement`` on it (see
        :meth:`_try_lock`): the connection, to give back when the turn ends, and the
        statement's rows, or None if another connection held the lock.

        A connection the server dropped while it stood idle (a restart, an idle
        timeout) fails the statement before it could take a lock, and is closed: the
        statement is tried again, on another connection. The server may have
        dropped every one at once (a restart, ``pg_terminate_backend``), so it is
        tried until it has seen each open one fail, and then on a new one.
        """
        tries = 0
        while True:
            shared = await self._take()
            tries += 1
            try:
                return shared, await self._try_lock(shared, statement, params, key)
            except BaseException as error:
                self.give_back(shared)
                # Each failure closed a connection, and _take forgets closed ones:
                # after at most size of them, _take opens a new one.
                if tries > self._size or not (isinstance(error, StoreError) and shared.conn.closed):
                    raise

    async def _try_lock(
        self, shared: LockConnection, statement: LiteralString, params: tuple[Any, ...], key: int
    ) -> list[TupleRow] | None:
        """Run ``statement``, which takes advisory lock ``key`` on ``shared`` if no other
        connection holds it: its rows (binary), or None if another held it (its one
        row then starts with NULL).

        If the caller is cancelled meanwhile, the statement still runs to its end,
        and a lock it took is given back.
        """
        running = asyncio.ensure_future(self._run(shared, statement, params, binary=True))
        try:
            rows = await asyncio.shield(running)
        except asyncio.CancelledError:
            self._keep(asyncio.ensure_future(self._undo(shared, running, key)))
            raise
        return rows if _granted(rows) else None

    async def _undo(
        self, shared: LockConnection, running: asyncio.Future[list[TupleRow]], key: int
    ) -> None:
        if _granted(await running):
            await self._run(shared, UNLOCK, (key,))

    async def unlock(
        self, shared: LockConnection, key: int, *, unless: Callable[[], bool] = lambda: False
    ) -> None:
        """Give advisory lock ``key`` back on ``shared``, after any statement in flight
        on it, unless ``unless()`` is then true (another statement gave it back; once
        true, it must stay so); it runs to its end even if the caller is cancelled
        meanwhile."""

        # A closed connection holds no lock any more. Neither this nor ``unless()``
        # turns false again: the lock is left alone at once if either is true now.
        def gone() -> bool:
            return unless() or shared.conn.closed

        if gone():
            return
        running = asyncio.ensure_future(self._run(shared, UNLOCK, (key,), unless=gone))
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            self._keep(running)
            raise

    def _keep(self, task: asyncio.Future[Any]) -> None:
        # A reference until it ends (the loop keeps only a weak one); its failure
        # closed the connection already, and is retrieved so it is not logged.
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)
        task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _run(
        self,
        shared: LockConnection,
        statement: LiteralString,
        params: tuple[Any, ...],
        *,
        binary: bool = False,
        unless: Callable[[], bool] | None = None,
    ) -> list[TupleRow]:
        async with shared.lock:
            if unless is not None and unless():
                return []
            if shared.conn.closed:
                raise StoreError("PostgreSQL failed: the connection holding the turn was lost")
            try:
                cur = await shared.conn.cursor(binary=binary).execute(statement, params)
                return await cur.fetchall()
            except psycopg.Error as error:
                # Which locks it holds is unknown now; a closed one holds none.
                await shared.conn.close()
                raise StoreError(f"PostgreSQL failed: {error}") from error

    async def aclose(self) -> None:
        """Close every connection: the locks they hold go with them."""
        self._closed = True
        opened, self._open = self._open, []
        for shared in opened:
            await shared.conn.close()
        async with self._opened:
            self._opened.notify_all()


def _granted(rows: list[TupleRow]) -> bool:
    """Whether a lock statement took its lock: no row (no such session, the lock
    taken), or a first row not starting with NULL."""
    return not rows or rows[0][0] is not None
