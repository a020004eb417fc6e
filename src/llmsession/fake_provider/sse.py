"""Server-sent events as the fake streams them, with what each event has produced."""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["Frame", "data_frame", "done_frame", "event_frame"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One event's bytes; ``produced``: output tokens generated once it is sent (reasoning
    included); ``final``: it reports the end (usage, ``[DONE]``), so a cut never sends it.
    """

    data: bytes
    produced: int
    final: bool = False


def _json(payload: object) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def data_frame(payload: object, *, produced: int, final: bool = False) -> Frame:
    """A ``data:`` line alone, as Chat Completions streams."""
    return Frame(f"data: {_json(payload)}\n\n".encode(), produced, final)


def event_frame(name: str, payload: object, *, produced: int, final: bool = False) -> Frame:
    """An ``event:`` line and a ``data:`` line, as the Responses API streams."""
    return Frame(f"event: {name}\ndata: {_json(payload)}\n\n".encode(), produced, final)


def done_frame(*, produced: int) -> Frame:
    return Frame(b"data: [DONE]\n\n", produced, final=True)
