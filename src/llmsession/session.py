"""Session[S]: a session whose methods exist only in the right state.

Every rule of the session state machine lives in this module (with the record's
own validity rules in :mod:`llmsession.record`). Stores, the server and the CLI
call these methods; they never restate a rule.

Static checking: each state-specific method declares the state it needs on
``self`` (``def close(self: Session[Active], ...)``), so mypy --strict and pyright
strict reject ``created.close(t)`` just as rustc rejects it. The constructor asks
for the state class, so no bare ``Session(record)`` can produce a ``Session[Any]``
that would switch the check off.

Run time: Python does not stop a cast or an ``Any``, so each method checks the
state again and raises :class:`WrongStateError`. A transition consumes its
handle, as Rust's ``self`` does: the old handle raises
:class:`ConsumedSessionError` on any later use instead of forking the session.
"""

from __future__ import annotations

from typing import Generic, NoReturn, TypeAlias, TypeVar, cast, final

from typing_extensions import TypeIs

from llmsession.errors import (
    ConsumedSessionError,
    InvalidRecord,
    InvalidTimestamp,
    TokenOverflow,
    WrongStateError,
)
from llmsession.ids import SessionId, TenantId
from llmsession.record import SessionRecord, check_order, derive, with_counters
from llmsession.states import ALL_STATES, Active, Closed, Created, SessionExpired, SessionState
from llmsession.timestamps import Timestamp
from llmsession.tokens import MAX_TOKENS, check_token_count, compute_tokens_saved, max_rounds

__all__ = [
    "AnySession",
    "Session",
    "as_after_round",
    "is_active",
    "is_closed",
    "is_created",
    "is_expired",
    "require_state",
    "restore",
]

S = TypeVar("S", bound=SessionState)
S2 = TypeVar("S2", bound=SessionState)


