"""The values a store reads and writes besides the core's SessionRecord."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, Literal, NamedTuple, Protocol, TypeAlias, TypeVar, cast, get_args

from llmsession.cost import Cost
from llmsession.errors import InvalidIdentifier, InvalidInput, TokenOverflow
from llmsession.expiry import deadline_of
from llmsession.ids import SessionId, TenantId, check_label, check_name
from llmsession.record import SessionRecord
from llmsession.states import ALL_STATES, SessionState
from llmsession.timestamps import Timestamp
from llmsession.tokens import MAX_TOKENS
from llmsession.usage import Usage

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "GROUP_KEYS",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_PAGE_SIZE",
    "MIN_PURGE_AGE_SECONDS",
    "NO_USAGE",
    "TIME_BUCKET_SIZES",
    "ApiKeyInfo",
    "GroupKey",
    "HistoryTurn",
    "KeyedRound",
    "Page",
    "Round",
    "RoundResult",
    "SessionHistory",
    "SessionQuery",
    "StoredSession",
    "Tenant",
    "TimeBucket",
    "TimeBucketSize",
    "Totals",
    "Turn",
    "TurnHistory",
    "TurnItems",
    "UsageTotals",
    "check_age",
    "check_batch_limit",
    "check_group_by",
    "check_idempotency_key",
    "check_page_size",
    "check_purge_age",
    "utf8_size",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_IDEMPOTENCY_KEY = 255
#: The youngest Created session purge_created may delete. A session is created and
#: then activated by the client's next request, which may be retried and may land on
#: a replica whose clock differs by a little; a minute leaves room for all that, and
#: anything younger cannot be told abandoned.
MIN_PURGE_AGE_SECONDS = 60

T = TypeVar("T")

GroupKey: TypeAlias = Literal["provider", "model"]
#: The names totals can group by.
GROUP_KEYS: tuple[GroupKey, ...] = get_args(GroupKey)

TimeBucketSize: TypeAlias = Literal["hour", "day"]
#: The bucket sizes of a time series.
TIME_BUCKET_SIZES: tuple[TimeBucketSize, ...] = get_args(TimeBucketSize)


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Sums of the provider-reported usage of gateway rounds (all 0 for ledger rounds)."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    #: Gateway rounds whose provider sent no usage (their counts are not guessed).
    rounds_without_usage: int = 0

    def plus(self, usage: Usage | None) -> UsageTotals:
        """These totals with one more gateway round's usage."""
        if usage is None:
            return replace(self, rounds_without_usage=self.rounds_without_usage + 1)
        return UsageTotals(
            _add("input_tokens", self.input_tokens, usage.input_tokens),
            _add("cached_input_tokens", self.cached_input_tokens, usage.cached_input_tokens),
            _add("cache_write_tokens", self.cache_write_tokens, usage.cache_write_tokens),
            _add("output_tokens", self.output_tokens, usage.output_tokens),
            _add("reasoning_tokens", self.reasoning_tokens, usage.reasoning_tokens),
            self.rounds_without_usage,
        )

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        """The six counters in field order, as stores write them."""
        return (
            self.input_tokens,
            self.cached_input_tokens,
            self.cache_write_tokens,
            self.output_tokens,
            self.reasoning_tokens,
            self.rounds_without_usage,
        )


NO_USAGE = UsageTotals()


def _add(name: str, total: int, more: int) -> int:
    if total + more > MAX_TOKENS:
        raise TokenOverflow(f"{name} would pass 2**63-1 ({total} + {more})")
    return total + more


def utf8_size(text: str) -> int:
    """The length of ``text`` in bytes of UTF-8, as the gateway measures what it stores
    (a character of a non-ASCII text is 2 to 4 of them)."""
    # isascii() reads a flag of the string: most histories are ASCII and not copied.
    return len(text) if text.isascii() else len(text.encode())


@dataclass(frozen=True, slots=True)
class Turn:
    """A gateway round's part of the conversation, and the answer its client got.

    Kept with the round while the session is Active, and deleted with the rest of
    its history when the session ends. ``request_items`` and ``answer_items`` are
    JSON arrays (text) in the endpoint's own item shape; ``answer_body`` is the
    answer exactly as sent (a whole event stream for a streamed answer), so a
    retried request gets it again without calling the provider.
    """

    #: The wire format, e.g. "chat/completions" or "responses"; a session keeps one.
    endpoint: str
    #: A digest of the client's request: a key reused with another request is refused.
    request_hash: str
    request_items: str
    answer_items: str
    #: The provider's id of a response it stores (Responses API), if any.
    response_id: str | None
    answer_status: int
    answer_type: str
    answer_body: bytes

    @property
    def size(self) -> int:
        """What this turn adds to the session's history, in bytes (of UTF-8)."""
        return utf8_size(self.request_items) + utf8_size(self.answer_items)


