"""Gemini's explicit caching for a session: one ``cachedContents`` entry holding its history.

The rule (:func:`plan_cache`, pure):

- A history below the model's minimum for explicit caching
  (:func:`min_cache_tokens`) gets no entry: the history is replayed and
  Gemini's implicit caching serves what it can.
- From the minimum, the turn creates an entry holding the whole history (with
  the request's ``systemInstruction``, ``tools`` and ``toolConfig``), and the
  request references it and carries only the new contents.
- Later turns reference that entry and carry the history it does not hold.
  When that uncached part has grown as large as the entry itself, the turn
  creates a new entry for the whole history and, once the turn is recorded,
  deletes the old one: entries are re-created at doubling sizes, so a long
  session creates a logarithmic number of them.
- A request whose ``systemInstruction``, ``tools`` or ``toolConfig`` differ
  from the entry's cannot use it (Gemini refuses the mix): it is handled as if
  there were no entry.

Each entry's TTL is the session's idle TTL, set when it is created and renewed
(``PATCH ttl``) on every turn that uses it, so it expires when the session does;
closing the session deletes it. Every side request that fails is logged and the
turn goes out as plain replay: a cache never costs a turn. A renewal that failed
without the provider's word on the entry (no answer, a 5xx, a 429) keeps it for
the next turn; one that finds it gone makes the turn one without an entry.

What a creation is billed (its ``usageMetadata.totalTokenCount``, at the plain
input rate) is part of the round that created it: ``input_tokens`` and
``cache_write_tokens`` both include it, and the raw usage gains
``cachedContentCreation`` beside the answer's own ``usageMetadata`` fields. An
answer without usage leaves the round without any (Round.usage_missing): the
creation is then only logged.

The state kept between turns (:class:`CacheState`) is stored as each turn's
``response_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal, cast

from llmsession.gateway.config import ProviderConfig
from llmsession.gateway.endpoints import ParsedRequest
from llmsession.gateway.gemini import (
    API_VERSION,
    CacheRef,
    CreatedCache,
    GeminiRequest,
    cache_create_body,
    cache_ttl_body,
    cached_content_missing,
    fixed_digest,
    parse_cache_created,
)
from llmsession.gateway.session_cache import TurnCache
from llmsession.gateway.transport import ProviderError, Upstream, UpstreamRequest
from llmsession.gateway.wire import JSONObject, dump_json, holds_float, load_event, load_json
from llmsession.ids import SessionId
from llmsession.usage import Usage

__all__ = [
    "FLASH_MIN_CACHE_TOKENS",
    "PRO_MIN_CACHE_TOKENS",
    "CacheState",
    "GeminiCaches",
    "min_cache_tokens",
    "plan_cache",
]

logger = logging.getLogger("llmsession.gateway.gemini")

#: Gemini's minimum for an explicit cache entry: Flash models (2.5, 3)...
FLASH_MIN_CACHE_TOKENS: Final = 1024
#: ... and Pro models (2.5, 3).
PRO_MIN_CACHE_TOKENS: Final = 4096

_SESSION_HEADER: Final = "LLMSession-Id"

Plan = Literal["none", "reuse", "create"]
#: What a renewal found: the entry renewed; gone at the provider; refused for another
#: reason the provider gave (a 4xx); or nothing known (a 5xx, a 429, no answer: the
#: entry is most likely still there, until its TTL).
Renewal = Literal["renewed", "gone", "refused", "failed"]


def min_cache_tokens(model: str) -> int:
    """The fewest tokens Gemini caches explicitly for ``model``."""
    return PRO_MIN_CACHE_TOKENS if "pro" in model.lower() else FLASH_MIN_CACHE_TOKENS


@dataclass(frozen=True, slots=True)
class CacheState:
    """A session's explicit cache after a turn, as stored in the turn's ``response_id``."""

    #: The entry's name (``cachedContents/...``), or None when the session has none.
    name: str | None
    #: How many history items the entry holds (the first ones).
    items: int
    #: The tokens the entry holds.
    cached_tokens: int
    #: ``fixed_digest`` of the entry's system instruction and tools ("" when the
    #: session has no entry and is below the minimum: no turn compares it then).
    fixed: str
    #: The history's size in tokens after the turn (its prompt plus its answer).
    history_tokens: int

    def encode(self) -> str:
        return dump_json(
            {
                "gemini_cache": self.name,
                "items": self.items,
                "cached_tokens": self.cached_tokens,
                "fixed": self.fixed,
                "history_tokens": self.history_tokens,
            }
        ).decode()

    @classmethod
    def decode(cls, text: str | None) -> CacheState | None:
        """The state ``encode`` wrote; None for anything else (it is then ignored)."""
        if not text:
            return None
        try:
            value: object = load_event(text)
            if holds_float(value):
                value = load_json(text)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        fields = cast(JSONObject, value)
        name = fields.get("gemini_cache")
        counts = [fields.get(key) for key in ("items", "cached_tokens", "history_tokens")]
        if not (name is None or isinstance(name, str)) or not isinstance(fields.get("fixed"), str):
            return None
        if not all(type(count) is int and count >= 0 for count in counts):
            return None
        items, cached, history = cast(list[int], counts)
        return cls(name, items, cached, fields["fixed"], history)


def plan_cache(state: CacheState | None, *, fixed: str, history_items: int, model: str) -> Plan:
    """What a turn does with the session's entry (the rule in the module's docstring)."""
    if state is None or history_items == 0:
        return "none"
    usable = state.name is not None and state.fixed == fixed and state.items <= history_items
    if usable:
        uncached = state.history_tokens - state.cached_tokens
        return "create" if uncached >= state.cached_tokens else "reuse"
    return "create" if state.history_tokens >= min_cache_tokens(model) else "none"


class GeminiCaches:
    """The :class:`SessionCache` of Gemini providers: side requests through ``upstream``."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    async def prepare(
        self,
        *,
        provider: ProviderConfig,
        model: str,
        session_id: SessionId,
        request: ParsedRequest,
        history: Sequence[JSONObject],
        last: str | None,
        ttl_seconds: int | None,
    ) -> TurnCache:
        assert isinstance(request.wire, GeminiRequest)
        headers = ((_SESSION_HEADER, str(session_id)),)
        state = CacheState.decode(last)
        # The digest is compared with an entry's, or given to the entry the turn may
        # create: a session without one, below the minimum, needs none.
        fixed = (
            fixed_digest(request.wire.body)
            if state is not None
            and (state.name is not None or state.history_tokens >= min_cache_tokens(model))
            else ""
        )
        plan = plan_cache(state, fixed=fixed, history_items=len(history), model=model)
        turn = _GeminiTurn(self, provider, headers, str(session_id), previous=state, fixed=fixed)
        if plan == "none" or ttl_seconds is None or state is None:
            return turn
        if plan == "reuse":
            assert state.name is not None
            renewal = await self._renew(provider, state.name, ttl_seconds, str(session_id))
            if renewal == "renewed":
                return replace(turn, using=state)
            if renewal == "failed":
                # Most likely still there (its TTL is the session's, and the session is
                # live): kept, so the next turn renews and reads it instead of paying
                # for a new one. Should it be gone after all, that renewal says so.
                return replace(turn, kept=state)
            if renewal == "refused":
                # A refusal would recur every turn: the entry is given up (and deleted).
                return turn
            # Gone (expired, deleted): the turn is one with no entry, which may create one.
            state = replace(state, name=None, items=0, cached_tokens=0)
            turn = replace(turn, previous=state)
            plan = plan_cache(state, fixed=fixed, history_items=len(history), model=model)
            if plan == "none":
                return turn
        created = await self._create(
            provider,
            model=model,
            session_id=session_id,
            request=request.wire,
            history=history,
            ttl_seconds=ttl_seconds,
        )
        if created is None:
            return turn
        using = CacheState(created.name, len(history), created.tokens, fixed, 0)
        return replace(turn, using=using, created=created)

    async def drop(self, provider: ProviderConfig, session_id: SessionId, last: str | None) -> None:
        state = CacheState.decode(last)
        if state is not None and state.name is not None:
            await self.delete(provider, state.name, str(session_id))

    async def _side(
        self, provider: ProviderConfig, method: str, path: str, body: bytes, session_id: str
    ) -> bytes:
        """One side request; ProviderError also for an answer that is not a success
        (:class:`_SideRefused`, with the answer)."""
        headers = [("x-goog-api-key", provider.api_key.reveal()), (_SESSION_HEADER, session_id)]
        response = await self._upstream.send(
            UpstreamRequest(provider, path, body, headers, method=method)
        )
        try:
            answer = await response.aread()
        finally:
            await response.aclose()
        if response.status_code >= 300:
            raise _SideRefused(
                provider.provider_id,
                f"{method} {path} answered {response.status_code}: {answer[:300]!r}",
                status=response.status_code,
                body=answer,
            )
        return answer

    async def _create(
        self,
        provider: ProviderConfig,
        *,
        model: str,
        session_id: SessionId,
        request: GeminiRequest,
        history: Sequence[JSONObject],
        ttl_seconds: int,
    ) -> CreatedCache | None:
        body = cache_create_body(
            request,
            history,
            model=model,
            ttl_seconds=ttl_seconds,
            display_name=f"llmsession {session_id}",
        )
        try:
            answer = await self._side(
                provider, "POST", f"/{API_VERSION}/cachedContents", body, str(session_id)
            )
        except ProviderError as error:
            logger.warning("creating a cached content entry failed, replaying: %s", error)
            return None
        created = parse_cache_created(answer)
        if created is None:
            logger.warning(
                "provider %s created a cached content entry without a name or a "
                "token count; replaying",
                provider.provider_id,
            )
        return created

    async def _renew(
        self, provider: ProviderConfig, name: str, ttl_seconds: int, session_id: str
    ) -> Renewal:
        try:
            await self._side(
                provider,
                "PATCH",
                f"/{API_VERSION}/{name}",
                cache_ttl_body(ttl_seconds),
                session_id,
            )
        except _SideRefused as error:
            # A 404 of the entry's own URL says it is gone, whatever its message.
            if error.status == 404 or cached_content_missing(error.status, error.body):
                logger.info("cached content %s is gone at the provider: %s", name, error)
                return "gone"
            logger.warning("renewing cached content %s failed, replaying: %s", name, error)
            return "refused" if 400 <= error.status < 500 and error.status != 429 else "failed"
        except ProviderError as error:
            logger.warning("renewing cached content %s failed, replaying: %s", name, error)
            return "failed"
        return "renewed"

    async def delete(self, provider: ProviderConfig, name: str, session_id: str) -> None:
        """Delete one entry; a failure is logged (the entry then ends with its TTL)."""
        try:
            await self._side(provider, "DELETE", f"/{API_VERSION}/{name}", b"", session_id)
        except ProviderError as error:
            logger.warning("deleting cached content %s failed: %s", name, error)