@final
class Session(Generic[S]):
    """A stateful LLM session; ``S`` is its state: Created, Active, Closed or SessionExpired.

    - ``Session[Created]``: can be activated.
    - ``Session[Active]``: can record deltas, close, or expire.
    - ``Session[Closed]``, ``Session[SessionExpired]``: terminal.

    Build one with :meth:`Session.new` (a Created record) or :func:`restore` (a
    stored record in any state). ``Session(Active, record)`` is the checked form:
    it raises WrongStateError unless the record is in that state.
    """

    # The counters live outside the immutable record so that record_delta, the
    # hot path, is two integer stores rather than a new validated record.
    # _state is the hot-path check: the state class while the handle is alive,
    # None once a transition consumed it. _kind keeps the static type for state().
    __slots__ = (
        "_consumed_by",
        "_delta_tokens",
        "_kind",
        "_record",
        "_round_count",
        "_round_limit",
        "_state",
    )

    def __init__(self, state: type[S], record: SessionRecord) -> None:
        if state not in ALL_STATES:
            raise TypeError(f"Session needs a state class such as Active, got {state!r}")
        if not isinstance(record, SessionRecord):
            raise InvalidRecord(f"Session needs a SessionRecord, got {type(record).__name__}")
        if record.state is not state:
            raise WrongStateError(f"Session[{state.__name__}]", state.name, record.state.name)
        self._kind = state
        self._state: type[SessionState] | None = state
        self._consumed_by = ""
        self._record = record
        self._round_count = record.round_count
        self._delta_tokens = record.delta_tokens
        self._round_limit = max_rounds(record.initial_tokens)

    # -- every state -------------------------------------------------------

    def data(self) -> SessionRecord:
        """The session's data as an immutable record (a snapshot)."""
        self._require_alive("data")
        return self._snapshot()

    def session_id(self) -> SessionId:
        """The session's id."""
        self._require_alive("session_id")
        return self._record.session_id

    def tenant_id(self) -> TenantId:
        """The tenant the session belongs to."""
        self._require_alive("tenant_id")
        return self._record.tenant_id

    def provider_id(self) -> str:
        """The LLM provider the session runs against."""
        self._require_alive("provider_id")
        return self._record.provider_id

    def model(self) -> str:
        """The model the session runs against."""
        self._require_alive("model")
        return self._record.model

    def created_at(self) -> Timestamp:
        """When the session was created."""
        self._require_alive("created_at")
        return self._record.created_at

    def round_count(self) -> int:
        """How many rounds (deltas) have been recorded."""
        self._require_alive("round_count")
        return self._round_count

    def state(self) -> type[S]:
        """The state class, e.g. ``Active``; its ``name`` is the stored name."""
        self._require_alive("state")
        return self._kind

    def into_data(self) -> SessionRecord:
        """Consume the handle and return its record (for serialization)."""
        self._require_alive("into_data")
        record = self._snapshot()
        self._consume("into_data")
        return record

    def copy(self) -> Session[S]:
        """An independent handle with the same data (Rust's ``Clone``)."""
        self._require_alive("copy")
        return Session(self._kind, self._snapshot())

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, object]) -> Session[S]:
        return self.copy()

    def __repr__(self) -> str:
        if self._state is None:
            return f"<Session consumed by {self._consumed_by}()>"
        record = self._record
        return (
            f"Session[{self._state.__name__}](session_id={str(record.session_id)!r}, "
            f"tenant_id={record.tenant_id.value!r}, provider_id={record.provider_id!r}, "
            f"model={record.model!r}, round_count={self._round_count}, "
            f"delta_tokens={self._delta_tokens})"
        )

    # -- Created -----------------------------------------------------------

    @staticmethod
    def new(data: SessionRecord) -> Session[Created]:
        """A new session in the Created state, from a Created record."""
        if isinstance(data, SessionRecord) and data.state is not Created:
            raise WrongStateError("Session.new", Created.name, data.state.name)
        return Session(Created, data)

    def activate(self: Session[Created], activated_at: Timestamp) -> Session[Active]:
        """Activate the session; consumes this handle and returns the Active one."""
        self._require_state("activate", Created)
        _require_timestamp("activated_at", activated_at)
        check_order("created_at", self._record.created_at, "activated_at", activated_at)
        record = derive(self._record, state=Active, activated_at=activated_at)
        return self._transition("activate", Session(Active, record))

    # -- Active ------------------------------------------------------------

    def activated_at(self: Session[Active]) -> Timestamp:
        """When the session was activated."""
        self._require_state("activated_at", Active)
        assert self._record.activated_at is not None  # guaranteed by the Active record
        return self._record.activated_at

    def record_delta(self: Session[Active], delta_tokens: int) -> None:
        """Record one round that sent ``delta_tokens`` new tokens.

        A looping transition: the session stays Active, round_count grows by one
        and delta_tokens by ``delta_tokens``. Raises InvalidTokenCount for a count
        that is not an int from 0 to 2**63-1 and TokenOverflow when a total would
        pass 2**63-1; either way nothing changes.
        """
        if self._state is not Active:
            self._wrong_state("record_delta", Active)
        # The hot path: only the cheapest checks run when all is well; the
        # error paths below work out which rule was broken.
        if type(delta_tokens) is not int or delta_tokens < 0:
            check_token_count("delta_tokens", delta_tokens)
        rounds = self._round_count + 1
        total = self._delta_tokens + delta_tokens
        if rounds > self._round_limit or total > MAX_TOKENS:
            check_token_count("delta_tokens", delta_tokens)
            raise TokenOverflow(
                f"recording {delta_tokens} tokens would take round_count to {rounds} and "
                f"delta_tokens to {total}; delta_tokens and round_count * initial_tokens "
                f"({self._record.initial_tokens}) must stay within 2**63-1"
            )
        self._round_count = rounds
        self._delta_tokens = total

    def tokens_saved(self: Session[Active]) -> int:
        """round_count * initial_tokens - delta_tokens, never below 0."""
        self._require_state("tokens_saved", Active)
        return compute_tokens_saved(
            self._round_count, self._record.initial_tokens, self._delta_tokens
        )

    def close(self: Session[Active], closed_at: Timestamp) -> Session[Closed]:
        """Close the session normally; consumes this handle and returns the Closed one."""
        self._require_state("close", Active)
        _require_timestamp("closed_at", closed_at)
        record = self._snapshot()
        check_order("activated_at", self.activated_at(), "closed_at", closed_at)
        record = derive(record, state=Closed, closed_at=closed_at)
        return self._transition("close", Session(Closed, record))

    def expire(self: Session[Active], expired_at: Timestamp) -> Session[SessionExpired]:
        """Expire the session (its TTL ran out); consumes this handle."""
        self._require_state("expire", Active)
        _require_timestamp("expired_at", expired_at)
        record = self._snapshot()
        check_order("activated_at", self.activated_at(), "expired_at", expired_at)
        record = derive(record, state=SessionExpired, expired_at=expired_at)
        return self._transition("expire", Session(SessionExpired, record))

    # -- Closed and SessionExpired -----------------------------------------

    def closed_at(self: Session[Closed]) -> Timestamp:
        """When the session was closed."""
        self._require_state("closed_at", Closed)
        assert self._record.closed_at is not None  # guaranteed by the Closed record
        return self._record.closed_at

    def expired_at(self: Session[SessionExpired]) -> Timestamp:
        """When the session expired."""
        self._require_state("expired_at", SessionExpired)
        assert self._record.expired_at is not None  # guaranteed by the expired record
        return self._record.expired_at

    # -- internals ---------------------------------------------------------

    def _snapshot(self) -> SessionRecord:
        record = self._record
        if record.round_count != self._round_count or record.delta_tokens != self._delta_tokens:
            # record_delta checked both counters.
            record = with_counters(record, self._round_count, self._delta_tokens)
            self._record = record
        return record

    def _transition(self, method: str, successor: Session[S2]) -> Session[S2]:
        self._consume(method)
        return successor

    def _consume(self, method: str) -> None:
        self._state = None
        self._consumed_by = method

    def _require_alive(self, method: str) -> None:
        if self._state is None:
            raise ConsumedSessionError(method, self._consumed_by)

    def _require_state(self, method: str, state: type[SessionState]) -> None:
        if self._state is not state:
            self._wrong_state(method, state)

    def _wrong_state(self, method: str, required: type[SessionState]) -> NoReturn:
        if self._state is None:
            raise ConsumedSessionError(method, self._consumed_by)
        raise WrongStateError(method, required.name, self._state.name)


