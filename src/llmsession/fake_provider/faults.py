"""Fault modes: what the next provider requests suffer, set through ``POST /_fake/faults``.

Faults wait in a queue in the order they were set. Each provider request (a chat
completion, a response, a message or a Gemini generation; the ``/_fake`` routes
never) takes
one unit of the first fault whose ``endpoint`` matches it, and a fault is gone
after ``count`` requests. Gemini's ``cachedContents`` requests take only faults
that name ``"endpoint": "cachedContents"``.

Modes:

- ``500``: a 500 ``server_error`` answer; nothing is billed.
- ``429``: a 429 ``rate_limit_exceeded`` answer with ``Retry-After``
  (``retry_after_seconds``); nothing is billed.
- ``slow``: waits ``delay_seconds`` before answering, and ``event_delay_seconds``
  between the events of a stream; then answers normally.
- ``cut``: a stream stops after ``after_events`` events and the connection closes
  without the end of the body (no usage, no ``[DONE]``, no ``response.completed``);
  a non-stream answer breaks off in the middle of its body. Billed as not completed.
- ``no_usage``: a stream ends normally but without usage (no usage chunk; a null
  ``usage`` in ``response.completed``); a non-stream answer has ``usage: null``.
- ``forget_responses``: every stored response is forgotten before the request is
  served, so a ``previous_response_id`` then answers ``previous_response_not_found``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Final, Literal, cast, get_args

from llmsession.fake_provider.billing import Endpoint
from llmsession.fake_provider.errors import (
    ProviderError,
    invalid_request,
    rate_limited,
    server_error,
)

__all__ = [
    "FAULT_MODES",
    "MAX_DELAY_SECONDS",
    "Fault",
    "FaultMode",
    "FaultQueue",
    "fault_error",
    "parse_fault",
]

FaultMode = Literal["500", "429", "slow", "cut", "no_usage", "forget_responses"]
FAULT_MODES: Final[tuple[str, ...]] = get_args(FaultMode)
_ENDPOINTS: Final[tuple[str, ...]] = get_args(Endpoint)
_FIELDS: Final = frozenset(
    {
        "mode",
        "count",
        "endpoint",
        "delay_seconds",
        "event_delay_seconds",
        "after_events",
        "retry_after_seconds",
    }
)
#: The longest wait a fault may ask for: a fault should slow a test, not hang it.
MAX_DELAY_SECONDS: Final = 300.0


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault and how many more requests it applies to."""

    mode: FaultMode
    count: int = 1
    endpoint: Endpoint | None = None
    delay_seconds: float = 1.0
    event_delay_seconds: float = 0.0
    after_events: int = 2
    retry_after_seconds: float = 1.0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _number(body: Mapping[str, object], name: str, default: float, *, low: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid_request(f"{name} must be a number, got {value!r}", param=name)
    if not low <= value <= MAX_DELAY_SECONDS:
        raise invalid_request(
            f"{name} must be from {low} to {MAX_DELAY_SECONDS:g}, got {value}", param=name
        )
    return float(value)


def _count(body: Mapping[str, object], name: str, default: int, *, low: int) -> int:
    value = body.get(name, default)
    if type(value) is not int or value < low:
        raise invalid_request(
            f"{name} must be an integer of at least {low}, got {value!r}", param=name
        )
    return value


def parse_fault(body: object) -> Fault:
    """The fault a ``POST /_fake/faults`` body asks for; ProviderError (400) says what is wrong."""
    if not isinstance(body, dict):
        raise invalid_request('the body must be a JSON object such as {"mode": "500"}')
    fields = cast(dict[str, object], body)
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise invalid_request(
            f"unknown fault field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FIELDS))}"
        )
    mode = fields.get("mode")
    if mode not in FAULT_MODES:
        raise invalid_request(
            f"mode must be one of {', '.join(FAULT_MODES)}, got {mode!r}", param="mode"
        )
    endpoint = fields.get("endpoint")
    if endpoint is not None and endpoint not in _ENDPOINTS:
        raise invalid_request(
            f"endpoint must be one of {', '.join(_ENDPOINTS)} or null, got {endpoint!r}",
            param="endpoint",
        )
    return Fault(
        mode=cast(FaultMode, mode),
        count=_count(fields, "count", 1, low=1),
        endpoint=cast(Endpoint | None, endpoint),
        delay_seconds=_number(fields, "delay_seconds", 1.0, low=0.0),
        event_delay_seconds=_number(fields, "event_delay_seconds", 0.0, low=0.0),
        after_events=_count(fields, "after_events", 2, low=0),
        retry_after_seconds=_number(fields, "retry_after_seconds", 1.0, low=0.0),
    )


class FaultQueue:
    """Faults in the order they were set; each request takes one unit of the first that fits."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    @property
    def pending(self) -> tuple[Fault, ...]:
        return tuple(self._faults)

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def take(self, endpoint: Endpoint, *, named_only: bool = False) -> Fault | None:
        """The fault for a request to ``endpoint``; ``named_only``: only one naming it
        (Gemini's cache requests, so a fault meant for answers does not hit them)."""
        for index, fault in enumerate(self._faults):
            if fault.endpoint == endpoint or (fault.endpoint is None and not named_only):
                if fault.count == 1:
                    del self._faults[index]
                else:
                    self._faults[index] = replace(fault, count=fault.count - 1)
                return fault
        return None

    def clear(self) -> None:
        self._faults.clear()


def fault_error(fault: Fault) -> ProviderError | None:
    """The error answer a fault gives instead of serving the request, if it gives one."""
    if fault.mode == "500":
        return server_error()
    if fault.mode == "429":
        return rate_limited(fault.retry_after_seconds)
    return None
