"""The fake provider's ASGI app: OpenAI's two endpoints, Anthropic's Messages, and the
``/_fake`` test routes.

OpenAI's routes need ``Authorization: Bearer <an accepted key>``; ``/v1/messages``
needs ``x-api-key: <an accepted key>`` (or the key as a bearer token, which some
versions of Anthropic's SDK send) and an ``anthropic-version`` header, and
answers errors in Anthropic's shape.
The ``/_fake`` routes (billing log, faults, reset) need none: the fake is a test
tool and listens on loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llmsession.fake_provider.anthropic_messages import (
    anthropic_error_body,
    message_body,
    message_frames,
    parse_messages_request,
)
from llmsession.fake_provider.billing import Endpoint
from llmsession.fake_provider.errors import ProviderError, invalid_request, not_found_route
from llmsession.fake_provider.faults import Fault, fault_error, parse_fault
from llmsession.fake_provider.openai_chat import (
    completion_body,
    completion_frames,
    parse_chat_request,
)
from llmsession.fake_provider.openai_responses import (
    answer_message,
    parse_responses_request,
    response_body,
    response_frames,
)
from llmsession.fake_provider.provider import FakeProvider, Served, new_id
from llmsession.fake_provider.request_fields import parse_json_object
from llmsession.fake_provider.response_store import StoredResponse
from llmsession.fake_provider.sse import Frame

__all__ = ["create_app"]

_JSON: Final = "application/json"
_MESSAGES: Final = "/v1/messages"
_SSE: Final = "text/event-stream; charset=utf-8"

#: Called when a body ends: how many frames were sent, and whether all of them were.
_OnEnd = Callable[[int, bool], None]


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _error_response(error: ProviderError, request_id: str, path: str = "") -> Response:
    if path == _MESSAGES:
        headers = {**error.headers, "request-id": request_id}
        body = anthropic_error_body(error, request_id)
        return Response(_dumps(body), error.status, headers, media_type=_JSON)
    headers = {**error.headers, "x-request-id": request_id}
    return Response(_dumps(error.body()), error.status, headers, media_type=_JSON)


class _FramedBody(Response):
    """A body sent frame by frame that may stop early: after ``cut_after`` frames it
    closes the connection without ending the body (a provider dying mid-answer), and
    it stops when the client goes away. ``on_end`` learns how far it got either way.
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        *,
        media_type: str,
        request_id: str,
        on_end: _OnEnd,
        client_gone: bool = False,
        cut_after: int | None = None,
        frame_delay: float = 0.0,
    ) -> None:
        super().__init__(None, 200, {"x-request-id": request_id}, media_type)
        if media_type == _SSE:
            self.headers["cache-control"] = "no-cache"
        # The length is unknown up front: the body is chunked, so a cut is visible.
        del self.headers["content-length"]
        self._frames = frames
        self._on_end = on_end
        self._cut_after = cut_after
        self._frame_delay = frame_delay
        self._client_gone = client_gone

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        if self._client_gone:
            gone.set()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        sent = 0
        finished = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            for frame in self._frames:
                if sent == self._cut_after:
                    # Returning without the last body message makes the server close the
                    # connection mid-body: the client sees an incomplete chunked read.
                    return
                if self._frame_delay:
                    await asyncio.sleep(self._frame_delay)
                if gone.is_set():
                    return
                await send({"type": "http.response.body", "body": frame.data, "more_body": True})
                sent += 1
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            finished = not gone.is_set()
        finally:
            watcher.cancel()
            self._on_end(sent, finished)


def _cut_point(frames: Sequence[Frame], fault: Fault | None) -> int | None:
    if fault is None or fault.mode != "cut":
        return None
    first_final = next((i for i, f in enumerate(frames) if f.final), len(frames))
    return min(fault.after_events, first_final)


