"""The billing log: one entry per request the fake billed, as a provider's usage export.

A request is billed when the fake processed it: answered in full, answered without
usage, or cut off mid-stream. Refused requests (401, 400, a 500 or 429 fault) are
not billed, as OpenAI does not bill them. An entry names the API key only by a
fingerprint, never the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, Literal

__all__ = ["TOTALED_FIELDS", "BillingEntry", "BillingLog", "Endpoint", "key_fingerprint"]

#: Where a request went: OpenAI's two endpoints, Anthropic's, Gemini's generation
#: (streamed or not) and Gemini's cache entries (only their creation is billed).
Endpoint = Literal["chat.completions", "responses", "messages", "generateContent", "cachedContents"]

#: The counts that ``BillingLog.totals`` adds up.
TOTALED_FIELDS: Final = (
    "input_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def key_fingerprint(api_key: str) -> str:
    """A short, stable name for an API key that does not reveal it."""
    return "key_" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class BillingEntry:
    """What one request was billed.

    ``input_tokens`` counts the whole prompt (cached tokens included, as OpenAI's
    ``prompt_tokens``/``input_tokens`` do; for Anthropic's Messages, its
    ``input_tokens`` plus its cache reads and writes); ``output_tokens`` includes
    ``reasoning_tokens``. ``cache_write_tokens`` are the prompt tokens written to
    the cache, billed above plain input (Anthropic only; ``cache_write_1h_tokens``
    of them with the 1 hour TTL). A Messages entry's ``prompt_cache_key`` is the
    request's ``metadata.user_id``. ``completed`` is false for a stream cut off or dropped
    before its end; ``usage_reported`` says whether the usage reached the caller.
    ``session_id`` is the ``LLMSession-Id`` header the request carried (the gateway
    sends it on Gemini requests, which have no ``prompt_cache_key``), if any.
    """

    id: str
    endpoint: Endpoint
    model: str
    key_fingerprint: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    stream: bool
    completed: bool
    usage_reported: bool
    prompt_cache_key: str | None
    previous_response_id: str | None
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    session_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class BillingLog:
    """The entries in billing order; each is also appended to ``path`` as a JSON line."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._entries: list[BillingEntry] = []

    @property
    def entries(self) -> tuple[BillingEntry, ...]:
        return tuple(self._entries)

    def add(self, entry: BillingEntry) -> None:
        self._entries.append(entry)
        if self._path is not None:
            # One short append per entry: a reader of the file sees whole lines.
            with self._path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(entry.to_json(), separators=(",", ":")) + "\n")

    def totals(self) -> Mapping[str, int]:
        sums = {name: 0 for name in TOTALED_FIELDS}
        for entry in self._entries:
            for name in TOTALED_FIELDS:
                sums[name] += getattr(entry, name)
        return {"requests": len(self._entries), **sums}

    def clear(self) -> None:
        """Forget the entries (the file, a record of everything, keeps its lines)."""
        self._entries.clear()
