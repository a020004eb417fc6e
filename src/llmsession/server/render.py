"""JSON renderings of store values, in the shapes :mod:`.schemas` documents."""

from __future__ import annotations

from typing import Any

from llmsession.keys import IssuedKey
from llmsession.store.models import (
    ApiKeyInfo,
    Round,
    StoredSession,
    Tenant,
    TimeBucket,
    TimeBucketSize,
    Totals,
    UsageTotals,
)
from llmsession.store.rollup import BUCKET_MICROS
from llmsession.timestamps import Timestamp

__all__ = [
    "render_api_key",
    "render_issued_key",
    "render_round",
    "render_session",
    "render_tenant",
    "render_time_bucket",
    "render_timeseries",
    "render_totals",
    "render_usage_totals",
]


def _iso(value: Timestamp | None) -> str | None:
    return None if value is None else value.isoformat()


def render_session(stored: StoredSession) -> dict[str, Any]:
    """The core record's dict plus tokens_saved, ttl_seconds and expires_at."""
    record = stored.record
    body = record.to_dict()
    body["tokens_saved"] = record.tokens_saved
    body["ttl_seconds"] = stored.ttl_seconds
    body["expires_at"] = _iso(stored.deadline)
    body["usage"] = render_usage_totals(stored.usage)
    return body


def render_round(round_: Round) -> dict[str, Any]:
    """A round without its session id (it is in the URL)."""
    return {
        "seq": round_.seq,
        "delta_tokens": round_.delta_tokens,
        "recorded_at": round_.recorded_at.isoformat(),
        "idempotency_key": round_.idempotency_key,
        "gateway": round_.gateway,
        "usage": None if round_.usage is None else round_.usage.to_dict(),
        "usage_missing": round_.usage_missing,
        "cost": None if round_.cost is None else round_.cost.to_dict(),
    }


def render_totals(totals: Totals) -> dict[str, Any]:
    """One stats group."""
    return {
        "provider_id": totals.provider_id,
        "model": totals.model,
        "sessions": dict(totals.sessions),
        "rounds": totals.rounds,
        "delta_tokens": totals.delta_tokens,
        "tokens_saved": totals.tokens_saved,
        "usage": render_usage_totals(totals.usage),
        "cost": None if totals.cost is None else totals.cost.to_dict(),
    }


def render_timeseries(
    bucket: TimeBucketSize, start: Timestamp, end: Timestamp, buckets: list[TimeBucket]
) -> dict[str, Any]:
    """A time series as asked (``start`` to ``end``), its start rounded down to its bucket."""
    size = BUCKET_MICROS[bucket]
    return {
        "bucket": bucket,
        "start": Timestamp(start.epoch_micros - start.epoch_micros % size).isoformat(),
        "end": end.isoformat(),
        "buckets": [render_time_bucket(b) for b in buckets],
    }


def render_time_bucket(bucket: TimeBucket) -> dict[str, Any]:
    """One bucket of a time series."""
    return {
        "start": bucket.start.isoformat(),
        "provider_id": bucket.provider_id,
        "model": bucket.model,
        "rounds": bucket.rounds,
        "delta_tokens": bucket.delta_tokens,
        "tokens_saved": bucket.tokens_saved,
        "usage": render_usage_totals(bucket.usage),
        "sessions_started": bucket.sessions_started,
    }


def render_usage_totals(usage: UsageTotals) -> dict[str, int]:
    """Sums of the provider-reported usage of gateway rounds."""
    return {
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "rounds_without_usage": usage.rounds_without_usage,
    }


def render_tenant(tenant: Tenant) -> dict[str, Any]:
    """A tenant."""
    return {"tenant_id": tenant.tenant_id.value, "created_at": tenant.created_at.isoformat()}


def render_api_key(info: ApiKeyInfo) -> dict[str, Any]:
    """A key's metadata; never its hash."""
    return {
        "key_id": info.key_id,
        "tenant_id": info.tenant_id.value,
        "created_at": info.created_at.isoformat(),
        "revoked_at": _iso(info.revoked_at),
    }


def render_issued_key(issued: IssuedKey) -> dict[str, Any]:
    """A new key with the key itself, shown this once."""
    return {
        "key_id": issued.info.key_id,
        "tenant_id": issued.info.tenant_id.value,
        "created_at": issued.info.created_at.isoformat(),
        "api_key": issued.api_key,
    }
