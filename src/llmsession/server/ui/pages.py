"""Rendering the dashboard's pages: the template environment, the security headers,
and the figures each page derives from the store's values for display."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.responses import HTMLResponse

from llmsession.cost import Cost, billed, format_money
from llmsession.states import ALL_STATES
from llmsession.store.models import (
    Round,
    StoredSession,
    TimeBucket,
    TimeBucketSize,
    Totals,
    UsageTotals,
)
from llmsession.store.rollup import BUCKET_MICROS
from llmsession.timestamps import Timestamp
from llmsession.tokens import compute_tokens_saved

__all__ = [
    "PAGE_HEADERS",
    "RoundSeries",
    "render_page",
    "round_series",
    "share",
    "sum_totals",
    "time_charts",
]

_environment = Environment(
    loader=PackageLoader("llmsession.server.ui", "templates"),
    # Every value is escaped unless a template says otherwise (none does): a model
    # named <script>...</script> is shown as text.
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def share(part: int | Decimal, whole: int | Decimal) -> str:
    """``part`` of ``whole`` as a percentage for display; a dash when ``whole`` is 0."""
    return "\u2013" if whole <= 0 else f"{100 * float(part) / float(whole):.1f} %"


def _money(cost: Cost | None, amount: str = "paid") -> str:
    """An amount of a cost with its currency ("0.0042 EUR"); a dash without a cost."""
    if cost is None:
        return "\u2013"
    value: Decimal = getattr(cost, amount)
    return f"{format_money(value)} {cost.currency}"


def _number(value: int) -> str:
    # A thin space groups digits without looking like a decimal mark in any locale.
    return f"{value:,}".replace(",", "\u2009")


_environment.filters["n"] = _number
_environment.filters["money"] = _money

#: Headers of every dashboard page: scripts and styles only from this server, no
#: framing, and pages (which may show a new key) never cached.
PAGE_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def render_page(name: str, status_code: int = 200, **values: Any) -> HTMLResponse:
    """The template ``name`` rendered with ``values``, with PAGE_HEADERS."""
    html = _environment.get_template(name).render(share=share, **values)
    return HTMLResponse(html, status_code, headers=dict(PAGE_HEADERS))


def sum_totals(groups: Sequence[Totals]) -> Totals:
    """One Totals adding up ``groups`` (several tenants on the admin's overview; a
    tenant without sessions has no group at all).

    Its cost is the sum of the groups' costs, and None when a group that billed
    tokens has none (a model without a price): a partial sum would read as the whole.
    """
    sessions: dict[str, int] = {state.name: 0 for state in ALL_STATES}
    rounds = delta = saved = 0
    usage = [0] * 6
    cost: Cost | None = None
    unpriced = False
    for group in groups:
        if group.cost is not None:
            cost = group.cost if cost is None else cost.plus(group.cost)
        elif billed(group.usage):
            unpriced = True
        for state, count in group.sessions.items():
            sessions[state] = sessions.get(state, 0) + count
        rounds += group.rounds
        delta += group.delta_tokens
        saved += group.tokens_saved
        for index, value in enumerate(group.usage.as_tuple()):
            usage[index] += value
    return Totals(
        None,
        None,
        sessions,
        rounds,
        delta,
        saved,
        UsageTotals(*usage),
        None if unpriced else cost,
    )


@dataclass(frozen=True, slots=True)
class RoundSeries:
    """A session's rounds as the session page plots them, one list entry per round."""

    seq: list[int]
    delta_tokens: list[int]
    #: tokens_saved of the session right after each round.
    tokens_saved: list[int]
    #: Provider usage per round (None where a round has none); empty for a ledger session.
    input_tokens: list[int | None]
    cached_input_tokens: list[int | None]
    output_tokens: list[int | None]

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "delta_tokens": self.delta_tokens,
            "tokens_saved": self.tokens_saved,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
        }


def round_series(stored: StoredSession, rounds: Sequence[Round]) -> RoundSeries:
    """The plotted series of rounds 1..n of ``stored`` (``rounds`` in order from seq 1)."""
    initial = stored.record.initial_tokens
    total_delta = 0
    seq: list[int] = []
    deltas: list[int] = []
    saved: list[int] = []
    for round_ in rounds:
        total_delta += round_.delta_tokens
        seq.append(round_.seq)
        deltas.append(round_.delta_tokens)
        # The core's own rule, as the session stood right after this round.
        saved.append(compute_tokens_saved(round_.seq, initial, total_delta))
    gateway = any(round_.gateway for round_ in rounds)
    usages = [round_.usage for round_ in rounds] if gateway else []
    return RoundSeries(
        seq,
        deltas,
        saved,
        [None if u is None else u.input_tokens for u in usages],
        [None if u is None else u.cached_input_tokens for u in usages],
        [None if u is None else u.output_tokens for u in usages],
    )


def time_charts(
    bucket: TimeBucketSize,
    start: Timestamp,
    end: Timestamp,
    grouped: Sequence[TimeBucket],
    overall: Sequence[TimeBucket],
) -> dict[str, Any]:
    """The overview's plots over time, as the page's JSON island carries them.

    ``grouped`` is the store's series split by provider and/or model, ``overall`` the
    same range unsplit. The store leaves out buckets where nothing happened; here
    every bucket of the range gets its point (0, or no cache share where no input
    was billed), so the lines do not jump over quiet hours. ``x`` holds the buckets'
    starts in seconds since the epoch (what uPlot plots).
    """
    size = BUCKET_MICROS[bucket]
    first = start.epoch_micros - start.epoch_micros % size
    starts = range(first, end.epoch_micros, size)
    index = {micros: i for i, micros in enumerate(starts)}
    groups: dict[tuple[str | None, str | None], int] = {}
    saved: list[list[int]] = []
    rounds: list[list[int]] = []
    for point in grouped:
        key = (point.provider_id, point.model)
        if key not in groups:
            groups[key] = len(groups)
            saved.append([0] * len(starts))
            rounds.append([0] * len(starts))
        at = index[point.start.epoch_micros]
        saved[groups[key]][at] = point.tokens_saved
        rounds[groups[key]][at] = point.rounds
    input_tokens = [0] * len(starts)
    cached_input_tokens = [0] * len(starts)
    for point in overall:
        at = index[point.start.epoch_micros]
        input_tokens[at] = point.usage.input_tokens
        cached_input_tokens[at] = point.usage.cached_input_tokens
    return {
        "bucket": bucket,
        "x": [micros // 1_000_000 for micros in starts],
        "groups": [{"provider_id": p, "model": m} for p, m in groups],
        "tokens_saved": saved,
        "rounds": rounds,
        "input_tokens": input_tokens,
        "cached_input_tokens": cached_input_tokens,
        "cache_share": [
            None if whole == 0 else 100 * part / whole
            for part, whole in zip(cached_input_tokens, input_tokens, strict=True)
        ],
    }