AnySession: TypeAlias = (
    "Session[Created] | Session[Active] | Session[Closed] | Session[SessionExpired]"
)
"""A session in a state not known statically; narrow it with the ``is_*`` guards."""


def restore(record: SessionRecord) -> AnySession:
    """The session a stored record describes, in whatever state it is in.

    Narrow the result with :func:`is_active` and friends, or :func:`require_state`.
    """
    state = record.state
    if state is Created:
        return Session(Created, record)
    if state is Active:
        return Session(Active, record)
    if state is Closed:
        return Session(Closed, record)
    return Session(SessionExpired, record)


def is_created(session: AnySession) -> TypeIs[Session[Created]]:
    """True if the session is Created; narrows its type."""
    return session.state() is Created


def is_active(session: AnySession) -> TypeIs[Session[Active]]:
    """True if the session is Active; narrows its type."""
    return session.state() is Active


def is_closed(session: AnySession) -> TypeIs[Session[Closed]]:
    """True if the session is Closed; narrows its type."""
    return session.state() is Closed


def is_expired(session: AnySession) -> TypeIs[Session[SessionExpired]]:
    """True if the session is SessionExpired; narrows its type."""
    return session.state() is SessionExpired


def require_state(session: AnySession, state: type[S], method: str) -> Session[S]:
    """``session`` as a ``Session[state]``, or the WrongStateError ``method`` would raise.

    For callers that are about to call ``method`` on a restored session, so that
    the error a client sees is the one the core raises.
    """
    current = session.state()
    if current is not state:
        raise WrongStateError(method, state.name, current.name)
    # Checked just above; no static narrowing from a runtime class exists.
    return cast("Session[S]", session)


def as_after_round(record: SessionRecord, round_count: int, delta_tokens: int) -> SessionRecord:
    """``record``'s session as it was right after its round number ``round_count``, which
    took its delta_tokens to ``delta_tokens``: Active, as a round is recorded only then,
    with those counters and no end. What a replayed round gives back, whatever happened
    to the session since. Raises InvalidRecord if ``record`` was never activated.
    """
    return SessionRecord(
        session_id=record.session_id,
        tenant_id=record.tenant_id,
        provider_id=record.provider_id,
        model=record.model,
        initial_tokens=record.initial_tokens,
        created_at=record.created_at,
        state=Active,
        activated_at=record.activated_at,
        round_count=round_count,
        delta_tokens=delta_tokens,
    )


def _require_timestamp(name: str, value: object) -> None:
    if type(value) is not Timestamp:
        raise InvalidTimestamp(
            f"{name} must be a Timestamp (timezone-aware UTC), got {type(value).__name__}; "
            "use Timestamp.from_datetime(datetime.now(UTC))"
        )
