"""RecentSessions: the newest version wins, tenants stay apart, the oldest entry goes first."""

from __future__ import annotations

from dataclasses import replace

from llmsession.ids import SessionId, TenantId
from llmsession.record import SessionRecord
from llmsession.store.models import StoredSession
from llmsession.store.recent import RecentSessions
from tests.store.conftest import T0

ACME = TenantId("acme")


def stored(version: int = 1, tenant: TenantId = ACME) -> StoredSession:
    record = SessionRecord.new(
        session_id=SessionId.generate(T0),
        tenant_id=tenant,
        provider_id="p",
        model="m",
        initial_tokens=10,
        created_at=T0,
    )
    return StoredSession(record, version=version, ttl_seconds=60, last_activity_at=T0)


def test_the_newest_version_wins_whatever_the_order() -> None:
    recent = RecentSessions(10)
    old = stored(version=4)
    new = replace(old, version=5)
    recent.remember(new)
    recent.remember(old)
    assert recent.get(ACME, old.record.session_id) is new


def test_another_tenant_gets_nothing() -> None:
    recent = RecentSessions(10)
    session = stored()
    recent.remember(session)
    assert recent.get(TenantId("globex"), session.record.session_id) is None
    assert recent.get(ACME, session.record.session_id) is session


def test_the_least_recently_used_goes_first() -> None:
    recent = RecentSessions(2)
    first, second, third = stored(), stored(), stored()
    recent.remember(first)
    recent.remember(second)
    assert recent.get(ACME, first.record.session_id) is first  # now the most recent
    recent.remember(third)
    assert len(recent) == 2
    assert recent.get(ACME, second.record.session_id) is None
    assert recent.get(ACME, first.record.session_id) is first


def test_capacity_zero_remembers_nothing_and_forget_drops() -> None:
    none = RecentSessions(0)
    session = stored()
    none.remember(session)
    assert none.get(ACME, session.record.session_id) is None
    some = RecentSessions(5)
    some.remember(session)
    some.forget(session.record.session_id)
    some.forget(session.record.session_id)
    assert some.get(ACME, session.record.session_id) is None


def test_contended_sessions_are_marked_one_by_one() -> None:
    recent = RecentSessions(5)
    hot, cold = stored(), stored()
    recent.mark_contended(hot.record.session_id)
    assert recent.contended(hot.record.session_id)
    assert not recent.contended(cold.record.session_id)


def test_refresh_updates_only_what_is_remembered_and_keeps_the_order() -> None:
    recent = RecentSessions(2)
    first, second, unknown = stored(version=1), stored(version=1), stored(version=1)
    recent.remember(first)
    recent.remember(second)
    recent.refresh(replace(first, version=2))
    recent.refresh(replace(second, version=0))
    recent.refresh(unknown)
    assert len(recent) == 2
    first_id = first.record.session_id
    assert recent.get(ACME, unknown.record.session_id) is None
    current = recent.get(ACME, second.record.session_id)
    assert current is not None
    assert current.version == 1
    # first was refreshed but not moved up: remembering a third one drops it.
    recent.remember(stored())
    assert recent.get(ACME, first_id) is None
    recent.refresh(replace(second, version=3))
    current = recent.get(ACME, second.record.session_id)
    assert current is not None
    assert current.version == 3
