"""The counters totals read on SQLite and PostgreSQL (``session_counts``, kept by
triggers on sessions) stay equal to a full recount of the sessions through any
mix of writes, and totals stays what a memory store answers.

The work is random: creates, gateway starts, activations, rounds (one at a
time and many at once, so that the group commit batches them), gateway turns,
closes, expiries, sweeps and purges of Created sessions, with amounts whose
sums pass 2**63-1.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections import Counter
from datetime import UTC, datetime

import psycopg
import pytest

from llmsession.clock import ManualClock
from llmsession.errors import LLMSessionError
from llmsession.ids import SessionId, TenantId
from llmsession.store import SessionStore, open_store
from llmsession.store import postgres as postgres_module
from llmsession.store import sqlite as sqlite_module
from llmsession.store.memory import MemoryStore
from llmsession.store.models import Turn
from llmsession.store.postgres import PostgresOptions
from llmsession.store.sqlite import path_of_url
from llmsession.timestamps import Timestamp
from llmsession.usage import Usage
from tests.store.conftest import all_sessions, backend_url
from tests.store.workload import start_alike

ACME = TenantId("acme")
OTHER = TenantId("other")

# The recount: what the upgrade back-fills the counters with, read instead of written.
_RECOUNT = {
    "sqlite": sqlite_module._COUNTS_BACKFILL.removeprefix("INSERT INTO session_counts "),
    "postgres": postgres_module.COUNTS_BACKFILL.removeprefix("INSERT INTO session_counts "),
}
# The key columns of each backend's counters (PostgreSQL's have a slot).
_KEYS = {"sqlite": 4, "postgres": 5}


async def _outcome(
    store: SessionStore, op: str, tenant: TenantId, session_id: SessionId, delta: int
) -> str:
    try:
        if op == "activate":
            await store.activate(tenant, session_id)
        elif op == "round":
            await store.record_round(tenant, session_id, delta)
        elif op == "turn":
            usage = None if delta == 7 else Usage(delta, delta // 3, delta // 5, 11, 2)
            turn = Turn("chat/completions", "h", "[1]", "[2]", None, 200, "t", b"{}")
            await store.record_turn(tenant, session_id, turn=turn, usage=usage)
        elif op == "close":
            await store.close(tenant, session_id)
        else:
            await store.expire(tenant, session_id)
    except LLMSessionError as error:
        return type(error).__name__
    return "ok"


async def _counters(backend: str, url: str) -> tuple[list[tuple[object, ...]], ...]:
    """The counters with sessions, those without, and the recount, each in key order."""
    keys = _KEYS[backend]
    order = ", ".join(str(n) for n in range(1, keys + 1))
    statements = (
        f"SELECT * FROM session_counts WHERE sessions <> 0 ORDER BY {order}",
        "SELECT * FROM session_counts WHERE sessions = 0",
        f"{_RECOUNT[backend]} ORDER BY {order}",
    )
    if backend == "sqlite":
        with sqlite3.connect(path_of_url(url)) as conn:
            found = tuple(conn.execute(statement).fetchall() for statement in statements)
        conn.close()
        return found
    conninfo = PostgresOptions.from_url(url).conninfo
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        results = []
        for statement in statements:
            cur = await conn.execute(statement.encode())
            results.append(await cur.fetchall())
        return tuple(results)


async def _random_step(
    rng: random.Random,
    clock: ManualClock,
    memory: MemoryStore,
    store: SessionStore,
    pairs: list[tuple[TenantId, SessionId, SessionId]],
    *,
    seen: Counter[str],
) -> list[tuple[TenantId, SessionId, SessionId]]:
    """One random write on both stores, checking they answer alike; the pairs of
    sessions (tenant, memory id, store id) still stored after it. ``seen`` counts
    the sessions swept and purged, and the writes done at once that succeeded."""
    action = rng.random()
    if action < 0.2 or not pairs:
        tenant, made = await start_alike(rng, clock, (memory, store), (ACME, OTHER), _gateway_round)
        pairs.append((tenant, made[0].record.session_id, made[1].record.session_id))
    elif action < 0.8:
        tenant, mid, sid = rng.choice(pairs)
        op = rng.choice(["activate", "round", "round", "round", "turn", "turn", "close", "expire"])
        delta = rng.choice([0, 1, 7, 999, 2**41, 2**62])
        assert await _outcome(memory, op, tenant, mid, delta) == await _outcome(
            store, op, tenant, sid, delta
        ), op
    elif action < 0.9:
        # Several sessions' writes at once: the group commit takes them together.
        chosen = rng.sample(pairs, min(len(pairs), 6))
        ops = [(rng.choice(["activate", "round", "turn", "close"]), p) for p in chosen]
        delta = rng.choice([1, 999, 2**62])
        expected = [await _outcome(memory, op, t, mid, delta) for op, (t, mid, _) in ops]
        found = await asyncio.gather(
            *(_outcome(store, op, t, sid, delta) for op, (t, _, sid) in ops)
        )
        assert found == expected
        seen["at once"] += found.count("ok")
    elif action < 0.95:
        swept = await store.sweep()
        assert await memory.sweep() == swept
        seen["swept"] += swept
    else:
        age = rng.choice([60, 90])
        scope = rng.choice([None, ACME])
        purged = await store.purge_created(age, tenant_id=scope)
        assert await memory.purge_created(age, tenant_id=scope) == purged
        seen["purged"] += purged
        alive = {s.record.session_id for t in (ACME, OTHER) for s in await all_sessions(memory, t)}
        pairs = [p for p in pairs if p[1] in alive]
    return pairs


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ],
)
async def test_counters_equal_a_recount_after_random_work(
    request: pytest.FixtureRequest, backend: str
) -> None:
    url = backend_url(request, backend)
    rng = random.Random(2026)
    clock = ManualClock(Timestamp.from_datetime(datetime(2026, 3, 1, tzinfo=UTC)))
    memory = MemoryStore(clock=clock, default_ttl_seconds=30)
    store = await open_store(url, clock=clock, default_ttl_seconds=30)
    pairs: list[tuple[TenantId, SessionId, SessionId]] = []  # (tenant, memory id, store id)
    checked = 0
    seen: Counter[str] = Counter()
    try:
        for step in range(320):
            pairs = await _random_step(rng, clock, memory, store, pairs, seen=seen)
            clock.advance(rng.choice([0, 0.5, 3, 10]))
            if step % 40 == 39:
                kept, emptied, recount = await _counters(backend, url)
                assert kept == recount
                # A row whose sessions all left holds nothing.
                assert all(not any(row[_KEYS[backend] :]) for row in emptied)
                checked += 1
                for tenant in (ACME, OTHER):
                    for group_by in ((), ("provider",), ("model",), ("provider", "model")):
                        assert await store.totals(tenant, group_by) == await memory.totals(
                            tenant, group_by
                        )
        kept, _, recount = await _counters(backend, url)
        assert kept == recount
        assert len(kept) > 10
        assert checked == 8
        assert min(seen[what] for what in ("at once", "swept", "purged")) > 5, seen
    finally:
        await store.aclose()


def _gateway_round(initial: int) -> tuple[Usage, Turn]:
    """What a gateway round that starts a session reported, and its turn."""
    usage = Usage(initial % 5000 + 4, 3, 1, 11, 2)
    return usage, Turn("chat/completions", "h", "[1]", "[2]", None, 200, "t", b"{}")
