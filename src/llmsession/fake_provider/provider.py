"""The state of one fake provider: accepted keys, prefix cache, stored responses,
billing log and pending faults, and the steps every provider request goes through.

No HTTP here: the app parses a request with its wire format's module, then calls
these steps in order (``authenticate``, ``take_fault``, ``serve``, ``bill``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmsession.fake_provider.answers import Answer, plan_answer
from llmsession.fake_provider.anthropic_cache import AnthropicCache, Breakpoint
from llmsession.fake_provider.billing import BillingEntry, BillingLog, Endpoint, key_fingerprint
from llmsession.fake_provider.errors import ProviderError, missing_api_key, wrong_api_key
from llmsession.fake_provider.faults import Fault, FaultQueue
from llmsession.fake_provider.gemini_cache import GeminiCacheStore
from llmsession.fake_provider.prefix_cache import CacheScope, PrefixCache
from llmsession.fake_provider.response_store import ResponseStore
from llmsession.fake_provider.tokens import Message, prompt_tokens

__all__ = ["FakeProvider", "Served", "new_id"]


def new_id(prefix: str) -> str:
    """A fresh id shaped as OpenAI's: ``chatcmpl-...``, ``resp_...``, ``msg_...``."""
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Served:
    """One processed request: its id, when, what it cost on input, and the answer."""

    id: str
    created: int
    model: str
    key_fingerprint: str
    input_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    answer: Answer
    prompt_cache_key: str | None
    previous_response_id: str | None
    #: Of ``cache_write_tokens``, those written with Anthropic's 1 hour TTL.
    cache_write_1h_tokens: int = 0
    #: The ``LLMSession-Id`` header of the request, logged with its billing entry.
    session_id: str | None = None


class FakeProvider:
    """One fake provider's state; every request of the app goes through one instance."""

    def __init__(
        self,
        api_keys: Iterable[str],
        *,
        billing_log: Path | None = None,
        cache_ttl_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = {key: key_fingerprint(key) for key in api_keys}
        if not self._keys or any(not key for key in self._keys):
            raise ValueError("the fake provider needs at least one non-empty API key")
        self.cache = PrefixCache(ttl_seconds=cache_ttl_seconds, clock=clock)
        self.anthropic_cache = AnthropicCache(clock=clock)
        self.gemini_caches = GeminiCacheStore(clock)
        self.responses = ResponseStore()
        self.billing = BillingLog(billing_log)
        self.faults = FaultQueue()

    def authenticate(self, authorization: str | None) -> str:
        """The fingerprint of the request's key; a 401 ProviderError for none or a wrong one."""
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise missing_api_key()
        fingerprint = self._keys.get(key.strip())
        if fingerprint is None:
            raise wrong_api_key()
        return fingerprint

    def authenticate_api_key(self, api_key: str | None) -> str:
        """The fingerprint of an ``x-api-key`` (Anthropic's); a 401 for none or a wrong one."""
        if not api_key or not api_key.strip():
            raise ProviderError(401, "x-api-key header is required", "authentication_error")
        fingerprint = self._keys.get(api_key.strip())
        if fingerprint is None:
            raise ProviderError(401, "invalid x-api-key", "authentication_error")
        return fingerprint

    def fingerprint(self, key: str) -> str | None:
        """The fingerprint of an accepted key, or None."""
        return self._keys.get(key)

    def take_fault(self, endpoint: Endpoint, *, named_only: bool = False) -> Fault | None:
        """The fault this request suffers, if any; ``forget_responses`` takes effect here."""
        fault = self.faults.take(endpoint, named_only=named_only)
        if fault is not None and fault.mode == "forget_responses":
            self.responses.forget_all()
        return fault

    def serve(
        self,
        *,
        id: str,
        key_fingerprint: str,
        model: str,
        prompt: Sequence[Message],
        limit: int | None,
        prompt_cache_key: str | None,
        previous_response_id: str | None = None,
    ) -> Served:
        """Process a prompt: read and write the prefix cache, and plan the answer."""
        tokens = prompt_tokens(prompt)
        scope = CacheScope(key_fingerprint, model, prompt_cache_key)
        cached, written = self.cache.serve(scope, tokens)
        last_user = next((m.text for m in reversed(prompt) if m.role == "user"), "")
        return Served(
            id=id,
            created=int(time.time()),
            model=model,
            key_fingerprint=key_fingerprint,
            input_tokens=len(tokens),
            cached_tokens=cached,
            cache_write_tokens=written,
            answer=plan_answer(model, last_user, limit),
            prompt_cache_key=prompt_cache_key,
            previous_response_id=previous_response_id,
        )

    def serve_blocks(
        self,
        *,
        id: str,
        key_fingerprint: str,
        model: str,
        blocks: Sequence[Sequence[str]],
        breakpoints: Sequence[Breakpoint],
        prompt_tokens: int,
        last_user_text: str,
        limit: int | None,
        user_id: str | None,
    ) -> Served:
        """Process an Anthropic prompt: its breakpoints read and write the cache."""
        use = self.anthropic_cache.serve(key_fingerprint, model, blocks, breakpoints)
        return Served(
            id=id,
            created=int(time.time()),
            model=model,
            key_fingerprint=key_fingerprint,
            input_tokens=prompt_tokens,
            cached_tokens=use.read,
            cache_write_tokens=use.written,
            answer=plan_answer(model, last_user_text, limit),
            prompt_cache_key=user_id,
            previous_response_id=None,
            cache_write_1h_tokens=use.written_1h,
        )

    def bill(
        self,
        served: Served,
        *,
        endpoint: Endpoint,
        stream: bool,
        output_tokens: int,
        completed: bool,
        usage_reported: bool,
    ) -> BillingEntry:
        """Log what ``served`` is billed; ``output_tokens``: what was produced (reasoning first)."""
        entry = BillingEntry(
            id=served.id,
            endpoint=endpoint,
            model=served.model,
            key_fingerprint=served.key_fingerprint,
            input_tokens=served.input_tokens,
            cached_tokens=served.cached_tokens,
            output_tokens=output_tokens,
            reasoning_tokens=min(output_tokens, served.answer.reasoning_tokens),
            stream=stream,
            completed=completed,
            usage_reported=usage_reported,
            prompt_cache_key=served.prompt_cache_key,
            previous_response_id=served.previous_response_id,
            # OpenAI's automatic caching bills no writes; Anthropic's bills them above input.
            cache_write_tokens=served.cache_write_tokens if endpoint == "messages" else 0,
            cache_write_1h_tokens=served.cache_write_1h_tokens,
            session_id=served.session_id,
        )
        self.billing.add(entry)
        return entry

    def reset(self) -> None:
        """Back to the state at start: no cache, no stored responses, no billing, no faults."""
        self.cache.clear()
        self.anthropic_cache.clear()
        self.gemini_caches.clear()
        self.responses.forget_all()
        self.billing.clear()
        self.faults.clear()
