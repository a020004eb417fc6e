"""AppContext: what one app's routes share: settings, the open store, metrics, the key cache."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmsession.cost import NO_PRICES, PriceTable
from llmsession.errors import StoreError
from llmsession.gateway.forwarding import Gateway
from llmsession.ids import SessionId, TenantId
from llmsession.server.key_cache import KeyCache
from llmsession.server.metrics import ServerMetrics
from llmsession.server.settings import ServerSettings
from llmsession.store.base import SessionStore
from llmsession.store.models import StoredSession

__all__ = ["AppContext"]


@dataclass
class AppContext:
    """Per-app state. The lifespan sets ``open_store`` on startup and clears it on shutdown.

    ``keys`` authenticates API keys against the store, with a short cache.

    Routes are closures over one context, so two apps in one process (tests)
    never share a store or a metrics registry.
    """

    settings: ServerSettings
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    open_store: SessionStore | None = None
    #: The gateway, when providers are configured and the app is serving.
    gateway: Gateway | None = None
    #: The configured prices, for the costs of rounds and stats (none: tokens only).
    prices: PriceTable = NO_PRICES
    keys: KeyCache = field(init=False)

    def __post_init__(self) -> None:
        self.keys = KeyCache(lambda: self.store, self.settings.auth_cache_seconds)

    @property
    def store(self) -> SessionStore:
        """The open store; StoreError (503) before startup or after shutdown."""
        store = self.open_store
        if store is None:
            raise StoreError("the server is not serving: its store is not open")
        return store

    async def close_session(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """Close a session (the store's close), through the gateway when there is one,
        which also deletes what a provider holds for it (a Gemini cache entry)."""
        gateway = self.gateway
        if gateway is None:
            return await self.store.close_in_turn(tenant_id, session_id)
        return await gateway.close_session(tenant_id, session_id)
