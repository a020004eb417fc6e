"""The dashboard's routes under /ui: sign-in, overview, sessions, one session, admin.

Server-rendered HTML over the same store calls the API makes; no rule of the
core is restated here. Who is signed in comes from a signed cookie
(:mod:`.cookies`), checked against the store on every request, so a revoked key's
sign-in ends at once. Every POST carries the CSRF token of its sign-in.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from llmsession.cost import billed
from llmsession.errors import AuthenticationError, InvalidInput, LLMSessionError, NotFoundError
from llmsession.ids import SessionId, TenantId
from llmsession.keys import IssuedKey, issue_key, split_key
from llmsession.pricing import price_rounds, priced_totals
from llmsession.server.auth import is_admin_key
from llmsession.server.context import AppContext
from llmsession.server.problems import PROBLEM_TYPES, Problem, problem_for
from llmsession.server.ui.cookies import SIGN_IN_SECONDS, CookieSigner, WebSession
from llmsession.server.ui.pages import render_page, round_series, sum_totals, time_charts
from llmsession.states import Active, state_named
from llmsession.store.models import (
    MAX_PAGE_SIZE,
    GroupKey,
    Round,
    SessionQuery,
    Tenant,
    TimeBucketSize,
    Totals,
)
from llmsession.store.rollup import BUCKET_MICROS
from llmsession.timestamps import Timestamp

__all__ = ["COOKIE_NAME", "CSRF_FIELD", "SIGN_IN_COOKIE_NAME", "ui_routes"]

COOKIE_NAME = "llmsession_ui"
#: Holds the nonce of the sign-in form's CSRF token until someone signs in.
SIGN_IN_COOKIE_NAME = "llmsession_ui_signin"
CSRF_FIELD = "csrf_token"

SESSIONS_PAGE_SIZES = (20, 50, 100)
ROUNDS_PAGE_SIZE = 100
#: The session page plots at most this many rounds (from round 1).
PLOT_ROUNDS = 5000
_MAX_FORM_FIELD = 4096

Handler = Callable[[Request], Awaitable[Response]]
Page = Callable[[Request, WebSession], Awaitable[Response]]


class _Refused(Exception):
    """A request the dashboard answers with an error page (status, what was wrong)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _now() -> int:
    return int(time.time())


def _optional(request: Request, name: str) -> str | None:
    # An empty field of a GET form means "no filter".
    value = request.query_params.get(name, "").strip()
    return value or None


