"""Rows of the SQL backends (SQLite, PostgreSQL): one column layout, read and written here.

Both keep times as integer epoch microseconds and the same session columns in the
same order; they differ only in how a session id is stored (16 bytes in SQLite,
a native uuid in PostgreSQL), so callers decode that one column themselves.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from llmsession.ids import SessionId, TenantId
from llmsession.record import stored_record
from llmsession.states import state_named
from llmsession.store.models import NO_USAGE, ApiKeyInfo, Round, StoredSession, Turn, UsageTotals
from llmsession.timestamps import Timestamp
from llmsession.usage import Usage

__all__ = [
    "INSERT_COLUMNS",
    "ROUND_USAGE_COLUMNS",
    "SESSION_COLUMNS",
    "TURN_COLUMNS",
    "USAGE_COLUMNS",
    "change_values",
    "insert_values",
    "key_from_row",
    "micros",
    "round_usage_values",
    "round_values",
    "stored_from_row",
    "time_or_none",
    "turn_from_row",
    "turn_values",
    "usage_from_round_row",
    "usage_totals_from_row",
    "usage_values",
]

#: The columns stored_from_row reads, in its order.
SESSION_COLUMNS: Final = (
    "session_id, tenant_id, provider_id, model, initial_tokens, state, created_at, "
    "activated_at, closed_at, expired_at, round_count, delta_tokens, version, ttl_seconds, "
    "last_activity_at"
)


#: The columns insert_values gives, in its order: what never changes, then what may.
INSERT_COLUMNS: Final = (
    "session_id, tenant_id, provider_id, model, initial_tokens, created_at, ttl_seconds, "
    "state, activated_at, closed_at, expired_at, round_count, delta_tokens, tokens_saved, "
    "version, last_activity_at, deadline"
)


#: A session's UsageTotals, in field order (UsageTotals.as_tuple).
USAGE_COLUMNS: Final = (
    "input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens, "
    "rounds_without_usage"
)

#: What a round keeps of a gateway round's usage, in round_usage_values' order: the
#: flag, the five normalized counts (NULL without usage) and the provider's object.
ROUND_USAGE_COLUMNS: Final = (
    "gateway, input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, "
    "reasoning_tokens, raw_usage"
)

#: A turn of the conversation, in turn_values' order (after session_id and seq).
TURN_COLUMNS: Final = (
    "endpoint, request_hash, request_items, answer_items, response_id, answer_status, "
    "answer_type, answer_body"
)


#: The JSON of a round's raw usage: what json.dumps(raw, ensure_ascii=False,
#: separators=(",", ":")) gives, byte for byte, without the encoder json.dumps builds
#: on every call given options. A provider's usage, parsed from JSON, holds no cycle
#: to check for.
_raw_json: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode


def micros(moment: Timestamp | None) -> int | None:
    """A timestamp as stored: epoch microseconds, or NULL."""
    return None if moment is None else moment.epoch_micros


def time_or_none(value: int | None) -> Timestamp | None:
    """A stored time back as a Timestamp (None for NULL)."""
    return None if value is None else Timestamp(value)


def change_values(stored: StoredSession) -> tuple[Any, ...]:
    """What a change may move, in column order: state, activated_at, closed_at,
    expired_at, round_count, delta_tokens, tokens_saved, version, last_activity_at,
    deadline."""
    record = stored.record
    return (
        record.state.name,
        micros(record.activated_at),
        micros(record.closed_at),
        micros(record.expired_at),
        record.round_count,
        record.delta_tokens,
        # The core computes tokens_saved; SQL only stores and sums it.
        record.tokens_saved,
        stored.version,
        stored.last_activity_at.epoch_micros,
        micros(stored.deadline),
    )


def insert_values(stored: StoredSession, session_id: object) -> tuple[Any, ...]:
    """A new sessions row in INSERT_COLUMNS order, the session id as the backend stores it."""
    record = stored.record
    return (
        session_id,
        record.tenant_id.value,
        record.provider_id,
        record.model,
        record.initial_tokens,
        record.created_at.epoch_micros,
        stored.ttl_seconds,
        *change_values(stored),
    )


def stored_from_row(
    row: Sequence[Any],
    session_id: SessionId,
    usage: UsageTotals = NO_USAGE,
    tenant_id: TenantId | None = None,
) -> StoredSession:
    """A StoredSession from a row of SESSION_COLUMNS; ``tenant_id`` is the row's, if
    the caller read the row by it.

    The row holds a record this backend wrote, valid when written: the core's
    stored_record rebuilds it without its checks again, which cost most of a
    row's decoding (a read on every gateway turn).
    """
    record = stored_record(
        session_id=session_id,
        tenant_id=TenantId(row[1]) if tenant_id is None else tenant_id,
        provider_id=row[2],
        model=row[3],
        initial_tokens=row[4],
        state=state_named(row[5]),
        created_at=Timestamp(row[6]),
        activated_at=time_or_none(row[7]),
        closed_at=time_or_none(row[8]),
        expired_at=time_or_none(row[9]),
        round_count=row[10],
        delta_tokens=row[11],
    )
    return StoredSession(
        record,
        version=row[12],
        ttl_seconds=row[13],
        last_activity_at=Timestamp(row[14]),
        usage=usage,
    )


def usage_totals_from_row(row: Sequence[Any], start: int) -> UsageTotals:
    """A session's UsageTotals from the six USAGE_COLUMNS at ``row[start:]``."""
    values = row[start : start + 6]
    # A ledger session's are all 0: share one value rather than build one per row.
    return UsageTotals(*values) if any(values) else NO_USAGE


