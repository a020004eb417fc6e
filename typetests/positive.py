"""Calls in the right state: the checkers must infer exactly these types."""

from typing import assert_never, assert_type

from llmsession import (
    Active,
    AnySession,
    Closed,
    Created,
    Session,
    SessionExpired,
    SessionId,
    SessionRecord,
    TenantId,
    Timestamp,
    is_active,
    is_closed,
    is_created,
    is_expired,
    require_state,
    restore,
)

t = Timestamp(0)


def lifecycle(record: SessionRecord) -> None:
    created = Session.new(record)
    assert_type(created, Session[Created])
    assert_type(created.session_id(), SessionId)
    assert_type(created.tenant_id(), TenantId)
    assert_type(created.provider_id(), str)
    assert_type(created.model(), str)
    assert_type(created.created_at(), Timestamp)
    assert_type(created.round_count(), int)
    assert_type(created.data(), SessionRecord)
    assert_type(created.copy(), Session[Created])
    assert_type(created.state(), type[Created])

    active = created.activate(t)
    assert_type(active, Session[Active])
    assert_type(active.activated_at(), Timestamp)
    assert_type(active.record_delta(10), None)
    assert_type(active.tokens_saved(), int)
    assert_type(active.copy(), Session[Active])

    closed = active.close(t)
    assert_type(closed, Session[Closed])
    assert_type(closed.closed_at(), Timestamp)
    assert_type(closed.into_data(), SessionRecord)


def expiry(active: Session[Active]) -> None:
    expired = active.expire(t)
    assert_type(expired, Session[SessionExpired])
    assert_type(expired.expired_at(), Timestamp)


def checked_constructor(record: SessionRecord) -> None:
    assert_type(Session(Active, record), Session[Active])


def narrowing(record: SessionRecord) -> None:
    session = restore(record)
    assert_type(session, AnySession)
    if is_active(session):
        assert_type(session, Session[Active])
        session.record_delta(1)
    elif is_created(session):
        assert_type(session, Session[Created])
        session.activate(t)
    elif is_closed(session):
        assert_type(session, Session[Closed])
        session.closed_at()
    elif is_expired(session):
        assert_type(session, Session[SessionExpired])
        session.expired_at()
    else:
        assert_never(session)


def required(record: SessionRecord) -> None:
    active = require_state(restore(record), Active, "record_delta")
    assert_type(active, Session[Active])
    active.record_delta(3)
