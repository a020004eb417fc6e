"""Every HTTP API call as a value: what to send and how to read the answer.

The sync and the async client differ only in how they send; everything else
(paths, query strings, headers, which statuses mean success, parsing, error
mapping) is built here once. A :class:`Call` is built by one function per
endpoint and finished with the response by :meth:`Call.finish`.

Values that go into a path or a header are checked here with the core's own
parsers (so an id cannot change the path); values that go into a body or a
query string are left for the server to judge, so that there is one authority.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Final, Generic, Literal, TypeVar
from urllib.parse import quote

import httpx

from llmsession.client import wire
from llmsession.client.problems import ApiError, error_from_response
from llmsession.client.views import (
    ApiKeyView,
    IssuedApiKey,
    NewTenant,
    RecordedRound,
    SessionView,
)
from llmsession.errors import InvalidIdentifier, InvalidInput
from llmsession.ids import SessionId, TenantId
from llmsession.states import SessionState
from llmsession.store.models import (
    GroupKey,
    Page,
    Round,
    Tenant,
    TimeBucket,
    TimeBucketSize,
    Totals,
    check_idempotency_key,
)
from llmsession.timestamps import Timestamp

__all__ = [
    "Call",
    "activate_session",
    "auth_headers",
    "check_base_url",
    "close_session",
    "create_session",
    "create_tenant",
    "get_session",
    "health",
    "issue_key",
    "list_keys",
    "list_rounds",
    "list_sessions",
    "list_tenants",
    "next_cursor",
    "ready",
    "record_round",
    "revoke_key",
    "stats",
    "timeseries",
]

T = TypeVar("T")

SessionRef = SessionId | str
TenantRef = TenantId | str
Moment = Timestamp | datetime

_REPLAYED_HEADER: Final = "Idempotent-Replayed"


def _user_agent() -> str:
    try:
        return f"llmsession-python/{version('llmsession')}"
    except PackageNotFoundError:  # a source tree that was never installed
        return "llmsession-python"


_USER_AGENT: Final = _user_agent()


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and the reading of its answer."""

    method: Literal["GET", "POST"]
    path: str
    read: Callable[[httpx.Response], T]
    expect: frozenset[int] = frozenset({200})
    params: tuple[tuple[str, str], ...] = ()
    body: Mapping[str, object] | None = None
    headers: Mapping[str, str] = field(default_factory=dict[str, str])

    def finish(self, response: httpx.Response) -> T:
        """The call's result, or the error the answer stands for."""
        if response.status_code not in self.expect:
            raise error_from_response(response)
        try:
            return self.read(response)
        except ValueError as error:
            raise ApiError(
                f"{self.method} {self.path} answered HTTP {response.status_code} with a body "
                f"the llmsession API does not document: {error}",
                response.status_code,
            ) from error


