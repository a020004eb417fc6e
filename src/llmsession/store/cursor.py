"""Opaque page cursors: what a listing's ``next_cursor`` holds and takes back.

Both listings page by keyset, so items added meanwhile never shift a page:

- sessions, newest first: the (created_at, session_id) of the last session served
  (sessions created meanwhile are all newer);
- a session's rounds, in order: the session and the seq of the last round served
  (rounds recorded meanwhile all come later).

A cursor is URL-safe base64 text; its content is no part of the API. Each
listing takes back only its own cursors, and a rounds cursor only for its own
session, so a cursor passed to the wrong call is refused instead of read as
something else.
"""

from __future__ import annotations

import base64
import binascii
import uuid

from llmsession.errors import InvalidInput
from llmsession.ids import SessionId
from llmsession.timestamps import Timestamp
from llmsession.tokens import MAX_TOKENS

__all__ = ["decode_cursor", "decode_rounds_cursor", "encode_cursor", "encode_rounds_cursor"]

# Starts every rounds cursor: a sessions cursor starts with a number, so neither
# is ever read as the other.
_ROUNDS = "r"


def encode_cursor(created_at: Timestamp, session_id: SessionId) -> str:
    """The sessions cursor that continues after the session with these keys."""
    return _encode(f"{created_at.epoch_micros}:{session_id.value.hex}")


def decode_cursor(cursor: str) -> tuple[Timestamp, SessionId]:
    """The keys a sessions cursor continues after; InvalidInput if encode_cursor did not
    make it."""
    try:
        micros, hex_id = _decode(cursor).split(":")
        return Timestamp(int(micros)), SessionId(uuid.UUID(hex=hex_id))
    except (ValueError, binascii.Error, InvalidInput, UnicodeError, TypeError):
        pass
    if _rounds_parts(cursor) is not None:
        raise InvalidInput(
            f"cursor {cursor[:80]!r} continues a listing of rounds, not of sessions; "
            "pass the next_cursor of the previous page of sessions, or none for the first page"
        )
    raise _not_ours(cursor, "sessions")


def encode_rounds_cursor(session_id: SessionId, seq: int) -> str:
    """The rounds cursor that continues after round ``seq`` of ``session_id``."""
    return _encode(f"{_ROUNDS}:{session_id.value.hex}:{seq}")


def decode_rounds_cursor(cursor: str, session_id: SessionId) -> int:
    """The seq a rounds cursor of ``session_id`` continues after.

    InvalidInput if encode_rounds_cursor did not make it, or made it for another session.
    """
    parts = _rounds_parts(cursor)
    if parts is None:
        if isinstance(cursor, str) and _is_sessions_cursor(cursor):
            raise InvalidInput(
                f"cursor {cursor[:80]!r} continues a listing of sessions, not of rounds; "
                "pass the next_cursor of the previous page of rounds, or none for the first page"
            )
        raise _not_ours(cursor, "rounds")
    owner, seq = parts
    if owner != session_id:
        raise InvalidInput(
            f"cursor {cursor[:80]!r} continues the rounds of session {owner}, not of "
            f"{session_id}; pass the next_cursor of the previous page of this session's rounds"
        )
    return seq


def _rounds_parts(cursor: object) -> tuple[SessionId, int] | None:
    try:
        kind, hex_id, seq_text = _decode(cursor).split(":")
        seq = int(seq_text)
        if kind != _ROUNDS or not seq_text.isdigit() or not 1 <= seq <= MAX_TOKENS:
            return None
        return SessionId(uuid.UUID(hex=hex_id)), seq
    except (ValueError, binascii.Error, InvalidInput, UnicodeError, TypeError):
        return None


def _is_sessions_cursor(cursor: str) -> bool:
    try:
        decode_cursor(cursor)
    except InvalidInput:
        return False
    return True


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: object) -> str:
    if not isinstance(cursor, str):
        raise TypeError("a cursor is a string")
    padded = cursor + "=" * (-len(cursor) % 4)
    return base64.urlsafe_b64decode(padded.encode()).decode()


def _not_ours(cursor: object, listing: str) -> InvalidInput:
    shown = cursor[:80] if isinstance(cursor, str) else cursor
    return InvalidInput(
        f"cursor {shown!r} is not one this service gave out for a page of {listing}; "
        f"pass the next_cursor of the previous page of {listing}, or none for the first page"
    )