class HistoryTurn(Protocol):
    """What a gateway turn needs of the turns before it: the conversation, not
    the answers as sent (a :class:`Turn` has both; a :class:`TurnItems` only this)."""

    @property
    def endpoint(self) -> str: ...

    @property
    def request_items(self) -> str: ...

    @property
    def answer_items(self) -> str: ...

    @property
    def response_id(self) -> str | None: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class TurnItems:
    """A stored turn's part of the conversation alone (see :class:`HistoryTurn`):
    what a store reads for a gateway turn where leaving the answer body out
    saves reading it (a whole event stream, for a streamed answer)."""

    endpoint: str
    request_items: str
    answer_items: str
    response_id: str | None

    @property
    def size(self) -> int:
        """What this turn adds to the session's history, in bytes (as Turn.size)."""
        return utf8_size(self.request_items) + utf8_size(self.answer_items)


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A session record as a store holds it, with what the store adds around it.

    ``version`` grows by one with every write and is what compare-and-set checks;
    ``last_activity_at`` and ``ttl_seconds`` give the idle deadline.
    """

    record: SessionRecord
    version: int
    ttl_seconds: int
    last_activity_at: Timestamp
    #: What the provider reported for the session's gateway rounds.
    usage: UsageTotals = NO_USAGE
    #: When the session expires if nothing happens; None unless Active.
    deadline: Timestamp | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Asked for several times per write (is it due? does its index entry
        # move?), so computed once.
        deadline = deadline_of(self.record, self.last_activity_at, self.ttl_seconds)
        object.__setattr__(self, "deadline", deadline)


class SessionHistory(NamedTuple):
    """An Active session as stored and its conversation, read together (one read
    serves a gateway turn)."""

    stored: StoredSession
    turns: list[Turn]


class TurnHistory(NamedTuple):
    """An Active session as stored and the conversation a gateway turn sends on
    (:meth:`SessionStore.turn_history`)."""

    stored: StoredSession
    turns: Sequence[HistoryTurn]


@dataclass(frozen=True, slots=True)
class Round:
    """One recorded round: its sequence number (1, 2, ...) within the session."""

    session_id: SessionId
    seq: int
    delta_tokens: int
    recorded_at: Timestamp
    idempotency_key: str | None = None
    #: The provider's usage of a gateway round; None for a ledger round, or for a
    #: gateway round whose provider sent none (then ``gateway`` is True).
    usage: Usage | None = None
    #: Recorded by the gateway from the provider's usage, not reported by a client.
    gateway: bool = False
    #: The conversation written with a gateway round; stores never read it back
    #: here (see SessionStore.history).
    turn: Turn | None = field(default=None, repr=False, compare=False)
    #: What the round cost at the configured prices; stores have no prices and leave
    #: it None, the server (and the CLI given a config) fill it in when read.
    cost: Cost | None = None

    @property
    def usage_missing(self) -> bool:
        """A gateway round whose provider reported no usage."""
        return self.gateway and self.usage is None


@dataclass(frozen=True, slots=True)
class KeyedRound:
    """A round recorded under an idempotency key, with what its replay gives back: the
    session's delta_tokens and version right after the round. Everything else the
    session was then follows from the round and what never changes (see
    :func:`llmsession.session.as_after_round`)."""

    round: Round
    session_delta_tokens: int
    session_version: int


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What recording a round returns: the round and the session right after it.

    ``replayed`` is True for a repeated idempotency key: the round and session are
    then those of the first answer, as they were right after that round.
    """

    round: Round
    session: StoredSession
    replayed: bool = False
    #: The stored turn of a replayed gateway round, while its session is Active.
    turn: Turn | None = None


