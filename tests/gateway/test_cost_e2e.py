"""Costs end to end: a real llmsession process with a price table, the fake provider
behind it, the official openai SDK in front. Every cost the HTTP API, the Python
client and the CLI show is checked against the fake's billing log times the prices,
computed here independently (in fractions, from the prices as written)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from openai import OpenAI

from llmsession.cli import cli
from llmsession.client import Client
from llmsession.cost import Cost
from llmsession.ids import SessionId
from tests.fake_provider.conftest import API_KEY, FakeProcess, fake_command, launch
from tests.server.conftest import ADMIN, ServerProcess, bearer, launch_server

SID = "LLMSession-Id"
#: Long enough for the fake's prefix cache, so later rounds read from it.
BIG_CONTEXT = " ".join(f"fact{i} is true." for i in range(900))

#: gpt-4o-mini is priced, gpt-4o is not; in euros, to see the currency carried.
PRICES = {"input": "0.15", "cached_input": "0.075", "output": "0.6"}
CONFIG = """
[gateway]
currency = "EUR"

[providers.fake]
kind = "openai"
base_url = "{base_url}"
api_key_env = "FAKE_UPSTREAM_KEY"
timeout_seconds = 5

[prices.fake."gpt-4o-mini"]
input = 0.15
cached_input = 0.075
output = 0.6
"""


def billed_cost(entries: list[dict[str, Any]]) -> tuple[Fraction, Fraction]:
    """(paid, stateless) of billing entries, at PRICES, per million tokens."""
    price = {name: Fraction(value) for name, value in PRICES.items()}
    paid = stateless = Fraction(0)
    for entry in entries:
        plain = entry["input_tokens"] - entry["cached_tokens"]
        output = entry["output_tokens"] * price["output"]
        paid += plain * price["input"] + entry["cached_tokens"] * price["cached_input"] + output
        stateless += entry["input_tokens"] * price["input"] + output
    return paid / 10**6, stateless / 10**6


def amounts(cost: dict[str, str]) -> tuple[Fraction, Fraction]:
    assert cost["currency"] == "EUR"
    paid, stateless = Fraction(Decimal(cost["paid"])), Fraction(Decimal(cost["stateless"]))
    assert Fraction(Decimal(cost["saved"])) == stateless - paid
    return paid, stateless


@dataclass
class Priced:
    server: ServerProcess
    fake: FakeProcess
    config: Path
    store_url: str

    def tenant(self) -> tuple[str, str]:
        tenant_id = f"t{uuid.uuid4().hex[:10]}"
        response = httpx.post(
            f"{self.server.base_url}/v1/admin/tenants", json={"tenant_id": tenant_id}, headers=ADMIN
        )
        assert response.status_code == 201, response.text
        return tenant_id, response.json()["api_key"]

    def get(self, key: str, path: str, **params: Any) -> Any:
        response = httpx.get(
            f"{self.server.base_url}{path}", params=params, headers=bearer(key), timeout=10
        )
        assert response.status_code == 200, response.text
        return response.json()

    def chat(self, key: str, model: str, rounds: int) -> str:
        """A session of ``rounds`` chat rounds on ``model``; its id."""
        with OpenAI(base_url=f"{self.server.base_url}/v1", api_key=key, max_retries=0) as sdk:
            raw = sdk.chat.completions.with_raw_response.create(
                model=f"fake/{model}",
                messages=[
                    {"role": "system", "content": BIG_CONTEXT},
                    {"role": "user", "content": "Q1"},
                ],
            )
            session_id = raw.headers[SID]
            for n in range(2, rounds + 1):
                sdk.chat.completions.create(
                    model=f"fake/{model}",
                    messages=[{"role": "user", "content": f"Q{n}"}],
                    extra_headers={SID: session_id},
                )
        return session_id

    def billing(self, session_id: str) -> list[dict[str, Any]]:
        # The gateway sends the session id as prompt_cache_key, which the fake logs.
        return [e for e in self.fake.billing() if e["prompt_cache_key"] == session_id]


@pytest.fixture(scope="module")
def priced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Priced]:
    folder = tmp_path_factory.mktemp("cost")
    fake = launch(fake_command("--api-key", API_KEY), folder / "fake.log")
    config = folder / "gateway.toml"
    config.write_text(CONFIG.format(base_url=fake.base_url), encoding="utf-8")
    store_url = f"sqlite:///{folder / 'sessions.db'}"
    try:
        server = launch_server(
            store_url, folder, LLMSESSION_CONFIG=str(config), FAKE_UPSTREAM_KEY=API_KEY
        )
    except BaseException:
        fake.stop()
        raise
    yield Priced(server, fake, config, store_url)
    assert server.stop() == 0, server.output()
    fake.stop()


def test_each_round_and_the_stats_cost_what_was_billed_times_the_prices(priced: Priced) -> None:
    tenant_id, key = priced.tenant()
    session_id = priced.chat(key, "gpt-4o-mini", rounds=3)
    # A ledger session of the same provider and model billed nothing and costs nothing.
    ledger = httpx.post(
        f"{priced.server.base_url}/v1/sessions",
        json={"provider_id": "fake", "model": "gpt-4o-mini", "initial_tokens": 5000},
        headers=bearer(key),
    ).json()["session_id"]
    base = f"{priced.server.base_url}/v1/sessions/{ledger}"
    httpx.post(f"{base}/activate", headers=bearer(key)).raise_for_status()
    httpx.post(f"{base}/rounds", json={"delta_tokens": 7}, headers=bearer(key)).raise_for_status()

    billing = priced.billing(session_id)
    rounds = priced.get(key, f"/v1/sessions/{session_id}/rounds")["items"]
    assert len(rounds) == len(billing) == 3
    for round_, entry in zip(rounds, billing, strict=True):
        assert amounts(round_["cost"]) == billed_cost([entry])
    # Rounds 2 and 3 read the history from the provider's cache: cheaper than stateless.
    assert all(entry["cached_tokens"] > 0 for entry in billing[1:])
    paid, stateless = amounts(rounds[2]["cost"])
    assert paid < stateless
    (ledger_round,) = priced.get(key, f"/v1/sessions/{ledger}/rounds")["items"]
    assert ledger_round["cost"] is None

    expected = billed_cost(billing)
    for group_by in ([], ["provider"], ["model"], ["provider", "model"]):
        (group,) = priced.get(key, "/v1/stats", group_by=group_by)["groups"]
        assert group["sessions"]["active"] == 2
        assert amounts(group["cost"]) == expected, group_by

    # The Python client gives the same costs, as Decimals.
    with Client(priced.server.base_url, api_key=key) as client:
        (totals,) = client.stats()
        assert totals.cost is not None
        assert (Fraction(totals.cost.paid), Fraction(totals.cost.stateless)) == expected
        assert totals.cost.saved == totals.cost.stateless - totals.cost.paid
        listed = client.list_rounds(SessionId.parse(session_id)).items
        assert [r.cost for r in listed] == [client_cost(r) for r in rounds]
        ledger_rounds = client.list_rounds(SessionId.parse(ledger)).items
        assert [r.cost for r in ledger_rounds] == [None]

    # The CLI, on the server's store with the server's config, prints the same.
    shown = run_cli(priced, "stats", "--tenant", tenant_id, "--json")
    assert amounts(shown["groups"][0]["cost"]) == expected
    table = run_cli_text(priced, "stats", "--tenant", tenant_id).splitlines()
    assert table[0].split()[-4:] == ["COST", "STATELESS", "AVOIDED", "CURRENCY"]
    assert table[1].split()[-4:] == [
        shown["groups"][0]["cost"][name] for name in ("paid", "stateless", "saved", "currency")
    ]
    rounds_table = run_cli_text(
        priced, "sessions", "show", "--tenant", tenant_id, session_id, "--rounds"
    ).splitlines()
    header = next(line for line in rounds_table if line.startswith("SEQ"))
    assert header.split()[7:11] == ["COST", "STATELESS", "AVOIDED", "CURRENCY"]
    rows = rounds_table[rounds_table.index(header) + 1 :]
    assert [row.split()[7] for row in rows] == [r["cost"]["paid"] for r in rounds]
    as_json = run_cli(
        priced, "sessions", "show", "--tenant", tenant_id, session_id, "--rounds", "--json"
    )
    assert [r["cost"] for r in as_json["rounds"]] == [r["cost"] for r in rounds]
    # Without the config, the CLI shows tokens only.
    plain = run_cli_text(priced, "stats", "--tenant", tenant_id, config=False).splitlines()
    assert "COST" not in plain[0]


def client_cost(round_: dict[str, Any]) -> Cost:
    cost = round_["cost"]
    return Cost(cost["currency"], Decimal(cost["paid"]), Decimal(cost["stateless"]))


def test_a_model_without_a_price_has_no_cost(priced: Priced) -> None:
    _, key = priced.tenant()
    priced_session = priced.chat(key, "gpt-4o-mini", rounds=2)
    unpriced_session = priced.chat(key, "gpt-4o", rounds=2)
    rounds = priced.get(key, f"/v1/sessions/{unpriced_session}/rounds")["items"]
    assert [r["cost"] for r in rounds] == [None, None]
    assert all(r["usage"]["input_tokens"] > 0 for r in rounds)
    # The whole would hide the unpriced model's part: no cost rather than a partial one.
    (overall,) = priced.get(key, "/v1/stats")["groups"]
    assert overall["usage"]["input_tokens"] > 0
    assert overall["cost"] is None
    by_model = {g["model"]: g for g in priced.get(key, "/v1/stats", group_by="model")["groups"]}
    assert by_model["gpt-4o"]["cost"] is None
    assert amounts(by_model["gpt-4o-mini"]["cost"]) == billed_cost(priced.billing(priced_session))


def test_the_providers_command_shows_the_prices(priced: Priced) -> None:
    listed = run_cli(priced, "providers", "--json", store=False)
    (provider,) = listed["providers"]
    assert listed["currency"] == "EUR"
    assert provider["prices"] == {
        "gpt-4o-mini": {**PRICES, "cache_write": "0.15"},
    }
    table = run_cli_text(priced, "providers", store=False).splitlines()
    assert table[0].split()[-1] == "PRICED"
    assert table[1].endswith("gpt-4o-mini (EUR)")


def run_cli_text(priced: Priced, *args: str, config: bool = True, store: bool = True) -> str:
    options = [*(["--store-url", priced.store_url] if store else [])]
    env = {"LLMSESSION_CONFIG": str(priced.config) if config else ""}
    result = CliRunner().invoke(cli, [*args, *options], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def run_cli(priced: Priced, *args: str, store: bool = True) -> Any:
    return json.loads(run_cli_text(priced, *args, store=store))
