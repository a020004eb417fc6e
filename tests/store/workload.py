"""Steps of the random workloads that compare a store with the memory store."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from llmsession.clock import ManualClock
from llmsession.ids import SessionId, TenantId
from llmsession.store import SessionStore, StoredSession
from llmsession.store.models import Turn
from llmsession.tokens import MAX_TOKENS
from llmsession.usage import Usage


async def start_alike(
    rng: random.Random,
    clock: ManualClock,
    stores: Sequence[SessionStore],
    tenants: Sequence[TenantId],
    gateway_round: Callable[[int], tuple[Usage | None, Turn | None]],
) -> tuple[TenantId, list[StoredSession]]:
    """The same new session in every store: a quarter started by a gateway turn
    (the usage and turn ``gateway_round`` makes of the drawn initial tokens), the
    rest created by the ledger."""
    tenant = rng.choice(tenants)
    provider, model = rng.choice(["p1", "p2"]), rng.choice(["m1", "m2", "m3"])
    initial = rng.choice([0, 7, 1000, 2**40, MAX_TOKENS])
    ttl = rng.choice([None, 5, 60])
    if rng.random() < 0.25:
        usage, turn = gateway_round(initial)
        made = [
            (
                await s.start_with_turn(
                    tenant, SessionId.generate(clock()), provider_id=provider,
                    model=model, turn=turn, usage=usage, ttl_seconds=ttl,
                )
            ).session
            for s in stores
        ]  # fmt: skip
    else:
        made = [
            await s.create(
                tenant, provider_id=provider, model=model, initial_tokens=initial,
                ttl_seconds=ttl,
            )
            for s in stores
        ]  # fmt: skip
    # Distinct creation times: the stores' ids differ, so ties would not order alike.
    clock.advance(0.000001)
    return tenant, made
