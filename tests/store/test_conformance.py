"""One conformance suite for every SessionStore backend: the same assertions for all.

Each test runs on memory, SQLite, PostgreSQL and Redis (the last two need their
servers; see tests/conftest.py). Time comes from a ManualClock, so deadlines and
timestamps are asserted to the microsecond.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest

from llmsession import (
    MAX_TOKENS,
    Active,
    Closed,
    Created,
    IdempotencyConflict,
    InvalidInput,
    NotFoundError,
    SessionExpired,
    SessionExpiredError,
    SessionId,
    StoreError,
    TenantId,
    Timestamp,
    TokenOverflow,
    WrongStateError,
)
from llmsession.clock import ManualClock
from llmsession.errors import (
    AuthenticationError,
    ConflictError,
    InvalidIdentifier,
    InvalidTokenCount,
)
from llmsession.expiry import MAX_TTL_SECONDS
from llmsession.keys import authenticate, hash_secret, issue_key
from llmsession.store import (
    DEFAULT_TTL_SECONDS,
    Round,
    SessionQuery,
    SessionStore,
    StoredSession,
    Totals,
    open_store,
)
from llmsession.store.cursor import encode_cursor
from tests.store.conftest import DURABLE, T0, Opener, all_rounds, all_sessions

ACME = TenantId("acme")
GLOBEX = TenantId("globex")


async def new_session(
    store: SessionStore,
    tenant: TenantId = ACME,
    *,
    provider_id: str = "openai",
    model: str = "gpt-4o",
    initial_tokens: int = 1000,
    ttl_seconds: int | None = None,
    activate: bool = True,
) -> SessionId:
    created = await store.create(
        tenant,
        provider_id=provider_id,
        model=model,
        initial_tokens=initial_tokens,
        ttl_seconds=ttl_seconds,
    )
    if activate:
        await store.activate(tenant, created.record.session_id)
    return created.record.session_id


def assert_wrong_state(
    error: pytest.ExceptionInfo[WrongStateError], method: str, required: str, actual: str
) -> None:
    assert (error.value.method, error.value.required, error.value.actual) == (
        method,
        required,
        actual,
    )


# -- lifecycle -------------------------------------------------------------------


async def test_create_stores_a_created_session(store: SessionStore) -> None:
    created = await store.create(ACME, provider_id="openai", model="gpt-4o", initial_tokens=1200)
    record = created.record
    assert record.state is Created
    assert (record.tenant_id, record.provider_id, record.model) == (ACME, "openai", "gpt-4o")
    assert (record.initial_tokens, record.round_count, record.delta_tokens) == (1200, 0, 0)
    assert record.created_at == T0
    assert (created.version, created.ttl_seconds, created.last_activity_at) == (
        1,
        DEFAULT_TTL_SECONDS,
        T0,
    )
    assert created.deadline is None
    assert await store.get(ACME, record.session_id) == created


async def test_activate_rounds_close(store: SessionStore, clock: ManualClock) -> None:
    session_id = await new_session(store, activate=False, initial_tokens=1000)
    activated_at = clock.advance(1)
    active = await store.activate(ACME, session_id)
    assert active.record.state is Active
    assert active.record.activated_at == activated_at
    assert active.deadline == activated_at.plus_seconds(DEFAULT_TTL_SECONDS)

    for seq, delta in enumerate([100, 0, 250], start=1):
        at = clock.advance(2)
        result = await store.record_round(ACME, session_id, delta)
        assert not result.replayed
        assert result.round == Round(session_id, seq, delta, at, None)
        assert result.session.record.round_count == seq
        assert result.session.last_activity_at == at
        assert result.session.deadline == at.plus_seconds(DEFAULT_TTL_SECONDS)
    session = await store.get(ACME, session_id)
    assert (session.record.round_count, session.record.delta_tokens) == (3, 350)
    assert session.record.tokens_saved == 3 * 1000 - 350

    last_round_at = session.last_activity_at
    closed_at = clock.advance(5)
    closed = await store.close(ACME, session_id)
    assert closed.record.state is Closed
    assert closed.record.closed_at == closed_at
    assert (closed.record.round_count, closed.record.delta_tokens) == (3, 350)
    assert closed.last_activity_at == last_round_at
    assert closed.deadline is None
    assert await store.get(ACME, session_id) == closed
    assert [r.seq for r in await all_rounds(store, ACME, session_id)] == [1, 2, 3]


async def test_every_change_bumps_the_version_by_one(store: SessionStore) -> None:
    session_id = await new_session(store, activate=False)
    versions = [(await store.get(ACME, session_id)).version]
    versions.append((await store.activate(ACME, session_id)).version)
    versions.append((await store.record_round(ACME, session_id, 1)).session.version)
    versions.append((await store.close(ACME, session_id)).version)
    assert versions == [1, 2, 3, 4]


async def test_expire_now_or_at_the_deadline(store: SessionStore, clock: ManualClock) -> None:
    early = await new_session(store, ttl_seconds=100)
    late = await new_session(store, ttl_seconds=100)
    now = clock.advance(30)
    expired = await store.expire(ACME, early)
    assert expired.record.state is SessionExpired
    assert expired.record.expired_at == now
    assert expired.deadline is None

    clock.advance(500)
    expired_late = await store.expire(ACME, late)
    assert expired_late.record.expired_at == T0.plus_seconds(100)
    assert await store.get(ACME, late) == expired_late


# -- wrong state -----------------------------------------------------------------


async def test_created_session_refuses_active_methods(store: SessionStore) -> None:
    session_id = await new_session(store, activate=False)
    with pytest.raises(WrongStateError) as rounds:
        await store.record_round(ACME, session_id, 10)
    assert_wrong_state(rounds, "record_delta", "active", "created")
    with pytest.raises(WrongStateError) as close:
        await store.close(ACME, session_id)
    assert_wrong_state(close, "close", "active", "created")
    with pytest.raises(WrongStateError) as expire:
        await store.expire(ACME, session_id)
    assert_wrong_state(expire, "expire", "active", "created")
    assert not isinstance(expire.value, SessionExpiredError)
    stored = await store.get(ACME, session_id)
    assert (stored.record.state, stored.version) == (Created, 1)


async def test_active_session_refuses_activate(store: SessionStore) -> None:
    session_id = await new_session(store)
    with pytest.raises(WrongStateError) as error:
        await store.activate(ACME, session_id)
    assert_wrong_state(error, "activate", "created", "active")
    assert (await store.get(ACME, session_id)).version == 2


async def test_closed_session_refuses_everything(store: SessionStore) -> None:
    session_id = await new_session(store)
    closed = await store.close(ACME, session_id)
    cases = [
        (store.activate(ACME, session_id), "activate", "created"),
        (store.record_round(ACME, session_id, 1), "record_delta", "active"),
        (store.close(ACME, session_id), "close", "active"),
        (store.expire(ACME, session_id), "expire", "active"),
    ]
    for call, method, required in cases:
        with pytest.raises(WrongStateError) as error:
            await call
        assert_wrong_state(error, method, required, "closed")
        assert not isinstance(error.value, SessionExpiredError)
    assert await store.get(ACME, session_id) == closed


async def test_expired_session_refuses_everything_as_expired(store: SessionStore) -> None:
    session_id = await new_session(store)
    expired = await store.expire(ACME, session_id)
    cases = [
        (store.activate(ACME, session_id), "activate", "created"),
        (store.record_round(ACME, session_id, 1), "record_delta", "active"),
        (store.close(ACME, session_id), "close", "active"),
        (store.expire(ACME, session_id), "expire", "active"),
    ]
    for call, method, required in cases:
        with pytest.raises(SessionExpiredError) as error:
            await call
        assert_wrong_state(error, method, required, "expired")
    assert await store.get(ACME, session_id) == expired


# -- tenant isolation -------------------------------------------------------------


async def test_a_foreign_session_looks_missing_to_every_operation(store: SessionStore) -> None:
    theirs = await new_session(store, ACME)
    await store.record_round(ACME, theirs, 10, idempotency_key="k")
    before = await store.get(ACME, theirs)
    missing = SessionId.generate(T0)

    def operations(session_id: SessionId) -> list[Coroutine[Any, Any, object]]:
        return [
            store.get(GLOBEX, session_id),
            store.activate(GLOBEX, session_id),
            store.record_round(GLOBEX, session_id, 5),
            store.record_round(GLOBEX, session_id, 10, idempotency_key="k"),
            store.close(GLOBEX, session_id),
            store.expire(GLOBEX, session_id),
            store.list_rounds(GLOBEX, session_id),
        ]

    foreign = operations(theirs)
    absent = operations(missing)
    for foreign_call, absent_call in zip(foreign, absent, strict=True):
        with pytest.raises(NotFoundError) as foreign_error:
            await foreign_call
        with pytest.raises(NotFoundError) as absent_error:
            await absent_call
        assert type(foreign_error.value) is type(absent_error.value)
        assert str(foreign_error.value).replace(str(theirs), "<id>") == str(
            absent_error.value
        ).replace(str(missing), "<id>")

    assert await store.get(ACME, theirs) == before
    assert (await store.list_sessions(GLOBEX, SessionQuery())).items == []
    assert await store.totals(GLOBEX) == []
    assert await store.totals(GLOBEX, ["provider", "model"]) == []
    assert [s.record.session_id for s in await all_sessions(store, ACME)] == [theirs]


async def test_tenants_count_only_their_own(store: SessionStore) -> None:
    mine = await new_session(store, ACME)
    await store.record_round(ACME, mine, 7)
    other = await new_session(store, GLOBEX, initial_tokens=10)
    await store.record_round(GLOBEX, other, 3)
    await store.record_round(GLOBEX, other, 3)
    [acme] = await store.totals(ACME)
    [globex] = await store.totals(GLOBEX)
    assert (acme.rounds, acme.delta_tokens, acme.sessions["active"]) == (1, 7, 1)
    assert (globex.rounds, globex.delta_tokens, globex.tokens_saved) == (2, 6, 14)


# -- idempotency ------------------------------------------------------------------


async def test_a_repeated_key_returns_the_first_round(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await new_session(store)
    first = await store.record_round(ACME, session_id, 40, idempotency_key="req-1")
    clock.advance(3)
    again = await store.record_round(ACME, session_id, 40, idempotency_key="req-1")
    assert again.replayed
    assert not first.replayed
    assert again.round == first.round
    assert again.round.idempotency_key == "req-1"
    assert again.session == first.session
    assert await store.get(ACME, session_id) == first.session
    assert len(await all_rounds(store, ACME, session_id)) == 1


async def test_a_replay_returns_the_first_answer_after_more_rounds(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await new_session(store)
    answers = []
    for turn, delta in enumerate([40, 7, 0, 12]):
        clock.advance(5)
        answers.append(
            await store.record_round(ACME, session_id, delta, idempotency_key=f"req-{turn}")
        )
        await store.record_round(ACME, session_id, 3)
    clock.advance(5)
    for turn, first in enumerate(answers):
        again = await store.record_round(
            ACME, session_id, first.round.delta_tokens, idempotency_key=f"req-{turn}"
        )
        assert again.replayed
        assert again.round == first.round
        # The session exactly as the first answer gave it, not as it is now.
        assert again.session == first.session
        assert again.session.deadline == first.session.deadline
        assert again.session.record.round_count == first.round.seq == 2 * turn + 1
    # The second round under a key came after rounds of 40 and 3 tokens.
    assert answers[1].session.record.delta_tokens == 50
    assert answers[1].session.version == 2 + 3
    current = await store.get(ACME, session_id)
    assert (current.record.round_count, current.record.delta_tokens) == (8, 71)


async def test_a_replay_after_close_or_expiry_returns_the_first_answer(
    store: SessionStore, clock: ManualClock
) -> None:
    closed = await new_session(store, ttl_seconds=60)
    expired = await new_session(store, ttl_seconds=60)
    first = {}
    for session_id in (closed, expired):
        await store.record_round(ACME, session_id, 9)
        clock.advance(10)
        first[session_id] = await store.record_round(ACME, session_id, 40, idempotency_key="req")
    await store.close(ACME, closed)
    clock.advance(61)
    assert await store.sweep() == 1
    for session_id in (closed, expired):
        again = await store.record_round(ACME, session_id, 40, idempotency_key="req")
        assert again.replayed
        assert (again.round, again.session) == (first[session_id].round, first[session_id].session)
        assert again.session.record.state is Active
        assert (again.session.record.round_count, again.session.record.delta_tokens) == (2, 49)
    assert (await store.get(ACME, closed)).record.state is Closed
    assert (await store.get(ACME, expired)).record.state is SessionExpired


async def test_a_replay_through_another_store_returns_the_first_answer(
    store: SessionStore, open_more: Opener, clock: ManualClock
) -> None:
    other = await open_more()
    session_id = await new_session(store)
    first = await store.record_round(ACME, session_id, 40, idempotency_key="req")
    clock.advance(1)
    await other.record_round(ACME, session_id, 5)
    clock.advance(1)
    # Each store remembers a different version of the session.
    for through in (store, other, store):
        again = await through.record_round(ACME, session_id, 40, idempotency_key="req")
        assert (again.replayed, again.round, again.session) == (True, first.round, first.session)


async def test_a_reused_key_with_another_delta_conflicts(store: SessionStore) -> None:
    session_id = await new_session(store)
    first = await store.record_round(ACME, session_id, 40, idempotency_key="req-1")
    with pytest.raises(IdempotencyConflict, match="req-1"):
        await store.record_round(ACME, session_id, 41, idempotency_key="req-1")
    assert await store.get(ACME, session_id) == first.session
    assert await all_rounds(store, ACME, session_id) == [first.round]


async def test_keys_belong_to_one_session(store: SessionStore) -> None:
    one = await new_session(store)
    two = await new_session(store)
    a = await store.record_round(ACME, one, 5, idempotency_key="same")
    b = await store.record_round(ACME, two, 9, idempotency_key="same")
    assert not a.replayed
    assert not b.replayed
    assert (b.round.session_id, b.round.seq, b.round.delta_tokens) == (two, 1, 9)


async def test_a_retry_after_close_still_gets_the_first_result(store: SessionStore) -> None:
    session_id = await new_session(store)
    first = await store.record_round(ACME, session_id, 40, idempotency_key="req-1")
    await store.close(ACME, session_id)
    again = await store.record_round(ACME, session_id, 40, idempotency_key="req-1")
    assert again.replayed
    assert again.round == first.round
    with pytest.raises(WrongStateError):
        await store.record_round(ACME, session_id, 40, idempotency_key="req-2")


async def test_concurrent_requests_with_one_key_count_once(store: SessionStore) -> None:
    session_id = await new_session(store)
    results = await asyncio.gather(
        *(store.record_round(ACME, session_id, 12, idempotency_key="once") for _ in range(24))
    )
    assert sum(not r.replayed for r in results) == 1
    assert {r.round for r in results} == {results[0].round}
    assert {r.session for r in results} == {results[0].session}
    stored = await store.get(ACME, session_id)
    assert (stored.record.round_count, stored.record.delta_tokens) == (1, 12)
    assert len(await all_rounds(store, ACME, session_id)) == 1


# -- concurrency ------------------------------------------------------------------


async def test_64_concurrent_clients_lose_no_round(store: SessionStore) -> None:
    session_id = await new_session(store, initial_tokens=500)
    clients, per_client = 64, 4

    async def client(number: int) -> list[int]:
        sent: list[int] = []
        for i in range(per_client):
            delta = number * 10 + i
            await store.record_round(ACME, session_id, delta)
            sent.append(delta)
        return sent

    sent = [d for deltas in await asyncio.gather(*map(client, range(clients))) for d in deltas]
    stored = await store.get(ACME, session_id)
    assert stored.record.round_count == clients * per_client
    assert stored.record.delta_tokens == sum(sent)
    assert stored.version == 2 + clients * per_client
    rounds = await all_rounds(store, ACME, session_id)
    assert [r.seq for r in rounds] == list(range(1, clients * per_client + 1))
    assert Counter(r.delta_tokens for r in rounds) == Counter(sent)


async def test_close_racing_rounds_keeps_every_acknowledged_round(store: SessionStore) -> None:
    session_id = await new_session(store)

    async def one_round(delta: int) -> int:
        try:
            await store.record_round(ACME, session_id, delta)
        except WrongStateError as error:
            assert (error.method, error.actual) == ("record_delta", "closed")
            return 0
        return 1

    async def close() -> int:
        await store.close(ACME, session_id)
        return 0

    calls = [one_round(d) for d in range(1, 21)]
    accepted = await asyncio.gather(*calls[:10], close(), *calls[10:])
    stored = await store.get(ACME, session_id)
    assert stored.record.state is Closed
    assert stored.record.round_count == sum(accepted)
    assert len(await all_rounds(store, ACME, session_id)) == sum(accepted)


# -- several stores on one backend --------------------------------------------------
# SQLite, PostgreSQL and Redis stores remember the sessions they last wrote and
# start the next change from that; these tests make that memory outdated
# through another store (another process or replica) on the same data.


async def test_changes_through_two_stores_take_turns_exactly(
    store: SessionStore, open_more: Opener
) -> None:
    other = await open_more()
    session_id = await new_session(store)
    for turn in range(6):
        through = (store, other)[turn % 2]
        result = await through.record_round(ACME, session_id, 10, idempotency_key=f"k{turn}")
        assert (result.replayed, result.round.seq) == (False, turn + 1)
    # A key used through the other store is replayed, not counted again.
    again = await store.record_round(ACME, session_id, 10, idempotency_key="k5")
    assert (again.replayed, again.round.seq) == (True, 6)
    await other.close(ACME, session_id)
    # This store last saw the session Active; the answer follows what is stored.
    with pytest.raises(WrongStateError) as error:
        await store.record_round(ACME, session_id, 10)
    assert_wrong_state(error, "record_delta", "active", "closed")
    final = await store.get(ACME, session_id)
    assert (final.record.state, final.record.round_count, final.version) == (Closed, 6, 9)
    assert [r.seq for r in await all_rounds(store, ACME, session_id)] == list(range(1, 7))


async def test_a_session_activated_by_another_store_takes_rounds_here(
    store: SessionStore, open_more: Opener
) -> None:
    other = await open_more()
    session_id = await new_session(store, activate=False)
    # Refused: this store has now seen the session Created.
    with pytest.raises(WrongStateError):
        await store.record_round(ACME, session_id, 5)
    await other.activate(ACME, session_id)
    result = await store.record_round(ACME, session_id, 5)
    assert (result.round.seq, result.session.record.state, result.session.version) == (
        1,
        Active,
        3,
    )
    # And the other way round: seen Active here, closed there.
    await other.close(ACME, session_id)
    with pytest.raises(WrongStateError) as error:
        await store.activate(ACME, session_id)
    assert_wrong_state(error, "activate", "created", "closed")


async def test_a_session_expired_by_another_store_refuses_a_round(
    store: SessionStore, open_more: Opener, clock: ManualClock
) -> None:
    other = await open_more()
    session_id = await new_session(store, ttl_seconds=60)
    await store.record_round(ACME, session_id, 5)
    clock.advance(70)
    assert await other.sweep() == 1
    with pytest.raises(SessionExpiredError):
        await store.record_round(ACME, session_id, 5)
    with pytest.raises(WrongStateError) as error:
        await store.close(ACME, session_id)
    assert_wrong_state(error, "close", "active", "expired")
    stored = await store.get(ACME, session_id)
    assert (stored.record.state, stored.record.round_count, stored.version) == (
        SessionExpired,
        1,
        4,
    )
    assert stored.record.expired_at == T0.plus_seconds(60)


async def test_a_session_purged_by_another_store_is_gone_for_this_one(
    store: SessionStore, open_more: Opener, clock: ManualClock
) -> None:
    other = await open_more()
    session_id = await new_session(store, activate=False)
    # A refused change still shows this store the session.
    with pytest.raises(WrongStateError):
        await store.record_round(ACME, session_id, 5)
    clock.advance(60)
    assert await other.purge_created(60) == 1
    with pytest.raises(NotFoundError):
        await store.activate(ACME, session_id)
    with pytest.raises(NotFoundError):
        await store.get(ACME, session_id)


# -- expiry -------------------------------------------------------------------------


async def test_ttl_default_and_override(store_url: str, clock: ManualClock) -> None:
    other = await open_store(store_url, clock=clock, default_ttl_seconds=120)
    try:
        default = await new_session(other)
        custom = await new_session(other, ttl_seconds=30)
        assert (await other.get(ACME, default)).deadline == T0.plus_seconds(120)
        assert (await other.get(ACME, custom)).deadline == T0.plus_seconds(30)
        assert (await other.get(ACME, custom)).ttl_seconds == 30
    finally:
        await other.aclose()


async def test_a_round_pushes_the_deadline(store: SessionStore, clock: ManualClock) -> None:
    session_id = await new_session(store, ttl_seconds=60)
    for _ in range(3):
        clock.advance(59)
        await store.record_round(ACME, session_id, 1)
    stored = await store.get(ACME, session_id)
    assert stored.record.state is Active
    assert stored.deadline == T0.plus_seconds(3 * 59 + 60)


async def test_a_late_round_is_refused_before_any_sweep(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await new_session(store, ttl_seconds=60)
    await store.record_round(ACME, session_id, 5)
    clock.now = T0.plus_seconds(60)  # exactly the deadline: due
    with pytest.raises(SessionExpiredError) as error:
        await store.record_round(ACME, session_id, 5)
    assert_wrong_state(error, "record_delta", "active", "expired")
    stored = await store.get(ACME, session_id)
    assert stored.record.state is SessionExpired
    assert stored.record.expired_at == T0.plus_seconds(60)
    assert (stored.record.round_count, stored.record.delta_tokens) == (1, 5)
    assert await store.sweep() == 0


async def test_a_round_just_before_the_deadline_counts(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await new_session(store, ttl_seconds=60)
    clock.now = T0.plus_seconds(60 - 0.000001)
    result = await store.record_round(ACME, session_id, 5)
    assert result.session.record.state is Active


async def test_a_late_close_is_refused_as_expired(store: SessionStore, clock: ManualClock) -> None:
    session_id = await new_session(store, ttl_seconds=60)
    clock.advance(61)
    with pytest.raises(SessionExpiredError) as error:
        await store.close(ACME, session_id)
    assert_wrong_state(error, "close", "active", "expired")
    assert (await store.get(ACME, session_id)).record.expired_at == T0.plus_seconds(60)


async def test_sweep_expires_exactly_the_due_sessions(
    store: SessionStore, clock: ManualClock
) -> None:
    due_ttls = [10, 20]
    due = [await new_session(store, ttl_seconds=ttl) for ttl in due_ttls]
    due.append(await new_session(store, GLOBEX, ttl_seconds=15))
    not_yet = await new_session(store, ttl_seconds=21)
    created = await new_session(store, ttl_seconds=1, activate=False)
    closed = await new_session(store, ttl_seconds=1)
    await store.close(ACME, closed)
    before = {sid: await store.get(ACME, sid) for sid in (not_yet, created, closed)}

    clock.advance(20)
    assert await store.sweep() == 3
    for session_id, tenant, ttl in zip(due, [ACME, ACME, GLOBEX], [10, 20, 15], strict=True):
        stored = await store.get(tenant, session_id)
        assert stored.record.state is SessionExpired
        assert stored.record.expired_at == T0.plus_seconds(ttl)
        assert stored.version == 3
    for session_id, stored in before.items():
        assert await store.get(ACME, session_id) == stored
    assert await store.sweep() == 0


async def test_sweep_honours_its_limit(store: SessionStore, clock: ManualClock) -> None:
    for _ in range(5):
        await new_session(store, ttl_seconds=10)
    clock.advance(10)
    assert [await store.sweep(limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert (await store.totals(ACME))[0].sessions["expired"] == 5


async def test_a_zero_limit_sweeps_and_purges_nothing(
    store: SessionStore, clock: ManualClock
) -> None:
    await new_session(store, ttl_seconds=10)
    old = await new_session(store, activate=False)
    clock.advance(60)
    assert await store.sweep(limit=0) == 0
    assert await store.purge_created(60, limit=0) == 0
    assert (await store.get(ACME, old)).record.state is Created
    assert await store.sweep() == 1  # still due: the zero-limit sweep wrote nothing


@pytest.mark.parametrize("limit", [-1, True, 1.5, "10", 2**63])
async def test_a_bad_batch_limit_is_refused(store: SessionStore, limit: object) -> None:
    due = await new_session(store, ttl_seconds=10)
    with pytest.raises(InvalidInput, match="limit must be an integer from 0 to 2"):
        await store.sweep(limit=limit)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(InvalidInput, match="limit must be an integer from 0 to 2"):
        await store.purge_created(60, limit=limit)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert (await store.get(ACME, due)).record.state is Active


@pytest.mark.parametrize("seconds", [-1, True, "60", float("nan"), float("inf"), None])
async def test_a_bad_purge_age_is_refused(store: SessionStore, seconds: object) -> None:
    created = await new_session(store, activate=False)
    with pytest.raises(InvalidInput, match="older_than_seconds must be a finite number"):
        await store.purge_created(seconds)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert (await store.get(ACME, created)).record.state is Created


async def test_racing_sweepers_expire_each_session_once(
    store: SessionStore, open_more: Opener, clock: ManualClock
) -> None:
    ids = [await new_session(store, ttl_seconds=10 + i % 4) for i in range(40)]
    sweepers = [store, *[await open_more() for _ in range(3)]]
    clock.advance(20)

    async def sweep_until_done(sweeper: SessionStore) -> int:
        total = 0
        while count := await sweeper.sweep(limit=7):
            total += count
        return total

    counts = await asyncio.gather(*map(sweep_until_done, sweepers))
    assert sum(counts) == len(ids)
    for i, session_id in enumerate(ids):
        stored = await store.get(ACME, session_id)
        assert stored.record.state is SessionExpired
        assert stored.record.expired_at == T0.plus_seconds(10 + i % 4)
        assert stored.version == 3  # created, activated, expired: written once


async def test_sweeping_races_late_rounds_without_double_expiry(
    store: SessionStore, open_more: Opener, clock: ManualClock
) -> None:
    ids = [await new_session(store, ttl_seconds=10) for _ in range(20)]
    other = await open_more()
    clock.advance(10)

    async def late_round(session_id: SessionId) -> None:
        with pytest.raises(SessionExpiredError):
            await other.record_round(ACME, session_id, 1)

    sweeper = asyncio.create_task(store.sweep())
    await asyncio.gather(*map(late_round, ids))
    assert 0 <= await sweeper <= len(ids)
    for session_id in ids:
        stored = await store.get(ACME, session_id)
        assert (stored.record.state, stored.version) == (SessionExpired, 3)
        assert stored.record.expired_at == T0.plus_seconds(10)


# -- reads as of now: a due session is shown expired before any sweep ------------


async def listed(store: SessionStore, tenant: TenantId, **filters: Any) -> list[StoredSession]:
    """Every session of a listing, walked two at a time, so that pages meet cursors."""
    found: list[StoredSession] = []
    cursor: str | None = None
    while True:
        page = await store.list_sessions(tenant, SessionQuery(limit=2, cursor=cursor, **filters))
        found += page.items
        if page.next_cursor is None:
            return found
        cursor = page.next_cursor


async def test_reads_show_a_due_session_as_the_sweeper_will_write_it(
    store: SessionStore, clock: ManualClock
) -> None:
    due = await new_session(store, ttl_seconds=10)
    await store.record_round(ACME, due, 40)
    live = await new_session(store, ttl_seconds=30)
    foreign = await new_session(store, GLOBEX, ttl_seconds=10)
    clock.now = T0.plus_seconds(10)  # exactly due's deadline

    shown = await store.get(ACME, due)
    assert shown.record.state is SessionExpired
    assert shown.record.expired_at == T0.plus_seconds(10)
    assert shown.deadline is None
    assert (shown.record.round_count, shown.record.delta_tokens) == (1, 40)
    assert (await store.get(ACME, live)).record.state is Active
    assert [s.record.session_id for s in await listed(store, ACME, state=Active)] == [live]
    assert await listed(store, ACME, state=SessionExpired) == [shown]
    states = {s.record.session_id: s.record.state for s in await listed(store, ACME)}
    assert states == {due: SessionExpired, live: Active}
    [totals] = await store.totals(ACME)
    assert totals.sessions == {"created": 0, "active": 1, "closed": 0, "expired": 1}
    assert (totals.rounds, totals.delta_tokens, totals.tokens_saved) == (1, 40, 960)

    # Reads wrote nothing: the sweeper expires each once, to exactly what was shown.
    assert await store.sweep() == 2
    assert await store.get(ACME, due) == shown
    assert await listed(store, ACME, state=SessionExpired) == [shown]
    assert (await store.totals(ACME))[0] == totals
    assert (await store.get(GLOBEX, foreign)).record.state is SessionExpired


async def test_a_session_is_active_until_its_deadline(
    store: SessionStore, clock: ManualClock
) -> None:
    session_id = await new_session(store, ttl_seconds=10)
    clock.now = T0.plus_seconds(10 - 0.000001)
    assert (await store.get(ACME, session_id)).record.state is Active
    assert len(await listed(store, ACME, state=Active)) == 1
    assert await listed(store, ACME, state=SessionExpired) == []
    assert (await store.totals(ACME))[0].sessions["active"] == 1


async def test_state_listings_page_through_due_and_swept_sessions(
    store: SessionStore, clock: ManualClock
) -> None:
    # Created a second apart, newest last; ttl 100 for the even ones, 1000 for the odd.
    ids: list[SessionId] = []
    for i in range(8):
        ids.append(await new_session(store, ttl_seconds=100 if i % 2 == 0 else 1000))
        clock.advance(1)
    await new_session(store, GLOBEX, ttl_seconds=1)
    clock.now = T0.plus_seconds(103)  # sessions 0 and 2 are due
    assert await store.sweep() == 3  # and GLOBEX's
    clock.now = T0.plus_seconds(106)  # now 4 and 6 too, not swept
    await store.close(ACME, ids[7])

    expired = await listed(store, ACME, state=SessionExpired)
    assert [s.record.session_id for s in expired] == [ids[6], ids[4], ids[2], ids[0]]
    assert [s.record.expired_at for s in expired] == [
        T0.plus_seconds(t) for t in (106, 104, 102, 100)
    ]
    active = await listed(store, ACME, state=Active)
    assert [s.record.session_id for s in active] == [ids[5], ids[3], ids[1]]
    assert [s.record.session_id for s in await listed(store, ACME)] == ids[::-1]
    # Filters combine with the due ones as with the stored ones.
    assert await listed(store, ACME, state=SessionExpired, model="other") == []
    after = T0.plus_seconds(3.5)
    assert [
        s.record.session_id
        for s in await listed(store, ACME, state=SessionExpired, created_after=after)
    ] == [ids[6], ids[4]]
    [totals] = await store.totals(ACME)
    assert totals.sessions == {"created": 0, "active": 3, "closed": 1, "expired": 4}


async def test_totals_move_due_sessions_within_their_group(
    store: SessionStore, clock: ManualClock
) -> None:
    await new_session(store, provider_id="a", model="m1", ttl_seconds=10)
    await new_session(store, provider_id="a", model="m2", ttl_seconds=50)
    await new_session(store, provider_id="b", model="m1", ttl_seconds=10)
    clock.advance(10)
    groups = await store.totals(ACME, ["provider", "model"])
    assert [
        (g.provider_id, g.model, g.sessions["active"], g.sessions["expired"]) for g in groups
    ] == [
        ("a", "m1", 0, 1),
        ("a", "m2", 1, 0),
        ("b", "m1", 0, 1),
    ]
    by_model = await store.totals(ACME, ["model"])
    assert [(g.model, g.sessions["active"], g.sessions["expired"]) for g in by_model] == [
        ("m1", 0, 2),
        ("m2", 1, 0),
    ]
    assert (await store.totals(GLOBEX)) == []


async def test_a_due_session_read_through_another_store_matches_this_one(
    store: SessionStore, clock: ManualClock, open_more: Opener
) -> None:
    # The other store remembers the session as Active (it wrote the round).
    other = await open_more()
    session_id = await new_session(store, ttl_seconds=10)
    await other.record_round(ACME, session_id, 3)
    clock.advance(10)
    shown = await store.get(ACME, session_id)
    assert shown.record.state is SessionExpired
    assert await other.get(ACME, session_id) == shown
    # A change starts from the session as stored, not as shown: a late close
    # through a store that remembers nothing of it writes the expiry, once.
    fresh = await open_more()
    with pytest.raises(SessionExpiredError):
        await fresh.close(ACME, session_id)
    assert await store.sweep() == 0
    with pytest.raises(SessionExpiredError):
        await other.record_round(ACME, session_id, 3)
    assert await store.get(ACME, session_id) == shown


# -- purge_created ------------------------------------------------------------------


async def test_purge_created_removes_only_old_created_sessions(
    store: SessionStore, clock: ManualClock
) -> None:
    old = [await new_session(store, activate=False) for _ in range(3)]
    foreign_old = await new_session(store, GLOBEX, activate=False)
    active = await new_session(store)
    clock.advance(100)
    fresh = await new_session(store, activate=False)
    clock.advance(1)  # old ones are 101 s old, fresh is 1 s old

    assert await store.purge_created(101, limit=2) == 2
    assert await store.purge_created(101) == 2
    assert await store.purge_created(101) == 0
    for session_id, tenant in [*((s, ACME) for s in old), (foreign_old, GLOBEX)]:
        with pytest.raises(NotFoundError):
            await store.get(tenant, session_id)
    assert (await store.get(ACME, active)).record.state is Active
    assert (await store.get(ACME, fresh)).record.state is Created
    assert {s.record.session_id for s in await all_sessions(store, ACME)} == {active, fresh}
    [totals] = await store.totals(ACME)
    assert totals.sessions == {"created": 1, "active": 1, "closed": 0, "expired": 0}


async def test_purge_created_boundary_is_inclusive(store: SessionStore, clock: ManualClock) -> None:
    await new_session(store, activate=False)
    clock.advance(90)
    assert await store.purge_created(91) == 0
    assert await store.purge_created(90) == 1


@pytest.mark.parametrize("seconds", [0, 1, 59, 59.999])
async def test_purge_created_refuses_an_age_under_a_minute(
    store: SessionStore, clock: ManualClock, seconds: float
) -> None:
    created = await new_session(store, activate=False)
    clock.advance(3600)
    with pytest.raises(InvalidInput, match="older_than_seconds must be at least 60"):
        await store.purge_created(seconds)
    assert (await store.get(ACME, created)).record.state is Created
    assert await store.purge_created(60) == 1


async def test_purge_created_can_be_scoped_to_one_tenant(
    store: SessionStore, clock: ManualClock
) -> None:
    # Another tenant's sessions come first in creation order, so a scoped purge
    # has to look past them.
    theirs = [await new_session(store, GLOBEX, activate=False) for _ in range(5)]
    clock.advance(1)
    mine = [await new_session(store, ACME, activate=False) for _ in range(3)]
    active = await new_session(store, ACME)
    clock.advance(60)

    assert await store.purge_created(60, limit=2, tenant_id=ACME) == 2
    assert await store.purge_created(60, tenant_id=ACME) == 1
    assert await store.purge_created(60, tenant_id=ACME) == 0
    assert await store.purge_created(60, tenant_id=TenantId("nobody")) == 0
    for session_id in mine:
        with pytest.raises(NotFoundError):
            await store.get(ACME, session_id)
    assert (await store.get(ACME, active)).record.state is Active
    for session_id in theirs:
        assert (await store.get(GLOBEX, session_id)).record.state is Created
    [totals] = await store.totals(GLOBEX)
    assert totals.sessions["created"] == 5

    assert await store.purge_created(60) == 5


# -- listing sessions ------------------------------------------------------------


def newest_first(sessions: list[StoredSession]) -> list[SessionId]:
    ordered = sorted(
        sessions, key=lambda s: (s.record.created_at, s.record.session_id), reverse=True
    )
    return [s.record.session_id for s in ordered]


async def test_cursor_walk_sees_each_session_once_while_sessions_are_added(
    store: SessionStore, clock: ManualClock
) -> None:
    originals: list[StoredSession] = []
    for i in range(23):
        if i % 3 == 0:  # several sessions share a created_at: session_id breaks the tie
            clock.advance(1)
        session_id = await new_session(store, activate=i % 2 == 0)
        originals.append(await store.get(ACME, session_id))
    await new_session(store, GLOBEX)

    seen: list[SessionId] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.list_sessions(ACME, SessionQuery(limit=5, cursor=cursor))
        seen += [s.record.session_id for s in page.items]
        pages += 1
        # Newer sessions arrive between pages; they belong before the first page.
        clock.advance(1)
        await new_session(store)
        if page.next_cursor is None:
            break
        assert len(page.items) == 5
        cursor = page.next_cursor
    assert pages == 5
    assert seen == newest_first(originals)


async def test_an_exact_last_page_has_no_cursor(store: SessionStore) -> None:
    for _ in range(6):
        await new_session(store)
    first = await store.list_sessions(ACME, SessionQuery(limit=3))
    assert first.next_cursor is not None
    second = await store.list_sessions(ACME, SessionQuery(limit=3, cursor=first.next_cursor))
    assert len(second.items) == 3
    assert second.next_cursor is None


async def test_list_filters(store: SessionStore, clock: ManualClock) -> None:
    sessions: dict[str, SessionId] = {}
    for name, provider, model, activate in [
        ("a", "openai", "gpt-4o", True),
        ("b", "openai", "gpt-4o-mini", False),
        ("c", "anthropic", "claude", True),
        ("d", "anthropic", "gpt-4o", True),
        ("e", "openai", "gpt-4o", False),
    ]:
        clock.advance(10)
        sessions[name] = await new_session(
            store, provider_id=provider, model=model, activate=activate
        )
    await store.close(ACME, sessions["d"])

    async def names(**filters: object) -> set[str]:
        found: set[SessionId] = set()
        cursor: str | None = None
        while True:
            page = await store.list_sessions(
                ACME,
                SessionQuery(limit=1, cursor=cursor, **filters),  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
            )
            found |= {s.record.session_id for s in page.items}
            if page.next_cursor is None:
                return {name for name, sid in sessions.items() if sid in found}
            cursor = page.next_cursor

    assert await names() == set("abcde")
    assert await names(state=Active) == {"a", "c"}
    assert await names(state=Created) == {"b", "e"}
    assert await names(state=Closed) == {"d"}
    assert await names(state=SessionExpired) == set()
    assert await names(provider_id="openai") == {"a", "b", "e"}
    assert await names(model="gpt-4o") == {"a", "d", "e"}
    assert await names(provider_id="openai", model="gpt-4o") == {"a", "e"}
    assert await names(provider_id="openai", model="gpt-4o", state=Created) == {"e"}
    assert await names(provider_id="nobody") == set()
    # created_after and created_before are strict: b was created at T0+20, d at T0+40.
    assert await names(created_after=T0.plus_seconds(20)) == {"c", "d", "e"}
    assert await names(created_before=T0.plus_seconds(40)) == {"a", "b", "c"}
    assert await names(created_after=T0.plus_seconds(20), created_before=T0.plus_seconds(40)) == {
        "c"
    }


async def test_state_listings_of_labels_that_look_alike(
    store: SessionStore, clock: ManualClock
) -> None:
    """Labels that contain, start or end like one another, with quotes, commas,
    brackets and other scripts, listed by state and label in small pages: each
    filter finds exactly its own sessions, newest first."""
    labels = [
        ("a", "m"),
        ("a", 'm", "x'),
        ('a", "m', "x"),
        ("ab", "m"),
        ("a, b", "m]"),
        ("\u00e9", "[m"),
        ('a\\"', "m"),
        ("a", "m m"),
    ]
    made: list[tuple[str, str, SessionId]] = []
    for _ in range(2):
        for provider, model in labels:
            clock.advance(1)
            made.append(
                (provider, model, await new_session(store, provider_id=provider, model=model))
            )
    providers = {provider for provider, _ in labels}
    models = {model for _, model in labels}
    filters: list[dict[str, str]] = [
        {},
        *({"provider_id": p} for p in providers),
        *({"model": m} for m in models),
        *({"provider_id": p, "model": m} for p, m in labels),
        {"provider_id": "a", "model": "x"},
    ]
    for flt in filters:
        expected = [
            session_id
            for provider, model, session_id in reversed(made)
            if flt.get("provider_id", provider) == provider and flt.get("model", model) == model
        ]
        found: list[SessionId] = []
        cursor: str | None = None
        while True:
            page = await store.list_sessions(
                ACME,
                SessionQuery(state=Active, limit=3, cursor=cursor, **flt),  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
            )
            found += [s.record.session_id for s in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert found == expected, flt


async def test_a_state_listing_with_the_newest_bunched_in_one_label(
    store: SessionStore, clock: ManualClock
) -> None:
    """Most groups hold one old session, one holds all the new ones: a page by
    state is still the newest, whichever group they are in."""
    old = []
    for n in range(12):
        clock.advance(1)
        old.append(await new_session(store, provider_id=f"p{n % 3}", model=f"m{n}"))
    new = []
    for _ in range(9):
        clock.advance(1)
        new.append(await new_session(store, provider_id="p0", model="m0"))
    for query, expected in [
        (SessionQuery(state=Active, limit=5), new[::-1][:5]),
        (SessionQuery(state=Active, provider_id="p0", limit=12), [*new[::-1], *old[9:0:-3]]),
    ]:
        page = await store.list_sessions(ACME, query)
        assert [s.record.session_id for s in page.items] == expected
        assert page.next_cursor is not None


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "",
        base64.urlsafe_b64encode(b"12:zz").decode(),
        base64.urlsafe_b64encode(b"abc:" + b"0" * 32).decode(),
        "\u00e9\u00e9\u00e9\u00e9",
    ],
)
async def test_a_bad_cursor_is_invalid_input(store: SessionStore, cursor: str) -> None:
    await new_session(store)
    with pytest.raises(InvalidInput, match="cursor"):
        await store.list_sessions(ACME, SessionQuery(cursor=cursor))


async def test_a_cursor_past_everything_gives_an_empty_page(store: SessionStore) -> None:
    await new_session(store)
    cursor = encode_cursor(Timestamp(0), SessionId.generate(Timestamp(0)))
    page = await store.list_sessions(ACME, SessionQuery(cursor=cursor))
    assert (page.items, page.next_cursor) == ([], None)


# -- listing rounds ------------------------------------------------------------------


async def test_list_rounds_pages_with_its_own_cursor(store: SessionStore) -> None:
    session_id = await new_session(store)
    for delta in range(10):
        await store.record_round(ACME, session_id, delta, idempotency_key=f"k{delta}")
    first = await store.list_rounds(ACME, session_id, limit=4)
    assert [r.seq for r in first.items] == [1, 2, 3, 4]
    assert first.next_cursor is not None
    second = await store.list_rounds(ACME, session_id, cursor=first.next_cursor, limit=4)
    assert [r.seq for r in second.items] == [5, 6, 7, 8]
    assert second.next_cursor is not None
    third = await store.list_rounds(ACME, session_id, cursor=second.next_cursor, limit=4)
    assert [(r.seq, r.delta_tokens, r.idempotency_key) for r in third.items] == [
        (9, 8, "k8"),
        (10, 9, "k9"),
    ]
    assert third.next_cursor is None
    # Rounds recorded meanwhile come after the cursor: none is served twice or skipped.
    await store.record_round(ACME, session_id, 10)
    again = await store.list_rounds(ACME, session_id, cursor=second.next_cursor, limit=4)
    assert ([r.seq for r in again.items], again.next_cursor) == ([9, 10, 11], None)


async def test_list_rounds_after_a_seq(store: SessionStore) -> None:
    session_id = await new_session(store)
    for delta in range(10):
        await store.record_round(ACME, session_id, delta)
    exact = await store.list_rounds(ACME, session_id, after_seq=6, limit=4)
    assert ([r.seq for r in exact.items], exact.next_cursor) == ([7, 8, 9, 10], None)
    page = await store.list_rounds(ACME, session_id, after_seq=2, limit=3)
    assert [r.seq for r in page.items] == [3, 4, 5]
    assert page.next_cursor is not None
    rest = await store.list_rounds(ACME, session_id, after_seq=2, cursor=page.next_cursor)
    assert ([r.seq for r in rest.items], rest.next_cursor) == ([6, 7, 8, 9, 10], None)
    # Both apply: the later of the two wins.
    later = await store.list_rounds(ACME, session_id, after_seq=8, cursor=page.next_cursor)
    assert [r.seq for r in later.items] == [9, 10]
    assert (await store.list_rounds(ACME, session_id, after_seq=10)).items == []
    assert (await store.list_rounds(ACME, session_id, after_seq=MAX_TOKENS)).items == []


async def test_list_rounds_refuses_cursors_it_did_not_give_out(store: SessionStore) -> None:
    session_id = await new_session(store)
    other = await new_session(store)
    for _ in range(3):
        await store.record_round(ACME, session_id, 1)
        await store.record_round(ACME, other, 1)
    other_cursor = (await store.list_rounds(ACME, other, limit=1)).next_cursor
    assert other_cursor is not None
    sessions_cursor = encode_cursor(T0, session_id)
    cases: list[tuple[object, str]] = [
        ("not-a-cursor", "not one this service gave out for a page of rounds"),
        ("", "not one this service gave out"),
        (base64.urlsafe_b64encode(b"r:zz:1").decode(), "not one this service gave out"),
        ("4", "not one this service gave out"),
        (sessions_cursor, "listing of sessions, not of rounds"),
        (other_cursor, f"rounds of session {other}, not of {session_id}"),
        (4, "not one this service gave out"),
    ]
    for cursor, message in cases:
        with pytest.raises(InvalidInput, match=message):
            await store.list_rounds(
                ACME,
                session_id,
                cursor=cursor,  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
            )
    # ... and the sessions listing refuses a rounds cursor.
    with pytest.raises(InvalidInput, match="listing of rounds, not of sessions"):
        await store.list_sessions(ACME, SessionQuery(cursor=other_cursor))


async def test_list_rounds_of_a_session_without_rounds(store: SessionStore) -> None:
    session_id = await new_session(store, activate=False)
    page = await store.list_rounds(ACME, session_id)
    assert (page.items, page.next_cursor) == ([], None)


@pytest.mark.parametrize(
    ("after_seq", "limit"),
    [(-1, 10), (True, 10), (1.0, 10), (MAX_TOKENS + 1, 10), (0, 0), (0, 1001), (0, True)],
)
async def test_list_rounds_bad_paging(
    store: SessionStore, after_seq: object, limit: object
) -> None:
    session_id = await new_session(store)
    with pytest.raises(InvalidInput):
        await store.list_rounds(
            ACME,
            session_id,
            after_seq=after_seq,  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
            limit=limit,  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        )


# -- totals -----------------------------------------------------------------------


async def test_totals_by_group(store: SessionStore, clock: ManualClock) -> None:
    specs: list[tuple[str, str, int, list[int], str]] = [
        ("openai", "gpt-4o", 1000, [10, 20], "active"),
        ("openai", "gpt-4o", 500, [600], "closed"),  # sent more than the context: saved 0
        ("openai", "mini", 100, [1, 2, 3], "expired"),
        ("anthropic", "gpt-4o", 50, [], "created"),
        ("anthropic", "claude", 2000, [100], "active"),
    ]
    stored: list[StoredSession] = []
    for provider, model, initial, deltas, state in specs:
        session_id = await new_session(
            store,
            provider_id=provider,
            model=model,
            initial_tokens=initial,
            activate=state != "created",
        )
        for delta in deltas:
            await store.record_round(ACME, session_id, delta)
        if state == "closed":
            await store.close(ACME, session_id)
        if state == "expired":
            await store.expire(ACME, session_id)
        stored.append(await store.get(ACME, session_id))
    await new_session(store, GLOBEX)
    assert stored[1].record.tokens_saved == 0

    def expected(provider: str | None, model: str | None) -> tuple[object, ...]:
        group = [
            s
            for s in stored
            if provider in (None, s.record.provider_id) and model in (None, s.record.model)
        ]
        states = Counter(s.record.state.name for s in group)
        return (
            provider,
            model,
            {name: states[name] for name in ("created", "active", "closed", "expired")},
            sum(s.record.round_count for s in group),
            sum(s.record.delta_tokens for s in group),
            sum(s.record.tokens_saved for s in group),
        )

    def shape(totals: list[Totals]) -> list[tuple[object, ...]]:
        return [
            (t.provider_id, t.model, t.sessions, t.rounds, t.delta_tokens, t.tokens_saved)
            for t in totals
        ]

    assert shape(await store.totals(ACME)) == [expected(None, None)]
    assert shape(await store.totals(ACME, ["provider"])) == [
        expected("anthropic", None),
        expected("openai", None),
    ]
    assert shape(await store.totals(ACME, ["model"])) == [
        expected(None, "claude"),
        expected(None, "gpt-4o"),
        expected(None, "mini"),
    ]
    both = [
        expected("anthropic", "claude"),
        expected("anthropic", "gpt-4o"),
        expected("openai", "gpt-4o"),
        expected("openai", "mini"),
    ]
    assert shape(await store.totals(ACME, ["provider", "model"])) == both
    assert shape(await store.totals(ACME, ["model", "provider"])) == both


async def test_totals_stay_exact_past_64_bits(store: SessionStore) -> None:
    for _ in range(3):
        big_delta = await new_session(store, initial_tokens=1)
        await store.record_round(ACME, big_delta, MAX_TOKENS)
        big_saved = await new_session(store, initial_tokens=2**62)
        await store.record_round(ACME, big_saved, 0)
    [totals] = await store.totals(ACME)
    assert totals.rounds == 6
    assert totals.delta_tokens == 3 * MAX_TOKENS
    assert totals.tokens_saved == 3 * 2**62


@pytest.mark.parametrize(
    "group_by",
    [
        "provider",  # a bare string, not a list of names
        "providermodel",
        ["providers"],
        ["provider", "tenant"],
        ["Model"],
        [None],
        [("provider",)],
        {"provider"},
        5,
        None,
    ],
)
async def test_totals_refuses_a_grouping_by_unknown_names(
    store: SessionStore, group_by: object
) -> None:
    await new_session(store)
    with pytest.raises(InvalidInput, match=r"group_by takes .*names from 'provider', 'model'"):
        await store.totals(ACME, group_by)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def test_totals_accepts_a_tuple_and_a_repeated_name(store: SessionStore) -> None:
    await new_session(store, provider_id="a")
    await new_session(store, provider_id="b")
    by_provider = await store.totals(ACME, ["provider"])
    assert [t.provider_id for t in by_provider] == ["a", "b"]
    assert await store.totals(ACME, ("provider",)) == by_provider
    assert await store.totals(ACME, ["provider", "provider"]) == by_provider


# -- bad input ---------------------------------------------------------------------


BAD_TOKENS = [-1, 1.5, 2.0, True, False, 2**63, "10", None]


async def assert_nothing_stored(store: SessionStore) -> None:
    assert (await store.list_sessions(ACME, SessionQuery())).items == []
    assert await store.totals(ACME) == []


@pytest.mark.parametrize("initial_tokens", BAD_TOKENS)
async def test_create_refuses_bad_initial_tokens(
    store: SessionStore, initial_tokens: object
) -> None:
    with pytest.raises(InvalidTokenCount, match="initial_tokens"):
        await store.create(
            ACME,
            provider_id="openai",
            model="gpt-4o",
            initial_tokens=initial_tokens,  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        )
    await assert_nothing_stored(store)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("provider_id", ""),
        ("provider_id", " openai"),
        ("provider_id", "x" * 201),
        ("provider_id", 5),
        ("model", ""),
        ("model", "gpt\n4o"),
        ("model", None),
    ],
)
async def test_create_refuses_bad_labels(store: SessionStore, field: str, value: object) -> None:
    labels: dict[str, object] = {"provider_id": "openai", "model": "gpt-4o", field: value}
    with pytest.raises(InvalidInput, match=field):
        await store.create(ACME, initial_tokens=10, **labels)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await assert_nothing_stored(store)


@pytest.mark.parametrize("ttl", [0, -5, 1.5, True, "60", MAX_TTL_SECONDS + 1])
async def test_create_refuses_a_bad_ttl(store: SessionStore, ttl: object) -> None:
    with pytest.raises(InvalidInput, match="ttl_seconds"):
        await store.create(
            ACME,
            provider_id="openai",
            model="gpt-4o",
            initial_tokens=10,
            ttl_seconds=ttl,  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        )
    await assert_nothing_stored(store)


@pytest.mark.parametrize("ttl", [0, -1, 2.5, MAX_TTL_SECONDS + 1])
async def test_open_refuses_a_bad_default_ttl(store_url: str, ttl: object) -> None:
    with pytest.raises(InvalidInput, match="ttl_seconds"):
        await open_store(store_url, default_ttl_seconds=ttl)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


@pytest.mark.parametrize("delta", BAD_TOKENS)
async def test_record_round_refuses_bad_deltas(store: SessionStore, delta: object) -> None:
    session_id = await new_session(store)
    before = await store.get(ACME, session_id)
    with pytest.raises(InvalidTokenCount, match="delta_tokens"):
        await store.record_round(ACME, session_id, delta)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert await store.get(ACME, session_id) == before
    assert await all_rounds(store, ACME, session_id) == []


@pytest.mark.parametrize(
    "key", ["", "x" * 256, "line\nbreak", "\x00", 7, b"bytes", " ", " k", "k ", "k\t", "\u3000k"]
)
async def test_record_round_refuses_bad_idempotency_keys(store: SessionStore, key: object) -> None:
    session_id = await new_session(store)
    before = await store.get(ACME, session_id)
    with pytest.raises(InvalidInput, match="idempotency key"):
        await store.record_round(ACME, session_id, 1, idempotency_key=key)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert await store.get(ACME, session_id) == before
    assert await all_rounds(store, ACME, session_id) == []


async def test_the_longest_idempotency_key_is_kept_exactly(store: SessionStore) -> None:
    session_id = await new_session(store)
    # Every printable ASCII character but space, which may not end a key.
    key = "".join(chr(33 + i % 94) for i in range(255))
    first = await store.record_round(ACME, session_id, 3, idempotency_key=key)
    assert (await store.record_round(ACME, session_id, 3, idempotency_key=key)).replayed
    assert (await all_rounds(store, ACME, session_id)) == [first.round]
    assert first.round.idempotency_key == key


async def test_overflowing_totals_are_refused_and_change_nothing(store: SessionStore) -> None:
    deltas = await new_session(store, initial_tokens=0)
    await store.record_round(ACME, deltas, MAX_TOKENS)
    before = await store.get(ACME, deltas)
    with pytest.raises(TokenOverflow):
        await store.record_round(ACME, deltas, 1)
    assert await store.get(ACME, deltas) == before

    # round_count * initial_tokens must stay within 2**63-1 too: one round only here.
    rounds = await new_session(store, initial_tokens=2**62)
    await store.record_round(ACME, rounds, 0)
    before = await store.get(ACME, rounds)
    with pytest.raises(TokenOverflow):
        await store.record_round(ACME, rounds, 0)
    assert await store.get(ACME, rounds) == before
    assert len(await all_rounds(store, ACME, rounds)) == 1


@pytest.mark.parametrize("limit", [0, -1, 1001, 2.0, True])
def test_a_bad_page_size_is_refused(limit: object) -> None:
    with pytest.raises(InvalidInput, match="limit"):
        SessionQuery(limit=limit)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def test_extreme_values_round_trip(store: SessionStore) -> None:
    session_id = await new_session(
        store,
        provider_id="p" * 200,
        model="\u6a21\u578b \u00e9\u00e8",
        initial_tokens=MAX_TOKENS,
        ttl_seconds=MAX_TTL_SECONDS,
    )
    result = await store.record_round(ACME, session_id, 0)
    stored = await store.get(ACME, session_id)
    assert stored == result.session
    assert stored.record.tokens_saved == MAX_TOKENS
    assert stored.deadline == T0.plus_seconds(MAX_TTL_SECONDS)


# -- ids of the wrong type -----------------------------------------------------------

IdCall = Callable[[SessionStore, Any, Any], Awaitable[object]]

#: Every public method that takes a tenant id, called with ``(tenant, session id)``.
TENANT_CALLS: dict[str, IdCall] = {
    "create": lambda s, t, _: s.create(t, provider_id="p", model="m", initial_tokens=1),
    "activate": lambda s, t, i: s.activate(t, i),
    "record_round": lambda s, t, i: s.record_round(t, i, 1, idempotency_key="k"),
    "close": lambda s, t, i: s.close(t, i),
    "expire": lambda s, t, i: s.expire(t, i),
    "get": lambda s, t, i: s.get(t, i),
    "list_sessions": lambda s, t, _: s.list_sessions(t, SessionQuery()),
    "list_rounds": lambda s, t, i: s.list_rounds(t, i),
    "totals": lambda s, t, _: s.totals(t, ["provider"]),
    "purge_created": lambda s, t, _: s.purge_created(60, tenant_id=t),
    "create_tenant": lambda s, t, _: s.create_tenant(t),
    "get_tenant": lambda s, t, _: s.get_tenant(t),
    "add_api_key": lambda s, t, _: s.add_api_key(t, "k9", b"hash"),
    "list_api_keys": lambda s, t, _: s.list_api_keys(t),
}
#: The ones that also take a session id.
SESSION_CALLS = {
    name: TENANT_CALLS[name]
    for name in ("activate", "record_round", "close", "expire", "get", "list_rounds")
}


async def everything(store: SessionStore) -> tuple[object, ...]:
    """What the id tests' calls could change, to check that a refused call changed nothing."""
    sessions = [*await all_sessions(store, ACME), *await all_sessions(store, GLOBEX)]
    rounds = [await all_rounds(store, ACME, s.record.session_id) for s in sessions]
    return sessions, rounds, await store.list_tenants(), await store.list_api_keys(ACME)


