"""A client in its own process: records rounds and prints each one the store acknowledged.

The crash and multi-process tests run it with ``sys.executable``::

    python round_writer.py URL TENANT SESSION_ID KEY_PREFIX START COUNT [HOLD_AT]

For each i in START .. START+COUNT-1 it records a round of ``delta_of(i)``
tokens under the idempotency key ``KEY_PREFIX + str(i)`` and, only after the
store returned, prints ``ack <key> <seq> <delta> <replayed 0|1>`` and flushes:
such a line is an acknowledged round. It prints ``done`` at the end.

With HOLD_AT, the round of index HOLD_AT is recorded but its answer is held
back, as if lost on the way to the client: the writer prints ``held ...`` for
it and waits to be killed. A client that retries that key must get the same
round back, not a second one.

The test side of the protocol (start a writer, read its lines) is here too, so
that both ends are written once.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from llmsession.ids import SessionId, TenantId
from llmsession.store import open_store

__all__ = ["Ack", "delta_of", "main", "parse_ack", "read_ack", "start_writer"]

# Generous: a writer silent for this long is stuck, not slow.
READ_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Ack:
    """One recorded round as a writer printed it; ``held`` if its answer was held back."""

    key: str
    seq: int
    delta_tokens: int
    replayed: bool
    held: bool = False


def delta_of(index: int) -> int:
    """The delta of round ``index``; the same for every process sending that key."""
    return index % 13 + 1


def parse_ack(line: bytes) -> Ack:
    """The round a writer printed on ``line``."""
    kind, key, seq, delta, replayed = line.decode().split()
    assert kind in ("ack", "held"), line
    return Ack(key, int(seq), int(delta), replayed == "1", held=kind == "held")


async def start_writer(
    url: str,
    tenant_id: TenantId,
    session_id: SessionId,
    *,
    prefix: str,
    start: int,
    count: int,
    hold_at: int | None = None,
) -> asyncio.subprocess.Process:
    """Start a writer process; read its lines with :func:`read_ack`."""
    hold = [] if hold_at is None else [str(hold_at)]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__)),
        url,
        tenant_id.value,
        str(session_id),
        prefix,
        str(start),
        str(count),
        *hold,
        stdout=asyncio.subprocess.PIPE,
    )


async def read_ack(process: asyncio.subprocess.Process) -> Ack | None:
    """The writer's next round; None once it printed ``done``.

    Fails (AssertionError) if the writer died or stayed silent too long.
    """
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), READ_TIMEOUT_SECONDS)
    assert line.endswith(b"\n"), f"the writer stopped early (exit code {await process.wait()})"
    return None if line == b"done\n" else parse_ack(line)


async def main(argv: list[str]) -> None:
    """Record the rounds named by ``argv`` (see the module docstring)."""
    url, tenant, session, prefix, start, count, *hold = argv
    hold_at = int(hold[0]) if hold else None
    tenant_id, session_id = TenantId(tenant), SessionId.parse(session)
    store = await open_store(url)
    try:
        for index in range(int(start), int(start) + int(count)):
            result = await store.record_round(
                tenant_id, session_id, delta_of(index), idempotency_key=f"{prefix}{index}"
            )
            kind = "held" if index == hold_at else "ack"
            print(
                f"{kind} {result.round.idempotency_key} {result.round.seq} "
                f"{result.round.delta_tokens} {int(result.replayed)}",
                flush=True,
            )
            if kind == "held":
                await asyncio.Event().wait()  # until killed
    finally:
        await store.aclose()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
