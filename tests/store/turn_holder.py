"""A gateway turn in its own process: holds a session's turn lock until told to go on.

The turn-lock tests run it with ``sys.executable``::

    python turn_holder.py URL TENANT SESSION_ID

It opens the store, takes the session's turn lock
and prints ``held``; then, after a line on stdin, it records a gateway round
with turn ``turn(2)`` inside the lock, leaves it and prints ``done``. Killed
while it holds the lock, it dies holding it, as a crashed server would.

The test side (start it, read its lines) is here too, so that both ends are
written once.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from llmsession.ids import SessionId, TenantId
from llmsession.store import open_store
from llmsession.store.sqlite import SQLiteStore

__all__ = ["main", "read_line", "start_holder"]

# Generous: a holder silent for this long is stuck, not slow.
READ_TIMEOUT_SECONDS = 60.0


async def start_holder(
    url: str, tenant_id: TenantId, session_id: SessionId
) -> asyncio.subprocess.Process:
    """Start a holder; it prints ``held`` once it holds the session's turn."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__)),
        url,
        tenant_id.value,
        str(session_id),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def read_line(process: asyncio.subprocess.Process) -> bytes:
    """The holder's next line; fails if it died or stayed silent too long."""
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), READ_TIMEOUT_SECONDS)
    assert line.endswith(b"\n"), f"the holder stopped early (exit code {await process.wait()})"
    return line


async def main(argv: list[str]) -> None:
    """Hold the turn named by ``argv`` (see the module docstring)."""
    from tests.store.test_gateway_rounds import turn, usage

    url, tenant, session = argv
    tenant_id, session_id = TenantId(tenant), SessionId.parse(session)
    store = await open_store(url)
    assert isinstance(store, SQLiteStore)
    try:
        async with store.turn_lock(tenant_id, session_id):
            print("held", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            await store.record_turn(tenant_id, session_id, turn=turn(2), usage=usage(1300))
    finally:
        await store.aclose()
    print("done", flush=True)


if __name__ == "__main__":
    # The turns it records are the conformance tests' own, from the tests package.
    sys.path.insert(0, str(Path(__file__).parents[2]))
    asyncio.run(main(sys.argv[1:]))
