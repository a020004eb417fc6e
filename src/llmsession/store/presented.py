"""What reads show: a session as of the read's time, not as of its last write.

An Active session whose idle deadline has passed is expired, whether or not a
sweeper has written that yet: a round or a close is already refused. So every
read (``get``, ``list_sessions``, ``totals``) shows such a session the way
``expire_if_due`` computes it, which is exactly the session the sweeper (or the
late round or close) will write: state expired, ``expired_at`` at the deadline,
the version the write will give it. Reads stay reads: nothing is written, so a
read costs no write lock or fsync, and the sweeper still does the writing.

The rule lives in the core, reached through :func:`expire_if_due`; the backends'
queries only narrow down with a predicate on the deadline which sessions to
hand to it (``deadline <= now``: due; every Active session has a deadline and no
other session has one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from llmsession.ids import SessionId
from llmsession.states import ALL_STATES
from llmsession.store.base import expire_if_due
from llmsession.store.models import GroupKey, SessionQuery, StoredSession, Totals
from llmsession.timestamps import Timestamp

__all__ = ["newest_first", "present", "present_totals", "shown_in"]


def present(stored: StoredSession, now: Timestamp) -> StoredSession:
    """``stored`` as a read at ``now`` shows it: the expired session if it is due
    (what ``expire_if_due`` computes and a sweeper will write), else itself."""
    expired = expire_if_due(stored, now)
    return stored if expired is None else expired


def shown_in(
    sessions: Iterable[StoredSession], now: Timestamp, query: SessionQuery
) -> list[StoredSession]:
    """``sessions`` presented at ``now``, keeping those in the query's state (all if none)."""
    shown = (present(stored, now) for stored in sessions)
    if query.state is None:
        return list(shown)
    return [stored for stored in shown if stored.record.state is query.state]


def newest_first(*listings: Iterable[StoredSession]) -> list[StoredSession]:
    """Sessions of several listings in page order (created_at, then id, descending),
    each once: a session swept between two reads may be in two of them, shown the
    same way in both."""
    unique: dict[SessionId, StoredSession] = {}
    for listing in listings:
        for stored in listing:
            unique.setdefault(stored.record.session_id, stored)
    return sorted(
        unique.values(),
        key=lambda stored: (stored.record.created_at, stored.record.session_id),
        reverse=True,
    )


def present_totals(
    totals: Sequence[Totals],
    due: Iterable[StoredSession],
    now: Timestamp,
    group_by: Sequence[GroupKey],
) -> list[Totals]:
    """``totals`` as stored, with each session of ``due`` counted as a read at ``now``
    shows it instead of as stored.

    ``due`` holds the tenant's sessions due at ``now`` (others are left as they
    are), read in the same snapshot as ``totals``: each is taken out of its
    group's figures as stored and put back as :func:`present` shows it.
    """
    groups = {(group.provider_id, group.model): group for group in totals}
    for stored in due:
        shown = present(stored, now)
        if shown is stored:
            continue
        before, after = stored.record, shown.record
        key = (
            before.provider_id if "provider" in group_by else None,
            before.model if "model" in group_by else None,
        )
        group = groups.get(key) or Totals(key[0], key[1], {state.name: 0 for state in ALL_STATES})
        sessions = dict(group.sessions)
        sessions[before.state.name] -= 1
        sessions[after.state.name] += 1
        # Everything else (the usage) is the same for the session as presented.
        groups[key] = replace(
            group,
            sessions=sessions,
            rounds=group.rounds - before.round_count + after.round_count,
            delta_tokens=group.delta_tokens - before.delta_tokens + after.delta_tokens,
            tokens_saved=group.tokens_saved - before.tokens_saved + after.tokens_saved,
        )
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0] or "", k[1] or ""))]
