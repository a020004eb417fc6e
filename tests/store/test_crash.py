"""An acknowledged round survives a SIGKILL of the process that wrote it.

A writer process (round_writer.py) records rounds with idempotency keys and
prints each one once the store acknowledged it. The test kills it with SIGKILL,
several times, and restarts it at the first unacknowledged key, as a retrying
client would. Two kinds of kill:

- mid-stream: the kill lands wherever the writer is, usually inside a commit;
- after a commit whose answer was held back: the retry of that key must get
  the stored round back (replayed), not count a second one.

Reopened, the store must hold every acknowledged round exactly once, with
contiguous sequence numbers and counters that match the rounds.
"""

from __future__ import annotations

import signal

import pytest

from llmsession.ids import SessionId, TenantId
from llmsession.store import Round, SessionStore, open_store
from tests.store.conftest import ALL_BACKENDS, all_rounds
from tests.store.round_writer import Ack, parse_ack, read_ack, start_writer

ACME = TenantId("acme")

# Each run of the writer: how many acknowledged rounds to read, then whether the
# next round is held back (killed after its commit) or the kill lands mid-stream.
RUNS = [(25, False), (10, True), (40, False), (5, True), (30, False)]

# Redis keeps rounds in the server, which a killed client cannot take down; its
# durability across a server restart is tested in test_redis.py.
CRASH_BACKENDS = [p for p in ALL_BACKENDS if p.id in ("sqlite", "postgres")]


@pytest.mark.parametrize("store_url", CRASH_BACKENDS, indirect=True)
async def test_every_acknowledged_round_survives_sigkill(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        created = await store.create(ACME, provider_id="openai", model="gpt-4o", initial_tokens=500)
        session_id = created.record.session_id
        await store.activate(ACME, session_id)
    finally:
        await store.aclose()

    acknowledged: dict[str, Ack] = {}
    held: dict[str, Ack] = {}
    next_index = 0
    for acks_before_kill, hold in RUNS:
        hold_at = next_index + acks_before_kill if hold else None
        lines = await _run_and_kill(store_url, session_id, next_index, acks_before_kill, hold_at)
        for line in lines:
            if line.held:
                held[line.key] = line
                continue
            first = held.get(line.key)
            if first is not None:
                # The retry of a round whose answer was lost: the same round, replayed.
                assert line.replayed
                assert (line.seq, line.delta_tokens) == (first.seq, first.delta_tokens)
            assert acknowledged.setdefault(line.key, line) == line
        # Resume at the first key not acknowledged: it may or may not be stored.
        next_index += sum(not line.held for line in lines)
    in_flight = f"k{next_index}"
    assert len(held) == sum(hold for _, hold in RUNS)
    assert set(held) <= set(acknowledged)

    store = await open_store(store_url)
    try:
        rounds = await _all_rounds(store, session_id)
        stored = await store.get(ACME, session_id)
    finally:
        await store.aclose()

    assert [r.seq for r in rounds] == list(range(1, len(rounds) + 1))
    by_key = {r.idempotency_key: r for r in rounds}
    assert len(by_key) == len(rounds), "a key was counted twice"
    for key, ack in acknowledged.items():
        kept = by_key.get(key)
        assert kept is not None, f"acknowledged round {key} was lost"
        assert (kept.seq, kept.delta_tokens) == (ack.seq, ack.delta_tokens)
    assert set(by_key) - set(acknowledged) <= {in_flight}
    assert stored.record.round_count == len(rounds)
    assert stored.record.delta_tokens == sum(r.delta_tokens for r in rounds)
    assert stored.version == 2 + len(rounds)


async def _run_and_kill(
    url: str, session_id: SessionId, start: int, acks_before_kill: int, hold_at: int | None
) -> list[Ack]:
    """Run a writer from ``start``; SIGKILL it after that many acks, or once it holds one."""
    process = await start_writer(
        url, ACME, session_id, prefix="k", start=start, count=100_000, hold_at=hold_at
    )
    lines: list[Ack] = []
    try:
        while True:
            line = await read_ack(process)
            assert line is not None, "the writer finished before it could be killed"
            lines.append(line)
            if line.held or (hold_at is None and len(lines) == acks_before_kill):
                break
    finally:
        # One signal only: a second would poll the pid, and that poll can reap the
        # child before asyncio's watcher does, which then reports exit code 255.
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        assert process.stdout is not None
        # Lines printed before the kill landed are acknowledgements too.
        rest = await process.stdout.read()
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    return lines + [
        parse_ack(line) for line in rest.splitlines(keepends=True) if line.endswith(b"\n")
    ]


async def _all_rounds(store: SessionStore, session_id: SessionId) -> list[Round]:
    return await all_rounds(store, ACME, session_id)
