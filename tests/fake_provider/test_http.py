"""The fake provider's HTTP edges: auth, bad input, unknown routes, the billing log file,
and the two ways to start it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.fake_provider.conftest import API_KEY, FakeFactory, FakeProcess, fake_command


def _post(fake: FakeProcess, path: str, body: object, key: str | None = API_KEY) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.post(fake.base_url + path, json=body, headers=headers, timeout=5.0)


def test_a_missing_or_wrong_key_is_openais_401(fake: FakeProcess) -> None:
    missing = _post(fake, "/chat/completions", {}, key=None)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert "didn't provide an API key" in missing.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError) as caught:
        fake.client("sk-wrong-key").responses.create(model="gpt-4o", input="hi")
    assert caught.value.code == "invalid_api_key"
    assert "sk-wrong-key" not in caught.value.response.text
    assert fake.billing() == []


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        (
            "/chat/completions",
            {"messages": [{"role": "user", "content": "x"}]},
            "model",
            "Missing required parameter: 'model'",
        ),
        ("/chat/completions", {"model": "gpt-4o"}, "messages", "Missing required parameter"),
        ("/chat/completions", {"model": "gpt-4o", "messages": []}, "messages", "non-empty array"),
        (
            "/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "expected one of",
        ),
        (
            "/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
            "only text parts",
        ),
        (
            "/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
            "Expected a value >= 1",
        ),
        (
            "/chat/completions",
            {"model": "o3-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
            "max_tokens",
            "Use 'max_completion_tokens' instead",
        ),
        (
            "/chat/completions",
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "x"}],
                "stream_options": {"include_usage": True},
            },
            "stream_options",
            "only allowed when 'stream' is enabled",
        ),
        (
            "/chat/completions",
            {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "stream": "yes"},
            "stream",
            "expected a boolean",
        ),
        ("/responses", {"model": "gpt-4o"}, "input", "Missing required parameter: 'input'"),
        ("/responses", {"model": "gpt-4o", "input": 5}, "input", "expected a string or an array"),
        (
            "/responses",
            {"model": "gpt-4o", "input": [{"type": "function_call"}]},
            "input[0].type",
            "message and reasoning items",
        ),
        (
            "/responses",
            {"model": "gpt-4o", "input": "x", "max_output_tokens": 15},
            "max_output_tokens",
            "Expected a value >= 16",
        ),
        (
            "/responses",
            {"model": "gpt-4o", "input": "x", "previous_response_id": 7},
            "previous_response_id",
            "expected a string",
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(
    fake: FakeProcess, path: str, body: object, param: str, says: str
) -> None:
    response = _post(fake, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert says in error["message"]
    assert fake.billing() == []


def test_a_body_that_is_not_json_is_a_400(fake: FakeProcess) -> None:
    response = httpx.post(
        fake.base_url + "/responses",
        content=b"{not json",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5.0,
    )
    assert response.status_code == 400
    assert "could not parse the JSON body" in response.json()["error"]["message"]


def test_an_unknown_route_or_method_is_openais_404(fake: FakeProcess) -> None:
    response = _post(fake, "/embeddings", {})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (POST /v1/embeddings)"
    assert httpx.get(fake.base_url + "/responses", timeout=5.0).status_code == 404


def test_every_answer_has_a_request_id(fake: FakeProcess) -> None:
    raw = fake.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-request-id"] == raw.parse().id
    assert _post(fake, "/responses", {}).headers["x-request-id"].startswith("req_")


def test_the_billing_log_file_gets_one_json_line_per_billed_request(
    start_fake: FakeFactory, tmp_path: Path
) -> None:
    path = tmp_path / "billing.jsonl"
    fake = start_fake("--billing-log", str(path))
    client = fake.client()
    chat = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    response = client.responses.create(model="gpt-4o", input="hi")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == fake.billing()
    assert [line["id"] for line in lines] == [chat.id, response.id]
    assert API_KEY not in path.read_text()


def test_the_llmsession_command_starts_it_with_the_key_from_the_environment(
    start_fake: FakeFactory,
) -> None:
    command = [sys.executable, "-m", "llmsession.cli", "fake-provider", "--port", "0"]
    fake = start_fake(command=command, env={"LLMSESSION_FAKE_API_KEY": f"sk-a, {API_KEY}"})
    completion = fake.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "You said : hi"
    assert fake.stop() == 0


def test_without_a_key_it_refuses_to_start(tmp_path: Path) -> None:
    import subprocess

    done = subprocess.run(
        fake_command(), capture_output=True, env={"PATH": ""}, timeout=60, check=False
    )
    assert done.returncode == 2
    assert b"--api-key or LLMSESSION_FAKE_API_KEY" in done.stderr


def test_a_taken_port_is_one_clear_line_and_exit_status_1(fake: FakeProcess) -> None:
    import subprocess

    port = fake.root.rsplit(":", 1)[1]
    command = [*fake_command("--api-key", API_KEY)[:-2], "--port", port, "--api-key", API_KEY]
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr.decode()
