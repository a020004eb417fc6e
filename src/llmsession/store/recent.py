"""RecentSessions: what one process last saw of each session, as a guess at its version.

A backend whose writes are compare-and-sets can start a change from this guess
instead of reading the session first: if the guess is stale, the database
refuses the write and the change is retried from a fresh read, so a stale guess
costs a retry, never a wrong write. The guess must not decide an answer that
writes nothing (an error, a replayed round) unless it is checked first.

It also remembers which sessions had writers colliding lately, so a backend can
take a row lock for those instead of retrying.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Final

from llmsession.ids import SessionId, TenantId
from llmsession.store.models import StoredSession

__all__ = ["CONTENDED_SECONDS", "RecentSessions"]

#: How long a session counts as contended after its writers last collided.
CONTENDED_SECONDS: Final = 1.0
_MAX_CONTENDED: Final = 10_000


class RecentSessions:
    """The newest version seen of up to ``capacity`` sessions, least recently used dropped."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._sessions: OrderedDict[SessionId, StoredSession] = OrderedDict()
        self._contended: dict[SessionId, float] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession | None:
        """The remembered session, if it is there and belongs to ``tenant_id``."""
        stored = self._sessions.get(session_id)
        if stored is None or stored.record.tenant_id != tenant_id:
            return None
        self._sessions.move_to_end(session_id)
        return stored

    def remember(self, stored: StoredSession) -> None:
        """Note a version just read or written, unless a newer one is already known."""
        if self._capacity == 0:
            return
        session_id = stored.record.session_id
        known = self._sessions.get(session_id)
        # Writers of one process may finish out of order; the newest version wins.
        if known is not None and known.version >= stored.version:
            return
        self._sessions[session_id] = stored
        self._sessions.move_to_end(session_id)
        if len(self._sessions) > self._capacity:
            self._sessions.popitem(last=False)

    def refresh(self, stored: StoredSession) -> None:
        """Like remember(), but only for a session already remembered; the order is kept.

        For bulk writes (a sweep): the remembered stays right, and sessions in use
        are not pushed out by many that nobody asked for.
        """
        session_id = stored.record.session_id
        known = self._sessions.get(session_id)
        if known is not None and known.version < stored.version:
            self._sessions[session_id] = stored

    def forget(self, session_id: SessionId) -> None:
        """Drop what is remembered of a session (known stale, or gone)."""
        self._sessions.pop(session_id, None)

    def mark_contended(self, session_id: SessionId) -> None:
        """Writers of this session collided: it counts as contended for CONTENDED_SECONDS."""
        now = time.monotonic()
        if len(self._contended) >= _MAX_CONTENDED:
            self._contended = {k: until for k, until in self._contended.items() if until > now}
        self._contended[session_id] = now + CONTENDED_SECONDS

    def contended(self, session_id: SessionId) -> bool:
        """Whether this session's writers collided within the last CONTENDED_SECONDS."""
        until = self._contended.get(session_id)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._contended[session_id]
        return False
