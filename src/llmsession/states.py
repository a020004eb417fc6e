"""The four states of a session, as types.

Each state is a class used only as a type parameter (``Session[Active]``) and as a
runtime tag, like Rust's zero-sized state markers. Their ``name`` is what is stored
and shown.

    Created --activate--> Active --close--> Closed
                            |  ^
                            |  +-- record_delta (stays Active)
                            +--expire (TTL)--> SessionExpired
"""

from __future__ import annotations

from typing import ClassVar, final

from llmsession.errors import InvalidRecord

__all__ = [
    "ALL_STATES",
    "Active",
    "Closed",
    "Created",
    "SessionExpired",
    "SessionState",
    "state_named",
]


class SessionState:
    """Base of the state markers; never instantiated."""

    name: ClassVar[str]

    def __new__(cls) -> SessionState:
        raise TypeError(f"{cls.__name__} is a state marker, used as a type; it has no instances")


@final
class Created(SessionState):
    """Made, not yet activated: can only be activated."""

    name = "created"


@final
class Active(SessionState):
    """In use: can record deltas, be closed, or expire."""

    name = "active"


@final
class Closed(SessionState):
    """Closed normally. Terminal."""

    name = "closed"


@final
class SessionExpired(SessionState):
    """Expired because its TTL ran out. Terminal."""

    name = "expired"


ALL_STATES: tuple[type[SessionState], ...] = (Created, Active, Closed, SessionExpired)
_BY_NAME = {state.name: state for state in ALL_STATES}


def state_named(name: object) -> type[SessionState]:
    """The state whose stored name is ``name``; InvalidRecord for anything else."""
    state = _BY_NAME.get(name) if isinstance(name, str) else None
    if state is None:
        allowed = ", ".join(repr(s) for s in _BY_NAME)
        raise InvalidRecord(f"unknown session state {name!r}; allowed: {allowed}")
    return state
