"""Cost: what usage cost at the operator's prices, and what a stateless client would have paid.

A price is per million tokens, in one currency for the whole table. Usage is
priced from its normalized fields only (see :mod:`llmsession.usage`), so every
provider kind is priced by the same rule::

    paid      = (input - cached_input - cache_write) * input_price
              + cached_input * cached_input_price
              + cache_write * cache_write_price
              + output * output_price
    stateless = (input - separate_write) * input_price + output * output_price
    saved     = stateless - paid      (negative when cache writes cost more than they saved)

``stateless`` is what a client that sends the whole context every round, with
no cache, would have paid for the same rounds. ``separate_write`` is the cache
writes of providers that bill them beside the prompt (Gemini: a cachedContents
entry is created by a request of its own, so its tokens come on top of the
prompt's), and 0 where the write is part of the prompt (Anthropic) — a
stateless client would not have paid for a copy of its context. Reasoning tokens are part of
``output`` and priced at the output price, as providers bill them.

Money is :class:`~decimal.Decimal` and exact: prices are read as written, and
every product and sum here is computed without rounding (an arithmetic that
would round raises instead).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from typing import Final, Protocol, cast

from llmsession.errors import InvalidInput
from llmsession.ids import check_label

__all__ = [
    "DEFAULT_CURRENCY",
    "MAX_PRICE",
    "MAX_PRICE_DECIMALS",
    "NO_PRICES",
    "Cost",
    "ModelPrice",
    "PriceTable",
    "TokenCounts",
    "billed",
    "check_currency",
    "combined_cost",
    "format_money",
    "parse_money",
    "parse_prices",
]

DEFAULT_CURRENCY: Final = "USD"
#: The largest price per million tokens (and the most decimals) a table may hold:
#: with token counts below 2**63 every cost then fits _EXACT's precision.
MAX_PRICE: Final = Decimal(10) ** 9
MAX_PRICE_DECIMALS: Final = 12
_PER_TOKENS: Final = 6  # prices are per 10**6 tokens
_CURRENCY: Final = re.compile(r"[A-Z]{3}")
_PRICE_KEYS: Final = ("input", "cached_input", "cache_write", "output")
_REQUIRED_PRICE_KEYS: Final = ("input", "output")

# 19 digits of tokens times 9 + 12 digits of price, summed over many groups, stays far
# below 80 digits; traps make any rounding an error rather than a silent change.
_EXACT: Final = Context(prec=80, traps=[Inexact, Rounded, InvalidOperation, Overflow])


class TokenCounts(Protocol):
    """The normalized usage fields a cost is computed from (a Usage or UsageTotals)."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def cached_input_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices per million tokens."""

    input: Decimal
    output: Decimal
    #: Input served from the provider's cache; the input price when not configured.
    cached_input: Decimal
    #: Input written to the provider's cache; the input price when not configured.
    cache_write: Decimal

    def to_dict(self) -> dict[str, str]:
        """The four prices as decimal strings."""
        return {name: format_money(getattr(self, name)) for name in _PRICE_KEYS}


@dataclass(frozen=True, slots=True)
class Cost:
    """What some usage cost (``paid``) and would have cost without a stateful session."""

    currency: str
    paid: Decimal
    stateless: Decimal

    @property
    def saved(self) -> Decimal:
        """The cost avoided; negative when cache writes cost more than cache reads saved."""
        return _EXACT.subtract(self.stateless, self.paid)

    def plus(self, other: Cost) -> Cost:
        """Both costs together (of one currency)."""
        if other.currency != self.currency:
            raise InvalidInput(f"cannot add a {other.currency} cost to a {self.currency} cost")
        return Cost(
            self.currency,
            _EXACT.add(self.paid, other.paid),
            _EXACT.add(self.stateless, other.stateless),
        )

    def to_dict(self) -> dict[str, str]:
        """Currency and the three amounts as decimal strings (a JSON number could be rounded)."""
        return {
            "currency": self.currency,
            "paid": format_money(self.paid),
            "stateless": format_money(self.stateless),
            "saved": format_money(self.saved),
        }


def billed(counts: TokenCounts) -> bool:
    """Whether the usage counts any token at all (ledger rounds and sessions count none)."""
    return bool(counts.input_tokens or counts.output_tokens)


def _tokens_at(tokens: int, price: Decimal) -> Decimal:
    return _EXACT.multiply(Decimal(tokens), price)


def _cost_of(
    counts: TokenCounts, price: ModelPrice, currency: str, *, writes_beside_prompt: bool
) -> Cost:
    plain = counts.input_tokens - counts.cached_input_tokens - counts.cache_write_tokens
    parts = (
        _tokens_at(plain, price.input),
        _tokens_at(counts.cached_input_tokens, price.cached_input),
        _tokens_at(counts.cache_write_tokens, price.cache_write),
        _tokens_at(counts.output_tokens, price.output),
    )
    paid = Decimal(0)
    for part in parts:
        paid = _EXACT.add(paid, part)
    prompt = counts.input_tokens - (counts.cache_write_tokens if writes_beside_prompt else 0)
    stateless = _EXACT.add(
        _tokens_at(prompt, price.input),
        _tokens_at(counts.output_tokens, price.output),
    )
    return Cost(
        currency,
        _EXACT.scaleb(paid, Decimal(-_PER_TOKENS)),
        _EXACT.scaleb(stateless, Decimal(-_PER_TOKENS)),
    )


