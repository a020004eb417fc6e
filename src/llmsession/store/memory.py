"""MemoryStore: the SessionStore in one process's memory, for tests and experiments.

It keeps no data across restarts. Changes still go through the same
compare-and-set as every other backend, so the conformance suite holds for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from llmsession.clock import Clock, system_clock
from llmsession.errors import ConflictError, NotFoundError, StoreError
from llmsession.ids import SessionId, TenantId
from llmsession.states import ALL_STATES, Active, Created
from llmsession.store.base import (
    DEFAULT_TTL_SECONDS,
    SessionTransaction,
    TransactionalStore,
    VersionConflict,
    expire_if_due,
)
from llmsession.store.cursor import decode_cursor, encode_cursor
from llmsession.store.models import (
    ApiKeyInfo,
    GroupKey,
    KeyedRound,
    Page,
    Round,
    SessionQuery,
    StoredSession,
    Tenant,
    TimeBucket,
    TimeBucketSize,
    Totals,
    Turn,
    UsageTotals,
)
from llmsession.store.presented import present
from llmsession.store.rollup import (
    Amounts,
    TimeWindow,
    bucket_starts,
    fold,
    round_amounts,
    session_amounts,
)
from llmsession.timestamps import Timestamp

__all__ = ["MemoryStore"]


@dataclass
class _Entry:
    stored: StoredSession
    rounds: list[Round] = field(default_factory=list[Round])
    by_key: dict[str, KeyedRound] = field(default_factory=dict[str, KeyedRound])
    #: The conversation of a gateway session, by round; dropped when it ends.
    turns: dict[int, Turn] = field(default_factory=dict[int, Turn])

    def add(self, new_round: Round, after: StoredSession) -> None:
        """Keep ``new_round``; ``after`` is the session right after it."""
        self.rounds.append(new_round)
        if new_round.idempotency_key is not None:
            self.by_key[new_round.idempotency_key] = KeyedRound(
                new_round, after.record.delta_tokens, after.version
            )
        if new_round.turn is not None:
            self.turns[new_round.seq] = new_round.turn

    def store(self, new: StoredSession) -> None:
        self.stored = new
        if new.record.state is not Active:
            self.turns.clear()


class _MemoryTransaction(SessionTransaction):
    def __init__(self, store: MemoryStore, entry: _Entry) -> None:
        self._store = store
        self._entry = entry
        self.stored = entry.stored

    async def find_round(self, idempotency_key: str) -> KeyedRound | None:
        return self._entry.by_key.get(idempotency_key)

    async def commit(self, new: StoredSession, new_round: Round | None) -> None:
        # No await between the check and the write: atomic within the event loop.
        if self._entry.stored.version != self.stored.version:
            raise VersionConflict
        self._entry.store(new)
        if new_round is not None:
            self._entry.add(new_round, new)
            self._store.roll_round(new_round, new)


class MemoryStore(TransactionalStore):
    """Sessions in a dict; lost when the process ends."""

    def __init__(
        self, *, clock: Clock = system_clock, default_ttl_seconds: int = DEFAULT_TTL_SECONDS
    ) -> None:
        super().__init__(clock=clock, default_ttl_seconds=default_ttl_seconds)
        self._sessions: dict[SessionId, _Entry] = {}
        self._tenants: dict[TenantId, Tenant] = {}
        self._keys: dict[str, ApiKeyInfo] = {}
        self._started: dict[tuple[TenantId, str], SessionId] = {}
        #: The rollup: sums by (tenant, bucket size, bucket start, provider, model),
        #: see store.rollup.
        self._rollup: dict[tuple[TenantId, TimeBucketSize, int, str, str], list[int]] = {}
        self._closed = False

    async def _insert(self, stored: StoredSession, first: Round | None = None) -> None:
        self._check_open()
        record = stored.record
        start_key = None if first is None else first.idempotency_key
        if start_key is not None:
            key = (record.tenant_id, start_key)
            if key in self._started:
                raise ConflictError(
                    f"idempotency key {start_key!r} already started session {self._started[key]}"
                )
            self._started[key] = record.session_id
        entry = _Entry(stored)
        self._roll(stored, record.created_at, session_amounts())
        if first is not None:
            entry.add(first, stored)
            self.roll_round(first, stored)
        self._sessions[record.session_id] = entry

    def roll_round(self, new_round: Round, after: StoredSession) -> None:
        """Add a recorded round to the rollup; ``after`` is its session right after it."""
        self._roll(after, new_round.recorded_at, round_amounts(new_round, after))

    def _roll(self, stored: StoredSession, at: Timestamp, amounts: Amounts) -> None:
        record = stored.record
        hour, day = bucket_starts(at)
        spans: tuple[tuple[TimeBucketSize, int], ...] = (("hour", hour), ("day", day))
        for size, start in spans:
            key = (record.tenant_id, size, start, record.provider_id, record.model)
            sums = self._rollup.setdefault(key, [0] * len(amounts))
            for i, amount in enumerate(amounts):
                sums[i] += amount

    async def _history_turns(self, session_id: SessionId) -> list[Turn]:
        entry = self._sessions.get(session_id)
        return [] if entry is None else [entry.turns[seq] for seq in sorted(entry.turns)]

    async def _stored_turn(self, session_id: SessionId, seq: int) -> Turn | None:
        entry = self._sessions.get(session_id)
        return None if entry is None else entry.turns.get(seq)

    async def _started_by(self, tenant_id: TenantId, idempotency_key: str) -> SessionId | None:
        self._check_open()
        return self._started.get((tenant_id, idempotency_key))

    async def _keyed_round(
        self, tenant_id: TenantId, session_id: SessionId, idempotency_key: str
    ) -> tuple[StoredSession, KeyedRound] | None:
        entry = self._entry(tenant_id, session_id)
        found = entry.by_key.get(idempotency_key)
        return None if found is None else (entry.stored, found)

    @asynccontextmanager
    async def _begin(
        self, tenant_id: TenantId, session_id: SessionId
    ) -> AsyncGenerator[SessionTransaction]:
        entry = self._entry(tenant_id, session_id)
        # Yield to the loop once so concurrent writers really interleave, as they
        # would against a database, and the compare-and-set is exercised.
        await asyncio.sleep(0)
        yield _MemoryTransaction(self, entry)

    async def _get(self, tenant_id: TenantId, session_id: SessionId) -> StoredSession:
        """One session as of now: past its deadline, expired (see store.presented)."""
        return present(self._entry(tenant_id, session_id).stored, self.clock())

    async def _list_sessions(self, tenant_id: TenantId, query: SessionQuery) -> Page[StoredSession]:
        self._check_open()
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        now = self.clock()
        matches = sorted(
            (
                stored
                for stored in (present(entry.stored, now) for entry in self._sessions.values())
                if _matches(stored, tenant_id, query)
            ),
            key=_newest_first_key,
            reverse=True,
        )
        if after is not None:
            matches = [s for s in matches if _newest_first_key(s) < after]
        page = matches[: query.limit]
        more = len(matches) > query.limit
        cursor = (
            encode_cursor(page[-1].record.created_at, page[-1].record.session_id)
            if more and page
            else None
        )
        return Page(page, cursor)

    async def _list_rounds(
        self, tenant_id: TenantId, session_id: SessionId, after_seq: int, limit: int
    ) -> list[Round]:
        # Round seq is its index + 1.
        return self._entry(tenant_id, session_id).rounds[after_seq : after_seq + limit]

    async def _totals(self, tenant_id: TenantId, group_by: Sequence[GroupKey] = ()) -> list[Totals]:
        self._check_open()
        groups: dict[tuple[str | None, str | None], Totals] = {}
        now = self.clock()
        for entry in self._sessions.values():
            record = present(entry.stored, now).record
            if record.tenant_id != tenant_id:
                continue
            key = (
                record.provider_id if "provider" in group_by else None,
                record.model if "model" in group_by else None,
            )
            current = groups.get(key) or Totals(
                key[0], key[1], {state.name: 0 for state in ALL_STATES}
            )
            current.sessions[record.state.name] += 1
            groups[key] = replace(
                current,
                rounds=current.rounds + record.round_count,
                delta_tokens=current.delta_tokens + record.delta_tokens,
                tokens_saved=current.tokens_saved + record.tokens_saved,
                usage=UsageTotals(
                    *(
                        a + b
                        for a, b in zip(
                            current.usage.as_tuple(), entry.stored.usage.as_tuple(), strict=True
                        )
                    )
                ),
            )
        return [groups[key] for key in sorted(groups, key=lambda k: (k[0] or "", k[1] or ""))]

    async def _timeseries(
        self, tenant_id: TenantId, window: TimeWindow, group_by: Sequence[GroupKey]
    ) -> list[TimeBucket]:
        self._check_open()
        return fold(
            (
                (start, provider, model, sums)
                for (tenant, size, start, provider, model), sums in self._rollup.items()
                if tenant == tenant_id and size == window.bucket
            ),
            window,
            group_by,
        )

    async def _sweep(self, now: Timestamp, limit: int) -> int:
        self._check_open()
        expired = 0
        for entry in list(self._sessions.values()):
            if expired >= limit:
                break
            due = expire_if_due(entry.stored, now)
            if due is not None:
                entry.store(due)
                expired += 1
        return expired

    async def _purge_created(
        self, cutoff: Timestamp, limit: int, tenant_id: TenantId | None
    ) -> int:
        self._check_open()
        doomed = [
            session_id
            for session_id, entry in self._sessions.items()
            if entry.stored.record.state is Created
            and entry.stored.record.created_at <= cutoff
            and (tenant_id is None or entry.stored.record.tenant_id == tenant_id)
        ][:limit]
        for session_id in doomed:
            del self._sessions[session_id]
        return len(doomed)

    async def ping(self) -> None:
        self._check_open()

    async def aclose(self) -> None:
        self._closed = True

    async def _create_tenant(self, tenant_id: TenantId) -> Tenant:
        self._check_open()
        if tenant_id in self._tenants:
            raise ConflictError(f"tenant {tenant_id} already exists")
        tenant = Tenant(tenant_id, self.clock())
        self._tenants[tenant_id] = tenant
        return tenant

    async def _get_tenant(self, tenant_id: TenantId) -> Tenant:
        self._check_open()
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            raise NotFoundError(f"no tenant {tenant_id}")
        return tenant

    async def list_tenants(self) -> list[Tenant]:
        self._check_open()
        return [self._tenants[t] for t in sorted(self._tenants)]

    async def _add_api_key(self, tenant_id: TenantId, key_id: str, key_hash: bytes) -> ApiKeyInfo:
        await self.get_tenant(tenant_id)
        if key_id in self._keys:
            raise ConflictError(f"API key id {key_id!r} already exists")
        info = ApiKeyInfo(key_id, tenant_id, key_hash, self.clock())
        self._keys[key_id] = info
        return info

    async def get_api_key(self, key_id: str) -> ApiKeyInfo | None:
        self._check_open()
        return self._keys.get(key_id)

    async def _list_api_keys(self, tenant_id: TenantId) -> list[ApiKeyInfo]:
        self._check_open()
        return sorted(
            (k for k in self._keys.values() if k.tenant_id == tenant_id),
            key=lambda k: (k.created_at, k.key_id),
        )

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        self._check_open()
        info = self._keys.get(key_id)
        if info is None:
            raise NotFoundError(f"no API key {key_id!r}")
        if info.revoked_at is None:
            info = replace(info, revoked_at=self.clock())
            self._keys[key_id] = info
        return info

    def _entry(self, tenant_id: TenantId, session_id: SessionId) -> _Entry:
        self._check_open()
        entry = self._sessions.get(session_id)
        if entry is None or entry.stored.record.tenant_id != tenant_id:
            raise NotFoundError(f"no session {session_id}")
        return entry

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("this store was closed; open a new one")


def _newest_first_key(stored: StoredSession) -> tuple[Timestamp, SessionId]:
    return (stored.record.created_at, stored.record.session_id)


def _matches(stored: StoredSession, tenant_id: TenantId, query: SessionQuery) -> bool:
    record = stored.record
    return (
        record.tenant_id == tenant_id
        and (query.state is None or record.state is query.state)
        and (query.provider_id is None or record.provider_id == query.provider_id)
        and (query.model is None or record.model == query.model)
        and (query.created_after is None or record.created_at > query.created_after)
        and (query.created_before is None or record.created_at < query.created_before)
    )
