"""The fake provider's HTTP edges: auth, bad input, unknown routes, the billing log file,
and the two ways to start it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import openai
import pytest

from llmsession.fake_provider.runner import API_KEY_ENV
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


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "could not parse the JSON body"),
        (
            b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "\\ud800"}]}',
            "lone surrogate",
        ),
    ],
)
def test_json_no_answer_could_echo_is_a_400_not_a_500(
    fake: FakeProcess, body: bytes, says: str
) -> None:
    # docs/fake-provider.md: bad input is a 400 in OpenAI's shape, never a bare 500.
    response = httpx.post(
        fake.base_url + "/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5.0,
    )
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]["message"]
    assert fake.billing() == []


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


def test_a_taken_port_is_one_clear_line_and_exit_status_3(fake: FakeProcess) -> None:
    import subprocess

    port = fake.root.rsplit(":", 1)[1]
    command = [*fake_command("--api-key", API_KEY)[:-2], "--port", port, "--api-key", API_KEY]
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    # As `llmsession serve`: 3 when the server could not start (docs/cli.md).
    assert done.returncode == 3
    stderr = done.stderr.decode()
    assert stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")
    assert "Choose another --port" in stderr
    assert stderr.count("\n") == 1
    assert done.stdout == b""


#: The fake provider's two names: the llmsession command's, and its own module's.
_ENTRY_POINTS = (
    [sys.executable, "-m", "llmsession.cli", "fake-provider"],
    [sys.executable, "-m", "llmsession.fake_provider"],
)


@pytest.mark.parametrize("entry", _ENTRY_POINTS, ids=["llmsession", "module"])
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--api-key", ""], "Error: Invalid value for '--api-key': an API key cannot be empty"),
        (["--api-key", API_KEY, "--api-key", " "], "an API key cannot be empty or blank"),
        ([], "Error: give an accepted key with --api-key or LLMSESSION_FAKE_API_KEY"),
        (["--no-such-option"], "Error: No such option '--no-such-option'"),
    ],
    ids=["empty-key", "blank-key", "no-key", "unknown-option"],
)
def test_bad_input_is_one_error_line_and_exit_status_2(
    entry: list[str], args: list[str], expected: str
) -> None:
    import subprocess

    done = subprocess.run(
        [*entry, "--port", "0", *args],
        capture_output=True,
        # Without the key variable, which would stand in for a missing --api-key.
        env={name: value for name, value in os.environ.items() if name != API_KEY_ENV},
        timeout=60,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert stderr.startswith("Error: ")
    assert expected in stderr
    assert stderr.count("\n") == 1, stderr
    assert done.stdout == b""


@pytest.mark.parametrize("entry", _ENTRY_POINTS, ids=["llmsession", "module"])
def test_a_billing_log_that_cannot_be_written_is_refused_at_startup(
    entry: list[str], tmp_path: Path
) -> None:
    import subprocess

    path = tmp_path / "no-such-dir" / "billing.jsonl"
    command = [*entry, "--port", "0", "--api-key", API_KEY, "--billing-log", str(path)]
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert stderr.startswith("Error: Invalid value for '--billing-log': ")
    assert f"cannot append to {str(path)!r}: No such file or directory" in stderr
    assert stderr.count("\n") == 1, stderr
    assert done.stdout == b""
    assert not path.parent.exists()