async def id_test_data(store: SessionStore, clock: ManualClock) -> SessionId:
    """A tenant with a key, an Active session with a round and an old Created one."""
    await store.create_tenant(ACME)
    await store.add_api_key(ACME, "k1", b"hash")
    await new_session(store, activate=False)
    clock.advance(60)
    session_id = await new_session(store)
    await store.record_round(ACME, session_id, 5)
    return session_id


@pytest.mark.parametrize("method", TENANT_CALLS)
async def test_a_plain_string_for_a_tenant_is_refused_by_name(
    store: SessionStore, clock: ManualClock, method: str
) -> None:
    session_id = await id_test_data(store, clock)
    before = await everything(store)
    with pytest.raises(InvalidIdentifier) as refused:
        await TENANT_CALLS[method](store, "acme", session_id)
    assert str(refused.value) == (
        "tenant_id must be a TenantId, got str 'acme'; wrap it: TenantId('acme')"
    )
    assert await everything(store) == before


@pytest.mark.parametrize("method", SESSION_CALLS)
async def test_a_plain_string_for_a_session_id_is_refused_by_name(
    store: SessionStore, clock: ManualClock, method: str
) -> None:
    session_id = await id_test_data(store, clock)
    before = await everything(store)
    with pytest.raises(InvalidIdentifier) as refused:
        await SESSION_CALLS[method](store, ACME, str(session_id))
    assert str(refused.value) == (
        f"session_id must be a SessionId, got str '{session_id}'; "
        f"parse it: SessionId.parse('{session_id}')"
    )
    assert await everything(store) == before


