"""The cost arithmetic: each usage component at its own price, exactly, in decimals."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from llmsession.cost import (
    Cost,
    ModelPrice,
    PriceTable,
    combined_cost,
    format_money,
    parse_money,
    parse_prices,
)
from llmsession.errors import InvalidInput
from llmsession.store.models import UsageTotals
from llmsession.tokens import MAX_TOKENS
from llmsession.usage import Usage

# Anthropic-like: cache reads at a tenth, cache writes at 1.25 times the input price.
PRICE = ModelPrice(
    input=Decimal("3"),
    output=Decimal("15"),
    cached_input=Decimal("0.3"),
    cache_write=Decimal("3.75"),
)
TABLE = PriceTable({("p", "m"): PRICE}, "USD")


def cost_of(usage: Usage | UsageTotals) -> Cost:
    cost = TABLE.cost("p", "m", usage)
    assert cost is not None
    return cost


@pytest.mark.parametrize(
    ("usage", "paid"),
    [
        # One million tokens of each kind costs exactly its price.
        (Usage(input_tokens=1_000_000), "3"),
        (Usage(input_tokens=1_000_000, cached_input_tokens=1_000_000), "0.3"),
        (Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000), "3.75"),
        (Usage(input_tokens=0, output_tokens=1_000_000), "15"),
        # Reasoning is part of output and costs nothing on top of it.
        (Usage(input_tokens=0, output_tokens=1_000_000, reasoning_tokens=600_000), "15"),
        (Usage(input_tokens=1), "0.000003"),
    ],
)
def test_each_component_is_priced_at_its_own_price(usage: Usage, paid: str) -> None:
    assert cost_of(usage).paid == Decimal(paid)


def test_a_mixed_round_is_the_sum_of_its_parts_exactly() -> None:
    usage = Usage(
        input_tokens=12_345, cached_input_tokens=10_000, cache_write_tokens=2_000, output_tokens=77
    )
    cost = cost_of(usage)
    # Computed independently, in fractions: 345 plain, 10,000 read, 2,000 written.
    expected = (
        Fraction(345) * 3
        + Fraction(10_000) * Fraction(3, 10)
        + Fraction(2_000) * Fraction(375, 100)
    ) / 10**6 + Fraction(77 * 15, 10**6)
    assert Fraction(cost.paid) == expected
    assert cost.paid == Decimal("0.012690")  # no float on the way: exactly this decimal
    assert format_money(cost.paid) == "0.01269"
    assert cost.stateless == Decimal("0.037035") + Decimal("0.001155")
    assert cost.saved == cost.stateless - cost.paid


def test_caching_makes_a_round_cheaper_than_a_stateless_one() -> None:
    cost = cost_of(Usage(input_tokens=100_000, cached_input_tokens=90_000, output_tokens=500))
    assert cost.paid < cost.stateless
    assert cost.saved == Decimal("0.243")  # 90,000 tokens at 3 - 0.3 per million


def test_a_cache_write_costs_more_than_a_stateless_round() -> None:
    cost = cost_of(Usage(input_tokens=100_000, cache_write_tokens=100_000, output_tokens=10))
    assert cost.paid > cost.stateless
    assert cost.saved == Decimal("-0.075")  # 100,000 tokens at 3.75 - 3 per million
    assert cost.to_dict()["saved"] == "-0.075"


def test_totals_are_priced_like_a_round_of_their_sums() -> None:
    rounds = [
        Usage(input_tokens=2_000, cache_write_tokens=2_000, output_tokens=5),
        Usage(input_tokens=2_100, cached_input_tokens=2_000, output_tokens=7),
    ]
    totals = UsageTotals()
    for usage in rounds:
        totals = totals.plus(usage)
    assert cost_of(totals) == cost_of(rounds[0]).plus(cost_of(rounds[1]))


def test_huge_counts_stay_exact() -> None:
    price = ModelPrice(
        Decimal("0.000000000001"), Decimal("999999999.999999999999"), Decimal(0), Decimal(0)
    )
    table = PriceTable({("p", "m"): price})
    cost = table.cost("p", "m", Usage(input_tokens=MAX_TOKENS, output_tokens=MAX_TOKENS))
    assert cost is not None
    expected = (
        Fraction(MAX_TOKENS) * Fraction("0.000000000001")
        + Fraction(MAX_TOKENS) * Fraction("999999999.999999999999")
    ) / 10**6
    assert Fraction(cost.paid) == expected
    assert parse_money(cost.to_dict()["paid"], "paid") == cost.paid


def test_a_model_without_a_price_has_no_cost() -> None:
    assert TABLE.cost("p", "other", Usage(input_tokens=5)) is None
    assert TABLE.cost("q", "m", Usage(input_tokens=5)) is None
    assert not PriceTable()
    assert TABLE


def test_combined_cost_sums_the_priced_parts() -> None:
    other = ModelPrice(Decimal(1), Decimal(2), Decimal("0.5"), Decimal(1))
    table = PriceTable({("p", "m"): PRICE, ("p", "n"): other})
    a = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert combined_cost(table, [("p", "m", a), ("p", "n", a)]) == Cost(
        "USD", Decimal(21), Decimal(21)
    )
    # A part that billed nothing (a ledger session) needs no price ...
    assert combined_cost(table, [("p", "m", a), ("x", "y", UsageTotals())]) == cost_of(a)
    # ... but one that billed tokens without a price leaves the whole unknown.
    assert combined_cost(table, [("p", "m", a), ("x", "y", a)]) is None
    assert combined_cost(table, [("x", "y", UsageTotals())]) is None
    assert combined_cost(table, []) is None


def test_costs_of_two_currencies_do_not_add() -> None:
    with pytest.raises(InvalidInput, match="cannot add a EUR cost to a USD cost"):
        Cost("USD", Decimal(1), Decimal(1)).plus(Cost("EUR", Decimal(1), Decimal(1)))


def test_money_is_written_as_plain_decimals() -> None:
    assert format_money(Decimal("1.5E-7")) == "0.00000015"
    assert format_money(Decimal("0.000")) == "0"
    assert format_money(Decimal("2E+3")) == "2000"
    assert format_money(Decimal("-0.0750")) == "-0.075"


@pytest.mark.parametrize("value", [1.5, "abc", "NaN", "Infinity", None, "1e"])
def test_parse_money_takes_finite_decimal_strings_only(value: object) -> None:
    with pytest.raises(InvalidInput, match="must be a decimal string"):
        parse_money(value, "cost.paid")


def test_parse_prices_defaults_cache_prices_to_the_input_price() -> None:
    table = parse_prices({"p": {"m": {"input": Decimal("0.15"), "output": 1}}}, "EUR")
    assert table.currency == "EUR"
    assert table.price("p", "m") == ModelPrice(
        Decimal("0.15"), Decimal(1), Decimal("0.15"), Decimal("0.15")
    )


@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ({"p": {"m": {"input": 1}}}, "needs 'output'"),
        ({"p": {"m": {"input": 1, "output": 1, "reasoning": 2}}}, "unknown key(s) reasoning"),
        ({"p": {"m": {"input": Decimal("-0.1"), "output": 1}}}, "input must be a number from 0"),
        ({"p": {"m": {"input": 1, "output": True}}}, "output must be a number from 0"),
        ({"p": {"m": {"input": 1, "output": "1"}}}, "output must be a number from 0"),
        ({"p": {"m": {"input": 1, "output": 1.5}}}, "output must be a number from 0"),
        ({"p": {"m": {"input": Decimal("inf"), "output": 1}}}, "input must be a number"),
        ({"p": {"m": {"input": 10**10, "output": 1}}}, "input must be a number"),
        ({"p": {"m": {"input": Decimal("1e-13"), "output": 1}}}, "at most 12 decimals"),
        ({"p": {"m": 3}}, "must be a table of prices"),
        ({"p": {}}, "must be a table of models"),
        ({"p": {" m": {"input": 1, "output": 1}}}, "model"),
    ],
)
def test_parse_prices_says_what_is_wrong(prices: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_prices(prices)


@pytest.mark.parametrize("currency", ["usd", "US", "EURO", 1, ""])
def test_a_currency_is_an_iso_code(currency: object) -> None:
    with pytest.raises(InvalidInput, match="ISO 4217"):
        parse_prices({}, currency)  # type: ignore[arg-type]


def test_a_write_beside_the_prompt_is_not_in_the_stateless_cost() -> None:
    # Gemini: a round that creates a 10,000-token cache entry and reads it at once
    # counts the entry twice in its input (created, then read); a stateless client
    # would have sent the prompt only (10,000 + 500 new tokens).
    usage = Usage(
        input_tokens=20_500,
        cached_input_tokens=10_000,
        cache_write_tokens=10_000,
        output_tokens=100,
    )
    beside = PriceTable({("g", "m"): PRICE}, writes_beside_prompt=frozenset({"g"}))
    inside = PriceTable({("g", "m"): PRICE})
    gemini, anthropic = beside.cost("g", "m", usage), inside.cost("g", "m", usage)
    assert gemini is not None
    assert anthropic is not None
    assert gemini.paid == anthropic.paid
    assert Fraction(gemini.stateless) == Fraction(10_500 * 3 + 100 * 15, 10**6)
    assert Fraction(anthropic.stateless) == Fraction(20_500 * 3 + 100 * 15, 10**6)
