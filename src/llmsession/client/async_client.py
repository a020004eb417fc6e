"""AsyncClient: the asyncio Python client of the llmsession HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Self, TypeVar

import httpx

from llmsession.client import calls
from llmsession.client.calls import Moment, SessionRef, TenantRef
from llmsession.client.problems import ServiceUnreachable
from llmsession.client.sync_client import DEFAULT_BASE_URL, DEFAULT_TIMEOUT
from llmsession.client.views import (
    ApiKeyView,
    IssuedApiKey,
    NewTenant,
    RecordedRound,
    SessionView,
)
from llmsession.states import SessionState
from llmsession.store.models import (
    GroupKey,
    Page,
    Round,
    Tenant,
    TimeBucket,
    TimeBucketSize,
    Totals,
)

__all__ = ["AsyncClient"]

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of the llmsession HTTP API; the same methods as :class:`Client`.

    Use it as an async context manager (or await :meth:`aclose`)::

        async with AsyncClient("http://127.0.0.1:8080", api_key=key) as client:
            session = await client.create_session(provider_id="openai", model="gpt-4o",
                                                  initial_tokens=1200)

    Failures raise the same errors as :class:`Client`. ``transport`` replaces
    httpx's network transport, e.g. ``httpx.ASGITransport(app)`` to talk to an
    app in the same process.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = calls.check_base_url(base_url)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=calls.auth_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release the connections; the client cannot be used afterwards."""
        await self._http.aclose()

    async def _send(self, call: calls.Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                params=call.params,
                json=call.body,
                headers=call.headers,
            )
        except httpx.TransportError as error:
            raise ServiceUnreachable(
                f"no answer from {self.base_url} to {call.method} {call.path}: {error!r}"
            ) from error
        return call.finish(response)

    # -- sessions ----------------------------------------------------------------

    async def create_session(
        self, *, provider_id: str, model: str, initial_tokens: int, ttl_seconds: int | None = None
    ) -> SessionView:
        """Create a session (state Created); ``ttl_seconds`` defaults to the server's."""
        return await self._send(
            calls.create_session(provider_id, model, initial_tokens, ttl_seconds)
        )

    async def activate_session(self, session_id: SessionRef) -> SessionView:
        """Created -> Active."""
        return await self._send(calls.activate_session(session_id))

    async def record_round(
        self, session_id: SessionRef, delta_tokens: int, *, idempotency_key: str | None = None
    ) -> RecordedRound:
        """Record one round of ``delta_tokens`` new tokens on an Active session.

        Retrying with the same ``idempotency_key`` counts nothing twice and returns
        the first answer (``replayed=True``): the same round, and the session as it
        was right after it, even if more rounds, a close or an expiry came since.
        """
        return await self._send(calls.record_round(session_id, delta_tokens, idempotency_key))

    async def close_session(self, session_id: SessionRef) -> SessionView:
        """Active -> Closed."""
        return await self._send(calls.close_session(session_id))

    async def get_session(self, session_id: SessionRef) -> SessionView:
        """One session of this tenant."""
        return await self._send(calls.get_session(session_id))

    async def list_sessions(
        self,
        *,
        state: type[SessionState] | str | None = None,
        provider_id: str | None = None,
        model: str | None = None,
        created_after: Moment | None = None,
        created_before: Moment | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[SessionView]:
        """One page of this tenant's sessions, newest first; pass ``next_cursor`` on."""
        return await self._send(
            calls.list_sessions(
                state=state,
                provider_id=provider_id,
                model=model,
                created_after=created_after,
                created_before=created_before,
                limit=limit,
                cursor=cursor,
            )
        )

    async def iter_sessions(
        self,
        *,
        state: type[SessionState] | str | None = None,
        provider_id: str | None = None,
        model: str | None = None,
        created_after: Moment | None = None,
        created_before: Moment | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[SessionView]:
        """Every matching session, newest first, fetching page after page as needed."""
        cursor: str | None = None
        while True:
            page = await self.list_sessions(
                state=state,
                provider_id=provider_id,
                model=model,
                created_after=created_after,
                created_before=created_before,
                limit=page_size,
                cursor=cursor,
            )
            for item in page.items:
                yield item
            cursor = calls.next_cursor(page, cursor, "sessions")
            if cursor is None:
                return

    async def list_rounds(
        self,
        session_id: SessionRef,
        *,
        after: int = 0,
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Page[Round]:
        """One page of a session's rounds, in order; pass ``next_cursor`` on as ``cursor``.

        ``after``: only rounds with a larger seq, e.g. those recorded since round
        ``after`` was seen.
        """
        return await self._send(
            calls.list_rounds(session_id, after=after, cursor=cursor, limit=limit)
        )

    async def iter_rounds(
        self, session_id: SessionRef, *, after: int = 0, page_size: int | None = None
    ) -> AsyncIterator[Round]:
        """Every round of a session with seq > ``after``, in order, fetching page after
        page as needed."""
        cursor: str | None = None
        while True:
            page = await self.list_rounds(session_id, after=after, cursor=cursor, limit=page_size)
            for item in page.items:
                yield item
            cursor = calls.next_cursor(page, cursor, "rounds")
            if cursor is None:
                return

    async def stats(self, group_by: Sequence[GroupKey] = ()) -> list[Totals]:
        """This tenant's totals, per ``group_by`` group (``provider``, ``model``)."""
        return await self._send(calls.stats(group_by))

    async def timeseries(
        self,
        *,
        bucket: TimeBucketSize,
        start: Moment,
        end: Moment,
        group_by: Sequence[GroupKey] = (),
    ) -> list[TimeBucket]:
        """This tenant's rounds, delta tokens, tokens saved, usage and sessions started
        per ``hour`` or ``day`` (UTC), per ``group_by`` group: whole buckets, from the
        one holding ``start`` to the last starting before ``end``; buckets in which
        nothing happened are left out. See SessionStore.timeseries."""
        return await self._send(calls.timeseries(bucket, start, end, group_by))

    # -- admin (needs the admin key) --------------------------------------------

    async def create_tenant(self, tenant_id: TenantRef) -> NewTenant:
        """Register a tenant; its first API key is in the answer, shown this once."""
        return await self._send(calls.create_tenant(tenant_id))

    async def list_tenants(self) -> list[Tenant]:
        """Every tenant."""
        return await self._send(calls.list_tenants())

    async def issue_key(self, tenant_id: TenantRef) -> IssuedApiKey:
        """Issue another API key for a tenant; the key is shown this once."""
        return await self._send(calls.issue_key(tenant_id))

    async def list_keys(self, tenant_id: TenantRef) -> list[ApiKeyView]:
        """A tenant's API keys, revoked ones included (never the keys themselves)."""
        return await self._send(calls.list_keys(tenant_id))

    async def revoke_key(self, key_id: str) -> ApiKeyView:
        """Revoke an API key; revoking twice keeps the first time."""
        return await self._send(calls.revoke_key(key_id))

    # -- operations --------------------------------------------------------------

    async def health(self) -> bool:
        """True while the server process runs (ServiceUnreachable if it does not answer)."""
        return await self._send(calls.health())

    async def ready(self) -> bool:
        """True when the server's store answers, False when the server reports it does not."""
        return await self._send(calls.ready())
