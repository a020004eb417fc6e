"""What only the Redis store has: its URL, key layout, scripts, counters and durability.

The behaviour every backend shares is in test_conformance.py. Tests that restart
or flush a server run their own redis-server on a free loopback port in a
temporary directory, never the shared one.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]  # pyright: ignore[reportMissingTypeStubs]
import pytest
import redis.asyncio as aioredis

from llmsession.clock import ManualClock
from llmsession.errors import (
    ConflictError,
    InvalidInput,
    LLMSessionError,
    NotFoundError,
    SchemaVersionError,
    SessionExpiredError,
    StoreError,
    WrongStateError,
)
from llmsession.ids import SessionId, TenantId
from llmsession.states import ALL_STATES, Active, Closed, Created, SessionExpired, state_named
from llmsession.store import (
    RoundResult,
    SessionQuery,
    SessionStore,
    StoredSession,
    Totals,
    open_store,
)
from llmsession.store import redis as redis_module
from llmsession.store.memory import MemoryStore
from llmsession.store.models import HistoryTurn, Turn, TurnItems, UsageTotals
from llmsession.store.redis import (
    DEFAULT_PREFIX,
    SCHEMA_VERSION,
    RedisStore,
    _parse_url,
    durability_warnings,
)
from llmsession.store.redis_schema import (
    CAS,
    LIST_STATE,
    UPGRADE_KEYED,
    UPGRADE_LISTED,
    CasBatch,
    RedisKeys,
    Script,
    group_head,
    group_tail,
    member_id,
    parse_counters,
    round_json,
    state_metric,
)
from llmsession.timestamps import Timestamp
from llmsession.tokens import MAX_TOKENS
from llmsession.usage import Usage
from tests.conftest import services_required
from tests.store.conftest import T0, all_sessions
from tests.store.workload import start_alike

pytestmark = pytest.mark.redis

ACME = TenantId("acme")
OTHER = TenantId("other")


def _prefix(url: str) -> str:
    return _parse_url(url).prefix


async def _keys_of(url: str) -> set[str]:
    client = aioredis.Redis.from_url(url.split("?", maxsplit=1)[0], decode_responses=True)
    try:
        return {key async for key in client.scan_iter(match=f"{_prefix(url)}*", count=1000)}
    finally:
        await client.aclose()


async def _raw(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url.split("?", maxsplit=1)[0], decode_responses=True)


async def _active(
    store: SessionStore, tenant: TenantId = ACME, *, initial_tokens: int = 1000
) -> SessionId:
    created = await store.create(
        tenant, provider_id="openai", model="gpt-4o", initial_tokens=initial_tokens
    )
    await store.activate(tenant, created.record.session_id)
    return created.record.session_id


# -- a private redis-server ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PrivateRedis:
    """A redis-server of this test alone: append-only file fsynced on every write."""

    binary: str
    directory: Path
    port: int
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix=durable:"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--daemonize", "no",
                "--repl-diskless-sync-delay", "0",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server on port {self.port} did not answer within 10 s")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; only what was on disk survives."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed, so no private server can be started"
        if services_required():
            pytest.fail(f"{message}, and LLMSESSION_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(message)
    return binary


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(_redis_server(), tmp_path / "primary", _free_port())
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def replica(private_redis: PrivateRedis, tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    """A replica of ``private_redis``, in sync when the test starts."""
    replicaof = ("--replicaof", "127.0.0.1", str(private_redis.port))
    server = PrivateRedis(_redis_server(), tmp_path / "replica", _free_port(), replicaof)
    server.directory.mkdir()
    server.start()
    client = await _raw(server.url)
    try:
        for _ in range(200):
            if (await client.info("replication")).get("master_link_status") == "up":
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the replica did not sync with its primary within 10 s")
        yield server
    finally:
        await client.aclose()
        server.stop()


@pytest.fixture
async def redis_store(redis_url: str, clock: ManualClock) -> AsyncIterator[RedisStore]:
    store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=3600)
    try:
        yield store
    finally:
        await store.aclose()


# -- URL and opening --------------------------------------------------------------


def test_store_options_are_taken_out_of_the_url() -> None:
    options = _parse_url(
        "redis://127.0.0.1:6379/2?prefix=a:b:&socket_timeout=5&wait_replicas=2&wait_timeout_ms=50"
    )
    assert options.prefix == "a:b:"
    assert options.client_url == "redis://127.0.0.1:6379/2?socket_timeout=5"
    assert options.where == "Redis at 127.0.0.1:6379/2"
    assert (options.wait_replicas, options.wait_timeout_ms) == (2, 50)
    defaults = _parse_url("redis://:secret@db.example/0")
    assert (defaults.prefix, defaults.where) == (DEFAULT_PREFIX, "Redis at db.example:6379/0")
    assert (defaults.wait_replicas, defaults.wait_timeout_ms) == (0, 1000)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1/0?prefix=a&prefix=b", "prefix more than once"),
        ("redis://127.0.0.1/0?wait_replicas=-1", "wait_replicas must be an integer >= 0"),
        ("redis://127.0.0.1/0?wait_timeout_ms=0", "wait_timeout_ms must be an integer >= 1"),
        ("redis://127.0.0.1/0?prefix=", "prefix '' is not allowed"),
        ("redis://127.0.0.1/0?prefix=a%20b", "prefix 'a b' is not allowed"),
        ("redis://127.0.0.1/0?decode_responses=no", "decode_responses"),
        ("redis://127.0.0.1/0?socket_timeout=soon", "socket_timeout"),
        ("redis://127.0.0.1/0?bogus=1", "redis-py takes no option 'bogus'"),
        ("redis://127.0.0.1:notaport/0", "'notaport'"),
        # redis-py would take database 0.
        ("redis://127.0.0.1/abc", "names the database by its number, such as /0; got '/abc'"),
    ],
)
async def test_bad_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        await RedisStore.open(url, clock=ManualClock(Timestamp(0)), default_ttl_seconds=60)


async def test_unreachable_server_is_a_store_error_without_password() -> None:
    url = f"redis://:hunter2@127.0.0.1:{_free_port()}/0?socket_connect_timeout=2"
    with pytest.raises(StoreError, match=r"Redis at 127\.0\.0\.1") as raised:
        await open_store(url)
    assert "hunter2" not in str(raised.value)


async def test_every_key_is_under_the_prefix(redis_url: str, redis_store: RedisStore) -> None:
    # A tenant id no other test (of any run sharing this Redis) uses.
    tenant = TenantId(f"only-{uuid.uuid4().hex}")
    await redis_store.create_tenant(tenant)
    await redis_store.add_api_key(tenant, uuid.uuid4().hex, b"h")
    session_id = await _active(redis_store, tenant)
    await redis_store.record_round(tenant, session_id, 5, idempotency_key="k")
    client = await _raw(redis_url)
    try:
        touched = {key async for key in client.scan_iter(match=f"*{session_id}*")}
        touched |= {key async for key in client.scan_iter(match=f"*{tenant}*")}
    finally:
        await client.aclose()
    # s: r: i: of the session; of the tenant agg: keys: and ix: for all, of the
    # provider and of the model, and for Active of the (provider, model) group,
    # and the rollup of the day's hours (ts:) and of the period's days (tsd:).
    assert len(touched) == 11
    assert all(key.startswith(_prefix(redis_url)) for key in touched)


async def test_closed_store_refuses_calls(redis_store: RedisStore) -> None:
    await redis_store.aclose()
    with pytest.raises(StoreError, match="closed"):
        await redis_store.ping()
    with pytest.raises(StoreError, match="closed"):
        await redis_store.get(ACME, SessionId.generate(Timestamp(0)))
    await redis_store.aclose()  # closing twice is harmless


# -- schema ----------------------------------------------------------------------------


async def test_newer_schema_is_refused(redis_url: str, clock: ManualClock) -> None:
    client = await _raw(redis_url)
    try:
        await client.set(f"{_prefix(redis_url)}schema", str(SCHEMA_VERSION + 1))
        with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
            await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
        await client.set(f"{_prefix(redis_url)}schema", "banana")
        with pytest.raises(StoreError, match="not a schema version"):
            await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
    finally:
        await client.aclose()


async def test_schema_version_is_written_once(redis_url: str, redis_store: RedisStore) -> None:
    client = await _raw(redis_url)
    try:
        assert await client.get(f"{_prefix(redis_url)}schema") == str(SCHEMA_VERSION)
    finally:
        await client.aclose()


async def test_version_1_data_is_upgraded_on_open(redis_url: str, clock: ManualClock) -> None:
    # Version 1 kept each Active session's member of deadlines at its deadline
    # and had no "due" field: made here from version 2 data.
    store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
    prefix = _prefix(redis_url)
    client = await _raw(redis_url)
    try:
        created = await store.create(ACME, provider_id="p", model="m", initial_tokens=10)
        sessions = [await _active(store) for _ in range(1100)]  # more than a chunk
        closed = await _active(store)
        await store.close(ACME, closed)
        await store.aclose()
        for session_id in sessions:
            await client.hdel(f"{prefix}s:{session_id}", "due")
        await _list_as_version_2(redis_url)
        await client.set(f"{prefix}schema", "1")

        store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
        assert await client.get(f"{prefix}schema") == str(SCHEMA_VERSION)
        await _check_global_indexes(redis_url, store)
        clock.advance(30)
        for session_id in sessions[:10]:
            await store.record_round(ACME, session_id, 1)
        await store.close(ACME, sessions[10])
        clock.advance(31)
        assert await store.sweep(limit=2000) == len(sessions) - 11
        await _check_global_indexes(redis_url, store)
        assert (await store.get(ACME, created.record.session_id)).record.state is Created
    finally:
        await client.aclose()
        await store.aclose()


async def test_version_2_data_is_upgraded_on_open(redis_url: str, clock: ManualClock) -> None:
    store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
    prefix = _prefix(redis_url)
    client = await _raw(redis_url)
    try:
        ids: list[SessionId] = []
        for n in range(1100):  # more than a chunk
            created = await store.create(
                OTHER if n % 7 == 0 else ACME,
                provider_id=f"p{n % 2}",
                model=f"m{n % 3}",
                initial_tokens=10,
            )
            ids.append(created.record.session_id)
            clock.advance(0.001)
            if n % 4:
                await store.activate(created.record.tenant_id, created.record.session_id)
            if n % 4 == 2:
                await store.close(created.record.tenant_id, created.record.session_id)
        queries = [
            SessionQuery(state=state, provider_id=provider, limit=1000)
            for state in (Created, Active, Closed)
            for provider in (None, "p1")
        ]
        before = [await store.list_sessions(t, q) for t in (ACME, OTHER) for q in queries]
        await store.aclose()
        await _list_as_version_2(redis_url)
        await client.set(f"{prefix}schema", "2")

        store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
        assert await client.get(f"{prefix}schema") == str(SCHEMA_VERSION)
        await _check_global_indexes(redis_url, store)
        assert [await store.list_sessions(t, q) for t in (ACME, OTHER) for q in queries] == before
        clock.advance(61)
        assert await store.sweep(limit=2000) == 1100 // 2
        await _check_global_indexes(redis_url, store)
    finally:
        await client.aclose()
        await store.aclose()


async def test_version_3_data_is_upgraded_on_open(redis_url: str, clock: ManualClock) -> None:
    # Version 3 kept a round under an idempotency key as its plain JSON, without
    # the session's delta_tokens and version after it: made here from version 4 data.
    store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
    prefix = _prefix(redis_url)
    client = await _raw(redis_url)
    try:
        answers: list[RoundResult] = []
        for n in range(260):  # more than a chunk
            session_id = await _active(store)
            for turn in range(1 + n % 4):
                clock.advance(0.001)
                key = f"k{turn}" if turn % 2 == 0 else None
                answers.append(
                    await store.record_round(ACME, session_id, n + turn, idempotency_key=key)
                )
            if n % 5 == 0:
                await store.close(ACME, session_id)
        await store.aclose()
        names = [name async for name in client.scan_iter(match=f"{prefix}i:*", count=1000)]
        version_4 = {name: await client.hgetall(name) for name in names}
        for name, entries in version_4.items():
            for key, value in entries.items():
                await client.hset(name, key, json.dumps(json.loads(value)[:4]))
        # One entry stays in version 4 form, as if written since the upgrade began.
        kept_name = names[0]
        await client.hset(kept_name, "k0", '[1, 0, 0, "k0", 1, 2]')
        await client.set(f"{prefix}schema", "3")

        store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
        assert await client.get(f"{prefix}schema") == str(SCHEMA_VERSION)
        assert await client.hget(kept_name, "k0") == '[1, 0, 0, "k0", 1, 2]'
        await client.hset(kept_name, "k0", version_4[kept_name]["k0"])
        assert {name: await client.hgetall(name) for name in names} == version_4
        for first in answers:
            if first.round.idempotency_key is None:
                continue
            again = await store.record_round(
                ACME,
                first.round.session_id,
                first.round.delta_tokens,
                idempotency_key=first.round.idempotency_key,
            )
            assert (again.replayed, again.round, again.session) == (
                True,
                first.round,
                first.session,
            )
    finally:
        await client.aclose()
        await store.aclose()


async def test_the_keyed_upgrade_leaves_an_entry_written_since_it_was_read(
    redis_url: str,
) -> None:
    prefix = _prefix(redis_url)
    client = await _raw(redis_url)
    try:
        await client.hset(f"{prefix}i:x", mapping={"a": "old-a", "b": "newer-b"})
        await client.script_load(UPGRADE_KEYED.source)
        args = ["2", "a", "old-a", "new-a", "b", "old-b", "new-b"]
        await client.evalsha(UPGRADE_KEYED.sha, 1, f"{prefix}i:x", *args)
        assert await client.hgetall(f"{prefix}i:x") == {"a": "new-a", "b": "newer-b"}
    finally:
        await client.aclose()


async def test_the_upgrade_leaves_a_session_changed_since_it_was_read(redis_url: str) -> None:
    # UPGRADE_LISTED lists a session only at the version it was read at: a
    # change since then listed it where it is now.
    prefix = _prefix(redis_url)
    client = await _raw(redis_url)
    try:
        await client.hset(f"{prefix}s:x", "version", "5")
        await client.script_load(UPGRADE_LISTED.source)
        keys = [f"{prefix}s:x", f"{prefix}set"]
        await client.evalsha(UPGRADE_LISTED.sha, 2, *keys, "4", "stale")
        await client.evalsha(UPGRADE_LISTED.sha, 2, *keys, "5", "current")
        assert await client.zrange(f"{prefix}set", 0, -1) == ["current"]
    finally:
        await client.aclose()


async def test_a_state_listing_reads_only_its_groups(
    redis_url: str, redis_store: RedisStore
) -> None:
    """LIST_STATE reads the sets of exactly the groups its filters match, however
    alike the labels' texts are, and only those with sessions in the state: every
    entry a listing reads is a match."""
    labels = [
        ("a", "m"),
        ("ab", "m"),
        ('a", "m', "x"),
        ("a", 'm", "x'),
        ("a, b", "m]"),
        ('a\\"', "m"),
    ]
    ids: dict[tuple[str, str], SessionId] = {}
    for provider, model in labels:
        created = await redis_store.create(
            ACME, provider_id=provider, model=model, initial_tokens=1
        )
        await redis_store.activate(ACME, created.record.session_id)
        ids[provider, model] = created.record.session_id
    # Groups with no Active session: one whose only session was closed, one whose
    # only session is still Created. Their count fields exist, at 0 for Active.
    for provider, model, close in (("a", "gone", True), ("a", "new", False)):
        created = await redis_store.create(
            ACME, provider_id=provider, model=model, initial_tokens=1
        )
        if close:
            await redis_store.activate(ACME, created.record.session_id)
            await redis_store.close(ACME, created.record.session_id)
    keys = RedisKeys(_prefix(redis_url))
    head, tail = keys.state_set_parts(ACME, Active)
    client = await _raw(redis_url)
    try:
        await client.script_load(LIST_STATE.source)
        for provider in (None, "a", *{p for p, _ in labels}):
            for model in (None, "gone", "new", *{m for _, m in labels}):
                names, lists, per = await client.evalsha(
                    LIST_STATE.sha,
                    1,
                    keys.counters(ACME),
                    head,
                    tail,
                    "" if provider is None else group_head(provider),
                    "" if model is None else group_tail(model),
                    "+",
                    "-",
                    "100",
                    state_metric(Active),
                )
                matching = [(p, m) for p, m in ids if provider in (None, p) and model in (None, m)]
                expected = {ids[group] for group in matching}
                assert sorted(names) == sorted(keys.by_state(ACME, Active, *g) for g in matching)
                assert per == -(-100 // max(1, len(matching)))
                assert {member_id(entry) for entries in lists for entry in entries} == expected
    finally:
        await client.aclose()


async def _list_as_version_2(url: str) -> None:
    """List every session as version 2 did: each state per tenant, per provider and
    per model, not per (provider, model) group."""
    keys = RedisKeys(_prefix(url))
    client = await _raw(url)
    try:
        async for key in client.scan_iter(match=f"{keys.prefix}s:*", count=1000):
            row = await client.hgetall(key)
            tenant, state = TenantId(row["tenant"]), state_named(row["state"])
            entry = f"{int(row['created']) + 2**62:016x}{key.removeprefix(keys.prefix + 's:')}"
            await client.zrem(keys.by_state(tenant, state, row["provider"], row["model"]), entry)
            where = f"{keys.prefix}ix:{row['state']}"
            for old in (
                f"{where}:{tenant}",
                f"{where}:p{json.dumps(row['provider'])}:{tenant}",
                f"{where}:m{json.dumps(row['model'])}:{tenant}",
            ):
                await client.zadd(old, {entry: 0})
    finally:
        await client.aclose()


# -- durability ----------------------------------------------------------------------


def test_durability_warnings_name_what_can_be_lost() -> None:
    durable = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}
    assert durability_warnings(durable) == []
    assert durability_warnings({**durable, "maxmemory-policy": "volatile-lru"}) == []
    [everysec] = durability_warnings({**durable, "appendfsync": "everysec"})
    assert "second or two" in everysec
    [snapshots] = durability_warnings({"appendonly": "no", "save": "3600 1"})
    assert "since the last snapshot" in snapshots
    [nothing] = durability_warnings({"appendonly": "no", "save": ""})
    assert "lost when Redis restarts" in nothing
    [evicting] = durability_warnings({**durable, "maxmemory-policy": "allkeys-lru"})
    assert "silently deletes" in evicting


async def _expected_warnings(redis_url: str) -> list[str]:
    client = await _raw(redis_url)
    try:
        config: dict[str, str] = {}
        for name in ("appendonly", "appendfsync", "save", "maxmemory-policy"):
            config.update(await client.config_get(name))
    finally:
        await client.aclose()
    return durability_warnings(config)


async def test_open_warns_when_the_server_can_lose_writes(
    redis_url: str,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_module, "_LOGGED", set())  # as in a new process
    expected = await _expected_warnings(redis_url)
    with caplog.at_level(logging.WARNING, logger="llmsession.store.redis"):
        store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
    await store.aclose()
    assert store.durability_warnings == expected
    warned = [r.getMessage() for r in caplog.records if r.name == "llmsession.store.redis"]
    where = _parse_url(redis_url).where
    assert warned == [f"{where}: {warning}" for warning in expected]


async def test_a_process_warns_once_per_server(
    redis_url: str,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_module, "_LOGGED", set())  # as in a new process
    expected = await _expected_warnings(redis_url)
    if not expected:
        pytest.skip("the test Redis is configured durably: there is no warning to count")
    # Another prefix on the same server and database (under the fixture's prefix,
    # so its keys are cleaned up too): the same settings, so no new warning.
    other_prefix = redis_url.replace("?prefix=", "?max_connections=10&prefix=") + "other:"
    with caplog.at_level(logging.WARNING, logger="llmsession.store.redis"):
        for url in (redis_url, redis_url, other_prefix):
            store = await open_store(url, clock=clock)
            await store.aclose()
            assert isinstance(store, RedisStore)
            assert store.durability_warnings == expected
    warned = [r.getMessage() for r in caplog.records if r.name == "llmsession.store.redis"]
    where = _parse_url(redis_url).where
    assert warned == [f"{where}: {warning}" for warning in expected]


async def test_writes_survive_reopening(redis_url: str, clock: ManualClock) -> None:
    first = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=600)
    await first.create_tenant(ACME)
    key = await first.add_api_key(ACME, "key1", b"\x00\xffhash")
    session_id = await _active(first)
    for n in range(5):
        clock.advance(1)
        await first.record_round(ACME, session_id, n, idempotency_key=f"k{n}")
    before = await first.get(ACME, session_id)
    totals = await first.totals(ACME)
    await first.aclose()

    second = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=600)
    try:
        assert await second.get(ACME, session_id) == before
        assert await second.totals(ACME) == totals
        assert [r.delta_tokens for r in (await second.list_rounds(ACME, session_id)).items] == [
            0,
            1,
            2,
            3,
            4,
        ]
        replay = await second.record_round(ACME, session_id, 3, idempotency_key="k3")
        assert replay.replayed
        assert replay.round.seq == 4
        assert await second.get_api_key("key1") == key
        assert [t.tenant_id for t in await second.list_tenants()] == [ACME]
    finally:
        await second.aclose()


async def test_acknowledged_rounds_survive_kill_9(
    private_redis: PrivateRedis, clock: ManualClock
) -> None:
    store = await RedisStore.open(private_redis.url, clock=clock, default_ttl_seconds=600)
    assert store.durability_warnings == []  # appendonly yes, appendfsync always
    session_id = await _active(store)
    acknowledged = [
        await store.record_round(ACME, session_id, n, idempotency_key=f"k{n}") for n in range(50)
    ]
    private_redis.kill()
    with pytest.raises(StoreError):
        await store.record_round(ACME, session_id, 1)
    await store.aclose()

    private_redis.start()
    reopened = await RedisStore.open(private_redis.url, clock=clock, default_ttl_seconds=600)
    try:
        stored = await reopened.get(ACME, session_id)
        assert stored == acknowledged[-1].session
        rounds = await reopened.list_rounds(ACME, session_id, limit=1000)
        assert rounds.items == [result.round for result in acknowledged]
        again = await reopened.record_round(ACME, session_id, 7, idempotency_key="k7")
        assert again.replayed
        assert again.round == acknowledged[7].round
        assert (await reopened.totals(ACME))[0].rounds == 50
    finally:
        await reopened.aclose()


async def test_wait_replicas_confirms_each_write_or_says_it_could_not(
    private_redis: PrivateRedis, replica: PrivateRedis, clock: ManualClock
) -> None:
    confirmed_url = f"{private_redis.url}&wait_replicas=1&wait_timeout_ms=5000"
    store = await RedisStore.open(confirmed_url, clock=clock, default_ttl_seconds=600)
    on_replica = await _raw(replica.url)
    try:
        session_id = await _active(store)
        rounds_key = f"{_prefix(private_redis.url)}r:{session_id}"
        for n in range(1, 11):
            await store.record_round(ACME, session_id, n, idempotency_key=f"k{n}")
            # WAIT returned: the replica holds the round before the caller hears of it.
            assert await on_replica.llen(rounds_key) == n
        await store.create_tenant(ACME)
        assert await on_replica.hget(f"{_prefix(private_redis.url)}tenants", "acme") is not None
        await store.aclose()

        replica.kill()
        hasty_url = f"{private_redis.url}&wait_replicas=1&wait_timeout_ms=100"
        store = await RedisStore.open(hasty_url, clock=clock, default_ttl_seconds=600)
        with pytest.raises(StoreError, match=r"applied the write, but only 0 of 1 replicas"):
            await store.record_round(ACME, session_id, 11, idempotency_key="k11")
        # The round is on the primary, and a retry with its key does not count it twice.
        replay = await store.record_round(ACME, session_id, 11, idempotency_key="k11")
        assert replay.replayed
        assert replay.session.record.round_count == 11
    finally:
        await on_replica.aclose()
        await store.aclose()


# -- scripts ----------------------------------------------------------------------------


async def test_scripts_are_reloaded_after_script_flush(
    private_redis: PrivateRedis, clock: ManualClock
) -> None:
    store = await RedisStore.open(private_redis.url, clock=clock, default_ttl_seconds=60)
    client = await _raw(private_redis.url)
    try:
        await store.create_tenant(ACME)
        await client.script_flush()
        session_id = await _active(store)  # insert and activate: single EVALSHA
        await client.script_flush()
        await store.add_api_key(ACME, "k1", b"h")
        others = [await _active(store) for _ in range(3)]
        clock.advance(61)
        await client.script_flush()
        assert await store.sweep() == 4  # pipelined EVALSHAs
        assert (await store.get(ACME, session_id)).record.state is SessionExpired
        for other in others:
            assert (await store.get(ACME, other)).record.state is SessionExpired
        assert await store.get_api_key("k1") is not None
    finally:
        await client.aclose()
        await store.aclose()


# -- the writer's connection ----------------------------------------------------------


async def _a_round_then_the_writer_killed(redis_url: str, store: RedisStore) -> SessionId:
    """A session with one round of 5 tokens; then the server closes the store's
    connection for single writes."""
    session_id = await _active(store)
    await store.record_round(ACME, session_id, 5)
    connection_id = await store._writer.client_id()
    client = await _raw(redis_url)
    try:
        assert await client.client_kill_filter(_id=connection_id) == 1
    finally:
        await client.aclose()
    return session_id


async def test_a_write_on_a_connection_the_server_closed_fails_and_the_next_reconnects(
    redis_url: str, redis_store: RedisStore
) -> None:
    session_id = await _a_round_then_the_writer_killed(redis_url, redis_store)
    # Within the idle time nothing checks the connection first: the write
    # fails, and says so, rather than being retried (it might have been applied).
    with pytest.raises(StoreError, match="Redis at"):
        await redis_store.record_round(ACME, session_id, 7)
    assert (await redis_store.get(ACME, session_id)).record.delta_tokens == 5
    result = await redis_store.record_round(ACME, session_id, 7)
    assert (result.round.seq, result.session.record.delta_tokens) == (2, 12)


async def test_a_writer_connection_idle_long_is_checked_before_a_write(
    redis_url: str, redis_store: RedisStore
) -> None:
    session_id = await _a_round_then_the_writer_killed(redis_url, redis_store)
    redis_store._writer_used -= 3600  # as if idle for an hour
    result = await redis_store.record_round(ACME, session_id, 7)
    assert (result.round.seq, result.session.record.delta_tokens) == (2, 12)


async def test_a_write_cancelled_on_the_kept_connection_leaves_it_usable(
    redis_store: RedisStore,
) -> None:
    # Cancelled while its reply is awaited, a write would leave the reply unread
    # on the kept connection, for the next call to take as its own, unless
    # redis-py drops the connection. Cancelled at each point in turn.
    session_id = await _active(redis_store)
    await redis_store.record_round(ACME, session_id, 1)
    cancelled = 0
    for steps in range(12):
        task = asyncio.create_task(redis_store.record_round(ACME, session_id, 1))
        for _ in range(steps):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
        probe = f"probe {steps}"
        assert await redis_store._writer.echo(probe) == probe
        result = await redis_store.record_round(ACME, session_id, 1)
        rounds = await redis_store.list_rounds(ACME, session_id, limit=1000)
        assert [r.seq for r in rounds.items] == list(range(1, result.round.seq + 1))
        assert result.session.record.delta_tokens == result.round.seq
    assert cancelled > 0


async def test_a_pool_too_small_for_the_writer_and_the_taker_is_refused(redis_url: str) -> None:
    with pytest.raises(InvalidInput, match="max_connections to 2; the store needs at least 3"):
        await RedisStore.open(f"{redis_url}&max_connections=2")


async def test_the_smallest_pool_serves_turns_writes_and_reads(
    redis_url: str, clock: ManualClock
) -> None:
    store = await RedisStore.open(f"{redis_url}&max_connections=3", clock=clock)

    async def turns() -> None:
        session_id = await _gateway_session(store, clock)
        for n in range(4, 8):
            async with store.turn_history(ACME, session_id):
                await store.record_turn(ACME, session_id, turn=_turn(n), usage=Usage(1))
                await store.get(ACME, session_id)
            async with store.turn_lock(ACME, session_id):
                await store.record_round(ACME, session_id, delta_tokens=1)
        assert len(await store.history(ACME, session_id)) == 6

    try:
        # A guard against a pool left without a connection, not a speed check.
        await asyncio.wait_for(asyncio.gather(turns(), turns()), timeout=60)
    finally:
        await store.aclose()


# -- compare-and-set -------------------------------------------------------------------


async def test_a_write_chained_to_a_refused_one_is_refused_though_its_version_matches(
    redis_url: str, redis_store: RedisStore
) -> None:
    # Two writes computed one from the other; another writer stored the first's
    # version in between. The second expects exactly the version now stored, but
    # was computed from a state that never happened.
    session_id = await _active(redis_store)
    read = await redis_store.get(ACME, session_id)
    await redis_store.record_round(ACME, session_id, 1)
    now_stored = await redis_store.get(ACME, session_id)
    first = StoredSession(read.record, read.version + 1, 7, read.last_activity_at)
    second = StoredSession(read.record, read.version + 2, 8, read.last_activity_at)
    assert first.version == now_stored.version
    batch = CasBatch(RedisKeys(_prefix(redis_url)))
    batch.add(read, first)
    batch.add(first, second, chained=True)
    snapshot = await _dump(redis_url)
    client = await _raw(redis_url)
    try:
        written = await client.evalsha(CAS.sha, len(batch.keys), *batch.keys, *batch.args)
    finally:
        await client.aclose()
    assert written == [0, 0]
    assert await _dump(redis_url) == snapshot


async def test_queued_rounds_of_one_session_go_in_groups_and_stay_exact(
    redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id = await _active(redis_store)
    calls = 0
    run_one = redis_store._run_one

    async def counting(script: Script, keys: Sequence[str], args: Sequence[str]) -> object:
        nonlocal calls
        calls += 1
        return await run_one(script, keys, args)

    monkeypatch.setattr(redis_store, "_run_one", counting)
    # 40 concurrent rounds, each key twice (the same delta): 20 counted, 20 replayed.
    results = await asyncio.gather(
        *(
            redis_store.record_round(ACME, session_id, n % 20, idempotency_key=f"k{n % 20}")
            for n in range(40)
        )
    )
    assert calls < 40
    fresh = [r for r in results if not r.replayed]
    assert sorted(r.round.seq for r in fresh) == list(range(1, 21))
    assert sorted(r.round.delta_tokens for r in fresh) == list(range(20))
    by_key = {r.round.idempotency_key: r.round for r in fresh}
    assert all(by_key[r.round.idempotency_key] == r.round for r in results)
    stored = await redis_store.get(ACME, session_id)
    assert stored.record.round_count == 20
    assert stored.record.delta_tokens == sum(range(20))
    assert stored.version == 22


async def test_a_remembered_version_made_stale_elsewhere_costs_only_a_retry(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    # Each store remembers what it wrote and starts its next change from that;
    # the other store's writes make that memory stale.
    other = await RedisStore.open(redis_url, clock=clock)
    try:
        session_id = await _active(redis_store)
        for turn in range(6):
            store = (redis_store, other)[turn % 2]
            result = await store.record_round(ACME, session_id, 10, idempotency_key=f"k{turn}")
            assert not result.replayed
            assert result.round.seq == turn + 1
        # A key used through the other store is replayed, not counted again.
        again = await redis_store.record_round(ACME, session_id, 10, idempotency_key="k5")
        assert again.replayed
        assert again.round.seq == 6
        await other.close(ACME, session_id)
        # The stale memory says Active: the refused write is retried from a fresh read.
        with pytest.raises(WrongStateError):
            await redis_store.record_round(ACME, session_id, 10)
        final = await redis_store.get(ACME, session_id)
        assert final.record.state is Closed
        assert final.record.round_count == 6
        assert final.version == 9  # created, activated, 6 rounds, closed
    finally:
        await other.aclose()


async def test_an_error_from_a_remembered_version_stands_only_if_the_key_is_unused(
    redis_store: RedisStore,
) -> None:
    # Closed after a round with key k, all in this store: the remembered version
    # is current, but a round with k again is a replay, not a wrong state.
    session_id = await _active(redis_store)
    first = await redis_store.record_round(ACME, session_id, 4, idempotency_key="k")
    await redis_store.close(ACME, session_id)
    again = await redis_store.record_round(ACME, session_id, 4, idempotency_key="k")
    assert again.replayed
    assert again.round == first.round
    with pytest.raises(WrongStateError):
        await redis_store.record_round(ACME, session_id, 4, idempotency_key="new")


async def test_a_late_round_with_a_used_key_from_a_remembered_version_is_replayed(
    redis_store: RedisStore, clock: ManualClock
) -> None:
    session_id = await _active(redis_store)
    first = await redis_store.record_round(ACME, session_id, 4, idempotency_key="k")
    clock.advance(4000)
    again = await redis_store.record_round(ACME, session_id, 4, idempotency_key="k")
    assert again.replayed
    assert again.round == first.round
    with pytest.raises(SessionExpiredError):
        await redis_store.record_round(ACME, session_id, 4, idempotency_key="new")
    assert (await redis_store.get(ACME, session_id)).record.state is SessionExpired


async def test_one_cas_call_applies_each_write_whose_version_still_matches(
    redis_url: str, redis_store: RedisStore
) -> None:
    ids = [await _active(redis_store) for _ in range(3)]
    stale = await redis_store.get(ACME, ids[1])
    await redis_store.record_round(ACME, ids[1], 1)
    batch = CasBatch(RedisKeys(_prefix(redis_url)))
    for session_id in ids:
        old = stale if session_id == ids[1] else await redis_store.get(ACME, session_id)
        new = StoredSession(old.record, old.version + 1, 7, old.last_activity_at)
        batch.add(old, new)
    assert len(batch) == 3
    client = await _raw(redis_url)
    try:
        written = await client.evalsha(CAS.sha, len(batch.keys), *batch.keys, *batch.args)
    finally:
        await client.aclose()
    assert written == [1, 0, 1]
    assert [(await redis_store.get(ACME, i)).ttl_seconds for i in ids] == [7, 3600, 7]


async def test_stale_version_is_rejected_and_changes_nothing(
    redis_url: str, redis_store: RedisStore
) -> None:
    session_id = await _active(redis_store)
    await redis_store.record_round(ACME, session_id, 1)
    base = await redis_store.get(ACME, session_id)
    winner = StoredSession(
        base.record, base.version + 1, base.ttl_seconds, base.last_activity_at.plus_seconds(1)
    )
    assert await redis_store._cas(base, winner, None)
    snapshot = await _dump(redis_url)
    loser = StoredSession(base.record, base.version + 1, 99, base.last_activity_at)
    assert not await redis_store._cas(base, loser, None)
    assert await _dump(redis_url) == snapshot
    assert await redis_store.get(ACME, session_id) == winner


async def _dump(url: str) -> dict[str, object]:
    """Every key under the store's prefix with its whole value (as bytes: a turn is
    MessagePack)."""
    client = aioredis.Redis.from_url(url.split("?", maxsplit=1)[0])
    try:
        dump: dict[str, object] = {}
        for key in sorted(await _keys_of(url)):
            kind = await client.type(key)
            if kind == b"hash":
                dump[key] = await client.hgetall(key)
            elif kind == b"zset":
                dump[key] = await client.zrange(key, 0, -1)
            elif kind == b"list":
                dump[key] = await client.lrange(key, 0, -1)
            elif kind == b"set":
                dump[key] = sorted(await client.smembers(key))
            else:
                dump[key] = await client.get(key)
        return dump
    finally:
        await client.aclose()


async def test_64_concurrent_clients_on_one_session_are_exact(
    redis_url: str, clock: ManualClock
) -> None:
    stores = [
        await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=600) for _ in range(8)
    ]
    try:
        session_id = await _active(stores[0], initial_tokens=50)
        per_client = 5

        async def client(number: int) -> None:
            store = stores[number % len(stores)]
            for n in range(per_client):
                key = f"c{number}-{n}"
                first = await store.record_round(ACME, session_id, number, idempotency_key=key)
                # A client retrying after a lost reply must not count twice.
                again = await store.record_round(ACME, session_id, number, idempotency_key=key)
                assert again.replayed
                assert again.round == first.round

        await asyncio.gather(*(client(number) for number in range(64)))
        stored = await stores[1].get(ACME, session_id)
        rounds = 64 * per_client
        delta = per_client * sum(range(64))
        assert stored.record.round_count == rounds
        assert stored.record.delta_tokens == delta
        assert stored.version == 2 + rounds
        listed = await stores[2].list_rounds(ACME, session_id, limit=1000)
        assert [r.seq for r in listed.items] == list(range(1, rounds + 1))
        assert sum(r.delta_tokens for r in listed.items) == delta
        [totals] = await stores[3].totals(ACME)
        assert (totals.rounds, totals.delta_tokens, totals.tokens_saved) == (
            rounds,
            delta,
            stored.record.tokens_saved,
        )
    finally:
        for store in stores:
            await store.aclose()


# -- sweeping ----------------------------------------------------------------------------


async def test_a_round_leaves_the_deadline_member_and_a_sweep_moves_it_on(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    client = await _raw(redis_url)
    index = f"{_prefix(redis_url)}deadlines"

    def lex(at: Timestamp) -> str:
        return f"{at.epoch_micros + 2**62:016x}"

    try:
        session_id = await _active(redis_store)
        first = (await redis_store.get(ACME, session_id)).deadline
        assert first is not None
        assert await client.zrange(index, 0, -1) == [lex(first) + str(session_id)]
        clock.advance(3000)
        later = (await redis_store.record_round(ACME, session_id, 5)).session.deadline
        assert later is not None
        # The round wrote no sorted set: the member is early, which is allowed.
        assert await client.zrange(index, 0, -1) == [lex(first) + str(session_id)]
        clock.advance(1000)  # past the first deadline, not the session's own
        assert await redis_store.sweep() == 0
        assert (await redis_store.get(ACME, session_id)).record.state is Active
        assert await client.zrange(index, 0, -1) == [lex(later) + str(session_id)]
        assert await client.hget(f"{_prefix(redis_url)}s:{session_id}", "due") == lex(later)
        clock.advance(2600)
        assert await redis_store.sweep() == 1
        expired = await redis_store.get(ACME, session_id)
        assert expired.record.expired_at == later
        assert await client.zrange(index, 0, -1) == []
        assert await client.hget(f"{_prefix(redis_url)}s:{session_id}", "due") == ""
    finally:
        await client.aclose()


async def test_early_members_neither_count_nor_stop_a_sweep(
    redis_url: str, clock: ManualClock
) -> None:
    # Sessions with a round since activation have early members, interleaved
    # with those of due sessions, across several chunks.
    store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
    try:
        sessions = [await _active(store) for _ in range(800)]
        clock.advance(30)
        busy = sessions[::2]
        for session_id in busy:
            await store.record_round(ACME, session_id, 1)
        clock.advance(31)
        assert await store.sweep(limit=150) == 150
        assert await store.sweep(limit=1000) == 250
        assert await store.sweep(limit=1000) == 0
        for session_id in busy:
            assert (await store.get(ACME, session_id)).record.state is Active
        await _check_global_indexes(redis_url, store)
        clock.advance(30)
        assert await store.sweep(limit=1000) == 400
        await _check_global_indexes(redis_url, store)
    finally:
        await store.aclose()


async def test_racing_sweepers_expire_each_session_once(redis_url: str, clock: ManualClock) -> None:
    stores = [
        await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60) for _ in range(4)
    ]
    try:
        due: list[SessionId] = []
        for n in range(120):
            due.append(await _active(stores[0]))
            if n % 3 == 0:
                clock.advance(0.001)
        clock.advance(30)
        kept = await _active(stores[0])
        clock.advance(30.5)
        deadline_of_kept = (await stores[0].get(ACME, kept)).deadline
        assert deadline_of_kept is not None
        # Every sweeper reads the same first due sessions and races for them; the
        # losers skip. Rounds of racing sweeps until none finds work: 120 in all.
        expired = 0
        for _ in range(20):
            counts = await asyncio.gather(*(s.sweep(limit=25) for s in stores for _ in range(3)))
            expired += sum(counts)
            if not any(counts):
                break
        assert expired == 120
        for session_id in due:
            stored = await stores[0].get(ACME, session_id)
            assert stored.record.state is SessionExpired
            assert stored.record.expired_at == stored.last_activity_at.plus_seconds(60)
            assert stored.version == 3
        assert (await stores[0].get(ACME, kept)).record.state is Active
        assert await stores[1].sweep() == 0
        [totals] = await stores[2].totals(ACME)
        assert totals.sessions == {"created": 0, "active": 1, "closed": 0, "expired": 120}
        client = await _raw(redis_url)
        try:
            left = await client.zrange(f"{_prefix(redis_url)}deadlines", 0, -1)
        finally:
            await client.aclose()
        assert left == [f"{deadline_of_kept.epoch_micros + 2**62:016x}{kept}"]
    finally:
        for store in stores:
            await store.aclose()


async def test_sweeps_longer_than_a_chunk_expire_each_due_session_once(
    redis_url: str, clock: ManualClock
) -> None:
    # A sweep reads and writes in chunks of 250 with the next chunk's read in
    # flight during the write: 700 due sessions take three chunks and a part.
    stores = [
        await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60) for _ in range(2)
    ]
    try:
        due = [await _active(stores[n % 2]) for n in range(700)]
        clock.advance(30)
        kept = await _active(stores[0])
        clock.advance(30.5)
        assert await stores[0].sweep(limit=620) == 620  # the limit ends inside a chunk
        assert await stores[1].sweep(limit=1000) == 80
        assert await stores[0].sweep(limit=1000) == 0
        for session_id in due:
            assert (await stores[1].get(ACME, session_id)).record.state is SessionExpired
        assert (await stores[0].get(ACME, kept)).record.state is Active
        # Racing sweepers over many chunks: each session once, the totals exact.
        more = [await _active(stores[0]) for _ in range(600)]
        clock.advance(61)
        counts = await asyncio.gather(*(s.sweep(limit=1000) for s in stores for _ in range(2)))
        assert sum(counts) == 601
        [totals] = await stores[1].totals(ACME)
        assert totals.sessions == {"created": 0, "active": 0, "closed": 0, "expired": 1301}
        for session_id in more:
            assert (await stores[0].get(ACME, session_id)).record.state is SessionExpired
    finally:
        for store in stores:
            await store.aclose()


@pytest.mark.parametrize(
    "damage",
    [
        ("hdel", "ttl"),  # a field missing
        ("hset", "provider", "a\x1fb"),  # the separator of a row (split_row) in a value
        ("hset", "model", "\x1e"),  # the mark of a missing field as a value
        ("hset", "usage", "1 2 3"),  # usage sums, not six of them
    ],
)
async def test_a_listing_that_meets_a_broken_session_says_which(
    redis_url: str, redis_store: RedisStore, damage: tuple[str, ...]
) -> None:
    broken = await _active(redis_store)
    client = await _raw(redis_url)
    try:
        command, *args = damage
        await client.execute_command(command, f"{_prefix(redis_url)}s:{broken}", *args)
    finally:
        await client.aclose()
    for query in (SessionQuery(), SessionQuery(state=Active)):
        with pytest.raises(StoreError, match=f"session {broken} is not a valid stored session"):
            await redis_store.list_sessions(ACME, query)


async def test_a_sweep_that_meets_a_broken_session_fails_cleanly(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    unhandled: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: unhandled.append(context))
    due = [await _active(redis_store) for _ in range(300)]
    clock.advance(3601)
    broken = due[280]  # in the second chunk: read while the first is written
    client = await _raw(redis_url)
    try:
        await client.hset(f"{_prefix(redis_url)}s:{broken}", "rounds", "many")
        with pytest.raises(StoreError, match=f"session {broken} is not a valid stored session"):
            await redis_store.sweep(limit=1000)
        # Without the broken session the sweep finishes the rest, each once.
        await client.delete(f"{_prefix(redis_url)}s:{broken}")
    finally:
        await client.aclose()
    swept = 0
    while count := await redis_store.sweep(limit=1000):
        swept += count
    [totals] = await redis_store.totals(ACME)
    assert totals.sessions["expired"] == 299
    assert 49 <= swept <= 299  # the first chunk's write may have gone in before the error
    gc.collect()
    await asyncio.sleep(0)
    assert unhandled == []


async def test_purge_loses_to_a_concurrent_activation(
    redis_store: RedisStore, clock: ManualClock
) -> None:
    created = await redis_store.create(ACME, provider_id="p", model="m", initial_tokens=1)
    session_id = created.record.session_id
    clock.advance(100)
    # The purge read the session while Created; it is activated before the purge writes.
    stale = await redis_store.get(ACME, session_id)
    await redis_store.activate(ACME, session_id)
    assert not await redis_store._cas(stale, None, None)
    assert (await redis_store.get(ACME, session_id)).record.state is Active
    assert await redis_store.purge_created(60) == 0


# -- ordering and counters ------------------------------------------------------------------


async def test_pages_are_exact_with_equal_creation_times(redis_store: RedisStore) -> None:
    ids = {
        (await redis_store.create(ACME, provider_id="p", model="m", initial_tokens=1)).record
        for _ in range(23)
    }
    expected = sorted(ids, key=lambda r: r.session_id, reverse=True)
    assert len({r.created_at for r in expected}) == 1
    seen = []
    cursor = None
    while True:
        page = await redis_store.list_sessions(ACME, SessionQuery(limit=5, cursor=cursor))
        seen.extend(s.record for s in page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == expected


async def test_label_indexes_keep_labels_with_separators_apart(redis_store: RedisStore) -> None:
    # Provider and model are in the index names: labels that would run together
    # if joined with ':' or quotes must still get sets of their own. Non-ASCII
    # labels are more bytes than characters in what the CAS script is sent.
    labels = [("a:m", "b"), ("a", "m:b"), ('a"', "b"), ("a", '"b'), ("prövider", "mödel ✓")]
    made = {
        pair: (
            await redis_store.create(ACME, provider_id=pair[0], model=pair[1], initial_tokens=1)
        ).record.session_id
        for pair in labels
    }
    await redis_store.activate(ACME, made[labels[0]])
    for provider, model in labels:
        for query in (
            SessionQuery(provider_id=provider),
            SessionQuery(model=model),
            SessionQuery(provider_id=provider, model=model),
        ):
            listed = await redis_store.list_sessions(ACME, query)
            expected = {
                made[pair]
                for pair in labels
                if query.provider_id in (None, pair[0]) and query.model in (None, pair[1])
            }
            assert {s.record.session_id for s in listed.items} == expected
    active = await redis_store.list_sessions(ACME, SessionQuery(state=Active, model="b"))
    assert [s.record.session_id for s in active.items] == [made[labels[0]]]
    created = await redis_store.list_sessions(ACME, SessionQuery(state=Created, provider_id="a:m"))
    assert created.items == []


async def test_order_is_exact_beyond_double_precision(redis_url: str) -> None:
    # Microseconds near the year 9000 are about 2**57: a double cannot tell
    # neighbours apart, the store's text-ordered indexes can.
    start = Timestamp.from_datetime(datetime(9000, 1, 1, tzinfo=UTC)).epoch_micros // 64 * 64
    clock = ManualClock(Timestamp(start))
    store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
    try:
        made = []
        for _ in range(6):
            made.append(await store.create(ACME, provider_id="p", model="m", initial_tokens=1))
            clock.now = Timestamp(clock.now.epoch_micros + 1)
        assert len({float(s.record.created_at.epoch_micros) for s in made}) == 1
        listed = []
        cursor = None
        while True:
            page = await store.list_sessions(ACME, SessionQuery(limit=4, cursor=cursor))
            listed.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert listed == made[::-1]
        between = await store.list_sessions(
            ACME,
            SessionQuery(
                created_after=made[1].record.created_at, created_before=made[4].record.created_at
            ),
        )
        assert between.items == [made[3], made[2]]
        for stored in made:
            await store.activate(ACME, stored.record.session_id)
            clock.now = Timestamp(clock.now.epoch_micros + 1)
        clock.advance(60)
        assert await store.sweep(limit=2) == 2
        # Two expired in their state's set, four due and not swept: in one order.
        expired = await store.list_sessions(ACME, SessionQuery(state=SessionExpired, limit=3))
        assert [s.record.session_id for s in expired.items] == [
            s.record.session_id for s in made[:-4:-1]
        ]
        assert expired.next_cursor is not None
        rest = await store.list_sessions(
            ACME, SessionQuery(state=SessionExpired, cursor=expired.next_cursor)
        )
        assert [s.record.session_id for s in rest.items] == [
            s.record.session_id for s in made[2::-1]
        ]
    finally:
        await store.aclose()


async def test_totals_beyond_64_bits_are_exact(redis_url: str, redis_store: RedisStore) -> None:
    ids = [await _active(redis_store, initial_tokens=MAX_TOKENS) for _ in range(3)]
    for session_id in ids:
        await redis_store.record_round(ACME, session_id, 0)
    big = await _active(redis_store, initial_tokens=0)
    await redis_store.record_round(ACME, big, MAX_TOKENS)
    [totals] = await redis_store.totals(ACME)
    assert totals.tokens_saved == 3 * MAX_TOKENS
    assert totals.delta_tokens == MAX_TOKENS
    assert totals.rounds == 4
    # tokens_saved also falls: a round larger than the context saves less than nothing.
    small = await _active(redis_store, initial_tokens=2**32 + 1)
    await redis_store.record_round(ACME, small, 1)
    await redis_store.record_round(ACME, small, 2**33 + 5)
    [totals] = await redis_store.totals(ACME)
    assert totals.tokens_saved == 3 * MAX_TOKENS
    assert totals.delta_tokens == MAX_TOKENS + 2**33 + 6
    # Each counter's low limb stays in [0, 2**32) (the script carries into the
    # high one), so no HINCRBY can ever pass 2**63-1.
    client = await _raw(redis_url)
    try:
        counters = await client.hgetall(f"{_prefix(redis_url)}agg:{ACME}")
    finally:
        await client.aclose()
    low = [int(v) for k, v in counters.items() if k.split(" ")[1] == "lo"]
    assert len(low) == 5  # rounds, delta, saved, created and active sessions
    assert all(0 <= value < 2**32 for value in low)


async def test_counters_and_indexes_match_a_memory_store(redis_url: str) -> None:
    """Random work on both stores; totals, listings and indexes must agree exactly."""
    rng = random.Random(1234)
    clock = ManualClock(Timestamp.from_datetime(datetime(2026, 3, 1, tzinfo=UTC)))
    memory = MemoryStore(clock=clock, default_ttl_seconds=30)
    redis_store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=30)
    pairs: list[tuple[TenantId, SessionId, SessionId]] = []  # (tenant, memory id, redis id)
    try:
        for _ in range(400):
            action = rng.random()
            if action < 0.2 or not pairs:
                tenant, made = await start_alike(
                    rng, clock, (memory, redis_store), (ACME, OTHER), _gateway_round
                )
                pairs.append((tenant, made[0].record.session_id, made[1].record.session_id))
            elif action < 0.92:
                tenant, mid, rid = rng.choice(pairs)
                op = rng.choice(
                    ["activate", "round", "round", "round", "turn", "turn", "close", "expire"]
                )
                delta = rng.choice([0, 1, 999, 2**41, 2**62])
                outcomes = [
                    await _outcome(store, op, tenant, session_id, delta)
                    for store, session_id in ((memory, mid), (redis_store, rid))
                ]
                assert outcomes[0] == outcomes[1], op
            elif action < 0.96:
                assert await memory.sweep() == await redis_store.sweep()
            else:
                age = rng.choice([60, 90])
                scope = rng.choice([None, ACME])
                assert await memory.purge_created(age, tenant_id=scope) == (
                    await redis_store.purge_created(age, tenant_id=scope)
                )
                alive = {
                    s.record.session_id
                    for t in (ACME, OTHER)
                    for s in await all_sessions(memory, t)
                }
                pairs = [p for p in pairs if p[1] in alive]
            clock.advance(rng.choice([0, 0.5, 3, 10]))

        mapping = {mid: rid for _, mid, rid in pairs}
        for tenant in (ACME, OTHER):
            for group_by in ((), ("provider",), ("model",), ("provider", "model")):
                assert await redis_store.totals(tenant, group_by) == await memory.totals(
                    tenant, group_by
                )
            for query in (
                SessionQuery(limit=1000),
                SessionQuery(state=Active, limit=1000),
                SessionQuery(state=Created, model="m2", limit=1000),
                SessionQuery(provider_id="p1", limit=7),
                SessionQuery(provider_id="p2", model="m1", limit=3),
                SessionQuery(state=Active, provider_id="p2", limit=1000),
                SessionQuery(state=Closed, limit=1000),
            ):
                in_memory = await memory.list_sessions(tenant, query)
                in_redis = await redis_store.list_sessions(tenant, query)
                assert [mapping[s.record.session_id] for s in in_memory.items] == [
                    s.record.session_id for s in in_redis.items
                ]
                assert (in_memory.next_cursor is None) == (in_redis.next_cursor is None)
        await _check_global_indexes(redis_url, redis_store)
        assert sum(_count(t) for t in await redis_store.totals(ACME)) + sum(
            _count(t) for t in await redis_store.totals(OTHER)
        ) == len(pairs)
        await _check_histories(redis_url, memory, redis_store, pairs)
    finally:
        await redis_store.aclose()


async def _check_histories(
    url: str,
    memory: MemoryStore,
    redis_store: RedisStore,
    pairs: list[tuple[TenantId, SessionId, SessionId]],
) -> None:
    """The same turns stored (an ended session's none), and a history hash for
    exactly the sessions that have turns."""
    talking: set[str] = set()
    for _, mid, rid in pairs:
        turns = await memory._history_turns(mid)
        assert await redis_store._history_turns(rid) == turns
        if turns:
            talking.add(RedisKeys(_prefix(url)).history(rid))
    assert {key for key in await _keys_of(url) if ":h:" in key} == talking
    assert talking


def _gateway_round(tokens: int) -> tuple[Usage | None, Turn | None]:
    """What a gateway round of about ``tokens`` input tokens reported, and its turn."""
    usage = None if tokens == 7 else Usage(tokens, tokens // 3, tokens // 5, 11, 2, {"n": tokens})
    return usage, None if tokens == 1000 else _turn(tokens % 997)


async def _outcome(
    store: SessionStore, op: str, tenant: TenantId, session_id: SessionId, delta: int
) -> str:
    try:
        if op == "activate":
            await store.activate(tenant, session_id)
        elif op == "round":
            await store.record_round(tenant, session_id, delta)
        elif op == "turn":
            usage, turn = _gateway_round(delta)
            await store.record_turn(tenant, session_id, turn=turn, usage=usage)
        elif op == "close":
            await store.close(tenant, session_id)
        else:
            await store.expire(tenant, session_id)
    except LLMSessionError as error:
        return type(error).__name__
    return "ok"


def _count(totals: Totals) -> int:
    return sum(totals.sessions.values())


async def _check_global_indexes(url: str, store: RedisStore) -> None:
    """The deadline index lists each Active session once, at or before its deadline and
    where its "due" field says, and nothing else; the Created one the Created."""
    # As stored, not as a read shows them now (a due session not swept is still Active).
    listed_ids = [s.record.session_id for t in (ACME, OTHER) for s in await all_sessions(store, t)]
    sessions = await store._read(listed_ids)
    assert len(sessions) == len(listed_ids)
    prefix = _prefix(url)
    client = await _raw(url)
    try:
        deadlines = await client.zrange(f"{prefix}deadlines", 0, -1)
        created = set(await client.zrange(f"{prefix}created", 0, -1))
        dues = {
            s.record.session_id: await client.hget(f"{prefix}s:{s.record.session_id}", "due")
            for s in sessions
        }
    finally:
        await client.aclose()

    def lex(at: Timestamp) -> str:
        return f"{at.epoch_micros + 2**62:016x}"

    listed = {SessionId.parse(m[16:]): m[:16] for m in deadlines}
    assert len(listed) == len(deadlines)
    active = {s.record.session_id: s for s in sessions if s.deadline is not None}
    assert listed.keys() == active.keys()
    for session_id, due in listed.items():
        deadline = active[session_id].deadline
        assert deadline is not None
        assert due <= lex(deadline)
        assert dues[session_id] == due
    # Sessions that left deadlines keep an empty "due".
    assert {session_id for session_id, due in dues.items() if due} == active.keys()
    assert created == {
        lex(s.record.created_at) + str(s.record.session_id)
        for s in sessions
        if s.record.state is Created
    }
    await _check_listing_sets(url, sessions)


async def _check_listing_sets(url: str, sessions: list[StoredSession]) -> None:
    """Each session is listed in exactly the sets of its tenant, provider, model, and
    its state's set of its (provider, model) group; no set lists anything else. Each
    group's count of sessions in a state (by which LIST_STATE picks the groups to
    read) is the size of that state's set."""
    keys = RedisKeys(_prefix(url))
    client = await _raw(url)
    tenants = {stored.record.tenant_id for stored in sessions}
    try:
        listed: dict[str, set[str]] = {}
        sizes: dict[str, int] = {}
        async for key in client.scan_iter(match=f"{keys.prefix}ix:*", count=1000):
            entries = await client.zrange(key, 0, -1)
            sizes[key] = len(entries)
            for entry in entries:
                listed.setdefault(entry, set()).add(key)
        counters = {tenant: await client.hgetall(keys.counters(tenant)) for tenant in tenants}
    finally:
        await client.aclose()
    for tenant in tenants:
        for (provider, model), metrics in parse_counters(counters[tenant]).items():
            for state in ALL_STATES:
                name = keys.by_state(tenant, state, provider, model)
                assert metrics[state_metric(state)] == sizes.get(name, 0), name
    expected: dict[str, set[str]] = {}
    for stored in sessions:
        record = stored.record
        tenant, provider, model = record.tenant_id, record.provider_id, record.model
        entry = f"{record.created_at.epoch_micros + 2**62:016x}{record.session_id}"
        expected[entry] = {
            keys.by_tenant(tenant),
            keys.by_tenant(tenant, provider=provider),
            keys.by_tenant(tenant, model=model),
            keys.by_state(tenant, record.state, provider, model),
        }
    assert listed == expected


