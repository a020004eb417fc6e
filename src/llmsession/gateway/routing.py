"""Which provider and model a gateway request names.

``model`` is ``<provider_id>/<model>`` when the part before the first ``/``
names a configured provider (so ``fake/meta-llama/x`` is model ``meta-llama/x``
of provider ``fake``); otherwise the whole string is a bare model name,
accepted when exactly one provider of the endpoint's kind is configured, or
when the request continues a session (whose provider and model it must then
match). A provider is reached only through the endpoints of its own kind.
"""

from __future__ import annotations

from llmsession.errors import ConflictError, InvalidInput
from llmsession.gateway.config import GatewayConfig, ProviderConfig, ProviderKind
from llmsession.ids import check_label
from llmsession.record import SessionRecord

__all__ = ["ModelMismatch", "resolve_model"]


class ModelMismatch(ConflictError):
    """A request continues a session with another provider or model than it was started with."""


def resolve_model(
    config: GatewayConfig,
    requested: str,
    session: SessionRecord | None = None,
    *,
    kind: ProviderKind = "openai",
) -> tuple[ProviderConfig, str]:
    """The provider and the provider's model name for ``requested``, on an endpoint
    that speaks ``kind``'s wire format.

    InvalidInput for a model no configured provider of ``kind`` offers, or that a
    session could not record (see :func:`llmsession.ids.check_label`);
    ModelMismatch when ``session`` was started with another provider or model.
    """
    providers = {
        provider_id: provider
        for provider_id, provider in config.providers.items()
        if provider.kind == kind
    }
    prefix, slash, rest = requested.partition("/")
    named = providers.get(prefix) if slash else None
    if slash and named is None and (other := config.provider(prefix)) is not None:
        raise InvalidInput(
            f"provider {prefix!r} speaks the {other.kind} wire format, not {kind}'s; "
            "send this request to its own endpoint (see docs/gateway.md)"
        )
    if named is not None:
        provider, model = named, rest
    elif session is not None:
        configured = providers.get(session.provider_id)
        if configured is None:
            raise ModelMismatch(
                f"session {session.session_id} uses provider {session.provider_id!r}, which "
                f"this server does not configure for the {kind} wire format (any more)"
            )
        provider, model = configured, requested
    elif len(providers) == 1:
        (provider,) = providers.values()
        model = requested
    elif not providers:
        raise InvalidInput(
            f"no provider of kind {kind!r} is configured on this server, so this endpoint "
            "has nowhere to send requests"
        )
    else:
        names = ", ".join(sorted(providers))
        raise InvalidInput(
            f"model {requested!r} names no configured {kind} provider; write it as "
            f"'<provider_id>/<model>' with one of: {names}"
        )
    if not model:
        raise InvalidInput(f"model {requested!r} names a provider but no model after the '/'")
    # The session records the model: one it would refuse is refused now, before the
    # provider is called (and bills a turn that no round could then hold).
    check_label("model", model)
    if session is not None and (session.provider_id, session.model) != (
        provider.provider_id,
        model,
    ):
        raise ModelMismatch(
            f"session {session.session_id} talks to {session.provider_id}/{session.model}; "
            f"this request asks for {provider.provider_id}/{model}. Start a new session "
            "(no LLMSession-Id header) to change provider or model"
        )
    if not provider.allows(model):
        allowed = ", ".join(provider.models or ())
        raise InvalidInput(
            f"provider {provider.provider_id!r} does not offer model {model!r}; allowed: {allowed}"
        )
    return provider, model
