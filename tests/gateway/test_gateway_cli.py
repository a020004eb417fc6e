"""The command line's gateway parts: `llmsession providers`, and `serve --config` failing
fast with one line for a bad file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CONFIG = """
[providers.fake]
kind = "openai"
base_url = "http://127.0.0.1:9100/v1"
api_key_env = "GW_TEST_KEY"
timeout_seconds = 5
models = ["gpt-4o-mini", "meta-llama/x"]

[providers.openai]
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key_env = "GW_TEST_UNSET_KEY"
"""


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GW_TEST")}
    return subprocess.run(
        [sys.executable, "-m", "llmsession.cli", *args],
        capture_output=True,
        text=True,
        env={**environment, **(env or {})},
        timeout=60,
        check=False,
    )


def test_providers_lists_each_provider_and_whether_its_key_is_set(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(CONFIG, encoding="utf-8")
    result = cli("providers", "--config", str(config), env={"GW_TEST_KEY": "sk-secret-value"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "PROVIDER",
        "KIND",
        "BASE",
        "URL",
        "KEY",
        "FROM",
        "KEY",
        "SET",
        "TIMEOUT",
        "MODELS",
        "PRICED",
    ]
    assert "GW_TEST_KEY" in lines[1]
    assert " yes " in lines[1]
    assert "gpt-4o-mini, meta-llama/x" in lines[1]
    assert " NO " in lines[2]
    assert "(any)" in lines[2]
    assert lines[1].endswith(" -")  # no prices configured
    assert "sk-secret-value" not in result.stdout + result.stderr
    as_json = cli("providers", "--json", env={"LLMSESSION_CONFIG": str(config), "GW_TEST_KEY": "k"})
    listed = json.loads(as_json.stdout)
    assert [p["api_key_set"] for p in listed["providers"]] == [True, False]
    assert listed["providers"][0]["models"] == ["gpt-4o-mini", "meta-llama/x"]


def test_providers_without_a_config_says_how_to_give_one() -> None:
    result = cli("providers")
    assert result.returncode == 2
    assert "give --config FILE or set LLMSESSION_CONFIG" in result.stderr


def test_a_bad_config_file_is_one_line_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text('[providers.fake]\nkind = "cohere"\n', encoding="utf-8")
    result = cli("providers", "--config", str(config))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert str(config) in line
    assert "needs 'base_url'" in line


def test_serve_refuses_to_start_on_a_provider_whose_key_is_unset(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(CONFIG, encoding="utf-8")
    result = cli(
        "serve",
        "--config",
        str(config),
        "--store-url",
        "memory://",
        "--port",
        "1",
        env={"GW_TEST_KEY": "sk-1"},
    )
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "GW_TEST_UNSET_KEY, which is not set" in line
    assert "Traceback" not in result.stderr
