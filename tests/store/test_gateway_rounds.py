"""Gateway rounds in every backend: sessions started with their first round, turns of the
conversation stored with rounds and deleted when the session ends, usage totals, replays,
and one turn at a time per session.

Every test runs against every backend (memory, SQLite, PostgreSQL, Redis).
"""

from __future__ import annotations

import asyncio

import pytest

from llmsession.clock import ManualClock
from llmsession.errors import (
    ConflictError,
    NotFoundError,
    SessionExpiredError,
    WrongStateError,
)
from llmsession.ids import SessionId, TenantId
from llmsession.states import Active, SessionExpired
from llmsession.store import SessionStore
from llmsession.store.models import Turn, UsageTotals
from llmsession.usage import Usage
from tests.store.conftest import Opener

ACME = TenantId("acme")
OTHER = TenantId("other")


def turn(n: int, *, response_id: str | None = None) -> Turn:
    return Turn(
        endpoint="chat/completions",
        request_hash=f"hash-{n}",
        request_items=f'[{{"role":"user","content":"Q{n}"}}]',
        answer_items=f'[{{"role":"assistant","content":"A{n}"}}]',
        response_id=response_id,
        answer_status=200,
        answer_type="application/json",
        answer_body=f'{{"answer":{n}}}'.encode() + b"\xff\x00",
    )


def usage(input_tokens: int, cached: int = 0, output: int = 10) -> Usage:
    return Usage(
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        output_tokens=output,
        reasoning_tokens=2,
        raw={"prompt_tokens": input_tokens, "nested": {"cached_tokens": cached}},
    )


async def start(store: SessionStore, clock: ManualClock, **kwargs: object) -> SessionId:
    session_id = SessionId.generate(clock())
    await store.start_with_turn(
        ACME,
        session_id,
        provider_id="fake",
        model="gpt-4o-mini",
        turn=kwargs.pop("turn", turn(1)),  # type: ignore[arg-type]
        usage=kwargs.pop("usage", usage(1200)),  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )
    return session_id


