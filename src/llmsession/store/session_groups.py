"""SessionGroups: changes to one session in one process go in groups.

Changes to one session that arrive while one is in flight queue up
(:class:`GroupCommit`, one queue per session) and then go together: the backend
reads the session once, the core computes each change from the one before, and
all the writes go in one round trip. A change that arrives alone takes the
backend's usual single-change path. Correctness never rests on the grouping:
each write is still a compare-and-set, so other processes are kept out by the
backend's own version check or lock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from llmsession.ids import SessionId, TenantId
from llmsession.store.base import Change, ChangeFn
from llmsession.store.group_commit import GroupCommit

__all__ = ["PendingChange", "SessionGroups"]


class PendingChange(NamedTuple):
    """A change waiting for its session's next group (a tuple: one is made per
    write, and a frozen dataclass takes twice as long to make)."""

    change: ChangeFn
    idempotency_key: str | None


RunOne = Callable[[TenantId, SessionId, ChangeFn, str | None], Awaitable[Change]]
RunGroup = Callable[
    [TenantId, SessionId, Sequence[PendingChange]], Awaitable[Sequence[Change | Exception]]
]


class _Queue:
    """One session's queue, and how many callers use it (dropped when none do)."""

    __slots__ = ("commit", "count", "run_group", "run_one", "session_id", "tenant_id")

    def __init__(
        self, run_one: RunOne, run_group: RunGroup, tenant_id: TenantId, session_id: SessionId
    ) -> None:
        self.run_one = run_one
        self.run_group = run_group
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.count = 0
        self.commit: GroupCommit[PendingChange, Change] = GroupCommit(self.run)

    async def run(self, batch: Sequence[PendingChange]) -> Sequence[Change | Exception]:
        if len(batch) > 1:
            return await self.run_group(self.tenant_id, self.session_id, batch)
        pending = batch[0]
        try:
            return [
                await self.run_one(
                    self.tenant_id, self.session_id, pending.change, pending.idempotency_key
                )
            ]
        except Exception as error:
            return [error]


class SessionGroups:
    """Per-session queues over a backend's ``run_one`` (a change alone) and
    ``run_group`` (two or more changes of one session, one outcome each, in order)."""

    def __init__(self, run_one: RunOne, run_group: RunGroup) -> None:
        self._run_one = run_one
        self._run_group = run_group
        # Keyed by the ids' plain values: their hashes are C calls, where the id
        # types' are Python ones, and a lone write looks its key up three times.
        self._queues: dict[tuple[str, int], _Queue] = {}

    async def submit(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        change: ChangeFn,
        idempotency_key: str | None,
    ) -> Change:
        """Run ``change`` in the session's next group and return its own outcome."""
        key = (tenant_id.value, session_id.value.int)
        queues = self._queues
        queue = queues.get(key)
        if queue is None:
            queue = queues[key] = _Queue(self._run_one, self._run_group, tenant_id, session_id)
        queue.count += 1
        try:
            return await queue.commit.submit(PendingChange(change, idempotency_key))
        finally:
            queue.count -= 1
            if not queue.count:
                del queues[key]
