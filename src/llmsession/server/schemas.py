"""The request and response bodies of the HTTP API, as pydantic models.

Request models validate what comes in (strict JSON types: ``"5"``, ``5.0`` and
``true`` are not token counts). Values are then checked again by the core,
whose checkers are reused here as validators so that the error names the field.
Response models describe what the routes render (see :mod:`.render`) for the
OpenAPI schema; the routes build the JSON directly for speed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from llmsession.expiry import MAX_TTL_SECONDS
from llmsession.ids import TenantId, check_label
from llmsession.store.models import MAX_PAGE_SIZE
from llmsession.tokens import MAX_TOKENS

__all__ = [
    "MAX_LABEL_LENGTH",
    "TENANT_ID_PATTERN",
    "ApiKeyOut",
    "ApiKeysOut",
    "CostOut",
    "CreateSessionIn",
    "CreateTenantIn",
    "IssuedKeyOut",
    "NewTenantOut",
    "ProblemOut",
    "RecordRoundIn",
    "RoundOut",
    "RoundPageOut",
    "RoundResultOut",
    "SessionOut",
    "SessionPageOut",
    "StateName",
    "StatsGroupOut",
    "StatsOut",
    "StatusOut",
    "TenantOut",
    "TenantsOut",
    "TimeBucketOut",
    "TimeSeriesOut",
    "TokenCount",
]

StateName = Literal["created", "active", "closed", "expired"]

#: TenantId's rule as a JSON-schema pattern, for the OpenAPI document only: the
#: core's TenantId does the checking (tests keep the two in agreement).
TENANT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
#: A provider id or model is 1 to this many characters (check_label says which).
MAX_LABEL_LENGTH = 200

TokenCount = Annotated[
    int,
    Field(strict=True, ge=0, le=MAX_TOKENS, description="An integer from 0 to 2**63-1"),
]


def _provider(value: str) -> str:
    return check_label("provider_id", value)


def _model(value: str) -> str:
    return check_label("model", value)


def _tenant(value: str) -> str:
    return TenantId(value).value


_STRICT_INPUT = ConfigDict(extra="forbid", strict=True)


class CreateSessionIn(BaseModel):
    """Open a session. Times are set by the server; the body cannot set them."""

    model_config = _STRICT_INPUT

    provider_id: Annotated[
        str,
        AfterValidator(_provider),
        Field(
            min_length=1,
            max_length=MAX_LABEL_LENGTH,
            description="LLM provider: 1 to 200 printable characters, no outer white space",
        ),
    ]
    model: Annotated[
        str,
        AfterValidator(_model),
        Field(
            min_length=1,
            max_length=MAX_LABEL_LENGTH,
            description="Model name: 1 to 200 printable characters, no outer white space",
        ),
    ]
    initial_tokens: TokenCount
    ttl_seconds: Annotated[
        int | None,
        Field(
            strict=True,
            ge=1,
            le=MAX_TTL_SECONDS,
            description="Idle TTL in whole seconds; the server's default if absent",
        ),
    ] = None


class RecordRoundIn(BaseModel):
    """One round: the tokens sent beyond the initial context."""

    model_config = _STRICT_INPUT

    delta_tokens: TokenCount


class CreateTenantIn(BaseModel):
    """Register a tenant."""

    model_config = _STRICT_INPUT

    tenant_id: Annotated[
        str,
        AfterValidator(_tenant),
        Field(
            description="1 to 128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit",
            examples=["acme"],
            json_schema_extra={"pattern": TENANT_ID_PATTERN},
        ),
    ]


class UsageTotalsOut(BaseModel):
    """Sums of the usage providers reported for gateway rounds (all 0 for ledger rounds)."""

    input_tokens: int = Field(description="All input the providers counted, cached included")
    cached_input_tokens: int = Field(description="Input served from the providers' caches")
    cache_write_tokens: int = Field(description="Input written to the providers' caches")
    output_tokens: int
    reasoning_tokens: int = Field(description="Output spent on reasoning, where reported")
    rounds_without_usage: int = Field(description="Gateway rounds whose provider sent no usage")


class RoundUsageOut(BaseModel):
    """The usage one provider reported for one gateway round."""

    input_tokens: int = Field(description="All input the provider counted, cached included")
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    raw: dict[str, Any] = Field(description="The provider's usage object, verbatim")


class CostOut(BaseModel):
    """Money at the server's configured prices, computed when read (never stored).

    Amounts are decimal strings, exact (a JSON number could be rounded by a client).
    """

    currency: str = Field(description="ISO 4217 code of every price", examples=["USD"])
    paid: str = Field(
        description="What the provider billed: plain input at the input price, cached input "
        "at the cached-input price, cache writes at the cache-write price, output at the "
        "output price",
        examples=["0.0003375"],
    )
    stateless: str = Field(
        description="What a stateless client would have paid: all input at the input price, "
        "output at the output price",
        examples=["0.00045"],
    )
    saved: str = Field(
        description="stateless - paid; negative when cache writes cost more than they saved",
        examples=["0.0001125"],
    )


class SessionOut(BaseModel):
    """A session: the core record, tokens saved, and its TTL and idle deadline."""

    version: int
    session_id: UUID
    tenant_id: str
    provider_id: str
    model: str
    initial_tokens: int
    state: StateName
    created_at: datetime
    activated_at: datetime | None
    closed_at: datetime | None
    expired_at: datetime | None
    round_count: int
    delta_tokens: int
    tokens_saved: int
    ttl_seconds: int
    expires_at: datetime | None = Field(
        description="Idle deadline of an active session; null in other states"
    )
    usage: UsageTotalsOut = Field(description="What providers reported for its gateway rounds")


class RoundOut(BaseModel):
    """One recorded round; ``seq`` counts from 1 within its session."""

    seq: int
    delta_tokens: int
    recorded_at: datetime
    idempotency_key: str | None
    gateway: bool = Field(description="Recorded by the gateway from the provider's usage")
    usage: RoundUsageOut | None = Field(
        description="The provider's usage of a gateway round; null for a ledger round or "
        "when the provider sent none"
    )
    usage_missing: bool = Field(description="A gateway round whose provider sent no usage")
    cost: CostOut | None = Field(
        description="The round's cost at the configured prices; null for a round without "
        "usage or when its provider and model have no price"
    )


class RoundResultOut(BaseModel):
    """A recorded round and the session right after it; for a replay, the first answer."""

    round: RoundOut
    session: SessionOut


class SessionPageOut(BaseModel):
    """A page of sessions, newest first; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[SessionOut]
    next_cursor: str | None