def round_values(new_round: Round, new: StoredSession) -> tuple[Any, ...]:
    """A round's own columns after its session's key: seq, delta_tokens, recorded_at,
    idempotency_key, then what a replay of it gives back (see KeyedRound): the
    session's delta_tokens and version right after it (``new``)."""
    return (
        new_round.seq,
        new_round.delta_tokens,
        new_round.recorded_at.epoch_micros,
        new_round.idempotency_key,
        new.record.delta_tokens,
        new.version,
    )


def round_usage_values(new_round: Round) -> tuple[Any, ...]:
    """A round's ROUND_USAGE_COLUMNS: the gateway flag, the counts, the raw object as JSON."""
    return (new_round.gateway, *usage_values(new_round.usage))


#: usage_values of a round without usage.
_NO_USAGE_VALUES: Final = (None, None, None, None, None, None)


def usage_values(usage: Usage | None) -> tuple[Any, ...]:
    """The ROUND_USAGE_COLUMNS after the gateway flag: the counts and the raw object as
    JSON, all NULL without usage."""
    if usage is None:
        return _NO_USAGE_VALUES
    return (
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        _raw_json(raw if type(raw := usage.raw) is dict else dict(raw)),
    )


def usage_from_round_row(row: Sequence[Any], start: int) -> tuple[bool, Usage | None]:
    """The gateway flag and usage from the ROUND_USAGE_COLUMNS at ``row[start:]``."""
    gateway = bool(row[start])
    if row[start + 1] is None:
        return gateway, None
    usage = Usage(
        input_tokens=row[start + 1],
        cached_input_tokens=row[start + 2],
        cache_write_tokens=row[start + 3],
        output_tokens=row[start + 4],
        reasoning_tokens=row[start + 5],
        raw=json.loads(row[start + 6]),
    )
    return gateway, usage


def turn_values(turn: Turn) -> tuple[Any, ...]:
    """A turn's TURN_COLUMNS values."""
    return (
        turn.endpoint,
        turn.request_hash,
        turn.request_items,
        turn.answer_items,
        turn.response_id,
        turn.answer_status,
        turn.answer_type,
        turn.answer_body,
    )


def turn_from_row(row: Sequence[Any]) -> Turn:
    """A Turn from a row of TURN_COLUMNS."""
    return Turn(
        endpoint=row[0],
        request_hash=row[1],
        request_items=row[2],
        answer_items=row[3],
        response_id=row[4],
        answer_status=row[5],
        answer_type=row[6],
        answer_body=bytes(row[7]),
    )


def key_from_row(row: Sequence[Any]) -> ApiKeyInfo:
    """An ApiKeyInfo from (key_id, tenant_id, key_hash, created_at, revoked_at)."""
    return ApiKeyInfo(
        row[0], TenantId(row[1]), bytes(row[2]), Timestamp(row[3]), time_or_none(row[4])
    )