@dataclass(frozen=True, slots=True)
class SessionQuery:
    """Filters and paging for listing a tenant's sessions, newest first."""

    state: type[SessionState] | None = None
    provider_id: str | None = None
    model: str | None = None
    created_after: Timestamp | None = None
    created_before: Timestamp | None = None
    limit: int = DEFAULT_PAGE_SIZE
    cursor: str | None = None

    def __post_init__(self) -> None:
        if self.state is not None and self.state not in ALL_STATES:
            raise InvalidInput(f"state filter must be a session state, got {self.state!r}")
        if self.provider_id is not None:
            check_label("provider_id", self.provider_id)
        if self.model is not None:
            check_label("model", self.model)
        check_page_size(self.limit)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of results; pass ``next_cursor`` back for the next, None at the end."""

    items: list[T]
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Totals:
    """Totals over a tenant's sessions, for one provider/model group.

    ``provider_id`` and ``model`` are None when the totals are not grouped by them.
    ``sessions`` counts sessions by state name (all four names always present).
    """

    provider_id: str | None
    model: str | None
    sessions: dict[str, int] = field(default_factory=dict[str, int])
    rounds: int = 0
    delta_tokens: int = 0
    tokens_saved: int = 0
    usage: UsageTotals = NO_USAGE
    #: What the group's usage cost at the configured prices; stores leave it None,
    #: as for Round.cost.
    cost: Cost | None = None


@dataclass(frozen=True, slots=True)
class TimeBucket:
    """What happened in one hour or day (UTC) of a tenant, for one provider/model group.

    Rounds count in the bucket of their ``recorded_at``, sessions in that of their
    ``created_at``. ``provider_id`` and ``model`` are None when the series is not
    grouped by them.
    """

    #: The bucket's start: a whole hour or a midnight, UTC.
    start: Timestamp
    provider_id: str | None
    model: str | None
    rounds: int = 0
    delta_tokens: int = 0
    #: The sum over the bucket's rounds of (the session's initial_tokens - the
    #: round's delta_tokens). Not clamped per bucket: a bucket whose rounds
    #: processed more than their sessions' initial size is negative, where a
    #: session's own tokens_saved stops at 0.
    tokens_saved: int = 0
    #: The gateway's usage of the bucket's rounds (all 0 for ledger rounds).
    usage: UsageTotals = NO_USAGE
    #: Sessions created in the bucket, those since purged as abandoned included.
    sessions_started: int = 0


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant known to the service."""

    tenant_id: TenantId
    created_at: Timestamp


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """What a store keeps of an API key: never the key, only its hash."""

    key_id: str
    tenant_id: TenantId
    key_hash: bytes
    created_at: Timestamp
    revoked_at: Timestamp | None = None


def check_page_size(limit: object) -> int:
    """A page size is an int from 1 to MAX_PAGE_SIZE."""
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}")
    return limit


def check_batch_limit(limit: object) -> int:
    """A batch size for sweeps and purges: an int from 0 (do nothing) to 2**63-1."""
    if type(limit) is not int or not 0 <= limit <= MAX_TOKENS:
        raise InvalidInput(f"limit must be an integer from 0 to 2**63-1, got {limit!r}")
    return limit


def check_age(name: str, seconds: object) -> float:
    """An age in seconds: a finite, non-negative int or float (not a bool)."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds < math.inf
    ):
        raise InvalidInput(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
    return float(seconds)


def check_purge_age(seconds: object) -> float:
    """purge_created's age: a finite number of seconds, at least MIN_PURGE_AGE_SECONDS."""
    age = check_age("older_than_seconds", seconds)
    if age < MIN_PURGE_AGE_SECONDS:
        raise InvalidInput(
            f"older_than_seconds must be at least {MIN_PURGE_AGE_SECONDS}, got {seconds!r}: "
            "a younger Created session may be about to be activated"
        )
    return age


def check_group_by(group_by: object) -> tuple[GroupKey, ...]:
    """A totals grouping: a list or tuple of names from GROUP_KEYS (a repeat is harmless)."""
    allowed = ", ".join(map(repr, GROUP_KEYS))
    if isinstance(group_by, str):
        raise InvalidInput(
            f"group_by takes a list of names from {allowed}, not a bare string: "
            f"write [{group_by[:80]!r}]"
        )
    if not isinstance(group_by, Sequence):
        raise InvalidInput(f"group_by takes a list of names from {allowed}, got {group_by!r}")
    names = tuple(cast(Sequence[object], group_by))
    for name in names:
        if name not in GROUP_KEYS:
            raise InvalidInput(f"group_by takes names from {allowed}, got {name!r}")
    return cast(tuple[GroupKey, ...], names)


def check_idempotency_key(key: object) -> str:
    """An idempotency key follows the rule of provider ids and models
    (:func:`llmsession.ids.check_name`), with up to 255 characters, all ASCII.

    ASCII because a key travels as the value of an HTTP header, which clients
    encode and servers decode as ASCII or Latin-1, never reliably as UTF-8: "é"
    sent as UTF-8 arrives as "Ã©", another key.
    """
    checked = check_name("idempotency key", key, MAX_IDEMPOTENCY_KEY)
    if not checked.isascii():
        first = next(char for char in checked if not char.isascii())
        raise InvalidIdentifier(
            f"idempotency key {checked[:80]!r} must be ASCII (it travels as an HTTP "
            f"header value), got {first!r}"
        )
    return checked
