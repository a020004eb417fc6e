"""Token counts: the one place that says what a valid count is and what is saved."""

from __future__ import annotations

from llmsession.errors import InvalidTokenCount

__all__ = ["MAX_TOKENS", "check_token_count", "compute_tokens_saved", "max_rounds"]

#: Token counts are stored as signed 64-bit integers by every backend.
MAX_TOKENS = 2**63 - 1


def check_token_count(name: str, value: object) -> int:
    """Return ``value`` if it is an int from 0 to MAX_TOKENS, else raise InvalidTokenCount."""
    # type() rather than isinstance(): bool is an int subclass and True is not a count.
    if type(value) is not int:
        raise InvalidTokenCount(
            f"{name} must be an integer from 0 to 2**63-1, got {type(value).__name__} {value!r}"
        )
    if not 0 <= value <= MAX_TOKENS:
        raise InvalidTokenCount(f"{name} must be an integer from 0 to 2**63-1, got {value}")
    return value


def compute_tokens_saved(round_count: int, initial_tokens: int, delta_tokens: int) -> int:
    """Tokens saved against re-sending the whole initial context every round.

    ``round_count * initial_tokens - delta_tokens``, never below 0: a round may
    send more than the initial context (a long tool result, say), and where the
    Rust ``u64`` subtraction would underflow we report that nothing was saved.
    """
    return max(0, round_count * initial_tokens - delta_tokens)


def max_rounds(initial_tokens: int) -> int:
    """The most rounds a session may record.

    ``round_count * initial_tokens`` (what re-sending the whole context would
    have cost) is an accumulated total too, so it stays within 2**63-1 like every
    other count; tokens_saved then always fits the 64-bit columns of every store.
    """
    return MAX_TOKENS // initial_tokens if initial_tokens else MAX_TOKENS
