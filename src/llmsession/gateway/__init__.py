"""The gateway: provider wire formats, forwarding and accounting (see docs/gateway.md)."""

from llmsession.gateway.config import (
    DEFAULT_HISTORY_LIMIT_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    ConfigError,
    GatewayConfig,
    ProviderConfig,
    ProviderKind,
    SecretKey,
    load_config,
    parse_config,
)
from llmsession.usage import Usage

__all__ = [
    "DEFAULT_HISTORY_LIMIT_BYTES",
    "DEFAULT_TIMEOUT_SECONDS",
    "ConfigError",
    "GatewayConfig",
    "ProviderConfig",
    "ProviderKind",
    "SecretKey",
    "Usage",
    "load_config",
    "parse_config",
]
