"""Run by tests/test_packaging.py inside a venv holding only ``pip install llmsession``.

It uses the core, the SQLite store and the client (against a server the test
runs from its own venv), tries the stores whose extras are missing, and prints
what it saw as one JSON object for the test to check. It imports nothing but
the standard library and llmsession, so that what it reports as loaded comes
from llmsession.

Usage: python plain_install_probe.py BASE_URL ADMIN_KEY WORK_DIR
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import sys
from datetime import UTC, datetime

#: The top-level modules of the server, postgres and redis extras (and what they bring).
EXTRA_MODULES = (
    "click",
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "prometheus_client",
    "psycopg",
    "psycopg_pool",
    "psycopg_binary",
    "redis",
    "hiredis",
    "msgpack",
)


def use_core() -> int:
    from llmsession import Session, SessionId, SessionRecord, TenantId, Timestamp

    now = Timestamp.from_datetime(datetime.now(UTC))
    record = SessionRecord.new(
        session_id=SessionId.generate(now),
        tenant_id=TenantId("acme"),
        provider_id="openai",
        model="gpt-4o",
        initial_tokens=1200,
        created_at=now,
    )
    active = Session.new(record).activate(now)
    active.record_delta(80)
    return active.tokens_saved()


def use_client(base_url: str, admin_key: str) -> int:
    from llmsession import Client

    with Client(base_url, api_key=admin_key) as admin:
        api_key = admin.create_tenant("acme").api_key
    with Client(base_url, api_key=api_key) as client:
        session = client.create_session(provider_id="openai", model="gpt-4o", initial_tokens=1200)
        client.activate_session(session.session_id)
        result = client.record_round(session.session_id, 80, idempotency_key="round-1")
        return result.session.tokens_saved


async def use_sqlite(work_dir: str) -> int:
    from llmsession import TenantId
    from llmsession.store import open_store

    store = await open_store(f"sqlite:///{work_dir}/plain.db")
    try:
        tenant = TenantId("acme")
        await store.create_tenant(tenant)
        stored = await store.create(
            tenant, provider_id="openai", model="gpt-4o", initial_tokens=1200
        )
        await store.activate(tenant, stored.record.session_id)
        result = await store.record_round(tenant, stored.record.session_id, 80)
        return result.session.record.round_count
    finally:
        await store.aclose()


async def open_without_extra(url: str) -> str:
    from llmsession.store import open_store

    try:
        store = await open_store(url)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    await store.aclose()
    return "opened"


def main() -> None:
    base_url, admin_key, work_dir = sys.argv[1:]
    report = {
        "requires": [
            requirement
            for requirement in importlib.metadata.requires("llmsession") or []
            if "extra ==" not in requirement
        ],
        "core_tokens_saved": use_core(),
        "client_tokens_saved": use_client(base_url, admin_key),
        "sqlite_round_count": asyncio.run(use_sqlite(work_dir)),
        "postgresql": asyncio.run(open_without_extra("postgresql://nobody@127.0.0.1:1/none")),
        "redis": asyncio.run(open_without_extra("redis://127.0.0.1:1/0")),
        "loaded": sorted({name.partition(".")[0] for name in sys.modules} & set(EXTRA_MODULES)),
        "installed": [name for name in EXTRA_MODULES if importlib.util.find_spec(name)],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
