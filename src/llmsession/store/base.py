"""SessionStore: the one async interface every backend implements.

A backend supplies storage primitives (insert a session, run one change,
queries, batch sweeps, tenants and keys). The operations that change a session
are written once, here, as pure functions of (the session as read, the time, the
round already recorded under the request's idempotency key), and every change is
computed by the core (:mod:`llmsession.session`): a backend never restates a rule
of the state machine in SQL or Lua.

A backend runs a change (``_run_change``) as: read the session, let
``_compute`` apply the change, then commit the result with a compare-and-set on
``version`` in one step with its round. :class:`TransactionalStore` builds that
from a transaction opened by ``_begin`` (a row lock, or a pinned version);
SQLite runs it whole in its writer thread. A lost compare-and-set raises
:class:`VersionConflict` and the change is retried from a fresh read, so a
concurrent update is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import ClassVar, NamedTuple, TypeAlias

from llmsession.clock import Clock, system_clock
from llmsession.errors import (
    ConcurrentUpdateError,
    IdempotencyConflict,
    InvalidInput,
    LLMSessionError,
    SessionExpiredError,
    WrongStateError,
)
from llmsession.expiry import check_ttl
from llmsession.ids import SessionId, TenantId, check_label, check_session_id, check_tenant_id
from llmsession.record import SessionRecord
from llmsession.session import Session, as_after_round, require_state, restore
from llmsession.states import Active, Created, SessionExpired
from llmsession.store.cursor import decode_rounds_cursor, encode_rounds_cursor
from llmsession.store.models import (
    NO_USAGE,
    ApiKeyInfo,
    GroupKey,
    HistoryTurn,
    KeyedRound,
    Page,
    Round,
    RoundResult,
    SessionHistory,
    SessionQuery,
    StoredSession,
    Tenant,
    TimeBucket,
    TimeBucketSize,
    Totals,
    Turn,
    TurnHistory,
    UsageTotals,
    check_batch_limit,
    check_group_by,
    check_idempotency_key,
    check_page_size,
    check_purge_age,
)
from llmsession.store.rollup import TimeWindow, check_window
from llmsession.store.turns import SessionTurns
from llmsession.timestamps import Timestamp
from llmsession.tokens import MAX_TOKENS, check_token_count
from llmsession.usage import Usage

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "Change",
    "ChangeFn",
    "SessionStore",
    "SessionTransaction",
    "TransactionalStore",
    "VersionConflict",
    "expire_if_due",
]

DEFAULT_TTL_SECONDS = 3600
_MAX_ATTEMPTS = 200


class VersionConflict(Exception):
    """Raised by a backend's commit when the session's version moved; triggers a retry."""


class SessionTransaction(ABC):
    """One session read for one change; ``commit`` writes the change atomically."""

    stored: StoredSession

    @abstractmethod
    async def find_round(self, idempotency_key: str) -> KeyedRound | None:
        """The round of this session recorded under ``idempotency_key``, if any."""

    @abstractmethod
    async def commit(self, new: StoredSession, new_round: Round | None) -> None:
        """Write ``new`` (and ``new_round``) if the stored version is still ``stored.version``.

        Raises VersionConflict otherwise. ``new.version`` is ``stored.version + 1``.
        With the round go ``new.record.delta_tokens`` and ``new.version``: what
        find_round gives back in its KeyedRound.
        """


class Change(NamedTuple):
    """What a change computed: the next stored session (``stored`` itself if nothing
    changes), the round to insert with it, and an error to raise after the commit
    (a late round still writes the expiry it discovered). A tuple: one is made per
    write, and a frozen dataclass takes twice as long to make."""

    stored: StoredSession
    round: Round | None = None
    error: LLMSessionError | None = None
    replayed: KeyedRound | None = None


ChangeFn: TypeAlias = Callable[[StoredSession, Timestamp, KeyedRound | None], Change]
"""Computes a change from the session as read, the time, and the round already
recorded under the request's idempotency key (None without a key or a match).
Pure: it may run in a backend's own thread, inside its transaction."""


