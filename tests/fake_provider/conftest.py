"""Fixtures: the fake provider as its own process on loopback, driven over real HTTP."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

API_KEY = "sk-fake-test-0123456789"
OTHER_KEY = "sk-fake-other-9876543210"


@dataclass
class FakeProcess:
    """A running fake provider: its URLs, and helpers for its ``/_fake`` routes."""

    process: subprocess.Popen[bytes]
    base_url: str  # ends in /v1, as the SDK wants it
    root: str
    log: Path
    _clients: dict[tuple[str, str], OpenAI] = field(default_factory=dict[tuple[str, str], OpenAI])
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=5.0))

    def get(self, path: str) -> Any:
        response = self._http.get(self.root + path)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: object = None) -> httpx.Response:
        return self._http.post(self.root + path, json=body)

    def billing(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.get("/_fake/billing")["entries"]
        return entries

    def fault(self, **fault: object) -> None:
        response = self.post("/_fake/faults", fault)
        assert response.status_code == 200, response.text

    def client(self, key: str = API_KEY, **options: Any) -> OpenAI:
        """A sync SDK client (no retries unless told), kept for reuse and closed at the end."""
        options = {"max_retries": 0, **options}
        cache_key = (key, repr(sorted(options.items())))
        if cache_key not in self._clients:
            self._clients[cache_key] = OpenAI(base_url=self.base_url, api_key=key, **options)
        return self._clients[cache_key]

    def async_client(self, key: str = API_KEY, **options: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.base_url, api_key=key, **{"max_retries": 0, **options})

    def stop(self) -> int:
        for client in self._clients.values():
            client.close()
        self._http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the fake provider ignored SIGTERM") from None
        finally:
            if self.process.stdout is not None:
                self.process.stdout.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


FakeFactory = Callable[..., FakeProcess]


def _first_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline().decode().strip()


def launch(command: list[str], log: Path, env: dict[str, str] | None = None) -> FakeProcess:
    """Start ``command`` (a fake provider with --port 0), wait until it answers."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )
    line = _first_line(process, timeout=30.0)
    if not line.startswith("fake provider listening on http://"):
        process.kill()
        process.wait()
        raise AssertionError(f"unexpected first line {line!r}:\n{log.read_text()}")
    base_url = line.rsplit(" ", 1)[1]
    fake = FakeProcess(process, base_url, base_url.removesuffix("/v1"), log)
    deadline = time.monotonic() + 30.0
    while True:
        try:
            if httpx.get(fake.root + "/_fake/health", timeout=1.0).status_code == 200:
                return fake
        except httpx.TransportError:
            if time.monotonic() > deadline:
                fake.stop()
                raise AssertionError(f"fake provider not ready:\n{fake.output()}") from None
        time.sleep(0.02)


def fake_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "llmsession.fake_provider", "--port", "0", *args]


@pytest.fixture
def start_fake(tmp_path: Path) -> Iterator[FakeFactory]:
    """Start fake providers with given extra arguments; each is stopped at the end."""
    started: list[FakeProcess] = []

    def start(
        *args: str, env: dict[str, str] | None = None, command: list[str] | None = None
    ) -> FakeProcess:
        log = tmp_path / f"fake-{len(started)}.log"
        fake = launch(command or fake_command("--api-key", API_KEY, *args), log, env)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


@pytest.fixture(scope="session")
def shared_fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeProcess]:
    log = tmp_path_factory.mktemp("fake") / "fake.log"
    fake = launch(fake_command("--api-key", API_KEY, "--api-key", OTHER_KEY), log)
    yield fake
    assert fake.stop() == 0, fake.output()


@pytest.fixture
def fake(shared_fake: FakeProcess) -> FakeProcess:
    """The shared fake provider process, reset (no cache, responses, billing or faults)."""
    assert shared_fake.post("/_fake/reset").status_code == 200
    return shared_fake
