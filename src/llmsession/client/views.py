"""What the client returns where the core and store types do not fit the HTTP API exactly.

Sessions come back as :class:`SessionView`, not as the store's ``StoredSession``:
the API does not expose the store's compare-and-set ``version`` (its ``version``
member is the record format version) nor ``last_activity_at``, and a client-side
object must not carry made-up values for them. A view holds the core's
:class:`~llmsession.SessionRecord` unchanged plus the two things the API adds,
``ttl_seconds`` and ``expires_at``; ``tokens_saved`` is computed by the core from
the record rather than copied from the wire. Likewise API keys come back without
the hash the store keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmsession.ids import SessionId, TenantId
from llmsession.record import SessionRecord
from llmsession.session import AnySession, restore
from llmsession.states import SessionState
from llmsession.store.models import NO_USAGE, Round, Tenant, UsageTotals
from llmsession.timestamps import Timestamp

__all__ = ["ApiKeyView", "IssuedApiKey", "NewTenant", "RecordedRound", "SessionView"]


@dataclass(frozen=True, slots=True)
class SessionView:
    """A session as the HTTP API shows it: the core's record, its TTL and its idle deadline."""

    record: SessionRecord
    ttl_seconds: int
    expires_at: Timestamp | None
    """When an Active session expires if no round comes first; None in other states."""
    usage: UsageTotals = NO_USAGE
    """What providers reported for the session's gateway rounds (all 0 for a ledger session)."""

    @property
    def session_id(self) -> SessionId:
        """The session's id."""
        return self.record.session_id

    @property
    def state(self) -> type[SessionState]:
        """The session's state class, e.g. ``Active``."""
        return self.record.state

    @property
    def tokens_saved(self) -> int:
        """Tokens saved so far, computed by the core from the record."""
        return self.record.tokens_saved

    def session(self) -> AnySession:
        """The record as a typed :class:`~llmsession.Session`, to narrow with ``is_active`` etc.

        A local snapshot: calling its transitions changes nothing on the server.
        """
        return restore(self.record)


@dataclass(frozen=True, slots=True)
class RecordedRound:
    """What recording a round returns: the round and the session right after it.

    ``replayed`` is True for a repeated idempotency key: the round and session are
    then the first answer's, the session as it was right after that round.
    """

    round: Round
    session: SessionView
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class ApiKeyView:
    """An API key's public facts; the key itself is shown only once, when issued."""

    key_id: str
    tenant_id: TenantId
    created_at: Timestamp
    revoked_at: Timestamp | None = None


@dataclass(frozen=True, slots=True)
class IssuedApiKey:
    """A freshly issued key: ``api_key`` is the secret, shown this once and never again."""

    api_key: str
    key: ApiKeyView


@dataclass(frozen=True, slots=True)
class NewTenant:
    """A freshly created tenant and its first API key (shown this once)."""

    tenant: Tenant
    api_key: str
    key_id: str