def check_base_url(base_url: str) -> str:
    """``base_url`` if it is an http(s) URL; InvalidInput naming the problem otherwise."""
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise InvalidInput(
            f"base_url must be an http:// or https:// URL such as 'http://127.0.0.1:8080', "
            f"got {base_url!r}"
        )
    return base_url.rstrip("/")


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The headers every request carries."""
    headers = {"User-Agent": _USER_AGENT, "Accept": "application/json"}
    if api_key is not None:
        if (
            not isinstance(api_key, str)
            or not api_key
            or not api_key.isprintable()
            or (any(char.isspace() for char in api_key))
        ):
            raise InvalidInput(
                "api_key must be the key as issued (printable, no spaces), e.g. 'lls_<id>_<secret>'"
            )
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


# -- sessions --------------------------------------------------------------------


def create_session(
    provider_id: str, model: str, initial_tokens: int, ttl_seconds: int | None
) -> Call[SessionView]:
    """``POST /v1/sessions``."""
    body: dict[str, object] = {
        "provider_id": provider_id,
        "model": model,
        "initial_tokens": initial_tokens,
    }
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    return Call("POST", "/v1/sessions", _json(wire.read_session), frozenset({201}), body=body)


def activate_session(session_id: SessionRef) -> Call[SessionView]:
    """``POST /v1/sessions/{id}/activate``."""
    return Call("POST", f"{_session_path(session_id)}/activate", _json(wire.read_session))


def record_round(
    session_id: SessionRef, delta_tokens: int, idempotency_key: str | None
) -> Call[RecordedRound]:
    """``POST /v1/sessions/{id}/rounds``, with an optional ``Idempotency-Key``."""
    sid = _session_id(session_id)
    headers: dict[str, str] = {}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = check_idempotency_key(idempotency_key)

    def read(response: httpx.Response) -> RecordedRound:
        replayed = response.headers.get(_REPLAYED_HEADER, "").lower() == "true"
        return wire.read_recorded_round(response.json(), sid, replayed=replayed)

    return Call(
        "POST",
        f"{_session_path(sid)}/rounds",
        read,
        frozenset({200, 201}),
        body={"delta_tokens": delta_tokens},
        headers=headers,
    )


def close_session(session_id: SessionRef) -> Call[SessionView]:
    """``POST /v1/sessions/{id}/close``."""
    return Call("POST", f"{_session_path(session_id)}/close", _json(wire.read_session))


def get_session(session_id: SessionRef) -> Call[SessionView]:
    """``GET /v1/sessions/{id}``."""
    return Call("GET", _session_path(session_id), _json(wire.read_session))


def list_sessions(
    *,
    state: type[SessionState] | str | None,
    provider_id: str | None,
    model: str | None,
    created_after: Moment | None,
    created_before: Moment | None,
    limit: int | None,
    cursor: str | None,
) -> Call[Page[SessionView]]:
    """``GET /v1/sessions``: one page, newest first."""
    params: list[tuple[str, str]] = []
    if state is not None:
        params.append(("state", state if isinstance(state, str) else state.name))
    _add(params, "provider_id", provider_id)
    _add(params, "model", model)
    if created_after is not None:
        params.append(("created_after", _moment("created_after", created_after).isoformat()))
    if created_before is not None:
        params.append(("created_before", _moment("created_before", created_before).isoformat()))
    _add(params, "limit", limit)
    _add(params, "cursor", cursor)

    def read(response: httpx.Response) -> Page[SessionView]:
        return wire.read_page(response.json(), wire.read_session)

    return Call("GET", "/v1/sessions", read, params=tuple(params))


def next_cursor(page: Page[T], cursor: str | None, listing: str) -> str | None:
    """The cursor that continues past ``page`` (sent with ``cursor``), or None at the end.

    Raises ApiError if the page does not move forward, so that iterating can
    never loop on a misbehaving server. ``listing`` names what is listed, for
    the message.
    """
    if page.next_cursor is not None and (page.next_cursor == cursor or not page.items):
        raise ApiError(
            f"the {listing} page for cursor {cursor!r} gave next_cursor {page.next_cursor!r} "
            f"after {len(page.items)} items, which does not move forward",
            200,
        )
    return page.next_cursor


def list_rounds(
    session_id: SessionRef, *, after: int, cursor: str | None, limit: int | None
) -> Call[Page[Round]]:
    """``GET /v1/sessions/{id}/rounds``: one page of rounds, in order: those with seq >
    ``after``, continuing after ``cursor`` (the ``next_cursor`` of the page before)."""
    sid = _session_id(session_id)
    params: list[tuple[str, str]] = [("after", str(after))]
    _add(params, "limit", limit)
    _add(params, "cursor", cursor)

    def read(response: httpx.Response) -> Page[Round]:
        return wire.read_page(response.json(), lambda item: wire.read_round(item, sid))

    return Call("GET", f"{_session_path(sid)}/rounds", read, params=tuple(params))


def stats(group_by: Sequence[GroupKey]) -> Call[list[Totals]]:
    """``GET /v1/stats``."""
    if isinstance(group_by, str):
        raise InvalidInput(
            f"group_by is a sequence such as ['provider'], got the string {group_by!r}"
        )
    return Call("GET", "/v1/stats", _json(wire.read_stats), params=_repeat("group_by", group_by))


def timeseries(
    bucket: TimeBucketSize, start: Moment, end: Moment, group_by: Sequence[GroupKey]
) -> Call[list[TimeBucket]]:
    """``GET /v1/stats/timeseries``."""
    if isinstance(group_by, str):
        raise InvalidInput(
            f"group_by is a sequence such as ['provider'], got the string {group_by!r}"
        )
    params = (
        ("bucket", str(bucket)),
        ("start", _moment("start", start).isoformat()),
        ("end", _moment("end", end).isoformat()),
        *_repeat("group_by", group_by),
    )
    return Call("GET", "/v1/stats/timeseries", _json(wire.read_timeseries), params=params)


# -- admin ------------------------------------------------------------------------


def create_tenant(tenant_id: TenantRef) -> Call[NewTenant]:
    """``POST /v1/admin/tenants``."""
    body = {"tenant_id": _tenant_id(tenant_id).value}
    return Call(
        "POST", "/v1/admin/tenants", _json(wire.read_new_tenant), frozenset({201}), body=body
    )


def list_tenants() -> Call[list[Tenant]]:
    """``GET /v1/admin/tenants``."""

    def read(response: httpx.Response) -> list[Tenant]:
        return wire.read_items(response.json(), wire.read_tenant)

    return Call("GET", "/v1/admin/tenants", read)


def issue_key(tenant_id: TenantRef) -> Call[IssuedApiKey]:
    """``POST /v1/admin/tenants/{tenant_id}/keys``."""
    return Call(
        "POST", f"{_tenant_path(tenant_id)}/keys", _json(wire.read_issued_key), frozenset({201})
    )


def list_keys(tenant_id: TenantRef) -> Call[list[ApiKeyView]]:
    """``GET /v1/admin/tenants/{tenant_id}/keys``."""

    def read(response: httpx.Response) -> list[ApiKeyView]:
        return wire.read_items(response.json(), wire.read_api_key)

    return Call("GET", f"{_tenant_path(tenant_id)}/keys", read)


def revoke_key(key_id: str) -> Call[ApiKeyView]:
    """``POST /v1/admin/keys/{key_id}/revoke``."""
    if not isinstance(key_id, str) or not key_id or not key_id.isprintable():
        raise InvalidIdentifier(f"key_id must be a key id as listed by list_keys, got {key_id!r}")
    return Call("POST", f"/v1/admin/keys/{_segment(key_id)}/revoke", _json(wire.read_api_key))


# -- operations -------------------------------------------------------------------


def health() -> Call[bool]:
    """``GET /healthz``: True while the server process runs."""
    return Call("GET", "/healthz", lambda response: True)


def ready() -> Call[bool]:
    """``GET /readyz``: True when the server's store answers, False when it does not."""
    return Call(
        "GET", "/readyz", lambda response: response.status_code == 200, frozenset({200, 503})
    )