class SessionStore(ABC):
    """Durable, tenant-scoped sessions. Open one with :func:`llmsession.store.open_store`.

    Every session operation takes the tenant first; a session of another tenant
    behaves exactly like a missing one (NotFoundError). Times come from ``clock``.

    The public methods check their arguments here, once for every backend (an
    id that is not a TenantId or SessionId raises InvalidIdentifier naming it),
    and call the backend's primitive of the same name with a leading underscore.
    """

    #: How many sessions the service's sweeper asks one :meth:`sweep` call for: a
    #: call's fixed costs weighed against what it holds while it runs (SQLite's
    #: write lock, for one). Each backend may set its own.
    sweep_batch: ClassVar[int] = 1000

    def __init__(self, *, clock: Clock = system_clock, default_ttl_seconds: int = 3600) -> None:
        self.clock = clock
        self.default_ttl_seconds = check_ttl(default_ttl_seconds)
        self._local_turns = SessionTurns()

    # -- session operations (written once, for every backend) ---------------

    async def create(
        self,
        tenant_id: TenantId,
        *,
        provider_id: str,
        model: str,
        initial_tokens: int,
        ttl_seconds: int | None = None,
    ) -> StoredSession:
        """Create a session in state Created."""
        check_tenant_id("tenant_id", tenant_id)
        ttl = self.default_ttl_seconds if ttl_seconds is None else check_ttl(ttl_seconds)
        now = self.clock()
        record = SessionRecord.new(
            session_id=SessionId.generate(now),
            tenant_id=tenant_id,
            provider_id=check_label("provider_id", provider_id),
            model=check_label("model", model),
            initial_tokens=check_token_count("initial_tokens", initial_tokens),
            created_at=now,
        )
        stored = StoredSession(record, version=1, ttl_seconds=ttl, last_activity_at=now)
        await self._insert(stored)
        return stored

    async def activate(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """Created -> Active."""

        def change(stored: StoredSession, now: Timestamp, _: KeyedRound | None) -> Change:
            session = require_state(restore(stored.record), Created, "activate")
            return Change(_next(stored, session.activate(now).into_data(), now))

        return (await self._apply(tenant_id, session_id, change)).stored

    async def record_round(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        delta_tokens: int,
        *,
        idempotency_key: str | None = None,
    ) -> RoundResult:
        """Record one round on an Active session; the result holds the session after it.

        The same ``idempotency_key`` again counts nothing and returns the first
        answer with ``replayed=True``: the same round, and the session exactly as
        it was right after that round (its counters, version, activity time and
        deadline then, state Active), whatever happened to it since, a close or
        an expiry included. With a different delta it raises IdempotencyConflict.
        A round after the session's deadline is refused with SessionExpiredError
        (and the expiry is written), whether or not a sweeper has run.
        """
        check_token_count("delta_tokens", delta_tokens)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)

        def change(stored: StoredSession, now: Timestamp, first: KeyedRound | None) -> Change:
            if first is not None:
                if first.round.delta_tokens != delta_tokens:
                    raise IdempotencyConflict(
                        f"idempotency key {idempotency_key!r} was used for a round of "
                        f"{first.round.delta_tokens} delta tokens, not {delta_tokens}; "
                        "use a new key for a new round"
                    )
                return Change(stored, replayed=first)
            expired = _expire_late(stored, now, "record_delta")
            if expired is not None:
                return expired
            session = require_state(restore(stored.record), Active, "record_delta")
            session.record_delta(delta_tokens)
            record = session.into_data()
            new_round = Round(session_id, record.round_count, delta_tokens, now, idempotency_key)
            return Change(_next(stored, record, now), new_round)

        result = await self._apply(tenant_id, session_id, change, idempotency_key)
        first = result.replayed
        if first is not None:
            return RoundResult(first.round, _as_answered(result.stored, first), replayed=True)
        assert result.round is not None
        return RoundResult(result.round, result.stored)

    async def close(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """Active -> Closed. Refused with SessionExpiredError past the deadline."""

        def change(stored: StoredSession, now: Timestamp, _: KeyedRound | None) -> Change:
            expired = _expire_late(stored, now, "close")
            if expired is not None:
                return expired
            session = require_state(restore(stored.record), Active, "close")
            return Change(_next(stored, session.close(now).into_data(), stored.last_activity_at))

        return (await self._apply(tenant_id, session_id, change)).stored

    async def close_in_turn(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """:meth:`close`, in the session's :meth:`turn_lock`: a gateway turn under way,
        in any process, records its round first, so what its provider billed is
        counted and its client gets the answer."""
        async with self.turn_lock(tenant_id, session_id):
            return await self.close(tenant_id, session_id)

    async def expire(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """Active -> SessionExpired now (or at the deadline, if that came first)."""

        def change(stored: StoredSession, now: Timestamp, _: KeyedRound | None) -> Change:
            session = require_state(restore(stored.record), Active, "expire")
            deadline = stored.deadline
            at = now if deadline is None else min(now, deadline)
            expired = session.expire(at).into_data()
            return Change(_next(stored, expired, stored.last_activity_at))

        return (await self._apply(tenant_id, session_id, change)).stored

    # -- gateway rounds: the conversation goes through llmsession -----------------

    async def start_with_turn(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        *,
        provider_id: str,
        model: str,
        turn: Turn | None,
        usage: Usage | None,
        idempotency_key: str | None = None,
        ttl_seconds: int | None = None,
    ) -> RoundResult:
        """Store a session that the gateway started, with its first round, in one write.

        The gateway learns ``initial_tokens`` (round 1's input as the provider
        billed it) only from the answer, while the session's id went to the client
        with the answer's first byte; so the session is created here, already
        Active with one round, under the id generated then. ``turn`` None records
        the round without adding to the history (a stream cut with usage sent).
        ``idempotency_key`` is then the tenant's key for starting this session:
        a retry finds it with :meth:`find_turn` (``session_id=None``).
        """
        ttl = self.default_ttl_seconds if ttl_seconds is None else check_ttl(ttl_seconds)
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        now = self.clock()
        record = SessionRecord.new(
            session_id=session_id,
            tenant_id=tenant_id,
            provider_id=check_label("provider_id", provider_id),
            model=check_label("model", model),
            initial_tokens=0 if usage is None else usage.input_tokens,
            created_at=now,
        )
        session = Session.new(record).activate(now)
        delta = 0 if usage is None else usage.delta_tokens
        session.record_delta(delta)
        stored = StoredSession(session.into_data(), 1, ttl, now, usage=NO_USAGE.plus(usage))
        first = Round(session_id, 1, delta, now, idempotency_key, usage, gateway=True, turn=turn)
        await self._insert(stored, first)
        return RoundResult(first, stored)

    async def record_turn(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        *,
        turn: Turn | None,
        usage: Usage | None,
        idempotency_key: str | None = None,
    ) -> RoundResult:
        """Record a gateway round on an Active session, with its turn of the conversation.

        The round's ``delta_tokens`` is what the provider processed anew
        (``usage.delta_tokens``). With no usage the round is flagged
        (``Round.usage_missing``) and saves nothing: its ``delta_tokens`` is the
        session's ``initial_tokens``, so ``tokens_saved`` does not move, since a
        saving nobody measured is not claimed. ``turn`` None records the round
        without adding to the history. A repeated ``idempotency_key`` returns the
        first result (with its stored turn) and counts nothing.
        """
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)

        def change(stored: StoredSession, now: Timestamp, first: KeyedRound | None) -> Change:
            if first is not None:
                return Change(stored, replayed=first)
            expired = _expire_late(stored, now, "record_delta")
            if expired is not None:
                return expired
            session = require_state(restore(stored.record), Active, "record_delta")
            delta = stored.record.initial_tokens if usage is None else usage.delta_tokens
            session.record_delta(delta)
            record = session.into_data()
            new_round = Round(
                session_id, record.round_count, delta, now, idempotency_key, usage, True, turn
            )
            return Change(_next(stored, record, now, stored.usage.plus(usage)), new_round)

        result = await self._apply(tenant_id, session_id, change, idempotency_key)
        if result.replayed is not None:
            return await self._replay(tenant_id, result.stored, result.replayed)
        assert result.round is not None
        return RoundResult(result.round, result.stored)

    async def history(self, tenant_id: TenantId, session_id: SessionId) -> list[Turn]:
        """The conversation of an Active session, turn by turn in round order.

        Refused like a round would be: NotFoundError for a missing or foreign
        session, WrongStateError if it is not Active, SessionExpiredError past its
        deadline; so an ended session's history never reaches a provider.
        """
        return (await self.session_history(tenant_id, session_id)).turns

    async def session_history(self, tenant_id: TenantId, session_id: SessionId) -> SessionHistory:
        """An Active session as :meth:`get` gives it, with its :meth:`history`, in
        one read; refused as :meth:`history` is."""
        _check_ids(tenant_id, session_id)
        stored, turns = await self._session_turns(tenant_id, session_id)
        return self._active_history(stored, turns)

    def turn_history(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AbstractAsyncContextManager[TurnHistory]:
        """Hold the session's :meth:`turn_lock` and read the session and its
        conversation under it, for the block; refused as :meth:`history` is (the
        turn is given back first).

        What the gateway does at the start of every turn that continues a session;
        a backend that can take the lock and read in one round trip does. The
        turns are each a :class:`HistoryTurn`: a backend may leave out the
        answers as sent (:class:`TurnItems`), which only a replay needs.
        """
        _check_ids(tenant_id, session_id)
        return self._turn_history(tenant_id, session_id)

    @asynccontextmanager
    async def _turn_history(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AsyncGenerator[TurnHistory]:
        async with self._locked_turns(tenant_id, session_id) as (stored, turns):
            await self._write_late_expiry(tenant_id, session_id, stored)
            self._check_active(stored)
            yield TurnHistory(stored, turns)

    async def _write_late_expiry(
        self, tenant_id: TenantId, session_id: SessionId, stored: StoredSession
    ) -> None:
        """Write the expiry of a session past its deadline that no sweeper wrote yet (a
        read shows it expired already), as a late round writes it, its history
        deleted with it; nothing if it is not due, or was written."""
        due = expire_if_due(stored, self.clock()) is not None
        if due or stored.record.state is SessionExpired:
            # Written, then refused as a late round is: the caller says so its own way.
            with contextlib.suppress(SessionExpiredError):
                await self._apply(tenant_id, session_id, _expire_if_late)

    async def keep_alive(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """Renew an Active session's idle TTL from now, as a round would, without one.

        For a gateway turn under way (in the session's :meth:`turn_lock`): a
        session is not idle while its provider answers. Refused as a round is.
        """

        def change(stored: StoredSession, now: Timestamp, _: KeyedRound | None) -> Change:
            expired = _expire_late(stored, now, "record_delta")
            if expired is not None:
                return expired
            require_state(restore(stored.record), Active, "record_delta")
            return Change(_next(stored, stored.record, now))

        return (await self._apply(tenant_id, session_id, change)).stored

    def _active_history(self, stored: StoredSession, turns: list[Turn]) -> SessionHistory:
        self._check_active(stored)
        return SessionHistory(stored, turns)

    def _check_active(self, stored: StoredSession) -> None:
        """Refuse a session that is not Active (or past its deadline), as a round is."""
        if expire_if_due(stored, self.clock()) is not None:
            raise SessionExpiredError("record_delta", Active.name, SessionExpired.name)
        try:
            require_state(restore(stored.record), Active, "record_delta")
        except WrongStateError as error:
            raise _refine(error) from None

    async def find_turn(
        self, tenant_id: TenantId, idempotency_key: str, session_id: SessionId | None = None
    ) -> RoundResult | None:
        """The gateway round recorded under ``idempotency_key``, as first answered.

        With ``session_id`` None the key is the tenant's key that started a
        session. None if no round has that key. The result's ``turn`` is None once
        the session has ended (its history is deleted then).
        """
        check_idempotency_key(idempotency_key)
        if session_id is None:
            session_id = await self._started_by(tenant_id, idempotency_key)
            if session_id is None:
                return None
        found = await self._keyed_round(tenant_id, session_id, idempotency_key)
        if found is None:
            return None
        stored, first = found
        # Past the deadline the session has ended, whether or not a sweeper came: its
        # stored answers go with its history.
        await self._write_late_expiry(tenant_id, session_id, stored)
        return await self._replay(tenant_id, stored, first)

    def turn_lock(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AbstractAsyncContextManager[None]:
        """Hold a session's turn: the gateway's rounds of one session go one at a time.

        Waiters are served in arrival order, so each turn sees every turn before
        it. This default serves one process; backends shared by several
        processes hold it across all of them. A turn's round with its turn
        (:meth:`record_turn`) is the last thing it writes: a backend may give the
        turn back to other processes as that round commits (PostgreSQL does,
        when no turn of the session waits in this process), while this process's
        next turn waits for the block to end.
        """
        return self._local_turns.turn(session_id)

    async def _replay(
        self, tenant_id: TenantId, stored: StoredSession, first: KeyedRound
    ) -> RoundResult:
        answered = first.round
        turn = (
            await self._stored_turn(answered.session_id, answered.seq) if answered.gateway else None
        )
        return RoundResult(answered, _as_answered(stored, first), replayed=True, turn=turn)

    # -- backend primitives ---------------------------------------------------

    @abstractmethod
    async def _insert(self, stored: StoredSession, first: Round | None = None) -> None:
        """Store a new session (its id is fresh), with its first round if given.

        A first round with an idempotency key also records that key as the one
        that started the session for its tenant (ConflictError if it already
        started another one). The round's turn, if any, is stored with it.
        """

    @abstractmethod
    async def _run_change(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        change: ChangeFn,
        idempotency_key: str | None,
    ) -> Change:
        """Read the session (NotFoundError if missing or foreign) and the round under
        ``idempotency_key``, compute ``self._compute(change, ...)``, and commit the
        result if it differs from what was read, atomically with a compare-and-set
        on the version; VersionConflict if that lost a race (the caller retries).
        """

    @abstractmethod
    async def _history_turns(self, session_id: SessionId) -> list[Turn]:
        """Every stored turn of a session, in round order."""

    async def _session_turns(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> tuple[StoredSession, list[Turn]]:
        """The session as :meth:`_get` gives it and its stored turns; a backend that
        reads both at once overrides this."""
        stored = await self._get(tenant_id, session_id)
        return stored, await self._history_turns(session_id)

    @asynccontextmanager
    async def _locked_turns(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AsyncGenerator[tuple[StoredSession, Sequence[HistoryTurn]]]:
        """Hold the session's turn and give :meth:`_session_turns` read under it; a
        backend that can do both in one round trip overrides this."""
        async with self.turn_lock(tenant_id, session_id):
            yield await self._session_turns(tenant_id, session_id)

    @abstractmethod
    async def _stored_turn(self, session_id: SessionId, seq: int) -> Turn | None:
        """The stored turn of round ``seq``, if it is still stored."""

    @abstractmethod
    async def _started_by(self, tenant_id: TenantId, idempotency_key: str) -> SessionId | None:
        """The session the gateway started for this tenant under ``idempotency_key``."""

    @abstractmethod
    async def _keyed_round(
        self, tenant_id: TenantId, session_id: SessionId, idempotency_key: str
    ) -> tuple[StoredSession, KeyedRound] | None:
        """The session as stored (NotFoundError if missing or foreign) and its round
        under the key."""

    # -- reads ------------------------------------------------------------------

    async def get(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """One session; NotFoundError if missing or foreign."""
        _check_ids(tenant_id, session_id)
        return await self._get(tenant_id, session_id)

    async def list_sessions(self, tenant_id: TenantId, query: SessionQuery) -> Page[StoredSession]:
        """A tenant's sessions, newest first (created_at, then session_id, descending)."""
        check_tenant_id("tenant_id", tenant_id)
        return await self._list_sessions(tenant_id, query)

    async def list_rounds(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        *,
        cursor: str | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> Page[Round]:
        """A session's rounds in order of seq (1, 2, ...), a page of up to ``limit``.

        ``cursor``: the ``next_cursor`` of the previous page (None for the first);
        it continues after the last round that page served. ``after_seq``: only
        rounds with a larger seq, e.g. those recorded since round ``after_seq``
        was seen; with a cursor too, both apply. NotFoundError if the session is
        missing or foreign; InvalidInput for a cursor not given out for this
        session's rounds.
        """
        _check_ids(tenant_id, session_id)
        check_page_size(limit)
        if type(after_seq) is not int or not 0 <= after_seq <= MAX_TOKENS:
            raise InvalidInput(f"after_seq must be an integer from 0 to 2**63-1, got {after_seq!r}")
        if cursor is not None:
            after_seq = max(after_seq, decode_rounds_cursor(cursor, session_id))
        # One round more than the page tells whether there is a next page.
        rounds = await self._list_rounds(tenant_id, session_id, after_seq, limit + 1)
        page = rounds[:limit]
        more = len(rounds) > limit
        return Page(page, encode_rounds_cursor(session_id, page[-1].seq) if more else None)

    async def totals(self, tenant_id: TenantId, group_by: Sequence[GroupKey] = ()) -> list[Totals]:
        """Sessions by state, rounds, delta tokens and tokens saved, per group.

        ``group_by`` is a list of names from ``("provider", "model")``; anything
        else raises InvalidInput.
        """
        check_tenant_id("tenant_id", tenant_id)
        return await self._totals(tenant_id, check_group_by(group_by))

    async def timeseries(
        self,
        tenant_id: TenantId,
        *,
        bucket: TimeBucketSize,
        start: Timestamp,
        end: Timestamp,
        group_by: Sequence[GroupKey] = (),
    ) -> list[TimeBucket]:
        """Rounds, delta tokens, tokens saved, usage and sessions started per hour or
        day (UTC), per group: whole buckets, from the one holding ``start`` (its
        start rounded down to the hour or midnight) to the last one starting
        before ``end``.

        ``bucket`` is "hour" or "day". A series spans
        at most 31 days of hours or 366 days of days. Buckets in which nothing
        happened are left out. Ordered by start, then provider, then model.
        ``group_by`` is as for :meth:`totals`. Read from the rollup each write
        keeps (see :mod:`llmsession.store.rollup`): its cost grows with the buckets
        and groups in the range, not with the rounds.
        """
        check_tenant_id("tenant_id", tenant_id)
        window = check_window(bucket, start, end)
        return await self._timeseries(tenant_id, window, check_group_by(group_by))

    @abstractmethod
    async def _get(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """See :meth:`get`; the ids are checked."""

    @abstractmethod
    async def _list_sessions(self, tenant_id: TenantId, query: SessionQuery) -> Page[StoredSession]:
        """See :meth:`list_sessions`; the tenant is checked."""

    @abstractmethod
    async def _list_rounds(
        self, tenant_id: TenantId, session_id: SessionId, after_seq: int, limit: int
    ) -> list[Round]:
        """Up to ``limit`` rounds with seq > ``after_seq`` (at most 2**63-1), in order;
        NotFoundError if the session is missing or foreign. The ids are checked."""

    @abstractmethod
    async def _totals(self, tenant_id: TenantId, group_by: Sequence[GroupKey]) -> list[Totals]:
        """See :meth:`totals`; the tenant and ``group_by`` are checked."""

    @abstractmethod
    async def _timeseries(
        self, tenant_id: TenantId, window: TimeWindow, group_by: Sequence[GroupKey]
    ) -> list[TimeBucket]:
        """See :meth:`timeseries`; the arguments are checked. A backend reads its
        rollup rows of the window's hours and hands them to
        :func:`llmsession.store.rollup.fold`."""

    # -- expiry and abandoned sessions ----------------------------------------------

    async def sweep(self, *, limit: int = 1000) -> int:
        """Expire up to ``limit`` Active sessions whose deadline has passed; return how many.

        Safe to run from many processes at once: each due session is expired
        exactly once, with expired_at at its deadline (see expire_if_due).
        """
        if check_batch_limit(limit) == 0:
            return 0
        return await self._sweep(self.clock(), limit)

    async def purge_created(
        self, older_than_seconds: float, *, limit: int = 1000, tenant_id: TenantId | None = None
    ) -> int:
        """Delete up to ``limit`` sessions still Created ``older_than_seconds`` after creation,
        of every tenant or of ``tenant_id`` only; return how many.

        The seed allows no Created -> expired transition, so abandoned Created
        sessions are removed instead. ``older_than_seconds`` is at least
        MIN_PURGE_AGE_SECONDS (60): a younger session may be about to be activated.
        """
        check_purge_age(older_than_seconds)
        if tenant_id is not None:
            check_tenant_id("tenant_id", tenant_id)
        if check_batch_limit(limit) == 0:
            return 0
        cutoff = self.clock().plus_seconds(-older_than_seconds)
        return await self._purge_created(cutoff, limit, tenant_id)

    @abstractmethod
    async def _sweep(self, now: Timestamp, limit: int) -> int:
        """Expire up to ``limit`` sessions due at ``now``, each with ``expire_if_due``."""

    @abstractmethod
    async def _purge_created(
        self, cutoff: Timestamp, limit: int, tenant_id: TenantId | None
    ) -> int:
        """Delete up to ``limit`` Created sessions created at or before ``cutoff``, of
        ``tenant_id`` only unless it is None."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreError unless the backend answers."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections; the store cannot be used afterwards."""

    # -- tenants and API keys --------------------------------------------------

    async def create_tenant(self, tenant_id: TenantId) -> Tenant:
        """Register a tenant; ConflictError if it exists."""
        check_tenant_id("tenant_id", tenant_id)
        return await self._create_tenant(tenant_id)

    async def get_tenant(self, tenant_id: TenantId) -> Tenant:
        """One tenant; NotFoundError if unknown."""
        check_tenant_id("tenant_id", tenant_id)
        return await self._get_tenant(tenant_id)

    @abstractmethod
    async def list_tenants(self) -> list[Tenant]:
        """Every tenant, by id."""

    async def add_api_key(self, tenant_id: TenantId, key_id: str, key_hash: bytes) -> ApiKeyInfo:
        """Store a key's hash for a tenant (NotFoundError if the tenant is unknown)."""
        check_tenant_id("tenant_id", tenant_id)
        return await self._add_api_key(tenant_id, key_id, key_hash)

    @abstractmethod
    async def get_api_key(self, key_id: str) -> ApiKeyInfo | None:
        """The key with this id, revoked or not; None if there is none."""

    async def list_api_keys(self, tenant_id: TenantId) -> list[ApiKeyInfo]:
        """A tenant's keys, oldest first."""
        check_tenant_id("tenant_id", tenant_id)
        return await self._list_api_keys(tenant_id)

    @abstractmethod
    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key (idempotent: revoking twice keeps the first time)."""

    @abstractmethod
    async def _create_tenant(self, tenant_id: TenantId) -> Tenant:
        """See :meth:`create_tenant`; the tenant is checked."""

    @abstractmethod
    async def _get_tenant(self, tenant_id: TenantId) -> Tenant:
        """See :meth:`get_tenant`; the tenant is checked."""

    @abstractmethod
    async def _add_api_key(self, tenant_id: TenantId, key_id: str, key_hash: bytes) -> ApiKeyInfo:
        """See :meth:`add_api_key`; the tenant is checked."""

    @abstractmethod
    async def _list_api_keys(self, tenant_id: TenantId) -> list[ApiKeyInfo]:
        """See :meth:`list_api_keys`; the tenant is checked."""

    # -- the retry loop ------------------------------------------------------------

    async def _apply(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        change: ChangeFn,
        idempotency_key: str | None = None,
    ) -> Change:
        _check_ids(tenant_id, session_id)
        for attempt in range(_MAX_ATTEMPTS):
            try:
                result = await self._run_change(tenant_id, session_id, change, idempotency_key)
            except VersionConflict:
                await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 20)))
                continue
            if result.error is not None:
                raise result.error
            return result
        raise ConcurrentUpdateError(
            f"session {session_id} kept changing under {_MAX_ATTEMPTS} attempts; try again"
        )

    def _compute(self, change: ChangeFn, stored: StoredSession, first: KeyedRound | None) -> Change:
        """Run ``change`` at the session's own time; backends overriding _run_change call this."""
        # Replicas' clocks differ a little; a session's own time never runs
        # backwards, so no transition is dated before the last one.
        now = max(self.clock(), stored.last_activity_at)
        try:
            return change(stored, now, first)
        except WrongStateError as error:
            raise _refine(error) from None


class TransactionalStore(SessionStore):
    """A SessionStore whose changes run in a transaction opened by ``_begin``.

    For backends where reading, computing in Python and writing are separate
    steps (a row lock or a pinned version holds in between).
    """

    @abstractmethod
    def _begin(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AbstractAsyncContextManager[SessionTransaction]:
        """Open a transaction on one session; NotFoundError if missing or foreign.

        Leaving the block without commit() rolls back; an exception propagates.
        """

    async def _run_change(
        self,
        tenant_id: TenantId,
        session_id: SessionId,
        change: ChangeFn,
        idempotency_key: str | None,
    ) -> Change:
        """Read, compute and commit one change; VersionConflict if it lost a race.

        Open the transaction, look up the idempotency key, compute, commit.
        """
        async with self._begin(tenant_id, session_id) as tx:
            first = None if idempotency_key is None else await tx.find_round(idempotency_key)
            result = self._compute(change, tx.stored, first)
            if result.stored is not tx.stored:
                await tx.commit(result.stored, result.round)
        return result


def expire_if_due(stored: StoredSession, now: Timestamp) -> StoredSession | None:
    """The expired version of an Active session whose deadline is at or before ``now``.

    None if the session is not due. expired_at is the deadline: when the TTL ran
    out, not when a sweeper noticed. Backends' sweeps call this for each row.
    """
    deadline = stored.deadline
    if deadline is None or now < deadline:
        return None
    session = require_state(restore(stored.record), Active, "expire")
    return _next(stored, session.expire(deadline).into_data(), stored.last_activity_at)


def _as_answered(stored: StoredSession, first: KeyedRound) -> StoredSession:
    """The session as it was right after the round ``first``, rebuilt from ``stored``
    (the session now, whose ttl and what else never changes are as then)."""
    record = as_after_round(stored.record, first.round.seq, first.session_delta_tokens)
    # A round's time is the session's activity time it set.
    return StoredSession(record, first.session_version, stored.ttl_seconds, first.round.recorded_at)


def _expire_late(stored: StoredSession, now: Timestamp, method: str) -> Change | None:
    expired = expire_if_due(stored, now)
    if expired is None:
        return None
    error = SessionExpiredError(method, Active.name, SessionExpired.name)
    return Change(expired, error=error)


def _expire_if_late(stored: StoredSession, now: Timestamp, _: KeyedRound | None) -> Change:
    """A change that writes the expiry of a session past its deadline, and nothing else."""
    return _expire_late(stored, now, "record_delta") or Change(stored)


def _check_ids(tenant_id: object, session_id: object) -> None:
    # Every round passes here: the common case is two type tests, not two calls.
    if type(tenant_id) is not TenantId or type(session_id) is not SessionId:
        check_tenant_id("tenant_id", tenant_id)
        check_session_id("session_id", session_id)


def _next(
    stored: StoredSession,
    record: SessionRecord,
    last_activity_at: Timestamp,
    usage: UsageTotals | None = None,
) -> StoredSession:
    return StoredSession(
        record,
        stored.version + 1,
        stored.ttl_seconds,
        last_activity_at,
        stored.usage if usage is None else usage,
    )


def _refine(error: WrongStateError) -> WrongStateError:
    # A call on an expired session gets the same error as a late round does.
    if error.actual == SessionExpired.name and not isinstance(error, SessionExpiredError):
        return SessionExpiredError(error.method, error.required, error.actual)
    return error
