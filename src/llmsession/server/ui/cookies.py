"""The dashboard's signed session cookie and the CSRF tokens tied to it (pure: no I/O).

A cookie holds who signed in (the admin, or a tenant through one key id), when
the sign-in ends, and a random nonce; never the key. It reads
``<payload>.<mac>``, both base64url, the MAC an HMAC-SHA256 of the payload under
the server's secret. A CSRF token is an HMAC of the cookie's nonce, so it is
good for that sign-in only and a page of another origin cannot compute it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

__all__ = ["SIGN_IN_SECONDS", "CookieSigner", "WebSession"]

#: How long a sign-in lasts.
SIGN_IN_SECONDS = 8 * 3600

_ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class WebSession:
    """One sign-in: the admin (``tenant_id`` None) or a tenant through ``key_id``."""

    tenant_id: str | None
    #: The key id of a tenant's key; for the admin, a fingerprint of the admin key.
    key_id: str
    expires_at: int
    nonce: str

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CookieSigner:
    """Signs and checks session cookies and CSRF tokens with one secret."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def for_settings(cls, ui_secret: str | None, admin_key: str | None) -> CookieSigner:
        """The signer of a server: its ui_secret, else one derived from the admin key
        (stable across restarts and replicas), else a random one for this process."""
        if ui_secret is not None:
            return cls(hashlib.sha256(b"llmsession-ui:" + ui_secret.encode()).digest())
        if admin_key is not None:
            # A one-way derivation: the cookie key tells nothing about the admin key.
            return cls(hmac.new(admin_key.encode(), b"llmsession-ui-cookie", "sha256").digest())
        return cls(secrets.token_bytes(32))

    def _mac(self, purpose: str, data: bytes) -> str:
        return _b64(hmac.new(self._secret, purpose.encode() + b"\0" + data, "sha256").digest())

    def admin_fingerprint(self, admin_key: str) -> str:
        """What an admin cookie names instead of a key id: a new admin key voids old cookies."""
        return self._mac("admin-key", admin_key.encode())[:22]

    def issue(self, tenant_id: str | None, key_id: str, now: int) -> tuple[WebSession, str]:
        """A new sign-in valid for SIGN_IN_SECONDS, and its cookie value."""
        session = WebSession(tenant_id, key_id, now + SIGN_IN_SECONDS, secrets.token_urlsafe(16))
        payload = json.dumps(
            {
                "t": session.tenant_id if session.tenant_id is not None else _ADMIN,
                "a": session.is_admin,
                "k": session.key_id,
                "e": session.expires_at,
                "n": session.nonce,
            },
            separators=(",", ":"),
        ).encode()
        return session, f"{_b64(payload)}.{self._mac('cookie', payload)}"

    def verify(self, cookie: str, now: int) -> WebSession | None:
        """The sign-in of a cookie this signer issued and that has not expired; else None."""
        payload_text, dot, mac = cookie.partition(".")
        if not dot or len(cookie) > 1024:
            return None
        try:
            payload = _unb64(payload_text)
        except ValueError:
            return None
        if not hmac.compare_digest(mac.encode(), self._mac("cookie", payload).encode()):
            return None
        fields: Any = json.loads(payload)
        session = WebSession(
            None if fields["a"] else str(fields["t"]),
            str(fields["k"]),
            int(fields["e"]),
            str(fields["n"]),
        )
        return session if now < session.expires_at else None

    def csrf_token(self, nonce: str) -> str:
        """The token forms carry for the sign-in (or sign-in form) of ``nonce``."""
        return self._mac("csrf", nonce.encode())

    def csrf_ok(self, nonce: str, token: str | None) -> bool:
        """Whether a form's token belongs to ``nonce`` (constant time)."""
        if not token:
            return False
        return hmac.compare_digest(token.encode(), self.csrf_token(nonce).encode())