# -- gateway rounds: history, started-by records, the turn lock ------------------------------


def _turn(n: int) -> Turn:
    return Turn(
        "chat/completions", f"h{n}", f'["q{n}"]', f'["a{n}"]', None, 200, "t", b"\xff%d" % n
    )


def _turn_items(n: int) -> TurnItems:
    """What a gateway turn reads of _turn(n): not its answer as sent."""
    turn = _turn(n)
    return TurnItems(turn.endpoint, turn.request_items, turn.answer_items, turn.response_id)


async def _gateway_session(store: RedisStore, clock: ManualClock, **kwargs: object) -> SessionId:
    """A session started by the gateway, with turns at rounds 1 and 3 (round 2 has none)."""
    session_id = SessionId.generate(clock())
    await store.start_with_turn(
        ACME, session_id, provider_id="p", model="m", turn=_turn(1), usage=Usage(100),
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    await store.record_turn(ACME, session_id, turn=None, usage=Usage(120, 100))
    await store.record_turn(ACME, session_id, turn=_turn(3), usage=None)
    return session_id


@pytest.mark.parametrize("ending", ["close", "expire", "late round", "sweep"])
async def test_the_write_that_ends_a_session_deletes_its_history(
    redis_url: str, redis_store: RedisStore, clock: ManualClock, ending: str
) -> None:
    session_id = await _gateway_session(redis_store, clock, ttl_seconds=60)
    keys = RedisKeys(_prefix(redis_url))
    client = await _raw(redis_url)
    try:
        # Each turn, and apart from it its answer as sent.
        assert sorted(await client.hkeys(keys.history(session_id))) == ["1", "1:a", "3", "3:a"]
        # A refused write (its version moved) leaves the history where it is.
        stale = await redis_store.get(ACME, session_id)
        await redis_store.record_turn(ACME, session_id, turn=None, usage=Usage(1))
        closed = await redis_store.close(ACME, await _gateway_session(redis_store, clock))
        refused = StoredSession(closed.record, stale.version + 1, 60, stale.last_activity_at)
        assert not await redis_store._cas(stale, refused, None)
        assert await client.exists(keys.history(session_id)) == 1
        if ending == "close":
            await redis_store.close(ACME, session_id)
        elif ending == "expire":
            await redis_store.expire(ACME, session_id)
        else:
            clock.advance(61)
            if ending == "late round":
                with pytest.raises(SessionExpiredError):
                    await redis_store.record_turn(ACME, session_id, turn=_turn(9), usage=None)
            else:
                assert await redis_store.sweep() == 1
        assert await client.exists(keys.history(session_id)) == 0
    finally:
        await client.aclose()
    ended = await redis_store.get(ACME, session_id)
    assert ended.usage == UsageTotals(221, 100, 0, 0, 0, 1)
    found = await redis_store.find_turn(ACME, "nope", session_id)
    assert found is None


async def test_only_a_session_with_gateway_rounds_names_its_history_when_it_ends(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    keys = RedisKeys(_prefix(redis_url))

    async def ending_names_history(session_id: SessionId) -> bool:
        stored = await redis_store.get(ACME, session_id)
        batch = CasBatch(keys)
        batch.add(stored, await redis_store.expire(ACME, session_id))
        return keys.history(session_id).encode() in batch.args[0]

    # A ledger session's end costs nothing more than before.
    assert not await ending_names_history(await _active(redis_store))
    # A gateway session whose provider reported nothing but zeros is still one.
    session_id = SessionId.generate(clock())
    await redis_store.start_with_turn(
        ACME, session_id, provider_id="p", model="m", turn=_turn(1), usage=Usage(0)
    )
    assert (await redis_store.get(ACME, session_id)).usage == UsageTotals()
    client = await _raw(redis_url)
    try:
        assert await client.hget(keys.session(session_id), "usage") == "0 0 0 0 0 0"
        assert await ending_names_history(session_id)
        assert await client.exists(keys.history(session_id)) == 0
    finally:
        await client.aclose()


async def test_a_used_start_key_writes_nothing(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    first = await _gateway_session(redis_store, clock, idempotency_key="start")
    snapshot = await _dump(redis_url)
    again = SessionId.generate(clock())
    with pytest.raises(ConflictError, match=f"'start' already started session {first}"):
        await redis_store.start_with_turn(
            ACME, again, provider_id="p", model="m", turn=_turn(1), usage=Usage(5),
            idempotency_key="start",
        )  # fmt: skip
    assert await _dump(redis_url) == snapshot
    with pytest.raises(NotFoundError):
        await redis_store.get(ACME, again)
    # Another tenant's keys are its own.
    other = SessionId.generate(clock())
    await redis_store.start_with_turn(
        OTHER, other, provider_id="p", model="m", turn=None, usage=None, idempotency_key="start"
    )
    assert await redis_store._started_by(OTHER, "start") == other
    assert await redis_store._started_by(ACME, "start") == first


async def test_a_gateway_replay_through_another_store_answers_as_the_round_first_did(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    """The idempotency entry keeps the round's usage (or its missing usage) and the
    session's counters right after it: a store that never saw the session replays
    the starting round, a later one, and one whose provider sent no usage."""
    session_id = SessionId.generate(clock())
    started = await redis_store.start_with_turn(
        ACME, session_id, provider_id="p", model="m", turn=_turn(1), usage=Usage(100),
        idempotency_key="s",
    )  # fmt: skip
    clock.advance(1)
    second = await redis_store.record_turn(
        ACME, session_id, turn=_turn(2), usage=Usage(130, 100, raw={"x": [1]}),
        idempotency_key="k2",
    )  # fmt: skip
    clock.advance(1)
    unreported = await redis_store.record_turn(
        ACME, session_id, turn=_turn(3), usage=None, idempotency_key="k3"
    )
    await redis_store.record_turn(ACME, session_id, turn=_turn(4), usage=Usage(170, 130))
    client = await _raw(redis_url)
    try:
        entry = await client.hget(RedisKeys(_prefix(redis_url)).idempotency(session_id), "k2")
    finally:
        await client.aclose()
    assert entry is not None
    assert json.loads(entry) == [
        *json.loads(round_json(second.round)),
        second.session.record.delta_tokens,
        second.session.version,
    ]
    reader = await RedisStore.open(redis_url, clock=clock)
    try:
        for first, sent, found in (
            (started, _turn(1), await reader.find_turn(ACME, "s")),
            (second, _turn(2), await reader.find_turn(ACME, "k2", session_id)),
            (unreported, _turn(3), await reader.find_turn(ACME, "k3", session_id)),
            (
                second,
                _turn(2),
                await reader.record_turn(
                    ACME, session_id, turn=_turn(9), usage=Usage(9), idempotency_key="k2"
                ),
            ),
        ):
            assert found is not None
            assert (found.replayed, found.round, found.turn) == (True, first.round, sent)
            assert (found.round.usage, found.round.gateway) == (
                first.round.usage,
                first.round.gateway,
            )
            assert (found.session.record, found.session.version) == (
                first.session.record,
                first.session.version,
            )
    finally:
        await reader.aclose()
    assert unreported.round.usage_missing


async def test_version_4_data_is_upgraded_on_open(redis_url: str, clock: ManualClock) -> None:
    # Version 5 only added fields and keys that sessions without gateway rounds
    # do not have: version 4 data is what ledger operations write.
    store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
    prefix = _prefix(redis_url)
    client = await _raw(redis_url)
    try:
        ledger = await _active(store)
        await store.record_round(ACME, ledger, 7, idempotency_key="k")
        before = (await store.get(ACME, ledger), await store.list_rounds(ACME, ledger))
        await store.aclose()
        assert not {key for key in await _keys_of(redis_url) if ":h:" in key or "started" in key}
        await client.set(f"{prefix}schema", "4")

        store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
        assert await client.get(f"{prefix}schema") == str(SCHEMA_VERSION) == "7"
        assert (await store.get(ACME, ledger), await store.list_rounds(ACME, ledger)) == before
        started = await _gateway_session(store, clock, idempotency_key="s")
        await store.record_round(ACME, ledger, 3)
        (totals,) = await store.totals(ACME)
        assert (totals.rounds, totals.usage) == (5, UsageTotals(220, 100, 0, 0, 0, 1))
        assert len(await store.history(ACME, started)) == 2
    finally:
        await client.aclose()
        await store.aclose()


async def test_version_6_turns_holding_their_answers_are_read_as_they_are(
    redis_url: str, clock: ManualClock
) -> None:
    # Version 6 packed a turn's answer as sent with the turn itself (an eighth field);
    # version 7 keeps it apart. Opening version 6 data only sets the number.
    store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
    keys = RedisKeys(_prefix(redis_url))
    client = aioredis.Redis.from_url(redis_url.split("?", maxsplit=1)[0])
    try:
        session_id = await _gateway_session(store, clock, idempotency_key="s")
        history = keys.history(session_id)
        for seq in (b"1", b"3"):
            turn, answer = await client.hmget(history, [seq, seq + b":a"])
            old = msgpack.packb([*msgpack.unpackb(turn), answer], use_bin_type=True)
            await client.hset(history, seq, old)
            await client.hdel(history, seq + b":a")
        await client.set(keys.schema, "6")
        await store.aclose()

        store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
        assert await client.get(keys.schema) == str(SCHEMA_VERSION).encode() == b"7"
        assert await store.history(ACME, session_id) == [_turn(1), _turn(3)]
        replayed = await store.find_turn(ACME, "s")
        assert replayed is not None
        assert replayed.turn == _turn(1)
        async with store.turn_history(ACME, session_id) as (_, seen):
            assert seen == [_turn_items(1), _turn_items(3)]
            await store.record_turn(ACME, session_id, turn=_turn(4), usage=Usage(1))
        assert await store.history(ACME, session_id) == [_turn(1), _turn(3), _turn(4)]
    finally:
        await client.aclose()
        await store.aclose()


async def test_a_turns_history_leaves_the_answers_as_sent_unread(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    # A streamed answer's body is its whole event stream; only a replay reads it.
    session_id = await _gateway_session(redis_store, clock)
    async with redis_store.turn_history(ACME, session_id) as (_, history):
        assert history == [_turn_items(1), _turn_items(3)]
        assert all(type(past) is TurnItems for past in history)
    assert [past.answer_body for past in await redis_store.history(ACME, session_id)] == [
        _turn(1).answer_body,
        _turn(3).answer_body,
    ]


async def test_version_5_data_gets_the_rollup_back_filled_on_open(
    redis_url: str, clock: ManualClock
) -> None:
    store = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=7200)
    prefix = _prefix(redis_url)
    client = await _raw(redis_url)
    args: dict[str, Any] = {"bucket": "hour", "start": T0, "group_by": ["provider", "model"]}
    try:
        for hour in range(3):
            ledger = await _active(store)
            await store.record_round(ACME, ledger, 10 + hour, idempotency_key="k")
            await store.record_round(ACME, ledger, 10 + hour, idempotency_key="k")
            await _gateway_session(store, clock)
            await store.create(ACME, provider_id="p", model=f"m{hour}", initial_tokens=5)
            clock.advance(3600)
        args["end"] = clock()
        series = await store.timeseries(ACME, **args)
        assert sum(bucket.rounds for bucket in series) == 12
        await store.aclose()
        rollup = [key for key in await _keys_of(redis_url) if key.startswith(f"{prefix}ts:")]
        assert rollup
        await client.delete(*rollup)
        await client.set(f"{prefix}schema", "5")

        store = await RedisStore.open(redis_url, clock=clock)
        assert await client.get(f"{prefix}schema") == str(SCHEMA_VERSION) == "7"
        assert await store.timeseries(ACME, **args) == series
        await store.aclose()
        # Run again (as after a crash before the version was set): the same sums.
        await client.set(f"{prefix}schema", "5")
        store = await RedisStore.open(redis_url, clock=clock)
        assert await store.timeseries(ACME, **args) == series
    finally:
        await client.aclose()
        await store.aclose()


async def test_a_turn_lock_is_renewed_while_held(
    redis_url: str, redis_store: RedisStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_module, "_TURN_LEASE_MS", 200)
    monkeypatch.setattr(redis_module, "_TURN_RENEW_SECONDS", 0.05)
    session_id = await _gateway_session(redis_store, clock)
    other = await RedisStore.open(redis_url, clock=clock)
    events: list[str] = []

    async def hold(store: RedisStore, name: str, seconds: float) -> None:
        async with store.turn_lock(ACME, session_id):
            events.append(f"{name} in")
            await asyncio.sleep(seconds)
            events.append(f"{name} out")

    try:
        first = asyncio.create_task(hold(redis_store, "a", 0.8))  # four leases
        await asyncio.sleep(0.05)
        await hold(other, "b", 0)
        await first
    finally:
        await other.aclose()
    assert events == ["a in", "a out", "b in", "b out"]
    client = await _raw(redis_url)
    try:
        assert await client.exists(RedisKeys(_prefix(redis_url)).turn_lock(session_id)) == 0
    finally:
        await client.aclose()


async def test_a_turn_lock_whose_holder_is_gone_is_taken_when_its_lease_ends(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    session_id = await _gateway_session(redis_store, clock)
    lock = RedisKeys(_prefix(redis_url)).turn_lock(session_id)
    client = await _raw(redis_url)
    try:
        # A holder that crashed: its token stays until its lease runs out.
        await client.set(lock, "crashed", px=300)
        started = time.monotonic()
        async with redis_store.turn_lock(ACME, session_id):
            waited = time.monotonic() - started
            mine = await client.get(lock)
        assert mine not in (None, "crashed")
        assert waited >= 0.2
        assert await client.exists(lock) == 0
    finally:
        await client.aclose()


async def test_a_cancelled_turn_gives_the_lock_back_and_a_cancelled_waiter_leaves_it(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    session_id = await _gateway_session(redis_store, clock)
    lock = RedisKeys(_prefix(redis_url)).turn_lock(session_id)
    other = await RedisStore.open(redis_url, clock=clock)
    inside = asyncio.Event()

    async def hold(store: RedisStore) -> None:
        async with store.turn_lock(ACME, session_id):
            inside.set()
            await asyncio.Event().wait()

    client = await _raw(redis_url)
    try:
        holder = asyncio.create_task(hold(redis_store))
        await inside.wait()
        token = await client.get(lock)
        waiter = asyncio.create_task(hold(other))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await client.get(lock) == token
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        assert await client.exists(lock) == 0
    finally:
        await client.aclose()
        await other.aclose()


async def test_the_write_of_a_turns_round_gives_its_lock_back(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    session_id = await _gateway_session(redis_store, clock)
    lock = RedisKeys(_prefix(redis_url)).turn_lock(session_id)
    other = await RedisStore.open(redis_url, clock=clock)
    client = await _raw(redis_url)
    try:
        async with AsyncExitStack() as first:
            stored, history = await first.enter_async_context(
                redis_store.turn_history(ACME, session_id)
            )
            assert await client.get(lock) is not None
            # A ledger round is not the turn's round: the turn goes on.
            await redis_store.record_round(ACME, session_id, delta_tokens=5)
            assert await client.get(lock) is not None
            await redis_store.record_turn(ACME, session_id, turn=_turn(5), usage=Usage(1))
            # Given back by the round's write, before the block is left: another
            # process's turn starts now, and sees the round.
            assert await client.exists(lock) == 0
            async with AsyncExitStack() as second:
                _, seen = await second.enter_async_context(other.turn_history(ACME, session_id))
                assert seen == [*history, _turn_items(5)]
                token = await client.get(lock)
                assert token is not None
                # The first turn leaves the other's lock alone.
                await first.aclose()
                assert await client.get(lock) == token
            assert await client.exists(lock) == 0
        assert stored.record.round_count == 3
    finally:
        await client.aclose()
        await other.aclose()


async def test_turns_of_many_sessions_taken_at_once_each_read_their_own(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    sessions = [await _gateway_session(redis_store, clock) for _ in range(8)]
    for n, session_id in enumerate(sessions):
        await redis_store.record_turn(ACME, session_id, turn=_turn(10 + n), usage=Usage(1))
    # One is missing: its turn is refused, the others' go on.
    missing = SessionId.generate(clock())

    async def turn(session_id: SessionId) -> Sequence[HistoryTurn] | None:
        try:
            async with redis_store.turn_history(ACME, session_id) as (_, history):
                return history
        except NotFoundError:
            return None

    # Taken together, the takes that queue behind the first go in one call.
    seen = await asyncio.gather(*(turn(session_id) for session_id in [*sessions, missing]))
    assert seen == [[_turn_items(1), _turn_items(3), _turn_items(10 + n)] for n in range(8)] + [
        None
    ]
    client = await _raw(redis_url)
    try:
        keys = RedisKeys(_prefix(redis_url))
        assert not [s for s in [*sessions, missing] if await client.exists(keys.turn_lock(s))]
    finally:
        await client.aclose()


async def test_a_turn_without_its_round_written_gives_its_lock_back_when_it_ends(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    session_id = await _gateway_session(redis_store, clock)
    lock = RedisKeys(_prefix(redis_url)).turn_lock(session_id)
    client = await _raw(redis_url)
    try:
        # A replayed round writes nothing.
        await redis_store.record_turn(
            ACME, session_id, turn=_turn(4), usage=Usage(1), idempotency_key="k"
        )
        async with redis_store.turn_history(ACME, session_id):
            replay = await redis_store.record_turn(
                ACME, session_id, turn=_turn(4), usage=Usage(1), idempotency_key="k"
            )
            assert replay.replayed
            assert await client.get(lock) is not None
        assert await client.exists(lock) == 0
        # A round refused (the session closed meanwhile) writes nothing either.
        async with redis_store.turn_history(ACME, session_id):
            await redis_store.close(ACME, session_id)
            with pytest.raises(WrongStateError):
                await redis_store.record_turn(ACME, session_id, turn=_turn(5), usage=Usage(1))
            assert await client.get(lock) is not None
        assert await client.exists(lock) == 0
    finally:
        await client.aclose()


async def test_the_write_of_a_turns_round_leaves_a_lock_taken_over_alone(
    redis_url: str, redis_store: RedisStore, clock: ManualClock
) -> None:
    session_id = await _gateway_session(redis_store, clock)
    lock = RedisKeys(_prefix(redis_url)).turn_lock(session_id)
    client = await _raw(redis_url)
    try:
        async with redis_store.turn_history(ACME, session_id):
            # The turn stalled past its lease, and another process took the lock.
            await client.set(lock, "another")
            await redis_store.record_turn(ACME, session_id, turn=_turn(5), usage=Usage(1))
            assert await client.get(lock) == "another"
        assert await client.get(lock) == "another"
        assert len(await redis_store.history(ACME, session_id)) == 3
    finally:
        await client.aclose()


# -- tenants and keys ------------------------------------------------------------------------


async def test_tenants_and_keys_are_per_prefix(redis_url: str, clock: ManualClock) -> None:
    here = await RedisStore.open(redis_url, clock=clock, default_ttl_seconds=60)
    elsewhere_url = redis_url.replace("?prefix=", "?prefix=x")
    there = await RedisStore.open(elsewhere_url, clock=clock, default_ttl_seconds=60)
    try:
        await here.create_tenant(ACME)
        await there.create_tenant(ACME)  # no conflict: another prefix
        with pytest.raises(ConflictError):
            await here.create_tenant(ACME)
        await here.add_api_key(ACME, "k", b"1")
        assert await there.get_api_key("k") is None
        with pytest.raises(ConflictError):
            await here.add_api_key(ACME, "k", b"2")
        with pytest.raises(NotFoundError):
            await here.add_api_key(OTHER, "k2", b"2")
        assert [k.key_hash for k in await here.list_api_keys(ACME)] == [b"1"]
    finally:
        await here.aclose()
        await there.aclose()
        client = await _raw(elsewhere_url)
        try:
            stray = [k async for k in client.scan_iter(match=f"{_prefix(elsewhere_url)}*")]
            if stray:
                await client.delete(*stray)
        finally:
            await client.aclose()


async def test_racing_revocations_keep_the_first_time(
    redis_store: RedisStore, clock: ManualClock
) -> None:
    await redis_store.create_tenant(ACME)
    await redis_store.add_api_key(ACME, "k", b"1")
    revoked = await asyncio.gather(*(redis_store.revoke_api_key("k") for _ in range(10)))
    assert len({r.revoked_at for r in revoked}) == 1
    clock.advance(5)
    assert (await redis_store.revoke_api_key("k")).revoked_at == revoked[0].revoked_at
