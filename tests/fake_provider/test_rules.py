"""The fake provider's rules in memory: the token rule, the prefix cache, the answer,
fault parsing and the billing log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmsession.fake_provider.answers import ANSWER_TOKENS, REASONING_TOKENS, plan_answer
from llmsession.fake_provider.billing import BillingEntry, BillingLog, key_fingerprint
from llmsession.fake_provider.errors import ProviderError
from llmsession.fake_provider.faults import Fault, FaultQueue, parse_fault
from llmsession.fake_provider.prefix_cache import CacheScope, PrefixCache
from llmsession.fake_provider.tokens import Message, count_tokens, prompt_tokens, tokenize

# -- tokens ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("   \n\t ", 0),
        ("hello", 1),
        ("hello, world!", 4),
        ("abcdefgh", 1),
        ("abcdefghi", 2),
        ("a" * 20, 3),
        ("x=1+2", 5),
        ("snake_case_name", 2),
        ("héllo wörld", 2),
    ],
)
def test_count_tokens_follows_the_documented_rule(text: str, expected: int) -> None:
    assert count_tokens(text) == expected


@given(st.text())
def test_joining_tokens_with_spaces_tokenizes_to_the_same_tokens(text: str) -> None:
    tokens = tokenize(text)
    assert tokenize(" ".join(tokens)) == tokens


def test_a_prompt_costs_three_per_message_one_per_name_and_three_for_the_reply() -> None:
    messages = [
        Message("system", "be brief"),
        Message("user", "hello there", name="ann"),
    ]
    assert len(prompt_tokens(messages)) == (2 + 3) + (2 + 3 + 1) + 3
    assert len(prompt_tokens([])) == 3


def test_message_text_cannot_forge_a_role_or_marker() -> None:
    # The role is part of the tokens, so the same text under two roles differs.
    assert prompt_tokens([Message("user", "x")]) != prompt_tokens([Message("system", "x")])
    assert "<|role:user|>" not in tokenize("<|role:user|>")


# -- prefix cache ---------------------------------------------------------------------


def _prompt(n: int, tail: str = "t") -> list[str]:
    return [f"w{i}" for i in range(n - 1)] + [tail]


SCOPE = CacheScope("key_a", "gpt-4o", None)


def test_below_1024_tokens_nothing_is_cached() -> None:
    cache = PrefixCache(ttl_seconds=None, clock=lambda: 0.0)
    assert cache.serve(SCOPE, _prompt(1023)) == (0, 0)
    assert cache.serve(SCOPE, _prompt(1023)) == (0, 0)
    assert len(cache) == 0


@pytest.mark.parametrize(
    ("length", "cached"), [(1024, 1024), (1151, 1024), (1152, 1152), (1300, 1280), (2049, 2048)]
)
def test_a_repeated_prompt_reads_its_longest_128_step_prefix(length: int, cached: int) -> None:
    cache = PrefixCache(ttl_seconds=None, clock=lambda: 0.0)
    assert cache.serve(SCOPE, _prompt(length)) == (0, cached)
    assert cache.serve(SCOPE, _prompt(length)) == (cached, 0)


def test_a_longer_prompt_reads_the_shared_prefix_and_writes_the_rest() -> None:
    cache = PrefixCache(ttl_seconds=None, clock=lambda: 0.0)
    first = _prompt(1200)
    cache.serve(SCOPE, first)
    longer = first[:1199] + [f"n{i}" for i in range(400)]
    # The first wrote 1024 and 1152; the second shares 1199 tokens, so it reads 1152.
    assert cache.serve(SCOPE, longer) == (1152, 1536 - 1152)


def test_a_prompt_differing_before_1024_reads_nothing() -> None:
    cache = PrefixCache(ttl_seconds=None, clock=lambda: 0.0)
    cache.serve(SCOPE, _prompt(2000))
    changed = _prompt(2000)
    changed[500] = "other"
    assert cache.serve(SCOPE, changed)[0] == 0


def test_scopes_never_share_a_prefix() -> None:
    cache = PrefixCache(ttl_seconds=None, clock=lambda: 0.0)
    cache.serve(SCOPE, _prompt(1100))
    for other in (
        CacheScope("key_b", "gpt-4o", None),
        CacheScope("key_a", "gpt-4o-mini", None),
        CacheScope("key_a", "gpt-4o", "session-1"),
    ):
        assert cache.serve(other, _prompt(1100))[0] == 0


def test_token_boundaries_matter_not_only_the_characters() -> None:
    cache = PrefixCache(ttl_seconds=None, clock=lambda: 0.0)
    cache.serve(SCOPE, ["ab", "c", *_prompt(1100)])
    assert cache.serve(SCOPE, ["a", "bc", *_prompt(1100)])[0] == 0


def test_a_prefix_unused_for_longer_than_the_ttl_is_gone() -> None:
    now = [0.0]
    cache = PrefixCache(ttl_seconds=60.0, clock=lambda: now[0])
    cache.serve(SCOPE, _prompt(1100))
    now[0] = 59.0
    assert cache.serve(SCOPE, _prompt(1100))[0] == 1024  # and refreshed
    now[0] = 118.0
    assert cache.serve(SCOPE, _prompt(1100))[0] == 1024
    now[0] = 179.0
    assert cache.serve(SCOPE, _prompt(1100))[0] == 0


# -- answers --------------------------------------------------------------------------


def test_the_answer_echoes_the_last_user_message_within_16_tokens() -> None:
    answer = plan_answer("gpt-4o", "what is the capital of France?", None)
    assert answer.text == "You said : what is the capital of France ?"
    assert (answer.reasoning_tokens, answer.truncated) == (0, False)
    assert len(plan_answer("gpt-4o", "w " * 100, None).tokens) == ANSWER_TOKENS
    assert "".join(answer.deltas()) == answer.text


def test_reasoning_models_think_first_within_the_output_limit() -> None:
    answer = plan_answer("o3-mini", "hi", None)
    assert answer.reasoning_tokens == REASONING_TOKENS
    assert answer.output_tokens == REASONING_TOKENS + 4
    cut = plan_answer("o3-mini", "hi", REASONING_TOKENS + 2)
    assert (cut.text, cut.output_tokens, cut.truncated) == ("You said", REASONING_TOKENS + 2, True)
    assert plan_answer("o1", "hi", 5).tokens == ()
    assert plan_answer("gpt-4o", "hi", 2).text == "You said"
    assert plan_answer("omni-model", "hi", None).reasoning_tokens == 0


# -- faults ---------------------------------------------------------------------------


def test_faults_apply_in_order_each_to_its_count_of_matching_requests() -> None:
    queue = FaultQueue()
    queue.add(parse_fault({"mode": "500", "count": 2, "endpoint": "responses"}))
    queue.add(parse_fault({"mode": "cut"}))
    assert [f.mode for f in [queue.take("chat.completions")] if f] == ["cut"]
    assert queue.take("chat.completions") is None
    first, second, third = (queue.take("responses") for _ in range(3))
    assert (first and first.mode, second and second.mode, third) == ("500", "500", None)


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ([], "JSON object"),
        ({"mode": "boom"}, "mode must be one of 500, 429, slow, cut"),
        ({"mode": "500", "count": 0}, "count must be an integer of at least 1"),
        ({"mode": "500", "count": True}, "count"),
        ({"mode": "slow", "delay_seconds": -1}, "delay_seconds must be from 0"),
        ({"mode": "slow", "delay_seconds": "1"}, "delay_seconds must be a number"),
        ({"mode": "cut", "after_events": -1}, "after_events"),
        ({"mode": "500", "endpoint": "embeddings"}, "endpoint must be one of"),
        ({"mode": "500", "colour": "red"}, "unknown fault field(s) colour"),
    ],
)
def test_a_wrong_fault_is_refused_with_what_is_allowed(body: object, names: str) -> None:
    with pytest.raises(ProviderError) as caught:
        parse_fault(body)
    assert caught.value.status == 400
    assert names in caught.value.message


def test_a_fault_has_documented_defaults() -> None:
    assert parse_fault({"mode": "cut"}) == Fault("cut", 1, None, 1.0, 0.0, 2, 1.0)


# -- billing --------------------------------------------------------------------------


def _entry(**fields: object) -> BillingEntry:
    base: dict[str, object] = {
        "id": "resp_1",
        "endpoint": "responses",
        "model": "gpt-4o",
        "key_fingerprint": key_fingerprint("sk-x"),
        "input_tokens": 10,
        "cached_tokens": 0,
        "output_tokens": 5,
        "reasoning_tokens": 0,
        "stream": False,
        "completed": True,
        "usage_reported": True,
        "prompt_cache_key": None,
        "previous_response_id": None,
    }
    return BillingEntry(**{**base, **fields})


def test_the_billing_log_totals_and_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "billing.jsonl"
    log = BillingLog(path)
    log.add(_entry())
    log.add(_entry(id="resp_2", input_tokens=2000, cached_tokens=1024, reasoning_tokens=3))
    assert log.totals() == {
        "requests": 2,
        "input_tokens": 2010,
        "cached_tokens": 1024,
        "cache_write_tokens": 0,
        "output_tokens": 10,
        "reasoning_tokens": 3,
    }
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["resp_1", "resp_2"]
    log.clear()
    assert log.totals()["requests"] == 0
    assert len(path.read_text().splitlines()) == 2


def test_a_key_fingerprint_never_contains_the_key() -> None:
    fingerprint = key_fingerprint("sk-secret-123")
    assert "secret" not in fingerprint
    assert fingerprint == key_fingerprint("sk-secret-123") != key_fingerprint("sk-secret-124")


def test_the_package_exports_exactly_its_public_names() -> None:
    import llmsession.fake_provider as package

    assert set(package.__all__) == {
        "API_KEY_ENV",
        "FAULT_MODES",
        "BillingEntry",
        "FakeProvider",
        "Fault",
        "create_app",
        "fake_provider_command",
        "key_fingerprint",
        "serve",
    }
    for name in package.__all__:
        assert getattr(package, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = package.nothing  # type: ignore[attr-defined]
