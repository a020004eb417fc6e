"""Nanoseconds per Session operation, against a plain slotted dataclass in the same run.

Run:  .venv/bin/python bench/core_session.py [--repeat 7] [--number 200000]

record_delta is compared with a slotted dataclass doing the same two increments
without any check, both through a method call and inline (``c.n += 1`` with no
call at all); the goal is record_delta within 3x of the bare increments. The
baseline for a transition is building a new slotted dataclass with the same
fields (what an unchecked state change costs).
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
from dataclasses import dataclass, replace

from llmsession import Session, SessionId, SessionRecord, TenantId, Timestamp

T0 = Timestamp(1_764_000_000_000_000)
T1 = T0.plus_seconds(1)
T2 = T0.plus_seconds(2)


@dataclass(slots=True)
class PlainCounter:
    round_count: int = 0
    delta_tokens: int = 0

    def record_delta(self, delta_tokens: int) -> None:
        self.round_count += 1
        self.delta_tokens += delta_tokens


@dataclass(frozen=True, slots=True)
class PlainSession:
    session_id: str
    tenant_id: str
    provider_id: str
    model: str
    initial_tokens: int
    created_at: int
    state: str
    activated_at: int | None = None
    closed_at: int | None = None
    round_count: int = 0
    delta_tokens: int = 0


def record() -> SessionRecord:
    return SessionRecord.new(
        session_id=SessionId.generate(T0),
        tenant_id=TenantId("bench"),
        provider_id="openai",
        model="gpt-4o",
        initial_tokens=1200,
        created_at=T0,
    )


def best_ns(stmt: str, setup: str, number: int, repeat: int, env: dict[str, object]) -> float:
    timer = timeit.Timer(stmt, setup, globals=env)
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    env: dict[str, object] = {
        "Session": Session,
        "PlainCounter": PlainCounter,
        "PlainSession": PlainSession,
        "replace": replace,
        "record": record,
        "T1": T1,
        "T2": T2,
    }
    n, r = args.number, args.repeat
    rows: list[tuple[str, float, float]] = []

    baseline = best_ns("c.record_delta(17)", "c = PlainCounter()", n, r, env)
    inline = best_ns("c.round_count += 1; c.delta_tokens += 17", "c = PlainCounter()", n, r, env)
    ours = best_ns("s.record_delta(17)", "s = Session.new(record()).activate(T1)", n, r, env)
    rows.append(("record_delta vs method", ours, baseline))
    rows.append(("record_delta vs inline +=", ours, inline))

    # Transitions consume their handle, so each timing builds a fresh chain.
    plain_transition = best_ns(
        "replace(p, state='active', activated_at=1)",
        "p = PlainSession('id', 't', 'p', 'm', 1200, 0, 'created')",
        n // 10,
        r,
        env,
    )
    activate = best_ns(
        "Session.new(rec).activate(T1)", "rec = record()", n // 10, r, env
    ) - best_ns("Session.new(rec)", "rec = record()", n // 10, r, env)
    close = best_ns(
        "Session.new(rec).activate(T1).close(T2)", "rec = record()", n // 10, r, env
    ) - best_ns("Session.new(rec).activate(T1)", "rec = record()", n // 10, r, env)
    rows.append(("activate", activate, plain_transition))
    rows.append(("close", close, plain_transition))

    print(f"# Python {platform.python_version()} on {platform.machine()}, {sys.platform}")
    print(f"{'operation':30} {'ns/op':>9} {'baseline ns':>12} {'ratio':>7}")
    for name, value, base in rows:
        print(f"{name:30} {value:9.1f} {base:12.1f} {value / base:6.2f}x")


if __name__ == "__main__":
    main()
