"""API keys: issued at random, shown once, stored only as a hash, checked in constant time.

A key reads ``lls_<key_id>_<secret>``. The key id finds the stored hash without
the secret ever being used as a lookup value; the secret's SHA-256 is then
compared with :func:`hmac.compare_digest`. The secret carries 256 random bits,
so a fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from llmsession.errors import AuthenticationError, InvalidInput
from llmsession.ids import TenantId
from llmsession.store.base import SessionStore
from llmsession.store.models import ApiKeyInfo

__all__ = [
    "MAX_KEY_ID_LENGTH",
    "IssuedKey",
    "authenticate",
    "check_key_id",
    "hash_secret",
    "issue_key",
    "split_key",
]

#: The longest key id accepted where one is named (issued ones are 16 hex digits).
MAX_KEY_ID_LENGTH = 64

_PREFIX = "lls"


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A freshly issued key: ``api_key`` is shown this once and never stored."""

    api_key: str
    info: ApiKeyInfo


def hash_secret(secret: str) -> bytes:
    """The stored form of a key's secret."""
    return hashlib.sha256(secret.encode()).digest()


def check_key_id(value: str) -> str:
    """``value`` if it could be a key id, else InvalidInput saying what one is."""
    # Key ids are hex; anything else cannot exist and must not reach a database
    # (PostgreSQL refuses NUL characters in text, for one).
    if not (1 <= len(value) <= MAX_KEY_ID_LENGTH and value.isascii() and value.isalnum()):
        raise InvalidInput(
            f"key id {value[:80]!r} is malformed: 1 to {MAX_KEY_ID_LENGTH} letters and digits"
        )
    return value


def split_key(api_key: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    # The secret is token_urlsafe, whose alphabet includes "_": split twice only.
    parts = api_key.split("_", 2)
    if len(parts) != 3 or parts[0] != _PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def issue_key(store: SessionStore, tenant_id: TenantId) -> IssuedKey:
    """Create a new key for an existing tenant; NotFoundError if the tenant is unknown."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    info = await store.add_api_key(tenant_id, key_id, hash_secret(secret))
    return IssuedKey(f"{_PREFIX}_{key_id}_{secret}", info)


async def authenticate(store: SessionStore, api_key: str) -> TenantId:
    """The tenant a valid, unrevoked key belongs to; AuthenticationError otherwise.

    The error never repeats the key, so it is safe to log.
    """
    parts = split_key(api_key)
    info = await store.get_api_key(parts[0]) if parts is not None else None
    # Compare even when the id is unknown, so timing does not tell ids apart.
    expected = info.key_hash if info is not None else hash_secret("")
    given = hash_secret(parts[1]) if parts is not None else b""
    if not hmac.compare_digest(expected, given) or info is None:
        raise AuthenticationError("invalid API key")
    if info.revoked_at is not None:
        raise AuthenticationError("this API key was revoked")
    return info.tenant_id
