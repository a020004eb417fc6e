"""Sweeper: the background loop that expires due sessions and purges abandoned ones.

Many replicas may sweep one store at once; the store makes each expiry happen
exactly once (row locks, SKIP LOCKED, Lua). The loop only decides *when* to ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from llmsession.errors import StoreError
from llmsession.ids import TenantId
from llmsession.store.base import SessionStore

__all__ = ["SweepResult", "Sweeper"]

logger = logging.getLogger("llmsession.sweeper")

# A tick stops after this many full batches, so one huge backlog cannot keep a
# tick going forever; the next tick carries on.
_MAX_BATCHES_PER_TICK = 100


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep did: sessions expired and abandoned Created sessions purged."""

    expired: int
    purged: int


class Sweeper:
    """Calls ``store.sweep`` and ``store.purge_created`` every ``interval_seconds``.

    Errors are logged and counted; they never stop the loop. The counters
    (``runs``, ``expired``, ``purged``, ``errors``) are read by the metrics.
    """

    def __init__(
        self,
        store: SessionStore,
        *,
        interval_seconds: float,
        purge_created_after_seconds: int,
        batch_size: int | None = None,
        purge_tenant_id: TenantId | None = None,
    ) -> None:
        """``batch_size``: sessions per ``sweep`` and ``purge_created`` call; by
        default the store's own (``store.sweep_batch``). ``purge_tenant_id``: purge
        only this tenant's abandoned sessions (expiry covers every tenant)."""
        self.store = store
        self.interval_seconds = interval_seconds
        self.purge_created_after_seconds = purge_created_after_seconds
        self.purge_tenant_id = purge_tenant_id
        self.batch_size = store.sweep_batch if batch_size is None else batch_size
        self.runs = 0
        self.expired = 0
        self.purged = 0
        self.errors = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> SweepResult:
        """Expire every due session and purge abandoned ones, in batches, now."""
        expired = 0
        for _ in range(_MAX_BATCHES_PER_TICK):
            count = await self.store.sweep(limit=self.batch_size)
            expired += count
            self.expired += count
            if count < self.batch_size:
                break
        purged = 0
        for _ in range(_MAX_BATCHES_PER_TICK):
            count = await self.store.purge_created(
                self.purge_created_after_seconds,
                limit=self.batch_size,
                tenant_id=self.purge_tenant_id,
            )
            purged += count
            self.purged += count
            if count < self.batch_size:
                break
        self.runs += 1
        return SweepResult(expired, purged)

    async def run(self) -> None:
        """Sweep every interval until :meth:`stop`; an error is logged and the loop goes on."""
        while not self._stop.is_set():
            try:
                result = await self.run_once()
            except StoreError as error:
                # The store's own words say what failed (a database restarted, a
                # connection it dropped); a traceback would add only noise.
                self.errors += 1
                logger.error("sweep failed: %s; retrying in %.3g s", error, self.interval_seconds)
            except Exception:
                self.errors += 1
                logger.exception("sweep failed; retrying in %.3g s", self.interval_seconds)
            else:
                if result.expired or result.purged:
                    logger.info(
                        "sweep expired %d and purged %d sessions", result.expired, result.purged
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_seconds)

    def start(self) -> None:
        """Run the loop in a background task of the running event loop."""
        if self._task is not None:
            raise RuntimeError("this sweeper was already started")
        self._stop.clear()
        self._task = asyncio.create_task(self.run(), name="llmsession-sweeper")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop the loop: let a sweep in progress finish (up to ``grace_seconds``), then cancel."""
        task = self._task
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace_seconds)
        except TimeoutError:
            logger.warning("sweep still running after %.3g s; cancelling it", grace_seconds)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._task = None
