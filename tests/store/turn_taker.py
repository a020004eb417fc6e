"""A gateway replica in its own process: takes turns on one session and records them.

The multi-process test runs it with ``sys.executable``::

    python turn_taker.py URL TENANT SESSION_ID NAME COUNT

COUNT times it holds the session's turn, reads the history, waits a little (as
a turn waits for the provider), and records a turn whose ``request_hash`` is
``NAME:<turns it saw>``. Two tasks share the COUNT turns, as two requests of one
session on one replica would; their turns go one way or the other, in turn:
``SessionStore.turn_lock`` then ``history``, or ``turn_history`` (which SQLite
takes and gives back in its reader's thread). It prints ``done`` at the end. If
turns overlapped, two turns would say they saw the same number of turns before
them.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from llmsession.ids import SessionId, TenantId
from llmsession.store import open_store
from llmsession.store.models import Turn
from llmsession.usage import Usage

__all__ = ["main", "start_taker"]

# What a turn waits inside its lock, as for the provider's answer.
HOLD_SECONDS = 0.02


async def start_taker(
    url: str, tenant_id: TenantId, session_id: SessionId, *, name: str, count: int
) -> asyncio.subprocess.Process:
    """Start a turn taker; it prints ``done`` when its turns are recorded."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__)),
        url,
        tenant_id.value,
        str(session_id),
        name,
        str(count),
        stdout=asyncio.subprocess.PIPE,
    )


async def main(argv: list[str]) -> None:
    """Take the turns named by ``argv`` (see the module docstring)."""
    url, tenant, session, name, count = argv
    tenant_id, session_id = TenantId(tenant), SessionId.parse(session)
    store = await open_store(url)

    async def take(turns: int) -> None:
        for i in range(turns):
            if i % 2:
                async with store.turn_history(tenant_id, session_id) as (_, history):
                    seen = len(history)
                    await asyncio.sleep(HOLD_SECONDS)
                    await record(seen)
            else:
                async with store.turn_lock(tenant_id, session_id):
                    seen = len(await store.history(tenant_id, session_id))
                    await asyncio.sleep(HOLD_SECONDS)
                    await record(seen)

    async def record(seen: int) -> None:
        turn = Turn("chat/completions", f"{name}:{seen}", "[]", "[]", None, 200, "t", b"")
        await store.record_turn(tenant_id, session_id, turn=turn, usage=Usage(1))

    try:
        half = int(count) // 2
        await asyncio.gather(take(int(count) - half), take(half))
    finally:
        await store.aclose()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
