"""A fake provider (OpenAI's, Anthropic's and Gemini's wire formats), run as its own
process for tests and demos.

It speaks the real wire formats of Chat Completions, Responses, Anthropic's
Messages and Google's Gemini API (streaming and not), counts tokens
deterministically, applies OpenAI's prefix caching rules, Anthropic's breakpoint
rules and Gemini's cache entries, keeps ``previous_response_id`` state, logs what
it bills, and fails on request. The reference is docs/fake-provider.md.

Modules, one concept each: ``tokens`` (the token rule), ``prefix_cache``,
``anthropic_cache`` and ``gemini_cache`` (each provider's caching), ``answers``
(the fake model), ``response_store``, ``billing``, ``faults``, ``errors``
(OpenAI's error bodies), ``openai_chat``, ``openai_responses``,
``anthropic_messages`` and ``gemini`` (the wire formats), ``provider`` (the state
and the steps of a request), ``app`` (ASGI) and
``runner`` (the command).
"""

import importlib
from typing import TYPE_CHECKING

from llmsession.fake_provider.billing import BillingEntry, key_fingerprint
from llmsession.fake_provider.faults import FAULT_MODES, Fault
from llmsession.fake_provider.provider import FakeProvider

if TYPE_CHECKING:
    from llmsession.fake_provider.app import create_app
    from llmsession.fake_provider.runner import API_KEY_ENV, fake_provider_command, serve
else:
    # The app loads Starlette and the runner click (the server extra): loaded when
    # asked for, so that `python -m llmsession.fake_provider` can say which extra
    # is missing, and the ``llmsession`` command loads no app.
    _LAZY = {
        "create_app": "llmsession.fake_provider.app",
        "API_KEY_ENV": "llmsession.fake_provider.runner",
        "fake_provider_command": "llmsession.fake_provider.runner",
        "serve": "llmsession.fake_provider.runner",
    }

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'llmsession.fake_provider' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


__all__ = [
    "API_KEY_ENV",
    "FAULT_MODES",
    "BillingEntry",
    "FakeProvider",
    "Fault",
    "create_app",
    "fake_provider_command",
    "key_fingerprint",
    "serve",
]
