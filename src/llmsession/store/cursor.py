"""Opaque page cursors for listing sessions newest first.

A cursor is the (created_at, session_id) of the last item served: keyset
pagination, so sessions created meanwhile (all newer) never shift a page.
"""

from __future__ import annotations

import base64
import binascii
import uuid

from llmsession.errors import InvalidInput
from llmsession.ids import SessionId
from llmsession.timestamps import Timestamp

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(created_at: Timestamp, session_id: SessionId) -> str:
    """The cursor that continues after the session with these keys."""
    raw = f"{created_at.epoch_micros}:{session_id.value.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Timestamp, SessionId]:
    """The keys a cursor continues after; InvalidInput if it was not made by encode_cursor."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        micros, hex_id = base64.urlsafe_b64decode(padded.encode()).decode().split(":")
        return Timestamp(int(micros)), SessionId(uuid.UUID(hex=hex_id))
    except (ValueError, binascii.Error, InvalidInput, UnicodeError):
        raise InvalidInput(
            f"cursor {cursor[:80]!r} is not one this service gave out; "
            "pass the next_cursor of the previous page, or none for the first page"
        ) from None
