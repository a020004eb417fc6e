"""What is particular to the memory store (everything else is in the conformance suite)."""

from __future__ import annotations

import pytest

from llmsession import NotFoundError, TenantId
from llmsession.clock import ManualClock
from llmsession.store import open_store


async def test_each_memory_url_opens_a_store_of_its_own(clock: ManualClock) -> None:
    # Documented (docs/stores.md, open_store): every other URL shares its data.
    acme = TenantId("acme")
    first = await open_store("memory://", clock=clock)
    second = await open_store("memory://", clock=clock)
    created = await first.create(acme, provider_id="openai", model="gpt-4o", initial_tokens=10)
    with pytest.raises(NotFoundError):
        await second.get(acme, created.record.session_id)
    assert await second.totals(acme) == []
    assert (await first.get(acme, created.record.session_id)) == created
