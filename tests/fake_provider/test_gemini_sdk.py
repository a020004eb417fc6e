"""The fake's Gemini wire format, driven by the official google-genai SDK, unchanged:
generation streamed and not, usage as Gemini counts it, cache entries and their
rules, implicit caching, errors and faults, and the billing log behind them all."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import httpx2
import pytest
from google import genai
from google.genai import errors, types

from tests.fake_provider.conftest import API_KEY, OTHER_KEY, FakeProcess

#: 4 tokens a fact by the fake's rule: 1,600 tokens, over Flash's 1,024 minimum.
BIG = " ".join(f"fact{i} is true." for i in range(400))


@pytest.fixture
def sdk(fake: FakeProcess) -> Iterator[genai.Client]:
    client = client_for(fake, API_KEY)
    yield client
    client.close()


def client_for(fake: FakeProcess, key: str) -> genai.Client:
    return genai.Client(
        api_key=key, http_options=types.HttpOptions(base_url=fake.root, api_version="v1beta")
    )


def test_a_generation_is_billed_as_its_usage_says(sdk: genai.Client, fake: FakeProcess) -> None:
    answer = sdk.models.generate_content(
        model="gemini-2.5-flash",
        contents="hello there",
        config=types.GenerateContentConfig(system_instruction="Be terse."),
    )
    assert answer.text == "You said : hello there"
    usage = answer.usage_metadata
    assert usage is not None
    # system (3 + 3) + user (2 + 3) + the reply primer (3)
    assert usage.prompt_token_count == 14
    assert usage.candidates_token_count == 5
    assert usage.total_token_count == 19
    assert usage.cached_content_token_count is None
    (entry,) = fake.billing()
    assert entry["endpoint"] == "generateContent"
    assert (entry["input_tokens"], entry["output_tokens"], entry["stream"]) == (14, 5, False)


def test_a_stream_repeats_the_running_usage_and_ends_with_the_finish_reason(
    sdk: genai.Client, fake: FakeProcess
) -> None:
    chunks = list(sdk.models.generate_content_stream(model="gemini-2.5-flash", contents="a b c"))
    assert "".join(chunk.text or "" for chunk in chunks) == "You said : a b c"
    counts = [c.usage_metadata.candidates_token_count for c in chunks if c.usage_metadata]
    assert counts == [1, 2, 3, 4, 5, 6]
    assert chunks[-1].candidates is not None
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    (entry,) = fake.billing()
    # The last usage is what was billed; adding them up would say 21.
    assert entry["output_tokens"] == 6


def test_pro_models_think_and_thoughts_are_output(sdk: genai.Client, fake: FakeProcess) -> None:
    answer = sdk.models.generate_content(model="gemini-2.5-pro", contents="why")
    usage = answer.usage_metadata
    assert usage is not None
    assert (usage.thoughts_token_count, usage.candidates_token_count) == (16, 4)
    assert usage.total_token_count == (usage.prompt_token_count or 0) + 20
    (entry,) = fake.billing()
    assert (entry["output_tokens"], entry["reasoning_tokens"]) == (20, 16)
    none = sdk.models.generate_content(
        model="gemini-2.5-pro",
        contents="why",
        config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(thinking_budget=0)),
    )
    assert none.usage_metadata is not None
    assert none.usage_metadata.thoughts_token_count is None


def test_a_cache_entry_serves_its_prefix_and_counts_inside_the_prompt(
    sdk: genai.Client, fake: FakeProcess
) -> None:
    cache = sdk.caches.create(
        model="gemini-2.5-flash",
        config=types.CreateCachedContentConfig(
            contents=[BIG], system_instruction="Be terse.", ttl="300s", display_name="demo"
        ),
    )
    assert cache.name is not None
    assert cache.name.startswith("cachedContents/")
    assert cache.usage_metadata is not None
    held = cache.usage_metadata.total_token_count
    # the system instruction (3 + 3) and BIG (1,600 + 3), no reply primer
    assert held == 6 + 1603
    answer = sdk.models.generate_content(
        model="gemini-2.5-flash",
        contents="Q2",
        config=types.GenerateContentConfig(cached_content=cache.name),
    )
    usage = answer.usage_metadata
    assert usage is not None
    assert usage.cached_content_token_count == held
    # promptTokenCount includes the cached part: the entry, then Q2 (1 + 3), the primer.
    assert usage.prompt_token_count == held + 4 + 3
    create, generate = fake.billing()
    assert (create["endpoint"], create["id"], create["input_tokens"]) == (
        "cachedContents",
        cache.name,
        held,
    )
    assert (generate["input_tokens"], generate["cached_tokens"]) == (held + 7, held)
    # Beside an entry, a system instruction is Gemini's 400.
    with pytest.raises(errors.ClientError, match="CachedContent can not be used"):
        sdk.models.generate_content(
            model="gemini-2.5-flash",
            contents="Q3",
            config=types.GenerateContentConfig(cached_content=cache.name, system_instruction="x"),
        )


def test_entries_have_a_minimum_an_owner_a_ttl_and_an_end(
    sdk: genai.Client, fake: FakeProcess
) -> None:
    with pytest.raises(errors.ClientError, match="Cached content is too small"):
        sdk.caches.create(
            model="gemini-2.5-flash", config=types.CreateCachedContentConfig(contents=["short"])
        )
    with pytest.raises(errors.ClientError, match="too small"):
        sdk.caches.create(
            model="gemini-2.5-pro", config=types.CreateCachedContentConfig(contents=[BIG])
        )
    # Long enough to outlive a loaded machine's pause before the update below.
    cache = sdk.caches.create(
        model="gemini-2.5-flash", config=types.CreateCachedContentConfig(contents=[BIG], ttl="60s")
    )
    assert cache.name is not None
    other = client_for(fake, OTHER_KEY)
    with pytest.raises(errors.ClientError, match="CachedContent not found"):
        other.caches.get(name=cache.name)
    other.close()
    sdk.caches.update(name=cache.name, config=types.UpdateCachedContentConfig(ttl="600s"))
    (live,) = fake.get("/_fake/gemini/cached-contents")["entries"]
    assert 590 < live["expires_in_seconds"] <= 600
    sdk.caches.delete(name=cache.name)
    assert fake.get("/_fake/gemini/cached-contents")["entries"] == []
    with pytest.raises(errors.ClientError, match="CachedContent not found") as caught:
        sdk.models.generate_content(
            model="gemini-2.5-flash",
            contents="Q",
            config=types.GenerateContentConfig(cached_content=cache.name),
        )
    assert caught.value.code == 403
    # Only the creations were billed.
    assert [e["endpoint"] for e in fake.billing()] == ["cachedContents"]


def test_an_entry_expires_at_its_ttl(sdk: genai.Client, fake: FakeProcess) -> None:
    cache = sdk.caches.create(
        model="gemini-2.5-flash",
        config=types.CreateCachedContentConfig(contents=[BIG], ttl="0.3s"),
    )
    assert cache.name is not None
    assert len(fake.get("/_fake/gemini/cached-contents")["entries"]) == 1
    time.sleep(0.4)
    assert fake.get("/_fake/gemini/cached-contents")["entries"] == []
    with pytest.raises(errors.ClientError, match="CachedContent not found"):
        sdk.caches.get(name=cache.name)


def test_implicit_caching_from_the_models_minimum(sdk: genai.Client, fake: FakeProcess) -> None:
    for question in ("Q1", "Q2"):
        sdk.models.generate_content(model="gemini-2.5-flash", contents=[BIG, question])
    for question in ("Q1", "Q2"):
        sdk.models.generate_content(model="gemini-2.5-pro", contents=[BIG, question])
    flash, flash_again, _, pro_again = fake.billing()
    assert flash["cached_tokens"] == 0
    assert flash_again["cached_tokens"] >= 1024
    # The same prefix is under a Pro model's 4,096-token minimum: never cached.
    assert pro_again["cached_tokens"] == 0


@pytest.mark.parametrize(
    ("mode", "code", "status"), [("500", 500, "INTERNAL"), ("429", 429, "RESOURCE_EXHAUSTED")]
)
def test_error_faults_are_googles_errors_and_unbilled(
    sdk: genai.Client, fake: FakeProcess, mode: str, code: int, status: str
) -> None:
    fake.fault(mode=mode, endpoint="generateContent")
    with pytest.raises(errors.APIError) as caught:
        sdk.models.generate_content(model="gemini-2.5-flash", contents="Q")
    assert (caught.value.code, caught.value.status) == (code, status)
    assert fake.billing() == []


def test_a_cache_fault_needs_its_endpoint_named(sdk: genai.Client, fake: FakeProcess) -> None:
    fake.fault(mode="500", endpoint="cachedContents")
    # A generation does not take it...
    sdk.models.generate_content(model="gemini-2.5-flash", contents="Q")
    # ... a cache request does.
    with pytest.raises(errors.ServerError):
        sdk.caches.create(
            model="gemini-2.5-flash", config=types.CreateCachedContentConfig(contents=[BIG])
        )


def test_a_cut_stream_and_one_without_usage(sdk: genai.Client, fake: FakeProcess) -> None:
    fake.fault(mode="cut", after_events=2)
    with pytest.raises(httpx2.HTTPError):
        list(sdk.models.generate_content_stream(model="gemini-2.5-flash", contents="a b c"))
    fake.fault(mode="no_usage")
    chunks = list(sdk.models.generate_content_stream(model="gemini-2.5-flash", contents="a b c"))
    assert all(chunk.usage_metadata is None for chunk in chunks)
    cut, quiet = fake.billing()
    assert (cut["completed"], cut["output_tokens"]) == (False, 2)
    assert (quiet["completed"], quiet["usage_reported"]) == (True, False)


def test_keys_and_session_ids(fake: FakeProcess) -> None:
    url = f"{fake.root}/v1beta/models/gemini-2.5-flash:generateContent"
    body = {"contents": [{"parts": [{"text": "Q"}]}]}
    assert httpx.post(url, json=body).status_code == 403
    wrong = httpx.post(url, json=body, headers={"x-goog-api-key": "nope"})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["status"] == "INVALID_ARGUMENT"
    tagged = httpx.post(url, json=body, params={"key": API_KEY}, headers={"LLMSession-Id": "s1"})
    assert tagged.status_code == 200
    (entry,) = fake.billing()
    assert entry["session_id"] == "s1"
