"""The rollup behind time series: what each write adds, and how reads fold it.

A time series over a tenant's rounds cannot be a GROUP BY over the rounds when a
tenant has ten million of them, so every backend keeps, per tenant, bucket
(every UTC hour, and every UTC day), provider and model, the sums a time series
reports, updated in the transaction that writes the round or the new session:
an hour series reads the hour rows, a day series the day rows, so a year of
days reads 366 rows per group, not 8784. This module is the one place that
says what those sums are: :func:`round_amounts` and :func:`session_amounts`
give the amounts a write adds (in :data:`ROLLUP_FIELDS` order) to the buckets
:func:`bucket_starts` names, and :func:`fold` turns the rows a backend reads
back into :class:`TimeBucket` values.

Rounds are never deleted, so their part of the rollup never shrinks. A purged
Created session had no rounds; its ``sessions_started`` stays counted: the series
says what happened, the totals what is stored now.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from llmsession.errors import InvalidInput
from llmsession.store.models import (
    TIME_BUCKET_SIZES,
    GroupKey,
    Round,
    StoredSession,
    TimeBucket,
    TimeBucketSize,
    UsageTotals,
)
from llmsession.timestamps import Timestamp

__all__ = [
    "BUCKET_MICROS",
    "HOUR_MICROS",
    "MAX_BUCKETS",
    "ROLLUP_FIELDS",
    "Amounts",
    "TimeWindow",
    "bucket_starts",
    "check_window",
    "fold",
    "hour_of",
    "round_amounts",
    "session_amounts",
]

HOUR_MICROS: Final = 3_600_000_000
#: The length of each bucket size, in microseconds.
BUCKET_MICROS: Final[dict[TimeBucketSize, int]] = {"hour": HOUR_MICROS, "day": 24 * HOUR_MICROS}
#: The most buckets one time series may span: 31 days of hours, 366 days of days.
#: Enough for a month's hourly plot and a year's daily one, and a bound on what
#: one call reads from the rollup (at most 744 rows per group and slot).
MAX_BUCKETS: Final[dict[TimeBucketSize, int]] = {"hour": 31 * 24, "day": 366}

#: The sums kept per (tenant, hour, provider, model), in the order of Amounts.
ROLLUP_FIELDS: Final = (
    "rounds",
    "delta_tokens",
    "tokens_saved",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "rounds_without_usage",
    "sessions_started",
)

#: One value per name of ROLLUP_FIELDS.
Amounts = tuple[int, int, int, int, int, int, int, int, int, int]


def hour_of(at: Timestamp) -> int:
    """The start of the UTC hour holding ``at``, in epoch microseconds (floored, so
    also right before 1970)."""
    return at.epoch_micros - at.epoch_micros % HOUR_MICROS


def bucket_starts(at: Timestamp) -> tuple[int, int]:
    """The starts of the UTC hour and the UTC day holding ``at`` (epoch
    microseconds): the two rollup buckets a write at ``at`` adds to."""
    micros = at.epoch_micros
    return micros - micros % HOUR_MICROS, micros - micros % BUCKET_MICROS["day"]


def round_amounts(new_round: Round, after: StoredSession) -> Amounts:
    """What recording ``new_round`` adds to its hour; ``after`` is its session right
    after it (whose initial_tokens the round saved against)."""
    usage = new_round.usage
    saved = after.record.initial_tokens - new_round.delta_tokens
    if usage is None:
        return (1, new_round.delta_tokens, saved, 0, 0, 0, 0, 0, int(new_round.gateway), 0)
    return (
        1,
        new_round.delta_tokens,
        saved,
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        0,
        0,
    )


#: What creating a session adds to the hour of its created_at.
_STARTED: Final[Amounts] = (0, 0, 0, 0, 0, 0, 0, 0, 0, 1)


def session_amounts() -> Amounts:
    """What inserting a session adds to the hour of its created_at."""
    return _STARTED


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """A checked time-series request: bucket size, and the buckets it reads, those
    starting from ``first`` (the start of the bucket holding the asked start) and
    before ``end``, in epoch microseconds."""

    bucket: TimeBucketSize
    first: int
    end: int

    @property
    def bucket_micros(self) -> int:
        """The length of one bucket."""
        return BUCKET_MICROS[self.bucket]

    def bucket_of(self, hour: int) -> int:
        """The start of the bucket an hour (epoch microseconds) belongs to."""
        return hour - hour % self.bucket_micros


def check_window(bucket: object, start: object, end: object) -> TimeWindow:
    """The window of a time series, or InvalidInput saying what is wrong."""
    if bucket not in TIME_BUCKET_SIZES:
        allowed = ", ".join(map(repr, TIME_BUCKET_SIZES))
        raise InvalidInput(f"bucket must be one of {allowed}, got {bucket!r}")
    if not isinstance(start, Timestamp):
        raise InvalidInput(f"start must be a Timestamp, got {type(start).__name__}")
    if not isinstance(end, Timestamp):
        raise InvalidInput(f"end must be a Timestamp, got {type(end).__name__}")
    if not start < end:
        raise InvalidInput(f"start ({start}) must be before end ({end})")
    size = BUCKET_MICROS[bucket]
    first = start.epoch_micros - start.epoch_micros % size
    most = MAX_BUCKETS[bucket]
    if end.epoch_micros - first > most * size:
        span = "31 days" if bucket == "hour" else "366 days"
        raise InvalidInput(
            f"a time series of {bucket} buckets spans at most {span} ({most} buckets), "
            f"got {start} to {end}: narrow the range or use larger buckets"
        )
    return TimeWindow(bucket, first, end.epoch_micros)


def fold(
    rows: Iterable[tuple[int, str, str, Sequence[int]]],
    window: TimeWindow,
    group_by: Sequence[GroupKey],
) -> list[TimeBucket]:
    """Time buckets from rollup rows of the window's bucket size (bucket start,
    provider, model, amounts in ROLLUP_FIELDS order), summed per bucket and
    group, in order of start, then provider, then model. Rows of buckets outside
    the window are left out; buckets that nothing happened in are not made up."""
    by_provider = "provider" in group_by
    by_model = "model" in group_by
    sums: dict[tuple[int, str | None, str | None], list[int]] = {}
    for hour, provider, model, amounts in rows:
        if not window.first <= hour < window.end:
            continue
        key = (
            window.bucket_of(hour),
            provider if by_provider else None,
            model if by_model else None,
        )
        total = sums.get(key)
        if total is None:
            sums[key] = list(amounts)
        else:
            for i, amount in enumerate(amounts):
                total[i] += amount
    return [
        _bucket(key, sums[key])
        for key in sorted(sums, key=lambda k: (k[0], k[1] or "", k[2] or ""))
        if any(sums[key])
    ]


def _bucket(key: tuple[int, str | None, str | None], amounts: Sequence[int]) -> TimeBucket:
    start, provider, model = key
    return TimeBucket(
        Timestamp(start),
        provider,
        model,
        rounds=amounts[0],
        delta_tokens=amounts[1],
        tokens_saved=amounts[2],
        usage=UsageTotals(*amounts[3:9]),
        sessions_started=amounts[9],
    )
