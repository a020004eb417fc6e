"""SessionTurns: one writer of a session at a time, and no entry left behind."""

from __future__ import annotations

import asyncio

from llmsession.clock import system_clock
from llmsession.ids import SessionId
from llmsession.store.turns import SessionTurns


def _session() -> SessionId:
    return SessionId.generate(system_clock())


async def test_writers_of_one_session_take_turns_and_leave_nothing_behind() -> None:
    turns = SessionTurns()
    session_id = _session()
    inside = 0
    most = 0

    async def writer() -> None:
        nonlocal inside, most
        async with turns.turn(session_id):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(writer() for _ in range(20)))
    assert most == 1
    assert len(turns) == 0


async def test_other_sessions_do_not_wait() -> None:
    turns = SessionTurns()
    first, second = _session(), _session()
    # Would hang (and time out) if the second session waited for the first.
    async with turns.turn(first), asyncio.timeout(1), turns.turn(second):
        assert len(turns) == 2
    assert len(turns) == 0


async def test_a_cancelled_waiter_leaves_no_entry() -> None:
    turns = SessionTurns()
    session_id = _session()
    async with turns.turn(session_id):
        entered = False

        async def wait_for_turn() -> None:
            nonlocal entered
            async with turns.turn(session_id):
                entered = True

        waiter = asyncio.create_task(wait_for_turn())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert len(turns) == 1
    assert len(turns) == 0
    assert not entered


async def test_a_holder_knows_whether_others_wait_behind_it() -> None:
    turns = SessionTurns()
    session_id, other = _session(), _session()
    assert not turns.awaited(session_id)
    async with turns.turn(session_id):
        assert not turns.awaited(session_id)
        waiter = asyncio.create_task(turns.turn(session_id).__aenter__())
        await asyncio.sleep(0)
        assert turns.awaited(session_id)
        assert not turns.awaited(other)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        # A waiter that left waits no more.
        assert not turns.awaited(session_id)
    assert not turns.awaited(session_id)
