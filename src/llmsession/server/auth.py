"""Who is calling: a tenant (by its API key) or the admin (by the admin key).

The tenant comes only from the key, never from the path or body. Keys are
compared in constant time and never logged or echoed. A request with more than
one Authorization header is refused (400): picking one of them would let
whatever added the other (a proxy, a client library) decide who is calling.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers, QueryParams

from llmsession.errors import AuthenticationError
from llmsession.ids import TenantId
from llmsession.server.context import AppContext
from llmsession.server.problems import Problem

__all__ = [
    "admin_dependency",
    "api_key_or_bearer",
    "authorization_header",
    "bearer_token",
    "google_api_key",
    "is_admin_key",
    "require_admin",
    "require_tenant",
    "tenant_dependency",
]

_tenant_bearer = HTTPBearer(
    scheme_name="TenantKey",
    description="A tenant's API key, `lls_<key_id>_<secret>`: acts for that tenant only.",
    auto_error=False,
)
_admin_bearer = HTTPBearer(
    scheme_name="AdminKey",
    description="The admin key (LLMSESSION_ADMIN_KEY): manages tenants and keys only.",
    auto_error=False,
)

Credentials = HTTPAuthorizationCredentials | None

_MISSING = "missing API key: send the header 'Authorization: Bearer <key>'"


def authorization_header(headers: Headers) -> str | None:
    """The request's one Authorization header (None without one); a 400 problem for several."""
    values = headers.getlist("authorization")
    if len(values) > 1:
        raise Problem(
            "ambiguous-credentials",
            f"the request has {len(values)} Authorization headers; "
            "send exactly one Authorization header: 'Authorization: Bearer <key>'",
        )
    return values[0] if values else None


def bearer_token(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header; AuthenticationError otherwise."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token
    raise AuthenticationError(_MISSING)


def api_key_or_bearer(headers: Headers) -> str:
    """The key of ``x-api-key`` or of ``Authorization: Bearer`` (Anthropic's clients send
    either); a 400 problem for several headers or for two different keys, and
    AuthenticationError for none."""
    api_keys = headers.getlist("x-api-key")
    if len(api_keys) > 1:
        raise Problem(
            "ambiguous-credentials",
            f"the request has {len(api_keys)} x-api-key headers; send exactly one key",
        )
    authorization = authorization_header(headers)
    api_key = api_keys[0].strip() if api_keys else None
    if authorization is None:
        if api_key:
            return api_key
        raise AuthenticationError(
            "missing API key: send the header 'x-api-key: <key>' or 'Authorization: Bearer <key>'"
        )
    token = bearer_token(authorization)
    if api_key is not None and api_key != token:
        raise Problem(
            "ambiguous-credentials",
            "the request names two different keys in x-api-key and Authorization; "
            "send one key, in either header",
        )
    return token


def google_api_key(headers: Headers, query: QueryParams) -> str:
    """The key of a Gemini-style request: ``x-goog-api-key`` (what the google-genai SDK
    sends), ``?key=`` or ``Authorization: Bearer``. Exactly one of them: a key given
    twice is refused (400) for the reason several Authorization headers are."""
    given: list[str] = []
    authorization = authorization_header(headers)
    if authorization is not None:
        given.append("Authorization")
    given += ["x-goog-api-key"] * len(headers.getlist("x-goog-api-key"))
    given += ["?key="] * len(query.getlist("key"))
    if len(given) > 1:
        raise Problem(
            "ambiguous-credentials",
            f"the request carries a key {len(given)} times ({', '.join(given)}); send it "
            "exactly once: 'x-goog-api-key: <key>', '?key=<key>' or "
            "'Authorization: Bearer <key>'",
        )
    if authorization is not None:
        return bearer_token(authorization)
    key = (headers.get("x-goog-api-key") or query.get("key") or "").strip()
    if not key:
        raise AuthenticationError(
            "missing API key: send the header 'x-goog-api-key: <key>' (as the google-genai "
            "SDK does), the query parameter '?key=<key>' or 'Authorization: Bearer <key>'"
        )
    return key


def is_admin_key(context: AppContext, token: str) -> bool:
    """Whether ``token`` is the configured admin key (False when none is configured)."""
    admin_key = context.settings.admin_key
    if admin_key is None:
        return False
    # Bytes, not str: compare_digest refuses non-ASCII str, and headers may carry any byte.
    return hmac.compare_digest(token.encode(), admin_key.encode())


async def require_tenant(context: AppContext, token: str) -> TenantId:
    """The tenant of a tenant key: 401 for an unknown or revoked key, 403 for the admin key."""
    if is_admin_key(context, token):
        raise Problem("forbidden", "the admin key cannot act on sessions; use a tenant's API key")
    return await context.keys.tenant_of(token)


async def require_admin(context: AppContext, token: str) -> None:
    """Nothing for the admin key; 403 for a tenant's valid key, 401 for anything else."""
    if is_admin_key(context, token):
        return
    # With no admin key, no key passes: "invalid API key" alone would send the
    # caller looking for a typo.
    closed = (
        ""
        if context.settings.admin_key is not None
        else "; admin routes are closed: this server has no admin key (LLMSESSION_ADMIN_KEY)"
    )
    # A tenant's valid key is known but not allowed here; anything else is unknown.
    try:
        await context.keys.tenant_of(token)
    except AuthenticationError as error:
        if not closed:
            raise
        raise AuthenticationError(f"{error}{closed}") from None
    raise Problem("forbidden", f"admin routes need the admin key, not a tenant's API key{closed}")


def _credentials_token(credentials: Credentials) -> str:
    if credentials is None or not credentials.credentials:
        raise AuthenticationError(_MISSING)
    return credentials.credentials


def tenant_dependency(context: AppContext) -> Callable[..., Awaitable[TenantId]]:
    """A FastAPI dependency giving the tenant of the request's API key."""

    async def authenticated_tenant(
        request: Request, credentials: Annotated[Credentials, Security(_tenant_bearer)]
    ) -> TenantId:
        authorization_header(request.headers)  # the bearer scheme reads only the first
        return await require_tenant(context, _credentials_token(credentials))

    return authenticated_tenant


def admin_dependency(context: AppContext) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency admitting only the admin key."""

    async def authenticated_admin(
        request: Request, credentials: Annotated[Credentials, Security(_admin_bearer)]
    ) -> None:
        authorization_header(request.headers)  # the bearer scheme reads only the first
        await require_admin(context, _credentials_token(credentials))

    return authenticated_admin
