"""Pricing what a store reads: rounds and totals with their cost at the configured prices.

Costs are computed when read, with the prices configured at that moment, and
are never stored: a store keeps the usage the provider billed, which does not
change, while prices do (an operator who changes a price sees every past round
at the new one). The server and the CLI both price through here, so the HTTP
API and ``llmsession stats --json`` agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from llmsession.cost import PriceTable, TokenCounts, combined_cost
from llmsession.ids import TenantId
from llmsession.store.base import SessionStore
from llmsession.store.models import GroupKey, Round, Totals, check_group_by

__all__ = ["price_rounds", "priced_totals"]

_FINEST: tuple[GroupKey, ...] = ("provider", "model")


def price_rounds(
    rounds: Iterable[Round], prices: PriceTable, provider_id: str, model: str
) -> list[Round]:
    """The rounds of one session (of ``provider_id`` and ``model``), each with its cost.

    A round without usage (a ledger round, or a gateway round whose provider sent
    none) has no cost; nor has any round of a model without a price.
    """
    return [
        replace(r, cost=None if r.usage is None else prices.cost(provider_id, model, r.usage))
        for r in rounds
    ]


async def priced_totals(
    store: SessionStore, tenant_id: TenantId, group_by: Sequence[GroupKey], prices: PriceTable
) -> list[Totals]:
    """``store.totals(tenant_id, group_by)``, each group with its cost.

    A group mixes models when it is not grouped by both provider and model, and
    each model has its own price: its cost is the sum of its models' costs, read
    from the totals per provider and model. A group without billed tokens, or
    with billed tokens of a model without a price, has no cost.
    """
    groups = await store.totals(tenant_id, group_by)
    if not prices:
        return groups
    keys = check_group_by(group_by)
    # Two reads, not one summed here: the store alone adds totals up. A round
    # recorded between them shows in one read only, until the next request.
    finest = groups if set(keys) == set(_FINEST) else await store.totals(tenant_id, _FINEST)
    parts: dict[tuple[str | None, str | None], list[tuple[str, str, TokenCounts]]] = {}
    for fine in finest:
        if fine.provider_id is None or fine.model is None:
            continue  # not produced by a grouping by both keys
        key = (
            fine.provider_id if "provider" in keys else None,
            fine.model if "model" in keys else None,
        )
        parts.setdefault(key, []).append((fine.provider_id, fine.model, fine.usage))
    return [
        replace(group, cost=combined_cost(prices, parts.get((group.provider_id, group.model), ())))
        for group in groups
    ]
