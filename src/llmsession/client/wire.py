"""Reading the HTTP API's JSON objects into the core's and the store's types.

Every reader takes the decoded JSON as ``object`` and checks it; anything that
does not fit raises ``ValueError`` (the core's InvalidInput is one) naming what
was wrong, which the caller reports as an answer outside the API contract. The
validity rules themselves are the core's: a session is rebuilt with
:meth:`SessionRecord.from_dict`, counts with ``check_token_count``, times with
``Timestamp.parse``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Final, TypeVar, cast

from llmsession.client.views import (
    ApiKeyView,
    IssuedApiKey,
    NewTenant,
    RecordedRound,
    SessionView,
)
from llmsession.cost import Cost, check_currency, parse_money
from llmsession.expiry import check_ttl
from llmsession.ids import SessionId, TenantId
from llmsession.record import SessionRecord
from llmsession.store.models import NO_USAGE, Page, Round, Tenant, TimeBucket, Totals, UsageTotals
from llmsession.timestamps import Timestamp
from llmsession.tokens import check_token_count
from llmsession.usage import Usage

__all__ = [
    "read_api_key",
    "read_issued_key",
    "read_items",
    "read_new_tenant",
    "read_page",
    "read_recorded_round",
    "read_round",
    "read_session",
    "read_stats",
    "read_tenant",
    "read_timeseries",
]

T = TypeVar("T")
JsonObject = dict[str, object]

# The members of a session object that make up the core's record; the rest
# (tokens_saved, ttl_seconds, expires_at, and whatever a newer server adds) are not.
_RECORD_MEMBERS: Final = frozenset({"version", *(f.name for f in fields(SessionRecord))})


def read_session(data: object) -> SessionView:
    """A session object: the core's record plus ``ttl_seconds`` and ``expires_at``."""
    obj = _object(data, "a session")
    record = SessionRecord.from_dict({k: v for k, v in obj.items() if k in _RECORD_MEMBERS})
    return SessionView(
        record=record,
        ttl_seconds=check_ttl(_member(obj, "ttl_seconds")),
        expires_at=_optional_time(obj, "expires_at"),
        usage=_read_usage_totals(obj),
    )


def read_round(data: object, session_id: SessionId) -> Round:
    """A round object of the session ``session_id`` (the object does not repeat the id)."""
    obj = _object(data, "a round")
    seq = _typed(obj, "seq", int)
    if seq < 1:
        raise ValueError(f"a round's seq starts at 1, got {seq}")
    key = _member(obj, "idempotency_key")
    if key is not None and not isinstance(key, str):
        raise ValueError(f"idempotency_key must be a string or null, got {key!r}")
    gateway = obj.get("gateway", False)
    if not isinstance(gateway, bool):
        raise ValueError(f"gateway must be true or false, got {gateway!r}")
    usage = obj.get("usage")
    return Round(
        session_id=session_id,
        seq=seq,
        delta_tokens=check_token_count("delta_tokens", _member(obj, "delta_tokens")),
        recorded_at=_time(obj, "recorded_at"),
        idempotency_key=key,
        usage=None if usage is None else _read_usage(usage),
        gateway=gateway,
        cost=_read_cost(obj),
    )


def read_recorded_round(data: object, session_id: SessionId, *, replayed: bool) -> RecordedRound:
    """The answer to recording a round: ``{"round", "session"}``."""
    obj = _object(data, "a recorded round")
    return RecordedRound(
        round=read_round(_member(obj, "round"), session_id),
        session=read_session(_member(obj, "session")),
        replayed=replayed,
    )


def read_page(data: object, read_item: Callable[[object], T]) -> Page[T]:
    """``{"items": [...], "next_cursor": str or null}``."""
    obj = _object(data, "a page")
    cursor = _member(obj, "next_cursor")
    if cursor is not None and not (isinstance(cursor, str) and cursor):
        raise ValueError(f"next_cursor must be a non-empty string or null, got {cursor!r}")
    return Page(read_items(obj, read_item), cursor)


def read_items(data: object, read_item: Callable[[object], T]) -> list[T]:
    """The ``items`` list of an object, each read with ``read_item``."""
    items = _list(_object(data, "a list answer"), "items")
    return [read_item(item) for item in items]


def read_stats(data: object) -> list[Totals]:
    """``{"groups": [...]}`` as the store's Totals, one per group."""
    return [_read_totals(group) for group in _list(_object(data, "stats"), "groups")]


def read_timeseries(data: object) -> list[TimeBucket]:
    """``{"bucket", "start", "end", "buckets": [...]}`` as the store's TimeBuckets."""
    return [_read_bucket(item) for item in _list(_object(data, "a time series"), "buckets")]


def _read_bucket(data: object) -> TimeBucket:
    obj = _object(data, "a time bucket")
    return TimeBucket(
        start=_time(obj, "start"),
        provider_id=_optional_text(obj, "provider_id"),
        model=_optional_text(obj, "model"),
        rounds=check_token_count("rounds", _member(obj, "rounds")),
        delta_tokens=check_token_count("delta_tokens", _member(obj, "delta_tokens")),
        # A bucket's tokens_saved may be negative (see TimeBucket).
        tokens_saved=_typed(obj, "tokens_saved", int),
        usage=_read_usage_totals(obj),
        sessions_started=check_token_count("sessions_started", _member(obj, "sessions_started")),
    )