@pytest.mark.parametrize(
    ("tenant", "session", "says"),
    [
        (GLOBEX, "uuid", "session_id must be a SessionId, got UUID UUID('"),
        (GLOBEX, "tenant", "session_id must be a SessionId, got TenantId TenantId(value='acme')"),
        (GLOBEX, None, "session_id must be a SessionId, got NoneType None"),
        ("session", "session", "tenant_id must be a TenantId, got SessionId SessionId("),
        (None, "session", "tenant_id must be a TenantId, got NoneType None"),
        (b"acme", "session", "tenant_id must be a TenantId, got bytes b'acme'"),
    ],
)
async def test_ids_of_another_type_are_refused_by_name(
    store: SessionStore, clock: ManualClock, tenant: object, session: object, says: str
) -> None:
    session_id = await id_test_data(store, clock)
    stand_ins: dict[object, object] = {
        "uuid": session_id.value,
        "tenant": ACME,
        "session": session_id,
        None: None,
    }
    tenant = stand_ins.get(tenant, tenant)
    before = await everything(store)
    for method, call in SESSION_CALLS.items():
        with pytest.raises(InvalidIdentifier, match=re.escape(says)):
            await call(store, tenant, stand_ins[session])
        assert await everything(store) == before, method


# -- tenants and API keys ---------------------------------------------------------


