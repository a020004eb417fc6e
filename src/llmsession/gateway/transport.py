"""The one small interface between forwarding and a provider (httpx's transport idea).

:class:`Upstream` sends one request and gives the status, the headers and the
body as an async byte stream; everything above it (turn order, history,
accounting) is the same whether the bytes come from a real provider, the fake
provider on loopback, or an in-memory stand-in in a test.
:class:`HttpxUpstream` is the real one: one pooled ``httpx.AsyncClient`` per
provider, so connections are kept alive across requests and a slow provider
cannot take another's connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

import httpx

from llmsession.errors import LLMSessionError
from llmsession.gateway.config import ProviderConfig

__all__ = [
    "HttpxUpstream",
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
    """One request to a provider; ``path`` is appended to its ``base_url``."""

    provider: ProviderConfig
    path: str
    body: bytes
    headers: Sequence[tuple[str, str]] = ()


class UpstreamResponse(Protocol):
    """A provider's answer whose body is read as it arrives."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives; raises ProviderError if the connection breaks or stalls."""
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


class _HttpxResponse:
    def __init__(self, provider_id: str, response: httpx.Response) -> None:
        self._provider_id = provider_id
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        except httpx.TimeoutException:
            raise _timeout(self._provider_id) from None
        except httpx.HTTPError as error:
            raise _unavailable(self._provider_id, error) from None

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def aclose(self) -> None:
        await self._response.aclose()


class HttpxUpstream:
    """The real upstream: a pooled ``httpx.AsyncClient`` per provider."""

    def __init__(self, *, max_connections: int = 256) -> None:
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        provider = request.provider
        client = self._client(provider)
        headers = [
            ("authorization", f"Bearer {provider.api_key.reveal()}"),
            ("content-type", "application/json"),
            *request.headers,
        ]
        built = client.build_request(
            "POST", provider.base_url + request.path, content=request.body, headers=headers
        )
        try:
            response = await client.send(built, stream=True)
        except httpx.TimeoutException:
            raise _timeout(provider.provider_id) from None
        except httpx.HTTPError as error:
            raise _unavailable(provider.provider_id, error) from None
        return _HttpxResponse(provider.provider_id, response)

    def _client(self, provider: ProviderConfig) -> httpx.AsyncClient:
        client = self._clients.get(provider.provider_id)
        if client is None:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(provider.timeout_seconds),
                limits=self._limits,
                # Redirects would resend the provider's key to wherever they point.
                follow_redirects=False,
                # A provider's answer is passed on as sent, compressed or not.
                headers={"accept-encoding": "identity"},
                trust_env=False,
            )
            self._clients[provider.provider_id] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

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


def _unavailable(provider_id: str, error: httpx.HTTPError) -> ProviderUnavailable:
    # The exception's text can hold the URL; its class name says what happened.
    return ProviderUnavailable(
        provider_id,
        f"provider {provider_id!r} could not be reached ({type(error).__name__})",
    )
