"""The one small interface between forwarding and a provider (httpx's transport idea).

:class:`Upstream` sends one request and gives the status, the headers and the
body as an async byte stream; everything above it (turn order, history,
accounting) is the same whether the bytes come from a real provider, the fake
provider on loopback, or an in-memory stand-in in a test.
:class:`AiohttpUpstream` is the real one: one ``aiohttp.ClientSession`` with
its own connection pool per provider, so connections are kept alive across
requests and a slow provider cannot take another's connections. (aiohttp, not
httpx: httpcore's pool walks every pooled connection on each request, which at
32 concurrent clients cost more CPU per answer than the rest of the gateway.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import aiohttp

from llmsession.errors import LLMSessionError
from llmsession.gateway.config import ProviderConfig

#: How long an idle pooled connection is kept for the next request. Shorter
#: than the 5 s after which uvicorn (so vLLM and the fake provider), Node.js and
#: Apache close an idle connection: at the same length, a request sent on a
#: connection just as the server closed it failed (a 502), and it cannot be
#: sent again, since nothing tells whether the provider got it (and billed it).
KEEPALIVE_SECONDS = 4.0

__all__ = [
    "KEEPALIVE_SECONDS",
    "AiohttpUpstream",
    "ProviderError",
    "ProviderTimeout",
    "ProviderUnavailable",
    "Upstream",
    "UpstreamRequest",
    "UpstreamResponse",
]


class ProviderError(LLMSessionError):
    """The provider could not be reached or did not answer properly.

    Messages name the provider id and what happened, never its key or URL
    credentials.
    """

    def __init__(self, provider_id: str, message: str) -> None:
        super().__init__(message)
        self.provider_id = provider_id


class ProviderUnavailable(ProviderError):
    """Connection refused, reset or broken: the service answers 502."""


class ProviderTimeout(ProviderError):
    """No answer within the provider's ``timeout_seconds``: the service answers 504."""


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request to a provider; ``path`` is appended to its ``base_url``, and
    ``headers`` carry the provider's key in the way its wire format wants it.
    ``method`` is POST but for side requests (Gemini's cache entries)."""

    provider: ProviderConfig
    path: str
    body: bytes
    headers: Sequence[tuple[str, str]] = ()
    method: str = "POST"


class UpstreamResponse(Protocol):
    """A provider's answer whose body is read as it arrives."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises ProviderError if the connection breaks or stalls.

        A task cancelled while it waits for the next chunk loses nothing: another
        task may go on iterating the same iterator (a client that leaves mid-stream
        hands the rest of the answer over so).
        """
        ...

    async def aread(self) -> bytes:
        """The whole body; raises ProviderError as ``aiter_bytes`` does."""
        ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """Sends requests to providers."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request``; the body is not read yet. Raises ProviderError."""
        ...

    async def aclose(self) -> None: ...


class _AiohttpResponse:
    def __init__(self, provider_id: str, response: aiohttp.ClientResponse) -> None:
        self._provider_id = provider_id
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        return _Chunks(self._provider_id, self._response.content)

    async def aread(self) -> bytes:
        try:
            return await self._response.read()
        except TimeoutError:
            raise _timeout(self._provider_id) from None
        except aiohttp.ClientError as error:
            raise _unavailable(self._provider_id, error, answering=True) from None

    async def aclose(self) -> None:
        # A connection whose answer was not read to the end is closed, not pooled.
        self._response.release()


class _Chunks:
    """A body's chunks as they arrive. Not an async generator: a cancellation while
    it waits would end one, while aiohttp's reader keeps what it holds for the
    next read."""

    __slots__ = ("_broken", "_content", "_provider_id")

    def __init__(self, provider_id: str, content: aiohttp.StreamReader) -> None:
        self._provider_id = provider_id
        self._content = content
        #: The connection broke after bytes not yet given: raised once they are.
        self._broken: ProviderError | None = None

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self._broken is not None:
            raise self._broken
        try:
            chunk = await self._content.readany()
        except TimeoutError:
            raise _timeout(self._provider_id) from None
        except aiohttp.ClientError as error:
            broken = _unavailable(self._provider_id, error, answering=True)
            # aiohttp raises a broken connection's error ahead of the bytes that came
            # before it, unread yet: they may hold what the provider billed (a
            # stream's usage), so they go first.
            chunk = _unread(self._content)
            if not chunk:
                raise broken from None
            self._broken = broken
        if not chunk:
            raise StopAsyncIteration
        return chunk


def _unread(content: aiohttp.StreamReader) -> bytes:
    """The bytes ``content`` holds unread, which its public reads no longer give once
    it has an error: through its private reader, where this aiohttp has one."""
    read_nowait = getattr(content, "_read_nowait", None)
    if read_nowait is None:
        return b""
    unread = read_nowait(-1)
    return unread if isinstance(unread, bytes) else b""


class AiohttpUpstream:
    """The real upstream: an ``aiohttp.ClientSession`` with its own connection pool per provider."""

    def __init__(
        self, *, max_connections: int = 256, keepalive_seconds: float = KEEPALIVE_SECONDS
    ) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        provider = request.provider
        session = self._session(provider)
        headers = [("content-type", "application/json"), *request.headers]
        try:
            response = await session.request(
                request.method,
                provider.base_url + request.path,
                data=request.body,
                headers=headers,
                # Redirects would resend the provider's key to wherever they point.
                allow_redirects=False,
            )
        except TimeoutError:
            raise _timeout(provider.provider_id) from None
        except aiohttp.ClientError as error:
            raise _unavailable(provider.provider_id, error) from None
        return _AiohttpResponse(provider.provider_id, response)

    def _session(self, provider: ProviderConfig) -> aiohttp.ClientSession:
        session = self._sessions.get(provider.provider_id)
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_seconds,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                # Waiting for a pooled connection counts against connect; each read,
                # the answer's head or a chunk of its body, against sock_read.
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=provider.timeout_seconds,
                    sock_read=provider.timeout_seconds,
                ),
                # A provider's answer is passed on as sent, compressed or not; asking
                # for identity keeps it readable for accounting.
                auto_decompress=False,
                headers={"accept-encoding": "identity"},
                trust_env=False,
                # No cookies: one tenant's request must not carry what a provider
                # set on another's, and the jar's bookkeeping costs on every request.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._sessions[provider.provider_id] = session
        return session

    async def aclose(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _timeout(provider_id: str) -> ProviderTimeout:
    return ProviderTimeout(
        provider_id, f"provider {provider_id!r} did not answer within its timeout_seconds"
    )


def _unavailable(
    provider_id: str, error: Exception, *, answering: bool = False
) -> ProviderUnavailable:
    """The 502 for ``error``, saying whether the provider had the request: one that
    broke the connection after it may have billed it."""
    if answering:
        what = "broke the connection before its answer ended"
    elif isinstance(error, aiohttp.ClientConnectorError):
        what = "could not be reached"
    else:
        what = "broke the connection before answering"
    # The exception's text can hold the URL; its class name says what happened.
    return ProviderUnavailable(
        provider_id, f"provider {provider_id!r} {what} ({type(error).__name__})"
    )
