"""The gateway's price: llmsession against a bare forwarder and LiteLLM, on one fake provider.

Run:  .venv/bin/python bench/gateway.py [--targets direct,forwarder,llmsession,litellm]
      [--stores sqlite,postgresql] [--repeat 3] [--duration 4] [--latency-requests 100]
      [--concurrency 32] [--rounds 8] [--forwarder-client aiohttp] [--json results.json]
      [--kind openai|anthropic|gemini|all]
      .venv/bin/python bench/gateway.py --kind all     (the three wire formats, one
                                                       after the other, each its own report)
      .venv/bin/python bench/gateway.py --quick        (a smoke run, 35 s to a minute a kind)

One fake provider (``python -m llmsession.fake_provider``) runs on loopback, and
every target sends it the same Chat Completions work (with ``--kind anthropic``,
the same Anthropic Messages work, with ``--kind gemini`` the same Gemini
``generateContent`` work, in that wire format end to end):

- ``direct``: straight to the fake;
- ``forwarder``: through bench/_forwarder.py, a bare Starlette app with one
  pooled aiohttp client (the gateway's) that forwards the body and streams the
  answer back (the floor: what any ASGI proxy in Python costs);
- ``llmsession``: through ``python -m llmsession.server`` with the fake as its
  one provider, once per store in ``--stores`` (a fresh SQLite file, a fresh
  PostgreSQL schema, a fresh Redis prefix or memory://, removed at the end);
- ``litellm``: through the LiteLLM proxy (``litellm[proxy]``, pinned below),
  which the benchmark installs into a virtual environment of its own on first
  use (``bench/.litellm-<version>/``, git-ignored; never a project dependency),
  with the fake as its one model, a master key, no database and no callbacks.
  Chat Completions go through its ``/v1/chat/completions`` to an ``openai/``
  model, Messages through its ``/v1/messages`` to an ``anthropic/`` model (both
  forwarded in the client's wire format), Gemini through its Google AI Studio
  pass-through ``/gemini/v1beta/models/...`` (see ``litellm_model`` for why).

Every client holds multi-round conversations (``--rounds`` turns, then a new
one). To llmsession a client sends what a real user sends: the first turn with
a system message, later turns with only the new user message and
``LLMSession-Id``; llmsession adds the stored history. To the other targets it
sends the whole conversation every turn, so the provider's work is the same
everywhere. Prompts stay far below the fake's 1,024-token caching threshold,
so no target gets a cache its neighbour does not.

Measured, non-stream and stream (for Chat Completions,
``stream_options.include_usage`` on every target, as llmsession asks for it
upstream anyway):

- latency with one client, sequential: one request to each target in turn
  (the order rotating), so machine noise falls on all alike; the latency of a
  stream is its time to first byte; "added" is a target's percentile minus
  direct's;
- throughput with ``--concurrency`` clients, each on its own keep-alive
  connection, for ``--duration`` s after a warm-up, one target after the other;
  the targets' order rotates each repeat, the median of the repeats is shown;
  with it each proxy's CPU time per request (user + system, from /proc).

The load comes from a separate process speaking HTTP/1.1 over asyncio streams,
so it takes as little CPU as it can; every answer's status is checked, and a
stream must end as its wire format ends one (``data: [DONE]``, Anthropic's
``message_stop``, Gemini's last event with a ``finishReason``). Before measuring,
each target's answer to a first turn, body and stream, must be direct's, and the
fake's billing log must show it got the same request (``Bench.check_targets``).
The servers' resident memory (each with its children) is read at the end.
Nothing here is a test: it reports figures and whether they meet the gateway's
goals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from _common import FreshStore, fresh_store, load, machine, median, percentile, table

BENCH_DIR = Path(__file__).resolve().parent

# LiteLLM 1.82.7 and 1.82.8 on PyPI were published by an attacker with stolen
# publishing credentials (March 2026; a litellm_init.pth credential stealer, see
# BerriAI/litellm#24512 and #24518). 1.80.0 is a release from months before the
# compromise; it also predates the ranges of the proxy's later SQL-injection and
# template-injection advisories (>=1.81.16 and >=1.80.5). The proxy here runs on
# loopback with no database and a random master key. Change the pin only to a
# release checked against the advisories.
LITELLM_VERSION = "1.80.0"
LITELLM_VENV = BENCH_DIR / f".litellm-{LITELLM_VERSION}"

TARGETS = ("direct", "forwarder", "llmsession", "litellm")
STORES = ("memory", "sqlite", "postgresql", "redis")
MODEL = "gpt-4o-mini"
PATH = "/v1/chat/completions"
#: The wire formats a run may measure (``--kind``; ``all`` runs them one after the other).
KINDS = ("openai", "anthropic", "gemini")
KIND_NAMES = {
    "openai": "OpenAI Chat Completions",
    "anthropic": "Anthropic Messages",
    "gemini": "Gemini generateContent",
}
ANTHROPIC_MODEL = "claude-sonnet-4-5"
ANTHROPIC_PATH = "/v1/messages"
GEMINI_MODEL = "gemini-2.5-flash"
SESSION_HEADER = "LLMSession-Id"
SYSTEM = "You are a helpful assistant. You answer briefly and plainly."
READY_TIMEOUT = 120.0
#: How long clients in flight at the end of a throughput window may take to finish.
DRAIN_SECONDS = 30.0


# -- the conversation every client holds ----------------------------------------------


def _question(turn: int) -> str:
    return (
        f"Question {turn + 1}: what is the name of the capital city of the country "
        f"listed as number {turn + 1} in the atlas?"
    )


@dataclass(frozen=True, slots=True)
class Script:
    """The request bodies of one conversation, turn by turn, for both kinds of client.

    ``full[s][k]`` is turn ``k``'s whole conversation (for direct, the forwarder,
    LiteLLM); ``new[s][k]`` only what is new (for llmsession); ``s`` is 0 for
    non-stream bodies, 1 for stream bodies.
    """

    full: tuple[tuple[bytes, ...], tuple[bytes, ...]]
    new: tuple[tuple[bytes, ...], tuple[bytes, ...]]

    @classmethod
    def build(cls, answers: Sequence[str], kind: str = "openai") -> Script:
        if kind == "anthropic":
            return cls._build_anthropic(answers)
        if kind == "gemini":
            return cls._build_gemini(answers)
        full: list[tuple[bytes, ...]] = []
        new: list[tuple[bytes, ...]] = []
        for stream in (False, True):
            extra: dict[str, Any] = (
                {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
            )
            history: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
            full_bodies: list[bytes] = []
            new_bodies: list[bytes] = []
            for turn, answer in enumerate(answers):
                user = {"role": "user", "content": _question(turn)}
                history.append(user)
                full_bodies.append(_body({"model": MODEL, "messages": history, **extra}))
                sent = history if turn == 0 else [user]
                new_bodies.append(_body({"model": MODEL, "messages": sent, **extra}))
                history.append({"role": "assistant", "content": answer})
            full.append(tuple(full_bodies))
            new.append(tuple(new_bodies))
        return cls((full[0], full[1]), (new[0], new[1]))

    @classmethod
    def _build_anthropic(cls, answers: Sequence[str]) -> Script:
        """Messages bodies: the system prompt is top-level, sent to llmsession only once."""
        full: list[tuple[bytes, ...]] = []
        new: list[tuple[bytes, ...]] = []
        for stream in (False, True):
            extra: dict[str, Any] = {"stream": True} if stream else {}
            head = {"model": ANTHROPIC_MODEL, "max_tokens": 64}
            history: list[dict[str, str]] = []
            full_bodies: list[bytes] = []
            new_bodies: list[bytes] = []
            for turn, answer in enumerate(answers):
                user = {"role": "user", "content": _question(turn)}
                history.append(user)
                full_bodies.append(_body({**head, "system": SYSTEM, "messages": history, **extra}))
                system = {"system": SYSTEM} if turn == 0 else {}
                new_bodies.append(_body({**head, **system, "messages": [user], **extra}))
                history.append({"role": "assistant", "content": answer})
            full.append(tuple(full_bodies))
            new.append(tuple(new_bodies))
        return cls((full[0], full[1]), (new[0], new[1]))

    @classmethod
    def _build_gemini(cls, answers: Sequence[str]) -> Script:
        """Gemini bodies: the model and streaming are in the URL; the system instruction
        goes with every request, as the google-genai SDK's config sends it."""
        system = {"parts": [{"text": SYSTEM}]}
        history: list[dict[str, Any]] = []
        full_bodies: list[bytes] = []
        new_bodies: list[bytes] = []
        for turn, answer in enumerate(answers):
            user = {"role": "user", "parts": [{"text": _question(turn)}]}
            history.append(user)
            full_bodies.append(_body({"systemInstruction": system, "contents": history}))
            sent = history if turn == 0 else [user]
            new_bodies.append(_body({"systemInstruction": system, "contents": sent}))
            history.append({"role": "model", "parts": [{"text": answer}]})
        full, new = tuple(full_bodies), tuple(new_bodies)
        return cls((full, full), (new, new))

    def as_json(self) -> dict[str, list[list[str]]]:
        return {
            "full": [[b.decode() for b in bodies] for bodies in self.full],
            "new": [[b.decode() for b in bodies] for bodies in self.new],
        }

    @classmethod
    def from_json(cls, data: dict[str, list[list[str]]]) -> Script:
        full = [tuple(b.encode() for b in bodies) for bodies in data["full"]]
        new = [tuple(b.encode() for b in bodies) for bodies in data["new"]]
        return cls((full[0], full[1]), (new[0], new[1]))


