"""The Gemini gateway end to end: the official google-genai SDK, unchanged, against a real
llmsession process, which forwards to the fake provider running as its own process.

Every total llmsession records is compared with the fake's billing log, to the token;
the fake's cache entries are read from its ``/_fake/gemini/cached-contents`` route.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from tests.fake_provider.conftest import API_KEY, FakeProcess
from tests.gateway.processes import GatewayProcesses
from tests.gateway.test_gateway_cli import cli
from tests.server.conftest import ServerFactory, ServerProcess, bearer, launch_server
from tests.server.ui_client import csrf_of

SID = "LLMSession-Id"
MODEL = "gemini/gemini-2.5-flash"

#: Over Gemini Flash's 1,024-token minimum for a cache entry, by the fake's counting rule.
BIG_CONTEXT = " ".join(f"fact{i} is true." for i in range(400))
OTHER_CONTEXT = " ".join(f"rule{i} holds now." for i in range(450))


def user(text: str) -> types.Content:
    return types.Content(role="user", parts=[types.Part(text=text)])


class Gateway(GatewayProcesses):
    def sdk(self, key: str, api_version: str | None = "v1beta") -> genai.Client:
        options = types.HttpOptions(base_url=self.server.base_url, api_version=api_version)
        client = genai.Client(api_key=key, http_options=options)
        self.clients.append(client)
        return client

    def billing(self, key: str) -> list[dict[str, Any]]:
        """The fake's billing entries of this tenant's sessions: the gateway sends the
        session id upstream as ``LLMSession-Id``, which the fake logs as ``session_id``."""
        sessions = self.get(key, "/v1/sessions?limit=1000")["items"]
        ids = {session["session_id"] for session in sessions}
        return [entry for entry in self.fake.billing() if entry["session_id"] in ids]

    def entries(self, session_id: str) -> list[dict[str, Any]]:
        """The fake's live cache entries made for this session."""
        entries: list[dict[str, Any]] = self.fake.get("/_fake/gemini/cached-contents")["entries"]
        return [e for e in entries if e["display_name"] == f"llmsession {session_id}"]

    def assert_totals_match_billing(self, key: str) -> None:
        billing = self.billing(key)
        usage = self.usage(key)
        assert usage["input_tokens"] == sum(e["input_tokens"] for e in billing)
        assert usage["cached_input_tokens"] == sum(e["cached_tokens"] for e in billing)
        assert usage["output_tokens"] == sum(e["output_tokens"] for e in billing)
        assert usage["reasoning_tokens"] == sum(e["reasoning_tokens"] for e in billing)
        assert usage["cache_write_tokens"] == sum(e["cache_write_tokens"] for e in billing)
        created = [e for e in billing if e["endpoint"] == "cachedContents"]
        assert usage["cache_write_tokens"] == sum(e["input_tokens"] for e in created)


def in_session(session_id: str, **config: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        http_options=types.HttpOptions(headers={SID: session_id}), **config
    )


def session_of(response: types.GenerateContentResponse) -> str:
    assert response.sdk_http_response is not None
    assert response.sdk_http_response.headers is not None
    return response.sdk_http_response.headers[SID.lower()]