@dataclass(frozen=True, slots=True)
class PriceTable:
    """The operator's prices, by provider id and model, in one currency."""

    prices: Mapping[tuple[str, str], ModelPrice] = field(
        default_factory=dict[tuple[str, str], ModelPrice]
    )
    currency: str = DEFAULT_CURRENCY
    #: The providers whose cache writes are billed beside the prompt, not as part of
    #: it (kind ``gemini``): a stateless client would not have paid for them.
    writes_beside_prompt: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        """Whether any price is configured."""
        return bool(self.prices)

    def price(self, provider_id: str, model: str) -> ModelPrice | None:
        """The price of ``model`` at ``provider_id``, or None when not configured."""
        return self.prices.get((provider_id, model))

    def models_of(self, provider_id: str) -> dict[str, ModelPrice]:
        """The priced models of one provider."""
        return {m: p for (pid, m), p in self.prices.items() if pid == provider_id}

    def cost(self, provider_id: str, model: str, counts: TokenCounts) -> Cost | None:
        """What ``counts`` cost at this model's price; None when it has no price."""
        price = self.price(provider_id, model)
        if price is None:
            return None
        return _cost_of(
            counts,
            price,
            self.currency,
            writes_beside_prompt=provider_id in self.writes_beside_prompt,
        )


NO_PRICES: Final = PriceTable()


def combined_cost(table: PriceTable, parts: Iterable[tuple[str, str, TokenCounts]]) -> Cost | None:
    """The cost of usage split by (provider id, model): the sum of each part's cost.

    Parts that counted no token add nothing. None when no part counted any, or
    when one that did has no price (a partial sum would read as the whole).
    """
    total: Cost | None = None
    for provider_id, model, counts in parts:
        if not billed(counts):
            continue
        cost = table.cost(provider_id, model, counts)
        if cost is None:
            return None
        total = cost if total is None else total.plus(cost)
    return total


def format_money(value: Decimal) -> str:
    """A decimal as plain digits, without exponent or trailing zeros ("0.00015", "0")."""
    normal = value.normalize(_EXACT)
    text = format(normal, "f")
    return "0" if text in ("-0", "0") else text


def parse_money(value: object, what: str) -> Decimal:
    """A decimal string as format_money writes it (the HTTP API's amounts)."""
    if isinstance(value, str):
        try:
            amount = Decimal(value)
        except InvalidOperation:
            pass
        else:
            if amount.is_finite():
                return amount
    raise InvalidInput(f"{what} must be a decimal string such as '0.0015', got {value!r}")


def check_currency(value: object) -> str:
    """A currency: an ISO 4217 code such as "USD"."""
    if not isinstance(value, str) or not _CURRENCY.fullmatch(value):
        raise InvalidInput(
            f"currency must be an ISO 4217 code of three capital letters such as 'USD', "
            f"got {value!r}"
        )
    return value


def parse_prices(table: Mapping[str, object], currency: str = DEFAULT_CURRENCY) -> PriceTable:
    """``{provider_id: {model: {input, cached_input, cache_write, output}}}`` as a PriceTable.

    Numbers must be ints or Decimals (parse TOML with ``parse_float=Decimal``, so
    that a price is the decimal written, not the nearest binary float).
    InvalidInput names the provider, the model and the key that is wrong.
    """
    currency = check_currency(currency)
    prices: dict[tuple[str, str], ModelPrice] = {}
    for provider_id, models in table.items():
        if not isinstance(models, dict) or not models:
            raise InvalidInput(
                f"[prices.{provider_id}] must be a table of models, each a table of prices, "
                f'such as [prices.{provider_id}."gpt-4o-mini"]'
            )
        for model, value in cast(dict[str, object], models).items():
            where = f'[prices.{provider_id}."{model}"]'
            try:
                check_label("model", model)
            except InvalidInput as error:
                raise InvalidInput(f"{where}: {error}") from None
            prices[(provider_id, model)] = _model_price(where, value)
    return PriceTable(prices, currency)


def _model_price(where: str, value: object) -> ModelPrice:
    if not isinstance(value, dict):
        raise InvalidInput(
            f"{where} must be a table of prices per million tokens "
            f"({', '.join(_PRICE_KEYS)}), got {type(value).__name__}"
        )
    fields = cast(dict[str, object], value)
    unknown = sorted(set(fields) - set(_PRICE_KEYS))
    if unknown:
        raise InvalidInput(
            f"{where} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_PRICE_KEYS)} "
            "(reasoning is output and priced at the output price)"
        )
    for required in _REQUIRED_PRICE_KEYS:
        if required not in fields:
            raise InvalidInput(f"{where} needs {required!r} (a price per million tokens)")
    amounts = {name: _price(where, name, fields[name]) for name in _PRICE_KEYS if name in fields}
    return ModelPrice(
        input=amounts["input"],
        output=amounts["output"],
        cached_input=amounts.get("cached_input", amounts["input"]),
        cache_write=amounts.get("cache_write", amounts["input"]),
    )


def _price(where: str, name: str, value: object) -> Decimal:
    # bool is an int subclass, and `input = true` is a mistake, not a price of 1.
    amount = Decimal(value) if type(value) is int else value
    if isinstance(amount, Decimal) and amount.is_finite() and 0 <= amount <= MAX_PRICE:
        exponent = amount.as_tuple().exponent
        if isinstance(exponent, int) and -exponent <= MAX_PRICE_DECIMALS:
            return amount
    raise InvalidInput(
        f"{where} {name} must be a number from 0 to {MAX_PRICE:,} (a price per million "
        f"tokens, at most {MAX_PRICE_DECIMALS} decimals), got {value!r}"
    )
