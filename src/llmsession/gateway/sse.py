"""Server-sent events, sans-IO: bytes in, events out, and each event's own bytes.

The gateway passes a provider's stream through as it arrives, so an event must
be forwarded byte for byte as the provider sent it, while its fields are parsed
on the side for usage. :class:`SSEDecoder` therefore gives each event with the
exact bytes it was made of (``raw``), up to and including the blank line that
ended it. The parsing follows the WHATWG "event stream interpretation": lines
end in CRLF, LF or CR; ``data`` lines join with LF; a line starting with ``:``
is a comment; a field name without a colon has an empty value; one leading
space of a value is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["SSEDecoder", "SSEEvent", "encode_event"]

_DATA: Final = b"data: "
_EVENT: Final = b"event: "

_BOM: Final = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its fields, and the bytes it arrived as."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    #: The event exactly as received, comments and the closing blank line included.
    raw: bytes = b""


class SSEDecoder:
    """Feed bytes as they arrive; get every event completed by them.

    Comment-only blocks (``: keep-alive``) complete no event, but their bytes
    stay in the next event's ``raw`` so nothing is lost in pass-through; call
    :meth:`pending` to forward bytes that are not yet part of an event.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._raw = bytearray()
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._has_fields = False
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode ``chunk``; return the events it completed, in order."""
        if not self._started:
            first = self._start(chunk)
            if first is None:
                return []
            chunk = first
        data = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        start = 0
        length = len(data)
        # Without a CR every line ends at an LF, as providers send them.
        lf_only = b"\r" not in data
        while start < length:
            if lf_only and not self._raw:
                # Between events, the kinds providers send (one ``data: `` line, or an
                # ``event: `` line and one ``data: `` line) are cut out whole;
                # anything else is read line by line below.
                end = data.find(b"\n\n", start)
                if end != -1:
                    line = data.find(b"\n", start, end)
                    if line == -1:
                        if data.startswith(_DATA, start):
                            value = data[start + 6 : end].decode("utf-8", errors="replace")
                            events.append(
                                SSEEvent(value, None, self._id, None, data[start : end + 2])
                            )
                            start = end + 2
                            continue
                    elif (
                        data.startswith(_EVENT, start)
                        and data.startswith(_DATA, line + 1)
                        and data.find(b"\n", line + 1, end) == -1
                    ):
                        name = data[start + 7 : line].decode("utf-8", errors="replace")
                        value = data[line + 7 : end].decode("utf-8", errors="replace")
                        events.append(SSEEvent(value, name, self._id, None, data[start : end + 2]))
                        start = end + 2
                        continue
            cr = data.find(b"\r", start)
            lf = data.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, next_start = lf, lf + 1
            elif cr + 1 < length:
                end = cr
                next_start = cr + 2 if data[cr + 1 : cr + 2] == b"\n" else cr + 1
            else:
                # A CR that ends the chunk waits for the next byte: an LF there belongs
                # to the same line ending, and so to the same event's bytes.
                break
            self._raw += data[start:next_start]
            event = self._line(data[start:end].decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
            start = next_start
        self._buffer = data[start:]
        return events

    def feed_data(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """As :meth:`feed`, for a reader of ``data`` alone: each event as its data and
        its raw bytes. The data is bytes as they came, so not always UTF-8: read
        them with ``errors="replace"`` to get :attr:`SSEEvent.data`.

        Events of a single ``data: `` line each, one after another from an event's
        start, are cut out of the bytes as they are, without an :class:`SSEEvent`
        or a decoding: that is how Chat Completions streams, event after event.
        """
        if not self._started:
            first = self._start(chunk)
            if first is None:
                return []
            chunk = first
        if self._raw:
            return [(event.data.encode(), event.raw) for event in self.feed(chunk)]
        data = self._buffer + chunk if self._buffer else chunk
        if b"\r" in data:
            self._buffer = b""
            return [(event.data.encode(), event.raw) for event in self.feed(data)]
        parts = data.split(b"\n\n")
        # What follows the last blank line: an event not complete yet, or nothing.
        end = len(data) - len(parts.pop())
        count = len(parts)
        events: list[tuple[bytes, bytes]]
        # Counted in the bytes at once rather than checked part by part: every LF
        # is in a blank line (no event has two lines), and every event starts with
        # "data: " (the first, and every one after a blank line).
        if (
            data.count(b"\n", 0, end) == 2 * count
            and data.count(b"\n\ndata: ", 0, end) + data.startswith(_DATA) == count
        ):
            events = [(part[6:], part + b"\n\n") for part in parts]
            start = end
        else:
            events = []
            start = 0
            for part in parts:
                if part[:6] != _DATA or b"\n" in part:
                    break
                events.append((part[6:], part + b"\n\n"))
                start += len(part) + 2
        self._buffer = b""
        if start < len(data):
            # The rest: another kind of event, or one that is not complete yet.
            if start == end:
                self._buffer = data[start:]
            else:
                events.extend(
                    (event.data.encode(), event.raw)
                    for event in self.feed(data[start:] if start else data)
                )
        return events

    def _start(self, chunk: bytes) -> bytes | None:
        """The stream's first bytes: a UTF-8 BOM is dropped from the data (kept in the
        raw bytes); None while they could still be the start of one."""
        self._buffer += chunk
        if len(self._buffer) < len(_BOM) and _BOM.startswith(self._buffer):
            return None
        self._started = True
        chunk, self._buffer = self._buffer, b""
        if chunk.startswith(_BOM):
            self._raw += _BOM
            chunk = chunk[len(_BOM) :]
        return chunk

    def close(self) -> list[SSEEvent]:
        """The stream ended: a final CR completes its line; return any event that completed.

        An event without its closing blank line is never dispatched (the spec
        discards it): a cut stream does not end in a half event.
        """
        line = self._buffer
        if not line.endswith(b"\r"):
            return []
        # The CR that feed kept waiting for an LF: no LF is coming, so it ends its
        # line alone, and the event's bytes are the stream's (no LF made up for it).
        # Lines before it were read, so the buffer is this one line.
        self._buffer = b""
        self._raw += line
        event = self._line(line[:-1].decode("utf-8", errors="replace"))
        return [] if event is None else [event]

    def pending(self) -> bytes:
        """Bytes received that belong to no completed event yet (complete lines only)."""
        return bytes(self._raw)

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._has_fields = True
        elif name == "event":
            self._event = value
            self._has_fields = True
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self._has_fields = True
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
            self._has_fields = True
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._has_fields:
            return None
        event = SSEEvent(
            data="\n".join(self._data),
            event=self._event,
            id=self._id,
            retry=self._retry,
            raw=bytes(self._raw),
        )
        self._raw.clear()
        self._data = []
        self._event = None
        self._retry = None
        self._has_fields = False
        return event


def encode_event(data: str, *, event: str | None = None) -> bytes:
    """One event as bytes, ``data`` split into lines as the format requires."""
    lines = [] if event is None else [f"event: {event}"]
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()
