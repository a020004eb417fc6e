"""Stored responses of the Responses API, for ``previous_response_id``.

A stored response keeps its whole conversation: the context it continued, its own
input and its answer (never its ``instructions``, which OpenAI does not carry over
either). A follow-up naming it is therefore billed for that whole context plus its
new input, as OpenAI bills it. A response belongs to the API key that made it:
another key sees it as missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmsession.fake_provider.errors import previous_response_not_found
from llmsession.fake_provider.tokens import Message

__all__ = ["ResponseStore", "StoredResponse"]


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response's owner and the conversation up to and including its answer."""

    key_fingerprint: str
    context: tuple[Message, ...]


class ResponseStore:
    """Stored responses by id, until forgotten."""

    def __init__(self) -> None:
        self._responses: dict[str, StoredResponse] = {}

    def __len__(self) -> int:
        return len(self._responses)

    def put(self, response_id: str, stored: StoredResponse) -> None:
        self._responses[response_id] = stored

    def context(self, key_fingerprint: str, response_id: str) -> tuple[Message, ...]:
        """The conversation of ``response_id``; a 400 ``previous_response_not_found`` if gone."""
        stored = self._responses.get(response_id)
        if stored is None or stored.key_fingerprint != key_fingerprint:
            raise previous_response_not_found(response_id)
        return stored.context

    def forget_all(self) -> int:
        """Forget every stored response; how many there were."""
        count = len(self._responses)
        self._responses.clear()
        return count