async def test_tenants(store: SessionStore, clock: ManualClock) -> None:
    assert await store.list_tenants() == []
    zeta = await store.create_tenant(TenantId("zeta"))
    clock.advance(1)
    alpha = await store.create_tenant(TenantId("alpha"))
    assert (zeta.created_at, alpha.created_at) == (T0, T0.plus_seconds(1))
    assert await store.list_tenants() == [alpha, zeta]
    assert await store.get_tenant(TenantId("zeta")) == zeta
    with pytest.raises(ConflictError, match="zeta"):
        await store.create_tenant(TenantId("zeta"))
    assert await store.get_tenant(TenantId("zeta")) == zeta
    with pytest.raises(NotFoundError, match="nobody"):
        await store.get_tenant(TenantId("nobody"))


async def test_api_keys(store: SessionStore, clock: ManualClock) -> None:
    await store.create_tenant(ACME)
    await store.create_tenant(GLOBEX)
    with pytest.raises(NotFoundError):
        await store.add_api_key(TenantId("nobody"), "k0", b"h0")
    assert await store.get_api_key("k0") is None

    second_id_first = await store.add_api_key(ACME, "k2", b"\x00hash-2\xff")
    clock.advance(1)
    first_id_second = await store.add_api_key(ACME, "k1", b"hash-1")
    theirs = await store.add_api_key(GLOBEX, "k3", b"hash-3")
    with pytest.raises(ConflictError, match="k1"):
        await store.add_api_key(GLOBEX, "k1", b"other")
    assert await store.get_api_key("k1") == first_id_second
    assert second_id_first.key_hash == b"\x00hash-2\xff"
    assert await store.get_api_key("k2") == second_id_first
    assert await store.list_api_keys(ACME) == [second_id_first, first_id_second]
    assert await store.list_api_keys(GLOBEX) == [theirs]
    assert await store.list_api_keys(TenantId("nobody")) == []

    revoked_at = clock.advance(5)
    revoked = await store.revoke_api_key("k1")
    assert revoked == replace(first_id_second, revoked_at=revoked_at)
    clock.advance(5)
    assert await store.revoke_api_key("k1") == revoked
    assert await store.get_api_key("k1") == revoked
    assert (await store.get_api_key("k2")) == second_id_first
    with pytest.raises(NotFoundError):
        await store.revoke_api_key("k404")


