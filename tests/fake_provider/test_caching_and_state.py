"""Prefix caching and previous_response_id through the real HTTP API, with the SDK."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fake_provider.conftest import OTHER_KEY, FakeFactory, FakeProcess


def _chat(system_words: int, question: str = "q") -> list[ChatCompletionMessageParam]:
    # system: n words + 3; user: 1 word + 3; the reply primer: 3.
    return [
        {"role": "system", "content": "w " * system_words},
        {"role": "user", "content": question},
    ]


def _prompt_of(tokens: int) -> list[ChatCompletionMessageParam]:
    return _chat(tokens - 10)


def _cached(fake: FakeProcess, messages: list[ChatCompletionMessageParam], **extra: object) -> int:
    client = fake.client(extra.pop("key", None) or fake.client().api_key)
    usage = client.chat.completions.create(
        model=str(extra.pop("model", "gpt-4o")), messages=messages, **extra
    ).usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    return usage.prompt_tokens_details.cached_tokens or 0


def test_a_prompt_below_1024_tokens_is_never_cached(fake: FakeProcess) -> None:
    assert [_cached(fake, _prompt_of(1023)) for _ in range(3)] == [0, 0, 0]


@pytest.mark.parametrize(("tokens", "cached"), [(1024, 1024), (1151, 1024), (1300, 1280)])
def test_a_repeated_prompt_reads_whole_128_token_steps(
    fake: FakeProcess, tokens: int, cached: int
) -> None:
    assert [_cached(fake, _prompt_of(tokens)) for _ in range(2)] == [0, cached]
    assert [e["cached_tokens"] for e in fake.billing()] == [0, cached]


def test_a_conversation_reads_the_prefix_its_earlier_turn_wrote(fake: FakeProcess) -> None:
    first = _chat(1500, "first question")
    assert _cached(fake, first) == 0
    # The new prompt shares the first's messages (1500 + 3 + 2 + 3 = 1508 tokens), not its primer.
    follow_up: list[ChatCompletionMessageParam] = [
        *first,
        {"role": "assistant", "content": "You said : first question"},
        {"role": "user", "content": "second"},
    ]
    assert _cached(fake, follow_up) == 1408


def test_prompt_cache_key_model_and_api_key_each_isolate_the_cache(fake: FakeProcess) -> None:
    messages = _prompt_of(1100)
    assert _cached(fake, messages, prompt_cache_key="session-a") == 0
    assert _cached(fake, messages, prompt_cache_key="session-b") == 0
    assert _cached(fake, messages) == 0
    assert _cached(fake, messages, model="gpt-4o-mini") == 0
    assert _cached(fake, messages, key=OTHER_KEY) == 0
    assert _cached(fake, messages, prompt_cache_key="session-a") == 1024
    assert _cached(fake, messages, key=OTHER_KEY) == 1024


def test_chat_and_responses_share_a_cache_for_the_same_prompt(fake: FakeProcess) -> None:
    instructions = "w " * 1200
    client = fake.client()
    client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "system", "content": instructions}, {"role": "user", "content": "q"}],
    )
    response = client.responses.create(model="gpt-4o", instructions=instructions, input="q")
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 1152


def test_reset_empties_the_cache(fake: FakeProcess) -> None:
    _cached(fake, _prompt_of(1100))
    fake.post("/_fake/reset")
    assert _cached(fake, _prompt_of(1100)) == 0


def test_the_cache_ttl_forgets_unused_prefixes(start_fake: FakeFactory) -> None:
    fake = start_fake("--cache-ttl", "0.001")
    # A millisecond passes between any two HTTP requests, so nothing is ever read back.
    assert [_cached(fake, _prompt_of(1100)) for _ in range(2)] == [0, 0]


# -- previous_response_id -----------------------------------------------------------


def test_a_follow_up_is_billed_for_the_whole_stored_context(fake: FakeProcess) -> None:
    client = fake.client()
    first = client.responses.create(model="gpt-4o", instructions="Be brief.", input="one two")
    second = client.responses.create(
        model="gpt-4o", instructions="Be brief.", input="three", previous_response_id=first.id
    )
    third = client.responses.create(model="gpt-4o", input="four", previous_response_id=second.id)
    # instructions (3 + 3), first input (2 + 3), the primer 3.
    assert first.usage is not None
    assert first.usage.input_tokens == 14
    # + first answer "You said : one two" (5 + 3) + "three" (1 + 3); instructions again.
    assert second.usage is not None
    assert second.usage.input_tokens == 14 + 8 + 4
    # Instructions are not carried over: - 6, + second answer (4 + 3) + "four" (1 + 3).
    assert third.usage is not None
    assert third.usage.input_tokens == 26 - 6 + 7 + 4
    assert [e["previous_response_id"] for e in fake.billing()] == [None, first.id, second.id]


def test_a_long_conversation_on_previous_response_id_hits_the_cache(fake: FakeProcess) -> None:
    client = fake.client()
    first = client.responses.create(model="gpt-4o", input="w " * 1300)
    second = client.responses.create(model="gpt-4o", input="more", previous_response_id=first.id)
    assert second.usage is not None
    assert second.usage.input_tokens_details.cached_tokens == 1280


def test_an_unknown_previous_response_is_a_400_as_openai_answers(fake: FakeProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        fake.client().responses.create(
            model="gpt-4o", input="hi", previous_response_id="resp_missing"
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.param == "previous_response_id"
    assert caught.value.type == "invalid_request_error"
    assert "resp_missing" in caught.value.message
    assert fake.billing() == []


def test_a_response_with_store_false_cannot_be_continued(fake: FakeProcess) -> None:
    client = fake.client()
    unstored = client.responses.create(model="gpt-4o", input="hi", store=False)
    with pytest.raises(openai.BadRequestError, match="not found"):
        client.responses.create(model="gpt-4o", input="again", previous_response_id=unstored.id)


def test_another_keys_response_looks_missing(fake: FakeProcess) -> None:
    mine = fake.client().responses.create(model="gpt-4o", input="hi")
    with pytest.raises(openai.BadRequestError, match="not found"):
        fake.client(OTHER_KEY).responses.create(
            model="gpt-4o", input="again", previous_response_id=mine.id
        )


def test_forgetting_stored_responses_makes_a_follow_up_fail(fake: FakeProcess) -> None:
    client = fake.client()
    first = client.responses.create(model="gpt-4o", input="hi")
    assert fake.post("/_fake/forget-responses").json() == {"forgotten": 1}
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-4o", input="again", previous_response_id=first.id)
    assert caught.value.code == "previous_response_not_found"
