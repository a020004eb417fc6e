"""The fake provider's ASGI app: OpenAI's two endpoints, Anthropic's Messages, Gemini's
generation and cache entries, and the ``/_fake`` test routes.

OpenAI's routes need ``Authorization: Bearer <an accepted key>``; ``/v1/messages``
needs ``x-api-key: <an accepted key>`` (or the key as a bearer token, which some
versions of Anthropic's SDK send) and an ``anthropic-version`` header, and
answers errors in Anthropic's shape; Gemini's (``/v1beta/...``) need
``x-goog-api-key: <an accepted key>`` or ``?key=``, and answer errors in Google's.
The ``/_fake`` routes (billing log, faults, reset, Gemini's cache entries) need
none: the fake is a test tool and listens on loopback.
"""

from __future__ import annotations

import asyncio
import json
import time
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
from llmsession.fake_provider.billing import BillingEntry, Endpoint
from llmsession.fake_provider.errors import ProviderError, invalid_request, not_found_route
from llmsession.fake_provider.faults import Fault, fault_error, parse_fault
from llmsession.fake_provider.gemini import (
    GeminiError,
    GenerateRequest,
    cache_entry_json,
    expiry_seconds,
    gemini_answer,
    generate_body,
    generate_frames,
    invalid_argument,
    missing_cache,
    parse_cache_create,
    parse_generate_request,
    prompt_messages,
)
from llmsession.fake_provider.gemini_cache import DEFAULT_TTL_SECONDS, min_cache_tokens
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
from llmsession.fake_provider.prefix_cache import CacheScope
from llmsession.fake_provider.provider import FakeProvider, Served, new_id
from llmsession.fake_provider.request_fields import parse_json_object
from llmsession.fake_provider.response_store import StoredResponse
from llmsession.fake_provider.sse import Frame
from llmsession.fake_provider.tokens import REPLY_PRIMER

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

    # -- Gemini ---------------------------------------------------------------------------

    async def _gemini_begin(self, request: Request) -> tuple[str, dict[str, object]]:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not key:
            raise GeminiError(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to "
                "call this API.",
                "PERMISSION_DENIED",
            )
        fingerprint = self.provider.fingerprint(key.strip())
        if fingerprint is None:
            raise invalid_argument("API key not valid. Please pass a valid API key.")
        try:
            body = parse_json_object(await request.body()) if await request.body() else {}
        except ProviderError:
            raise invalid_argument("Invalid JSON payload received.") from None
        return fingerprint, body

    async def _gemini_fault(
        self, request: Request, endpoint: Endpoint
    ) -> tuple[Fault | None, bool]:
        fault = self.provider.take_fault(endpoint, named_only=endpoint == "cachedContents")
        if fault is not None and fault.mode == "500":
            raise GeminiError(500, "An internal error has occurred. Please retry.", "INTERNAL")
        if fault is not None and fault.mode == "429":
            delay = f"{max(0, round(fault.retry_after_seconds))}s"
            raise GeminiError(
                429,
                "You exceeded your current quota, please check your plan and billing details.",
                "RESOURCE_EXHAUSTED",
                details=[
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}
                ],
            )
        if fault is None or fault.mode != "slow":
            return fault, False
        await asyncio.sleep(fault.delay_seconds)
        return fault, await request.is_disconnected()

    def _gemini_serve(self, key: str, parsed: GenerateRequest, session: str | None) -> Served:
        provider = self.provider
        messages = prompt_messages(parsed.system, parsed.contents)
        own = [token for message in messages for token in message.tokens()]
        last_user = next((m.text for m in reversed(messages) if m.role == "user"), None)
        if parsed.cached_content is not None:
            entry = provider.gemini_caches.get(parsed.cached_content, key)
            if entry is None:
                raise missing_cache(parsed.cached_content)
            if entry.model != parsed.model:
                raise invalid_argument(
                    f"Model models/{parsed.model} does not match the model of the cached "
                    f"content {entry.name} (models/{entry.model})."
                )
            tokens = (*entry.tokens, *own, *REPLY_PRIMER)
            cached = len(entry.tokens)
            last_user = last_user if last_user is not None else entry.last_user_text
        else:
            tokens = (*own, *REPLY_PRIMER)
            cached, _ = provider.cache.serve(CacheScope(key, parsed.model, None), tokens)
            if cached < min_cache_tokens(parsed.model):
                cached = 0
        return Served(
            id=new_id(""),
            created=int(time.time()),
            model=parsed.model,
            key_fingerprint=key,
            input_tokens=len(tokens),
            cached_tokens=cached,
            cache_write_tokens=0,
            answer=gemini_answer(parsed.model, last_user or "", parsed),
            prompt_cache_key=None,
            previous_response_id=None,
            session_id=session,
        )

    async def gemini_generate(self, request: Request) -> Response:
        endpoint: Endpoint = "generateContent"
        model, _, method = str(request.path_params["target"]).rpartition(":")
        if method not in ("generateContent", "streamGenerateContent") or not model:
            raise GeminiError(404, f"Method not found: {method}", "NOT_FOUND")
        stream = method == "streamGenerateContent"
        if stream and request.query_params.get("alt") != "sse":
            raise invalid_argument("The fake provider streams with alt=sse only.")
        key, body = await self._gemini_begin(request)
        parsed = parse_generate_request(body, model)
        fault, client_gone = await self._gemini_fault(request, endpoint)
        served = self._gemini_serve(key, parsed, request.headers.get("llmsession-id"))
        with_usage = fault is None or fault.mode != "no_usage"
        return self._answer(
            served,
            endpoint,
            fault,
            client_gone=client_gone,
            stream=stream,
            usage_sent=True,
            frames=generate_frames(served, with_usage=with_usage) if stream else [],
            body=generate_body(served, with_usage=with_usage),
        )

    async def gemini_create_cache(self, request: Request) -> Response:
        key, body = await self._gemini_begin(request)
        await self._gemini_fault(request, "cachedContents")
        parsed = parse_cache_create(body)
        messages = prompt_messages(parsed.system, parsed.contents)
        tokens = tuple(token for message in messages for token in message.tokens())
        minimum = min_cache_tokens(parsed.model)
        if len(tokens) < minimum:
            raise invalid_argument(
                f"Cached content is too small. total_token_count={len(tokens)}, "
                f"min_total_token_count={minimum}"
            )
        store = self.provider.gemini_caches
        entry = store.add(
            key_fingerprint=key,
            model=parsed.model,
            display_name=parsed.display_name,
            tokens=tokens,
            last_user_text=next((m.text for m in reversed(messages) if m.role == "user"), ""),
            ttl_seconds=DEFAULT_TTL_SECONDS if parsed.ttl_seconds is None else parsed.ttl_seconds,
            created_wall=time.time(),
        )
        # Creating an entry is billed once, as input at the plain rate.
        self.provider.billing.add(
            BillingEntry(
                id=entry.name,
                endpoint="cachedContents",
                model=parsed.model,
                key_fingerprint=key,
                input_tokens=len(tokens),
                cached_tokens=0,
                output_tokens=0,
                reasoning_tokens=0,
                stream=False,
                completed=True,
                usage_reported=True,
                prompt_cache_key=None,
                previous_response_id=None,
                cache_write_tokens=len(tokens),
                session_id=request.headers.get("llmsession-id"),
            )
        )
        return JSONResponse(cache_entry_json(entry, store.now()))

    async def gemini_cache(self, request: Request) -> Response:
        key, body = await self._gemini_begin(request)
        await self._gemini_fault(request, "cachedContents")
        name = "cachedContents/" + str(request.path_params["cache_id"])
        store = self.provider.gemini_caches
        if request.method == "DELETE":
            if not store.delete(name, key):
                raise missing_cache(name)
            return JSONResponse({})
        if request.method == "PATCH":
            ttl = expiry_seconds(body)
            entry = store.set_ttl(name, key, DEFAULT_TTL_SECONDS if ttl is None else ttl)
        else:
            entry = store.get(name, key)
        if entry is None:
            raise missing_cache(name)
        return JSONResponse(cache_entry_json(entry, store.now()))

    # -- the /_fake routes ----------------------------------------------------------------

    async def gemini_entries(self, request: Request) -> Response:
        store = self.provider.gemini_caches
        now = store.now()
        return JSONResponse(
            {
                "entries": [
                    {
                        "name": entry.name,
                        "model": entry.model,
                        "display_name": entry.display_name,
                        "tokens": len(entry.tokens),
                        "expires_in_seconds": round(entry.expires_at - now, 3),
                    }
                    for entry in store.live()
                ]
            }
        )

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
            Route("/v1beta/models/{target:path}", routes.gemini_generate, methods=["POST"]),
            Route("/v1beta/cachedContents", routes.gemini_create_cache, methods=["POST"]),
            Route(
                "/v1beta/cachedContents/{cache_id}",
                routes.gemini_cache,
                methods=["GET", "PATCH", "DELETE"],
            ),
            Route("/_fake/gemini/cached-contents", routes.gemini_entries, methods=["GET"]),
            Route("/_fake/health", routes.health, methods=["GET"]),
            Route("/_fake/billing", routes.billing, methods=["GET"]),
            Route("/_fake/reset", routes.reset, methods=["POST"]),
            Route("/_fake/faults", routes.faults, methods=["GET", "POST", "DELETE"]),
            Route("/_fake/forget-responses", routes.forget_responses, methods=["POST"]),
        ],
        exception_handlers={ProviderError: provider_error, 404: unknown_route, 405: unknown_route},
    )
