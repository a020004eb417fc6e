"""The CPU of a gateway turn on the PostgreSQL store: the store's process and the server's.

Run:  PYTHONPATH=src .venv/bin/python bench/pg_turns.py [--turns 2000] [--rounds 8]
      [--repeat 3]

A turn is what the gateway asks of the store for a request that continues a
session: ``turn_history`` (the turn's lock, the session and its history), then
``record_turn`` (the round and its turn) inside it, then the turn given back.
One client runs them back to back on conversations of ``--rounds`` turns (each
started by ``start_with_turn``, not counted), so nothing waits on anything but
the server. Reported per counted turn: the CPU time of this process
(``time.process_time``), the CPU time of the PostgreSQL backends serving the
store's connections (their ``/proc/<pid>/stat``, found by the URL's
``application_name``; the server's background processes are not counted), and
the wall time. The machine may be shared: read CPU, not wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence

import psycopg

from _common import POSTGRES_BASE_URL, fresh_store
from llmsession.ids import SessionId, TenantId
from llmsession.store import open_store
from llmsession.store.models import Turn
from llmsession.usage import Usage

TENANT = TenantId("acme")
_TICKS = os.sysconf("SC_CLK_TCK")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=2000, help="counted turns per run")
    parser.add_argument("--rounds", type=int, default=8, help="turns of each conversation")
    parser.add_argument("--repeat", type=int, default=3)
    return parser.parse_args(argv)


def make_turn(n: int) -> Turn:
    items = b'[{"role":"user","content":"' + b"x" * 160 + b'"}]'
    answer = b'{"id":"chatcmpl-1","choices":[{"message":{"content":"' + b"y" * 400 + b'"}}]}'
    return Turn(
        "chat/completions",
        f"{n:064x}",
        items.decode(),
        '[{"role":"assistant","content":"' + "y" * 400 + '"}]',
        None,
        200,
        "application/json",
        answer,
    )


def backend_ticks(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


async def backend_pids(name: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(POSTGRES_BASE_URL, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
        )
        return [row[0] for row in await cur.fetchall()]


async def run(turns: int, rounds: int) -> tuple[float, float, float]:
    name = f"pgturns{uuid.uuid4().hex[:8]}"
    async with fresh_store("postgresql", url_options=f"application_name={name}") as fresh:
        store = await open_store(fresh.url)
        try:
            usage = Usage(1000, 800, 0, 50)
            serial = 0

            async def conversation(pids: Sequence[int]) -> tuple[float, float, int]:
                """One conversation: the CPU time, wall time and backend ticks of its
                turns after the first."""
                nonlocal serial
                session_id = SessionId.generate(store.clock())
                serial += 1
                await store.start_with_turn(
                    TENANT,
                    session_id,
                    provider_id="fake",
                    model="m",
                    turn=make_turn(serial),
                    usage=usage,
                )
                wall, cpu, ticks = time.perf_counter(), time.process_time(), backend_ticks(pids)
                for _ in range(rounds - 1):
                    serial += 1
                    async with store.turn_history(TENANT, session_id):
                        await store.record_turn(
                            TENANT, session_id, turn=make_turn(serial), usage=usage
                        )
                return (
                    time.process_time() - cpu,
                    time.perf_counter() - wall,
                    backend_ticks(pids) - ticks,
                )

            # Warm up: connections open, statements prepared.
            for _ in range(4):
                await conversation(())
            pids = await backend_pids(name)
            cpu = wall = 0.0
            ticks = counted = 0
            while counted < turns:
                spent = await conversation(pids)
                cpu += spent[0]
                wall += spent[1]
                ticks += spent[2]
                counted += rounds - 1
            if sorted(await backend_pids(name)) != sorted(pids):
                print("warning: the store's backends changed during the run", file=sys.stderr)
            return cpu / counted, ticks / _TICKS / counted, wall / counted
        finally:
            await store.aclose()


def main() -> None:
    args = parse_args()
    results = [asyncio.run(run(args.turns, args.rounds)) for _ in range(args.repeat)]
    for label, index in (("store process CPU", 0), ("PostgreSQL backends CPU", 1), ("wall", 2)):
        values = [result[index] * 1e6 for result in results]
        shown = ", ".join(f"{value:.0f}" for value in values)
        print(f"{label:>24}: median {statistics.median(values):.0f} µs/turn ({shown})")


if __name__ == "__main__":
    main()
