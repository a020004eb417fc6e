"""Usage: what the provider says one round cost, normalized across wire formats.

Providers count differently: OpenAI's ``prompt_tokens`` includes the cached
part, Anthropic's ``input_tokens`` excludes cache reads and writes, Gemini's
``promptTokenCount`` includes ``cachedContentTokenCount``. Each wire module
turns its provider's object into one :class:`Usage` whose ``input_tokens`` is
*all* input the provider counted, so every later sum means the same thing. The
provider's object is kept verbatim beside it (``raw``): a normalization can be
checked against, or redone from, what was actually billed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llmsession.errors import InvalidInput
from llmsession.tokens import check_token_count

__all__ = ["Usage"]


@dataclass(frozen=True, slots=True)
class Usage:
    """One round's usage as the provider billed it."""

    #: All input the provider counted, the part served from its cache included.
    input_tokens: int
    #: Input served from the provider's cache (billed at its cached rate).
    cached_input_tokens: int = 0
    #: Input written to the provider's cache (Anthropic bills it above plain input).
    cache_write_tokens: int = 0
    output_tokens: int = 0
    #: Output spent on reasoning; part of ``output_tokens``. 0 when not reported.
    reasoning_tokens: int = 0
    #: The provider's usage object, verbatim.
    raw: Mapping[str, Any] = field(default_factory=dict[str, Any], compare=False)

    def __post_init__(self) -> None:
        check_token_count("input_tokens", self.input_tokens)
        check_token_count("cached_input_tokens", self.cached_input_tokens)
        check_token_count("cache_write_tokens", self.cache_write_tokens)
        check_token_count("output_tokens", self.output_tokens)
        check_token_count("reasoning_tokens", self.reasoning_tokens)
        if self.cached_input_tokens + self.cache_write_tokens > self.input_tokens:
            raise InvalidInput(
                f"cached_input_tokens ({self.cached_input_tokens}) plus cache_write_tokens "
                f"({self.cache_write_tokens}) exceed input_tokens ({self.input_tokens}): "
                "input_tokens must count all input"
            )

    @property
    def delta_tokens(self) -> int:
        """What the provider processed anew: the round's ``delta_tokens``."""
        return self.input_tokens - self.cached_input_tokens

    def to_dict(self) -> dict[str, Any]:
        """The normalized fields and ``raw``, as JSON-ready values."""
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "raw": dict(self.raw),
        }
