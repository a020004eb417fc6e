"""Time series of usage, from the rollup every backend keeps as it writes.

Every test runs against every backend (memory, SQLite, PostgreSQL, Redis) and
asserts exact figures, so all four give the same answers.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from llmsession.clock import ManualClock
from llmsession.errors import InvalidInput
from llmsession.ids import SessionId, TenantId
from llmsession.store import SessionStore
from llmsession.store.models import NO_USAGE, TimeBucket, UsageTotals
from llmsession.timestamps import Timestamp
from llmsession.usage import Usage
from tests.store.conftest import T0, Opener
from tests.store.test_gateway_rounds import turn

ACME = TenantId("acme")
GLOBEX = TenantId("globex")
HOUR = 3600
# T0 is 2026-01-01 12:00 UTC.
DAY0 = Timestamp.from_datetime(datetime(2026, 1, 1, tzinfo=UTC))


def at(hours: float) -> Timestamp:
    return T0.plus_seconds(hours * HOUR)


async def _session(
    store: SessionStore,
    tenant: TenantId = ACME,
    *,
    provider_id: str = "openai",
    model: str = "gpt-4o",
    initial_tokens: int = 1000,
) -> SessionId:
    created = await store.create(
        tenant,
        provider_id=provider_id,
        model=model,
        initial_tokens=initial_tokens,
        ttl_seconds=86400,
    )
    await store.activate(tenant, created.record.session_id)
    return created.record.session_id


async def _history(store: SessionStore, clock: ManualClock) -> SessionId:
    """A tenant's day and a half: ledger rounds of two groups over two hours, a
    replay, a round that processed more than its session's size, a Created session,
    another tenant, and a gateway session with and without usage the next day."""
    a = await _session(store)  # 12:00, openai/gpt-4o, 1000
    clock.advance(600)
    await store.record_round(ACME, a, 40, idempotency_key="k1")  # 12:10
    await store.record_round(ACME, a, 40, idempotency_key="k1")  # a replay counts nothing
    clock.advance(1200)
    b = await _session(store, provider_id="anthropic", model="claude", initial_tokens=500)  # 12:30
    await store.record_round(ACME, b, 700)  # saved -200
    await store.create(ACME, provider_id="openai", model="gpt-4o", initial_tokens=9)  # Created
    other = await _session(store, GLOBEX)
    await store.record_round(GLOBEX, other, 1)
    clock.advance(2400)  # 13:10
    await store.record_round(ACME, a, 60)
    clock.advance(at(25).epoch_micros / 1e6 - clock().epoch_micros / 1e6)  # 2026-01-02 13:00
    started = SessionId.generate(clock())
    first = await store.start_with_turn(
        ACME,
        started,
        provider_id="fake",
        model="mini",
        turn=turn(1),
        usage=Usage(1200, cached_input_tokens=200, output_tokens=30, reasoning_tokens=5),
    )
    assert first.session.record.initial_tokens == 1200
    clock.advance(60)
    await store.record_turn(ACME, started, turn=turn(2), usage=None)
    return started


def _usage(**fields: int) -> UsageTotals:
    return UsageTotals(**fields)


GATEWAY_USAGE = UsageTotals(1200, 200, 0, 30, 5, 1)


async def test_hour_buckets_sum_the_rounds_and_sessions_of_each_hour(
    store: SessionStore, clock: ManualClock
) -> None:
    await _history(store, clock)
    series = await store.timeseries(ACME, bucket="hour", start=at(-1), end=at(30))
    assert series == [
        TimeBucket(at(0), None, None, 2, 740, 760, NO_USAGE, 3),
        TimeBucket(at(1), None, None, 1, 60, 940, NO_USAGE, 0),
        # The gateway session: two rounds, the second without usage (saving nothing).
        TimeBucket(at(25), None, None, 2, 2200, 200, GATEWAY_USAGE, 1),
    ]
    assert await store.timeseries(GLOBEX, bucket="hour", start=at(0), end=at(1)) == [
        TimeBucket(at(0), None, None, 1, 1, 999, NO_USAGE, 1)
    ]


async def test_buckets_split_by_provider_and_model(store: SessionStore, clock: ManualClock) -> None:
    await _history(store, clock)
    series = await store.timeseries(
        ACME, bucket="hour", start=at(0), end=at(2), group_by=["provider", "model"]
    )
    assert series == [
        TimeBucket(at(0), "anthropic", "claude", 1, 700, -200, NO_USAGE, 1),
        TimeBucket(at(0), "openai", "gpt-4o", 1, 40, 960, NO_USAGE, 2),
        TimeBucket(at(1), "openai", "gpt-4o", 1, 60, 940, NO_USAGE, 0),
    ]
    by_model = await store.timeseries(
        ACME, bucket="day", start=at(0), end=at(48), group_by=["model"]
    )
    assert by_model == [
        TimeBucket(DAY0, None, "claude", 1, 700, -200, NO_USAGE, 1),
        TimeBucket(DAY0, None, "gpt-4o", 2, 100, 1900, NO_USAGE, 2),
        TimeBucket(at(12), None, "mini", 2, 2200, 200, GATEWAY_USAGE, 1),
    ]


async def test_buckets_are_whole_from_the_one_holding_start_to_the_last_before_end(
    store: SessionStore, clock: ManualClock
) -> None:
    await _history(store, clock)
    # A start inside a day reads that whole day; a day starting at end is left out.
    days = await store.timeseries(ACME, bucket="day", start=at(5), end=at(12))
    assert days == [
        TimeBucket(DAY0, None, None, 3, 800, 1700, NO_USAGE, 3),
    ]
    # A day starting before end is read whole, its hours after end included.
    assert await store.timeseries(ACME, bucket="day", start=at(5), end=at(12.5)) == [
        *days,
        TimeBucket(at(12), None, None, 2, 2200, 200, GATEWAY_USAGE, 1),
    ]
    # The same for hours: the round at 13:10 is in the hour to 13:01.
    for start, end in ((at(1.5), at(1.75)), (at(1), at(1).plus_seconds(60))):
        assert await store.timeseries(ACME, bucket="hour", start=start, end=end) == [
            TimeBucket(at(1), None, None, 1, 60, 940, NO_USAGE, 0)
        ]
    assert await store.timeseries(ACME, bucket="hour", start=at(2), end=at(25)) == []
    assert await store.timeseries(ACME, bucket="hour", start=at(-48), end=at(-24)) == []


async def test_purging_an_abandoned_session_leaves_its_start_counted(
    store: SessionStore, clock: ManualClock
) -> None:
    await store.create(ACME, provider_id="p", model="m", initial_tokens=5)
    clock.advance(3 * HOUR)
    assert await store.purge_created(60) == 1
    assert await store.totals(ACME) == []
    assert await store.timeseries(ACME, bucket="hour", start=at(0), end=at(4)) == [
        TimeBucket(at(0), None, None, sessions_started=1)
    ]


async def test_another_process_sees_the_same_series(
    store: SessionStore, clock: ManualClock, open_more: Opener
) -> None:
    await _history(store, clock)
    other = await open_more()
    try:
        assert await other.timeseries(
            ACME, bucket="day", start=at(-12), end=at(36), group_by=("provider",)
        ) == await store.timeseries(
            ACME, bucket="day", start=at(-12), end=at(36), group_by=("provider",)
        )
    finally:
        if other is not store:
            await other.aclose()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"bucket": "week"}, "bucket must be one of 'hour', 'day', got 'week'"),
        ({"start": at(1), "end": at(1)}, "must be before end"),
        ({"start": at(2), "end": at(1)}, "must be before end"),
        ({"start": "2026-01-01T00:00:00Z"}, "start must be a Timestamp, got str"),
        ({"end": None}, "end must be a Timestamp, got NoneType"),
        ({"start": at(0), "end": at(31 * 24 + 0.5)}, "hour buckets spans at most 31 days"),
        ({"bucket": "day", "start": at(0), "end": at(366 * 24)}, "at most 366 days"),
        ({"group_by": ["tenant"]}, "group_by takes names from 'provider', 'model'"),
        ({"group_by": "model"}, "not a bare string"),
    ],
)
async def test_bad_arguments_are_refused_with_what_is_allowed(
    store: SessionStore, arguments: dict[str, object], message: str
) -> None:
    call: dict[str, object] = {"bucket": "hour", "start": at(0), "end": at(1), **arguments}
    with pytest.raises(InvalidInput, match=message):
        await store.timeseries(ACME, **call)  # type: ignore[arg-type]


async def test_the_widest_ranges_are_allowed(store: SessionStore, clock: ManualClock) -> None:
    await _history(store, clock)
    hours = await store.timeseries(ACME, bucket="hour", start=at(0), end=at(31 * 24))
    days = await store.timeseries(
        ACME, bucket="day", start=DAY0, end=DAY0.plus_seconds(366 * 86400)
    )
    assert sum(b.rounds for b in hours) == sum(b.rounds for b in days) == 5
