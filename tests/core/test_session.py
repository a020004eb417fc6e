"""Every method of Session in every state, and every error it raises."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime

import pytest

from llmsession import (
    MAX_TOKENS,
    Active,
    Closed,
    ConsumedSessionError,
    Created,
    InvalidTimestamp,
    InvalidTokenCount,
    LLMSessionError,
    Session,
    SessionExpired,
    TokenOverflow,
    TransitionOrderError,
    WrongStateError,
    is_active,
    is_closed,
    is_created,
    is_expired,
    require_state,
    restore,
)
from llmsession.record import SessionRecord
from tests.core.factories import T0, active_session, at, created_record


def test_new_session_is_created_with_its_data() -> None:
    record = created_record(initial_tokens=500)
    session = Session.new(record)
    assert session.state() is Created
    assert session.data() == record
    assert session.session_id() == record.session_id
    assert session.tenant_id() == record.tenant_id
    assert session.provider_id() == "openai"
    assert session.model() == "gpt-4o"
    assert session.created_at() == T0
    assert session.round_count() == 0


def test_activate_returns_an_active_session() -> None:
    active = Session.new(created_record()).activate(at(2))
    assert active.state() is Active
    assert active.activated_at() == at(2)
    assert active.data().activated_at == at(2)
    assert active.round_count() == 0
    assert active.tokens_saved() == 0


def test_record_delta_counts_rounds_and_tokens() -> None:
    active = active_session(initial_tokens=1000)
    active.record_delta(100)
    active.record_delta(0)
    active.record_delta(250)
    assert active.round_count() == 3
    assert active.data().delta_tokens == 350
    assert active.tokens_saved() == 3 * 1000 - 350


def test_tokens_saved_never_goes_below_zero() -> None:
    active = active_session(initial_tokens=10)
    active.record_delta(500)
    assert active.tokens_saved() == 0
    assert active.data().tokens_saved == 0


def test_close_keeps_the_counts() -> None:
    active = active_session()
    active.record_delta(7)
    closed = active.close(at(5))
    assert closed.state() is Closed
    assert closed.closed_at() == at(5)
    assert closed.round_count() == 1
    assert closed.data().delta_tokens == 7
    assert closed.data().tokens_saved == 993


def test_expire_keeps_the_counts() -> None:
    active = active_session()
    active.record_delta(9)
    expired = active.expire(at(60))
    assert expired.state() is SessionExpired
    assert expired.expired_at() == at(60)
    assert expired.data().round_count == 1


def test_into_data_returns_the_record_and_consumes() -> None:
    active = active_session()
    active.record_delta(3)
    record = active.into_data()
    assert record.round_count == 1
    assert record.delta_tokens == 3
    with pytest.raises(ConsumedSessionError, match=r"round_count\(\).*into_data\(\)"):
        active.round_count()


def test_copy_is_independent() -> None:
    active = active_session()
    active.record_delta(5)
    twin = active.copy()
    twin.record_delta(10)
    assert active.round_count() == 1
    assert twin.round_count() == 2
    assert copy.copy(active).round_count() == 1
    assert copy.deepcopy(active).data() == active.data()


@pytest.mark.parametrize(
    ("make", "method", "args", "required", "actual"),
    [
        (lambda: Session.new(created_record()), "record_delta", (1,), "active", "created"),
        (lambda: Session.new(created_record()), "close", (at(1),), "active", "created"),
        (lambda: Session.new(created_record()), "expire", (at(1),), "active", "created"),
        (lambda: Session.new(created_record()), "tokens_saved", (), "active", "created"),
        (lambda: Session.new(created_record()), "activated_at", (), "active", "created"),
        (lambda: Session.new(created_record()), "closed_at", (), "closed", "created"),
        (lambda: Session.new(created_record()), "expired_at", (), "expired", "created"),
        (active_session, "activate", (at(1),), "created", "active"),
        (active_session, "closed_at", (), "closed", "active"),
        (active_session, "expired_at", (), "expired", "active"),
        (lambda: active_session().close(at(2)), "close", (at(3),), "active", "closed"),
        (lambda: active_session().close(at(2)), "record_delta", (1,), "active", "closed"),
        (lambda: active_session().close(at(2)), "expire", (at(3),), "active", "closed"),
        (lambda: active_session().close(at(2)), "activate", (at(3),), "created", "closed"),
        (lambda: active_session().close(at(2)), "tokens_saved", (), "active", "closed"),
        (lambda: active_session().close(at(2)), "expired_at", (), "expired", "closed"),
        (lambda: active_session().expire(at(2)), "record_delta", (1,), "active", "expired"),
        (lambda: active_session().expire(at(2)), "close", (at(3),), "active", "expired"),
        (lambda: active_session().expire(at(2)), "tokens_saved", (), "active", "expired"),
        (lambda: active_session().expire(at(2)), "closed_at", (), "closed", "expired"),
    ],
)
def test_wrong_state_calls_raise_and_change_nothing(
    make: object, method: str, args: tuple[object, ...], required: str, actual: str
) -> None:
    session = make()  # type: ignore[operator]  # pyright: ignore[reportCallIssue, reportUnknownVariableType]
    before = session.data()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    with pytest.raises(WrongStateError) as caught:
        getattr(session, method)(*args)
    error = caught.value
    assert (error.method, error.required, error.actual) == (method, required, actual)
    assert f"{method}()" in str(error)
    assert repr(required) in str(error)
    assert repr(actual) in str(error)
    assert session.data() == before  # pyright: ignore[reportUnknownMemberType]


@pytest.mark.parametrize(
    ("transition", "args"),
    [("close", (at(3),)), ("expire", (at(3),)), ("into_data", ())],
)
def test_a_transition_consumes_the_handle(transition: str, args: tuple[object, ...]) -> None:
    active = active_session()
    getattr(active, transition)(*args)
    for use in (
        lambda: active.close(at(4)),
        lambda: active.record_delta(1),
        lambda: active.data(),
        lambda: active.session_id(),
        lambda: active.copy(),
        lambda: active.tokens_saved(),
    ):
        with pytest.raises(ConsumedSessionError) as caught:
            use()
        assert caught.value.consumed_by == transition
        assert f"{transition}() already consumed" in str(caught.value)
    assert f"consumed by {transition}()" in repr(active)


def test_activate_consumes_the_created_handle() -> None:
    created = Session.new(created_record())
    created.activate(at(1))
    with pytest.raises(ConsumedSessionError):
        created.activate(at(2))


@pytest.mark.parametrize("bad", [-1, 1.0, 2.5, True, False, "5", None, MAX_TOKENS + 1, 2**64])
def test_record_delta_rejects_bad_counts(bad: object) -> None:
    active = active_session()
    active.record_delta(4)
    with pytest.raises(InvalidTokenCount, match="delta_tokens must be an integer from 0 to"):
        active.record_delta(bad)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert active.round_count() == 1
    assert active.data().delta_tokens == 4


def test_record_delta_accepts_the_maximum_once() -> None:
    active = active_session(initial_tokens=0)
    active.record_delta(MAX_TOKENS)
    with pytest.raises(TokenOverflow, match="2\\*\\*63-1"):
        active.record_delta(1)
    assert active.round_count() == 1
    assert active.data().delta_tokens == MAX_TOKENS


def test_rounds_times_initial_tokens_may_not_pass_the_maximum() -> None:
    active = active_session(initial_tokens=MAX_TOKENS // 2)
    active.record_delta(0)
    active.record_delta(0)
    with pytest.raises(TokenOverflow):
        active.record_delta(0)
    assert active.round_count() == 2
    assert active.tokens_saved() == 2 * (MAX_TOKENS // 2)


@pytest.mark.parametrize("method", ["activate"])
def test_transitions_reject_non_timestamps(method: str) -> None:
    created = Session.new(created_record())
    for bad in (datetime.now(UTC), 1_700_000_000, "2026-01-01T00:00:00Z", None):
        with pytest.raises(InvalidTimestamp, match="must be a Timestamp"):
            getattr(created, method)(bad)
    assert created.state() is Created


def test_close_and_expire_reject_non_timestamps() -> None:
    active = active_session()
    with pytest.raises(InvalidTimestamp):
        active.close(datetime.now(UTC))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(InvalidTimestamp):
        active.expire(0)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    assert active.state() is Active


def test_transitions_may_not_go_back_in_time() -> None:
    created = Session.new(created_record())
    with pytest.raises(TransitionOrderError, match=r"activated_at .* is before created_at"):
        created.activate(at(-1))
    active = created.activate(at(10))
    with pytest.raises(TransitionOrderError, match=r"closed_at .* is before activated_at"):
        active.close(at(9))
    with pytest.raises(TransitionOrderError, match=r"expired_at .* is before activated_at"):
        active.expire(at(9.999999))
    assert active.state() is Active
    assert active.close(at(10)).closed_at() == at(10)


def test_new_needs_a_created_record() -> None:
    active_record = active_session().into_data()
    with pytest.raises(WrongStateError, match=r"Session.new\(\) needs .*'created'.*'active'"):
        Session.new(active_record)


def test_the_checked_constructor_verifies_the_state() -> None:
    record = active_session().into_data()
    assert Session(Active, record).state() is Active
    with pytest.raises(WrongStateError):
        Session(Closed, record)
    with pytest.raises(TypeError, match="state class"):
        Session(int, record)  # type: ignore[type-var]  # pyright: ignore[reportArgumentType]


def test_restore_and_guards_cover_every_state() -> None:
    active = active_session()
    records = {
        "created": created_record(),
        "active": active.copy().into_data(),
        "closed": active.copy().close(at(3)).into_data(),
        "expired": active.copy().expire(at(3)).into_data(),
    }
    guards = {
        "created": is_created,
        "active": is_active,
        "closed": is_closed,
        "expired": is_expired,
    }
    for name, record in records.items():
        session = restore(record)
        assert session.state().name == name
        assert session.data() == record
        for guard_name, guard in guards.items():
            assert guard(session) is (guard_name == name)


def test_require_state_narrows_or_raises_the_core_error() -> None:
    record = active_session().close(at(2)).into_data()
    with pytest.raises(WrongStateError) as caught:
        require_state(restore(record), Active, "record_delta")
    assert (caught.value.method, caught.value.required, caught.value.actual) == (
        "record_delta",
        "active",
        "closed",
    )
    assert require_state(restore(record), Closed, "closed_at").closed_at() == at(2)


def test_repr_shows_state_and_counts() -> None:
    active = active_session()
    active.record_delta(12)
    text = repr(active)
    assert text.startswith("Session[Active](")
    assert "round_count=1" in text
    assert "delta_tokens=12" in text


def test_errors_pickle_with_their_fields() -> None:
    error = WrongStateError("close", "active", "closed")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.method, clone.required, clone.actual) == ("close", "active", "closed")
    consumed = pickle.loads(pickle.dumps(ConsumedSessionError("data", "close")))
    assert consumed.consumed_by == "close"


def test_every_error_shares_one_base() -> None:
    from llmsession import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), LLMSessionError)


def test_session_data_is_a_snapshot() -> None:
    active = active_session()
    active.record_delta(1)
    snapshot = active.data()
    active.record_delta(1)
    assert snapshot.round_count == 1
    assert active.data().round_count == 2
    assert isinstance(snapshot, SessionRecord)
