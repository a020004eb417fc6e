"""The price table of the gateway's configuration: what a valid one is, and each error."""

from __future__ import annotations

from decimal import Decimal

import pytest

from llmsession.cost import ModelPrice
from llmsession.gateway import ConfigError, GatewayConfig, parse_config

ENV = {"FAKE_KEY": "k", "OTHER_KEY": "k"}

PROVIDERS = """
[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "FAKE_KEY"

[providers.other]
kind = "openai"
base_url = "https://llm.example/v1"
api_key_env = "OTHER_KEY"
models = ["meta-llama/x"]
"""


def parse(extra: str, *, before: str = "") -> GatewayConfig:
    return parse_config(before + PROVIDERS + extra, source="gw.toml", environ=ENV)


def test_prices_are_read_exactly_as_written() -> None:
    config = parse(
        """
[gateway]
currency = "EUR"

[prices.openai."gpt-4o-mini"]
input = 0.15
cached_input = 0.075
output = 0.6

[prices.openai."gpt-4.1"]
input = 2
cached_input = 0.5
cache_write = 2.5
output = 8

[prices.other."meta-llama/x"]
input = 0.123456789012
output = 0
"""
    )
    prices = config.prices
    assert prices.currency == "EUR"
    # 0.15 and 0.075 are not binary floats: these are the decimals of the file.
    assert prices.price("openai", "gpt-4o-mini") == ModelPrice(
        input=Decimal("0.15"),
        output=Decimal("0.6"),
        cached_input=Decimal("0.075"),
        cache_write=Decimal("0.15"),
    )
    assert prices.price("openai", "gpt-4.1") == ModelPrice(
        Decimal(2), Decimal(8), Decimal("0.5"), Decimal("2.5")
    )
    price = prices.price("other", "meta-llama/x")
    assert price is not None
    assert price.input == Decimal("0.123456789012")
    assert prices.price("openai", "gpt-4o") is None
    # The rest of the file reads as before: floats elsewhere stay floats.
    assert config.providers["openai"].timeout_seconds == 60.0


def test_without_prices_the_table_is_empty_and_usd() -> None:
    config = parse("")
    assert not config.prices
    assert config.prices.currency == "USD"


def test_a_float_elsewhere_still_parses() -> None:
    config = parse_config(
        PROVIDERS.replace(
            'api_key_env = "FAKE_KEY"', 'api_key_env = "FAKE_KEY"\ntimeout_seconds = 2.5'
        )
        + "[prices.openai.m]\ninput = 1.25\noutput = 2\n",
        environ=ENV,
    )
    assert config.providers["openai"].timeout_seconds == 2.5
    price = config.prices.price("openai", "m")
    assert price is not None
    assert price.input == Decimal("1.25")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[prices.nobody."m"]\ninput = 1\noutput = 1\n',
            "gw.toml: [prices.nobody] prices a provider that is not configured; "
            "configured: openai, other",
        ),
        (
            '[prices.other."gpt-4o"]\ninput = 1\noutput = 1\n',
            'gw.toml: [prices.other."gpt-4o"] prices a model that [providers.other] models '
            "does not allow",
        ),
        (
            '[prices.openai."m"]\ninput = -0.5\noutput = 1\n',
            'gw.toml: [prices.openai."m"] input must be a number from 0 to 1,000,000,000',
        ),
        (
            '[prices.openai."m"]\ninput = 1\noutput = 1\nreasoning = 3\n',
            'gw.toml: [prices.openai."m"] has unknown key(s) reasoning; allowed: input, '
            "cached_input, cache_write, output",
        ),
        ('[prices.openai."m"]\noutput = 1\n', "gw.toml: [prices.openai.\"m\"] needs 'input'"),
        ('[prices.openai."m"]\ninput = "0.1"\noutput = 1\n', "input must be a number"),
        ('[prices.openai."m"]\ninput = nan\noutput = 1\n', "input must be a number"),
        ("[prices]\nopenai = 3\n", "gw.toml: [prices.openai] must be a table of models"),
        ('[gateway]\ncurrency = "dollars"\n', "gw.toml: [gateway] currency must be an ISO 4217"),
    ],
)
def test_a_bad_price_table_says_what_is_wrong(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse(extra)
    assert message in str(raised.value)


def test_prices_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"gw\.toml: prices must be a table, got int"):
        parse("", before="prices = 3\n")


def test_gemini_providers_bill_cache_writes_beside_the_prompt() -> None:
    config = parse_config(
        PROVIDERS
        + """
[providers.gemini]
kind = "gemini"
base_url = "https://generativelanguage.googleapis.com"
api_key_env = "FAKE_KEY"

[prices.gemini."gemini-2.5-flash"]
input = 0.3
output = 2.5
""",
        source="gw.toml",
        environ=ENV,
    )
    assert config.prices.writes_beside_prompt == frozenset({"gemini"})
