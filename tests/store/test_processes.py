"""Several processes on one store: a server and CLIs, or many replicas.

Writer processes (round_writer.py) and this process record rounds on one
session at the same time; some writers send the same idempotency keys, as
clients retrying through different replicas would. Nothing is lost and no key
is counted twice. Turn takers (turn_taker.py) hold one session's turn from two
processes: each turn sees every turn before it.
"""

from __future__ import annotations

import asyncio

import pytest

from llmsession.ids import SessionId, TenantId
from llmsession.store import Round, SessionStore, open_store
from llmsession.usage import Usage
from tests.store.conftest import DURABLE
from tests.store.round_writer import READ_TIMEOUT_SECONDS, Ack, delta_of, read_ack, start_writer
from tests.store.turn_taker import start_taker

ACME = TenantId("acme")
ROUNDS_EACH = 40
TURNS_EACH = 10


@pytest.mark.parametrize("store_url", DURABLE, indirect=True)
async def test_processes_share_one_store(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        created = await store.create(ACME, provider_id="openai", model="gpt-4o", initial_tokens=100)
        session_id = created.record.session_id
        await store.activate(ACME, session_id)

        # Writers 0 and 1 send the same keys; writer 2 and this process their own.
        writers = [
            await start_writer(
                store_url, ACME, session_id, prefix=prefix, start=0, count=ROUNDS_EACH
            )
            for prefix in ("shared-", "shared-", "solo-")
        ]
        started = [asyncio.Event() for _ in writers]
        here, *printed = await asyncio.gather(
            _record_here(store, session_id, started), *map(_read_all, writers, started)
        )
        rounds = await _all_rounds(store, session_id)
        stored = await store.get(ACME, session_id)
    finally:
        await store.aclose()

    assert all(len(acks) == ROUNDS_EACH for acks in printed)
    # Both senders of a shared key got the same round; exactly one of them recorded it.
    for first, second in zip(printed[0], printed[1], strict=True):
        assert (first.key, first.seq, first.delta_tokens) == (
            second.key,
            second.seq,
            second.delta_tokens,
        )
        assert first.replayed != second.replayed

    keys = [f"shared-{i}" for i in range(ROUNDS_EACH)] + [
        f"{prefix}{i}" for prefix in ("solo-", "here-") for i in range(ROUNDS_EACH)
    ]
    assert sorted(str(r.idempotency_key) for r in rounds) == sorted(keys)
    assert [r.seq for r in rounds] == list(range(1, len(keys) + 1))
    by_key = {r.idempotency_key: r.seq for r in rounds}
    for ack in [*printed[0], *printed[2], *here]:
        assert by_key[ack.key] == ack.seq
    assert stored.record.round_count == len(keys)
    assert stored.record.delta_tokens == 3 * sum(delta_of(i) for i in range(ROUNDS_EACH))


@pytest.mark.parametrize("store_url", DURABLE, indirect=True)
async def test_turns_of_one_session_from_two_processes_never_overlap(store_url: str) -> None:
    store = await open_store(store_url)
    try:
        session_id = SessionId.generate(store.clock())
        await store.start_with_turn(
            ACME, session_id, provider_id="fake", model="m", turn=None, usage=Usage(1)
        )
        takers = [
            await start_taker(store_url, ACME, session_id, name=name, count=TURNS_EACH)
            for name in ("a", "b")
        ]
        try:
            for taker in takers:
                assert taker.stdout is not None
                line = await asyncio.wait_for(taker.stdout.readline(), READ_TIMEOUT_SECONDS)
                assert line == b"done\n", f"a turn taker failed (exit code {await taker.wait()})"
                assert await taker.wait() == 0
        finally:
            for taker in takers:
                if taker.returncode is None:
                    taker.kill()
                    await taker.wait()
        history = await store.history(ACME, session_id)
    finally:
        await store.aclose()
    # Each turn saw exactly the turns recorded before it: none ran beside another.
    assert [int(turn.request_hash.split(":")[1]) for turn in history] == list(range(2 * TURNS_EACH))
    names = sorted(turn.request_hash.split(":")[0] for turn in history)
    assert names == ["a"] * TURNS_EACH + ["b"] * TURNS_EACH


async def _all_rounds(store: SessionStore, session_id: SessionId) -> list[Round]:
    page = await store.list_rounds(ACME, session_id, limit=1000)
    assert page.next_cursor is None
    return page.items


async def _record_here(
    store: SessionStore, session_id: SessionId, started: list[asyncio.Event]
) -> list[Ack]:
    # Start once every writer is writing, so that all four really overlap.
    for event in started:
        await event.wait()
    acks: list[Ack] = []
    for index in range(ROUNDS_EACH):
        result = await store.record_round(
            ACME, session_id, delta_of(index), idempotency_key=f"here-{index}"
        )
        acks.append(
            Ack(f"here-{index}", result.round.seq, result.round.delta_tokens, result.replayed)
        )
    return acks


async def _read_all(process: asyncio.subprocess.Process, started: asyncio.Event) -> list[Ack]:
    acks: list[Ack] = []
    try:
        while (ack := await read_ack(process)) is not None:
            acks.append(ack)
            started.set()
    except BaseException:
        if process.returncode is None:
            process.kill()
        raise
    finally:
        started.set()  # also on failure, so that nothing waits for this writer forever
        await process.wait()
    assert process.returncode == 0
    return acks