class _SideRefused(ProviderError):
    """A side request the provider answered with an error: its status and body."""

    def __init__(self, provider_id: str, message: str, *, status: int, body: bytes) -> None:
        super().__init__(provider_id, message)
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class _GeminiTurn:
    """One turn's use of the session's entry."""

    caches: GeminiCaches
    provider: ProviderConfig
    headers: Sequence[tuple[str, str]]
    session_id: str
    #: The state the previous turn stored.
    previous: CacheState | None
    fixed: str
    #: The entry this turn's request references, if any.
    using: CacheState | None = None
    #: The entry this turn created, if it created one.
    created: CreatedCache | None = None
    #: The session's entry when this turn could not renew it, so went out without it:
    #: not referenced, but still the session's for the next turn.
    kept: CacheState | None = None

    @property
    def chain(self) -> str | None:
        return (
            None
            if self.using is None or self.using.name is None
            else (CacheRef(self.using.name, self.using.items).encode())
        )

    def replayed(self) -> TurnCache:
        return replace(self, using=None)

    def usage(self, usage: Usage | None) -> Usage | None:
        created = self.created
        if usage is None and created is not None:
            # The round is recorded without usage: counts of the creation alone would
            # pass for the round's whole input. The operator still learns what it cost.
            logger.warning(
                "session %s: cached content %s was created (%d tokens billed as input) "
                "for a turn whose answer had no usage; its round records none",
                self.session_id,
                created.name,
                created.tokens,
            )
        if usage is None or created is None:
            return usage
        return Usage(
            input_tokens=usage.input_tokens + created.tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens + created.tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            raw={
                **usage.raw,
                "cachedContentCreation": {
                    "name": created.name,
                    "usageMetadata": created.usage_metadata,
                },
            },
        )

    def stored(self, usage: Usage | None) -> str | None:
        grown = _history_tokens(usage)
        if self.using is not None:
            base = self.using
        elif self.kept is not None:
            base = self.kept
        elif self.previous is not None:
            # No entry in this turn (or its entry was gone): none is kept.
            base = CacheState(None, 0, 0, self.fixed, self.previous.history_tokens)
        else:
            base = CacheState(None, 0, 0, self.fixed, 0)
        return replace(
            base, history_tokens=base.history_tokens if grown is None else grown
        ).encode()

    async def committed(self) -> None:
        previous = self.previous
        if previous is None or previous.name is None:
            return
        held = self.using or self.kept
        if held is not None and held.name == previous.name:
            return
        # The previous entry is superseded (or was not usable): nobody references it now.
        await self.caches.delete(self.provider, previous.name, self.session_id)

    async def abandoned(self) -> None:
        if self.created is not None:
            await self.caches.delete(self.provider, self.created.name, self.session_id)


def _history_tokens(usage: Usage | None) -> int | None:
    """The conversation's size after a turn: its prompt and its answer (thoughts are not
    sent back), as the answer's own ``usageMetadata`` counts them."""
    if usage is None:
        return None
    prompt = usage.raw.get("promptTokenCount")
    candidates = usage.raw.get("candidatesTokenCount", 0)
    if type(prompt) is not int or type(candidates) is not int:
        return None
    return prompt + candidates
