"""Prometheus metrics of one app, in its own CollectorRegistry.

Session figures (sessions by state, rounds, delta tokens, tokens saved per
tenant, provider and model) are read from the store's totals at scrape time, so
they are exact and the same whichever replica is scraped (aggregate replicas
with ``max``, not ``sum``). Request latency and the sweeper's counters are this
process's own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmsession.ids import TenantId
from llmsession.states import ALL_STATES
from llmsession.store.models import Totals

if TYPE_CHECKING:
    from llmsession.store.base import SessionStore

__all__ = [
    "METRICS_CONTENT_TYPE",
    "ROUTE_TEMPLATE_KEY",
    "RequestMetricsMiddleware",
    "ServerMetrics",
    "SweepCounts",
]

logger = logging.getLogger("llmsession.server")

#: The Prometheus text format every Prometheus version reads.
METRICS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Scope key where code answering before the router (the fast path) names its route template.
ROUTE_TEMPLATE_KEY = "llmsession.route_template"

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_TOTALS_LABELS = ["tenant", "provider", "model"]


class SweepCounts(Protocol):
    """What the metrics read from a sweeper (see :class:`llmsession.server.sweeper.Sweeper`)."""

    runs: int
    expired: int
    purged: int
    errors: int


class _StoreTotalsCollector:
    """Yields the snapshot of store totals taken just before the scrape renders."""

    def __init__(self) -> None:
        self.snapshot: list[tuple[TenantId, list[Totals]]] = []
        self.store_up = False

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "llmsession_store_up", "1 if the store answered the last scrape, else 0"
        )
        up.add_metric([], 1.0 if self.store_up else 0.0)
        yield up
        sessions = GaugeMetricFamily(
            "llmsession_sessions",
            "Sessions by tenant, provider, model and state (from the store)",
            labels=[*_TOTALS_LABELS, "state"],
        )
        rounds = CounterMetricFamily(
            "llmsession_rounds",
            "Rounds recorded, by tenant, provider and model (from the store)",
            labels=_TOTALS_LABELS,
        )
        delta = CounterMetricFamily(
            "llmsession_delta_tokens",
            "Delta tokens sent in rounds, by tenant, provider and model (from the store)",
            labels=_TOTALS_LABELS,
        )
        saved = GaugeMetricFamily(
            "llmsession_tokens_saved",
            "Tokens saved against resending the initial context, by tenant, provider and model",
            labels=_TOTALS_LABELS,
        )
        for tenant_id, groups in self.snapshot:
            for totals in groups:
                labels = [tenant_id.value, totals.provider_id or "", totals.model or ""]
                for state in ALL_STATES:
                    sessions.add_metric([*labels, state.name], totals.sessions.get(state.name, 0))
                rounds.add_metric(labels, totals.rounds)
                delta.add_metric(labels, totals.delta_tokens)
                saved.add_metric(labels, totals.tokens_saved)
        yield sessions
        yield rounds
        yield delta
        yield saved


class _SweeperCollector:
    def __init__(self) -> None:
        self.sweeper: SweepCounts | None = None

    def collect(self) -> Iterable[Metric]:
        sweeper = self.sweeper
        figures = (
            ("llmsession_sweeper_runs", "Sweeps completed by this process", "runs"),
            ("llmsession_sweeper_expired_sessions", "Sessions this process's sweeper expired",
             "expired"),
            ("llmsession_sweeper_purged_sessions",
             "Abandoned Created sessions this process's sweeper deleted", "purged"),
            ("llmsession_sweeper_errors", "Sweeps that failed in this process", "errors"),
        )  # fmt: skip
        for name, documentation, attribute in figures:
            family = CounterMetricFamily(name, documentation)
            family.add_metric([], getattr(sweeper, attribute) if sweeper is not None else 0)
            yield family


class ServerMetrics:
    """The metrics of one app: a private registry, the latency histogram, the collectors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_duration = Histogram(
            "llmsession_http_request_duration_seconds",
            "HTTP request latency by route template, method and status",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], Histogram] = {}
        self._totals = _StoreTotalsCollector()
        self._sweeper = _SweeperCollector()
        self.registry.register(self._totals)
        self.registry.register(self._sweeper)
        ProcessCollector(registry=self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request of ``route`` (a template, or ``unmatched``) that took
        ``seconds``; a method outside the standard ones is counted as ``OTHER``."""
        if method not in _METHODS:
            method = "OTHER"
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self.request_duration.labels(route, method, str(status))
            self._request_children[key] = child
        child.observe(seconds)

    def watch_sweeper(self, sweeper: SweepCounts | None) -> None:
        """Report this sweeper's counters (None: report zeros)."""
        self._sweeper.sweeper = sweeper

    async def render(self, store: SessionStore | None) -> bytes:
        """The Prometheus text exposition, with store totals read now."""
        snapshot: list[tuple[TenantId, list[Totals]]] = []
        up = False
        if store is not None:
            try:
                for tenant in await store.list_tenants():
                    groups = await store.totals(tenant.tenant_id, ("provider", "model"))
                    snapshot.append((tenant.tenant_id, groups))
                up = True
            except Exception as error:
                # A scrape must still answer (with llmsession_store_up 0) when the store fails.
                logger.error(
                    "metrics: store totals unavailable: %s: %s", type(error).__name__, error
                )
                snapshot = []
        # No await from here on: a concurrent scrape cannot swap the snapshot mid-render.
        self._totals.snapshot = snapshot
        self._totals.store_up = up
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Pure ASGI middleware timing each HTTP request into ``request_duration``.

    Labels use the route template (``/v1/sessions/{session_id}``), never the raw
    path, and unknown methods become ``OTHER``, so label cardinality stays bounded.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            template = scope.get(ROUTE_TEMPLATE_KEY)
            if template is None:
                route = scope.get("route")
                template = (
                    route.path if route is not None and hasattr(route, "path") else "unmatched"
                )
            self._metrics.observe_request(
                str(template), scope["method"], status, time.perf_counter() - start
            )