def read_tenant(data: object) -> Tenant:
    """``{"tenant_id", "created_at"}``."""
    obj = _object(data, "a tenant")
    return Tenant(TenantId(_typed(obj, "tenant_id", str)), _time(obj, "created_at"))


def read_new_tenant(data: object) -> NewTenant:
    """``{"tenant_id", "created_at", "api_key", "key_id"}``: a tenant and its first key."""
    obj = _object(data, "a new tenant")
    return NewTenant(
        tenant=read_tenant(obj),
        api_key=_typed(obj, "api_key", str),
        key_id=_typed(obj, "key_id", str),
    )


def read_api_key(data: object) -> ApiKeyView:
    """``{"key_id", "tenant_id", "created_at", "revoked_at"}``."""
    obj = _object(data, "an API key")
    return ApiKeyView(
        key_id=_typed(obj, "key_id", str),
        tenant_id=TenantId(_typed(obj, "tenant_id", str)),
        created_at=_time(obj, "created_at"),
        revoked_at=_optional_time(obj, "revoked_at"),
    )


def read_issued_key(data: object) -> IssuedApiKey:
    """``{"key_id", "tenant_id", "created_at", "api_key"}``: a new key, shown once."""
    obj = _object(data, "a new API key")
    key = ApiKeyView(
        key_id=_typed(obj, "key_id", str),
        tenant_id=TenantId(_typed(obj, "tenant_id", str)),
        created_at=_time(obj, "created_at"),
    )
    return IssuedApiKey(api_key=_typed(obj, "api_key", str), key=key)


def _read_totals(data: object) -> Totals:
    obj = _object(data, "a stats group")
    sessions = _object(_member(obj, "sessions"), "sessions")
    counts = {
        state: check_token_count(f"sessions.{state}", count) for state, count in sessions.items()
    }
    return Totals(
        provider_id=_optional_text(obj, "provider_id"),
        model=_optional_text(obj, "model"),
        sessions=counts,
        rounds=check_token_count("rounds", _member(obj, "rounds")),
        delta_tokens=check_token_count("delta_tokens", _member(obj, "delta_tokens")),
        tokens_saved=check_token_count("tokens_saved", _member(obj, "tokens_saved")),
        usage=_read_usage_totals(obj),
        cost=_read_cost(obj),
    )


def _read_cost(obj: JsonObject) -> Cost | None:
    # Null without prices; absent from a server from before prices.
    data = obj.get("cost")
    if data is None:
        return None
    cost_obj = _object(data, "a cost")
    cost = Cost(
        currency=check_currency(_member(cost_obj, "currency")),
        paid=parse_money(_member(cost_obj, "paid"), "cost.paid"),
        stateless=parse_money(_member(cost_obj, "stateless"), "cost.stateless"),
    )
    saved = parse_money(_member(cost_obj, "saved"), "cost.saved")
    if saved != cost.saved:
        raise ValueError(f"cost.saved ({saved}) is not cost.stateless - cost.paid ({cost.saved})")
    return cost


def _read_usage(data: object) -> Usage:
    obj = _object(data, "a round's usage")
    raw = _object(_member(obj, "raw"), "the provider's usage")
    return Usage(
        input_tokens=check_token_count("input_tokens", _member(obj, "input_tokens")),
        cached_input_tokens=check_token_count(
            "cached_input_tokens", _member(obj, "cached_input_tokens")
        ),
        cache_write_tokens=check_token_count(
            "cache_write_tokens", _member(obj, "cache_write_tokens")
        ),
        output_tokens=check_token_count("output_tokens", _member(obj, "output_tokens")),
        reasoning_tokens=check_token_count("reasoning_tokens", _member(obj, "reasoning_tokens")),
        raw=raw,
    )


def _read_usage_totals(obj: JsonObject) -> UsageTotals:
    # A server from before the gateway sends none: nothing was reported then.
    if "usage" not in obj:
        return NO_USAGE
    usage = _object(obj["usage"], "usage totals")
    return UsageTotals(
        *(
            check_token_count(f"usage.{name}", _member(usage, name))
            for name in (
                "input_tokens",
                "cached_input_tokens",
                "cache_write_tokens",
                "output_tokens",
                "reasoning_tokens",
                "rounds_without_usage",
            )
        )
    )


def _object(data: object, what: str) -> JsonObject:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    return cast("JsonObject", data)


def _member(obj: JsonObject, name: str) -> object:
    if name not in obj:
        raise ValueError(f"member {name!r} is missing")
    return obj[name]


def _list(obj: JsonObject, name: str) -> list[object]:
    value = _member(obj, name)
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list, got {value!r}")
    return cast("list[object]", value)


def _typed(obj: JsonObject, name: str, kind: type[T]) -> T:
    value = _member(obj, name)
    # bool is an int subclass, and true is not a number here.
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}")
    return value


def _time(obj: JsonObject, name: str) -> Timestamp:
    return Timestamp.parse(_typed(obj, name, str))


def _optional_time(obj: JsonObject, name: str) -> Timestamp | None:
    return None if _member(obj, name) is None else _time(obj, name)


def _optional_text(obj: JsonObject, name: str) -> str | None:
    return None if _member(obj, name) is None else _typed(obj, name, str)
