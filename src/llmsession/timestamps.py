"""Timestamp: a point in time, always timezone-aware UTC, exact to the microsecond."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Self, final

from llmsession.errors import InvalidTimestamp

__all__ = ["Timestamp"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The same instant without a zone, for formatting in UTC with a "Z".
_EPOCH_NAIVE = datetime(1970, 1, 1)
_MIN_MICROS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_MAX_MICROS = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // timedelta(
    microseconds=1
)


@final
@dataclass(frozen=True, slots=True)
class Timestamp:
    """Microseconds since the Unix epoch, UTC.

    An integer rather than a ``datetime`` so that it round-trips exactly through
    every backend (PostgreSQL keeps microseconds, Redis sorted-set scores are
    doubles, exact up to 2**53) and compares cheaply. Build one from an aware
    ``datetime`` with :meth:`from_datetime`; a naive one is refused, since its
    meaning depends on the machine that reads it.
    """

    epoch_micros: int

    def __post_init__(self) -> None:
        if type(self.epoch_micros) is not int:
            raise InvalidTimestamp(
                f"Timestamp needs integer microseconds since the epoch, "
                f"got {type(self.epoch_micros).__name__} {self.epoch_micros!r}"
            )
        if not _MIN_MICROS <= self.epoch_micros <= _MAX_MICROS:
            raise InvalidTimestamp(f"Timestamp {self.epoch_micros} is outside the years 1 to 9999")

    @classmethod
    def from_datetime(cls, moment: datetime) -> Self:
        """The instant of an aware datetime; naive datetimes raise InvalidTimestamp."""
        if not isinstance(moment, datetime):
            raise InvalidTimestamp(
                f"expected a timezone-aware datetime, got {type(moment).__name__}"
            )
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise InvalidTimestamp(
                f"naive datetime {moment.isoformat()} has no timezone; "
                "pass an aware one, e.g. datetime.now(UTC)"
            )
        return cls((moment - _EPOCH) // timedelta(microseconds=1))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse ISO 8601 with an explicit offset (``Z`` or ``+hh:mm``)."""
        if not isinstance(text, str):
            raise InvalidTimestamp(f"expected an ISO 8601 string, got {type(text).__name__}")
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidTimestamp(
                f"{text!r} is not an ISO 8601 timestamp such as '2026-01-31T12:00:00Z'"
            ) from None
        if moment.tzinfo is None or moment.utcoffset() is None:
            # Text comes from the wire: the advice is text too, not a Python call.
            raise InvalidTimestamp(
                f"{text!r} has no timezone; end it with Z or an offset, "
                "e.g. '2026-01-31T12:00:00Z' or '2026-01-31T13:00:00+01:00'"
            )
        return cls.from_datetime(moment)

    def to_datetime(self) -> datetime:
        """This instant as an aware datetime in UTC."""
        return _EPOCH + timedelta(microseconds=self.epoch_micros)

    def isoformat(self) -> str:
        """ISO 8601 in UTC with microseconds and a ``Z``, e.g. 2026-01-31T12:00:00.000000Z."""
        # Not strftime: its %Y gives "191" for the year 191, which is not ISO 8601.
        moment = _EPOCH_NAIVE + timedelta(microseconds=self.epoch_micros)
        return moment.isoformat(timespec="microseconds") + "Z"

    def plus_seconds(self, seconds: float) -> Timestamp:
        """The instant ``seconds`` later (earlier if negative)."""
        return Timestamp(self.epoch_micros + round(seconds * 1_000_000))

    def __str__(self) -> str:
        return self.isoformat()

    # Compared several times in every write (is it due? which came last?):
    # written out, as the generated methods compare tuples. Only to Timestamps.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timestamp):
            return NotImplemented
        return self.epoch_micros == other.epoch_micros

    def __hash__(self) -> int:
        return hash(self.epoch_micros)

    def __lt__(self, other: Timestamp) -> bool:
        if other.__class__ is not Timestamp:
            return NotImplemented
        return self.epoch_micros < other.epoch_micros

    def __le__(self, other: Timestamp) -> bool:
        if other.__class__ is not Timestamp:
            return NotImplemented
        return self.epoch_micros <= other.epoch_micros

    def __gt__(self, other: Timestamp) -> bool:
        if other.__class__ is not Timestamp:
            return NotImplemented
        return self.epoch_micros > other.epoch_micros

    def __ge__(self, other: Timestamp) -> bool:
        if other.__class__ is not Timestamp:
            return NotImplemented
        return self.epoch_micros >= other.epoch_micros
