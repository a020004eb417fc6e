"""Calls in the wrong state: each line must be rejected by mypy and by pyright.

Every line carries an ignore for each checker; both are configured to fail on an
ignore that is not needed (warn_unused_ignores, reportUnnecessaryTypeIgnoreComment),
so the run fails the moment a wrong-state call stops being an error.
"""

from llmsession import (
    Active,
    Closed,
    Created,
    Session,
    SessionExpired,
    SessionId,
    TenantId,
    Timestamp,
    restore,
)

t = Timestamp(0)


def calls(
    created: Session[Created],
    active: Session[Active],
    closed: Session[Closed],
    expired: Session[SessionExpired],
) -> None:
    created.record_delta(5)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    created.close(t)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    created.expire(t)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    created.tokens_saved()  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    created.activated_at()  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    created.closed_at()  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    created.expired_at()  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    active.activate(t)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    active.closed_at()  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    active.expired_at()  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    closed.close(t)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    closed.record_delta(1)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    closed.activate(t)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    closed.expire(t)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    closed.tokens_saved()  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    closed.expired_at()  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    expired.tokens_saved()  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    expired.record_delta(1)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    expired.close(t)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    expired.closed_at()  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    active.record_delta("5")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    active.close(1.5)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    restore(created.data()).record_delta(1)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    Session(Active, created.data()).activate(t)  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]


def bare_constructor(created: Session[Created]) -> None:
    # No Session[Any] from a bare constructor: the state class is required.
    Session(created.data())  # type: ignore[call-arg, arg-type]  # pyright: ignore[reportCallIssue]


def ids_are_distinct(created: Session[Created]) -> tuple[TenantId, SessionId]:
    return (created.session_id(), created.tenant_id())  # type: ignore[return-value]  # pyright: ignore[reportReturnType]
