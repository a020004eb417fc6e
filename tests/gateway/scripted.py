"""ScriptedUpstream: an in-memory provider for forwarding tests (the transport boundary).

Each send pops the next scripted answer and remembers the request, so a test
sees exactly what forwarding sent upstream. Real-process tests use the fake
provider instead; this one makes single behaviours easy to pin down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmsession.gateway.transport import ProviderError, UpstreamRequest, UpstreamResponse


@dataclass
class Scripted:
    status: int = 200
    body: bytes = b""
    chunks: list[bytes] = field(default_factory=list[bytes])
    content_type: str = "application/json"
    #: Raised after the chunks, as a broken connection would be.
    error: ProviderError | None = None
    #: Set, the chunks after the first wait for it, as a slow provider's would.
    resume: asyncio.Event | None = None
    #: Headers besides content-type.
    headers: dict[str, str] = field(default_factory=dict[str, str])


class _Response:
    def __init__(self, answer: Scripted) -> None:
        self._answer = answer
        self.status_code = answer.status
        self.headers: Mapping[str, str] = {"content-type": answer.content_type, **answer.headers}
        self.closed = False

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return _Chunks(self._answer)

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def aclose(self) -> None:
        self.closed = True


class _Chunks:
    """The scripted chunks; like the real upstream's, a task cancelled while it waits
    loses nothing, and another task may read on."""

    def __init__(self, answer: Scripted) -> None:
        self._answer = answer
        self._chunks = ([answer.body] if answer.body else []) + list(answer.chunks)
        self._given = 0

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._given > 0 and self._answer.resume is not None:
            await self._answer.resume.wait()
        if self._given < len(self._chunks):
            self._given += 1
            return self._chunks[self._given - 1]
        if self._answer.error is not None:
            error, self._answer.error = self._answer.error, None
            raise error
        raise StopAsyncIteration


class ScriptedUpstream:
    def __init__(self, *answers: Scripted) -> None:
        self.answers = list(answers)
        self.sent: list[UpstreamRequest] = []
        #: Called as each request arrives: what happens while the provider works.
        self.on_send: Callable[[], object] | None = None
        #: Set, a request waits for it before its answer starts, as a slow provider's.
        self.headers_after: asyncio.Event | None = None

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(request.body) for request in self.sent]

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        self.sent.append(request)
        if self.on_send is not None:
            self.on_send()
        answer = self.answers.pop(0)
        if self.headers_after is not None:
            await self.headers_after.wait()
        if isinstance(answer, ProviderError):
            raise answer
        return _Response(answer)

    async def aclose(self) -> None:
        return None
