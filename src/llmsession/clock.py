"""Clocks: where the service reads the time. The core never does; stores are handed one."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeAlias

from llmsession.timestamps import Timestamp

__all__ = ["Clock", "ManualClock", "system_clock"]

Clock: TypeAlias = Callable[[], Timestamp]
"""A callable that returns the current time."""


def system_clock() -> Timestamp:
    """The machine's wall clock, in UTC."""
    return Timestamp(time.time_ns() // 1000)


class ManualClock:
    """A clock that moves only when told to: for tests and simulations."""

    def __init__(self, start: Timestamp) -> None:
        self.now = start

    def __call__(self) -> Timestamp:
        return self.now

    def advance(self, seconds: float) -> Timestamp:
        """Move the clock forward by ``seconds`` and return the new time."""
        self.now = self.now.plus_seconds(seconds)
        return self.now
