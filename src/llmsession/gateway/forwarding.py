"""Forwarding: one turn of a conversation, from the client's new messages to the round.

A turn (:meth:`Gateway.handle`):

1. parse the request (the endpoint's wire format) and find the provider and model;
2. a request with ``LLMSession-Id`` continues that session: it must be the
   tenant's and Active, checked before any provider call; one without starts a
   session, whose id is generated now because it goes out with the answer's
   first byte;
3. a request whose ``Idempotency-Key`` was answered before gets that answer
   again, without calling the provider;
4. wait for the session's turn (:meth:`SessionStore.turn_lock`), so concurrent
   requests of one session go in arrival order and each sees the turns before it;
5. send the provider the stored history followed by the new items (or chain to
   its stored response), and pass its answer through: a body, or a stream whose
   events are forwarded as they arrive;
6. record the round from the provider's usage, with the turn, before the last
   event of the answer reaches the client.

A streamed answer is a :class:`Relay`: the client's response reads the provider
through it, each event forwarded as it is read, with no task or queue between
them. A client that goes away mid-stream (its task cancelled, or the relay
closed before the provider's end) hands the rest to a task of the gateway's,
which reads it and records whatever the provider billed; :meth:`Gateway.aclose`
waits for it. So does a turn whose request was cancelled before its answer began
(a stopping server's grace period ran out): a task of the gateway's runs it on
to its round.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from llmsession.errors import (
    ConflictError,
    IdempotencyConflict,
    InvalidInput,
    LLMSessionError,
    NotFoundError,
    StoreError,
    WrongStateError,
)
from llmsession.expiry import renewal_margin_seconds
from llmsession.gateway.config import GatewayConfig, ProviderConfig, ProviderKind
from llmsession.gateway.endpoints import ENDPOINTS, Endpoint, ParsedRequest
from llmsession.gateway.gemini_cache import GeminiCaches
from llmsession.gateway.routing import resolve_model
from llmsession.gateway.session_cache import SessionCache, TurnCache
from llmsession.gateway.transport import (
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    Upstream,
    UpstreamRequest,
    UpstreamResponse,
)
from llmsession.gateway.wire import (
    Answer,
    JSONObject,
    StreamTranslator,
    dump_json,
    load_dumped,
    load_json,
)
from llmsession.ids import SessionId, TenantId
from llmsession.store.base import SessionStore
from llmsession.store.models import (
    HistoryTurn,
    RoundResult,
    StoredSession,
    Turn,
    check_idempotency_key,
)

__all__ = [
    "SESSION_HEADER",
    "AnswerGone",
    "Gateway",
    "HistoryTooLarge",
    "ProviderFailed",
    "Relay",
    "Reply",
    "WrongEndpoint",
]

logger = logging.getLogger("llmsession.gateway")

#: The header that names the session a request continues, and every answer's session.
SESSION_HEADER: Final = "LLMSession-Id"
_REPLAYED_HEADER: Final = "Idempotent-Replayed"
#: The namespace of _start_turn_id's UUIDv5s.
_STARTS: Final = uuid.UUID("5f0c3b8e-2a4d-4c1e-9b7a-6d2e8f1a3c5b")
#: Upstream headers worth passing on: the answer's type, its id at the provider
#: (OpenAI's, Anthropic's), and when to retry (as the SDKs read it). The rest describe
#: the provider's own hop, or the operator's account, which all tenants share: its
#: rate limits are not a tenant's to see.
_PASSED_HEADERS: Final = (
    "content-type",
    "x-request-id",
    "request-id",
    "retry-after",
    "retry-after-ms",
)
#: How a provider's stream broke off: cut, or silent for its ``timeout_seconds``.
_Broken = Literal["cut", "timeout"]
_CUT: Final = "the provider's stream ended before the answer was complete; nothing was added"
_GATEWAY_FAILED: Final = "the gateway failed; the error was logged"


class HistoryTooLarge(InvalidInput):
    """The session's history plus the new items would pass ``history_limit_bytes`` (413);
    for a request that starts a session, its items alone would."""


class WrongEndpoint(ConflictError):
    """A session is continued on another endpoint than it started on (409)."""


class AnswerGone(ConflictError):
    """A retried request whose answer is no longer stored: its session ended (409)."""


class ProviderFailed(ProviderUnavailable):
    """The provider answered with a server error (502)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """What the client gets: a status, headers, and a body or a stream of events."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: Relay | None = field(default=None, repr=False)


@dataclass(slots=True)
class _Turn:
    """One turn in flight: what the commit at its end needs."""

    tenant_id: TenantId
    session_id: SessionId
    endpoint: Endpoint
    request: ParsedRequest
    request_hash: str
    provider: ProviderConfig
    model: str
    idempotency_key: str | None
    #: None when this turn starts the session.
    stored: StoredSession | None
    #: The provider-side state this turn uses (Gemini's cached contents), if its kind has any.
    cache: TurnCache | None = None
    #: The request's new items as stored with the turn (JSON), once measured.
    request_items: bytes | None = None
    #: Renews the session's TTL while the provider answers a long turn.
    kept_alive: _KeptAlive | None = None

    async def stop_keeping_alive(self) -> None:
        """The turn is over with the provider (its round is next, or none is)."""
        if self.kept_alive is not None:
            renewing = self.kept_alive.cancel()
            if renewing is not None:
                # A renewal under way ends first: the round must not race its write.
                await renewing


class Gateway:
    """Carries conversations to providers and records each round from their usage."""

    def __init__(self, config: GatewayConfig, store: SessionStore, upstream: Upstream) -> None:
        self.config = config
        self._store = store
        self._upstream = upstream
        #: Streams being recorded (or read on for a client that left), and turns being
        #: given back.
        self._tasks: set[asyncio.Task[None]] = set()
        # Provider kinds that keep part of a session on the provider's side.
        self._caches: dict[ProviderKind, SessionCache] = {"gemini": GeminiCaches(upstream)}

    async def handle(
        self,
        tenant_id: TenantId,
        endpoint_name: str,
        body: bytes,
        *,
        session_header: str | None,
        idempotency_key: str | None,
        path_model: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Run one turn for ``tenant_id``; errors are LLMSessionError subclasses.

        ``path_model`` is the model the URL names, for wire formats that put it
        there; ``headers`` are the client's, for wire formats that forward some.
        """
        endpoint = ENDPOINTS[endpoint_name]
        request = endpoint.parse(body, path_model=path_model, headers=headers or {})
        key = None if idempotency_key is None else check_idempotency_key(idempotency_key)
        request_hash = _request_hash(endpoint, path_model, body, keyed=key is not None)
        store = self._store
        if session_header is None:
            provider, model = resolve_model(self.config, request.model, kind=endpoint.kind)
            if key is None:
                return await self._turn(
                    _Turn(
                        tenant_id,
                        SessionId.generate(store.clock()),
                        endpoint,
                        request,
                        request_hash,
                        provider,
                        model,
                        None,
                        None,
                    )
                )
            return await self._keyed_start(
                _Turn(
                    tenant_id,
                    SessionId.generate(store.clock()),
                    endpoint,
                    request,
                    request_hash,
                    provider,
                    model,
                    key,
                    None,
                ),
                key,
            )
        else:
            session_id = SessionId.parse(session_header.strip())
            if key is not None:
                found = await store.find_turn(tenant_id, key, session_id)
                if found is not None:
                    return self._replay(found, request_hash)
            return await self._continue(
                tenant_id, session_id, endpoint, request, request_hash=request_hash, key=key
            )

    async def _continue(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        endpoint: Endpoint,
        request: ParsedRequest,
        *,
        request_hash: str,
        key: str | None,
    ) -> Reply:
        """Steps 2 to 6 for a request that continues a session."""
        store = self._store
        stack = AsyncExitStack()
        try:
            # Read under the turn, so every earlier turn of this session is in it;
            # the session and its history in one read (with the lock, where the
            # store can).
            stored, history = await stack.enter_async_context(
                store.turn_history(tenant_id, session_id)
            )
            provider, model = resolve_model(
                self.config, request.model, stored.record, kind=endpoint.kind
            )
            if key is not None:
                found = await store.find_turn(tenant_id, key, session_id)
                if found is not None:
                    await stack.aclose()
                    return self._replay(found, request_hash)
            turn = _Turn(
                tenant_id, session_id, endpoint, request, request_hash, provider, model, key, stored
            )
            reply = await self._forward(turn, history, stack)
        except BaseException:
            await stack.aclose()
            raise
        if reply.stream is not None:
            # The stream's reader took the turn over (the stack is empty now).
            await stack.aclose()
        else:
            # The round is committed: the answer may go while the turn is given back
            # (a round trip to PostgreSQL or Redis). The next turn of the session
            # waits for that still, here and on every other replica, and sees the round.
            self._track(asyncio.create_task(_give_back(stack)))
        return reply

    async def _keyed_start(self, turn: _Turn, key: str) -> Reply:
        """Steps 5 and 6 for a turn that starts its session under an idempotency key.

        Every start under the key takes one turn, here and on every replica, and
        holds it until its round is recorded (a stream's too, when it ends): a
        retry that comes meanwhile waits, then finds the stored answer, instead of
        calling the provider a second time.
        """
        store = self._store
        stack = AsyncExitStack()
        try:
            await stack.enter_async_context(
                store.turn_lock(turn.tenant_id, _start_turn_id(turn.tenant_id, key))
            )
            found = await store.find_turn(turn.tenant_id, key)
            if found is None:
                try:
                    reply = await self._forward(turn, [], stack)
                except ConflictError:
                    # A start under this key stored meanwhile by a process that did
                    # not take its turn (an older llmsession, during an upgrade).
                    found = await store.find_turn(turn.tenant_id, key)
                    if found is None:
                        raise
                else:
                    if reply.stream is None:
                        # Recorded: the answer may go while the turn is given back.
                        self._track(asyncio.create_task(_give_back(stack)))
                    return reply
            await stack.aclose()
            return self._replay(found, turn.request_hash)
        except BaseException:
            await stack.aclose()
            raise

    async def _turn(self, turn: _Turn) -> Reply:
        """Steps 5 and 6 for a turn that starts its session."""
        async with AsyncExitStack() as stack:
            return await self._forward(turn, [], stack)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _forward(
        self, turn: _Turn, history: Sequence[HistoryTurn], stack: AsyncExitStack
    ) -> Reply:
        """Steps 5 and 6: the provider's answer and the round; a streamed answer takes
        over what ``stack`` holds (the session's turn) until it is recorded.

        Once the request goes out the provider may bill it, so a task runs the turn
        to its round: cancelled meanwhile (a stopping server's grace period ran
        out), this leaves the task to record what the provider answers, as a
        stream whose client went away is, and then to give the turn back.
        """
        stack.push_async_callback(turn.stop_keeping_alive)
        owned = stack.pop_all()
        answering = asyncio.create_task(self._answer(turn, history, owned))
        try:
            reply = await asyncio.shield(answering)
        except asyncio.CancelledError:
            self._track(asyncio.create_task(_orphaned(answering, owned)))
            raise
        except BaseException:
            stack.push_async_exit(owned)
            raise
        # The caller gives the turn back once the answer is on its way; a stream's
        # (then owned is empty) once it is recorded.
        stack.push_async_exit(owned)
        return reply

    async def _answer(
        self, turn: _Turn, history: Sequence[HistoryTurn], owned: AsyncExitStack
    ) -> Reply:
        """:meth:`_forward`'s work, in a task of its own."""
        endpoint, request = turn.endpoint, turn.request
        try:
            response = await self._send(turn, history)
            if response.status_code >= 400:
                return await self._upstream_error(turn, response)
            if not request.stream:
                answer_body = await _read(response)
                answer = endpoint.parse_answer(answer_body)
                await self._commit(turn, answer, response, answer_body)
                return Reply(200, self._headers(turn, response), answer_body)
        except Exception:
            # (Not on cancellation: a created entry then ends with its TTL.)
            if turn.cache is not None:
                await turn.cache.abandoned()
            raise
        relay = Relay(
            turn,
            response,
            endpoint.translator(request),
            owned.pop_all(),
            record=self._record_stream,
            track=self._track,
        )
        headers = self._headers(turn, response)
        headers["cache-control"] = "no-cache"
        return Reply(200, headers, stream=relay)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Let streams in flight finish and record their rounds, and turns be given
        back, then close the upstream."""
        while self._tasks:
            # A stream's continuation may start its recording task meanwhile.
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._upstream.aclose()

    async def _send(self, turn: _Turn, history: Sequence[HistoryTurn]) -> UpstreamResponse:
        endpoint, request = turn.endpoint, turn.request
        if history and history[0].endpoint != endpoint.name:
            raise WrongEndpoint(
                f"session {turn.session_id} was started on /v1/{history[0].endpoint}; "
                f"continue it there, or start a new session for /v1/{endpoint.name}"
            )
        items = [item for past in history for item in _items(past)]
        turn.request_items = request_items = dump_json(list(request.items))
        size = sum(past.size for past in history) + len(request_items)
        limit = self.config.history_limit_bytes
        if size > limit:
            if turn.stored is None:
                # A start: its session id was never given out, and a new session
                # would hit the same limit.
                raise HistoryTooLarge(
                    f"this request's conversation is {size} bytes, over this server's limit "
                    f"of {limit} per session (history_limit_bytes); no session was started: "
                    "send less, or ask the operator to raise history_limit_bytes"
                )
            raise HistoryTooLarge(
                f"session {turn.session_id} would hold {size} bytes of conversation, over "
                f"this server's limit of {limit} (history_limit_bytes); start a new session"
            )
        if turn.stored is not None:
            # Every check passed: the provider works on it from here (a cache entry's
            # creation is billed too), and a session is not idle meanwhile. (A
            # request refused before renews nothing.)
            turn.kept_alive = await self._keep_alive(turn, turn.stored)
        last = history[-1].response_id if history else None
        cache = self._caches.get(endpoint.kind)
        if cache is None:
            chained = last if request.may_chain else None
        else:
            turn.cache = await cache.prepare(
                provider=turn.provider,
                model=turn.model,
                session_id=turn.session_id,
                request=request,
                history=items,
                last=last,
                ttl_seconds=None if turn.stored is None else turn.stored.ttl_seconds,
            )
            chained = turn.cache.chain
        response = await self._post(turn, items, chained)
        if chained is not None and response.status_code in (400, 403, 404):
            body = await _read(response)
            if not endpoint.previous_response_missing(response.status_code, body):
                return _ReadResponse(response.status_code, response.headers, body)
            # The provider no longer holds the chain: replay the history instead.
            if turn.cache is not None:
                turn.cache = turn.cache.replayed()
            response = await self._post(turn, items, None)
        return response

    async def _keep_alive(self, turn: _Turn, stored: StoredSession) -> _KeptAlive:
        """Keep the turn's session alive from now; renewed first if that is due already.

        That first renewal is part of the request: if the session ended since the
        turn read it (its deadline passed meanwhile), the request is refused before
        the provider is called, and so billed nothing.
        """
        store = self._store
        # In integer microseconds: every continued turn passes here.
        now = store.clock().epoch_micros
        if _renewal_micros(stored) <= now:
            stored = await store.keep_alive(turn.tenant_id, turn.session_id)
        return _KeptAlive(store, turn.tenant_id, turn.session_id, stored, now)

    async def close_session(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """Close a session (as :meth:`SessionStore.close`), then delete what the provider
        holds for it (Gemini's cached content entry); in turn with the session's turns."""
        store = self._store
        async with store.turn_lock(tenant_id, session_id):
            try:
                stored, history = await store.session_history(tenant_id, session_id)
            except LLMSessionError:
                # Not Active (or not the tenant's): the store's close says so.
                return await store.close(tenant_id, session_id)
            closed = await store.close(tenant_id, session_id)
        provider = self.config.provider(stored.record.provider_id)
        cache = None if provider is None else self._caches.get(provider.kind)
        if provider is not None and cache is not None and history:
            if not provider.api_key:
                # Only a command run without the key (the CLI's close) gets here.
                logger.warning(
                    "session %s is closed, but what provider %s holds for it is left to "
                    "its TTL: %s is not set",
                    session_id,
                    provider.provider_id,
                    provider.api_key_env,
                )
            else:
                await cache.drop(provider, session_id, history[-1].response_id)
        return closed

    async def _post(
        self, turn: _Turn, history: list[JSONObject], previous_response_id: str | None
    ) -> UpstreamResponse:
        body = turn.endpoint.upstream_body(
            turn.request,
            history,
            model=turn.model,
            cache_key=str(turn.session_id),
            previous_response_id=previous_response_id,
            session_ttl_seconds=(
                self._store.default_ttl_seconds if turn.stored is None else turn.stored.ttl_seconds
            ),
        )
        endpoint, request = turn.endpoint, turn.request
        headers = endpoint.upstream_headers(request, turn.provider.api_key.reveal())
        if turn.cache is not None:
            headers = [*headers, *turn.cache.headers]
        return await self._upstream.send(
            UpstreamRequest(
                turn.provider, endpoint.upstream_path(request, turn.model), body, headers
            )
        )

    async def _upstream_error(self, turn: _Turn, response: UpstreamResponse) -> Reply:
        body = await _read(response)
        provider_id = turn.provider.provider_id
        if response.status_code >= 500:
            logger.warning("provider %s answered %s", provider_id, response.status_code)
            raise ProviderFailed(
                provider_id,
                f"provider {provider_id!r} answered {response.status_code}; nothing was "
                "recorded, try again",
            )
        # A client error is the provider's word on the request: pass it on as it is.
        if response.status_code in (401, 403):
            # Not the tenant's key but the operator's: the tenant sees the provider's
            # answer, and only this line tells the operator (never the key itself).
            logger.warning(
                "provider %s answered %s: check the key in %s (and its permissions); "
                "the client got the provider's answer",
                provider_id,
                response.status_code,
                turn.provider.api_key_env,
            )
        if turn.cache is not None:
            await turn.cache.abandoned()
        headers = self._headers(turn, response)
        if turn.stored is None:
            # No session was started: there is no id to give.
            del headers[SESSION_HEADER]
        return Reply(response.status_code, headers, body)

    async def _commit(
        self,
        turn: _Turn,
        answer: Answer,
        response: UpstreamResponse,
        sent: bytes,
        *,
        with_turn: bool = True,
    ) -> RoundResult:
        usage = answer.usage
        # The response the next turn may chain to: none where the provider keeps
        # nothing for this request (Chat, Messages, or Responses with store: false,
        # whose id the provider would answer previous_response_not_found for).
        response_id = answer.response_id if turn.request.may_chain else None
        if turn.cache is not None:
            usage, response_id = turn.cache.usage(usage), turn.cache.stored(usage)
        stored_turn = (
            Turn(
                endpoint=turn.endpoint.name,
                request_hash=turn.request_hash,
                request_items=(turn.request_items or dump_json(list(turn.request.items))).decode(),
                answer_items=dump_json(list(answer.items)).decode(),
                response_id=response_id,
                answer_status=response.status_code,
                answer_type=response.headers.get("content-type", "application/json"),
                answer_body=sent,
            )
            if with_turn
            else None
        )
        # The round moves the deadline itself; a renewal must not write meanwhile.
        await turn.stop_keeping_alive()
        # An answer cut short is counted but not kept under the request's key: a
        # retry with that key is then sent to the provider again, as the client asks,
        # rather than told that a stored answer is gone.
        key = turn.idempotency_key if with_turn else None
        if turn.stored is None:
            result = await self._store.start_with_turn(
                turn.tenant_id,
                turn.session_id,
                provider_id=turn.provider.provider_id,
                model=turn.model,
                turn=stored_turn,
                usage=usage,
                idempotency_key=key,
            )
        else:
            result = await self._store.record_turn(
                turn.tenant_id,
                turn.session_id,
                turn=stored_turn,
                usage=usage,
                idempotency_key=key,
            )
        if turn.cache is not None:
            if with_turn:
                await turn.cache.committed()
            else:
                await turn.cache.abandoned()
        return result

    async def _record_stream(
        self,
        turn: _Turn,
        response: UpstreamResponse,
        translator: StreamTranslator,
        sent: list[bytes],
        *,
        broken: _Broken | None,
    ) -> bytes:
        """Record a stream the provider ended (or that broke off); the bytes that end
        the client's."""
        await response.aclose()
        outcome = translator.close()
        if outcome.completed and broken is None:
            body = b"".join(sent) + outcome.tail
            try:
                await self._commit(turn, outcome.answer, response, body)
            except LLMSessionError as error:
                if turn.cache is not None:
                    await turn.cache.abandoned()
                return turn.endpoint.error_event(_unrecorded(turn, error), "unrecorded")
            return outcome.tail
        # Why the round the provider billed is not counted, if it is not.
        unrecorded: str | None = None
        if outcome.answer.usage is not None:
            # Billed, though the answer is incomplete: count it, add nothing to the history.
            try:
                await self._commit(turn, outcome.answer, response, b"", with_turn=False)
            except LLMSessionError as error:
                # Still a cut (or stalled) stream to the client, which is told the
                # round was not counted either; the driver's words go to the log only.
                if turn.cache is not None:
                    await turn.cache.abandoned()
                unrecorded = _billed_unrecorded(turn, error)
        elif turn.cache is not None:
            await turn.cache.abandoned()
        if outcome.error is not None:
            # The provider's own error event ended the client's stream already.
            return b""
        timed_out = broken == "timeout"
        message = _timed_out(turn.provider) if timed_out else _CUT
        if unrecorded is not None:
            message = f"{message}; {unrecorded}"
        return turn.endpoint.error_event(message, "timeout" if timed_out else "cut")

    def _replay(self, found: RoundResult, request_hash: str) -> Reply:
        stored_turn = found.turn
        session_id = str(found.round.session_id)
        if stored_turn is None:
            raise AnswerGone(
                f"this Idempotency-Key was answered in session {session_id}, which has "
                "ended; its stored answers were deleted with its history"
            )
        if stored_turn.request_hash != request_hash:
            raise IdempotencyConflict(
                "this Idempotency-Key was used for a different request; use a new key for "
                "a new request"
            )
        headers = {
            "content-type": stored_turn.answer_type,
            SESSION_HEADER: session_id,
            _REPLAYED_HEADER: "true",
        }
        return Reply(stored_turn.answer_status, headers, stored_turn.answer_body)

    def _headers(self, turn: _Turn, response: UpstreamResponse) -> dict[str, str]:
        headers = {
            name: value
            for name in _PASSED_HEADERS
            if (value := response.headers.get(name)) is not None
        }
        headers[SESSION_HEADER] = str(turn.session_id)
        return headers


class _KeptAlive:
    """A session kept from expiring while its turn is with the provider: renewed when
    its deadline comes near (:func:`llmsession.expiry.renewal_margin_seconds`), until
    cancelled.

    A turn that ends before that costs a timer and nothing else: its round moves the
    deadline anyway. A renewal is a write of the session in the turn's lock, which
    the turn's round then waits for. One that fails (the store out of reach) is
    tried again after a second, or half the time left if less, until the deadline.
    """

    __slots__ = (
        "_renewing",
        "_session_id",
        "_stopped",
        "_store",
        "_stored",
        "_tenant_id",
        "_timer",
    )

    def __init__(
        self,
        store: SessionStore,
        tenant_id: TenantId,
        session_id: SessionId,
        stored: StoredSession,
        now_micros: int,
    ) -> None:
        self._store = store
        self._tenant_id = tenant_id
        self._session_id = session_id
        self._stored = stored
        self._stopped = False
        self._renewing: asyncio.Task[None] | None = None
        self._timer = self._schedule(now_micros)

    def _schedule(self, now: int, *, retry: bool = False) -> asyncio.TimerHandle | None:
        """The next renewal: when the deadline comes near, or for a ``retry`` after a
        second or half the time left, whichever is sooner; None when too little is
        left (times in microseconds)."""
        deadline = self._stored.deadline
        if deadline is None:
            return None
        left = deadline.epoch_micros - now
        if not retry:
            wait = _renewal_micros(self._stored) - now
        elif left > _LAST_TRY_MICROS:
            # Sooner as the deadline nears, so a store back just before it is used.
            wait = min(1_000_000, left // 2)
        else:
            return None
        return asyncio.get_running_loop().call_later(max(wait, 0) / 1e6, self._renew)

    def _renew(self) -> None:
        self._renewing = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            self._stored = await self._store.keep_alive(self._tenant_id, self._session_id)
        except (NotFoundError, WrongStateError) as error:
            # Ended (expired, or closed by a command that did not wait): the round
            # will be refused as any round on it is.
            logger.warning("session %s ended during its turn: %s", self._session_id, error)
            return
        except Exception as error:
            logger.warning(
                "session %s: its TTL could not be renewed during its turn, trying again: %s",
                self._session_id,
                error,
            )
            if not self._stopped:
                self._timer = self._schedule(self._store.clock().epoch_micros, retry=True)
            return
        if not self._stopped:
            self._timer = self._schedule(self._store.clock().epoch_micros)

    def cancel(self) -> asyncio.Task[None] | None:
        """No more renewals; the one under way, if any, for the caller to wait for."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        return self._renewing


#: A failed renewal is not tried again this near the deadline (microseconds).
_LAST_TRY_MICROS: Final = 20_000
#: A time after every deadline, in microseconds.
_NEVER: Final = 2**63


def _renewal_micros(stored: StoredSession) -> int:
    """When ``stored`` renews its TTL during a turn (:func:`renewal_margin_seconds`), in
    microseconds; never, for a session with no deadline."""
    deadline = stored.deadline
    if deadline is None:
        return _NEVER
    return deadline.epoch_micros - round(renewal_margin_seconds(stored.ttl_seconds) * 1e6)


def _timed_out(provider: ProviderConfig) -> str:
    """What ends the client's stream when the provider went silent mid-way: the gateway
    ended it, not the provider, and the client may want a longer timeout_seconds."""
    return (
        f"the provider sent nothing for {provider.timeout_seconds:g} seconds (its "
        "timeout_seconds), so the gateway ended the stream before the answer was "
        "complete; nothing was added"
    )


def _unrecorded(turn: _Turn, error: LLMSessionError) -> str:
    """What ends the client's stream when its round could not be recorded."""
    if isinstance(error, StoreError):
        # The driver's message may name hosts, users or statements: log it only.
        logger.error("the round of session %s was not recorded: %s", turn.session_id, error)
        return (
            "the session store failed, so this answer was not recorded and the session "
            "has not changed; try again"
        )
    return str(error)


def _billed_unrecorded(turn: _Turn, error: LLMSessionError) -> str:
    """What a broken stream's error event adds when the round the provider billed for
    it could not be recorded."""
    if isinstance(error, StoreError):
        logger.error(
            "the billed round of session %s's broken stream was not recorded: %s",
            turn.session_id,
            error,
        )
        return "the session store failed, so what the provider billed for it was not recorded"
    return f"what the provider billed for it was not recorded: {error}"


class _RecordStream(Protocol):
    async def __call__(
        self,
        turn: _Turn,
        response: UpstreamResponse,
        translator: StreamTranslator,
        sent: list[bytes],
        *,
        broken: _Broken | None,
    ) -> bytes: ...


class Relay:
    """A streamed answer, read from the provider as the client reads it.

    The client's response iterates it: each step reads the provider's next
    chunk and gives the events it completes, which go to the client at once.
    When the provider's stream ends, a task of the gateway's records the round
    (so a client leaving mid-commit cannot cut the commit short), and the last
    event (the translator's tail) is given only once it is recorded; the task
    then gives the session's turn back.

    A client that goes away before the end must not stop the reading: whoever
    iterates the relay calls :meth:`close` however its sending ends (the last
    event sent, a failed send, its task cancelled, even mid-read: the chunk
    iterator survives that, see :meth:`UpstreamResponse.aiter_bytes`), and if
    the provider's stream has not ended then, a task of the gateway's reads the
    rest and records it. Nothing is left to the garbage collector.
    """

    __slots__ = (
        "_chunks",
        "_detached",
        "_last",
        "_over",
        "_record",
        "_response",
        "_sent",
        "_stack",
        "_track",
        "_translator",
        "_turn",
    )

    def __init__(
        self,
        turn: _Turn,
        response: UpstreamResponse,
        translator: StreamTranslator,
        stack: AsyncExitStack,
        *,
        record: _RecordStream,
        track: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._record = record
        self._track = track
        self._turn = turn
        self._response = response
        self._chunks = response.aiter_bytes()
        self._translator = translator
        #: Holds the session's turn until the round is recorded.
        self._stack = stack
        #: What went to the client, stored with the turn for a retry's replay.
        self._sent: list[bytes] = []
        #: The stream's last bytes, once the provider's stream has ended.
        self._last: asyncio.Future[bytes] | None = None
        #: A task reads the rest: the client left.
        self._detached = False
        #: The client had the last bytes.
        self._over = False

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        last = self._last
        if last is None:
            if self._detached:
                raise StopAsyncIteration
            broken: _Broken | None = None
            try:
                async for chunk in self._chunks:
                    events = self._translator.feed(chunk)
                    if events:
                        # The events of one chunk go on together: one write to the client.
                        forward = events[0] if len(events) == 1 else b"".join(events)
                        self._sent.append(forward)
                        return forward
            except ProviderError as error:
                broken = self._broke(error)
            except Exception as error:
                last = self._failed(error)
            if last is None:
                last = self._end(broken)
        if self._over:
            raise StopAsyncIteration
        # (Cancelled here, the client leaves the recording task to finish alone.)
        tail = await last
        self._over = True
        if not tail:
            raise StopAsyncIteration
        return tail

    @property
    def over(self) -> bool:
        """The bytes given last were the stream's last: the next step ends the iteration."""
        return self._over

    def close(self) -> None:
        """The client is done with the stream: if the provider's has not ended, a task
        reads the rest and records it. Synchronous, so a cancelled task can call it."""
        if self._last is None:
            self._detach()

    async def aclose(self) -> None:
        """As :meth:`close`."""
        self.close()

    def _broke(self, error: ProviderError) -> _Broken:
        logger.warning("stream from provider %s broke: %s", self._turn.provider.provider_id, error)
        return "timeout" if isinstance(error, ProviderTimeout) else "cut"

    def _end(self, broken: _Broken | None) -> asyncio.Future[bytes]:
        self._last = last = asyncio.get_running_loop().create_future()
        self._track(asyncio.create_task(self._finish(last, broken=broken)))
        return last

    def _failed(self, error: Exception) -> asyncio.Future[bytes]:
        logger.error("gateway stream failed", exc_info=error)
        self._last = last = asyncio.get_running_loop().create_future()
        last.set_result(self._turn.endpoint.error_event(_GATEWAY_FAILED, "internal"))
        self._track(asyncio.create_task(self._abandon()))
        return last

    def _detach(self) -> None:
        if not self._detached:
            self._detached = True
            self._track(asyncio.create_task(self._rest()))

    async def _rest(self) -> None:
        """Read what the client left unread, then record it."""
        broken: _Broken | None = None
        try:
            async for chunk in self._chunks:
                events = self._translator.feed(chunk)
                if events:
                    self._sent.append(events[0] if len(events) == 1 else b"".join(events))
        except ProviderError as error:
            broken = self._broke(error)
        except Exception as error:
            self._failed(error)
            return
        await self._finish(asyncio.get_running_loop().create_future(), broken=broken)

    async def _finish(self, last: asyncio.Future[bytes], *, broken: _Broken | None) -> None:
        """Record the stream, hand the client its last bytes, give the turn back."""
        turn = self._turn
        try:
            try:
                tail = await self._record(
                    turn, self._response, self._translator, self._sent, broken=broken
                )
            except Exception as error:
                logger.error("gateway stream failed", exc_info=error)
                tail = turn.endpoint.error_event(_GATEWAY_FAILED, "internal")
            if not last.done():
                last.set_result(tail)
        finally:
            if not last.done():
                last.set_result(b"")
            # The stream ends before the turn is given back, as a body's answer does.
            await _give_back(self._stack)

    async def _abandon(self) -> None:
        try:
            await self._response.aclose()
            if self._turn.cache is not None:
                await self._turn.cache.abandoned()
        except Exception as error:
            logger.warning("abandoning a failed stream failed", exc_info=error)
        finally:
            await _give_back(self._stack)


def _items(turn: HistoryTurn) -> list[JSONObject]:
    request: list[JSONObject] = load_dumped(turn.request_items)
    answer: list[JSONObject] = load_dumped(turn.answer_items)
    return request + answer


def _request_hash(endpoint: Endpoint, path_model: str | None, body: bytes, *, keyed: bool) -> str:
    """What a retry under the request's Idempotency-Key must match: its endpoint, the
    model and method its URL names (Gemini's), and its body.

    A keyed request's body counts as the JSON it holds, not its bytes: a client may
    write its retry with other spacing or key order. Only a keyed request's hash
    is ever compared, so an unkeyed one is spared the reading.
    """
    if keyed:
        body = json.dumps(
            load_json(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8", "surrogatepass")
    target = b"" if path_model is None else path_model.encode()
    return hashlib.sha256(endpoint.name.encode() + b"\0" + target + b"\0" + body).hexdigest()


def _start_turn_id(tenant_id: TenantId, idempotency_key: str) -> SessionId:
    """The turn every start of a session under this tenant's idempotency key takes: a
    UUIDv5 of the two, so it is the same on every replica and never a session's id
    (those are UUIDv7)."""
    name = f"{tenant_id.value}\0{idempotency_key}"
    return SessionId(uuid.uuid5(_STARTS, name))


async def _orphaned(answering: asyncio.Task[Reply], owned: AsyncExitStack) -> None:
    """The rest of a turn whose handler was cancelled: the round of what the provider
    answers (a stream's read to its end), then the session's turn given back."""
    try:
        try:
            reply = await answering
        except Exception as error:
            logger.warning("a turn whose client went away failed: %s", error)
            return
        if reply.stream is not None:
            # Nobody reads it: its own task reads the rest, records it and gives
            # the turn back (owned is empty: the stream took what it held).
            reply.stream.close()
    finally:
        await _give_back(owned)


async def _give_back(stack: AsyncExitStack) -> None:
    try:
        await stack.aclose()
    except Exception as error:
        # The answer went already. (A PostgreSQL turn whose unlock failed is given
        # back by closing its connection; a Redis one lapses with its lease.)
        logger.warning("giving back a session's turn failed", exc_info=error)


async def _read(response: UpstreamResponse) -> bytes:
    try:
        return await response.aread()
    finally:
        await response.aclose()


class _ReadResponse:
    """An upstream answer already read, handed on as if it were not."""

    def __init__(self, status_code: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self._body = body

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        yield self._body

    async def aread(self) -> bytes:
        return self._body

    async def aclose(self) -> None:
        return None