def _body(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# -- the load generator (its own process) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where a target listens, and how its clients talk to it."""

    name: str
    port: int
    authorization: str
    #: True for llmsession: send only the new turn, with LLMSession-Id.
    sessions: bool
    #: The wire format spoken (``--kind``).
    kind: str = "openai"
    #: Put before the provider's path (LiteLLM's Gemini pass-through is under /gemini).
    prefix: str = ""


class _Client:
    """One keep-alive connection holding conversations with one target."""

    def __init__(self, target: Target, script: Script, stream: bool, first_turn: int = 0) -> None:
        self.target = target
        self.stream = stream
        self.bodies = (script.new if target.sessions else script.full)[int(stream)]
        self.turn = first_turn % len(self.bodies)
        self.session: str | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        anthropic = target.kind == "anthropic"
        self.head = (
            f"POST {target.prefix}{_path(target.kind, stream)} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{target.port}\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in _headers(target).items())
        )
        # How a complete answer ends (a stream) or what it is (a body).
        self.stream_end = b'data: {"type":"message_stop"}' if anthropic else b"data: [DONE]"
        self.body_mark = {"anthropic": b'"type":"message"', "gemini": b'"candidates"'}.get(
            target.kind, b'"chat.completion"'
        )

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(self) -> tuple[float, float, str | None]:
        """One turn: (seconds to the answer's first body byte, to its end, error or None)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.target.port)
        reader = self.reader
        assert reader is not None
        if self.target.sessions and self.turn > 0 and self.session is None:
            self.turn = 0
        body = self.bodies[self.turn]
        head = self.head + f"Content-Length: {len(body)}\r\n"
        if self.target.sessions and self.turn > 0:
            head += f"{SESSION_HEADER}: {self.session}\r\n"
        start = time.perf_counter()
        try:
            self.writer.write((head + "\r\n").encode() + body)
            status, session, close, first, payload = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            await self.close()
            self.session = None
            self.turn = 0
            return 0.0, 0.0, f"connection: {type(error).__name__} {error}"
        done = time.perf_counter()
        if close:
            await self.close()
        error = None
        if status != 200:
            error = f"{status} {payload[:300].decode(errors='replace')}"
        elif self.stream and not self._stream_complete(payload):
            error = f"stream did not end as it should: ...{payload[-200:].decode(errors='replace')}"
        elif not self.stream and self.body_mark not in payload:
            error = f"not a complete answer: {payload[:300].decode(errors='replace')}"
        if error is not None:
            self.session = None
            self.turn = 0
            return 0.0, 0.0, error
        if self.target.sessions and self.turn == 0:
            self.session = session
        self.turn = (self.turn + 1) % len(self.bodies)
        return first - start, done - start, None

    def _stream_complete(self, payload: bytes) -> bool:
        if self.target.kind == "gemini":
            # Gemini has no end marker: the last event carries the finishReason.
            return b'"finishReason"' in payload.rstrip().rsplit(b"data:", 1)[-1]
        return payload.rstrip().endswith(self.stream_end)


def _path(kind: str, stream: bool) -> str:
    if kind == "anthropic":
        return ANTHROPIC_PATH
    if kind == "gemini":
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"/v1beta/models/{GEMINI_MODEL}:{method}"
    return PATH


def _headers(target: Target) -> dict[str, str]:
    """A request's headers but Host and Content-Length: the key as each wire format sends it."""
    headers = {"Content-Type": "application/json"}
    if target.kind == "gemini":
        # Gemini's clients send the key bare.
        headers["x-goog-api-key"] = target.authorization.removeprefix("Bearer ")
    else:
        headers["Authorization"] = target.authorization
    if target.kind == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    return headers


def answer_text(kind: str, stream: bool, payload: bytes) -> str:
    """The text of an answer (a body, or a whole SSE stream) in ``kind``'s wire format."""
    if not stream:
        data = json.loads(payload)
        if kind == "anthropic":
            return "".join(b["text"] for b in data["content"] if b.get("type") == "text")
        if kind == "gemini":
            return "".join(p.get("text", "") for p in data["candidates"][0]["content"]["parts"])
        return str(data["choices"][0]["message"]["content"])
    text: list[str] = []
    for line in payload.decode().splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        event = json.loads(line[5:])
        if kind == "anthropic":
            if event.get("type") == "content_block_delta":
                text.append(event["delta"].get("text", ""))
        elif kind == "gemini":
            for candidate in event.get("candidates", []):
                text += [p.get("text", "") for p in candidate.get("content", {}).get("parts", [])]
        else:
            text += [c["delta"].get("content") or "" for c in event.get("choices", [])]
    return "".join(text)


async def _read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, str | None, bool, float, bytes]:
    """Status, LLMSession-Id, whether the server closes, first body byte's time, body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0][9:12])
    length: int | None = None
    chunked = False
    session: str | None = None
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"llmsession-id":
            session = value.strip().decode()
        elif name == b"connection":
            close = b"close" in value.lower()
    if not chunked:
        payload = await reader.readexactly(length or 0)
        return status, session, close, time.perf_counter(), payload
    parts: list[bytes] = []
    first = 0.0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            break
        if not first:
            first = time.perf_counter()
        parts.append((await reader.readexactly(size + 2))[:-2])
    return status, session, close, first or time.perf_counter(), b"".join(parts)


async def _latency(job: dict[str, Any], script: Script) -> dict[str, Any]:
    """One client per target; one request to each in turn, the order rotating."""
    targets = [Target(**t) for t in job["targets"]]
    stream = bool(job["stream"])
    clients = [_Client(t, script, stream) for t in targets]
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    errors: dict[str, list[str]] = {t.name: [] for t in targets}
    try:
        for i in range(job["warmup"] + job["requests"]):
            shift = i % len(clients)
            for client in clients[shift:] + clients[:shift]:
                first, whole, error = await client.request()
                name = client.target.name
                if error is not None:
                    errors[name].append(error)
                elif i >= job["warmup"]:
                    samples[name].append(first if stream else whole)
    finally:
        for client in clients:
            await client.close()
    return {"samples": samples, "errors": errors}


async def _throughput(job: dict[str, Any], script: Script) -> dict[str, Any]:
    """``concurrency`` clients on one target, back to back; answers completed in the window count.

    The window is ``duration`` s after ``warmup`` s. Clients start no request
    after it; the ones in flight may finish (their answers do not count). The
    server's CPU time (``pid`` and its children) is read at both ends of the window.
    """
    target = Target(**job["target"])
    stream = bool(job["stream"])
    pid: int | None = job["pid"]
    warm_until = time.perf_counter() + job["warmup"]
    stop_at = warm_until + job["duration"]
    latencies: list[float] = []
    errors: list[str] = []

    async def run(index: int) -> None:
        # Clients start at different turns, as real users would be.
        client = _Client(target, script, stream, first_turn=index)
        try:
            while time.perf_counter() < stop_at:
                first, whole, error = await client.request()
                done = time.perf_counter()
                if error is not None:
                    errors.append(error)
                elif warm_until <= done <= stop_at:
                    latencies.append(first if stream else whole)
        finally:
            await client.close()

    clients = [asyncio.create_task(run(i)) for i in range(job["concurrency"])]
    await asyncio.sleep(warm_until - time.perf_counter())
    cpu_start = _cpu_seconds(pid) if pid is not None else 0.0
    await asyncio.sleep(stop_at - time.perf_counter())
    cpu = _cpu_seconds(pid) - cpu_start if pid is not None else None
    _, pending = await asyncio.wait(clients, timeout=DRAIN_SECONDS)
    for task in pending:
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    return {"latencies": latencies, "errors": errors, "cpu_seconds": cpu}


def _load_main(job_file: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    job = json.loads(Path(job_file).read_text())
    script = Script.from_json(job["script"])
    run = _latency if job["kind"] == "latency" else _throughput
    # A file, not stdout: one run's result (latencies of a long window, larger than
    # a pipe's 64 KiB buffer) once arrived cut through the pipe.
    Path(job_file).with_suffix(".out.json").write_text(json.dumps(asyncio.run(run(job, script))))


# -- servers -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A process the benchmark started, and the target it serves."""

    target: Target
    process: subprocess.Popen[bytes] | None
    log: Path | None = None
    rss_mib: float = float("nan")
    cpu_seconds: list[float] = field(default_factory=list[float])