# -- helpers ----------------------------------------------------------------------


def _json(read: Callable[[object], T]) -> Callable[[httpx.Response], T]:
    def read_response(response: httpx.Response) -> T:
        return read(response.json())

    return read_response


def _session_id(session_id: SessionRef) -> SessionId:
    return session_id if isinstance(session_id, SessionId) else SessionId.parse(session_id)


def _session_path(session_id: SessionRef) -> str:
    # The canonical UUID text holds only hex digits and dashes: safe in a path.
    return f"/v1/sessions/{_session_id(session_id)}"


def _tenant_id(tenant_id: TenantRef) -> TenantId:
    return tenant_id if isinstance(tenant_id, TenantId) else TenantId(tenant_id)


def _tenant_path(tenant_id: TenantRef) -> str:
    return f"/v1/admin/tenants/{_segment(_tenant_id(tenant_id).value)}"


def _segment(text: str) -> str:
    # Dots too: httpx would resolve a ".." segment and send the request elsewhere.
    return quote(text, safe="").replace(".", "%2E")


def _moment(name: str, value: Moment) -> Timestamp:
    if isinstance(value, Timestamp):
        return value
    if isinstance(value, datetime):
        return Timestamp.from_datetime(value)
    raise InvalidInput(
        f"{name} must be a Timestamp or a timezone-aware datetime, got {type(value).__name__}"
    )


def _add(params: list[tuple[str, str]], name: str, value: str | int | None) -> None:
    if value is not None:
        params.append((name, str(value)))


def _repeat(name: str, values: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for value in values)
