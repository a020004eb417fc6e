"""GroupCommit: concurrent writes share one transaction, each keeps its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from llmsession import IdempotencyConflict, TenantId, WrongStateError
from llmsession.store import open_store
from llmsession.store.group_commit import GroupCommit

ACME = TenantId("acme")


class Recorder:
    """A run_batch that answers each item with its double, or an error for negatives."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()

    async def run(self, items: Sequence[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        await self.release.wait()
        return [ValueError(f"bad {i}") if i < 0 else i * 2 for i in items]


async def test_items_that_wait_share_the_next_batch() -> None:
    recorder = Recorder()
    group: GroupCommit[int, int] = GroupCommit(recorder.run)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(group.submit(i)) for i in (2, -3, 4)]
    await asyncio.sleep(0)
    recorder.release.set()
    assert await first == 2
    assert await rest[0] == 4
    with pytest.raises(ValueError, match="bad -3"):
        await rest[1]
    assert await rest[2] == 8
    assert recorder.batches == [[1], [2, -3, 4]]


async def test_a_lone_item_runs_in_its_submitters_own_task() -> None:
    seen: list[asyncio.Task[object] | None] = []

    async def run(items: Sequence[int]) -> list[int | Exception]:
        seen.append(asyncio.current_task())
        return [ValueError("negative") if i < 0 else i for i in items]

    group: GroupCommit[int, int] = GroupCommit(run)
    assert await group.submit(5) == 5
    assert seen == [asyncio.current_task()]
    with pytest.raises(ValueError, match="negative"):
        await group.submit(-1)


async def test_a_failed_batch_fails_each_of_its_items_and_then_recovers() -> None:
    release = asyncio.Event()
    calls = 0

    async def run(items: Sequence[int]) -> list[int | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
        if calls == 2:
            raise OSError("disk full")
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(run)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    queued = asyncio.gather(group.submit(2), group.submit(3), return_exceptions=True)
    await asyncio.sleep(0)
    release.set()
    assert await first == 1
    assert [type(r) for r in await queued] == [OSError, OSError]
    assert await group.submit(4) == 4


async def test_a_cancelled_submitter_does_not_disturb_the_others() -> None:
    recorder = Recorder()
    group: GroupCommit[int, int] = GroupCommit(recorder.run)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    gone = asyncio.create_task(group.submit(2))
    kept = asyncio.create_task(group.submit(3))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.release.set()
    assert await first == 2
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await kept == 6
    assert recorder.batches == [[1], [2, 3]]


async def test_when_a_lone_submitter_is_cancelled_those_behind_it_still_run() -> None:
    recorder = Recorder()
    group: GroupCommit[int, int] = GroupCommit(recorder.run)
    gone = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0)
    kept = asyncio.create_task(group.submit(2))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    recorder.release.set()
    assert await asyncio.wait_for(kept, timeout=5) == 4
    assert recorder.batches == [[1], [2]]
    assert await group.submit(3) == 6


async def test_sqlite_changes_in_one_batch_keep_their_own_outcomes(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    try:
        ids = []
        for _ in range(3):
            created = await store.create(ACME, provider_id="p", model="m", initial_tokens=100)
            ids.append(created.record.session_id)
        await store.activate(ACME, ids[0])
        await store.activate(ACME, ids[1])
        await store.record_round(ACME, ids[1], 5, idempotency_key="k")
        outcomes = await asyncio.gather(
            *(store.record_round(ACME, ids[0], n) for n in range(1, 21)),
            store.record_round(ACME, ids[2], 1),  # still Created
            store.record_round(ACME, ids[1], 6, idempotency_key="k"),  # another delta
            store.record_round(ACME, ids[1], 5, idempotency_key="k"),  # a replay
            store.record_round(ACME, ids[1], 7, idempotency_key="new"),
            store.record_round(ACME, ids[1], 7, idempotency_key="new"),  # same batch, once
            return_exceptions=True,
        )
        assert isinstance(outcomes[20], WrongStateError)
        assert isinstance(outcomes[21], IdempotencyConflict)
        first = await store.get(ACME, ids[0])
        assert (first.record.round_count, first.record.delta_tokens) == (20, sum(range(1, 21)))
        second = await store.get(ACME, ids[1])
        assert (second.record.round_count, second.record.delta_tokens) == (2, 12)
        keyed = [r.seq for r in (await store.list_rounds(ACME, ids[1])).items]
        assert keyed == [1, 2]
        assert (await store.get(ACME, ids[2])).record.round_count == 0
    finally:
        await store.aclose()
