"""Provider-side state a session keeps apart from its stored history (Gemini's cached contents).

Some providers hold part of a conversation on their side only when asked to, by
requests of their own around the turn: create an entry before the turn, extend or
replace it, delete it when the session ends. A :class:`SessionCache` does that for
one provider kind; forwarding calls it at those points and knows nothing else of
it. What it needs to remember between turns is a string stored as the turn's
``response_id`` (the column for provider-side state), so no store changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from llmsession.gateway.config import ProviderConfig
from llmsession.gateway.endpoints import ParsedRequest
from llmsession.gateway.wire import JSONObject
from llmsession.ids import SessionId
from llmsession.usage import Usage

__all__ = ["SessionCache", "TurnCache"]


class TurnCache(Protocol):
    """What one turn does with the session's provider-side state."""

    @property
    def chain(self) -> str | None:
        """Handed to the endpoint's ``upstream_body`` as ``previous_response_id``."""
        ...

    @property
    def headers(self) -> Sequence[tuple[str, str]]:
        """Extra upstream headers for the turn's request."""
        ...

    def replayed(self) -> TurnCache:
        """The provider no longer holds ``chain``: the turn went out with the whole history."""
        ...

    def usage(self, usage: Usage | None) -> Usage | None:
        """The round's usage: the answer's, plus what the turn's own side requests were billed."""
        ...

    def stored(self, usage: Usage | None) -> str | None:
        """The state to store as the turn's ``response_id``, given the answer's usage."""
        ...

    async def committed(self) -> None:
        """The turn is recorded: clean up what it superseded. Never raises."""
        ...

    async def abandoned(self) -> None:
        """The turn is not recorded: undo what it created. Never raises."""
        ...


class SessionCache(Protocol):
    """One provider kind's side requests around a session's turns."""

    async def prepare(
        self,
        *,
        provider: ProviderConfig,
        model: str,
        session_id: SessionId,
        request: ParsedRequest,
        history: Sequence[JSONObject],
        last: str | None,
        ttl_seconds: int | None,
    ) -> TurnCache:
        """Before the turn's request: ``last`` is what the previous turn stored, and
        ``ttl_seconds`` the session's idle TTL (None for a turn starting it). Never
        raises for a failed side request: the turn then goes out without it."""
        ...

    async def drop(self, provider: ProviderConfig, session_id: SessionId, last: str | None) -> None:
        """The session ended: delete what ``last`` holds at the provider. Never raises."""
        ...
