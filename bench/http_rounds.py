"""Rounds per second and latency through HTTP, against a minimal endpoint in the same run.

Run:  .venv/bin/python bench/http_rounds.py [--backends sqlite,postgres] [--duration 10]
      [--concurrency 32] [--repeat 3] [--json results.json]
      .venv/bin/python bench/http_rounds.py --cpu     (server CPU per round, in-process)

For each backend it starts, one after the other, as separate processes under
uvicorn (uvloop + httptools, one worker):

- the llmsession server (``python -m llmsession.server``), driven with
  ``POST /v1/sessions/{id}/rounds`` (auth, validation, the store's transaction
  with its compare-and-set, the session JSON back), one session per client;
- a minimal raw-ASGI endpoint doing the same single database write, with no
  auth, no validation, no state check: the floor for Python on this machine.
  "minimal" does the write a round makes, on the store's own tables (made by
  opening the store): update the session's counters and insert the round in
  one transaction, as ``bench/store_rounds.py``'s raw writers do (SQLite:
  sqlite3 on its own thread, WAL, synchronous=FULL, one hop per transaction;
  PostgreSQL: one statement on a pool of 10). "minimal-insert" is an even lower
  floor: one auto-committed INSERT into a table with no index.

The load comes from a third process: ``--concurrency`` asyncio clients, each on
its own keep-alive connection, sending requests back to back for
``--duration`` seconds after a one-second warm-up. The client speaks HTTP/1.1
over asyncio streams directly, so that it takes as little of the machine's CPU
as it can; every response's status is checked. The server's resident memory
is sampled during the load. Nothing here is a test: it reports figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

POSTGRES_BASE_URL = os.environ.get(
    "LLMSESSION_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
ADMIN_KEY = "bench-admin-" + secrets.token_hex(16)
WARMUP_SECONDS = 1.0


# -- the load generator (its own process) ------------------------------------------


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    first_error: str | None


async def _one_client(
    host: str,
    port: int,
    request: bytes,
    *,
    expected_status: bytes,
    warm_until: float,
    stop_at: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            done = time.perf_counter()
            status = head[9:12]
            if status != expected_status:
                errors.append(f"{status.decode()} {body[:300].decode(errors='replace')}")
            elif start >= warm_until:
                latencies.append(done - start)
    finally:
        writer.close()


async def _load(args: argparse.Namespace) -> LoadResult:
    targets: list[str] = json.loads(args.targets)
    headers = json.loads(args.headers)
    body = json.dumps({"delta_tokens": 7}).encode()
    now = time.perf_counter()
    warm_until = now + WARMUP_SECONDS
    stop_at = warm_until + args.duration
    latencies: list[float] = []
    errors: list[str] = []
    clients = []
    for i in range(args.concurrency):
        path = targets[i % len(targets)]
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {args.host}:{args.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        clients.append(
            _one_client(
                args.host,
                args.port,
                request,
                expected_status=args.expect.encode(),
                warm_until=warm_until,
                stop_at=stop_at,
                latencies=latencies,
                errors=errors,
            )
        )
    await asyncio.gather(*clients)
    latencies.sort()
    count = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(count - 1, int(p * count))] * 1000 if count else float("nan")

    return LoadResult(
        requests=count,
        errors=len(errors),
        seconds=args.duration,
        rps=count / args.duration,
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        max_ms=latencies[-1] * 1000 if count else float("nan"),
        first_error=errors[0] if errors else None,
    )


# -- the minimal endpoint (its own process) -------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _SqliteWriter:
    """One auto-committed INSERT per round, on sqlite3's own thread (one hop)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minimal-sqlite")

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS rounds (id INTEGER PRIMARY KEY, target INTEGER NOT "
                "NULL, delta_tokens INTEGER NOT NULL, recorded_at INTEGER NOT NULL)"
            )
            return conn

        self.conn = await asyncio.get_running_loop().run_in_executor(self.thread, connect)

    async def write(self, target: int, delta: int) -> None:
        conn = self.conn
        assert conn is not None
        await asyncio.get_running_loop().run_in_executor(
            self.thread,
            conn.execute,
            "INSERT INTO rounds (target, delta_tokens, recorded_at) VALUES (?, ?, ?)",
            (target, delta, time.time_ns() // 1000),
        )

    async def close(self) -> None:
        if self.conn is not None:
            await asyncio.get_running_loop().run_in_executor(self.thread, self.conn.close)
        self.thread.shutdown()


class _PostgresWriter:
    """One auto-committed INSERT per round, on a pool of 10."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pool: Any = None

    async def open(self) -> None:
        from psycopg_pool import AsyncConnectionPool

        self.pool = AsyncConnectionPool(
            self.url, min_size=1, max_size=10, kwargs={"autocommit": True}, open=False
        )
        await self.pool.open(wait=True)
        async with self.pool.connection() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS rounds (id BIGSERIAL PRIMARY KEY, "
                "target BIGINT NOT NULL, delta_tokens BIGINT NOT NULL, recorded_at BIGINT NOT NULL)"
            )

    async def write(self, target: int, delta: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO rounds (target, delta_tokens, recorded_at) VALUES (%s, %s, %s)",
                (target, delta, time.time_ns() // 1000),
            )

    async def close(self) -> None:
        await self.pool.close()


class _RoundWriter:
    """The write a round makes, on the store's tables: see store_rounds' raw writers."""

    def __init__(self, backend: str, db: str, sessions: int) -> None:
        self.backend = backend
        self.db = db
        self.sessions = sessions
        self.raw: Any = None
        self.ops: list[Callable[[], Awaitable[object]]] = []

    async def open(self) -> None:
        from llmsession.ids import TenantId
        from llmsession.store import open_store
        from store_rounds import PostgresRaw, SQLiteRaw

        url = f"sqlite:///{self.db}" if self.backend == "sqlite" else self.db
        store = await open_store(url)
        try:
            ids = []
            for _ in range(self.sessions):
                created = await store.create(
                    TenantId("bench"), provider_id="openai", model="gpt-4o", initial_tokens=1200
                )
                await store.activate(TenantId("bench"), created.record.session_id)
                ids.append(created.record.session_id)
        finally:
            await store.aclose()
        self.raw = SQLiteRaw(self.db) if self.backend == "sqlite" else PostgresRaw(self.db, 10)
        await self.raw.open()
        self.ops = [self.raw.op(session_id) for session_id in ids]

    async def write(self, target: int, delta: int) -> None:
        await self.ops[target]()

    async def close(self) -> None:
        await self.raw.close()


def _minimal_app(writer: Any) -> Callable[..., Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await writer.open()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await writer.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/readyz":
            await _respond(send, 200, b'{"status":"ready"}')
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        delta = json.loads(b"".join(chunks))["delta_tokens"]
        target = int(scope["path"].rsplit("/", 1)[-1])
        await writer.write(target, delta)
        await _respond(send, 201, json.dumps({"target": target, "delta_tokens": delta}).encode())

    return app


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _serve_minimal(args: argparse.Namespace) -> None:
    import uvicorn

    writer: _SqliteWriter | _PostgresWriter | _RoundWriter
    if args.write == "round":
        writer = _RoundWriter(args.backend, args.db, args.sessions)
    elif args.backend == "sqlite":
        writer = _SqliteWriter(args.db)
    else:
        writer = _PostgresWriter(args.db)
    uvicorn.run(
        _minimal_app(writer),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


# -- the server's own CPU per round, in-process ---------------------------------------


async def _cpu_per_round() -> str:
    """CPU microseconds per POST .../rounds through the ASGI app on the memory store.

    No network and no database: what the server code itself costs, steady across
    a noisy machine (process CPU time, best of 7). With the fast path and without
    it (the same handler behind FastAPI's router).
    """
    from llmsession.server import ServerSettings, create_app

    lines = []
    for fast in (True, False):
        app = create_app(
            ServerSettings(store_url="memory://", admin_key=ADMIN_KEY), fast_rounds=fast
        )
        async with app.router.lifespan_context(app):
            micros = await _time_rounds(app)
        label = "fast path" if fast else "FastAPI router"
        lines.append(f"{label}: {micros:.1f} us CPU per round")
    return "\n".join(lines)


async def _time_rounds(app: Any, number: int = 5000, repeat: int = 7) -> float:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        tenant = await client.post(
            "/v1/admin/tenants",
            json={"tenant_id": "bench"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        auth = {"Authorization": f"Bearer {tenant.json()['api_key']}"}
        session = await client.post(
            "/v1/sessions",
            json={"provider_id": "openai", "model": "gpt-4o", "initial_tokens": 1200},
            headers=auth,
        )
        session_id = session.json()["session_id"]
        await client.post(f"/v1/sessions/{session_id}/activate", headers=auth)
    body = b'{"delta_tokens": 7}'
    path = f"/v1/sessions/{session_id}/rounds"
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", auth["Authorization"].encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    for _ in range(500):
        await app(dict(scope), receive, send)
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(number):
            await app(dict(scope), receive, send)
        best = min(best, (time.process_time() - start) / number)
    if statuses != {201}:
        raise RuntimeError(f"unexpected statuses {statuses}")
    return best * 1e6


# -- the orchestration --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"server not ready at {url} after {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Run:
    backend: str
    endpoint: str
    load: LoadResult
    rss_idle_mib: float
    rss_peak_mib: float
    server_cpu_percent: float


def _drive(
    process: subprocess.Popen[bytes],
    port: int,
    targets: list[str],
    *,
    headers: dict[str, str],
    expect: str,
    args: argparse.Namespace,
) -> tuple[LoadResult, float, float, float]:
    idle = _rss_kib(process.pid)
    cpu_before = _cpu_seconds(process.pid)
    started = time.monotonic()
    command = [
        sys.executable,
        __file__,
        "--role=load",
        f"--port={port}",
        f"--targets={json.dumps(targets)}",
        f"--headers={json.dumps(headers)}",
        f"--expect={expect}",
        f"--duration={args.duration}",
        f"--concurrency={args.concurrency}",
    ]
    loader = subprocess.Popen(command, stdout=subprocess.PIPE)
    peak = idle
    while loader.poll() is None:
        peak = max(peak, _rss_kib(process.pid))
        time.sleep(0.2)
    cpu = (_cpu_seconds(process.pid) - cpu_before) / (time.monotonic() - started) * 100
    out, _ = loader.communicate()
    if loader.returncode != 0:
        raise RuntimeError(f"load generator failed with {loader.returncode}")
    load = LoadResult(**json.loads(out))
    return load, idle / 1024, peak / 1024, cpu


def _bench_llmsession(backend: str, store_url: str, args: argparse.Namespace) -> Run:
    port = _free_port()
    env = {
        **os.environ,
        "LLMSESSION_STORE_URL": store_url,
        "LLMSESSION_PORT": str(port),
        "LLMSESSION_ADMIN_KEY": ADMIN_KEY,
        "LLMSESSION_ACCESS_LOG": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "llmsession.server"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(process, f"{base}/readyz")
        with httpx.Client(base_url=base, timeout=10) as client:
            created = client.post(
                "/v1/admin/tenants",
                json={"tenant_id": f"bench-{uuid.uuid4().hex[:8]}"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            )
            created.raise_for_status()
            auth = {"Authorization": f"Bearer {created.json()['api_key']}"}
            targets = []
            for _ in range(args.concurrency):
                session = client.post(
                    "/v1/sessions",
                    json={"provider_id": "openai", "model": "gpt-4o", "initial_tokens": 1200},
                    headers=auth,
                )
                session.raise_for_status()
                session_id = session.json()["session_id"]
                client.post(f"/v1/sessions/{session_id}/activate", headers=auth).raise_for_status()
                targets.append(f"/v1/sessions/{session_id}/rounds")
        load, idle, peak, cpu = _drive(
            process, port, targets, headers=auth, expect="201", args=args
        )
    finally:
        code = _stop(process)
    if code != 0:
        raise RuntimeError(f"llmsession server exited with {code} after SIGTERM")
    return Run(backend, "llmsession", load, idle, peak, cpu)


def _bench_minimal(backend: str, db: str, write: str, args: argparse.Namespace) -> Run:
    port = _free_port()
    command = [
        sys.executable,
        __file__,
        "--role=minimal",
        f"--backend={backend}",
        f"--db={db}",
        f"--port={port}",
        f"--write={write}",
        f"--sessions={args.concurrency}",
    ]
    process = subprocess.Popen(command)
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}/readyz")
        targets = [f"/rounds/{i}" for i in range(args.concurrency)]
        load, idle, peak, cpu = _drive(process, port, targets, headers={}, expect="201", args=args)
    finally:
        _stop(process)
    return Run(backend, "minimal" if write == "round" else "minimal-insert", load, idle, peak, cpu)


def _postgres_schema() -> tuple[str, Callable[[], None]]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_BASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(POSTGRES_BASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    return f"{POSTGRES_BASE_URL}?options=-csearch_path%3D{schema}", drop


def _run_backend(backend: str, args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="llmsession-bench-") as tmp:
            runs.append(_bench_llmsession(backend, f"sqlite:///{tmp}/sessions.db", args))
            runs.append(_bench_minimal(backend, f"{tmp}/minimal.db", "round", args))
            runs.append(_bench_minimal(backend, f"{tmp}/insert.db", "insert", args))
        return runs
    store_url, drop = _postgres_schema()
    try:
        runs.append(_bench_llmsession(backend, store_url, args))
    finally:
        drop()
    for write in ("round", "insert"):
        minimal_url, drop = _postgres_schema()
        try:
            runs.append(_bench_minimal(backend, minimal_url, write, args))
        finally:
            drop()
    return runs


def _medians(runs: list[Run]) -> list[Run]:
    """Per backend and endpoint, the run with the median throughput."""
    chosen: list[Run] = []
    for key in dict.fromkeys((run.backend, run.endpoint) for run in runs):
        same = sorted(
            (run for run in runs if (run.backend, run.endpoint) == key),
            key=lambda run: run.load.rps,
        )
        chosen.append(same[len(same) // 2])
    return chosen


def _report(runs: list[Run], args: argparse.Namespace) -> str:
    lines = [
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; "
        f"{args.concurrency} clients, {args.duration:g} s after a {WARMUP_SECONDS:g} s warm-up; "
        f"median of {args.repeat} run(s) by throughput",
        "",
        "| backend | endpoint | rounds/s | p50 ms | p90 ms | p99 ms | errors | server CPU "
        "| RSS idle / peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        load = run.load
        lines.append(
            f"| {run.backend} | {run.endpoint} | {load.rps:,.0f} | {load.p50_ms:.2f} | "
            f"{load.p90_ms:.2f} | {load.p99_ms:.2f} | {load.errors} | "
            f"{run.server_cpu_percent:.0f}% | {run.rss_idle_mib:.0f} / {run.rss_peak_mib:.0f} |"
        )
    lines.append("")
    for backend in dict.fromkeys(run.backend for run in runs):
        ours = next(r for r in runs if r.backend == backend and r.endpoint == "llmsession")
        for endpoint in ("minimal", "minimal-insert"):
            floor = next(r for r in runs if r.backend == backend and r.endpoint == endpoint)
            lines.append(
                f"{backend}: llmsession / {endpoint} throughput = "
                f"{ours.load.rps / floor.load.rps:.2f}x"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--role",
        choices=["bench", "load", "minimal", "cpu"],
        default="bench",
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="only the server's CPU time per round, in-process, without HTTP or a database",
    )
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the median is shown")
    parser.add_argument("--json", help="also write the figures to this file")
    # Internal: the roles the orchestrator starts as separate processes.
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--targets", default="[]")
    parser.add_argument("--headers", default="{}")
    parser.add_argument("--expect", default="201")
    parser.add_argument("--backend", default="sqlite")
    parser.add_argument("--db", default="")
    parser.add_argument("--write", choices=["round", "insert"], default="round")
    parser.add_argument("--sessions", type=int, default=32)
    args = parser.parse_args()

    if args.role == "load":
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        print(json.dumps(asdict(asyncio.run(_load(args)))))
        return
    if args.role == "minimal":
        _serve_minimal(args)
        return
    if args.cpu:
        print(asyncio.run(_cpu_per_round()))
        return

    if not 1 <= args.concurrency <= 1024 or not 0 < args.duration <= 600:
        parser.error("--concurrency must be 1 to 1024 and --duration 0 to 600 seconds")
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be 1 to 20")
    backends = args.backends.split(",")
    for backend in backends:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}: use sqlite and/or postgres")
    runs: list[Run] = []
    # Rounds of every backend and endpoint in turn, so that a noisy moment on the
    # machine does not fall on one of them only; the report takes the median.
    for _ in range(args.repeat):
        for backend in backends:
            runs.extend(_run_backend(backend, args))
    print(_report(_medians(runs), args))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=2))
    for run in runs:
        if run.load.first_error:
            print(f"first error ({run.backend} {run.endpoint}): {run.load.first_error}")


if __name__ == "__main__":
    main()