class RoundPageOut(BaseModel):
    """A page of rounds in order; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[RoundOut]
    next_cursor: str | None


class SessionCountsOut(BaseModel):
    """Sessions by state."""

    created: int
    active: int
    closed: int
    expired: int


class StatsGroupOut(BaseModel):
    """Totals of one group; provider_id/model are null unless grouped by them."""

    provider_id: str | None
    model: str | None
    sessions: SessionCountsOut
    rounds: int
    delta_tokens: int
    tokens_saved: int
    usage: UsageTotalsOut
    cost: CostOut | None = Field(
        description="The group's cost at the configured prices, summed over its providers "
        "and models; null when it has no billed tokens or a model with billed tokens has "
        "no price"
    )


class StatsOut(BaseModel):
    """The tenant's totals, per group."""

    groups: list[StatsGroupOut]


class TimeBucketOut(BaseModel):
    """What happened in one hour or day (UTC) of the tenant, for one group.

    Rounds count in the bucket of their recorded_at, sessions in that of their
    created_at; provider_id/model are null unless grouped by them.
    """

    start: datetime = Field(description="The bucket's start: a whole hour or a midnight, UTC")
    provider_id: str | None
    model: str | None
    rounds: int
    delta_tokens: int
    tokens_saved: int = Field(
        description="The sum over the bucket's rounds of their session's initial_tokens minus "
        "the round's delta_tokens; not clamped, so it is negative when the rounds processed "
        "more than their sessions' initial size"
    )
    usage: UsageTotalsOut = Field(description="What providers reported for the gateway rounds")
    sessions_started: int = Field(
        description="Sessions created in the bucket, those since purged as abandoned included"
    )


class TimeSeriesOut(BaseModel):
    """The tenant's time series: buckets in order of start, then provider, then model.

    Buckets in which nothing happened are left out: a plot fills them with 0.
    """

    bucket: Literal["hour", "day"]
    start: datetime = Field(description="The first bucket's start: the asked start rounded down")
    end: datetime = Field(
        description="The asked end: the last bucket is the last starting before it"
    )
    buckets: list[TimeBucketOut]


class TenantOut(BaseModel):
    """A tenant."""

    tenant_id: str
    created_at: datetime


class TenantsOut(BaseModel):
    """Every tenant."""

    items: list[TenantOut]


class IssuedKeyOut(BaseModel):
    """A new API key; ``api_key`` is shown only in this response."""

    key_id: str
    tenant_id: str
    created_at: datetime
    api_key: str


class NewTenantOut(BaseModel):
    """A new tenant and its first API key (shown once)."""

    tenant_id: str
    created_at: datetime
    key_id: str
    api_key: str


class ApiKeyOut(BaseModel):
    """An API key's metadata (never the key or its hash)."""

    key_id: str
    tenant_id: str
    created_at: datetime
    revoked_at: datetime | None


class ApiKeysOut(BaseModel):
    """A tenant's API keys, oldest first."""

    items: list[ApiKeyOut]


class StatusOut(BaseModel):
    """Liveness or readiness."""

    status: Literal["ok", "ready"]


class ProblemErrorOut(BaseModel):
    """Where an input was wrong and why."""

    loc: list[str | int]
    msg: str


class ProblemOut(BaseModel):
    """An RFC 9457 problem; match on ``type``."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:llmsession:problem:not-found"])
    title: str
    status: int
    detail: str
    message: str = Field(
        description="the same text as detail, for clients that read only message "
        "(the official openai SDK shows it in its exception's text)"
    )
    errors: list[ProblemErrorOut] | None = Field(
        default=None, description="invalid-input only: each bad location and message"
    )
    method: str | None = Field(default=None, description="wrong-state and session-expired only")
    required_state: StateName | None = None
    current_state: StateName | None = None


def page_limit_description(default: int) -> str:
    """The description of a ``limit`` query parameter."""
    return f"Page size, 1 to {MAX_PAGE_SIZE} (default {default})"
