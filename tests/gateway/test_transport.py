"""AiohttpUpstream against real sockets on loopback: the request it sends and its errors."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvicorn

from llmsession.gateway.config import ProviderConfig, SecretKey
from llmsession.gateway.transport import (
    KEEPALIVE_SECONDS,
    AiohttpUpstream,
    ProviderTimeout,
    ProviderUnavailable,
    UpstreamRequest,
)

KEY = "sk-upstream-secret"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def provider(port: int, timeout: float = 5.0) -> ProviderConfig:
    return ProviderConfig(
        provider_id="fake",
        kind="openai",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key_env="FAKE_KEY",
        api_key=SecretKey(KEY),
        timeout_seconds=timeout,
    )


async def serve(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def upstream() -> AsyncIterator[AiohttpUpstream]:
    async with AiohttpUpstream() as client:
        yield client


async def test_sends_the_headers_and_body_and_streams_the_answer(upstream: AiohttpUpstream) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            ).split(b":")[1]
        )
        seen.append(head + await reader.readexactly(length))
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for part in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    async with server:
        response = await upstream.send(
            UpstreamRequest(
                provider(port),
                "/chat/completions",
                b'{"a":1}',
                [("authorization", f"Bearer {KEY}")],
            )
        )
        assert response.status_code == 200
        assert await response.aread() == b"data: 1\n\ndata: 2\n\n"
        await response.aclose()
    request = seen[0]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1")
    assert f"authorization: Bearer {KEY}".encode() in request.lower().replace(b"bearer", b"Bearer")
    assert request.endswith(b'{"a":1}')


async def test_a_refused_connection_is_unavailable_and_never_shows_the_key(
    upstream: AiohttpUpstream,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProviderUnavailable, match="provider 'fake' could not be reached") as caught:
        await upstream.send(UpstreamRequest(provider(port), "/chat/completions", b"{}"))
    assert KEY not in str(caught.value)
    assert caught.value.provider_id == "fake"


async def test_no_answer_within_the_timeout_is_a_timeout(upstream: AiohttpUpstream) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server, port = await serve(handler)
    async with server:
        with pytest.raises(ProviderTimeout, match="did not answer within its timeout_seconds"):
            await upstream.send(UpstreamRequest(provider(port, timeout=0.2), "/responses", b"{}"))
        release.set()


async def test_a_stream_that_stalls_mid_way_is_a_timeout(upstream: AiohttpUpstream) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await release.wait()
        writer.close()

    server, port = await serve(handler)
    async with server:
        # The answer's head must come within the timeout, the loop busy or not:
        # 1 s, not the 0.2 s of a provider that never answers.
        response = await upstream.send(
            UpstreamRequest(provider(port, timeout=1.0), "/responses", b"{}")
        )
        chunks: list[bytes] = []

        async def read_all() -> None:
            async for chunk in response.aiter_bytes():
                chunks.append(chunk)

        with pytest.raises(ProviderTimeout):
            await read_all()
        assert chunks == [b"hello"]
        await response.aclose()
        release.set()


async def test_a_body_that_stalls_mid_way_is_a_timeout(upstream: AiohttpUpstream) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
        await writer.drain()
        await release.wait()
        writer.close()

    server, port = await serve(handler)
    async with server:
        # As above: 1 s for the answer's head to come.
        response = await upstream.send(
            UpstreamRequest(provider(port, timeout=1.0), "/chat/completions", b"{}")
        )
        with pytest.raises(ProviderTimeout):
            await response.aread()
        await response.aclose()
        release.set()


async def test_a_connection_cut_mid_stream_is_unavailable(upstream: AiohttpUpstream) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.transport.abort()

    server, port = await serve(handler)
    async with server:
        response = await upstream.send(UpstreamRequest(provider(port), "/responses", b"{}"))
        with pytest.raises(
            ProviderUnavailable, match="broke the connection before its answer ended"
        ):
            await response.aread()
        await response.aclose()


async def test_a_connection_closed_before_the_answer_says_the_provider_had_the_request(
    upstream: AiohttpUpstream,
) -> None:
    # It may have billed it: "could not be reached" would say it never got it.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server, port = await serve(handler)
    async with server:
        with pytest.raises(
            ProviderUnavailable,
            match=r"^provider 'fake' broke the connection before answering \(ServerDisconnectedError\)$",
        ):
            await upstream.send(UpstreamRequest(provider(port), "/responses", b"{}"))


async def test_a_stream_cut_before_its_bytes_were_read_gives_them_then_the_error(
    upstream: AiohttpUpstream,
) -> None:
    # The bytes may hold what the provider billed (a stream's usage): aiohttp raises
    # the cut ahead of them once both have arrived, unless they are read first.
    cut = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n")
        await writer.drain()
        writer.transport.abort()
        cut.set()

    server, port = await serve(handler)
    async with server:
        response = await upstream.send(UpstreamRequest(provider(port), "/responses", b"{}"))
        await cut.wait()
        await asyncio.sleep(0.05)  # the client's side of the socket has both by now
        chunks = response.aiter_bytes()
        assert await anext(chunks) == b"data: 1\n\ndata: 2\n\n"
        with pytest.raises(ProviderUnavailable, match="broke the connection before its answer"):
            await anext(chunks)
        await response.aclose()


async def test_a_compressed_answer_passes_through_as_sent(upstream: AiohttpUpstream) -> None:
    body = gzip.compress(b'{"id":"x"}')
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    async with server:
        response = await upstream.send(UpstreamRequest(provider(port), "/responses", b"{}"))
        assert await response.aread() == body
        assert response.headers["content-encoding"] == "gzip"
        await response.aclose()
    assert b"accept-encoding: identity" in seen[0].lower()


async def test_a_redirect_is_answered_not_followed(upstream: AiohttpUpstream) -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(
            b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server, port = await serve(handler)
    async with server:
        response = await upstream.send(UpstreamRequest(provider(port), "/responses", b"{}"))
        assert response.status_code == 307
        assert await response.aread() == b""
        await response.aclose()
    assert len(seen) == 1


async def test_cookies_a_provider_sets_are_never_sent_back(upstream: AiohttpUpstream) -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            heads.append(head.lower())
            await reader.readexactly(2)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                b"set-cookie: session=tenant-a; Path=/\r\n\r\n{}"
            )
            await writer.drain()
        writer.close()

    server, port = await serve(handler)
    # A host name: aiohttp's default cookie jar would keep no cookie from an IP address.
    named = dataclasses.replace(provider(port), base_url=f"http://localhost:{port}/v1")
    async with server:
        for _ in range(2):
            response = await upstream.send(UpstreamRequest(named, "/responses", b"{}"))
            assert await response.aread() == b"{}"
            await response.aclose()
    assert len(heads) == 2
    # What the provider set for one tenant's request goes to nobody else's.
    assert all(b"\r\ncookie:" not in head for head in heads)


def keep_alive_handler(connections: list[int]) -> Handler:
    """Answers ``{}`` to every request on a connection until the client closes it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            await reader.readexactly(2)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    return handler


async def test_an_idle_connection_is_reused_within_the_keepalive_and_not_after() -> None:
    connections: list[int] = []
    server, port = await serve(keep_alive_handler(connections))

    async def ask(upstream: AiohttpUpstream) -> None:
        response = await upstream.send(UpstreamRequest(provider(port), "/responses", b"{}"))
        assert await response.aread() == b"{}"
        await response.aclose()

    async with server, AiohttpUpstream(keepalive_seconds=0.3) as upstream:
        await ask(upstream)
        await ask(upstream)
        assert len(connections) == 1
        await asyncio.sleep(0.5)
        await ask(upstream)
        assert len(connections) == 2


def test_idle_connections_are_dropped_before_a_uvicorn_provider_closes_them() -> None:
    # uvicorn (so vLLM and the fake provider) closes a connection idle for
    # timeout_keep_alive; a request sent on it at that moment would fail.
    assert uvicorn.Config("unused:app").timeout_keep_alive > KEEPALIVE_SECONDS
