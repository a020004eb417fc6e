"""The ``llmsession`` command against real SQLite files, in-process and as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner, Result

from llmsession import Active, AuthenticationError, Client, SessionId, TenantId, Timestamp
from llmsession.cli import cli
from llmsession.client import ServiceUnreachable
from llmsession.clock import ManualClock, system_clock
from llmsession.keys import authenticate
from llmsession.server import ServerSettings
from llmsession.server.render import (
    render_round,
    render_session,
    render_time_bucket,
    render_totals,
)
from llmsession.server.settings import default_store_url
from llmsession.store import GroupKey, SessionStore, StoredSession, TimeBucket, Totals, open_store

T = TypeVar("T")

ACME = TenantId("acme")


def with_store(
    url: str, action: Callable[[SessionStore], Awaitable[T]], *, clock: ManualClock | None = None
) -> T:
    async def run() -> T:
        store = await open_store(url, clock=clock or system_clock)
        try:
            return await action(store)
        finally:
            await store.aclose()

    return asyncio.run(run())


def invoke(url: str, *args: str) -> Result:
    # catch_exceptions=False: an unexpected exception must fail the test with its
    # traceback rather than hide behind an exit code.
    return CliRunner(catch_exceptions=False).invoke(cli, [*args, "--store-url", url])


def ok(url: str, *args: str) -> Result:
    result = invoke(url, *args)
    assert result.exit_code == 0, result.output
    return result


def ok_json(url: str, *args: str) -> Any:
    return json.loads(ok(url, *args, "--json").stdout)


def failing(url: str, code: int, *args: str) -> str:
    """The one-line error of a command that must fail with exit status ``code``."""
    result = invoke(url, *args)
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home and data directory of the test's own: whatever falls back on the default
    store, in this process or in a subprocess (which inherits the environment), never
    writes into the real home directory."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("LLMSESSION_STORE_URL", raising=False)
    return home


@pytest.fixture
def url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def sessions(url: str) -> list[StoredSession]:
    """Three sessions of acme, oldest first: created, active with two rounds, active."""
    ok(url, "tenants", "create", "acme")

    async def make(store: SessionStore) -> list[StoredSession]:
        first = await store.create(ACME, provider_id="openai", model="gpt-4o", initial_tokens=100)
        second = await store.create(ACME, provider_id="openai", model="mini", initial_tokens=50)
        third = await store.create(ACME, provider_id="anthropic", model="opus", initial_tokens=10)
        for made in (second, third):
            await store.activate(ACME, made.record.session_id)
        await store.record_round(ACME, second.record.session_id, 5, idempotency_key="k1")
        await store.record_round(ACME, second.record.session_id, 7)
        return [await store.get(ACME, s.record.session_id) for s in (first, second, third)]

    return with_store(url, make)


# -- tenants and keys ------------------------------------------------------------------------


def test_tenants_create_prints_a_working_key_once(url: str) -> None:
    out = ok(url, "tenants", "create", "acme").stdout
    api_key = out.splitlines()[-1]
    assert api_key.startswith("lls_")
    assert "shown only now" in out
    assert with_store(url, lambda store: authenticate(store, api_key)) == ACME

    created = ok_json(url, "tenants", "create", "other")
    assert set(created) == {"tenant_id", "created_at", "api_key", "key_id"}
    assert created["tenant_id"] == "other"
    assert created["api_key"].startswith(f"lls_{created['key_id']}_")
    assert with_store(url, lambda store: authenticate(store, created["api_key"])) == TenantId(
        "other"
    )


def test_tenants_list_keys_add_and_revoke(url: str) -> None:
    first = ok_json(url, "tenants", "create", "acme")
    ok(url, "tenants", "create", "beta")
    assert [t["tenant_id"] for t in ok_json(url, "tenants", "list")["items"]] == ["acme", "beta"]

    added = ok_json(url, "tenants", "add-key", "acme")
    assert added["tenant_id"] == "acme"
    assert with_store(url, lambda store: authenticate(store, added["api_key"])) == ACME
    keys = ok_json(url, "tenants", "keys", "acme")["items"]
    assert {k["key_id"] for k in keys} == {first["key_id"], added["key_id"]}
    assert all(k["revoked_at"] is None and "api_key" not in k for k in keys)

    table = ok(url, "tenants", "list").stdout.splitlines()
    assert table[0].split() == ["TENANT", "CREATED", "ACTIVE", "KEYS"]
    assert table[1].startswith("acme ")
    assert table[1].endswith(" 2")

    revoked = ok_json(url, "tenants", "revoke", added["key_id"])
    assert revoked["revoked_at"] is not None
    again = ok(url, "tenants", "revoke", added["key_id"]).stdout
    assert added["key_id"] in again
    assert ok(url, "tenants", "list").stdout.splitlines()[1].endswith(" 1")
    keys_table = ok(url, "tenants", "keys", "acme").stdout.splitlines()
    assert keys_table[0].split() == ["KEY", "ID", "CREATED", "REVOKED"]
    assert len(keys_table) == 3


def test_tenant_errors(url: str) -> None:
    ok(url, "tenants", "create", "acme")
    assert "already exists" in failing(url, 1, "tenants", "create", "acme")
    assert "tenant id 'bad id' is not allowed" in failing(url, 2, "tenants", "create", "bad id")
    assert "no tenant" in failing(url, 1, "tenants", "keys", "ghost")
    assert "no tenant" in failing(url, 1, "tenants", "add-key", "ghost")
    assert "no API key 'nokey'" in failing(url, 1, "tenants", "revoke", "nokey")
    assert "Missing argument" in failing(url, 2, "tenants", "create")


# -- sessions -----------------------------------------------------------------------------


def test_sessions_list_filters_and_pages(url: str, sessions: list[StoredSession]) -> None:
    newest_first = [str(s.record.session_id) for s in reversed(sessions)]
    listed = ok_json(url, "sessions", "list", "--tenant", "acme")
    assert [s["session_id"] for s in listed["items"]] == newest_first
    assert listed["items"][1] == render_session(sessions[1])
    assert listed["next_cursor"] is None

    active = ok_json(url, "sessions", "list", "--tenant", "acme", "--state", "active")
    assert [s["session_id"] for s in active["items"]] == newest_first[:2]
    by_model = ok_json(url, "sessions", "list", "--tenant", "acme", "--model", "mini")
    assert [s["session_id"] for s in by_model["items"]] == [newest_first[1]]
    by_provider = ok_json(url, "sessions", "list", "--tenant", "acme", "--provider", "openai")
    assert [s["session_id"] for s in by_provider["items"]] == newest_first[1:]
    window = ok_json(
        url,
        "sessions",
        "list",
        "--tenant",
        "acme",
        "--created-after",
        "2000-01-01T00:00:00Z",
        "--created-before",
        "2000-01-02T00:00:00+00:00",
    )
    assert window["items"] == []

    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(len(sessions)):
        page = ok_json(url, "sessions", "list", "--tenant", "acme", "--limit", "1", *cursor)
        seen += [s["session_id"] for s in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = ["--cursor", page["next_cursor"]]
    assert seen == newest_first

    result = ok(url, "sessions", "list", "--tenant", "acme", "--limit", "2")
    rows = result.stdout.splitlines()
    assert rows[0].split() == [
        "SESSION",
        "STATE",
        "PROVIDER",
        "MODEL",
        "INITIAL",
        "ROUNDS",
        "DELTA",
        "SAVED",
        "CREATED",
    ]
    assert len(rows) == 3
    # Columns line up: every row has its STATE where the header has it.
    state_at = rows[0].index("STATE")
    assert [row[state_at:].split()[0] for row in rows[1:]] == ["active", "active"]
    assert "--cursor" in result.stderr
    assert "No sessions." in ok(url, "sessions", "list", "--tenant", "acme", "--model", "x").stdout
    assert "no tenant ghost" in failing(url, 1, "sessions", "list", "--tenant", "ghost")


def test_sessions_show_and_close(url: str, sessions: list[StoredSession]) -> None:
    second = sessions[1]
    sid = str(second.record.session_id)
    shown = ok_json(url, "sessions", "show", "--tenant", "acme", sid)
    assert shown == render_session(second)

    with_rounds = ok_json(url, "sessions", "show", "--tenant", "acme", sid, "--rounds")
    rounds = with_store(url, lambda store: store.list_rounds(ACME, second.record.session_id))
    assert with_rounds["rounds"] == [render_round(r) for r in rounds.items]
    assert [r["delta_tokens"] for r in with_rounds["rounds"]] == [5, 7]

    lines = ok(url, "sessions", "show", "--tenant", "acme", sid, "--rounds").stdout.splitlines()
    fields = [line.split() for line in lines]
    assert ["session_id", sid] in fields
    assert ["tokens_saved", "88"] in fields
    assert ["usage.input_tokens", "0"] in fields
    assert [
        "SEQ",
        "DELTA",
        "INPUT",
        "CACHED",
        "CACHE_WRITES",
        "OUTPUT",
        "REASONING",
        "RECORDED",
        "KEY",
    ] in fields

    closed = ok_json(url, "sessions", "close", "--tenant", "acme", sid)
    assert closed["state"] == "closed"
    assert closed["tokens_saved"] == 2 * 50 - 12
    stored = with_store(url, lambda store: store.get(ACME, second.record.session_id))
    assert closed == render_session(stored)

    error = failing(url, 1, "sessions", "close", "--tenant", "acme", sid)
    assert error == "Error: close() needs a session in state 'active', but this session is 'closed'"
    created = str(sessions[0].record.session_id)
    message = ok(url, "sessions", "close", "--tenant", "acme", str(sessions[2].record.session_id))
    assert "Closed session" in message.stdout
    assert "'created'" in failing(url, 1, "sessions", "close", "--tenant", "acme", created)


def test_another_tenants_session_is_not_found(url: str, sessions: list[StoredSession]) -> None:
    ok(url, "tenants", "create", "beta")
    sid = str(sessions[1].record.session_id)
    assert "no session" in failing(url, 1, "sessions", "show", "--tenant", "beta", sid)
    assert "no session" in failing(url, 1, "sessions", "close", "--tenant", "beta", sid)
    assert (
        with_store(url, lambda store: store.get(ACME, sessions[1].record.session_id)).record.state
        is Active
    )


def test_show_and_close_under_an_unknown_tenant_say_the_tenant_is_unknown(
    url: str, sessions: list[StoredSession], tmp_path: Path
) -> None:
    # As `sessions list` and `stats` say it, rather than "no session" for a session
    # the tenant could never have.
    sid = str(sessions[1].record.session_id)
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[providers.fake]\nkind = "gemini"\nbase_url = "http://127.0.0.1:9"\n'
        'api_key_env = "LLMSESSION_TEST_UNSET_KEY"\n'
    )
    for args in (["show"], ["close"], ["close", "--config", str(config)]):
        error = failing(url, 1, "sessions", *args, "--tenant", "nosuch", sid)
        assert error == "Error: no tenant nosuch"
    # A known tenant without the session still gets "no session".
    ok(url, "tenants", "create", "beta")
    assert (
        failing(url, 1, "sessions", "show", "--tenant", "beta", sid) == f"Error: no session {sid}"
    )
    assert (
        with_store(url, lambda store: store.get(ACME, sessions[1].record.session_id)).record.state
        is Active
    )


# -- sweep and stats ----------------------------------------------------------------------


def test_sweep_expires_due_and_purges_abandoned_sessions(url: str) -> None:
    long_ago = ManualClock(Timestamp.parse("2020-01-01T00:00:00Z"))
    ok(url, "tenants", "create", "acme")

    async def make(store: SessionStore) -> tuple[SessionId, SessionId]:
        due = await store.create(ACME, provider_id="p", model="m", initial_tokens=1, ttl_seconds=60)
        await store.activate(ACME, due.record.session_id)
        abandoned = await store.create(ACME, provider_id="p", model="m", initial_tokens=1)
        return due.record.session_id, abandoned.record.session_id

    due, abandoned = with_store(url, make, clock=long_ago)
    fresh = with_store(
        url,
        lambda store: store.create(ACME, provider_id="p", model="m", initial_tokens=1),
    ).record.session_id

    assert ok_json(url, "sweep") == {"expired": 1, "purged": 1}
    assert ok_json(url, "sweep") == {"expired": 0, "purged": 0}
    expired = with_store(url, lambda store: store.get(ACME, due))
    assert expired.record.state.name == "expired"
    assert expired.record.expired_at == long_ago.now.plus_seconds(60)
    assert "no session" in failing(url, 1, "sessions", "show", "--tenant", "acme", str(abandoned))
    assert with_store(url, lambda store: store.get(ACME, fresh)).record.state.name == "created"
    assert "Expired 0 sessions; purged 0" in ok(url, "sweep").stdout


def test_sweep_purges_one_tenant_only_when_asked(url: str) -> None:
    long_ago = ManualClock(Timestamp.parse("2020-01-01T00:00:00Z"))
    globex = TenantId("globex")
    ok(url, "tenants", "create", "acme")
    ok(url, "tenants", "create", "globex")

    async def make(store: SessionStore) -> list[SessionId]:
        made = [
            await store.create(tenant, provider_id="p", model="m", initial_tokens=1)
            for tenant in (ACME, globex)
        ]
        return [m.record.session_id for m in made]

    mine, theirs = with_store(url, make, clock=long_ago)
    assert ok_json(url, "sweep", "--purge-tenant", "globex") == {"expired": 0, "purged": 1}
    assert with_store(url, lambda store: store.get(ACME, mine)).record.state.name == "created"
    assert "no session" in failing(url, 1, "sessions", "show", "--tenant", "globex", str(theirs))
    assert "no tenant nobody" in failing(url, 1, "sweep", "--purge-tenant", "nobody")
    assert ok_json(url, "sweep") == {"expired": 0, "purged": 1}


def test_stats(url: str, sessions: list[StoredSession]) -> None:
    groupings: list[list[GroupKey]] = [[], ["provider"], ["provider", "model"]]
    for group_by in groupings:
        flags = [arg for key in group_by for arg in ("--group-by", key)]
        shown = ok_json(url, "stats", "--tenant", "acme", *flags)

        async def totals(store: SessionStore, by: list[GroupKey] = group_by) -> list[Totals]:
            return await store.totals(ACME, by)

        assert shown == {"groups": [render_totals(t) for t in with_store(url, totals)]}
    overall = ok_json(url, "stats", "--tenant", "acme")["groups"]
    assert overall == [
        {
            "provider_id": None,
            "model": None,
            "sessions": {"created": 1, "active": 2, "closed": 0, "expired": 0},
            "rounds": 2,
            "delta_tokens": 12,
            "tokens_saved": 88,
            "usage": {
                "input_tokens": 0,
                "cached_input_tokens": 0,
                "cache_write_tokens": 0,
                "output_tokens": 0,
                "reasoning_tokens": 0,
                "rounds_without_usage": 0,
            },
            "cost": None,
        }
    ]
    table = ok(url, "stats", "--tenant", "acme", "--group-by", "provider").stdout.splitlines()
    assert table[0].split() == [
        "PROVIDER",
        "MODEL",
        "CREATED",
        "ACTIVE",
        "CLOSED",
        "EXPIRED",
        "ROUNDS",
        "DELTA",
        "SAVED",
        "INPUT",
        "CACHED",
        "CACHE_WRITES",
        "OUTPUT",
    ]
    assert [row.split()[:2] for row in table[1:]] == [["anthropic", "(all)"], ["openai", "(all)"]]
    assert "--group-by" in failing(url, 2, "stats", "--tenant", "acme", "--group-by", "color")
    assert "no tenant ghost" in failing(url, 1, "stats", "--tenant", "ghost")


def test_stats_timeseries(url: str, sessions: list[StoredSession]) -> None:
    created = sessions[0].record.created_at
    window = ["--start", created.plus_seconds(-60).isoformat()]
    window += ["--end", created.plus_seconds(3600).isoformat()]
    for bucket in ("hour", "day"):
        for group_by in ([], ["--group-by", "provider", "--group-by", "model"]):
            shown = ok_json(
                url, "stats", "--tenant", "acme", "--timeseries", bucket, *window, *group_by
            )

            async def series(
                store: SessionStore, b: str = bucket, by: list[str] = group_by[1::2]
            ) -> list[TimeBucket]:
                return await store.timeseries(
                    ACME,
                    bucket=b,  # type: ignore[arg-type]
                    start=created.plus_seconds(-60),
                    end=created.plus_seconds(3600),
                    group_by=by,  # type: ignore[arg-type]
                )

            buckets = with_store(url, series)
            assert shown["buckets"] == [render_time_bucket(b) for b in buckets]
            assert sum(b["rounds"] for b in shown["buckets"]) == 2
            assert sum(b["sessions_started"] for b in shown["buckets"]) == 3
    # The default range ends now: these sessions were made just now.
    table = ok(url, "stats", "--tenant", "acme", "--timeseries", "day").stdout.splitlines()
    assert table[0].split()[:4] == ["START", "PROVIDER", "MODEL", "ROUNDS"]
    assert [row.split()[1:4] for row in table[1:]] == [["(all)", "(all)", "2"]]
    assert "go with --timeseries" in failing(url, 2, "stats", "--tenant", "acme", *window)
    assert "spans at most 31 days" in failing(
        url,
        2,
        "stats",
        "--tenant",
        "acme",
        "--timeseries",
        "hour",
        "--start",
        "2026-01-01T00:00Z",
        "--end",
        "2026-03-01T00:00Z",
    )


# -- bad input: exit 2, one clear line -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["sessions", "list", "--tenant", "acme", "--limit", "0"], "limit must be an integer"),
        (["sessions", "list", "--tenant", "acme", "--cursor", "zzz"], "cursor 'zzz'"),
        (["sessions", "list", "--tenant", "acme", "--state", "asleep"], "'asleep' is not one of"),
        (["sessions", "list", "--tenant", "acme", "--created-after", "yesterday"], "ISO 8601"),
        (
            ["sessions", "list", "--tenant", "acme", "--created-after", "2026-01-01T00:00"],
            "'2026-01-01T00:00' has no timezone; end it with Z",
        ),
        (["sessions", "list", "--tenant", "no spaces"], "tenant id 'no spaces'"),
        (["sessions", "list"], "Missing option '--tenant'"),
        (["sessions", "show", "--tenant", "acme", "not-a-uuid"], "is not a session id"),
        (["sessions", "lst", "--tenant", "acme"], "No such command 'lst'"),
        (["sweep", "--purge-created-after", "0"], "'--purge-created-after': 0 is not in"),
        (["sweep", "--purge-created-after", "59"], "'--purge-created-after': 59 is not in"),
        (["sweep", "--purge-tenant", "no spaces"], "tenant id 'no spaces'"),
        (["sweep", "--batch-size", "0"], "'--batch-size': 0 is not in"),
        (["tenants", "revoke", "../x"], "key id '../x' is malformed: 1 to 64 letters and digits"),
        # Named by their flags, not by the settings they set.
        (["serve", "--default-ttl", "0"], "'--default-ttl': 0 is not in the range"),
        (["serve", "--purge-created-after", "5"], "'--purge-created-after': 5 is not in"),
    ],
)
def test_bad_input_exits_2_with_one_line(url: str, args: list[str], says: str) -> None:
    ok(url, "tenants", "create", "acme")
    assert says in failing(url, 2, *args)


def test_a_bad_value_from_the_environment_names_its_variable(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The user set the variable, not the flag: the line says which.
    monkeypatch.setenv("LLMSESSION_PURGE_CREATED_AFTER", "5")
    said = failing(url, 2, "sweep")
    assert "'--purge-created-after': 5 is not in the range" in said
    assert "set by LLMSESSION_PURGE_CREATED_AFTER in the environment" in said
    # A flag overrides the variable: then the flag alone is named.
    flagged = failing(url, 2, "sweep", "--purge-created-after", "7")
    assert "LLMSESSION_PURGE_CREATED_AFTER" not in flagged


def test_unknown_store_scheme_is_bad_input(tmp_path: Path) -> None:
    assert "unknown store URL scheme 'mysql'" in failing("mysql://x/y", 2, "tenants", "list")


# -- the real process ----------------------------------------------------------------------


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmsession.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


def test_as_a_real_process(url: str) -> None:
    created = run_cli("tenants", "create", "acme", "--json", env={"LLMSESSION_STORE_URL": url})
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["tenant_id"] == "acme"
    listed = run_cli("tenants", "list", "--json", "--store-url", url)
    assert json.loads(listed.stdout) == {
        "items": [{"tenant_id": "acme", "created_at": json.loads(created.stdout)["created_at"]}]
    }

    bad = run_cli("sessions", "list", "--tenant", "acme", "--limit", "5000", "--store-url", url)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr == "Error: limit must be an integer from 1 to 1000, got 5000\n"
    failed = run_cli("tenants", "create", "acme", "--store-url", url)
    assert failed.returncode == 1
    assert failed.stderr == "Error: tenant acme already exists\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_healthy(base: str, process: subprocess.Popen[str]) -> None:
    with Client(base, timeout=2) as client:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the server did not answer within 30 s"
            try:
                if client.health():
                    return
            except ServiceUnreachable:  # not listening yet
                time.sleep(0.05)


@pytest.fixture
def served(url: str) -> Iterator[tuple[str, str, subprocess.Popen[str]]]:
    port = _free_port()
    admin_key = f"admin-{uuid.uuid4().hex}"
    process = subprocess.Popen(
        [sys.executable, "-m", "llmsession.cli", "serve", "--port", str(port), "--store-url", url],
        env={
            **os.environ,
            "LLMSESSION_ADMIN_KEY": admin_key,
            "LLMSESSION_PORT": "1",
            # A setting with no flag: serve must still take it from the environment.
            "LLMSESSION_AUTH_CACHE_SECONDS": "0",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, process)
        yield base, admin_key, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        process.communicate()


def test_serve_takes_flags_over_the_environment(
    url: str, served: tuple[str, str, subprocess.Popen[str]]
) -> None:
    base, admin_key, process = served  # LLMSESSION_PORT=1, --port a free one
    with Client(base, api_key=admin_key) as admin:
        new = admin.create_tenant("served")
    # The server and the CLI share the store: the CLI sees the tenant the server made.
    keys = ok_json(url, "tenants", "keys", "served")["items"]
    assert [k["key_id"] for k in keys] == [new.key_id]
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def test_serve_keeps_environment_settings_that_have_no_flag(
    url: str, served: tuple[str, str, subprocess.Popen[str]]
) -> None:
    base, admin_key, _ = served
    with Client(base, api_key=admin_key) as admin:
        new = admin.create_tenant("cached")
    with Client(base, api_key=new.api_key) as tenant:
        assert tenant.list_sessions().items == []
        # Revoked by another process: with LLMSESSION_AUTH_CACHE_SECONDS=0 the
        # server must not answer from a cached key check.
        assert run_cli("tenants", "revoke", new.key_id, "--store-url", url).returncode == 0
        with pytest.raises(AuthenticationError):
            tenant.list_sessions()


def test_serve_refuses_bad_settings(url: str) -> None:
    bad_flag = run_cli("serve", "--port", "0", "--store-url", url)
    assert bad_flag.returncode == 2
    assert bad_flag.stderr == "Error: --port must be an integer from 1 to 65535, got 0\n"
    # Each flag is named as typed, not as the setting it sets.
    for flag, value, said in [
        ("--sweep-interval", "0", "--sweep-interval must be a number of seconds from 0.01"),
        ("--admin-key", "short", "--admin-key must be at least 16 printable ASCII characters"),
    ]:
        refused = run_cli("serve", flag, value, "--store-url", url)
        assert refused.returncode == 2
        assert refused.stderr.startswith(f"Error: {said}")
    # Refused by click's parser before the command's context exists: still one line
    # pointing to the command's --help.
    no_value = run_cli("serve", "--config")
    assert no_value.returncode == 2
    assert no_value.stderr == (
        "Error: Option '--config' requires an argument. (see 'llmsession serve --help')\n"
    )
    bad_store = run_cli("serve", "--store-url", "mysql://db/x")
    assert bad_store.returncode == 2
    assert bad_store.stderr.startswith("Error: unknown store URL scheme 'mysql'")
    assert bad_store.stderr.count("\n") == 1
    bad_env = run_cli("serve", env={"LLMSESSION_PORT": "eighty"})
    assert bad_env.returncode == 2
    assert bad_env.stderr.startswith("Error: LLMSESSION_PORT='eighty' is not valid")


def test_default_store_url_is_the_servers() -> None:
    assert ServerSettings().store_url == default_store_url()


def test_commands_other_than_serve_do_not_load_the_web_framework() -> None:
    # FastAPI and uvicorn take half a second to import; only `serve` needs them.
    probe = "import sys, llmsession.cli; print(sorted({'fastapi', 'uvicorn'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout == "[]\n"


# -- plural forms ------------------------------------------------------------------------


def test_counts_take_the_singular_for_one(url: str) -> None:
    ok(url, "tenants", "create", "acme")

    async def make(store: SessionStore) -> tuple[SessionId, SessionId]:
        # One round of 1 token on 2 initial ones: 1 round, 1 delta token, 1 token saved.
        one = await store.create(ACME, provider_id="p", model="m", initial_tokens=2)
        await store.activate(ACME, one.record.session_id)
        await store.record_round(ACME, one.record.session_id, 1)
        none = await store.create(ACME, provider_id="p", model="m", initial_tokens=2)
        await store.activate(ACME, none.record.session_id)
        return one.record.session_id, none.record.session_id

    one, none = with_store(url, make)
    assert ok(url, "sessions", "close", "--tenant", "acme", str(one)).stdout == (
        f"Closed session {one}: 1 round, 1 delta token, 1 token saved.\n"
    )
    assert ok(url, "sessions", "close", "--tenant", "acme", str(none)).stdout == (
        f"Closed session {none}: 0 rounds, 0 delta tokens, 0 tokens saved.\n"
    )

    long_ago = ManualClock(Timestamp.parse("2020-01-01T00:00:00Z"))

    async def abandon(store: SessionStore) -> None:
        due = await store.create(ACME, provider_id="p", model="m", initial_tokens=1, ttl_seconds=1)
        await store.activate(ACME, due.record.session_id)
        await store.create(ACME, provider_id="p", model="m", initial_tokens=1)

    with_store(url, abandon, clock=long_ago)
    assert ok(url, "sweep").stdout == "Expired 1 session; purged 1 session never activated.\n"
    assert ok(url, "sweep").stdout == "Expired 0 sessions; purged 0 sessions never activated.\n"


# -- where the data lives ------------------------------------------------------------------


def test_the_default_store_is_the_same_from_any_directory(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    assert run_cli("tenants", "create", "acme", cwd=first).returncode == 0
    listed = run_cli("tenants", "list", "--json", cwd=second)
    assert listed.returncode == 0, listed.stderr
    assert [t["tenant_id"] for t in json.loads(listed.stdout)["items"]] == ["acme"]
    # In $XDG_DATA_HOME (set by own_home), not in either working directory.
    assert (tmp_path / "data" / "llmsession" / "llmsession.db").is_file()
    assert list(first.iterdir()) == list(second.iterdir()) == []


def test_without_xdg_data_home_the_store_is_under_home(
    tmp_path: Path, own_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_DATA_HOME")
    assert run_cli("tenants", "create", "acme", cwd=tmp_path).returncode == 0
    assert (own_home / ".local" / "share" / "llmsession" / "llmsession.db").is_file()
    # A flag or the variable still choose another store.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert ok_json(other, "tenants", "list") == {"items": []}
    empty = run_cli("tenants", "list", "--json", env={"LLMSESSION_STORE_URL": other})
    assert json.loads(empty.stdout) == {"items": []}


def test_serve_shows_its_store_and_shares_it_with_the_cli_run_elsewhere(tmp_path: Path) -> None:
    # The quick start: the server in one directory, `tenants create` in another; the
    # key it prints must work against the server.
    server_dir, shell_dir = tmp_path / "server", tmp_path / "shell"
    server_dir.mkdir()
    shell_dir.mkdir()
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "llmsession.cli", "serve", "--port", str(port)],
        cwd=server_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, process)
        created = run_cli("tenants", "create", "acme", "--json", cwd=shell_dir)
        assert created.returncode == 0, created.stderr
        with Client(base, api_key=json.loads(created.stdout)["api_key"]) as client:
            assert client.list_sessions().items == []
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    _, err = process.communicate()
    path = tmp_path / "data" / "llmsession" / "llmsession.db"
    assert f"store: sqlite:///{path}\n" in err
    assert list(server_dir.iterdir()) == list(shell_dir.iterdir()) == []


# -- start-up failures: one line, the documented exit status --------------------------------

# Both ways of starting the server, which must fail alike.
ENTRY_POINTS = {
    "llmsession serve": ["-m", "llmsession.cli", "serve"],
    "python -m llmsession.server": ["-m", "llmsession.server"],
}


def run_python(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        cwd=cwd,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("env", "status", "says"),
    [
        ({"LLMSESSION_PORT": "eighty"}, 2, "Error: LLMSESSION_PORT='eighty' is not valid"),
        ({"LLMSESSION_STORE_URL": "mysql://db/x"}, 2, "Error: unknown store URL scheme 'mysql'"),
        (
            {"LLMSESSION_STORE_URL": "postgresql://llm@127.0.0.1:5432/x?connect_timeout=0"},
            2,
            "Error: URL parameter connect_timeout must be a whole number from 1 to 3600",
        ),
    ],
)
def test_bad_input_exits_2_from_either_entry_point(
    entry: str, env: dict[str, str], status: int, says: str
) -> None:
    assert one_error_line(run_python(ENTRY_POINTS[entry], env), status).startswith(says)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("config", "env", "says"),
    [
        (None, {}, "cannot read the gateway config"),
        (
            '[providers.fake]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
            'api_key_env = "LLMSESSION_TEST_UNSET_KEY"\n',
            {"LLMSESSION_TEST_UNSET_KEY": ""},
            "LLMSESSION_TEST_UNSET_KEY",
        ),
    ],
)
def test_a_bad_providers_file_exits_2_before_the_store_is_made(
    entry: str, config: str | None, env: dict[str, str], says: str, tmp_path: Path
) -> None:
    path = tmp_path / "gateway.toml"
    if config is not None:
        path.write_text(config)
    store = tmp_path / "store.db"
    result = run_python(
        ENTRY_POINTS[entry],
        {
            **env,
            "LLMSESSION_CONFIG": str(path),
            "LLMSESSION_STORE_URL": f"sqlite:///{store}",
            "LLMSESSION_PORT": str(_free_port()),
        },
    )
    assert says in one_error_line(result, 2)
    assert not store.exists()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_store_that_cannot_be_opened_exits_1_from_either_entry_point(
    entry: str, tmp_path: Path
) -> None:
    # A directory cannot be opened as a SQLite database file.
    env = {"LLMSESSION_STORE_URL": f"sqlite:///{tmp_path}", "LLMSESSION_PORT": str(_free_port())}
    assert "SQLite" in one_error_line(run_python(ENTRY_POINTS[entry], env), 1)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_port_in_use_exits_3_before_startup_from_either_entry_point(entry: str, url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_python(
            ENTRY_POINTS[entry], {"LLMSESSION_STORE_URL": url, "LLMSESSION_PORT": str(port)}
        )
    # One line, and nothing from uvicorn: no startup was announced.
    line = one_error_line(result, 3)
    assert line.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")
    assert "LLMSESSION_PORT" in line


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_host_that_is_not_this_machine_s_exits_3_saying_so(entry: str, url: str) -> None:
    result = run_python(
        ENTRY_POINTS[entry],
        {"LLMSESSION_STORE_URL": url, "LLMSESSION_HOST": "256.1.1.1", "LLMSESSION_PORT": "8080"},
    )
    line = one_error_line(result, 3)
    assert line.startswith("Error: cannot listen on 256.1.1.1:8080: ")
    # Not "is another server running there?": that is for an address in use.
    assert line.endswith("give --host (LLMSESSION_HOST) an address of this machine, e.g. 127.0.0.1")


def _closed_port_url(scheme: str) -> tuple[str, str]:
    """A URL with a password, on a port where nothing listens; and how errors show it."""
    port = _free_port()
    if scheme == "postgresql":
        return (
            f"postgresql://llm:hunter2@127.0.0.1:{port}/test",
            f"cannot connect to PostgreSQL at postgresql://llm:***@127.0.0.1:{port}/test "
            "(connect_timeout=5 s): ",
        )
    return f"redis://:hunter2@127.0.0.1:{port}/0", f"cannot connect to Redis at 127.0.0.1:{port}/0"


STORE_COMMANDS = [
    ["tenants", "list"],
    ["tenants", "create", "acme"],
    ["sessions", "list", "--tenant", "acme"],
    ["sweep"],
    ["stats", "--tenant", "acme"],
    ["serve"],
]


@pytest.mark.parametrize("scheme", ["postgresql", "redis"])
def test_an_unreachable_server_is_one_line_naming_the_url(scheme: str) -> None:
    store_url, shown = _closed_port_url(scheme)
    env = {"LLMSESSION_STORE_URL": store_url, "LLMSESSION_PORT": str(_free_port())}
    runs = [run_python(["-m", "llmsession.cli", *args], env) for args in STORE_COMMANDS]
    runs.append(run_python(ENTRY_POINTS["python -m llmsession.server"], env))
    for result in runs:
        line = one_error_line(result, 1)  # no pool warnings before it
        assert line.startswith(f"Error: {shown}"), line
        assert "hunter2" not in line
        assert "Check the URL's host, port" in line


def test_the_postgres_connect_timeout_is_a_url_parameter() -> None:
    store_url, _ = _closed_port_url("postgresql")
    result = run_cli("tenants", "list", "--store-url", f"{store_url}?connect_timeout=2")
    assert "(connect_timeout=2 s)" in one_error_line(result, 1)