async def test_stored_keys_authenticate_until_revoked(store: SessionStore) -> None:
    await store.create_tenant(ACME)
    # A fixed secret, so that the test does not depend on what issue_key draws.
    secret = "s3cret-0123456789abcdefghijklmnopqrstuvwxyz"
    info = await store.add_api_key(ACME, "0123abcd", hash_secret(secret))
    assert await authenticate(store, f"lls_0123abcd_{secret}") == ACME
    with pytest.raises(AuthenticationError, match="invalid"):
        await authenticate(store, f"lls_0123abcd_{secret}x")
    await store.revoke_api_key(info.key_id)
    with pytest.raises(AuthenticationError, match="revoked"):
        await authenticate(store, f"lls_0123abcd_{secret}")


# -- the store itself ------------------------------------------------------------


async def test_ping_and_aclose(store_url: str, clock: ManualClock) -> None:
    opened = await open_store(store_url, clock=clock)
    session_id = await new_session(opened)
    await opened.ping()
    await opened.aclose()
    with pytest.raises(StoreError):
        await opened.get(ACME, session_id)
    with pytest.raises(StoreError):
        await opened.ping()


@pytest.mark.parametrize("store_url", DURABLE, indirect=True)
async def test_a_reopened_store_sees_the_same_data(store_url: str, clock: ManualClock) -> None:
    first = await open_store(store_url, clock=clock)
    try:
        await first.create_tenant(ACME)
        issued = await issue_key(first, ACME)
        session_id = await new_session(first, ttl_seconds=77)
        recorded = await first.record_round(ACME, session_id, 9, idempotency_key="k")
        closed_id = await new_session(first, GLOBEX)
        await first.close(GLOBEX, closed_id)
        sessions = await all_sessions(first, ACME)
        totals = await first.totals(ACME, ["provider", "model"])
    finally:
        await first.aclose()

    second = await open_store(store_url, clock=clock)
    try:
        assert await all_sessions(second, ACME) == sessions
        assert await second.get(ACME, session_id) == recorded.session
        assert (await second.get(GLOBEX, closed_id)).record.state is Closed
        assert await all_rounds(second, ACME, session_id) == [recorded.round]
        assert await second.totals(ACME, ["provider", "model"]) == totals
        assert await second.get_api_key(issued.info.key_id) == issued.info
        replay = await second.record_round(ACME, session_id, 9, idempotency_key="k")
        assert replay.replayed
        assert replay.round == recorded.round
    finally:
        await second.aclose()