def _wait_ready(process: subprocess.Popen[bytes], url: str, log: Path, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode} before it was ready; its log:\n"
                + log.read_text(errors="replace")[-3000:]
            )
        try:
            if httpx.get(url, timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready at {url} after {READY_TIMEOUT:g} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server may fork workers or helpers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _rss_mib(pid: int) -> float:
    total = 0
    for member in _tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Bench:
    """Starts the fake and the servers in front of it; stops them all at the end."""

    def __init__(self, args: argparse.Namespace, workdir: Path, stack: ExitStack) -> None:
        self.args = args
        self.workdir = workdir
        self.stack = stack
        self.fake_key = "sk-fake-bench-" + secrets.token_hex(12)
        self.fake_port = 0
        self.servers: list[Server] = []
        #: Put before the forwarder's and llmsession's commands (a profiler, say).
        self.wrap: list[str] = []

    def _spawn(
        self, name: str, command: list[str], env: dict[str, str], *, stdout: int | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                command,
                env=env,
                stdout=stdout if stdout is not None else sink,
                stderr=sink,
                cwd=self.workdir,
            )
        self.stack.callback(_stop, process)
        return process, log

    def start_fake(self) -> Server:
        env = {**os.environ, "LLMSESSION_FAKE_API_KEY": self.fake_key}
        command = [sys.executable, "-m", "llmsession.fake_provider", "--port", "0"]
        process, log = self._spawn("fake", command, env, stdout=subprocess.PIPE)
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        if not line.startswith("fake provider listening on http://"):
            raise RuntimeError(f"the fake provider said {line!r}:\n{log.read_text()}")
        self.fake_port = int(line.rsplit(":", 1)[1].removesuffix("/v1"))
        _wait_ready(process, f"{self.fake_root}/_fake/health", log, "the fake provider")
        # Direct's process is the fake itself: its CPU per request is the provider's work.
        target = Target("direct", self.fake_port, f"Bearer {self.fake_key}", False, self.args.kind)
        server = Server(target, process, log)
        self.servers.append(server)
        return server

    @property
    def fake_root(self) -> str:
        return f"http://127.0.0.1:{self.fake_port}"

    def answers(self) -> list[str]:
        """The fake's answer to each turn's question (it depends only on the question)."""
        answers = []
        with httpx.Client(trust_env=False, timeout=10) as client:
            for turn in range(self.args.rounds):
                if self.args.kind == "gemini":
                    response = client.post(
                        f"{self.fake_root}{_path('gemini', False)}",
                        json={"contents": [{"role": "user", "parts": [{"text": _question(turn)}]}]},
                        headers={"x-goog-api-key": self.fake_key},
                    )
                    response.raise_for_status()
                    parts = response.json()["candidates"][0]["content"]["parts"]
                    answers.append("".join(part.get("text", "") for part in parts))
                    continue
                response = client.post(
                    f"{self.fake_root}{PATH}",
                    json={
                        "model": MODEL,
                        "messages": [{"role": "user", "content": _question(turn)}],
                    },
                    headers={"Authorization": f"Bearer {self.fake_key}"},
                )
                response.raise_for_status()
                answers.append(response.json()["choices"][0]["message"]["content"])
            client.post(f"{self.fake_root}/_fake/reset").raise_for_status()
        return answers

    def start_forwarder(self) -> Server:
        port = _free_port()
        command = [
            *self.wrap,
            sys.executable,
            str(BENCH_DIR / "_forwarder.py"),
            f"--upstream={self.fake_root}",
            f"--port={port}",
            f"--client={self.args.forwarder_client}",
        ]
        process, log = self._spawn("forwarder", command, dict(os.environ))
        _wait_ready(process, f"http://127.0.0.1:{port}/healthz", log, "the forwarder")
        target = Target("forwarder", port, f"Bearer {self.fake_key}", False, self.args.kind)
        server = Server(target, process, log)
        self.servers.append(server)
        return server

    def start_llmsession(self, store: str, store_url: str) -> Server:
        port = _free_port()
        admin_key = "bench-admin-" + secrets.token_hex(16)
        config = self.workdir / f"llmsession-{store}.toml"
        # The official SDKs' base URLs: OpenAI's names /v1, Anthropic's and Google's do not.
        versionless = self.args.kind in ("anthropic", "gemini")
        config.write_text(
            "[providers.fake]\n"
            f'kind = "{self.args.kind}"\n'
            f'base_url = "{self.fake_root}{"" if versionless else "/v1"}"\n'
            'api_key_env = "BENCH_FAKE_API_KEY"\n'
        )
        env = {
            **os.environ,
            "LLMSESSION_STORE_URL": store_url,
            "LLMSESSION_PORT": str(port),
            "LLMSESSION_ADMIN_KEY": admin_key,
            "LLMSESSION_CONFIG": str(config),
            "LLMSESSION_ACCESS_LOG": "0",
            "BENCH_FAKE_API_KEY": self.fake_key,
        }
        name = f"llmsession-{store}"
        command = [*self.wrap, sys.executable, "-m", "llmsession.server"]
        process, log = self._spawn(name, command, env)
        base = f"http://127.0.0.1:{port}"
        _wait_ready(process, f"{base}/readyz", log, f"llmsession on {store}")
        created = httpx.post(
            f"{base}/v1/admin/tenants",
            json={"tenant_id": f"bench-{uuid.uuid4().hex[:8]}"},
            headers={"Authorization": f"Bearer {admin_key}"},
            trust_env=False,
            timeout=10,
        )
        created.raise_for_status()
        key = created.json()["api_key"]
        target = Target(name, port, f"Bearer {key}", True, self.args.kind)
        server = Server(target, process, log)
        self.servers.append(server)
        return server

    def start_litellm(self) -> Server:
        litellm = ensure_litellm(Path(self.args.litellm_venv))
        port = _free_port()
        master_key = "sk-bench-master-" + secrets.token_hex(12)
        config = self.workdir / "litellm.yaml"
        # JSON is YAML: no YAML library needed on this side.
        config.write_text(
            json.dumps(
                {
                    "model_list": [litellm_model(self.args.kind, self.fake_root)],
                    "litellm_settings": {
                        "telemetry": False,
                        "callbacks": [],
                        "success_callback": [],
                        "failure_callback": [],
                        "set_verbose": False,
                        "turn_off_message_logging": True,
                    },
                    "general_settings": {
                        "master_key": master_key,
                        "disable_spend_logs": True,
                        "store_model_in_db": False,
                    },
                },
                indent=2,
            )
        )
        # uvicorn's access log would cost LiteLLM a line per request that the others don't pay.
        log_config = self.workdir / "litellm-logging.json"
        log_config.write_text(
            json.dumps(
                {
                    "version": 1,
                    "disable_existing_loggers": False,
                    "loggers": {"uvicorn.access": {"level": "WARNING", "propagate": False}},
                }
            )
        )
        env = {
            # A clean environment: nothing of this machine's but the basics.
            "PATH": f"{litellm.parent}:/usr/bin:/bin",
            "HOME": str(self.workdir),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "BENCH_FAKE_API_KEY": self.fake_key,
            # No network: the cost map from the package, not from GitHub; no telemetry.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "DO_NOT_TRACK": "1",
            "DISABLE_ADMIN_UI": "True",
            "LITELLM_LOG": "ERROR",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "NO_PROXY": "*",
        }
        if self.args.kind == "gemini":
            # Where the Gemini pass-through forwards to, with which key (it reads no model_list).
            env |= {"GEMINI_API_BASE": self.fake_root, "GEMINI_API_KEY": self.fake_key}
        command = [
            str(litellm),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
            "--telemetry",
            "False",
            "--log_config",
            str(log_config),
        ]
        process, log = self._spawn("litellm", command, env)
        _wait_ready(process, f"http://127.0.0.1:{port}/health/liveliness", log, "LiteLLM")
        # LiteLLM 1.80.0's own generateContent route fails on any custom api_base
        # (BerriAI/litellm#18604): Gemini goes through its Google AI Studio pass-through.
        prefix = "/gemini" if self.args.kind == "gemini" else ""
        target = Target("litellm", port, f"Bearer {master_key}", False, self.args.kind, prefix)
        server = Server(target, process, log)
        self.servers.append(server)
        return server

    def check_targets(self, script: Script) -> None:
        """Each target's answer to a first turn, body and stream, is direct's, and reached the fake.

        The fake's billing log must show one new request per answer, with the same
        endpoint, model, token counts and stream flag as direct's: a proxy that
        rewrote, reformatted or answered on its own would be measured on other work.
        """
        fields = ("endpoint", "model", "input_tokens", "cached_tokens", "output_tokens", "stream")
        with httpx.Client(trust_env=False, timeout=30) as client:

            def ask(target: Target, stream: bool) -> tuple[str, dict[str, Any]]:
                before = len(client.get(f"{self.fake_root}/_fake/billing").json()["entries"])
                # A first turn is the same body for every target (llmsession's starts a session).
                body = (script.new if target.sessions else script.full)[int(stream)][0]
                url = f"http://127.0.0.1:{target.port}{target.prefix}{_path(target.kind, stream)}"
                response = client.post(url, content=body, headers=_headers(target))
                entries = client.get(f"{self.fake_root}/_fake/billing").json()["entries"]
                what = f"{target.name} ({'stream' if stream else 'body'})"
                if response.status_code != 200:
                    raise RuntimeError(f"{what} answered {response.status_code}: {response.text}")
                if len(entries) != before + 1:
                    raise RuntimeError(
                        f"{what}: the fake logged {len(entries) - before} requests, not 1"
                    )
                text = answer_text(target.kind, stream, response.content)
                return text, {name: entries[-1][name] for name in fields}

            for stream in (False, True):
                expected = ask(self.servers[0].target, stream)
                for server in self.servers[1:]:
                    got = ask(server.target, stream)
                    if got != expected:
                        raise RuntimeError(
                            f"{server.target.name} ({'stream' if stream else 'body'}) does not "
                            f"do direct's work: answered and billed {got}, direct {expected}"
                        )


def litellm_model(kind: str, fake_root: str) -> dict[str, Any]:
    """LiteLLM's one model for ``kind``: the fake, reached in that kind's own wire format.

    The client names the model as it would name the provider's (``MODEL``,
    ``ANTHROPIC_MODEL``, ``GEMINI_MODEL``); LiteLLM's provider prefix picks the
    upstream API, and ``api_base`` points it at the fake: ``openai/`` posts
    ``{api_base}/chat/completions``, ``anthropic/`` ``{api_base}/v1/messages``,
    ``gemini/`` ``{api_base}/models/{model}:generateContent`` (or
    ``:streamGenerateContent?alt=sse``) with the key as ``x-goog-api-key``. That
    last one is what LiteLLM's own ``/v1beta/models/...`` routes would use; in
    1.80.0 they fail on a custom ``api_base`` (the key header is built as a dict,
    BerriAI/litellm#18604), so the benchmark's Gemini clients use the
    ``/gemini/...`` pass-through, which forwards the request unchanged to
    ``GEMINI_API_BASE`` with ``GEMINI_API_KEY`` (see ``Bench.start_litellm``).
    """
    name, model, api_base = {
        "openai": (MODEL, f"openai/{MODEL}", f"{fake_root}/v1"),
        "anthropic": (ANTHROPIC_MODEL, f"anthropic/{ANTHROPIC_MODEL}", fake_root),
        "gemini": (GEMINI_MODEL, f"gemini/{GEMINI_MODEL}", f"{fake_root}/v1beta"),
    }[kind]
    return {
        "model_name": name,
        "litellm_params": {
            "model": model,
            "api_base": api_base,
            "api_key": "os.environ/BENCH_FAKE_API_KEY",
        },
    }


def ensure_litellm(venv: Path) -> Path:
    """The ``litellm`` command of the pinned release in ``venv``, installed there if missing."""
    command = venv / "bin" / "litellm"
    marker = venv / "llmsession-bench-pin"
    if command.exists() and marker.exists() and marker.read_text().strip() == LITELLM_VERSION:
        _check_litellm(venv)
        return command
    if venv.exists():
        if not marker.exists():
            raise RuntimeError(
                f"{venv} exists and was not made by this benchmark; remove it or name another "
                "directory with --litellm-venv"
            )
        # Ours, with another release or a broken install: start again.
        shutil.rmtree(venv)
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} (once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    marker.write_text("installing\n")
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"litellm[proxy]=={LITELLM_VERSION}",
        ],
        check=True,
    )
    _check_litellm(venv)
    marker.write_text(LITELLM_VERSION + "\n")
    return command


