"""Rows of the SQL backends (SQLite, PostgreSQL): one column layout, read and written here.

Both keep times as integer epoch microseconds and the same session columns in the
same order; they differ only in how a session id is stored (16 bytes in SQLite,
a native uuid in PostgreSQL), so callers decode that one column themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from llmsession.ids import SessionId, TenantId
from llmsession.record import SessionRecord
from llmsession.states import state_named
from llmsession.store.models import ApiKeyInfo, StoredSession
from llmsession.timestamps import Timestamp

__all__ = [
    "INSERT_COLUMNS",
    "SESSION_COLUMNS",
    "change_values",
    "insert_values",
    "key_from_row",
    "micros",
    "stored_from_row",
    "time_or_none",
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


def stored_from_row(row: Sequence[Any], session_id: SessionId) -> StoredSession:
    """A StoredSession from a row of SESSION_COLUMNS (validated by the core's record)."""
    record = SessionRecord(
        session_id=session_id,
        tenant_id=TenantId(row[1]),
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
        record, version=row[12], ttl_seconds=row[13], last_activity_at=Timestamp(row[14])
    )


def key_from_row(row: Sequence[Any]) -> ApiKeyInfo:
    """An ApiKeyInfo from (key_id, tenant_id, key_hash, created_at, revoked_at)."""
    return ApiKeyInfo(
        row[0], TenantId(row[1]), bytes(row[2]), Timestamp(row[3]), time_or_none(row[4])
    )