def _parse_time(name: str, text: str | None) -> Timestamp | None:
    """An ISO 8601 time; one without an offset (a datetime-local field) is UTC."""
    if text is None:
        return None
    try:
        return Timestamp.parse(text)
    except InvalidInput:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidInput(
                f"{name} {text[:80]!r} is not a time: use ISO 8601, e.g. 2026-01-31T12:00 (UTC) "
                "or 2026-01-31T12:00:00+02:00"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return Timestamp.from_datetime(moment)


def _field_time(value: Timestamp | None) -> str:
    """A time as a datetime-local field shows it (UTC, to the minute)."""
    if value is None:
        return ""
    return value.to_datetime().astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


#: How the overview's plots over time may be split: the form's value -> group_by.
SPLITS: dict[str, tuple[GroupKey, ...]] = {
    "provider,model": ("provider", "model"),
    "provider": ("provider",),
    "model": ("model",),
    "none": (),
}


@dataclass(frozen=True, slots=True)
class PlotWindow:
    """What the overview plots over time: bucket size, range and split."""

    bucket: TimeBucketSize
    start: Timestamp
    end: Timestamp
    split_name: str
    split: tuple[GroupKey, ...]

    @property
    def start_field(self) -> str:
        return _field_time(self.start)

    @property
    def end_field(self) -> str:
        return _field_time(self.end)


class _Dashboard:
    """The handlers of one app's dashboard, over its context and cookie signer."""

    def __init__(self, context: AppContext) -> None:
        self.context = context
        settings = context.settings
        self.signer = CookieSigner.for_settings(settings.ui_secret, settings.admin_key)

    # -- who is signed in --------------------------------------------------------

    async def signed_in(self, request: Request) -> WebSession | None:
        """The request's sign-in, if its cookie is genuine, unexpired and its key still valid."""
        cookie = request.cookies.get(COOKIE_NAME)
        session = None if cookie is None else self.signer.verify(cookie, _now())
        if session is None:
            return None
        if session.is_admin:
            admin_key = self.context.settings.admin_key
            if admin_key is None or not hmac.compare_digest(
                session.key_id, self.signer.admin_fingerprint(admin_key)
            ):
                return None
            return session
        # Read on every request, not cached: revoking a key ends its sign-ins at once.
        info = await self.context.store.get_api_key(session.key_id)
        if info is None or info.revoked_at is not None or info.tenant_id.value != session.tenant_id:
            return None
        return session

    def page(self, handler: Page, *, admin_only: bool = False, form: bool = False) -> Handler:
        """``handler`` for signed-in users: others go to the sign-in page; errors become
        error pages; a POST must carry its sign-in's CSRF token (403 otherwise)."""

        async def guarded(request: Request) -> Response:
            try:
                session = await self.signed_in(request)
                if session is None:
                    return RedirectResponse("/ui/sign-in", 303)
                if admin_only and not session.is_admin:
                    raise _Refused(403, "this page is for the admin; sign in with the admin key")
                if form:
                    fields = await _form(request)
                    if not self.signer.csrf_ok(session.nonce, fields.get(CSRF_FIELD)):
                        raise _Refused(403, _CSRF_REFUSED)
                    request.state.form = fields
                return await handler(request, session)
            except (LLMSessionError, Problem, _Refused) as error:
                return self.error_page(request, error)

        # Not functools.wraps: FastAPI would read the handler's signature through it.
        guarded.__name__ = handler.__name__
        return guarded

    def error_page(self, request: Request, error: LLMSessionError | Problem | _Refused) -> Response:
        if isinstance(error, _Refused):
            status, detail = error.status, error.detail
        else:
            problem = error if isinstance(error, Problem) else problem_for(error)
            status, detail = PROBLEM_TYPES[problem.kind][0], problem.detail
        return render_page(
            "error.html",
            status,
            status=status,
            detail=detail,
            session=None,
            csrf="",
        )

    def values(self, session: WebSession, **values: Any) -> dict[str, Any]:
        """What every signed-in page's layout needs, plus ``values``."""
        return {
            "session": session,
            "csrf": self.signer.csrf_token(session.nonce),
            # Whether to show costs: only where the operator configured prices.
            "priced": bool(self.context.prices),
            **values,
        }

    def tenant_scope(self, request: Request, session: WebSession) -> TenantId | None:
        """The tenant a page shows: a tenant's own; for the admin, the one asked for
        (``?tenant=``), or None for every tenant. Another tenant's is not found."""
        asked = _optional(request, "tenant")
        if not session.is_admin:
            assert session.tenant_id is not None
            if asked is not None and asked != session.tenant_id:
                raise NotFoundError(f"no tenant {asked[:80]!r}")
            return TenantId(session.tenant_id)
        return None if asked is None else TenantId(asked)

    # -- sign-in and sign-out ----------------------------------------------------

    async def sign_in_form(self, request: Request) -> Response:
        if await self.signed_in(request) is not None:
            return RedirectResponse("/ui", 303)
        return self.sign_in_page(request, None, 200)

    def sign_in_page(self, request: Request, error: str | None, status: int) -> Response:
        nonce = request.cookies.get(SIGN_IN_COOKIE_NAME) or ""
        fresh = len(nonce) < 16 or len(nonce) > 64
        if fresh:
            nonce = secrets.token_urlsafe(24)
        response = render_page(
            "sign_in.html",
            status,
            session=None,
            csrf=self.signer.csrf_token(nonce),
            error=error,
        )
        if fresh:
            _set_cookie(response, request, SIGN_IN_COOKIE_NAME, nonce, 3600, path="/ui/sign-in")
        return response

    async def sign_in(self, request: Request) -> Response:
        try:
            fields = await _form(request)
        except _Refused as error:
            return self.error_page(request, error)
        nonce = request.cookies.get(SIGN_IN_COOKIE_NAME) or ""
        if not nonce or not self.signer.csrf_ok(nonce, fields.get(CSRF_FIELD)):
            return self.error_page(request, _Refused(403, _CSRF_REFUSED))
        key = fields.get("api_key", "").strip()
        if not key:
            return self.sign_in_page(request, "enter an API key or the admin key", 422)
        if is_admin_key(self.context, key):
            assert self.context.settings.admin_key is not None
            tenant_id = None
            key_id = self.signer.admin_fingerprint(self.context.settings.admin_key)
        else:
            try:
                tenant_id = (await self.context.keys.tenant_of(key)).value
            except AuthenticationError as error:
                return self.sign_in_page(request, f"sign-in refused: {error}", 401)
            parts = split_key(key)
            assert parts is not None  # tenant_of accepted it, so it is well formed
            key_id = parts[0]
        _, cookie = self.signer.issue(tenant_id, key_id, _now())
        response = RedirectResponse("/ui", 303)
        _set_cookie(response, request, COOKIE_NAME, cookie, SIGN_IN_SECONDS)
        response.delete_cookie(
            SIGN_IN_COOKIE_NAME, path="/ui/sign-in", httponly=True, samesite="strict"
        )
        return response

    async def sign_out(self, request: Request, session: WebSession) -> Response:
        response = RedirectResponse("/ui/sign-in", 303)
        response.delete_cookie(COOKIE_NAME, path="/ui", httponly=True, samesite="strict")
        return response

    # -- overview ------------------------------------------------------------------

    async def overview(self, request: Request, session: WebSession) -> Response:
        tenant = self.tenant_scope(request, session)
        store = self.context.store
        if tenant is None:
            tenants = await store.list_tenants()
            per_tenant = [
                (t.tenant_id.value, sum_totals(await self._totals(t.tenant_id))) for t in tenants
            ]
            return render_page(
                "overview.html",
                **self.values(
                    session,
                    tenant=None,
                    totals=sum_totals([totals for _, totals in per_tenant]),
                    per_tenant=per_tenant,
                    groups=[],
                    window=None,
                    charts=None,
                ),
            )
        await store.get_tenant(tenant)  # an unknown tenant is a 404, not empty totals
        totals = sum_totals(await self._totals(tenant))
        groups = await self._totals(tenant, ["provider", "model"])
        window = self._plot_window(request)
        # One store query per kind of plot: split by the chosen groups (tokens saved and
        # rounds), and unsplit (the share of input served from cache).
        grouped = await store.timeseries(
            tenant, bucket=window.bucket, start=window.start, end=window.end, group_by=window.split
        )
        overall = await store.timeseries(
            tenant, bucket=window.bucket, start=window.start, end=window.end
        )
        return render_page(
            "overview.html",
            **self.values(
                session,
                tenant=tenant.value,
                totals=totals,
                per_tenant=[],
                groups=groups,
                window=window,
                charts=time_charts(window.bucket, window.start, window.end, grouped, overall),
            ),
        )

    def _plot_window(self, request: Request) -> PlotWindow:
        """The overview's plot range from its form, or the last 48 hours (hours) or
        30 days (days) up to the end of the current hour or day."""
        bucket_name = _optional(request, "bucket") or "hour"
        if bucket_name not in ("hour", "day"):
            raise InvalidInput(f"bucket {bucket_name[:20]!r} is not offered: choose hour or day")
        bucket: TimeBucketSize = "hour" if bucket_name == "hour" else "day"
        split_name = _optional(request, "split") or "provider,model"
        if split_name not in SPLITS:
            raise InvalidInput(
                f"split {split_name[:40]!r} is not offered: choose one of "
                + ", ".join(repr(name) for name in SPLITS)
            )
        size = BUCKET_MICROS[bucket]
        now = self.context.store.clock().epoch_micros
        default_end = Timestamp(now - now % size + size)
        end = _parse_time("end", _optional(request, "end")) or default_end
        span = 48 * 3600 if bucket == "hour" else 30 * 86400
        start = _parse_time("start", _optional(request, "start")) or end.plus_seconds(-span)
        return PlotWindow(bucket, start, end, split_name, SPLITS[split_name])

    async def _totals(self, tenant: TenantId, group_by: Sequence[GroupKey] = ()) -> list[Totals]:
        """The store's totals, each group with its cost at the configured prices."""
        return await priced_totals(self.context.store, tenant, group_by, self.context.prices)

    # -- sessions ----------------------------------------------------------------

    async def sessions(self, request: Request, session: WebSession) -> Response:
        tenant = self.tenant_scope(request, session)
        if tenant is None:
            tenants = await self.context.store.list_tenants()
            return render_page(
                "choose_tenant.html",
                **self.values(session, tenants=[t.tenant_id.value for t in tenants]),
            )
        await self.context.store.get_tenant(tenant)
        state_name = _optional(request, "state")
        limit_text = _optional(request, "limit") or "50"
        if limit_text not in {str(size) for size in SESSIONS_PAGE_SIZES}:
            raise InvalidInput(
                f"limit {limit_text[:20]!r} is not offered: choose one of "
                + ", ".join(map(str, SESSIONS_PAGE_SIZES))
            )
        created_after = _parse_time("created_after", _optional(request, "created_after"))
        created_before = _parse_time("created_before", _optional(request, "created_before"))
        query = SessionQuery(
            state=None if state_name is None else state_named(state_name),
            provider_id=_optional(request, "provider_id"),
            model=_optional(request, "model"),
            created_after=created_after,
            created_before=created_before,
            limit=int(limit_text),
            cursor=_optional(request, "cursor"),
        )
        page = await self.context.store.list_sessions(tenant, query)
        filters = {
            "state": state_name or "",
            "provider_id": query.provider_id or "",
            "model": query.model or "",
            "created_after": _field_time(created_after),
            "created_before": _field_time(created_before),
            "limit": limit_text,
        }
        scope = {"tenant": tenant.value} if session.is_admin else {}
        kept = {name: value for name, value in filters.items() if value}
        next_url = (
            None
            if page.next_cursor is None
            else "/ui/sessions?" + urlencode({**scope, **kept, "cursor": page.next_cursor})
        )
        first_url = None if query.cursor is None else "/ui/sessions?" + urlencode({**scope, **kept})
        return render_page(
            "sessions.html",
            **self.values(
                session,
                tenant=tenant.value,
                scope=urlencode(scope),
                filters=filters,
                page_sizes=SESSIONS_PAGE_SIZES,
                sessions=page.items,
                next_url=next_url,
                first_url=first_url,
            ),
        )

    async def session_page(self, request: Request, session: WebSession) -> Response:
        tenant = self.tenant_scope(request, session)
        if tenant is None:
            raise InvalidInput("the admin views a session of one tenant: add ?tenant=<tenant id>")
        session_id = SessionId.parse(request.path_params["session_id"])
        store = self.context.store
        stored = await store.get(tenant, session_id)
        cursor = _optional(request, "cursor")
        rounds = await store.list_rounds(tenant, session_id, cursor=cursor, limit=ROUNDS_PAGE_SIZE)
        record = stored.record
        prices = self.context.prices
        # Priced as GET /v1/sessions/{id}/rounds prices them: at the session's model's price.
        priced = price_rounds(rounds.items, prices, record.provider_id, record.model)
        session_cost = (
            prices.cost(record.provider_id, record.model, stored.usage)
            if billed(stored.usage)
            else None
        )
        plotted = await self._plotted_rounds(tenant, session_id)
        scope = {"tenant": tenant.value} if session.is_admin else {}
        base = f"/ui/sessions/{session_id}"
        next_url = (
            None
            if rounds.next_cursor is None
            else f"{base}?" + urlencode({**scope, "cursor": rounds.next_cursor})
        )
        return render_page(
            "session.html",
            **self.values(
                session,
                tenant=tenant.value,
                scope=urlencode(scope),
                stored=stored,
                record=record,
                rounds=priced,
                session_cost=session_cost,
                next_url=next_url,
                first_url=None if cursor is None else f"{base}?{urlencode(scope)}",
                series=round_series(stored, plotted).as_json(),
                plotted_all=len(plotted) == stored.record.round_count,
                plot_rounds=PLOT_ROUNDS,
                can_close=stored.record.state is Active and not session.is_admin,
            ),
        )

    async def _plotted_rounds(self, tenant: TenantId, session_id: SessionId) -> list[Round]:
        found: list[Round] = []
        cursor: str | None = None
        while len(found) < PLOT_ROUNDS:
            page = await self.context.store.list_rounds(
                tenant, session_id, cursor=cursor, limit=MAX_PAGE_SIZE
            )
            found.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        return found[:PLOT_ROUNDS]

    async def close_form(self, request: Request, session: WebSession) -> Response:
        tenant = self._acting_tenant(session)
        session_id = SessionId.parse(request.path_params["session_id"])
        stored = await self.context.store.get(tenant, session_id)
        return render_page(
            "close.html",
            **self.values(session, record=stored.record, can_close=stored.record.state is Active),
        )

    async def close(self, request: Request, session: WebSession) -> Response:
        tenant = self._acting_tenant(session)
        session_id = SessionId.parse(request.path_params["session_id"])
        # As the API's close: the core's rules (only an Active session closes), and what
        # a provider holds for the session deleted.
        await self.context.close_session(tenant, session_id)
        return RedirectResponse(f"/ui/sessions/{session_id}", 303)

    def _acting_tenant(self, session: WebSession) -> TenantId:
        # As in the API, the admin manages tenants and keys but does not act on sessions.
        if session.tenant_id is None:
            raise _Refused(403, "the admin does not close sessions; sign in with the tenant's key")
        return TenantId(session.tenant_id)

    # -- admin: tenants and keys -----------------------------------------------------

    async def tenants(self, request: Request, session: WebSession) -> Response:
        return await self._tenants_page(session, None, None, 200)

    async def _tenants_page(
        self, session: WebSession, issued: IssuedKey | None, error: str | None, status: int
    ) -> Response:
        store = self.context.store
        tenants = await store.list_tenants()
        rows: list[tuple[Tenant, Totals, int]] = []
        for tenant in tenants:
            totals = sum_totals(await self._totals(tenant.tenant_id))
            keys = await store.list_api_keys(tenant.tenant_id)
            live = sum(1 for key in keys if key.revoked_at is None)
            rows.append((tenant, totals, live))
        return render_page(
            "tenants.html",
            status,
            **self.values(session, rows=rows, issued=issued, error=error),
        )

    async def create_tenant(self, request: Request, session: WebSession) -> Response:
        fields: dict[str, str] = request.state.form
        try:
            tenant_id = TenantId(fields.get("tenant_id", "").strip())
            tenant = await self.context.store.create_tenant(tenant_id)
        except (InvalidInput, LLMSessionError) as error:
            status = PROBLEM_TYPES[problem_for(error).kind][0]
            return await self._tenants_page(session, None, str(error), status)
        issued = await issue_key(self.context.store, tenant.tenant_id)
        return await self._tenants_page(session, issued, None, 201)

    async def tenant_page(self, request: Request, session: WebSession) -> Response:
        return await self._tenant_page(request, session, None, 200)

    async def _tenant_page(
        self, request: Request, session: WebSession, issued: IssuedKey | None, status: int
    ) -> Response:
        store = self.context.store
        tenant = await store.get_tenant(TenantId(request.path_params["tenant_id"]))
        keys = await store.list_api_keys(tenant.tenant_id)
        totals = sum_totals(await self._totals(tenant.tenant_id))
        return render_page(
            "tenant.html",
            status,
            **self.values(session, tenant=tenant, keys=keys, totals=totals, issued=issued),
        )

    async def issue_key(self, request: Request, session: WebSession) -> Response:
        tenant = TenantId(request.path_params["tenant_id"])
        issued = await issue_key(self.context.store, tenant)
        # The new key is in this page only: not in a URL, a cookie or a redirect.
        return await self._tenant_page(request, session, issued, 201)

    async def revoke_key(self, request: Request, session: WebSession) -> Response:
        key_id = request.path_params["key_id"]
        if not (1 <= len(key_id) <= 64 and key_id.isascii() and key_id.isalnum()):
            raise NotFoundError(f"no API key {key_id[:80]!r}")
        info = await self.context.store.revoke_api_key(key_id)
        self.context.keys.forget_key(key_id)
        return RedirectResponse(f"/ui/tenants/{info.tenant_id.value}", 303)


_CSRF_REFUSED = (
    "the form's CSRF token is missing or does not belong to this sign-in; "
    "reload the page and send the form again"
)


async def _form(request: Request) -> dict[str, str]:
    """The fields of an HTML form post (application/x-www-form-urlencoded)."""
    body = await request.body()
    if not body:
        # No fields at all: the CSRF check then refuses it like any form without a token.
        return {}
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise _Refused(
            415 if media else 400,
            f"a form post must be application/x-www-form-urlencoded, got {media[:80]!r}",
        )
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise _Refused(400, "the form is not UTF-8") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if len(value) > _MAX_FORM_FIELD:
            raise _Refused(422, f"form field {name[:40]!r} is longer than {_MAX_FORM_FIELD}")
        fields.setdefault(name, value)
    return fields


def _set_cookie(
    response: Response,
    request: Request,
    name: str,
    value: str,
    max_age: int,
    *,
    path: str = "/ui",
) -> None:
    # Secure whenever the page itself came over https (directly, or through a proxy
    # uvicorn trusts with --forwarded-allow-ips); on plain http a Secure cookie would
    # never come back.
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def ui_routes(context: AppContext) -> APIRouter:
    """The /ui routes of one app (left out of the OpenAPI document)."""
    ui = _Dashboard(context)
    router = APIRouter(prefix="/ui", include_in_schema=False, redirect_slashes=False)

    def add(path: str, handler: Handler, method: str = "GET") -> None:
        router.add_api_route(path, handler, methods=[method], name=f"ui_{handler.__name__}")

    add("/sign-in", ui.sign_in_form)
    add("/sign-in", ui.sign_in, "POST")
    add("/sign-out", ui.page(ui.sign_out, form=True), "POST")
    add("", ui.page(ui.overview))
    add("/sessions", ui.page(ui.sessions))
    add("/sessions/{session_id}", ui.page(ui.session_page))
    add("/sessions/{session_id}/close", ui.page(ui.close_form))
    add("/sessions/{session_id}/close", ui.page(ui.close, form=True), "POST")
    add("/tenants", ui.page(ui.tenants, admin_only=True))
    add("/tenants", ui.page(ui.create_tenant, admin_only=True, form=True), "POST")
    add("/tenants/{tenant_id}", ui.page(ui.tenant_page, admin_only=True))
    add("/tenants/{tenant_id}/keys", ui.page(ui.issue_key, admin_only=True, form=True), "POST")
    add("/keys/{key_id}/revoke", ui.page(ui.revoke_key, admin_only=True, form=True), "POST")
    return router