async def test_a_started_session_is_active_with_its_first_round(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = SessionId.generate(clock())
    result = await store.start_with_turn(
        ACME, session_id, provider_id="fake", model="gpt-4o-mini", turn=turn(1), usage=usage(1200)
    )
    stored = await store.get(ACME, session_id)
    assert stored == result.session
    record = stored.record
    assert record.state is Active
    assert (record.initial_tokens, record.round_count, record.delta_tokens) == (1200, 1, 1200)
    assert record.activated_at == record.created_at == clock()
    assert stored.usage == UsageTotals(1200, 0, 0, 10, 2, 0)
    (first,) = (await store.list_rounds(ACME, session_id)).items
    assert first.gateway
    assert first.usage == usage(1200)
    assert first.usage is not None
    assert first.usage.raw == {"prompt_tokens": 1200, "nested": {"cached_tokens": 0}}
    assert await store.history(ACME, session_id) == [turn(1)]


async def test_rounds_add_turns_and_usage_and_delta_is_what_was_processed_anew(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock)
    clock.advance(1)
    result = await store.record_turn(ACME, session_id, turn=turn(2), usage=usage(1300, cached=1152))
    assert result.round.delta_tokens == 148
    assert result.round.seq == 2
    record = result.session.record
    assert (record.round_count, record.delta_tokens, record.tokens_saved) == (2, 1348, 1052)
    assert result.session.usage == UsageTotals(2500, 1152, 0, 20, 4, 0)
    assert await store.history(ACME, session_id) == [turn(1), turn(2)]
    rounds = (await store.list_rounds(ACME, session_id)).items
    assert [r.usage for r in rounds] == [usage(1200), usage(1300, cached=1152)]
    (totals,) = await store.totals(ACME)
    assert totals.usage == UsageTotals(2500, 1152, 0, 20, 4, 0)
    assert (totals.rounds, totals.delta_tokens) == (2, 1348)


async def test_a_round_without_usage_is_flagged_and_saves_nothing(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock)
    saved = (await store.get(ACME, session_id)).record.tokens_saved
    result = await store.record_turn(ACME, session_id, turn=turn(2), usage=None)
    assert result.round.usage_missing
    # Counted as the whole initial context sent anew: no saving is claimed for it.
    assert result.round.delta_tokens == result.session.record.initial_tokens == 1200
    assert result.session.record.tokens_saved == saved
    assert result.session.usage.rounds_without_usage == 1
    assert result.session.usage.input_tokens == 1200
    rounds = (await store.list_rounds(ACME, session_id)).items
    assert [r.usage_missing for r in rounds] == [False, True]
    (totals,) = await store.totals(ACME)
    assert totals.usage.rounds_without_usage == 1


async def test_a_session_started_without_usage_has_no_initial_tokens(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock, usage=None)
    record = (await store.get(ACME, session_id)).record
    assert (record.initial_tokens, record.round_count, record.tokens_saved) == (0, 1, 0)


async def test_a_round_without_a_turn_leaves_the_history_as_it_was(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock)
    await store.record_turn(ACME, session_id, turn=None, usage=usage(1300))
    assert await store.history(ACME, session_id) == [turn(1)]
    assert (await store.get(ACME, session_id)).record.round_count == 2


async def test_a_retry_returns_the_first_answer_with_its_turn(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock)
    first = await store.record_turn(
        ACME, session_id, turn=turn(2), usage=usage(1300), idempotency_key="k2"
    )
    again = await store.record_turn(
        ACME, session_id, turn=turn(9), usage=usage(9999), idempotency_key="k2"
    )
    assert again.replayed
    assert again.round == first.round
    assert again.turn == turn(2)
    assert (await store.get(ACME, session_id)).record.round_count == 2
    found = await store.find_turn(ACME, "k2", session_id)
    assert found is not None
    assert (found.round, found.turn, found.replayed) == (first.round, turn(2), True)
    assert await store.find_turn(ACME, "nope", session_id) is None


async def test_the_key_that_started_a_session_finds_it_again(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock, idempotency_key="start-1")
    found = await store.find_turn(ACME, "start-1")
    assert found is not None
    assert found.round.session_id == session_id
    assert found.round.seq == 1
    assert found.turn == turn(1)
    # Another tenant's key space is its own.
    assert await store.find_turn(OTHER, "start-1") is None
    with pytest.raises(ConflictError):
        await start(store, clock, idempotency_key="start-1")
    assert await store.find_turn(ACME, "start-2") is None


async def test_a_foreign_session_looks_missing(store: SessionStore, clock: ManualClock) -> None:
    session_id = await start(store, clock, idempotency_key="k")
    with pytest.raises(NotFoundError):
        await store.history(OTHER, session_id)
    with pytest.raises(NotFoundError):
        await store.record_turn(OTHER, session_id, turn=turn(2), usage=usage(1))
    with pytest.raises(NotFoundError):
        await store.find_turn(OTHER, "k", session_id)


async def test_closing_deletes_the_history_but_keeps_the_accounting(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock)
    await store.record_turn(ACME, session_id, turn=turn(2), usage=usage(1300), idempotency_key="k")
    closed = await store.close(ACME, session_id)
    assert closed.usage.input_tokens == 2500
    with pytest.raises(WrongStateError) as caught:
        await store.history(ACME, session_id)
    assert caught.value.actual == "closed"
    found = await store.find_turn(ACME, "k", session_id)
    assert found is not None
    assert found.turn is None
    assert found.round.usage == usage(1300)
    with pytest.raises(WrongStateError):
        await store.record_turn(ACME, session_id, turn=turn(3), usage=usage(1))


async def test_expiry_ends_the_conversation(store: SessionStore, clock: ManualClock) -> None:
    session_id = await start(store, clock, ttl_seconds=60)
    clock.advance(61)
    with pytest.raises(SessionExpiredError):
        await store.history(ACME, session_id)
    assert await store.sweep() == 1
    assert (await store.get(ACME, session_id)).record.state is SessionExpired
    with pytest.raises(SessionExpiredError):
        await store.history(ACME, session_id)
    assert await store.find_turn(ACME, "none", session_id) is None


async def test_totals_of_a_due_session_count_it_expired_with_its_usage(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock, ttl_seconds=60)
    await store.record_turn(ACME, session_id, turn=turn(2), usage=usage(1300, cached=1152))
    clock.advance(61)
    for group_by in [(), ("provider", "model")]:
        (totals,) = await store.totals(ACME, group_by)
        assert (totals.sessions[Active.name], totals.sessions[SessionExpired.name]) == (0, 1)
        assert totals.usage == UsageTotals(2500, 1152, 0, 20, 4, 0)


async def test_a_late_round_writes_the_expiry_and_is_refused(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock, ttl_seconds=60)
    clock.advance(61)
    with pytest.raises(SessionExpiredError):
        await store.record_turn(ACME, session_id, turn=turn(2), usage=usage(1))
    assert (await store.get(ACME, session_id)).record.state is SessionExpired


async def test_a_turn_past_the_deadline_writes_the_expiry_and_deletes_the_history(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock, ttl_seconds=60)
    await store.record_turn(ACME, session_id, turn=turn(2), usage=usage(1), idempotency_key="k2")
    clock.advance(61)
    with pytest.raises(SessionExpiredError):
        async with store.turn_history(ACME, session_id):
            pass
    # Written then, as a late round writes it: no sweep is needed, and the
    # conversation (the keyed round's stored answer with it) is gone.
    assert await store.sweep() == 0
    found = await store.find_turn(ACME, "k2", session_id)
    assert found is not None
    assert found.turn is None


async def test_keep_alive_renews_the_ttl_of_a_session_whose_turn_is_under_way(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock, ttl_seconds=60)
    async with store.turn_history(ACME, session_id):
        clock.advance(40)
        renewed = await store.keep_alive(ACME, session_id)
        assert renewed.deadline == clock().plus_seconds(60)
        assert renewed.record.round_count == 1
        clock.advance(50)  # the provider answers after the first deadline
        assert await store.sweep() == 0
        await store.record_turn(ACME, session_id, turn=turn(2), usage=usage(1300))
    stored = await store.get(ACME, session_id)
    assert (stored.record.state, stored.record.round_count) == (Active, 2)
    # Past its deadline it is refused as a round is, and the expiry is written.
    clock.advance(61)
    with pytest.raises(SessionExpiredError):
        await store.keep_alive(ACME, session_id)
    assert await store.sweep() == 0


async def test_a_keyed_retry_past_the_deadline_finds_the_answer_gone(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock, ttl_seconds=60)
    await store.record_turn(ACME, session_id, turn=turn(2), usage=usage(1), idempotency_key="k2")
    clock.advance(61)
    found = await store.find_turn(ACME, "k2", session_id)
    assert found is not None
    assert found.turn is None
    assert await store.sweep() == 0


async def test_the_history_is_shared_by_every_process(
    store: SessionStore, clock: ManualClock, open_more: Opener
) -> None:
    session_id = await start(store, clock, idempotency_key="s")
    other = await open_more()
    await other.record_turn(ACME, session_id, turn=turn(2), usage=usage(1300))
    assert await store.history(ACME, session_id) == [turn(1), turn(2)]
    found = await other.find_turn(ACME, "s")
    assert found is not None
    assert found.round.session_id == session_id


async def test_turns_of_one_session_go_one_at_a_time_in_arrival_order(
    store: SessionStore, clock: ManualClock, open_more: Opener
) -> None:
    session_id = await start(store, clock)
    other = await open_more()
    inside: list[int] = []
    order: list[int] = []

    async def take_turn(n: int, on: SessionStore) -> None:
        async with on.turn_lock(ACME, session_id):
            inside.append(n)
            assert len(inside) == 1
            seen = len(await on.history(ACME, session_id))
            await asyncio.sleep(0.02)
            order.append(seen)
            # A turn's round is its last write: once it commits, a store may let the
            # next turn in (PostgreSQL does, in the same call).
            inside.remove(n)
            await on.record_turn(ACME, session_id, turn=turn(n), usage=usage(1300))

    tasks = []
    for n in range(2, 8):
        tasks.append(asyncio.create_task(take_turn(n, store if n % 2 else other)))
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    # Each turn saw every turn before it.
    assert order == [1, 2, 3, 4, 5, 6]
    assert len(await store.history(ACME, session_id)) == 7


async def test_turn_history_holds_the_turn_and_reads_under_it(
    store: SessionStore, clock: ManualClock, open_more: Opener
) -> None:
    session_id = await start(store, clock)
    other = await open_more()
    inside: list[int] = []
    seen: list[int] = []

    async def take_turn(n: int, on: SessionStore) -> None:
        async with on.turn_history(ACME, session_id) as (stored, history):
            inside.append(n)
            assert len(inside) == 1
            # The session as read with the history: every round before this turn.
            assert stored.record.round_count == len(history)
            seen.append(len(history))
            await asyncio.sleep(0.02)
            inside.remove(n)
            await on.record_turn(ACME, session_id, turn=turn(n), usage=usage(1300))

    tasks = []
    for n in range(2, 6):
        tasks.append(asyncio.create_task(take_turn(n, store if n % 2 else other)))
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    assert seen == [1, 2, 3, 4]
    history = await store.history(ACME, session_id)
    # Across processes a waiter polls (Redis, SQLite): which of two comes first may vary.
    assert sorted(history, key=lambda t: t.request_hash) == [turn(n) for n in range(1, 6)]


async def test_turn_history_gives_each_turns_conversation_in_round_order(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock)
    await store.record_turn(ACME, session_id, turn=turn(2, response_id="resp_2"), usage=usage(9))
    full = await store.history(ACME, session_id)
    async with store.turn_history(ACME, session_id) as (_, history):
        # What a turn sends on; a store may leave out the answers as sent.
        assert [
            (t.endpoint, t.request_items, t.answer_items, t.response_id, t.size) for t in history
        ] == [(t.endpoint, t.request_items, t.answer_items, t.response_id, t.size) for t in full]
    # The answers as sent stay stored for a replay.
    assert [t.answer_body for t in full] == [turn(1).answer_body, turn(2).answer_body]


async def test_turn_history_refuses_as_history_does_and_gives_the_turn_back(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await start(store, clock, ttl_seconds=60)
    with pytest.raises(NotFoundError):
        async with store.turn_history(OTHER, session_id):
            pass
    with pytest.raises(NotFoundError):
        async with store.turn_history(ACME, SessionId.generate(clock())):
            pass
    clock.advance(61)
    with pytest.raises(SessionExpiredError):
        async with store.turn_history(ACME, session_id):
            pass
    closed = await start(store, clock)
    await store.close(ACME, closed)
    with pytest.raises(WrongStateError) as caught:
        async with store.turn_history(ACME, closed):
            pass
    assert caught.value.actual == "closed"
    # Every refusal gave the turn back: it is free at once.
    for held in (session_id, closed):
        async with asyncio.timeout(5), store.turn_lock(ACME, held):
            pass


async def test_big_and_odd_items_round_trip(store: SessionStore, clock: ManualClock) -> None:
    big = Turn(
        endpoint="responses",
        request_hash="h" * 64,
        request_items='[{"type":"message","role":"user","content":"' + "é✓ " * 50_000 + '"}]',
        answer_items="[]",
        response_id="resp_123",
        answer_status=200,
        answer_type="text/event-stream",
        answer_body=bytes(range(256)) * 100,
    )
    session_id = await start(store, clock, turn=big)
    assert await store.history(ACME, session_id) == [big]
