"""SessionRecord: an immutable value holding everything a session is.

A record is valid by construction: every field has its type and range, and the
timestamps present are exactly those the state requires, in order. Stores, the
server and the client move records around; only :mod:`llmsession.session`
decides how one record follows another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Self, final

from llmsession.errors import InvalidInput, InvalidRecord, TokenOverflow, TransitionOrderError
from llmsession.ids import SessionId, TenantId, check_label
from llmsession.states import Active, Closed, Created, SessionExpired, SessionState, state_named
from llmsession.timestamps import Timestamp
from llmsession.tokens import check_token_count, compute_tokens_saved, max_rounds

__all__ = ["RECORD_VERSION", "SessionRecord"]

#: Version of the plain-data form written by :meth:`SessionRecord.to_dict`.
RECORD_VERSION: Final = 1

_FIELDS = (
    "version",
    "session_id",
    "tenant_id",
    "provider_id",
    "model",
    "initial_tokens",
    "state",
    "created_at",
    "activated_at",
    "closed_at",
    "expired_at",
    "round_count",
    "delta_tokens",
)

# Which optional timestamps each state must have; the others must be absent.
_REQUIRED_TIMES: dict[type[SessionState], frozenset[str]] = {
    Created: frozenset(),
    Active: frozenset({"activated_at"}),
    Closed: frozenset({"activated_at", "closed_at"}),
    SessionExpired: frozenset({"activated_at", "expired_at"}),
}
_OPTIONAL_TIMES = ("activated_at", "closed_at", "expired_at")


@final
@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Everything a session is, in any state. Immutable; validated on construction."""

    session_id: SessionId
    tenant_id: TenantId
    provider_id: str
    model: str
    initial_tokens: int
    created_at: Timestamp
    state: type[SessionState] = Created
    activated_at: Timestamp | None = None
    closed_at: Timestamp | None = None
    expired_at: Timestamp | None = None
    round_count: int = 0
    delta_tokens: int = 0

    def __post_init__(self) -> None:
        _check_type("session_id", self.session_id, SessionId)
        _check_type("tenant_id", self.tenant_id, TenantId)
        check_label("provider_id", self.provider_id)
        check_label("model", self.model)
        check_token_count("initial_tokens", self.initial_tokens)
        _check_type("created_at", self.created_at, Timestamp)
        if self.state not in _REQUIRED_TIMES:
            raise InvalidRecord(f"state must be one of the session states, got {self.state!r}")
        required = _REQUIRED_TIMES[self.state]
        for name in _OPTIONAL_TIMES:
            value: object = getattr(self, name)
            if name in required:
                if value is None:
                    raise InvalidRecord(f"a {self.state.name} session must have {name}")
                _check_type(name, value, Timestamp)
            elif value is not None:
                raise InvalidRecord(f"a {self.state.name} session must not have {name}")
        check_token_count("round_count", self.round_count)
        check_token_count("delta_tokens", self.delta_tokens)
        if self.state is Created and (self.round_count or self.delta_tokens):
            raise InvalidRecord(
                "a created session has recorded no rounds: round_count and delta_tokens must be 0"
            )
        if self.round_count > max_rounds(self.initial_tokens):
            raise TokenOverflow(
                f"round_count {self.round_count} times initial_tokens {self.initial_tokens} "
                "passes 2**63-1"
            )
        if self.activated_at is not None:
            check_order("created_at", self.created_at, "activated_at", self.activated_at)
            for name in ("closed_at", "expired_at"):
                later: Timestamp | None = getattr(self, name)
                if later is not None:
                    check_order("activated_at", self.activated_at, name, later)

    @classmethod
    def new(
        cls,
        *,
        session_id: SessionId,
        tenant_id: TenantId,
        provider_id: str,
        model: str,
        initial_tokens: int,
        created_at: Timestamp,
    ) -> Self:
        """The record of a freshly created session (state Created, no rounds)."""
        return cls(
            session_id=session_id,
            tenant_id=tenant_id,
            provider_id=provider_id,
            model=model,
            initial_tokens=initial_tokens,
            created_at=created_at,
        )

    @property
    def tokens_saved(self) -> int:
        """Tokens saved so far; see :func:`llmsession.tokens.compute_tokens_saved`."""
        return compute_tokens_saved(self.round_count, self.initial_tokens, self.delta_tokens)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, with the format ``version``; read back by from_dict."""
        return {
            "version": RECORD_VERSION,
            "session_id": str(self.session_id),
            "tenant_id": self.tenant_id.value,
            "provider_id": self.provider_id,
            "model": self.model,
            "initial_tokens": self.initial_tokens,
            "state": self.state.name,
            "created_at": self.created_at.isoformat(),
            "activated_at": _iso_or_none(self.activated_at),
            "closed_at": _iso_or_none(self.closed_at),
            "expired_at": _iso_or_none(self.expired_at),
            "round_count": self.round_count,
            "delta_tokens": self.delta_tokens,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Self:
        """Validate plain data (as written by to_dict) and build the record.

        Every problem raises InvalidRecord naming the field and what is allowed.
        """
        if not isinstance(data, Mapping):
            raise InvalidRecord(f"a session record is a mapping, got {type(data).__name__}")
        unknown = sorted(str(key) for key in data if key not in _FIELDS)
        if unknown:
            raise InvalidRecord(f"unknown fields {unknown}; allowed: {list(_FIELDS)}")
        missing = [name for name in _FIELDS if name not in data]
        if missing:
            raise InvalidRecord(f"missing fields {missing}")
        version = data["version"]
        if type(version) is not int or version != RECORD_VERSION:
            raise InvalidRecord(
                f"unknown record version {version!r}; this llmsession reads version "
                f"{RECORD_VERSION}"
            )
        try:
            session_id = SessionId.parse(_text("session_id", data["session_id"]))
            return cls(
                session_id=session_id,
                tenant_id=TenantId(_text("tenant_id", data["tenant_id"])),
                provider_id=_text("provider_id", data["provider_id"]),
                model=_text("model", data["model"]),
                initial_tokens=check_token_count("initial_tokens", data["initial_tokens"]),
                state=state_named(data["state"]),
                created_at=Timestamp.parse(_text("created_at", data["created_at"])),
                activated_at=_time_or_none("activated_at", data["activated_at"]),
                closed_at=_time_or_none("closed_at", data["closed_at"]),
                expired_at=_time_or_none("expired_at", data["expired_at"]),
                round_count=check_token_count("round_count", data["round_count"]),
                delta_tokens=check_token_count("delta_tokens", data["delta_tokens"]),
            )
        except InvalidRecord:
            raise
        except InvalidInput as error:
            raise InvalidRecord(f"invalid session record: {error}") from error


#: The record's fields, in order (what derive copies).
_RECORD_FIELDS: Final = tuple(f.name for f in fields(SessionRecord))


def derive(record: SessionRecord, **changes: object) -> SessionRecord:
    """``record`` with ``changes``, without validating the whole record again.

    Only for the transitions in :mod:`llmsession.session`: each checks what it
    changes (record_delta the counters, a transition its time and that time's
    order) and sets a state together with exactly the time that state requires,
    so the result is as valid as ``record``. Validating every unchanged field
    again would cost more than the rest of a round in the core.
    """
    derived = object.__new__(SessionRecord)
    # object.__setattr__: the frozen class's own refuses, as it should elsewhere.
    set_field = object.__setattr__
    for name in _RECORD_FIELDS:
        set_field(derived, name, getattr(record, name))
    for name, value in changes.items():
        set_field(derived, name, value)
    return derived


def with_counters(record: SessionRecord, round_count: int, delta_tokens: int) -> SessionRecord:
    """``record`` with new counters, which Session.record_delta checked: derive for
    the one change made at every round, written out (a third faster than derive's
    loop). Keep its fields in step with SessionRecord's; the tests compare it with
    dataclasses.replace.
    """
    derived = object.__new__(SessionRecord)
    set_field = object.__setattr__
    set_field(derived, "session_id", record.session_id)
    set_field(derived, "tenant_id", record.tenant_id)
    set_field(derived, "provider_id", record.provider_id)
    set_field(derived, "model", record.model)
    set_field(derived, "initial_tokens", record.initial_tokens)
    set_field(derived, "created_at", record.created_at)
    set_field(derived, "state", record.state)
    set_field(derived, "activated_at", record.activated_at)
    set_field(derived, "closed_at", record.closed_at)
    set_field(derived, "expired_at", record.expired_at)
    set_field(derived, "round_count", round_count)
    set_field(derived, "delta_tokens", delta_tokens)
    return derived


def stored_record(
    *,
    session_id: SessionId,
    tenant_id: TenantId,
    provider_id: str,
    model: str,
    initial_tokens: int,
    state: type[SessionState],
    created_at: Timestamp,
    activated_at: Timestamp | None,
    closed_at: Timestamp | None,
    expired_at: Timestamp | None,
    round_count: int,
    delta_tokens: int,
) -> SessionRecord:
    """A record a store wrote, rebuilt from its own row, without validating it again.

    Only for a store decoding what it stored itself: every record reaches a store
    valid (built by SessionRecord, or moved on by the transitions of
    :mod:`llmsession.session`), and the store keeps its fields as they were, so
    checking them again on every read would only repeat the checks made before the
    write (they cost most of a row's decoding). Anything from a caller goes through
    SessionRecord itself or :meth:`SessionRecord.from_dict`. Keep its fields in step
    with SessionRecord's; the tests compare it with the validating constructor.
    """
    record = object.__new__(SessionRecord)
    set_field = object.__setattr__
    set_field(record, "session_id", session_id)
    set_field(record, "tenant_id", tenant_id)
    set_field(record, "provider_id", provider_id)
    set_field(record, "model", model)
    set_field(record, "initial_tokens", initial_tokens)
    set_field(record, "created_at", created_at)
    set_field(record, "state", state)
    set_field(record, "activated_at", activated_at)
    set_field(record, "closed_at", closed_at)
    set_field(record, "expired_at", expired_at)
    set_field(record, "round_count", round_count)
    set_field(record, "delta_tokens", delta_tokens)
    return record


def check_order(earlier_name: str, earlier: Timestamp, later_name: str, later: Timestamp) -> None:
    """A transition may not be dated before the one it follows (equal is fine)."""
    if later < earlier:
        raise TransitionOrderError(
            f"{later_name} {later} is before {earlier_name} {earlier}; "
            f"{later_name} must be at or after {earlier_name}"
        )


def _check_type(name: str, value: object, expected: type) -> None:
    if not isinstance(value, expected):
        raise InvalidRecord(
            f"{name} must be a {expected.__name__}, got {type(value).__name__} {value!r}"
        )


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRecord(f"{name} must be a string, got {type(value).__name__} {value!r}")
    return value


def _time_or_none(name: str, value: object) -> Timestamp | None:
    return None if value is None else Timestamp.parse(_text(name, value))


def _iso_or_none(value: Timestamp | None) -> str | None:
    return None if value is None else value.isoformat()
