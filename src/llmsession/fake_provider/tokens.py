"""The fake provider's tokenizer: a documented, deterministic stand-in for OpenAI's BPE.

OpenAI's own tokenizer (tiktoken) loads its BPE ranks from the internet at first use,
which machines without outbound access cannot do, and the offline re-implementations
are young single-author packages; so the fake counts with a rule a person can redo by
hand (docs/fake-provider.md):

- Text: every run of word characters (letters, digits, ``_``) is one token per 8
  characters (a 20-letter word is 3 tokens); every other character that is not
  whitespace is one token on its own; whitespace is free.
- A message: its content's tokens plus 3 (a start marker, the role, an end marker),
  and 1 more when it has a ``name``.
- A prompt: its messages in order, then the 3-token primer of the reply.

Prompts are token sequences, not only counts, because the prefix cache matches
exact token prefixes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MESSAGE_OVERHEAD",
    "REPLY_PRIMER",
    "WORD_PIECE",
    "Message",
    "count_tokens",
    "join_tokens",
    "prompt_tokens",
    "tokenize",
]

#: The longest run of word characters that is one token.
WORD_PIECE: Final = 8

#: Tokens a message costs besides its content (and besides 1 for a name).
MESSAGE_OVERHEAD: Final = 3

_START: Final = "<|start|>"
_END: Final = "<|end|>"

#: The tokens that end every prompt: the start of the assistant's reply.
REPLY_PRIMER: Final = (_START, "<|role:assistant|>", "<|message|>")

_PIECES: Final = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """The tokens of ``text``: word pieces of at most 8 characters and single symbols.

    Joining the tokens with spaces and tokenizing again gives the same tokens,
    which lets the fake build answers of an exact token count.
    """
    tokens: list[str] = []
    for match in _PIECES.finditer(text):
        piece = match.group()
        if len(piece) <= WORD_PIECE:
            tokens.append(piece)
        else:
            tokens.extend(piece[i : i + WORD_PIECE] for i in range(0, len(piece), WORD_PIECE))
    return tokens


def count_tokens(text: str) -> int:
    """How many tokens ``text`` is."""
    return len(tokenize(text))


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a prompt as the fake counts it: a role, its text, an optional name."""

    role: str
    text: str
    name: str | None = None

    def tokens(self) -> list[str]:
        # Markers and roles are spelt so that no text can tokenize into them.
        head = [_START, f"<|role:{self.role}|>"]
        if self.name is not None:
            head.append(f"<|name:{self.name}|>")
        return [*head, *tokenize(self.text), _END]


def prompt_tokens(messages: Iterable[Message]) -> tuple[str, ...]:
    """The token sequence of a prompt: each message in order, then the reply primer."""
    tokens: list[str] = []
    for message in messages:
        tokens.extend(message.tokens())
    tokens.extend(REPLY_PRIMER)
    return tuple(tokens)


def join_tokens(tokens: Sequence[str]) -> str:
    """Text that tokenizes to exactly ``tokens`` (they must come from ``tokenize``)."""
    return " ".join(tokens)
