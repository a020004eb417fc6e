"""Every error llmsession raises, in one tree with one base class.

::

    LLMSessionError
    ├── InvalidInput                 bad input from the caller; nothing was changed
    │   ├── InvalidTokenCount        not an int (bools and floats included), < 0 or > 2**63-1
    │   ├── TokenOverflow            an accumulated total would pass 2**63-1
    │   ├── InvalidTimestamp         naive, unparsable, or out of range
    │   ├── TransitionOrderError     a transition dated before the one it follows
    │   ├── InvalidIdentifier        a malformed or mistyped tenant or session id, provider,
    │   │                            model or idempotency key
    │   └── InvalidRecord            stored or serialized data that is not a valid session
    ├── StateError                   the call does not fit the session's state
    │   ├── WrongStateError          the method needs another state
    │   │   └── SessionExpiredError  the session's TTL ran out (raised by stores)
    │   └── ConsumedSessionError     the handle was consumed by a transition
    ├── NotFoundError                no such session for this tenant (foreign ids look missing)
    ├── ConflictError                the request clashes with what is stored
    │   ├── IdempotencyConflict      an idempotency key reused with a different request
    │   └── ConcurrentUpdateError    a compare-and-set kept losing to other writers
    ├── StoreError                   the storage backend failed or is unusable
    │   └── SchemaVersionError       the stored schema is newer than this code knows
    └── AuthenticationError          a missing, unknown or revoked API key

Invalid input is also a ``ValueError`` and a missing session a ``LookupError``, so
generic handlers keep working.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConcurrentUpdateError",
    "ConflictError",
    "ConsumedSessionError",
    "IdempotencyConflict",
    "InvalidIdentifier",
    "InvalidInput",
    "InvalidRecord",
    "InvalidTimestamp",
    "InvalidTokenCount",
    "LLMSessionError",
    "NotFoundError",
    "SchemaVersionError",
    "SessionExpiredError",
    "StateError",
    "StoreError",
    "TokenOverflow",
    "TransitionOrderError",
    "WrongStateError",
]


class LLMSessionError(Exception):
    """Base class of every error raised by llmsession."""


class InvalidInput(LLMSessionError, ValueError):
    """The caller passed something that is not allowed; nothing was changed."""


class InvalidTokenCount(InvalidInput):
    """A token count that is not an integer from 0 to 2**63-1."""


class TokenOverflow(InvalidInput):
    """An accumulated total would pass 2**63-1; the session was left as it was."""


class InvalidTimestamp(InvalidInput):
    """A timestamp that is naive (no timezone), unparsable or out of range."""


class TransitionOrderError(InvalidInput):
    """A transition dated before the event it follows."""


class InvalidIdentifier(InvalidInput):
    """A malformed tenant id, session id, provider id, model or idempotency key, or an
    id of the wrong type (text where a TenantId or SessionId belongs)."""


class InvalidRecord(InvalidInput):
    """Data that does not describe a valid session record."""


class StateError(LLMSessionError):
    """A call that does not fit the session's current state."""


class WrongStateError(StateError):
    """A method was called on a session in a state that does not offer it."""

    def __init__(self, method: str, required: str, actual: str) -> None:
        self.method = method
        self.required = required
        self.actual = actual
        super().__init__(
            f"{method}() needs a session in state {required!r}, but this session is {actual!r}"
        )

    def __reduce__(self) -> tuple[type[WrongStateError], tuple[str, str, str]]:
        return (type(self), (self.method, self.required, self.actual))


class SessionExpiredError(WrongStateError):
    """The session's TTL ran out; it is expired and takes no more rounds."""


class ConsumedSessionError(StateError):
    """The handle was consumed by a transition and must not be used again.

    A transition (``activate``, ``close``, ``expire``, ``into_data``) returns a new
    handle, as a Rust method taking ``self`` would; the old one is dead, so that a
    session cannot silently fork into two diverging copies.
    """

    def __init__(self, method: str, consumed_by: str) -> None:
        self.method = method
        self.consumed_by = consumed_by
        super().__init__(
            f"{method}() called on a session handle that {consumed_by}() already consumed; "
            f"use the session {consumed_by}() returned"
        )

    def __reduce__(self) -> tuple[type[ConsumedSessionError], tuple[str, str]]:
        return (type(self), (self.method, self.consumed_by))


class NotFoundError(LLMSessionError, LookupError):
    """No such session for this tenant; a foreign session looks exactly like this."""


class ConflictError(LLMSessionError):
    """The request clashes with what is already stored."""


class IdempotencyConflict(ConflictError):
    """An idempotency key was reused for a different request."""


class ConcurrentUpdateError(ConflictError):
    """A compare-and-set lost to concurrent writers more often than the retry limit."""


class StoreError(LLMSessionError):
    """The storage backend failed or cannot be used."""


class SchemaVersionError(StoreError):
    """The stored schema is newer than this version of llmsession understands."""


class AuthenticationError(LLMSessionError):
    """A missing, unknown or revoked API key."""