def _check_litellm(venv: Path) -> None:
    """Refuse a LiteLLM that is not the pinned release, or that carries the known stealer."""
    found = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if found != LITELLM_VERSION:
        raise RuntimeError(f"{venv} holds litellm {found}, not the pinned {LITELLM_VERSION}")
    # The compromised releases ran their payload from a .pth file at interpreter start.
    stealers = list(venv.glob("lib/python*/site-packages/litellm_init.pth"))
    if stealers:
        raise RuntimeError(f"{stealers[0]} is the compromised releases' payload: delete {venv}")


# -- measuring -------------------------------------------------------------------------------


def _run_load(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    job_file = workdir / "job.json"
    job_file.write_text(json.dumps(job))
    done = subprocess.run(
        [sys.executable, __file__, "--role=load", f"--job={job_file}"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(job_file.with_suffix(".out.json").read_text())
    return result


@dataclass
class Figures:
    """Everything measured, per target and mode (``stream`` or ``body``)."""

    latency: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    rps: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    under_load: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    cpu_per_request_us: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    first_errors: dict[str, str] = field(default_factory=dict)

    def add_errors(self, name: str, mode: str, errors: list[str]) -> None:
        counts = self.errors.setdefault(name, {})
        counts[mode] = counts.get(mode, 0) + len(errors)
        if errors and name not in self.first_errors:
            self.first_errors[name] = errors[0]


MODES = ("body", "stream")


def measure(bench: Bench, script: Script, args: argparse.Namespace) -> Figures:
    figures = Figures()
    servers = bench.servers
    targets = [asdict(s.target) for s in servers]
    for repeat in range(args.repeat):
        for mode in MODES:
            stream = mode == "stream"
            shift = repeat % len(targets)
            result = _run_load(
                {
                    "kind": "latency",
                    "stream": stream,
                    "targets": targets[shift:] + targets[:shift],
                    "warmup": args.latency_warmup,
                    "requests": args.latency_requests,
                    "script": script.as_json(),
                },
                bench.workdir,
            )
            for name, samples in result["samples"].items():
                figures.latency.setdefault(name, {}).setdefault(mode, []).extend(samples)
                figures.add_errors(name, mode, result["errors"][name])
        for mode in MODES:
            shift = repeat % len(servers)
            for server in servers[shift:] + servers[:shift]:
                name = server.target.name
                pid = server.process.pid if server.process is not None else None
                result = _run_load(
                    {
                        "kind": "throughput",
                        "stream": mode == "stream",
                        "target": asdict(server.target),
                        "pid": pid,
                        "warmup": args.warmup,
                        "duration": args.duration,
                        "concurrency": args.concurrency,
                        "script": script.as_json(),
                    },
                    bench.workdir,
                )
                count = len(result["latencies"])
                figures.rps.setdefault(name, {}).setdefault(mode, []).append(count / args.duration)
                figures.under_load.setdefault(name, {}).setdefault(mode, []).extend(
                    result["latencies"]
                )
                figures.add_errors(name, mode, result["errors"])
                if result["cpu_seconds"] is not None and count:
                    figures.cpu_per_request_us.setdefault(name, {}).setdefault(mode, []).append(
                        result["cpu_seconds"] / count * 1e6
                    )
        print(f"repeat {repeat + 1}/{args.repeat} done", file=sys.stderr)
    for server in servers:
        if server.process is not None:
            server.rss_mib = _rss_mib(server.process.pid)
    return figures


# -- the report -------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def _what(target: str) -> str:
    """What a target is, for the tables' second column."""
    if target == "direct":
        return "the fake provider"
    if target == "forwarder":
        return "bare forwarder (bench/_forwarder.py)"
    if target == "litellm":
        return f"LiteLLM {LITELLM_VERSION} proxy"
    return f"llmsession, {target.removeprefix('llmsession-')} store"


def _ratio(a: float, b: float) -> float:
    """a / b, NaN when b is zero or NaN (a target not run, or that answered nothing)."""
    return a / b if b else float("nan")


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


def report(bench: Bench, figures: Figures, args: argparse.Namespace, commit: str) -> str:
    names = [s.target.name for s in bench.servers]
    direct = figures.latency.get("direct", {})
    out = [
        f"# Gateway benchmark, {KIND_NAMES[args.kind]} ({commit}): {machine()}; load {load()}",
        f"{args.repeat} repeat(s); latency: 1 client, {args.latency_requests} requests per "
        f"target and mode per repeat; throughput: {args.concurrency} clients, "
        f"{args.duration:g} s after {args.warmup:g} s warm-up, median of repeats; "
        f"conversations of {args.rounds} turns",
        "",
        "## Latency, 1 client (ms; stream: time to first byte; added: minus direct)",
        "",
    ]
    rows = []
    for name in names:
        row = [name, _what(name)]
        for mode in MODES:
            samples = figures.latency.get(name, {}).get(mode, [])
            base = direct.get(mode, [])
            p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
            row += [_ms(p50), _ms(p99)]
            if name == "direct":
                row += ["", ""]
            else:
                row += [_ms(p50 - percentile(base, 0.5)), _ms(p99 - percentile(base, 0.99))]
        rows.append(row)
    headers = ["target", "what"]
    for mode in MODES:
        headers += [f"{mode} p50", f"{mode} p99", f"{mode} added p50", f"{mode} added p99"]
    out += [table(headers, rows), ""]

    out += [
        f"## Throughput, {args.concurrency} clients (server CPU: the target's process and its "
        "children, per answer; direct: the fake's own)",
        "",
    ]
    rows = []
    fwd = {mode: median(figures.rps.get("forwarder", {}).get(mode, [])) for mode in MODES}
    for name in names:
        row = [name, _what(name)]
        for mode in MODES:
            rps = median(figures.rps.get(name, {}).get(mode, []))
            under = figures.under_load.get(name, {}).get(mode, [])
            cpu = median(figures.cpu_per_request_us.get(name, {}).get(mode, []))
            row += [
                _fmt(rps, 0),
                _fmt(_ratio(rps, fwd[mode])) + "x",
                _ms(percentile(under, 0.5)),
                _ms(percentile(under, 0.99)),
                _fmt(cpu, 0),
            ]
        rows.append(row)
    headers = ["target", "what"]
    for mode in MODES:
        what = "TTFB " if mode == "stream" else ""
        headers += [
            f"{mode} req/s",
            "vs forwarder",
            f"{mode} {what}p50 ms",
            f"{mode} {what}p99 ms",
            f"{mode} server CPU µs/req",
        ]
    out += [table(headers, rows), ""]

    out += ["## Memory after the run", ""]
    out += [
        table(
            ["target", "server", "RSS MiB"],
            [[s.target.name, _what(s.target.name), _fmt(s.rss_mib, 0)] for s in bench.servers],
        ),
        "",
    ]

    out += ["## Goals", ""]
    out += [table(["goal", "figure", "met"], goals(names, figures)), ""]
    errors = [
        f"{name} {mode}: {count} errors"
        for name, counts in figures.errors.items()
        for mode, count in counts.items()
        if count
    ]
    if errors:
        out += ["## Errors", "", *errors, ""]
        for name, error in figures.first_errors.items():
            out += ["", f"first error of {name}: {error}"]
            server = next(s for s in bench.servers if s.target.name == name)
            if server.log is not None:
                tail = server.log.read_text(errors="replace").splitlines()[-15:]
                out += [f"last lines of {name}'s log:", *tail]
    return "\n".join(out)


def goals(names: Sequence[str], figures: Figures) -> list[list[str]]:
    """Each llmsession store against the gateway's goals: (goal, figure, met)."""
    rows: list[list[str]] = []

    def added_p50(name: str, mode: str) -> float:
        samples = figures.latency.get(name, {}).get(mode, [])
        base = figures.latency.get("direct", {}).get(mode, [])
        return (percentile(samples, 0.5) - percentile(base, 0.5)) * 1000

    def rps(name: str, mode: str) -> float:
        return median(figures.rps.get(name, {}).get(mode, []))

    def verdict(ok: bool, *values: float) -> str:
        if any(math.isnan(value) for value in values):
            return "n/a"
        return "yes" if ok else "no"

    for name in (n for n in names if n.startswith("llmsession")):
        for mode in MODES:
            ours, fwd, lite = added_p50(name, mode), added_p50("forwarder", mode), float("nan")
            if "litellm" in names:
                lite = added_p50("litellm", mode)
            what = "TTFB" if mode == "stream" else "latency"
            rows.append(
                [
                    f"{name}, {mode}: added p50 {what} within 1 ms of the forwarder's",
                    f"{ours:.2f} ms vs {fwd:.2f} ms ({ours - fwd:+.2f} ms)",
                    verdict(ours - fwd <= 1.0, ours, fwd),
                ]
            )
            ratio = _ratio(rps(name, mode), rps("forwarder", mode))
            rows.append(
                [
                    f"{name}, {mode}: throughput at least 0.6x the forwarder's",
                    f"{ratio:.2f}x",
                    verdict(ratio >= 0.6, ratio),
                ]
            )
            ratio = _ratio(rps(name, mode), rps("litellm", mode))
            rows.append(
                [
                    f"{name}, {mode}: throughput at least 5x LiteLLM's",
                    "n/a (no LiteLLM figure)" if math.isnan(ratio) else f"{ratio:.2f}x",
                    verdict(ratio >= 5, ratio),
                ]
            )
            rows.append(
                [
                    f"{name}, {mode}: added p50 {what} under a fifth of LiteLLM's",
                    "n/a (no LiteLLM figure)"
                    if math.isnan(lite)
                    else f"{ours:.2f} ms vs {lite:.2f} ms",
                    verdict(ours < lite / 5, lite, ours),
                ]
            )
    return rows


# -- the orchestration ---------------------------------------------------------------------


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    return f"commit {done.stdout.strip()}{' + changes' if dirty else ''}"


async def _with_stores(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Fresh data for each llmsession store, removed at the end whatever happens."""
    async with AsyncExitStack() as stack:
        places: list[FreshStore] = []
        if "llmsession" in args.targets.split(","):
            for store in args.stores.split(","):
                places.append(await stack.enter_async_context(fresh_store(store)))
        return await asyncio.to_thread(_bench, args, places)


def _bench(args: argparse.Namespace, places: Sequence[FreshStore]) -> tuple[int, dict[str, Any]]:
    """Start every target, measure, report: (1 if any request failed else 0, the figures)."""
    targets = args.targets.split(",")
    with (
        tempfile.TemporaryDirectory(prefix="llmsession-bench-gateway-") as workdir,
        ExitStack() as stack,
    ):
        bench = Bench(args, Path(workdir), stack)
        bench.start_fake()
        script = Script.build(bench.answers(), args.kind)
        if "forwarder" in targets:
            bench.start_forwarder()
        for place in places:
            bench.start_llmsession(place.backend, place.url)
        if "litellm" in targets:
            bench.start_litellm()
        bench.check_targets(script)
        figures = measure(bench, script, args)
        print(report(bench, figures, args, _commit()), flush=True)
        failed = any(any(c.values()) for c in figures.errors.values())
        return int(failed), _as_json(bench, figures)


def _as_json(bench: Bench, figures: Figures) -> dict[str, Any]:
    return {
        "rps": figures.rps,
        "cpu_per_request_us": figures.cpu_per_request_us,
        "errors": figures.errors,
        "rss_mib": {s.target.name: s.rss_mib for s in bench.servers},
        "latency_ms": {
            name: {
                mode: {"p50": percentile(v, 0.5) * 1000, "p99": percentile(v, 0.99) * 1000}
                for mode, v in modes.items()
            }
            for name, modes in figures.latency.items()
        },
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked: every error names the flag and what it accepts."""
    parser = argparse.ArgumentParser(
        # The title and the Run: block, so --help shows how to run every kind.
        description="\n\n".join((__doc__ or "").split("\n\n")[:2]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--role", choices=["bench", "load"], default="bench", help=argparse.SUPPRESS
    )
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, from {', '.join(TARGETS)} (direct is always measured: the "
        "base of added latency)",
    )
    parser.add_argument(
        "--stores",
        default="sqlite,postgresql",
        help=f"llmsession's stores, comma-separated, from {', '.join(STORES)}; each gets "
        "fresh data, removed at the end",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 35 s to a minute")
    parser.add_argument("--repeat", type=int, help="rounds of every measurement (default 3)")
    parser.add_argument(
        "--duration", type=float, help="seconds of each throughput measurement (default 4)"
    )
    parser.add_argument(
        "--warmup", type=float, help="unmeasured seconds before each one (default 1)"
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        help="sequential requests per target and mode per repeat (default 100)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="clients for throughput")
    parser.add_argument("--rounds", type=int, default=8, help="turns of each conversation")
    parser.add_argument(
        "--litellm-venv",
        default=str(LITELLM_VENV),
        help="where the pinned LiteLLM is installed (created on first use)",
    )
    parser.add_argument(
        "--forwarder-client",
        choices=("aiohttp", "httpx"),
        default="aiohttp",
        help="the forwarder's upstream client (default aiohttp, as llmsession's gateway)",
    )
    parser.add_argument(
        "--kind",
        choices=(*KINDS, "all"),
        default="openai",
        help="the wire format measured: openai (Chat Completions, default), anthropic "
        "(Messages), gemini (generateContent), or all: the three one after the other, "
        "each with fresh servers and stores and its own report",
    )
    parser.add_argument(
        "--json",
        help="also write the figures to this file (with --kind all, one entry per kind)",
    )
    args = parser.parse_args(argv)
    if args.role == "load":
        if not args.job:
            parser.error("--role=load needs --job")
        return args
    defaults = (
        {"repeat": 1, "duration": 1.5, "warmup": 0.5, "latency_requests": 20}
        if args.quick
        else {"repeat": 3, "duration": 4.0, "warmup": 1.0, "latency_requests": 100}
    )
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.latency_warmup = max(5, args.latency_requests // 10)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        parser.error(
            f"--targets: unknown {', '.join(unknown) or '(none)'}; use {', '.join(TARGETS)}"
        )
    if "direct" not in targets:
        targets.insert(0, "direct")
    args.targets = ",".join(t for t in TARGETS if t in targets)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = [s for s in stores if s not in STORES]
    if unknown or not stores or len(set(stores)) != len(stores):
        parser.error(
            f"--stores: {', '.join(unknown) or 'none or repeated'}; use each of "
            f"{', '.join(STORES)} at most once"
        )
    args.stores = ",".join(stores)
    if not 1 <= args.repeat <= 20:
        parser.error(f"--repeat must be 1 to 20, got {args.repeat}")
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--duration must be over 0 and at most 600 s, --warmup 0 to 60 s")
    if not 1 <= args.latency_requests <= 100_000:
        parser.error(f"--latency-requests must be 1 to 100000, got {args.latency_requests}")
    if not 1 <= args.concurrency <= 1024:
        parser.error(f"--concurrency must be 1 to 1024, got {args.concurrency}")
    if not 1 <= args.rounds <= 64:
        parser.error(f"--rounds must be 1 to 64, got {args.rounds}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "load":
        _load_main(args.job)
        return 0
    kinds = KINDS if args.kind == "all" else (args.kind,)
    failed = 0
    figures: dict[str, dict[str, Any]] = {}
    for number, kind in enumerate(kinds):
        if number:
            print()
        one = argparse.Namespace(**{**vars(args), "kind": kind})
        try:
            code, figures[kind] = asyncio.run(_with_stores(one))
        except RuntimeError as error:
            if len(kinds) == 1:
                raise
            # One kind that cannot be measured does not cost the others their run.
            print(f"# {KIND_NAMES[kind]}: not measured: {error}", flush=True)
            code = 1
        failed = max(failed, code)
    if args.json:
        written = figures if args.kind == "all" else figures[args.kind]
        Path(args.json).write_text(json.dumps(written, indent=2))
    return failed


if __name__ == "__main__":
    sys.exit(main())
