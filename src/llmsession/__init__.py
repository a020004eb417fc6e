"""llmsession: stateful LLM sessions with exact accounting of rounds and tokens saved.

The core (this package's top level) is pure: :class:`Session` and its states,
:class:`SessionRecord`, ids, timestamps and errors. It does no I/O. The HTTP
clients :class:`Client` and :class:`AsyncClient` are exported here too, but
loaded only on first use, so importing the core never imports httpx.
"""

from typing import TYPE_CHECKING

from llmsession.errors import (
    AuthenticationError,
    ConcurrentUpdateError,
    ConflictError,
    ConsumedSessionError,
    IdempotencyConflict,
    InvalidIdentifier,
    InvalidInput,
    InvalidRecord,
    InvalidTimestamp,
    InvalidTokenCount,
    LLMSessionError,
    NotFoundError,
    SchemaVersionError,
    SessionExpiredError,
    StateError,
    StoreError,
    TokenOverflow,
    TransitionOrderError,
    WrongStateError,
)
from llmsession.ids import SessionId, TenantId
from llmsession.record import RECORD_VERSION, SessionRecord
from llmsession.session import (
    AnySession,
    Session,
    is_active,
    is_closed,
    is_created,
    is_expired,
    require_state,
    restore,
)
from llmsession.states import Active, Closed, Created, SessionExpired, SessionState
from llmsession.timestamps import Timestamp
from llmsession.tokens import MAX_TOKENS, compute_tokens_saved

if TYPE_CHECKING:
    from llmsession.client import AsyncClient, Client

__all__ = [
    "MAX_TOKENS",
    "RECORD_VERSION",
    "Active",
    "AnySession",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "Closed",
    "ConcurrentUpdateError",
    "ConflictError",
    "ConsumedSessionError",
    "Created",
    "IdempotencyConflict",
    "InvalidIdentifier",
    "InvalidInput",
    "InvalidRecord",
    "InvalidTimestamp",
    "InvalidTokenCount",
    "LLMSessionError",
    "NotFoundError",
    "SchemaVersionError",
    "Session",
    "SessionExpired",
    "SessionExpiredError",
    "SessionId",
    "SessionRecord",
    "SessionState",
    "StateError",
    "StoreError",
    "TenantId",
    "Timestamp",
    "TokenOverflow",
    "TransitionOrderError",
    "WrongStateError",
    "compute_tokens_saved",
    "is_active",
    "is_closed",
    "is_created",
    "is_expired",
    "require_state",
    "restore",
]

_LAZY = ("AsyncClient", "Client")

if not TYPE_CHECKING:
    # Hidden from type checkers, so that a misspelt attribute stays a type error.

    def __getattr__(name: str) -> object:
        if name in _LAZY:
            from llmsession import client

            value = getattr(client, name)
            globals()[name] = value
            return value
        raise AttributeError(f"module 'llmsession' has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})
