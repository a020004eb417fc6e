"""The Python clients against the real app: over loopback HTTP, and in-process over ASGI.

The server runs with a MemoryStore on a manual clock, so expiry is tested without
sleeping. Every error is compared with the one the same call raises against a
local store: a client user must not be able to tell the two apart.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest
import uvicorn

from llmsession import (
    Active,
    AsyncClient,
    AuthenticationError,
    Client,
    Closed,
    ConflictError,
    Created,
    IdempotencyConflict,
    InvalidIdentifier,
    InvalidInput,
    LLMSessionError,
    NotFoundError,
    SessionExpiredError,
    SessionId,
    SessionRecord,
    StoreError,
    TenantId,
    Timestamp,
    WrongStateError,
    is_active,
)
from llmsession.client import (
    ApiError,
    ApiKeyView,
    IssuedApiKey,
    NewTenant,
    RecordedRound,
    ServiceUnreachable,
    SessionView,
)
from llmsession.clock import ManualClock
from llmsession.cost import Cost
from llmsession.server import ServerSettings, create_app
from llmsession.store import GroupKey, Page, Round, SessionStore, Tenant, Totals
from llmsession.store.memory import MemoryStore
from llmsession.store.models import TimeBucket

ADMIN_KEY = "admin-key-for-client-tests-0123456789"
START = Timestamp.parse("2026-01-01T00:00:00Z")


@dataclass
class Live:
    """A real server on a loopback port, with its store and clock."""

    url: str
    store: MemoryStore
    clock: ManualClock


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    clock = ManualClock(START)
    store = MemoryStore(clock=clock)
    settings = ServerSettings(store_url="memory://", admin_key=ADMIN_KEY)
    app = create_app(settings, store=store, clock=clock)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        assert time.monotonic() < deadline, "the server did not start within 15 s"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Live(f"http://127.0.0.1:{port}", store, clock)
    finally:
        server.should_exit = True
        thread.join(15)


@pytest.fixture
def admin(live: Live) -> Iterator[Client]:
    with Client(live.url, api_key=ADMIN_KEY) as client:
        yield client


@dataclass
class TenantClient:
    tenant_id: TenantId
    key_id: str
    client: Client


@pytest.fixture
def tenant(live: Live, admin: Client) -> Iterator[TenantClient]:
    new = admin.create_tenant(f"t-{uuid.uuid4().hex[:12]}")
    with Client(live.url, api_key=new.api_key) as client:
        yield TenantClient(new.tenant.tenant_id, new.key_id, client)


def local_error(scenario: Callable[[SessionStore, TenantId], Awaitable[object]]) -> LLMSessionError:
    """The error a scenario raises against a local store: what the client must raise too."""

    async def run() -> LLMSessionError:
        store = MemoryStore(clock=ManualClock(START))
        try:
            await scenario(store, TenantId("local"))
        except LLMSessionError as error:
            return error
        raise AssertionError("the scenario raised nothing against the local store")

    return asyncio.run(run())


def assert_same_error(remote: BaseException, local: LLMSessionError) -> None:
    assert type(remote) is type(local)
    assert isinstance(remote, WrongStateError)
    assert isinstance(local, WrongStateError)
    assert (remote.method, remote.required, remote.actual) == (
        local.method,
        local.required,
        local.actual,
    )
    assert str(remote) == str(local)


def stored_record(live: Live, tenant_id: TenantId, session_id: SessionId) -> SessionRecord:
    return asyncio.run(live.store.get(tenant_id, session_id)).record


def new_active(client: Client, **extra: int) -> SessionView:
    view = client.create_session(provider_id="openai", model="gpt-4o", initial_tokens=1000, **extra)
    return client.activate_session(view.session_id)


# -- sessions: every method returns the core's types -----------------------------------------


def test_session_lifecycle_returns_the_core_record(live: Live, tenant: TenantClient) -> None:
    client = tenant.client
    created = client.create_session(
        provider_id="openai", model="gpt-4o", initial_tokens=1200, ttl_seconds=600
    )
    assert isinstance(created, SessionView)
    assert created.state is Created
    assert created.record.tenant_id == tenant.tenant_id
    assert created.ttl_seconds == 600
    assert created.expires_at is None
    assert created.record == stored_record(live, tenant.tenant_id, created.session_id)

    active = client.activate_session(created.session_id)
    assert active.state is Active
    assert active.expires_at == live.clock.now.plus_seconds(600)

    live.clock.advance(5)
    first = client.record_round(created.session_id, 100)
    second = client.record_round(str(created.session_id), 50)
    assert isinstance(first, RecordedRound)
    assert first.round == Round(created.session_id, 1, 100, live.clock.now, None)
    assert not first.replayed
    assert second.round.seq == 2
    assert second.session.record.round_count == 2
    assert second.session.record.delta_tokens == 150
    assert second.session.tokens_saved == 2 * 1200 - 150
    assert second.session.expires_at == live.clock.now.plus_seconds(600)

    fetched = client.get_session(created.session_id)
    assert fetched.record == stored_record(live, tenant.tenant_id, created.session_id)
    handle = fetched.session()
    assert is_active(handle)
    assert handle.tokens_saved() == fetched.tokens_saved

    closed = client.close_session(created.session_id)
    assert closed.state is Closed
    assert closed.record.closed_at == live.clock.now
    assert closed.expires_at is None
    assert closed.record == stored_record(live, tenant.tenant_id, created.session_id)


def test_a_non_ascii_idempotency_key_is_refused_before_sending(tenant: TenantClient) -> None:
    client = tenant.client
    view = new_active(client)
    with pytest.raises(InvalidIdentifier, match="must be ASCII"):
        client.record_round(view.session_id, 70, idempotency_key="r\u00e9try")
    assert client.get_session(view.session_id).record.round_count == 0


def test_idempotent_round_is_replayed_not_counted(tenant: TenantClient) -> None:
    client = tenant.client
    view = new_active(client)
    first = client.record_round(view.session_id, 70, idempotency_key="retry-1")
    again = client.record_round(view.session_id, 70, idempotency_key="retry-1")
    assert not first.replayed
    assert again.replayed
    assert again.round == first.round
    assert again.round.idempotency_key == "retry-1"
    assert client.get_session(view.session_id).record.round_count == 1

    with pytest.raises(IdempotencyConflict, match="retry-1"):
        client.record_round(view.session_id, 71, idempotency_key="retry-1")
    assert client.get_session(view.session_id).record.round_count == 1
    # After more rounds and a close, a retry still gets the first answer.
    client.record_round(view.session_id, 5)
    client.close_session(view.session_id)
    late = client.record_round(view.session_id, 70, idempotency_key="retry-1")
    assert (late.replayed, late.round, late.session) == (True, first.round, first.session)
    assert late.session.state is Active


def test_list_sessions_filters_and_cursor(live: Live, tenant: TenantClient) -> None:
    client = tenant.client
    ids: list[SessionId] = []
    times: list[Timestamp] = []
    for i in range(5):
        live.clock.advance(1)
        times.append(live.clock.now)
        view = client.create_session(
            provider_id="openai" if i % 2 == 0 else "anthropic",
            model=f"m{i % 3}",
            initial_tokens=10,
        )
        ids.append(view.session_id)
    client.activate_session(ids[1])
    client.activate_session(ids[3])
    newest_first = ids[::-1]

    first = client.list_sessions(limit=2)
    assert isinstance(first, Page)
    assert [s.session_id for s in first.items] == newest_first[:2]
    assert first.next_cursor is not None
    second = client.list_sessions(limit=2, cursor=first.next_cursor)
    assert [s.session_id for s in second.items] == newest_first[2:4]
    third = client.list_sessions(limit=2, cursor=second.next_cursor)
    assert [s.session_id for s in third.items] == newest_first[4:]
    assert third.next_cursor is None

    assert [s.session_id for s in client.iter_sessions(page_size=2)] == newest_first
    assert [s.session_id for s in client.iter_sessions(state=Active)] == [ids[3], ids[1]]
    assert [s.session_id for s in client.iter_sessions(state="created")] == [
        ids[4],
        ids[2],
        ids[0],
    ]
    assert [s.session_id for s in client.iter_sessions(provider_id="anthropic")] == [
        ids[3],
        ids[1],
    ]
    assert [s.session_id for s in client.iter_sessions(model="m0")] == [ids[3], ids[0]]
    between = client.iter_sessions(
        created_after=times[0], created_before=times[4].to_datetime(), page_size=1
    )
    assert [s.session_id for s in between] == [ids[3], ids[2], ids[1]]


def test_rounds_pages_and_iterator(tenant: TenantClient) -> None:
    client = tenant.client
    view = new_active(client)
    for delta in range(1, 6):
        client.record_round(view.session_id, delta, idempotency_key=f"k{delta}")
    page = client.list_rounds(view.session_id, limit=2)
    assert [r.seq for r in page.items] == [1, 2]
    assert page.next_cursor is not None
    following = client.list_rounds(view.session_id, cursor=page.next_cursor, limit=2)
    assert [r.seq for r in following.items] == [3, 4]
    later = client.list_rounds(view.session_id, after=4)
    assert [(r.seq, r.delta_tokens) for r in later.items] == [(5, 5)]
    assert later.next_cursor is None
    rounds = list(client.iter_rounds(view.session_id, page_size=2))
    assert [(r.seq, r.delta_tokens, r.idempotency_key) for r in rounds] == [
        (n, n, f"k{n}") for n in range(1, 6)
    ]
    since = client.iter_rounds(view.session_id, after=2, page_size=2)
    assert [r.seq for r in since] == [3, 4, 5]
    with pytest.raises(InvalidInput, match="not one this service gave out"):
        client.list_rounds(view.session_id, cursor="4")
    assert all(r.session_id == view.session_id for r in rounds)


def test_stats_are_the_store_totals(live: Live, tenant: TenantClient) -> None:
    client = tenant.client
    a = new_active(client)
    client.record_round(a.session_id, 10)
    client.create_session(provider_id="anthropic", model="claude", initial_tokens=5)
    groupings: list[list[GroupKey]] = [[], ["provider"], ["provider", "model"], ["model"]]
    for group_by in groupings:
        remote = client.stats(group_by)
        assert all(isinstance(t, Totals) for t in remote)
        assert remote == asyncio.run(live.store.totals(tenant.tenant_id, group_by))
    overall = client.stats()
    assert overall == [
        Totals(None, None, {"created": 1, "active": 1, "closed": 0, "expired": 0}, 1, 10, 990)
    ]


def test_timeseries_are_the_store_series(live: Live, tenant: TenantClient) -> None:
    client = tenant.client
    # The live server's clock is shared with the tests before this one.
    t0 = live.clock.now
    a = new_active(client)
    client.record_round(a.session_id, 10)
    live.clock.advance(3600)
    client.create_session(provider_id="anthropic", model="claude", initial_tokens=5)
    b = new_active(client)
    client.record_round(b.session_id, 2000)  # saved below 0
    end = live.clock.now.plus_seconds(1)
    groupings: list[list[GroupKey]] = [[], ["provider"], ["provider", "model"], ["model"]]
    for bucket in ("hour", "day"):
        for group_by in groupings:
            remote = client.timeseries(bucket=bucket, start=t0, end=end, group_by=group_by)
            local = asyncio.run(
                live.store.timeseries(
                    tenant.tenant_id, bucket=bucket, start=t0, end=end, group_by=group_by
                )
            )
            assert remote == local
            assert remote
            assert all(isinstance(b, TimeBucket) for b in remote)
    hours = client.timeseries(bucket="hour", start=t0.to_datetime(), end=end)
    hour = t0.epoch_micros - t0.epoch_micros % 3_600_000_000
    assert [(b.start.epoch_micros - hour, b.rounds, b.tokens_saved) for b in hours] == [
        (0, 1, 1000 - 10),
        (3_600_000_000, 1, 1000 - 2000),
    ]
    with pytest.raises(InvalidInput, match="spans at most 31 days"):
        client.timeseries(bucket="hour", start=START, end=START.plus_seconds(32 * 86400))
    with pytest.raises(InvalidInput, match="got the string 'model'"):
        client.timeseries(bucket="day", start=START, end=end, group_by="model")  # type: ignore[arg-type]


# -- errors: exactly the core's ------------------------------------------------------------


def test_wrong_state_is_the_core_error(tenant: TenantClient) -> None:
    client = tenant.client
    created = client.create_session(provider_id="p", model="m", initial_tokens=10)

    async def round_on_created(store: SessionStore, t: TenantId) -> None:
        stored = await store.create(t, provider_id="p", model="m", initial_tokens=10)
        await store.record_round(t, stored.record.session_id, 1)

    with pytest.raises(WrongStateError) as raised:
        client.record_round(created.session_id, 1)
    assert_same_error(raised.value, local_error(round_on_created))

    async def close_created(store: SessionStore, t: TenantId) -> None:
        stored = await store.create(t, provider_id="p", model="m", initial_tokens=10)
        await store.close(t, stored.record.session_id)

    with pytest.raises(WrongStateError) as raised:
        client.close_session(created.session_id)
    assert_same_error(raised.value, local_error(close_created))

    client.activate_session(created.session_id)

    async def activate_twice(store: SessionStore, t: TenantId) -> None:
        stored = await store.create(t, provider_id="p", model="m", initial_tokens=10)
        await store.activate(t, stored.record.session_id)
        await store.activate(t, stored.record.session_id)

    with pytest.raises(WrongStateError) as raised:
        client.activate_session(created.session_id)
    assert_same_error(raised.value, local_error(activate_twice))

    client.close_session(created.session_id)

    async def round_on_closed(store: SessionStore, t: TenantId) -> None:
        stored = await store.create(t, provider_id="p", model="m", initial_tokens=10)
        await store.activate(t, stored.record.session_id)
        await store.close(t, stored.record.session_id)
        await store.record_round(t, stored.record.session_id, 1)

    with pytest.raises(WrongStateError) as raised:
        client.record_round(created.session_id, 1)
    assert_same_error(raised.value, local_error(round_on_closed))


def test_expired_session_is_the_core_error(live: Live, tenant: TenantClient) -> None:
    client = tenant.client
    view = new_active(client, ttl_seconds=30)
    live.clock.advance(31)

    async def late_round(store: SessionStore, t: TenantId) -> None:
        stored = await store.create(
            t, provider_id="p", model="m", initial_tokens=10, ttl_seconds=30
        )
        await store.activate(t, stored.record.session_id)
        assert isinstance(store.clock, ManualClock)
        store.clock.advance(31)
        await store.record_round(t, stored.record.session_id, 1)

    with pytest.raises(SessionExpiredError) as raised:
        client.record_round(view.session_id, 1)
    assert_same_error(raised.value, local_error(late_round))

    expired = client.get_session(view.session_id)
    assert expired.record.expired_at == view.expires_at
    with pytest.raises(SessionExpiredError) as raised:
        client.close_session(view.session_id)
    assert (raised.value.method, raised.value.required, raised.value.actual) == (
        "close",
        "active",
        "expired",
    )


def test_missing_and_foreign_sessions_are_not_found(live: Live, admin: Client) -> None:
    one = admin.create_tenant(f"a-{uuid.uuid4().hex[:8]}")
    two = admin.create_tenant(f"b-{uuid.uuid4().hex[:8]}")
    with Client(live.url, api_key=one.api_key) as a, Client(live.url, api_key=two.api_key) as b:
        theirs = a.create_session(provider_id="p", model="m", initial_tokens=1)
        missing = SessionId.generate(live.clock.now)
        for target in (missing, theirs.session_id):
            with pytest.raises(NotFoundError):
                b.get_session(target)
            with pytest.raises(NotFoundError):
                b.activate_session(target)
            with pytest.raises(NotFoundError):
                b.record_round(target, 1)
            with pytest.raises(NotFoundError):
                b.close_session(target)
            with pytest.raises(NotFoundError):
                b.list_rounds(target)
        assert a.get_session(theirs.session_id).state is Created


def test_bad_input_is_invalid_input(tenant: TenantClient) -> None:
    client = tenant.client
    view = new_active(client)
    with pytest.raises(InvalidInput, match="delta_tokens") as raised:
        client.record_round(view.session_id, -1)
    assert "delta_tokens" in str(raised.value) + "".join(getattr(raised.value, "__notes__", []))
    with pytest.raises(InvalidInput):
        client.record_round(view.session_id, 2**63)
    with pytest.raises(InvalidInput):
        client.create_session(provider_id="", model="m", initial_tokens=1)
    with pytest.raises(InvalidInput):
        client.create_session(provider_id="p", model="m", initial_tokens=1, ttl_seconds=0)
    with pytest.raises(InvalidInput, match="limit"):
        client.list_sessions(limit=0)
    with pytest.raises(InvalidInput, match="cursor"):
        client.list_sessions(cursor="not-a-cursor")
    with pytest.raises(InvalidInput):
        client.list_sessions(state="sleeping")
    with pytest.raises(InvalidInput):
        client.list_rounds(view.session_id, after=-1)
    assert client.get_session(view.session_id).record.round_count == 0


def test_ids_in_paths_and_headers_are_checked_before_sending(tenant: TenantClient) -> None:
    client = tenant.client
    with pytest.raises(InvalidIdentifier, match="not a session id"):
        client.get_session("../admin/tenants")
    with pytest.raises(InvalidIdentifier, match="tenant id"):
        client.issue_key("../x")
    with pytest.raises(InvalidInput, match="idempotency key"):
        client.record_round(SessionId.generate(START), 1, idempotency_key="a\nb")
    # HTTP drops white space around header values: the server would record "retry-1".
    with pytest.raises(InvalidInput, match="must not start or end with white space"):
        client.record_round(SessionId.generate(START), 1, idempotency_key="retry-1 ")
    with pytest.raises(InvalidInput, match="api_key"):
        Client("http://127.0.0.1:1", api_key="two words")
    with pytest.raises(InvalidInput, match="base_url"):
        Client("127.0.0.1:8080")


def test_authentication_errors(live: Live, admin: Client, tenant: TenantClient) -> None:
    with Client(live.url) as anonymous, pytest.raises(AuthenticationError):
        anonymous.list_sessions()
    with Client(live.url, api_key="lls_nope_nope") as unknown, pytest.raises(AuthenticationError):
        unknown.list_sessions()
    with pytest.raises(AuthenticationError):
        tenant.client.list_tenants()  # a tenant key on an admin route: 403
    with pytest.raises(AuthenticationError):
        admin.list_sessions()  # the admin key on a session route: 403


def test_ambiguous_credentials_are_an_authentication_error(live: Live) -> None:
    # A second Authorization header added on the way (a proxy, say): the server refuses.
    def add_header(request: httpx.Request) -> httpx.Response:
        request.headers = httpx.Headers(
            [*request.headers.multi_items(), ("Authorization", "Bearer x")]
        )
        with httpx.Client() as plain:
            return plain.send(request)

    with (
        Client(live.url, api_key="lls_a_b", transport=httpx.MockTransport(add_header)) as client,
        pytest.raises(AuthenticationError, match="Authorization"),
    ):
        client.list_sessions()


def test_admin_tenants_and_keys(live: Live, admin: Client) -> None:
    name = f"adm-{uuid.uuid4().hex[:8]}"
    new = admin.create_tenant(TenantId(name))
    assert isinstance(new, NewTenant)
    assert new.tenant.tenant_id == TenantId(name)
    assert new.api_key.startswith(f"lls_{new.key_id}_")
    assert isinstance(new.tenant, Tenant)
    assert new.tenant in admin.list_tenants()
    with pytest.raises(ConflictError, match=name):
        admin.create_tenant(name)

    second = admin.issue_key(name)
    assert isinstance(second, IssuedApiKey)
    assert second.key.tenant_id == TenantId(name)
    keys = admin.list_keys(name)
    # Oldest first; the manual clock stands still, so both keys share a creation time.
    assert {k.key_id for k in keys} == {new.key_id, second.key.key_id}
    assert all(isinstance(k, ApiKeyView) and k.revoked_at is None for k in keys)

    with Client(live.url, api_key=second.api_key) as client:
        client.create_session(provider_id="p", model="m", initial_tokens=1)
        revoked = admin.revoke_key(second.key.key_id)
        assert revoked.revoked_at is not None
        assert admin.revoke_key(second.key.key_id) == revoked  # idempotent
        with pytest.raises(AuthenticationError, match="revoked"):
            client.list_sessions()
    with Client(live.url, api_key=new.api_key) as still:
        assert len(still.list_sessions().items) == 1

    with pytest.raises(NotFoundError):
        admin.revoke_key("0123456789abcdef")
    with pytest.raises(InvalidInput, match=r"'\.\.'"):
        admin.revoke_key("..")  # the dots reach the server as the key id, not as a path
    with pytest.raises(NotFoundError):
        admin.issue_key("no-such-tenant")
    with pytest.raises(NotFoundError):
        admin.list_keys("no-such-tenant")


def test_health_and_ready(admin: Client) -> None:
    assert admin.health() is True
    assert admin.ready() is True


def test_unreachable_server() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        Client(f"http://127.0.0.1:{port}", timeout=2) as client,
        pytest.raises(ServiceUnreachable, match=str(port)),
    ):
        client.health()


# -- answers outside the contract (a proxy, a wrong base_url): served by a stand-in ----------


def _answering(status: int, body: bytes, content_type: str = "application/json") -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"Content-Type": content_type})

    return Client("http://stand-in", transport=httpx.MockTransport(handler))


def test_answers_outside_the_contract_raise_api_error() -> None:
    with _answering(502, b"<html>Bad Gateway</html>", "text/html") as client:
        with pytest.raises(ApiError, match="502") as raised:
            client.list_sessions()
        assert raised.value.status_code == 502
    with (
        _answering(200, b'{"items": [{"session_id": "x"}], "next_cursor": null}') as client,
        pytest.raises(ApiError, match="does not document"),
    ):
        client.list_sessions()
    # A wrong-state problem without the method and states it promises.
    with (
        _answering(409, b'{"type": "urn:llmsession:problem:wrong-state"}') as client,
        pytest.raises(ApiError, match="409"),
    ):
        client.activate_session(SessionId.generate(START))
    with (
        _answering(500, b'{"type": "urn:llmsession:problem:internal", "detail": "boom"}') as c,
        pytest.raises(ApiError, match="boom"),
    ):
        c.health()


def _stats_with_cost(cost: object) -> bytes:
    usage = dict.fromkeys(
        (
            "input_tokens",
            "cached_input_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
            "rounds_without_usage",
        ),
        0,
    )
    group = {
        "provider_id": None,
        "model": None,
        "sessions": {"created": 0, "active": 1, "closed": 0, "expired": 0},
        "rounds": 1,
        "delta_tokens": 0,
        "tokens_saved": 0,
        "usage": usage,
        "cost": cost,
    }
    return json.dumps({"groups": [group]}).encode()


def test_costs_are_read_as_exact_decimals_and_checked() -> None:
    cost = {"currency": "EUR", "paid": "0.000123", "stateless": "0.0005", "saved": "0.000377"}
    with _answering(200, _stats_with_cost(cost)) as client:
        (totals,) = client.stats()
    assert totals.cost == Cost("EUR", Decimal("0.000123"), Decimal("0.0005"))
    with _answering(200, _stats_with_cost(None)) as client:
        assert client.stats()[0].cost is None
    for bad, says in [
        ({**cost, "saved": "0.0004"}, "is not cost.stateless - cost.paid"),
        ({**cost, "paid": 0.000123}, "cost.paid must be a decimal string"),
        ({**cost, "currency": "euro"}, "ISO 4217"),
        ({"currency": "EUR", "paid": "1"}, "member 'stateless' is missing"),
    ]:
        with _answering(200, _stats_with_cost(bad)) as client, pytest.raises(ApiError, match=says):
            client.stats()


def test_iterators_stop_on_a_cursor_that_does_not_move() -> None:
    with (
        _answering(200, b'{"items": [], "next_cursor": "again"}') as client,
        pytest.raises(ApiError, match="does not move forward"),
    ):
        list(client.iter_sessions())
    with (
        _answering(200, b'{"items": [], "next_cursor": "0"}') as client,
        pytest.raises(ApiError, match=r"rounds page for cursor None .* does not move forward"),
    ):
        list(client.iter_rounds(SessionId.generate(START)))


# -- the async client ----------------------------------------------------------------------


async def test_async_client_covers_every_method(live: Live) -> None:
    async with AsyncClient(live.url, api_key=ADMIN_KEY) as admin:
        assert await admin.health()
        assert await admin.ready()
        name = f"async-{uuid.uuid4().hex[:8]}"
        new = await admin.create_tenant(name)
        assert new.tenant in await admin.list_tenants()
        extra = await admin.issue_key(name)
        keys = await admin.list_keys(name)
        assert {k.key_id for k in keys} == {new.key_id, extra.key.key_id}
        assert (await admin.revoke_key(extra.key.key_id)).revoked_at is not None

    async with AsyncClient(live.url, api_key=new.api_key, timeout=5) as client:
        created = await client.create_session(provider_id="p", model="m", initial_tokens=100)
        await client.create_session(provider_id="q", model="m", initial_tokens=1)
        active = await client.activate_session(created.session_id)
        assert active.state is Active
        for n in range(3):
            await client.record_round(created.session_id, 10, idempotency_key=f"a{n}")
        replay = await client.record_round(created.session_id, 10, idempotency_key="a0")
        assert replay.replayed
        assert replay.round.seq == 1
        assert replay.session.record.round_count == 1
        assert [r.seq for r in (await client.list_rounds(created.session_id, after=1)).items] == [
            2,
            3,
        ]
        one = await client.list_rounds(created.session_id, limit=1)
        rest = await client.list_rounds(created.session_id, cursor=one.next_cursor)
        assert ([r.seq for r in rest.items], rest.next_cursor) == ([2, 3], None)
        assert [r.seq async for r in client.iter_rounds(created.session_id, page_size=1)] == [
            1,
            2,
            3,
        ]
        page = await client.list_sessions(state=Active)
        assert [s.session_id for s in page.items] == [created.session_id]
        assert len([s async for s in client.iter_sessions(page_size=1)]) == 2
        fetched = await client.get_session(created.session_id)
        assert fetched.tokens_saved == 3 * 100 - 30
        stats = await client.stats(["provider"])
        assert [(t.provider_id, t.rounds) for t in stats] == [("p", 3), ("q", 0)]
        series = await client.timeseries(
            bucket="day", start=START, end=START.plus_seconds(86400), group_by=["provider"]
        )
        assert [(b.provider_id, b.rounds, b.sessions_started) for b in series] == [
            ("p", 3, 1),
            ("q", 0, 1),
        ]
        closed = await client.close_session(created.session_id)
        assert closed.state is Closed
        with pytest.raises(WrongStateError) as raised:
            await client.record_round(created.session_id, 1)
        assert (raised.value.method, raised.value.required, raised.value.actual) == (
            "record_delta",
            "active",
            "closed",
        )
        with pytest.raises(NotFoundError):
            await client.get_session(SessionId.generate(START))


@pytest.fixture
async def in_process() -> AsyncIterator[tuple[httpx.ASGITransport, MemoryStore]]:
    store = MemoryStore(clock=ManualClock(START))
    app = create_app(ServerSettings(store_url="memory://", admin_key=ADMIN_KEY), store=store)
    async with app.router.lifespan_context(app):
        yield httpx.ASGITransport(app=app), store


async def test_async_client_over_an_asgi_transport(
    in_process: tuple[httpx.ASGITransport, MemoryStore],
) -> None:
    transport, store = in_process
    async with AsyncClient("http://app", api_key=ADMIN_KEY, transport=transport) as admin:
        new = await admin.create_tenant("inproc")
    async with AsyncClient("http://app", api_key=new.api_key, transport=transport) as client:
        view = await client.create_session(provider_id="p", model="m", initial_tokens=3)
        assert view.record == (await store.get(TenantId("inproc"), view.session_id)).record
        # A store that stops answering: every call is a StoreError, readiness goes false.
        await store.aclose()
        with pytest.raises(StoreError):
            await client.get_session(view.session_id)
        assert await client.ready() is False
        assert await client.health() is True


def test_sync_and_async_clients_offer_the_same_methods() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(member)
            for name, member in vars(cls).items()
            if callable(member) and not name.startswith("_") and name not in ("close", "aclose")
        }

    sync, asynchronous = public(Client), public(AsyncClient)
    assert sync.keys() == asynchronous.keys()
    for name, signature in sync.items():
        assert list(signature.parameters) == list(asynchronous[name].parameters), name
