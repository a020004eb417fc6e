"""The fake model: a deterministic answer of a known token count.

The visible answer is ``You said:`` followed by the first tokens of the last user
message, at most 16 tokens in all. A model whose name starts with ``o`` and a digit
(``o1``, ``o3-mini``, ``o4-mini``) also thinks: 16 reasoning tokens, spent first.
A request's output limit (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``) bounds reasoning plus answer, as OpenAI's does; an answer
cut by it ends with ``finish_reason: "length"`` (Responses: status ``incomplete``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from llmsession.fake_provider.tokens import join_tokens, tokenize

__all__ = ["ANSWER_TOKENS", "REASONING_TOKENS", "Answer", "is_reasoning_model", "plan_answer"]

#: The most tokens of a visible answer.
ANSWER_TOKENS: Final = 16

#: The reasoning tokens a reasoning model spends on every answer.
REASONING_TOKENS: Final = 16

_REASONING_MODEL: Final = re.compile(r"o\d")
_LEAD: Final = ("You", "said", ":")


def is_reasoning_model(model: str) -> bool:
    """Whether ``model`` thinks before it answers (named like ``o1``, ``o3-mini``)."""
    return _REASONING_MODEL.match(model) is not None


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer's tokens, the reasoning tokens spent, and whether the limit cut it."""

    tokens: tuple[str, ...]
    reasoning_tokens: int
    truncated: bool

    @property
    def text(self) -> str:
        return join_tokens(self.tokens)

    @property
    def output_tokens(self) -> int:
        """What the answer is billed as output: its tokens plus the reasoning."""
        return len(self.tokens) + self.reasoning_tokens

    def deltas(self) -> list[str]:
        """The text in stream pieces, one token each, that concatenate to ``text``."""
        return [token if i == 0 else " " + token for i, token in enumerate(self.tokens)]


def plan_answer(model: str, last_user_text: str, limit: int | None) -> Answer:
    """The answer to a prompt whose last user message is ``last_user_text``."""
    natural = (*_LEAD, *tokenize(last_user_text))[:ANSWER_TOKENS]
    reasoning = REASONING_TOKENS if is_reasoning_model(model) else 0
    if limit is None or limit >= reasoning + len(natural):
        return Answer(natural, reasoning, truncated=False)
    reasoning = min(reasoning, limit)
    return Answer(natural[: limit - reasoning], reasoning, truncated=True)