def write_config(path: Path, fake: FakeProcess, base_url: str | None = None) -> Path:
    root = base_url or fake.base_url.removesuffix("/v1")
    path.write_text(
        f'[providers.gemini]\nkind = "gemini"\nbase_url = "{root}"\n'
        'api_key_env = "FAKE_UPSTREAM_KEY"\ntimeout_seconds = 2\n',
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def module_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the module's server keeps its store (sessions.db) and config (gateway.toml)."""
    return tmp_path_factory.mktemp("gemini")


@pytest.fixture(scope="module")
def module_server(module_fake: FakeProcess, module_folder: Path) -> Iterator[ServerProcess]:
    folder = module_folder
    server = launch_server(
        f"sqlite:///{folder / 'sessions.db'}",
        folder,
        LLMSESSION_CONFIG=str(write_config(folder / "gateway.toml", module_fake)),
        FAKE_UPSTREAM_KEY=API_KEY,
        LLMSESSION_ACCESS_LOG="1",
    )
    yield server
    assert server.stop() == 0, server.output()


@pytest.fixture
def gateway(module_fake: FakeProcess, module_server: ServerProcess) -> Iterator[Gateway]:
    assert module_fake.post("/_fake/reset").status_code == 200
    made = Gateway(module_server, module_fake)
    yield made
    made.close()


def test_a_multi_round_session_caches_its_history_and_is_billed_and_recorded_alike(
    gateway: Gateway,
) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    first = client.models.generate_content(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
    assert first.text
    session_id = session_of(first)
    # One round of history: nothing to cache yet.
    assert gateway.entries(session_id) == []
    second = client.models.generate_content(
        model=MODEL, contents=[user("Q2")], config=in_session(session_id)
    )
    assert session_of(second) == session_id
    assert second.usage_metadata is not None
    (entry,) = gateway.entries(session_id)
    # The whole history is served from the entry, and counted once.
    assert second.usage_metadata.cached_content_token_count == entry["tokens"]
    client.models.generate_content(
        model=MODEL, contents=[user("Q3")], config=in_session(session_id)
    )
    # A small growth reuses the entry.
    assert [e["name"] for e in gateway.entries(session_id)] == [entry["name"]]
    client.models.generate_content(
        model=MODEL, contents=[user(OTHER_CONTEXT + " Q4")], config=in_session(session_id)
    )
    client.models.generate_content(
        model=MODEL, contents=[user("Q5")], config=in_session(session_id)
    )
    # The uncached part grew past the entry: a new entry for the whole history, the old
    # one deleted.
    (refreshed,) = gateway.entries(session_id)
    assert refreshed["name"] != entry["name"]
    assert refreshed["tokens"] > entry["tokens"] + 1500
    billing = gateway.billing(key)
    assert [e["endpoint"] for e in billing] == [
        "generateContent",
        "cachedContents",
        "generateContent",
        "generateContent",
        "generateContent",
        "cachedContents",
        "generateContent",
    ]
    session = gateway.get(key, f"/v1/sessions/{session_id}")
    assert session["round_count"] == 5
    assert session["initial_tokens"] == billing[0]["input_tokens"]
    # What the provider processed anew: each entry's creation at the full rate, and each
    # request's prompt but its cached part.
    assert session["delta_tokens"] == sum(e["input_tokens"] - e["cached_tokens"] for e in billing)
    gateway.assert_totals_match_billing(key)
    closed = httpx.post(
        f"{gateway.server.base_url}/v1/sessions/{session_id}/close", headers=bearer(key)
    )
    assert closed.status_code == 200, closed.text
    assert gateway.entries(session_id) == []


def test_closing_from_the_cli_deletes_the_entry_given_the_providers_file(
    gateway: Gateway, module_folder: Path
) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)

    def cached_session() -> str:
        first = client.models.generate_content(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
        session_id = session_of(first)
        client.models.generate_content(
            model=MODEL, contents=[user("Q2")], config=in_session(session_id)
        )
        assert len(gateway.entries(session_id)) == 1
        return session_id

    def close(session_id: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        tenant = gateway.get(key, f"/v1/sessions/{session_id}")["tenant_id"]
        result = cli(
            *("sessions", "close", "--tenant", tenant, session_id),
            *("--store-url", f"sqlite:///{module_folder / 'sessions.db'}"),
            *("--config", str(module_folder / "gateway.toml")),
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Closed session {session_id}: 2 rounds")
        return result

    # Only the server was given the provider's key.
    assert "FAKE_UPSTREAM_KEY" not in os.environ
    session_id = cached_session()
    close(session_id, {"FAKE_UPSTREAM_KEY": API_KEY})
    assert gateway.entries(session_id) == []
    # Without the provider's key the session still closes; its entry is left to its TTL.
    session_id = cached_session()
    result = close(session_id, {})
    assert "left to its TTL: FAKE_UPSTREAM_KEY is not set" in result.stderr
    assert len(gateway.entries(session_id)) == 1


def test_closing_from_the_dashboard_deletes_the_entry(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    first = client.models.generate_content(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
    session_id = session_of(first)
    client.models.generate_content(
        model=MODEL, contents=[user("Q2")], config=in_session(session_id)
    )
    assert len(gateway.entries(session_id)) == 1
    with httpx.Client(base_url=gateway.server.base_url, timeout=10) as browser:
        form = browser.get("/ui/sign-in")
        signed = browser.post(
            "/ui/sign-in", data={"csrf_token": csrf_of(form.text), "api_key": key}
        )
        assert signed.status_code == 303, signed.text
        confirm = browser.get(f"/ui/sessions/{session_id}/close")
        closed = browser.post(
            f"/ui/sessions/{session_id}/close", data={"csrf_token": csrf_of(confirm.text)}
        )
        assert closed.status_code == 303, closed.text
    assert gateway.get(key, f"/v1/sessions/{session_id}")["state"] == "closed"
    assert gateway.entries(session_id) == []


def test_streamed_rounds_take_the_last_usage_and_cache_alike(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    chunks = list(
        client.models.generate_content_stream(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
    )
    session_id = session_of(chunks[0])
    assert "".join(chunk.text or "" for chunk in chunks).startswith("You said")
    chunks = list(
        client.models.generate_content_stream(
            model=MODEL, contents=[user("Q2 is here")], config=in_session(session_id)
        )
    )
    final = chunks[-1].usage_metadata
    assert final is not None
    assert final.cached_content_token_count
    assert len(gateway.entries(session_id)) == 1
    (_, second) = gateway.get(key, f"/v1/sessions/{session_id}/rounds")["items"]
    billed = [e for e in gateway.billing(key) if e["endpoint"] == "generateContent"][-1]
    # Every chunk carried usageMetadata; the last one counts, never their sum.
    assert (
        second["usage"]["output_tokens"] == billed["output_tokens"] == final.candidates_token_count
    )
    gateway.assert_totals_match_billing(key)
    # The streamed answer went into the history: the next round replays it.
    client.models.generate_content(
        model=MODEL, contents=[user("Q3")], config=in_session(session_id)
    )
    gateway.assert_totals_match_billing(key)


def test_prompt_token_count_already_includes_the_cached_part(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    session_id = session_of(
        client.models.generate_content(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
    )
    for question in ("Q2", "Q3"):
        client.models.generate_content(
            model=MODEL, contents=[user(question)], config=in_session(session_id)
        )
    third = gateway.get(key, f"/v1/sessions/{session_id}/rounds")["items"][2]
    usage, raw = third["usage"], third["usage"]["raw"]
    assert raw["cachedContentTokenCount"] > 0
    # Not promptTokenCount + cachedContentTokenCount: that would count the cache twice.
    assert usage["input_tokens"] == raw["promptTokenCount"]
    assert usage["cached_input_tokens"] == raw["cachedContentTokenCount"]
    assert third["delta_tokens"] == raw["promptTokenCount"] - raw["cachedContentTokenCount"]
    assert gateway.billing(key)[-1]["input_tokens"] == raw["promptTokenCount"]


def test_thoughts_are_output_and_reasoning(gateway: Gateway) -> None:
    key = gateway.tenant()
    answer = gateway.sdk(key).models.generate_content(
        model="gemini/gemini-2.5-pro", contents=[user("Think, then answer")]
    )
    assert answer.usage_metadata is not None
    thoughts = answer.usage_metadata.thoughts_token_count
    candidates = answer.usage_metadata.candidates_token_count
    assert thoughts
    assert candidates
    usage = gateway.usage(key)
    assert usage["output_tokens"] == candidates + thoughts
    assert usage["reasoning_tokens"] == thoughts
    gateway.assert_totals_match_billing(key)


def test_the_sdks_default_api_version_and_other_key_forms(gateway: Gateway) -> None:
    key = gateway.tenant()
    # The SDK's default version is v1; the gateway answers it as v1beta.
    answer = gateway.sdk(key, api_version=None).models.generate_content(
        model=MODEL, contents=[user("Q1")]
    )
    assert answer.text
    url = f"{gateway.server.base_url}/v1beta/models/{MODEL}:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Q1"}]}]}
    assert httpx.post(url, params={"key": key}, json=body).status_code == 200
    streamed_with_key = httpx.post(
        url.replace(":generateContent", ":streamGenerateContent"),
        params={"alt": "sse", "key": key},
        json=body,
    )
    assert streamed_with_key.status_code == 200
    assert '"finishReason"' in streamed_with_key.text
    assert httpx.post(url, headers=bearer(key), json=body).status_code == 200
    twice = httpx.post(url, params={"key": key}, headers={"x-goog-api-key": key}, json=body)
    assert twice.status_code == 400
    assert twice.json()["type"].endswith("ambiguous-credentials")
    assert httpx.post(url, json=body).status_code == 401
    streamed = httpx.post(
        url.replace(":generateContent", ":streamGenerateContent"),
        headers={"x-goog-api-key": key},
        json=body,
    )
    assert streamed.status_code == 422
    assert "alt=sse" in streamed.json()["detail"]
    # The access log shows the URLs, never a key given in one.
    log = gateway.server.output()
    assert ":streamGenerateContent?alt=sse" in log
    assert key not in log


def test_an_idempotency_key_holds_one_url_and_one_body_however_written(gateway: Gateway) -> None:
    key = gateway.tenant()
    url = f"{gateway.server.base_url}/v1beta/models/{MODEL}:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Q1"}]}], "generationConfig": {}}
    headers = {"x-goog-api-key": key, "Idempotency-Key": "g1"}
    first = httpx.post(url, headers=headers, json=body)
    assert first.status_code == 200
    # The same JSON, spaced and ordered otherwise, is the same request.
    rewritten = json.dumps(dict(reversed(body.items())), indent=2)
    again = httpx.post(
        url, headers={**headers, "content-type": "application/json"}, content=rewritten
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    # Gemini names the model and the method in the URL: another is another request.
    for other in (
        url.replace("gemini-2.5-flash", "gemini-2.5-pro"),
        url.replace(":generateContent", ":streamGenerateContent?alt=sse"),
    ):
        refused = httpx.post(other, headers=headers, json=body)
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"].endswith("idempotency-conflict")
    assert len(gateway.billing(key)) == 1


@pytest.mark.parametrize(
    ("fault", "status"),
    [({"mode": "500"}, 502), ({"mode": "429"}, 429), ({"mode": "slow", "delay_seconds": 3}, 504)],
)
def test_provider_failures_record_nothing(
    gateway: Gateway, fault: dict[str, Any], status: int
) -> None:
    key = gateway.tenant()
    gateway.fake.fault(**fault)
    with pytest.raises(errors.APIError) as caught:
        gateway.sdk(key).models.generate_content(model=MODEL, contents=[user("Q1")])
    assert caught.value.code == status
    assert API_KEY not in str(caught.value)
    assert gateway.get(key, "/v1/sessions")["items"] == []


def test_a_client_error_passes_through(gateway: Gateway) -> None:
    key = gateway.tenant()
    with pytest.raises(errors.ClientError) as caught:
        gateway.sdk(key).models.generate_content(
            model=MODEL,
            contents=[types.Content(role="narrator", parts=[types.Part(text="Q1")])],
        )
    assert caught.value.code == 400
    assert caught.value.status == "INVALID_ARGUMENT"
    assert gateway.get(key, "/v1/sessions")["items"] == []


def test_an_entry_made_for_a_refused_turn_is_deleted_again(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    session_id = session_of(
        client.models.generate_content(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
    )
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(
            model=MODEL,
            contents=[types.Content(role="narrator", parts=[types.Part(text="Q2")])],
            config=in_session(session_id),
        )
    assert caught.value.code == 400
    # The turn created an entry for the history, then the provider refused its request.
    assert [e["endpoint"] for e in gateway.billing(key)] == ["generateContent", "cachedContents"]
    assert gateway.entries(session_id) == []
    assert gateway.get(key, f"/v1/sessions/{session_id}")["round_count"] == 1


def test_a_cut_stream_ends_as_an_error_and_adds_nothing(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    session_id = session_of(
        client.models.generate_content(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
    )
    gateway.fake.fault(mode="cut", after_events=2)
    with pytest.raises(errors.APIError) as caught:
        list(
            client.models.generate_content_stream(
                model=MODEL, contents=[user("Q2")], config=in_session(session_id)
            )
        )
    assert caught.value.code == 502
    # Every chunk carried the usage so far: the cut turn is counted as billed...
    assert gateway.get(key, f"/v1/sessions/{session_id}")["round_count"] == 2
    gateway.assert_totals_match_billing(key)
    # ... but adds nothing to the history, and the entry it created was deleted again.
    assert gateway.entries(session_id) == []
    third = client.models.generate_content(
        model=MODEL, contents=[user("Q3")], config=in_session(session_id)
    )
    first_prompt = gateway.billing(key)[0]["input_tokens"]
    assert third.usage_metadata is not None
    # Round 1's prompt without its 3-token reply primer, its 16-token answer (+3 for the
    # message), Q3 (1 + 3), the primer: nothing of the cut turn.
    assert third.usage_metadata.prompt_token_count == first_prompt - 3 + 19 + 4 + 3
    assert len(gateway.entries(session_id)) == 1
    gateway.assert_totals_match_billing(key)


def test_a_stream_that_stalls_past_the_timeout_ends_as_deadline_exceeded(
    gateway: Gateway,
) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    first = client.models.generate_content(model=MODEL, contents=[user("Q1")])
    session_id = session_of(first)
    # The provider's events come 3 s apart; the gateway waits 2 (timeout_seconds).
    gateway.fake.fault(mode="slow", delay_seconds=0, event_delay_seconds=3)
    with pytest.raises(errors.APIError) as caught:
        list(
            client.models.generate_content_stream(
                model=MODEL, contents=[user("Q2")], config=in_session(session_id)
            )
        )
    assert (caught.value.code, caught.value.status) == (504, "DEADLINE_EXCEEDED")
    assert "sent nothing for 2 seconds (its timeout_seconds)" in str(caught.value.message)
    # The fake stalls before its first event, so no usage came: as for a cut stream,
    # no round is counted without it...
    assert gateway.get(key, f"/v1/sessions/{session_id}")["round_count"] == 1
    # ... and nothing of it joins the history.
    third = client.models.generate_content(
        model=MODEL, contents=[user("Q3")], config=in_session(session_id)
    )
    assert first.usage_metadata is not None
    assert third.usage_metadata is not None
    first_prompt = first.usage_metadata.prompt_token_count or 0
    first_answer = first.usage_metadata.candidates_token_count or 0
    # Round 1's prompt without its 3-token reply primer, its answer (+3 for the
    # message), Q3 (1 + 3), the primer: nothing of the stalled turn.
    assert third.usage_metadata.prompt_token_count == first_prompt - 3 + first_answer + 3 + 4 + 3


def test_a_failed_cache_request_never_costs_the_turn(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    session_id = session_of(
        client.models.generate_content(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
    )
    gateway.fake.fault(mode="500", endpoint="cachedContents")
    answer = client.models.generate_content(
        model=MODEL, contents=[user("Q2")], config=in_session(session_id)
    )
    assert answer.text
    assert gateway.entries(session_id) == []
    assert [e["endpoint"] for e in gateway.billing(key)] == ["generateContent"] * 2
    # The next turn tries again, and caches.
    client.models.generate_content(
        model=MODEL, contents=[user("Q3")], config=in_session(session_id)
    )
    assert len(gateway.entries(session_id)) == 1
    gateway.assert_totals_match_billing(key)


def session_with_entry(gateway: Gateway, client: genai.Client) -> tuple[str, dict[str, Any]]:
    """A session of two turns whose history is long enough for a cache entry, and it."""
    session_id = session_of(
        client.models.generate_content(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
    )
    client.models.generate_content(
        model=MODEL, contents=[user("Q2")], config=in_session(session_id)
    )
    (entry,) = gateway.entries(session_id)
    return session_id, entry


def test_a_failed_renewal_leaves_the_entry_for_the_next_turn(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    session_id, entry = session_with_entry(gateway, client)
    # The renewal (PATCH ttl) fails: this turn is replayed...
    gateway.fake.fault(mode="500", endpoint="cachedContents")
    assert client.models.generate_content(
        model=MODEL, contents=[user("Q3")], config=in_session(session_id)
    ).text
    # ... but the entry is still valid, and is kept: the next turn renews and reads it
    # rather than paying for the whole history again in a new one.
    assert [e["name"] for e in gateway.entries(session_id)] == [entry["name"]]
    fourth = client.models.generate_content(
        model=MODEL, contents=[user("Q4")], config=in_session(session_id)
    )
    assert fourth.usage_metadata is not None
    assert fourth.usage_metadata.cached_content_token_count == entry["tokens"]
    assert [e["name"] for e in gateway.entries(session_id)] == [entry["name"]]
    assert [e["endpoint"] for e in gateway.billing(key)] == [
        "generateContent",
        "cachedContents",
        *["generateContent"] * 3,
    ]
    gateway.assert_totals_match_billing(key)


def test_an_entry_gone_at_the_provider_is_replaced_at_once(gateway: Gateway) -> None:
    key = gateway.tenant()
    client = gateway.sdk(key)
    session_id, entry = session_with_entry(gateway, client)
    deleted = httpx.delete(
        f"{gateway.fake.root}/v1beta/{entry['name']}", headers={"x-goog-api-key": API_KEY}
    )
    assert deleted.status_code == 200
    answer = client.models.generate_content(
        model=MODEL, contents=[user("Q3")], config=in_session(session_id)
    )
    assert answer.usage_metadata is not None
    # The renewal found it gone: the turn made a new entry, and read it.
    (replacement,) = gateway.entries(session_id)
    assert replacement["name"] != entry["name"]
    assert answer.usage_metadata.cached_content_token_count == replacement["tokens"]
    assert [e["endpoint"] for e in gateway.billing(key)][-2:] == [
        "cachedContents",
        "generateContent",
    ]
    assert gateway.get(key, f"/v1/sessions/{session_id}")["round_count"] == 3
    gateway.assert_totals_match_billing(key)


def test_an_entry_expires_with_its_session(module_fake: FakeProcess, tmp_path: Path) -> None:
    assert module_fake.post("/_fake/reset").status_code == 200
    server = launch_server(
        f"sqlite:///{tmp_path / 'sessions.db'}",
        tmp_path,
        LLMSESSION_CONFIG=str(write_config(tmp_path / "gateway.toml", module_fake)),
        FAKE_UPSTREAM_KEY=API_KEY,
        LLMSESSION_DEFAULT_TTL="2",
        LLMSESSION_SWEEP_INTERVAL="0.2",
    )
    gateway = Gateway(server, module_fake)
    try:
        key = gateway.tenant()
        client = gateway.sdk(key)
        session_id = session_of(
            client.models.generate_content(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
        )
        client.models.generate_content(
            model=MODEL, contents=[user("Q2")], config=in_session(session_id)
        )
        (entry,) = gateway.entries(session_id)
        assert 0 < entry["expires_in_seconds"] <= 2
        time.sleep(2.5)
        assert gateway.entries(session_id) == []
        assert gateway.get(key, f"/v1/sessions/{session_id}")["state"] == "expired"
    finally:
        gateway.close()
        assert server.stop() == 0, server.output()


def test_the_entry_is_the_sessions_whichever_server_serves_it_on_postgresql(
    module_fake: FakeProcess,
    start_server: ServerFactory,
    postgres_url: str,
    tmp_path: Path,
) -> None:
    assert module_fake.post("/_fake/reset").status_code == 200
    config = write_config(tmp_path / "gateway.toml", module_fake)
    env = {"LLMSESSION_CONFIG": str(config), "FAKE_UPSTREAM_KEY": API_KEY}
    one = Gateway(start_server(postgres_url, **env), module_fake)
    two = Gateway(start_server(postgres_url, **env), module_fake)
    try:
        key = one.tenant()
        session_id = session_of(
            one.sdk(key).models.generate_content(model=MODEL, contents=[user(BIG_CONTEXT + " Q1")])
        )
        one.sdk(key).models.generate_content(
            model=MODEL, contents=[user("Q2")], config=in_session(session_id)
        )
        (entry,) = one.entries(session_id)
        # The other server reads the entry's name from the stored turn, and uses it...
        third = two.sdk(key).models.generate_content(
            model=MODEL, contents=[user("Q3")], config=in_session(session_id)
        )
        assert third.usage_metadata is not None
        assert third.usage_metadata.cached_content_token_count == entry["tokens"]
        assert [e["name"] for e in two.entries(session_id)] == [entry["name"]]
        two.assert_totals_match_billing(key)
        # ... and deletes it when the session is closed there.
        closed = httpx.post(
            f"{two.server.base_url}/v1/sessions/{session_id}/close", headers=bearer(key)
        )
        assert closed.status_code == 200
        assert two.entries(session_id) == []
    finally:
        one.close()
        two.close()
