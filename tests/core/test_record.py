"""SessionRecord validity, its plain-data form, ids and timestamps."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from llmsession import (
    MAX_TOKENS,
    RECORD_VERSION,
    Active,
    Closed,
    InvalidIdentifier,
    InvalidRecord,
    InvalidTimestamp,
    InvalidTokenCount,
    SessionExpired,
    SessionId,
    SessionRecord,
    TenantId,
    Timestamp,
    TokenOverflow,
    TransitionOrderError,
)
from llmsession.record import stored_record, with_counters
from tests.core.factories import T0, active_session, at, created_record


def all_records() -> list[SessionRecord]:
    active = active_session()
    active.record_delta(40)
    return [
        created_record(),
        active.copy().into_data(),
        active.copy().close(at(9)).into_data(),
        active.copy().expire(at(9)).into_data(),
    ]


@pytest.mark.parametrize("record", all_records(), ids=lambda r: r.state.name)
def test_to_dict_round_trips_through_json(record: SessionRecord) -> None:
    data = json.loads(json.dumps(record.to_dict()))
    assert data["version"] == RECORD_VERSION
    assert data["state"] == record.state.name
    assert SessionRecord.from_dict(data) == record


def good_dict(**changes: Any) -> dict[str, Any]:
    data = all_records()[2].to_dict()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 2}, "unknown record version 2"),
        ({"version": "1"}, "unknown record version '1'"),
        ({"version": True}, "unknown record version True"),
        ({"closed_at": None}, "a closed session must have closed_at"),
        ({"expired_at": "2026-01-01T00:00:00Z"}, "a closed session must not have expired_at"),
        ({"state": "paused"}, "unknown session state 'paused'"),
        ({"round_count": -1}, "round_count must be an integer from 0 to 2\\*\\*63-1"),
        ({"delta_tokens": 1.5}, "delta_tokens must be an integer"),
        ({"initial_tokens": True}, "initial_tokens must be an integer"),
        ({"tenant_id": ""}, "tenant id '' is not allowed"),
        ({"provider_id": ""}, "provider_id must not be empty"),
        ({"model": " gpt"}, "must not start or end with white space"),
        ({"session_id": "nope"}, "is not a session id"),
        ({"created_at": "2026-01-01T00:00:00"}, "'2026-01-01T00:00:00' has no timezone; end it"),
        ({"created_at": 12}, "created_at must be a string"),
        ({"activated_at": "2000-01-01T00:00:00Z"}, "activated_at .* is before created_at"),
        ({"extra": 1}, "unknown fields \\['extra'\\]"),
    ],
)
def test_from_dict_rejects_invalid_data(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        SessionRecord.from_dict(good_dict(**changes))


def test_from_dict_rejects_missing_fields_and_non_mappings() -> None:
    data = good_dict()
    del data["model"]
    with pytest.raises(InvalidRecord, match="missing fields \\['model'\\]"):
        SessionRecord.from_dict(data)
    with pytest.raises(InvalidRecord, match="is a mapping"):
        SessionRecord.from_dict([])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_created_records_have_no_rounds_and_no_later_times() -> None:
    with pytest.raises(InvalidRecord, match="created session has recorded no rounds"):
        created_record(round_count=1)
    with pytest.raises(InvalidRecord, match="must not have activated_at"):
        created_record(activated_at=at(1))


def test_state_requires_its_timestamps() -> None:
    base = created_record()
    with pytest.raises(InvalidRecord, match="active session must have activated_at"):
        replace(base, state=Active)
    with pytest.raises(InvalidRecord, match="expired session must have expired_at"):
        replace(base, state=SessionExpired, activated_at=at(1))
    with pytest.raises(InvalidRecord, match="closed session must not have expired_at"):
        replace(base, state=Closed, activated_at=at(1), closed_at=at(2), expired_at=at(2))
    with pytest.raises(InvalidRecord, match="state must be one of"):
        replace(base, state=int)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_record_fields_are_type_checked() -> None:
    with pytest.raises(InvalidRecord, match="tenant_id must be a TenantId"):
        created_record(tenant_id="acme")
    with pytest.raises(InvalidRecord, match="session_id must be a SessionId"):
        created_record(session_id=uuid.uuid4())
    with pytest.raises(InvalidRecord, match="created_at must be a Timestamp"):
        created_record(created_at=datetime.now(UTC))
    with pytest.raises(InvalidTokenCount):
        created_record(initial_tokens=MAX_TOKENS + 1)
    with pytest.raises(TokenOverflow):
        replace(active_session(initial_tokens=MAX_TOKENS).into_data(), round_count=2)


def test_transition_order_is_checked_on_records() -> None:
    with pytest.raises(TransitionOrderError):
        replace(created_record(), state=Active, activated_at=at(-5))


def test_records_are_immutable() -> None:
    record = created_record()
    with pytest.raises(AttributeError):
        record.round_count = 5  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]


# -- labels and ids ------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("provider_id", "", "must not be empty"),
        ("provider_id", "x" * 201, "at most 200 characters"),
        ("model", "gpt\n4", "only printable characters, got U.000A at position 3"),
        ("model", 4, "must be text"),
    ],
)
def test_labels_are_validated(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidIdentifier, match=message):
        created_record(**{field: value})


@pytest.mark.parametrize("bad", ["", " acme", "acme corp", "-acme", "a" * 129, "ünï", 5])
def test_tenant_ids_are_validated(bad: object) -> None:
    with pytest.raises(InvalidIdentifier, match="tenant id"):
        TenantId(bad)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_session_ids_are_uuid7_and_time_ordered() -> None:
    first = SessionId.generate(T0)
    later = SessionId.generate(at(0.002))
    assert first.value.version == 7
    assert first.value.variant == uuid.RFC_4122
    assert first < later
    assert first.value.int >> 80 == T0.epoch_micros // 1000
    assert SessionId.parse(str(first)) == first
    assert SessionId.generate(T0) != first


@pytest.mark.parametrize("bad", ["", "not-a-uuid", "1234", 7])
def test_session_id_parse_rejects_garbage(bad: object) -> None:
    with pytest.raises(InvalidIdentifier):
        SessionId.parse(bad)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(InvalidIdentifier):
        SessionId("0192f0c4-7b1e-7c2a-9d1e-3f4a5b6c7d8e")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_ids_of_different_kinds_never_compare_equal() -> None:
    assert TenantId("acme") != "acme"
    assert SessionId.generate(T0) != TenantId("acme")
    session_id = SessionId.generate(T0)
    assert session_id != session_id.value
    assert session_id.value != session_id


def test_equal_ids_hash_alike_and_find_each_other() -> None:
    first = SessionId.generate(T0)
    again = SessionId.parse(str(first))
    assert again is not first
    assert again == first
    assert (again != first) is False
    assert hash(again) == hash(first)
    assert {first: "found"}[again] == "found"
    assert SessionId.generate(T0) not in {first}
    tenant = TenantId("acme")
    assert TenantId("acme") == tenant
    assert hash(TenantId("acme")) == hash(tenant)
    assert {tenant: "found"}[TenantId("acme")] == "found"
    assert TenantId("other") != tenant


# -- timestamps ------------------------------------------------------------------


def test_timestamps_are_utc_and_exact() -> None:
    moment = datetime(2026, 11, 25, 12, 30, 1, 123456, tzinfo=timezone(timedelta(hours=2)))
    stamp = Timestamp.from_datetime(moment)
    assert stamp.to_datetime() == moment
    assert stamp.to_datetime().tzinfo is UTC
    assert stamp.isoformat() == "2026-11-25T10:30:01.123456Z"
    assert Timestamp.parse(stamp.isoformat()) == stamp
    assert Timestamp.parse("2026-11-25T12:30:01.123456+02:00") == stamp
    assert str(stamp) == stamp.isoformat()


@pytest.mark.parametrize(
    "text",
    ["0001-01-01T00:00:00.000000Z", "0191-05-06T11:47:19.000001Z", "9999-12-31T23:59:59.999999Z"],
)
def test_every_year_is_written_with_four_digits(text: str) -> None:
    assert Timestamp.parse(text).isoformat() == text


def test_naive_and_malformed_timestamps_are_refused() -> None:
    with pytest.raises(InvalidTimestamp, match="naive datetime"):
        Timestamp.from_datetime(datetime(2026, 1, 1))
    with pytest.raises(InvalidTimestamp, match="not an ISO 8601 timestamp"):
        Timestamp.parse("yesterday")
    # Text is told how to write the offset, not which Python call makes one.
    with pytest.raises(InvalidTimestamp, match="'2026-01-01' has no timezone; end it with Z"):
        Timestamp.parse("2026-01-01")
    with pytest.raises(InvalidTimestamp, match="integer microseconds"):
        Timestamp(1.5)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(InvalidTimestamp, match="outside the years"):
        Timestamp(10**18)
    with pytest.raises(InvalidTimestamp, match="aware datetime"):
        Timestamp.from_datetime("2026-01-01")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_timestamps_order_and_shift() -> None:
    assert T0 < at(1) < at(1.5)
    assert at(1).epoch_micros - T0.epoch_micros == 1_000_000
    assert at(-1) < T0


def test_with_counters_is_replace_of_the_counters_only() -> None:
    # Written out field by field for speed: it must copy every field there is.
    session = active_session()
    active = session.data()
    closed = session.close(at(2)).data()
    for record in (active, closed):
        derived = with_counters(record, 3, 41)
        assert derived == replace(record, round_count=3, delta_tokens=41)
        assert all(
            getattr(derived, name) is getattr(record, name)
            for name in record.__dataclass_fields__
            if name not in ("round_count", "delta_tokens")
        )


@pytest.mark.parametrize("record", all_records(), ids=lambda r: r.state.name)
def test_stored_record_is_the_validated_record(record: SessionRecord) -> None:
    # Written out field by field for speed: it must set every field there is.
    rebuilt = stored_record(
        session_id=record.session_id,
        tenant_id=record.tenant_id,
        provider_id=record.provider_id,
        model=record.model,
        initial_tokens=record.initial_tokens,
        state=record.state,
        created_at=record.created_at,
        activated_at=record.activated_at,
        closed_at=record.closed_at,
        expired_at=record.expired_at,
        round_count=record.round_count,
        delta_tokens=record.delta_tokens,
    )
    assert rebuilt == record
    assert all(
        getattr(rebuilt, name) is getattr(record, name) for name in record.__dataclass_fields__
    )
