"""GatewayConfig: the providers an operator configures, read from a TOML file.

Providers are the operator's, never a tenant's: the file names each provider's
wire format (``kind``), where it is (``base_url``) and the *name* of the
environment variable that holds its key (``api_key_env``). The key itself is
read from the environment when the file is loaded and kept in a
:class:`SecretKey`, whose ``repr`` and ``str`` never show it, so it cannot leak
into a log line, an error or a metric by accident.

::

    [gateway]
    history_limit_bytes = 8_000_000      # optional, per session

    [providers.openai]
    kind = "openai"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"
    timeout_seconds = 60                 # optional
    models = ["gpt-4o-mini", "gpt-4o"]   # optional allow-list

    [providers.anthropic]
    kind = "anthropic"
    base_url = "https://api.anthropic.com"   # as the official SDK's base_url: no /v1
    api_key_env = "ANTHROPIC_API_KEY"

    [providers.google]
    kind = "gemini"
    base_url = "https://generativelanguage.googleapis.com"   # as the SDK's: no version
    api_key_env = "GEMINI_API_KEY"

    [prices.openai."gpt-4o-mini"]         # optional, per million tokens (llmsession.cost)
    input = 0.15
    cached_input = 0.075
    output = 0.60

``base_url`` is what the provider's official SDK takes as its base URL: the
gateway appends the path its wire format names (``/chat/completions`` and
``/responses`` for ``openai``, ``/v1/messages`` for ``anthropic``,
``/v1beta/models/{model}:generateContent`` and ``/v1beta/cachedContents`` for
``gemini``).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Final, Literal, TypeAlias, cast, get_args
from urllib.parse import urlsplit

from llmsession.cost import (
    DEFAULT_CURRENCY,
    NO_PRICES,
    PriceTable,
    check_currency,
    parse_prices,
)
from llmsession.errors import InvalidInput
from llmsession.ids import check_label

__all__ = [
    "DEFAULT_HISTORY_LIMIT_BYTES",
    "DEFAULT_TIMEOUT_SECONDS",
    "ConfigError",
    "GatewayConfig",
    "ProviderConfig",
    "ProviderKind",
    "SecretKey",
    "load_config",
    "parse_config",
]

ProviderKind: TypeAlias = Literal["openai", "anthropic", "gemini"]
_KINDS: Final[tuple[ProviderKind, ...]] = get_args(ProviderKind)

DEFAULT_TIMEOUT_SECONDS: Final = 60.0
DEFAULT_HISTORY_LIMIT_BYTES: Final = 8 * 1024 * 1024

_PROVIDER_KEYS: Final = frozenset({"kind", "base_url", "api_key_env", "timeout_seconds", "models"})
_GATEWAY_KEYS: Final = frozenset({"history_limit_bytes", "currency"})
_TOP_KEYS: Final = frozenset({"providers", "gateway", "prices"})


class ConfigError(InvalidInput):
    """The gateway's configuration file is missing, unreadable or invalid."""


