"""Small builders for core tests."""

from __future__ import annotations

from llmsession import Active, Session, SessionId, SessionRecord, TenantId, Timestamp

T0 = Timestamp(1_764_000_000_000_000)


def at(seconds: float) -> Timestamp:
    """T0 plus ``seconds``."""
    return T0.plus_seconds(seconds)


def created_record(initial_tokens: int = 1000, **changes: object) -> SessionRecord:
    fields: dict[str, object] = {
        "session_id": SessionId.generate(T0),
        "tenant_id": TenantId("acme"),
        "provider_id": "openai",
        "model": "gpt-4o",
        "initial_tokens": initial_tokens,
        "created_at": T0,
    }
    fields.update(changes)
    return SessionRecord(**fields)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def active_session(initial_tokens: int = 1000) -> Session[Active]:
    return Session.new(created_record(initial_tokens)).activate(at(1))
