"""The idle-TTL policy: when an Active session's time runs out.

Pure functions over values; stores and the sweeper call them so that every
backend agrees, to the microsecond, on which sessions are due.
"""

from __future__ import annotations

from llmsession.errors import InvalidInput
from llmsession.record import SessionRecord
from llmsession.states import Active
from llmsession.timestamps import Timestamp

__all__ = [
    "MAX_TTL_SECONDS",
    "RENEWAL_MARGIN_SECONDS",
    "check_ttl",
    "deadline_of",
    "renewal_margin_seconds",
]

#: Ten years: long enough for any real session, short enough to stay a valid Timestamp.
MAX_TTL_SECONDS = 10 * 366 * 24 * 3600


def check_ttl(ttl_seconds: object) -> int:
    """Return ``ttl_seconds`` if it is a whole number of seconds from 1 to MAX_TTL_SECONDS."""
    if type(ttl_seconds) is not int or not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidInput(
            f"ttl_seconds must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}, "
            f"got {ttl_seconds!r}"
        )
    return ttl_seconds


def deadline_of(
    record: SessionRecord, last_activity_at: Timestamp, ttl_seconds: int
) -> Timestamp | None:
    """When an Active session idle since ``last_activity_at`` expires; None in other states.

    A session is due once ``now >= deadline``; its expired_at is the deadline
    itself, not the moment a sweeper happened to notice.
    """
    if record.state is not Active:
        return None
    return last_activity_at.plus_seconds(ttl_seconds)


#: How long before its deadline a session whose gateway turn is under way renews its
#: TTL (half the TTL if that is shorter).
RENEWAL_MARGIN_SECONDS = 5


def renewal_margin_seconds(ttl_seconds: int) -> float:
    """How long before its deadline a session whose gateway turn is still under way
    renews its idle TTL: RENEWAL_MARGIN_SECONDS, or half the TTL if that is shorter.

    A session is not idle while its provider answers, but only a write moves its
    deadline. A turn that ends before this never pays one (its round moves the
    deadline); a longer one renews each time its deadline comes this near, so
    neither a sweeper nor a read ever finds the session due under a turn.
    """
    return min(ttl_seconds / 2, RENEWAL_MARGIN_SECONDS)
