"""The floor of bench/gateway.py: a bare pass-through forwarder, as small as an ASGI proxy gets.

One Starlette app under uvicorn (one worker, like the llmsession server) with
one pooled HTTP client: ``aiohttp.ClientSession`` (``--client aiohttp``, the
default, as llmsession's gateway uses) or ``httpx.AsyncClient`` (``--client
httpx``). Every ``POST`` is sent on to the upstream at
the same path and query with the client's body, ``Authorization``, ``x-goog-api-key``
and ``anthropic-version``, and the
upstream's answer is streamed back as it arrives (status, content type and
body; for a stream, each event as it comes). No session, no history, no auth
of its own, no parsing of the body: whatever llmsession adds on top of this
is the price of its work.

Run:  python bench/_forwarder.py --upstream http://127.0.0.1:9100 --port 9200 [--client httpx]
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import aiohttp
import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["CLIENTS", "create_app", "main"]

Client = Literal["aiohttp", "httpx"]
CLIENTS: tuple[Client, ...] = ("aiohttp", "httpx")


def create_app(
    upstream: str, *, client: Client = "aiohttp", max_connections: int = 256
) -> Starlette:
    """The forwarder of ``upstream``, a root URL (``http://host:port``); paths pass on as is."""
    make = _aiohttp_forward if client == "aiohttp" else _httpx_forward
    forward = make(upstream, max_connections)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/healthz", health, methods=["GET"]),
            Route("/{path:path}", forward.send, methods=["POST"]),
        ],
        lifespan=forward.lifespan,
    )


#: The client's headers passed on: its key (OpenAI's, Gemini's) and Anthropic's version.
_PASSED = ("authorization", "x-goog-api-key", "anthropic-version")


def _headers(request: Request) -> dict[str, str]:
    headers = {"content-type": request.headers.get("content-type", "application/json")}
    for name in _PASSED:
        if (value := request.headers.get(name)) is not None:
            headers[name] = value
    return headers


def _target(request: Request) -> str:
    """The upstream path, with the client's query (Gemini streams with ``?alt=sse``)."""
    query = request.url.query
    return f"{request.url.path}?{query}" if query else request.url.path


@dataclass(frozen=True)
class _Forward:
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]]
    send: Callable[[Request], Awaitable[Response]]


def _aiohttp_forward(upstream: str, max_connections: int) -> _Forward:
    sessions: list[aiohttp.ClientSession] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            base_url=upstream,
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=60.0, sock_read=60.0),
            # The answer is passed on as sent, compressed or not.
            auto_decompress=False,
            headers={"accept-encoding": "identity"},
            trust_env=False,
        ) as session:
            sessions.append(session)
            yield
            sessions.clear()

    async def send(request: Request) -> Response:
        response = await sessions[0].post(
            _target(request),
            data=await request.body(),
            headers=_headers(request),
            allow_redirects=False,
        )
        return StreamingResponse(
            response.content.iter_any(),
            status_code=response.status,
            media_type=response.headers.get("content-type"),
            background=BackgroundTask(response.release),
        )

    return _Forward(lifespan, send)


def _httpx_forward(upstream: str, max_connections: int) -> _Forward:
    clients: list[httpx.AsyncClient] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        async with httpx.AsyncClient(
            base_url=upstream,
            limits=limits,
            timeout=60.0,
            # The answer is passed on as sent, compressed or not.
            headers={"accept-encoding": "identity"},
            trust_env=False,
        ) as client:
            clients.append(client)
            yield
            clients.clear()

    async def send(request: Request) -> Response:
        client = clients[0]
        upstream_request = client.build_request(
            "POST", _target(request), content=await request.body(), headers=_headers(request)
        )
        response = await client.send(upstream_request, stream=True)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            media_type=response.headers.get("content-type"),
            background=BackgroundTask(response.aclose),
        )

    return _Forward(lifespan, send)


def main(argv: list[str] | None = None) -> None:
    """Serve the forwarder until SIGTERM or SIGINT."""
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="root URL, e.g. http://127.0.0.1:9100")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--client", choices=CLIENTS, default="aiohttp", help="the upstream HTTP client"
    )
    args = parser.parse_args(argv)
    uvicorn.run(
        create_app(args.upstream.rstrip("/"), client=args.client),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
