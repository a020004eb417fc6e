"""The row codecs the SQL backends share: what they write is what they read back."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest

from llmsession.ids import SessionId, TenantId
from llmsession.record import SessionRecord
from llmsession.states import Active, Closed, Created, SessionExpired
from llmsession.store.models import NO_USAGE, Round, StoredSession, UsageTotals
from llmsession.store.sql_rows import (
    insert_values,
    round_usage_values,
    stored_from_row,
    usage_from_round_row,
    usage_totals_from_row,
)
from llmsession.timestamps import Timestamp
from llmsession.usage import Usage
from tests.store.conftest import T0

_RAW: dict[str, Any] = {
    "prompt_tokens": 1234,
    "note": 'café ✓ \u2028 "quoted" \\ back\nslash',
    "ratio": 0.1,
    "big": 2**70,
    "nested": {"list": [1, None, True, False, -0.5, {"z": []}], "empty": {}},
}


@pytest.mark.parametrize(
    "raw", [_RAW, MappingProxyType(_RAW), {}], ids=["dict", "mapping", "empty"]
)
def test_round_usage_is_stored_as_json_dumps_writes_it(raw: Any) -> None:
    usage = Usage(input_tokens=1234, cached_input_tokens=1000, output_tokens=5, raw=raw)
    values = round_usage_values(Round(SessionId.generate(T0), 1, 234, T0, None, usage, True))
    text = values[-1]
    assert text == json.dumps(dict(raw), ensure_ascii=False, separators=(",", ":"))
    assert usage_from_round_row(values, 0) == (True, usage)
    assert json.loads(text) == dict(raw)


def _records() -> list[SessionRecord]:
    created = SessionRecord.new(
        session_id=SessionId.generate(T0),
        tenant_id=TenantId("acme"),
        provider_id="openai",
        model="gpt-4o",
        initial_tokens=1000,
        created_at=T0,
    )
    later = T0.plus_seconds(5)
    common: dict[str, Any] = {
        "session_id": created.session_id,
        "tenant_id": created.tenant_id,
        "provider_id": "openai",
        "model": "gpt-4o",
        "initial_tokens": 1000,
        "created_at": T0,
        "activated_at": T0.plus_seconds(1),
        "round_count": 3,
        "delta_tokens": 120,
    }
    return [
        created,
        SessionRecord(state=Active, **common),
        SessionRecord(state=Closed, closed_at=later, **common),
        SessionRecord(state=SessionExpired, expired_at=later, **common),
    ]


@pytest.mark.parametrize("record", _records(), ids=lambda r: r.state.name)
def test_a_session_row_reads_back_as_written(record: SessionRecord) -> None:
    usage = UsageTotals(10, 4, 0, 7, 0, 1) if record.state is not Created else NO_USAGE
    stored = StoredSession(record, 7, 3600, Timestamp(T0.epoch_micros + 9), usage)
    values = insert_values(stored, b"id")
    # insert_values' order, as SESSION_COLUMNS and the usage columns read it.
    row = (
        *values[0:5],
        values[7],
        values[5],
        *values[8:13],
        values[14],
        values[6],
        values[15],
        *usage.as_tuple(),
    )
    back = stored_from_row(row, record.session_id, usage_totals_from_row(row, 15))
    assert back == stored
    assert back.deadline == stored.deadline