class SecretKey:
    """An upstream API key: usable where it is sent, invisible everywhere else."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself; call it only where the key goes into an upstream request."""
        return self._value

    def __bool__(self) -> bool:
        """Whether there is a key at all (it is empty only when not required)."""
        return bool(self._value)

    def __repr__(self) -> str:
        return "SecretKey('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One upstream provider, as the operator configured it."""

    provider_id: str
    kind: ProviderKind
    base_url: str
    api_key_env: str
    api_key: SecretKey = field(repr=False)
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    #: The models tenants may use through this provider; None allows any.
    models: tuple[str, ...] | None = None

    def allows(self, model: str) -> bool:
        """Whether tenants may use ``model`` through this provider."""
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Every configured provider, by id, and the gateway's own limits."""

    providers: Mapping[str, ProviderConfig]
    history_limit_bytes: int = DEFAULT_HISTORY_LIMIT_BYTES
    #: Where the configuration was read from, for messages; None when built in code.
    source: str | None = None
    #: Prices per provider and model, for costs (empty: only tokens are shown).
    prices: PriceTable = NO_PRICES

    def provider(self, provider_id: str) -> ProviderConfig | None:
        """The provider with this id, or None."""
        return self.providers.get(provider_id)


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    *,
    require_keys: bool = True,
) -> GatewayConfig:
    """Read and check the TOML file at ``path``; keys come from ``environ`` (os.environ).

    ``require_keys`` False accepts a provider whose key variable is unset (its
    ``api_key`` is then empty): for listing providers, not for serving them.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the gateway config {source}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the gateway config {source} is not UTF-8 text") from None
    return parse_config(text, source=source, environ=environ, require_keys=require_keys)


def parse_config(
    text: str,
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    require_keys: bool = True,
) -> GatewayConfig:
    """Check a TOML document of providers; every error names ``source`` and the key."""
    env = os.environ if environ is None else environ
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source} is not valid TOML: {error}") from None
    _no_unknown_keys(source, "the top level", document, _TOP_KEYS)
    gateway = _table(source, "gateway", document.get("gateway", {}))
    _no_unknown_keys(source, "[gateway]", gateway, _GATEWAY_KEYS)
    limit = gateway.get("history_limit_bytes", DEFAULT_HISTORY_LIMIT_BYTES)
    if type(limit) is not int or limit < 1:
        raise ConfigError(
            f"{source}: [gateway] history_limit_bytes must be a positive integer, got {limit!r}"
        )
    tables = _table(source, "providers", document.get("providers", {}))
    if not tables:
        raise ConfigError(
            f"{source} configures no provider; add a [providers.<provider_id>] table "
            f"with kind, base_url and api_key_env"
        )
    providers = {
        provider_id: _provider(source, provider_id, table, env, require_keys)
        for provider_id, table in tables.items()
    }
    prices = _prices(source, text, gateway.get("currency", DEFAULT_CURRENCY), providers)
    return GatewayConfig(
        providers=providers, history_limit_bytes=limit, source=source, prices=prices
    )


def _prices(
    source: str, text: str, currency: object, providers: Mapping[str, ProviderConfig]
) -> PriceTable:
    # Read again with decimal floats: `input = 0.15` is then exactly 0.15, not the
    # nearest binary float (the document already parsed once, so this cannot fail).
    table = _table(source, "prices", tomllib.loads(text, parse_float=Decimal).get("prices", {}))
    for provider_id in table:
        if provider_id not in providers:
            configured = ", ".join(sorted(providers))
            raise ConfigError(
                f"{source}: [prices.{provider_id}] prices a provider that is not configured; "
                f"configured: {configured}"
            )
    try:
        checked = check_currency(currency)
    except InvalidInput as error:
        raise ConfigError(f"{source}: [gateway] {error}") from None
    try:
        prices = parse_prices(table, checked)
    except InvalidInput as error:
        raise ConfigError(f"{source}: {error}") from None
    for provider_id, model in prices.prices:
        if not providers[provider_id].allows(model):
            raise ConfigError(
                f'{source}: [prices.{provider_id}."{model}"] prices a model that '
                f"[providers.{provider_id}] models does not allow"
            )
    # Gemini creates a cache entry by a request of its own, billed beside the prompt.
    beside = frozenset(pid for pid, provider in providers.items() if provider.kind == "gemini")
    return replace(prices, writes_beside_prompt=beside)


def _provider(
    source: str, provider_id: str, value: object, env: Mapping[str, str], require_keys: bool
) -> ProviderConfig:
    where = f"[providers.{provider_id}]"
    try:
        check_label("provider_id", provider_id)
    except InvalidInput as error:
        raise ConfigError(f"{source}: {where}: {error}") from None
    if "/" in provider_id:
        # The part of a request's model before the first "/" names the provider.
        raise ConfigError(f"{source}: {where}: a provider id must not contain '/'")
    table = _table(source, where, value)
    _no_unknown_keys(source, where, table, _PROVIDER_KEYS)
    for required in ("kind", "base_url", "api_key_env"):
        if required not in table:
            raise ConfigError(f"{source}: {where} needs {required!r}")
    kind = _kind(source, where, table["kind"])
    base_url = table["base_url"]
    if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https"):
        raise ConfigError(
            f"{source}: {where} base_url must be an http:// or https:// URL, got {base_url!r}"
        )
    if urlsplit(base_url).username or urlsplit(base_url).password:
        raise ConfigError(
            f"{source}: {where} base_url must not hold credentials; name the key's "
            "environment variable in api_key_env instead"
        )
    _check_base_path(source, where, kind, base_url)
    key_env = table["api_key_env"]
    if not isinstance(key_env, str) or not key_env:
        raise ConfigError(
            f"{source}: {where} api_key_env must name an environment variable, got {key_env!r}"
        )
    key = env.get(key_env, "")
    if not key and require_keys:
        raise ConfigError(
            f"{source}: {where} reads its key from the environment variable {key_env}, "
            "which is not set (or empty) for this process"
        )
    timeout = _timeout(source, where, table.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS))
    models = table.get("models")
    return ProviderConfig(
        provider_id=provider_id,
        kind=kind,
        base_url=base_url.rstrip("/"),
        api_key_env=key_env,
        api_key=SecretKey(key),
        timeout_seconds=timeout,
        models=None if models is None else _models(source, where, models),
    )


def _kind(source: str, where: str, value: object) -> ProviderKind:
    for kind in _KINDS:
        if value == kind:
            return kind
    allowed = ", ".join(repr(k) for k in _KINDS)
    raise ConfigError(f"{source}: {where} kind must be one of {allowed}, got {value!r}")


# The API versions that llmsession puts in the path itself, for the kinds whose
# base_url is the API's root (as their SDKs take it): a base_url ending in one sends
# every request to /v1/v1/..., which the provider answers 404.
_VERSIONS_ADDED: Final[dict[str, tuple[str, ...]]] = {
    "anthropic": ("/v1",),
    "gemini": ("/v1", "/v1beta", "/v1alpha"),
}
_ROOTS: Final = {
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}


def _check_base_path(source: str, where: str, kind: str, base_url: str) -> None:
    path = urlsplit(base_url).path.rstrip("/")
    for version in _VERSIONS_ADDED.get(kind, ()):
        if path.endswith(version):
            raise ConfigError(
                f"{source}: {where} base_url of a provider of kind {kind!r} is the API's root, as "
                f"its SDK takes it (e.g. {_ROOTS[kind]!r}), without {version!r}: llmsession "
                f"adds the version to each request's path; got {base_url!r}"
            )


def _timeout(source: str, where: str, value: object) -> float:
    # bool is an int subclass, and `timeout_seconds = true` is a mistake, not 1 second.
    if type(value) is int or type(value) is float:
        seconds = float(value)
        if math.isfinite(seconds) and 0 < seconds <= 3600:
            return seconds
    raise ConfigError(
        f"{source}: {where} timeout_seconds must be a number of seconds above 0 and "
        f"at most 3600, got {value!r}"
    )


def _models(source: str, where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"{source}: {where} models must be a non-empty list of model names, got {value!r}"
        )
    models: list[str] = []
    for model in cast(list[object], value):
        try:
            models.append(check_label("model", model))
        except InvalidInput as error:
            raise ConfigError(f"{source}: {where} models: {error}") from None
    return tuple(models)


def _table(source: str, where: str, value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where} must be a table, got {type(value).__name__}")
    return cast(dict[str, object], value)


def _no_unknown_keys(
    source: str, where: str, table: Mapping[str, object], known: frozenset[str]
) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{source}: {where} has unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(known))}"
        )
