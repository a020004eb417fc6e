"""Identifiers: SessionId and TenantId are distinct types, so one cannot pass for the other."""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from typing import Self, final

from llmsession.errors import InvalidIdentifier
from llmsession.timestamps import Timestamp

__all__ = [
    "SessionId",
    "TenantId",
    "check_label",
    "check_name",
    "check_session_id",
    "check_tenant_id",
]

_TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_MAX_LABEL = 200


@final
@dataclass(frozen=True, slots=True, order=True)
class SessionId:
    """A session's id: a UUIDv7, so ids sort by creation time and index well."""

    value: uuid.UUID

    def __post_init__(self) -> None:
        if not isinstance(self.value, uuid.UUID):
            raise InvalidIdentifier(
                f"SessionId wraps a uuid.UUID, got {type(self.value).__name__}; "
                "use SessionId.parse() for text"
            )

    @classmethod
    def generate(cls, at: Timestamp) -> Self:
        """A new UUIDv7 (RFC 9562) whose time part is ``at``, to the millisecond."""
        millis = at.epoch_micros // 1000
        if millis < 0:
            raise InvalidIdentifier("a UUIDv7 cannot carry a time before 1970")
        random_bits = int.from_bytes(os.urandom(10))
        rand_a = random_bits >> 68  # 12 bits
        rand_b = random_bits & ((1 << 62) - 1)
        value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
        return cls(uuid.UUID(int=value))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse the canonical text form, e.g. ``0192f0c4-7b1e-7c2a-9d1e-3f4a5b6c7d8e``."""
        if not isinstance(text, str):
            raise InvalidIdentifier(f"a session id is text, got {type(text).__name__}")
        try:
            return cls(uuid.UUID(text))
        except ValueError:
            raise InvalidIdentifier(
                f"{text[:80]!r} is not a session id (a UUID such as "
                "'0192f0c4-7b1e-7c2a-9d1e-3f4a5b6c7d8e')"
            ) from None

    def __str__(self) -> str:
        return str(self.value)

    # Ids key the stores' dicts and caches, several lookups per write; the
    # generated methods build a tuple and call UUID's Python ones, which cost
    # more than the lookups. These say the same: by value, only SessionId to
    # SessionId.
    def __hash__(self) -> int:
        return hash(self.value.int)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionId):
            return NotImplemented
        return self.value.int == other.value.int


@final
@dataclass(frozen=True, slots=True, order=True)
class TenantId:
    """A tenant's id: 1 to 128 letters, digits, ``. _ : -``, starting with a letter or digit."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not _TENANT_PATTERN.fullmatch(self.value):
            shown = self.value[:80] if isinstance(self.value, str) else self.value
            raise InvalidIdentifier(
                f"tenant id {shown!r} is not allowed: use 1 to 128 letters, digits, "
                "'.', '_', ':' or '-', starting with a letter or digit"
            )

    def __str__(self) -> str:
        return self.value

    # As for SessionId: cheaper than the generated methods, and the same.
    def __hash__(self) -> int:
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TenantId):
            return NotImplemented
        return self.value == other.value


def check_session_id(name: str, value: object) -> SessionId:
    """``value`` itself if it is a SessionId; else InvalidIdentifier naming ``name``.

    The stores key and compare ids by type, so text where a SessionId belongs
    would otherwise fail deep inside a backend, or look like a missing session.
    """
    if type(value) is SessionId:
        return value
    if isinstance(value, str):
        hint = f"; parse it: SessionId.parse({value[:80]!r})"
    elif isinstance(value, uuid.UUID):
        hint = "; wrap it: SessionId(value)"
    else:
        hint = ""
    raise InvalidIdentifier(f"{name} must be a SessionId, got {_shown(value)}{hint}")


def check_tenant_id(name: str, value: object) -> TenantId:
    """``value`` itself if it is a TenantId; else InvalidIdentifier naming ``name``."""
    if type(value) is TenantId:
        return value
    hint = f"; wrap it: TenantId({value[:80]!r})" if isinstance(value, str) else ""
    raise InvalidIdentifier(f"{name} must be a TenantId, got {_shown(value)}{hint}")


def check_name(name: str, value: object, max_length: int) -> str:
    """The one rule for a name a caller picks (a provider id, a model, an idempotency
    key): text of 1 to ``max_length`` printable characters, no white space at
    either end.

    Edge white space is refused rather than trimmed: HTTP drops it from header
    values, so ``"k "`` and ``"k"`` would be one key over HTTP and two in a store.
    """
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{name} must be text, got {type(value).__name__}")
    if not value:
        raise InvalidIdentifier(f"{name} must not be empty")
    if len(value) > max_length:
        raise InvalidIdentifier(f"{name} must be at most {max_length} characters, got {len(value)}")
    if value != value.strip():
        raise InvalidIdentifier(f"{name} {value!r} must not start or end with white space")
    if not value.isprintable():
        position, char = next((i, c) for i, c in enumerate(value) if not c.isprintable())
        raise InvalidIdentifier(
            f"{name} {value[:80]!r} must hold only printable characters, got U+{ord(char):04X} "
            f"at position {position} (a control, format, private-use or unassigned character, "
            "a lone surrogate, or white space other than a plain space)"
        )
    return value


def check_label(name: str, value: object) -> str:
    """Validate a provider id or model name: :func:`check_name` with at most 200 characters."""
    return check_name(name, value, _MAX_LABEL)


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"