class _Routes:
    """The handlers, over one FakeProvider."""

    def __init__(self, provider: FakeProvider) -> None:
        self.provider = provider

    async def _begin(self, request: Request) -> tuple[str, dict[str, object]]:
        key = self.provider.authenticate(request.headers.get("authorization"))
        return key, parse_json_object(await request.body())

    async def _fault(self, request: Request, endpoint: Endpoint) -> tuple[Fault | None, bool]:
        """The fault this request suffers, and whether its client left while it waited."""
        fault = self.provider.take_fault(endpoint)
        if fault is None:
            return None, False
        error = fault_error(fault)
        if error is not None:
            raise error
        if fault.mode != "slow":
            return fault, False
        await asyncio.sleep(fault.delay_seconds)
        # A client that timed out is still billed, as OpenAI bills it, but not as served.
        return fault, await request.is_disconnected()

    def _answer(
        self,
        served: Served,
        endpoint: Endpoint,
        fault: Fault | None,
        *,
        client_gone: bool,
        stream: bool,
        usage_sent: bool,
        frames: Sequence[Frame],
        body: dict[str, object],
        on_completed: Callable[[], None] = lambda: None,
    ) -> Response:
        """The answer as a stream of ``frames`` or as ``body``, billed when it ends."""
        usage_sent = usage_sent and (fault is None or fault.mode != "no_usage")
        provider = self.provider
        if not stream:
            if fault is None or fault.mode != "cut":
                provider.bill(
                    served,
                    endpoint=endpoint,
                    stream=False,
                    output_tokens=served.answer.output_tokens,
                    completed=not client_gone,
                    usage_reported=usage_sent and not client_gone,
                )
                on_completed()
                return Response(_dumps(body), 200, {"x-request-id": served.id}, _JSON)
            raw = _dumps(body)
            half = len(raw) // 2
            frames = [Frame(raw[:half], served.answer.output_tokens), Frame(raw[half:], 0)]

        def on_end(sent: int, finished: bool) -> None:
            produced = frames[sent - 1].produced if sent else 0
            if not stream:
                # A non-stream answer was generated in full before its first byte.
                produced = served.answer.output_tokens
            provider.bill(
                served,
                endpoint=endpoint,
                stream=stream,
                output_tokens=produced,
                completed=finished,
                usage_reported=finished and usage_sent,
            )
            if finished:
                on_completed()

        return _FramedBody(
            frames,
            media_type=_SSE if stream else _JSON,
            request_id=served.id,
            on_end=on_end,
            client_gone=client_gone,
            cut_after=_cut_point(frames, fault) if stream else 1,
            frame_delay=fault.event_delay_seconds if fault is not None and stream else 0.0,
        )

    async def chat_completions(self, request: Request) -> Response:
        endpoint: Endpoint = "chat.completions"
        key, body = await self._begin(request)
        parsed = parse_chat_request(body)
        fault, client_gone = await self._fault(request, endpoint)
        served = self.provider.serve(
            id=new_id("chatcmpl-"),
            key_fingerprint=key,
            model=parsed.model,
            prompt=parsed.messages,
            limit=parsed.limit,
            prompt_cache_key=parsed.prompt_cache_key,
        )
        with_usage = fault is None or fault.mode != "no_usage"
        return self._answer(
            served,
            endpoint,
            fault,
            client_gone=client_gone,
            stream=parsed.stream,
            usage_sent=parsed.include_usage or not parsed.stream,
            frames=completion_frames(served, include_usage=parsed.include_usage and with_usage)
            if parsed.stream
            else [],
            body=completion_body(served, with_usage=with_usage),
        )

    async def responses(self, request: Request) -> Response:
        endpoint: Endpoint = "responses"
        key, body = await self._begin(request)
        parsed = parse_responses_request(body)
        fault, client_gone = await self._fault(request, endpoint)
        context = (
            ()
            if parsed.previous_response_id is None
            else self.provider.responses.context(key, parsed.previous_response_id)
        )
        served = self.provider.serve(
            id=new_id("resp_"),
            key_fingerprint=key,
            model=parsed.model,
            prompt=parsed.prompt(context),
            limit=parsed.limit,
            prompt_cache_key=parsed.prompt_cache_key,
            previous_response_id=parsed.previous_response_id,
        )
        with_usage = fault is None or fault.mode != "no_usage"

        def store() -> None:
            if parsed.store:
                conversation = (*context, *parsed.input, answer_message(served))
                self.provider.responses.put(served.id, StoredResponse(key, conversation))

        return self._answer(
            served,
            endpoint,
            fault,
            client_gone=client_gone,
            stream=parsed.stream,
            usage_sent=True,
            frames=response_frames(served, parsed, with_usage=with_usage) if parsed.stream else [],
            body=response_body(served, parsed, with_usage=with_usage),
            on_completed=store,
        )

    async def messages(self, request: Request) -> Response:
        endpoint: Endpoint = "messages"
        headers = request.headers
        api_key = headers.get("x-api-key")
        if api_key is None and headers.get("authorization", "").lower().startswith("bearer "):
            api_key = headers["authorization"][len("bearer ") :]
        key = self.provider.authenticate_api_key(api_key)
        if not headers.get("anthropic-version"):
            raise invalid_request("anthropic-version: header is required")
        parsed = parse_messages_request(parse_json_object(await request.body()))
        fault, client_gone = await self._fault(request, endpoint)
        prompt = parsed.prompt
        served = self.provider.serve_blocks(
            id=new_id("msg_"),
            key_fingerprint=key,
            model=parsed.model,
            blocks=prompt.blocks,
            breakpoints=prompt.breakpoints,
            prompt_tokens=prompt.tokens,
            last_user_text=prompt.last_user_text,
            limit=parsed.max_tokens,
            user_id=parsed.user_id,
        )
        with_usage = fault is None or fault.mode != "no_usage"
        return self._answer(
            served,
            endpoint,
            fault,
            client_gone=client_gone,
            stream=parsed.stream,
            usage_sent=True,
            frames=message_frames(served, with_usage=with_usage) if parsed.stream else [],
            body=message_body(served, with_usage=with_usage),
        )

    # -- the /_fake routes ----------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def billing(self, request: Request) -> Response:
        log = self.provider.billing
        return JSONResponse(
            {"entries": [entry.to_json() for entry in log.entries], "totals": log.totals()}
        )

    async def reset(self, request: Request) -> Response:
        self.provider.reset()
        return JSONResponse({"reset": True})

    async def faults(self, request: Request) -> Response:
        queue = self.provider.faults
        if request.method == "POST":
            queue.add(parse_fault(parse_json_object(await request.body())))
        elif request.method == "DELETE":
            queue.clear()
        return JSONResponse({"pending": [fault.to_json() for fault in queue.pending]})

    async def forget_responses(self, request: Request) -> Response:
        return JSONResponse({"forgotten": self.provider.responses.forget_all()})


def create_app(provider: FakeProvider) -> Starlette:
    """The ASGI app serving ``provider``."""
    routes = _Routes(provider)

    async def provider_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProviderError)
        return _error_response(exc, new_id("req_"), request.url.path)

    async def unknown_route(request: Request, exc: Exception) -> Response:
        return _error_response(
            not_found_route(request.method, request.url.path), new_id("req_"), request.url.path
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
            Route("/v1/responses", routes.responses, methods=["POST"]),
            Route(_MESSAGES, routes.messages, methods=["POST"]),
            Route("/_fake/health", routes.health, methods=["GET"]),
            Route("/_fake/billing", routes.billing, methods=["GET"]),
            Route("/_fake/reset", routes.reset, methods=["POST"]),
            Route("/_fake/faults", routes.faults, methods=["GET", "POST", "DELETE"]),
            Route("/_fake/forget-responses", routes.forget_responses, methods=["POST"]),
        ],
        exception_handlers={ProviderError: provider_error, 404: unknown_route, 405: unknown_route},
    )
