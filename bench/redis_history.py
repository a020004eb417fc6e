"""A gateway turn's history read on the Redis store, against the whole history's.

Run:  PYTHONPATH=src .venv/bin/python bench/redis_history.py [--turns 20]
      [--answer-kb 50] [--reads 200] [--repeat 3]

One session holds ``--turns`` turns, each answered by a stream of ``--answer-kb``
kilobytes (what the store keeps for a replay: the answer as sent, every event of
it) and a conversation item of a kilobyte. Each read is timed one after the
other on one client, the two kinds interleaved:

- ``turn_history``: what the gateway reads at the start of every turn (the
  turn's lock, the session and its turns without the answers as sent), then
  gives the turn back;
- ``history``: the same turns with their answers, as the ``history`` API reads
  them.

Reported per read: this process's CPU time (``time.process_time``) and the wall
time, the median of the repeats. Redis's own time is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence

from _common import fresh_store
from llmsession.ids import SessionId, TenantId
from llmsession.store import open_store
from llmsession.store.base import SessionStore
from llmsession.store.models import Turn
from llmsession.usage import Usage

TENANT = TenantId("acme")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20, help="turns in the session")
    parser.add_argument("--answer-kb", type=int, default=50, help="each answer as sent, in KiB")
    parser.add_argument("--reads", type=int, default=200, help="reads of each kind per repeat")
    parser.add_argument("--repeat", type=int, default=3)
    return parser.parse_args(argv)


def make_turn(n: int, answer_kb: int) -> Turn:
    event = b'data: {"choices":[{"delta":{"content":"' + b"y" * 980 + b'"}}]}\n\n'
    return Turn(
        "chat/completions",
        f"{n:064x}",
        '[{"role":"user","content":"' + "q" * 1000 + '"}]',
        '[{"role":"assistant","content":"' + "a" * 1000 + '"}]',
        None,
        200,
        "text/event-stream",
        event * answer_kb,
    )


async def run(args: argparse.Namespace) -> tuple[float, float, float, float]:
    """CPU and wall µs per read: turn_history's, then history's."""
    async with fresh_store("redis") as fresh:
        store: SessionStore = await open_store(fresh.url)
        try:
            session_id = SessionId.generate(store.clock())
            await store.start_with_turn(
                TENANT,
                session_id,
                provider_id="fake",
                model="m",
                turn=make_turn(0, args.answer_kb),
                usage=Usage(10),
            )
            for n in range(1, args.turns):
                async with store.turn_history(TENANT, session_id):
                    await store.record_turn(
                        TENANT, session_id, turn=make_turn(n, args.answer_kb), usage=Usage(10)
                    )
            spent = {"turn": [0.0, 0.0], "whole": [0.0, 0.0]}
            for _ in range(args.reads):
                cpu, wall = time.process_time(), time.perf_counter()
                async with store.turn_history(TENANT, session_id) as (_, turns):
                    assert len(turns) == args.turns
                spent["turn"][0] += time.process_time() - cpu
                spent["turn"][1] += time.perf_counter() - wall
                cpu, wall = time.process_time(), time.perf_counter()
                assert len(await store.history(TENANT, session_id)) == args.turns
                spent["whole"][0] += time.process_time() - cpu
                spent["whole"][1] += time.perf_counter() - wall
            per_read = [value * 1e6 / args.reads for pair in spent.values() for value in pair]
            return per_read[0], per_read[1], per_read[2], per_read[3]
        finally:
            await store.aclose()


def main() -> None:
    args = parse_args()
    results = [asyncio.run(run(args)) for _ in range(args.repeat)]
    turn_cpu, turn_wall, whole_cpu, whole_wall = (
        statistics.median(result[i] for result in results) for i in range(4)
    )
    print(
        f"{args.turns} turns, answers of {args.answer_kb} KiB each; per read, median of "
        f"{args.repeat} repeats of {args.reads}:"
    )
    print(f"  turn_history:              {turn_cpu:7.0f} µs CPU, {turn_wall:7.0f} µs wall")
    print(f"  history:                   {whole_cpu:7.0f} µs CPU, {whole_wall:7.0f} µs wall")
    cpu_ratio, wall_ratio = whole_cpu / turn_cpu, whole_wall / turn_wall
    print(f"  history / turn_history:    {cpu_ratio:7.2f}x CPU, {wall_ratio:7.2f}x wall")


if __name__ == "__main__":
    main()
