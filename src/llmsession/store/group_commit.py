"""GroupCommit: many tasks' writes, one transaction per batch.

A commit that must reach the disk (an fsync) costs far more than the statements
before it, and SQLite commits one transaction at a time. So writers that arrive
while a commit is under way queue up, and the next batch runs all of them in one
transaction: one fsync for the lot. Each writer still gets its own outcome (a
result or its own error), and none is answered before the batch's commit has
returned, so nothing is acknowledged that is not on disk.

A writer that finds nothing in flight runs its own batch of one in its own task:
with one writer at a time, a worker task and a future per write would cost more
than the write itself (Redis). Writers that arrive meanwhile queue up as before,
and a worker task runs their batches once the first is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")


class GroupCommit(Generic[I, R]):
    """Runs submitted items in batches through ``run_batch``, one batch at a time.

    ``run_batch(items)`` returns one outcome per item, in order: its result, or
    the exception to raise to that item's submitter. If ``run_batch`` itself
    raises, every item of the batch gets that exception.
    """

    def __init__(
        self, run_batch: Callable[[Sequence[I]], Awaitable[Sequence[R | Exception]]]
    ) -> None:
        self._run_batch = run_batch
        self._queue: list[tuple[I, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None
        #: A submitter is running its own batch of one (see ``submit``).
        self._alone = False

    async def submit(self, item: I) -> R:
        """Queue ``item`` and wait for its outcome."""
        if self._worker is not None or self._alone:
            # A batch is in flight: the worker's loop, or the lone submitter when
            # it is done, takes up what queued meanwhile.
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            self._queue.append((item, future))
            return await future
        # Alone: this submitter runs its batch of one itself (written out here,
        # not as a method: a coroutine per write is a cost worth saving).
        self._alone = True
        try:
            outcomes = await self._run_batch([item])
        except Exception as error:
            outcomes = [error]
        finally:
            # Also when this submitter was cancelled: what queued behind it
            # gets its worker. Its own batch may still be finishing then (a
            # thread cannot be cancelled); run_batch implementations that need
            # one batch at a time get it from their own single writer.
            self._alone = False
            if self._queue and self._worker is None:
                self._worker = asyncio.get_running_loop().create_task(self._drain())
        [outcome] = outcomes
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _drain(self) -> None:
        batch: list[tuple[I, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    outcomes = await self._run_batch([item for item, _ in batch])
                except Exception as error:
                    outcomes = [error] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    # A submitter that was cancelled no longer waits for an answer
                    # (its write may still have been committed, like any abandoned call).
                    if future.done():
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                batch = []
        except BaseException:
            # The worker itself was cancelled (the loop is closing): nobody may be
            # left waiting for an answer that will never come.
            for _, future in batch + self._queue:
                future.cancel()
            self._queue = []
            raise
        finally:
            # No await since the queue was last seen empty: nothing can be left behind.
            self._worker = None
